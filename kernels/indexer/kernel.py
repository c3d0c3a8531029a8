"""Triton lightning-indexer scores and the fused indexer -> top-k entry point.

Each program scores a [BLOCK_T queries x BLOCK_S keys] tile: per indexer head one tensor-core
product q_h . k^T, ReLU, weighted by w[:, h], summed over heads in fp32 registers. Tiles wholly
above the causal diagonal are skipped. `indexer_topk` streams the queries in chunks: each chunk's
scores go to one reusable fp32 buffer [chunk, S] (bounded by `max_buffer_bytes`, so the full
[T, S] matrix never exists) and the top-k kernel (`kernels.topk`) reads them straight back.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._validate import require
from kernels.indexer.decode import launch_indexer_decode_scores
from kernels.indexer.reference import causal_lengths, check_indexer_args, check_indexer_fp8_args
from kernels.indexer.rows import auto_topk_method, contiguous_last, torch_topk_rows
from kernels.topk.kernel import TOPK_METHODS, launch_select_topk
from kernels.topk.minmax import GROUP, _group_extremes, group_stats_buffers


@triton.jit
def _add_head(scores, q_rows, q_mask, w_ptr, q_scale_ptr, k_tile, offs_t, t_ok, h, H, stride_qh, stride_wt,
              stride_qst, PRECISION: tl.constexpr, FP8: tl.constexpr):  # fmt: skip
    """scores + w[:, h] * ReLU(q_h . k^T) for one head (a head index >= H adds zeros)."""
    ok = t_ok & (h < H)
    q_h = tl.load(q_rows + h * stride_qh, mask=q_mask & ok[:, None], other=0.0)  # [BLOCK_T, BLOCK_D]
    w_h = tl.load(w_ptr + offs_t * stride_wt + h, mask=ok, other=0.0).to(tl.float32)
    if FP8:  # e4m3 products are exact in fp32; the query's positive power-of-two scale joins its weight
        w_h = w_h * tl.load(q_scale_ptr + offs_t * stride_qst + h, mask=ok, other=0.0)
        logits = tl.dot(q_h, k_tile)
    else:
        logits = tl.dot(q_h, k_tile, input_precision=PRECISION)  # [BLOCK_T, BLOCK_S]
    return scores + tl.maximum(logits, 0.0) * w_h[:, None]


@triton.jit
def _indexer_scores_kernel(
    q_ptr,
    w_ptr,
    k_ptr,
    out_ptr,
    q_scale_ptr,
    k_scale_ptr,
    gmax_ptr,
    gmin_ptr,
    T,
    S,
    start,
    stride_qt,
    stride_qh,
    stride_wt,
    stride_ks,
    stride_ot,
    stride_qst,
    stride_stat,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
    FILL_FUTURE: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,  # q and k are e4m3 with per-(t, h) and per-s scales (`quantize_indexer_fp8`)
    GROUP: tl.constexpr,  # > 0: also write each GROUP-key group's max and min ordered key ("minmax" top-k)
    HEAD_STEP: tl.constexpr,  # heads per loop step (1 or 2)
):
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    t_ok = offs_t < T
    s_ok = offs_s < S
    last_position = start + tl.minimum(pid_t * BLOCK_T + BLOCK_T, T) - 1
    if pid_s * BLOCK_S <= last_position:
        k_tile = tl.load(
            k_ptr + offs_s[None, :].to(tl.int64) * stride_ks + offs_d[:, None],
            mask=s_ok[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )  # [BLOCK_D, BLOCK_S]
        scores = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
        q_rows = q_ptr + offs_t[:, None].to(tl.int64) * stride_qt + offs_d[None, :]
        q_mask = t_ok[:, None] & (offs_d[None, :] < D)
        for h in range(0, H, HEAD_STEP):  # a runtime loop: unrolling 16+ heads only bloats the compile
            # With 2 heads per step the next head's product is issued before this head's epilogue runs.
            for j in tl.static_range(HEAD_STEP):
                scores = _add_head(scores, q_rows, q_mask, w_ptr, q_scale_ptr, k_tile, offs_t, t_ok, h + j, H,
                                   stride_qh, stride_wt, stride_qst, PRECISION, FP8)  # fmt: skip
        if FP8:  # each key's positive power-of-two scale commutes with ReLU: applied once, after the sum
            scores = scores * tl.load(k_scale_ptr + offs_s, mask=s_ok, other=0.0)[None, :]
        visible = offs_s[None, :] <= (start + offs_t)[:, None]
        # Built here, not before the head loop: 64-bit pointers of the whole tile held through the loop cost
        # 20-30 registers per thread (ptxas for sm_90a: 235 → 215 with Triton 3.6, 236 → 204 with 3.9).
        out_ptrs = out_ptr + offs_t[:, None].to(tl.int64) * stride_ot + offs_s[None, :]
        tl.store(out_ptrs, tl.where(visible, scores, float("-inf")), mask=t_ok[:, None] & s_ok[None, :])
        if GROUP > 0:
            GROUPS: tl.constexpr = BLOCK_S // GROUP
            group_max, group_min = _group_extremes(scores, visible, BLOCK_T, GROUPS, GROUP)
            slot = pid_s * GROUPS + tl.arange(0, GROUPS)
            stat = offs_t[:, None].to(tl.int64) * stride_stat + slot[None, :]
            stat_ok = t_ok[:, None] & (slot < tl.cdiv(S, GROUP))[None, :]
            tl.store(gmax_ptr + stat, group_max, mask=stat_ok)
            tl.store(gmin_ptr + stat, group_min, mask=stat_ok)
    elif FILL_FUTURE:
        tile = tl.full((BLOCK_T, BLOCK_S), float("-inf"), dtype=tl.float32)
        out_ptrs = out_ptr + offs_t[:, None].to(tl.int64) * stride_ot + offs_s[None, :]
        tl.store(out_ptrs, tile, mask=t_ok[:, None] & s_ok[None, :])


def launch_indexer_scores(
    q: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    start: int,
    out: torch.Tensor,
    *,
    fill_future: bool,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_t: int = 64,
    block_s: int = 128,
    num_warps: int = 4,
    num_stages: int | None = None,
    head_step: int | None = None,
    max_registers: int | None = None,
) -> None:
    """Score q [T, H, D] against k [S, D] into out [T, >= S] (row stride out.stride(0)); no checks.
    `scales` = (q_scale [T, H], k_scale [S]) for e4m3 q and k; `stats` = int32 (max, min) [T, >= ceil(S /
    GROUP)] buffers that also receive each key group's extreme ordered keys (`kernels.topk.minmax`). The
    default tiles are the H200 sweep's best (`kernels.indexer.bench`, session 13: 3 stages 381–394 TFLOP/s
    against 333–345 for 2 in two runs, level in a third); `head_step` (heads per loop step) defaults to 2 for
    e4m3 inputs (435 against 383 TFLOP/s) and 1 for 16-bit ones (359 against 348); `num_stages` to 4 for e4m3
    (session 15, two rounds: 489 and 471 against 463 and 454 TFLOP/s for 3; session 14: 454 against 421) and 3
    for 16-bit inputs (4: level, 355 and 371 against 351 and 376). `max_registers` caps ptxas'
    registers per thread (0: no cap); by default 16-bit inputs on 4 warps take 168, so three programs share an SM
    instead of two (215 registers uncapped, a few bytes spilled capped; session 14: 387 against 361 TFLOP/s),
    while e4m3's two-heads-per-step tile is faster uncapped (476 against 446)."""
    tokens, heads, dim = q.shape
    keys = k.shape[0]
    if tokens == 0 or keys == 0:
        return
    block_d = max(32 if scales is not None else 16, triton.next_power_of_2(dim))  # FP8 dots take K >= 32
    precision = "tf32x3" if q.dtype == torch.float32 else "tf32"
    num_stages = num_stages or (4 if scales is not None else 3)
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(keys, block_s))
    sixteen_bit = q.dtype in (torch.bfloat16, torch.float16)
    cap = (168 if sixteen_bit and num_warps == 4 else 0) if max_registers is None else max_registers
    q_scale, k_scale = scales if scales is not None else (w, w)  # unused placeholders when not FP8
    gmax, gmin = stats if stats is not None else (out, out)  # unused placeholders without stats
    _indexer_scores_kernel[grid](
        q, w, k, out, q_scale, k_scale, gmax, gmin, tokens, keys, start,
        q.stride(0), q.stride(1), w.stride(0), k.stride(0), out.stride(0), q_scale.stride(0), gmax.stride(0),
        H=heads, D=dim, BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_S=block_s,
        FILL_FUTURE=fill_future, PRECISION=precision, FP8=scales is not None,
        GROUP=GROUP if stats is not None else 0, HEAD_STEP=head_step or (2 if scales is not None else 1), num_warps=num_warps, num_stages=num_stages,
        **({"maxnreg": cap} if cap else {}),
    )  # fmt: skip


def indexer_scores(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, start: int) -> torch.Tensor:
    """Lightning-indexer scores, materialised (for tests and short sequences).

    Args:
        q: [T, H_I, D_I] fp32/fp16/bf16 indexer queries; query t sits at position start + t.
        w: [T, H_I] per-head weights (any positive scale already folded in).
        k: [S, D_I] indexer keys, S = start + T, same dtype as q.
        start: absolute position of the first query.

    Returns:
        fp32 [T, S]: I[t, s] = sum_j w[t, j] * ReLU(q[t, j] . k[s]); -inf where s > start + t.
    """
    check_indexer_args(q, w, k, start)
    q, w, k = contiguous_last(q), contiguous_last(w), contiguous_last(k)
    out = torch.empty(q.shape[0], k.shape[0], dtype=torch.float32, device=q.device)
    launch_indexer_scores(q, w, k, start, out, fill_future=True)
    return out


def indexer_scores_fp8(
    q8: torch.Tensor,
    q_scale: torch.Tensor,
    w: torch.Tensor,
    k8: torch.Tensor,
    k_scale: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """`indexer_scores` on FP8 inputs (`quantize_indexer_fp8`: Hadamard-rotated e4m3 with power-of-two
    per-vector scales): one FP8 tensor-core product per head and tile, scaled after the sum. The oracle is
    `indexer_scores_fp8_ref`; fp32 [T, S] with -inf above the causal diagonal."""
    check_indexer_fp8_args(q8, q_scale, w, k8, k_scale, start)
    q8, w, k8 = contiguous_last(q8), contiguous_last(w), contiguous_last(k8)
    scales = (q_scale.float().contiguous(), k_scale.float().contiguous())
    out = torch.empty(q8.shape[0], k8.shape[0], dtype=torch.float32, device=q8.device)
    launch_indexer_scores(q8, w, k8, start, out, fill_future=True, scales=scales)
    return out


def indexer_topk(
    q: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    topk: int,
    start: int,
    *,
    max_buffer_bytes: int = 1 << 30,
    topk_method: str = "auto",
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per query, the `topk` causal keys with the largest indexer scores.

    Args:
        q: [T, H_I, D_I] fp32/fp16/bf16 indexer queries; query t sits at absolute position start + t.
        w: [T, H_I] per-head weights (fp32 preferred; any positive scale folded in by the caller).
        k: [S, D_I] indexer keys for positions 0 .. S-1, S = start + T, same dtype as q.
        topk: keys to keep per query (2048 for Keye-VL-2.0).
        start: absolute position of the first query (history length).
        max_buffer_bytes: bound on the score buffer (+ top-k scratch) reused across query chunks.
        topk_method: "auto" (default: "cooperative" for one query, "torch" for chunks of <= 64, else
            "minmax"), "torch" (torch.topk on the -inf-masked score rows) or a `kernels.topk` method:
            "compact", "sample", "radix", "split", "cooperative", "bound", "minmax" (the score kernel
            also writes the group extremes it bounds with).
        scales: (q_scale [T, H_I], k_scale [S]) when q and k are e4m3 (`quantize_indexer_fp8`): the
            scores are `indexer_scores_fp8`'s, computed chunk by chunk like the bf16 ones.

    Returns:
        int32 [T, topk] key positions in no particular order. A query that sees L <= topk keys
        selects all of them (0 .. L-1) and is padded with -1. With the `kernels.topk` methods ties at
        the threshold go to the lower position (+0.0 ranks above -0.0); torch.topk ("torch", and
        "auto" for chunks of 2-64 rows) breaks them its own way.
    """
    if scales is None:
        check_indexer_args(q, w, k, start)
    else:
        check_indexer_fp8_args(q, scales[0], w, k, scales[1], start)
        scales = (scales[0].float().contiguous(), scales[1].float().contiguous())
    require(topk >= 1, f"topk must be >= 1, got {topk}")
    q, w, k = contiguous_last(q), contiguous_last(w), contiguous_last(k)
    tokens, keys = q.shape[0], k.shape[0]
    out = torch.empty(tokens, topk, dtype=torch.int32, device=q.device)
    lengths = causal_lengths(tokens, start, q.device)  # [T]
    methods = ("auto", "torch", *TOPK_METHODS)
    require(topk_method in methods, f"topk_method must be one of {methods}, got {topk_method!r}")
    # Bytes per score entry: fp32 score + key/column scratch (12), + "split"'s two 512-bin int32 histograms
    # per 2048-column slice (which "cooperative" falls back to when a chunk's slices do not fit on the GPU
    # at once), + "minmax"'s two int32 group extremes per GROUP columns; "auto" may use any of them.
    bytes_per_entry = {"radix": 4, "torch": 4, "bound": 12, "compact": 12, "sample": 12}.get(topk_method, 14)
    chunk = max(64, (max_buffer_bytes // (bytes_per_entry * max(keys, 1))) // 64 * 64)
    buffer = scratch = stats = None
    for first in range(0, tokens, chunk):
        last = min(first + chunk, tokens)
        visible = start + last  # keys the last query of this chunk sees
        method = topk_method
        if method == "auto":
            method = auto_topk_method(last - first)
        if visible <= topk:  # every row selects everything: the scores are never read
            scores = buffer if buffer is not None else torch.empty(last - first, 1, device=q.device)
            launch_select_topk(
                scores[: last - first], topk, lengths[first:last], out[first:last], method="radix"
            )
            continue
        if buffer is None:
            rows = min(chunk, tokens)
            buffer = torch.empty(rows, keys, dtype=torch.float32, device=q.device)
        if scratch is None and method not in ("radix", "torch"):
            scratch = tuple(torch.empty(buffer.shape, dtype=torch.int32, device=q.device) for _ in range(2))
        if stats is None and method == "minmax":
            stats = group_stats_buffers(*buffer.shape, q.device)
        single = last - first == 1 and scales is None
        chunk_stats = stats if method == "minmax" and not single else None  # else launch_minmax makes them
        if single:  # one query (decode): the decode kernel's [keys, heads] products, no padded query rows
            launch_indexer_decode_scores(
                q[first:last], w[first:last], k[:visible], lengths[first:last], lengths[first:last],
                buffer[:1, :visible],
            )  # fmt: skip
        else:  # a few queries want the smallest tile the tensor cores take
            chunk_scales = None if scales is None else (scales[0][first:last], scales[1][:visible])
            launch_indexer_scores(
                q[first:last], w[first:last], k[:visible], start + first, buffer, fill_future=method == "torch",
                scales=chunk_scales, stats=chunk_stats, block_t=16 if last - first <= 16 else 64,
            )  # fmt: skip
        if method == "torch":
            torch_topk_rows(buffer[: last - first, :visible], topk, lengths[first:last], out[first:last])
        else:
            launch_select_topk(
                buffer[: last - first],
                topk,
                lengths[first:last],
                out[first:last],
                method=method,
                scratch=scratch,
                stats=chunk_stats,
            )
    return out
