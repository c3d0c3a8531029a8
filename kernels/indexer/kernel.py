"""Triton lightning-indexer scores and the fused indexer -> top-k entry point.

Each program holds a few queries' q for every indexer head in shared memory and walks a range of key
tiles: one tensor-core product k_tile . [q of every (head, query)]^T per tile, ReLU, weighted by w, summed
over heads in fp32 registers (a thread holds every head of its queries). Tiles wholly above the causal
diagonal are skipped. `indexer_topk` streams the queries in chunks: each chunk's
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
from kernels.topk.minmax import (
    GROUP,
    _group_extremes,
    _max_halves,
    _max_halves_asm,
    _ordered_key,
    _pack_extremes,
    group_stats_buffers,
)


@triton.jit
def _score_tile(k_ptr, k_scale_ptr, out_rows, ext_rows, q_all, w_col, w_mat, s0, S, start, offs_t, t_ok,
                stride_ks, HP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
                BLOCK_S: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr, GROUP: tl.constexpr,
                OFFSETS_32: tl.constexpr, MASKED: tl.constexpr, HEAD_MMA: tl.constexpr,
                INTERPRETED: tl.constexpr):  # fmt: skip
    """Score keys s0 .. s0 + BLOCK_S against the program's queries and store them (and their packed group
    extremes, `kernels.topk.minmax`). Returns those extremes as uint32 [GROUPS, BLOCK_T] (zeros without
    GROUP), for the program's row tops. MASKED = False: every query sees every key of the tile, so no mask is
    built (most tiles)."""
    offs_s = s0 + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    key_rows = offs_s if OFFSETS_32 else offs_s.to(tl.int64)
    k_ptrs = k_ptr + key_rows[:, None] * stride_ks + offs_d[None, :]
    if MASKED or D != BLOCK_D:
        k_tile = tl.load(k_ptrs, mask=(offs_s < S)[:, None] & (offs_d < D)[None, :], other=0.0)
    else:
        k_tile = tl.load(k_ptrs)  # [BLOCK_S, BLOCK_D]
    # [BLOCK_S, HP * BLOCK_T]; e4m3 products are exact in fp32 and take no precision argument
    logits = tl.dot(k_tile, q_all) if FP8 else tl.dot(k_tile, q_all, input_precision=PRECISION)
    if HEAD_MMA:  # the weighted head sum as a second product, ReLU'd logits rounded to w_mat's 16 bits
        if INTERPRETED:  # no inline assembly there: the same product in fp32, unrounded
            relu = tl.maximum(logits, 0.0)
        else:  # ReLU and the bf16 rounding of two logits in one instruction
            relu = tl.inline_asm_elementwise(
                "cvt.rn.relu.bf16x2.f32 $0, $2, $1;",
                "=r,r,r",
                [logits],
                dtype=tl.bfloat16,
                is_pure=True,
                pack=2,
            )
        pairs = tl.dot(relu, w_mat)  # [BLOCK_S, 2 * BLOCK_T]: query t in column 2 t, the odd columns 0
        scores, _ = tl.split(tl.reshape(pairs, (BLOCK_S, BLOCK_T, 2)))
        scores = scores + 0.0  # a sum of -0.0 products may come out -0.0; the ordering below needs +0.0
    else:
        # Column h * BLOCK_T + t: each thread holds every head of its queries, so this sum stays in its registers.
        scores = tl.sum(tl.reshape(tl.maximum(logits, 0.0) * w_col[None, :], (BLOCK_S, HP, BLOCK_T)), 1)
    if FP8:  # each key's positive power-of-two scale commutes with ReLU: applied once, after the sum
        scale = (
            tl.load(k_scale_ptr + offs_s, mask=offs_s < S, other=0.0)
            if MASKED
            else tl.load(k_scale_ptr + offs_s)
        )
        scores = scores * scale[:, None]
    by_key = scores
    scores = tl.trans(scores)  # [BLOCK_T, BLOCK_S]
    GROUPS: tl.constexpr = BLOCK_S // GROUP if GROUP > 0 else 1
    slot = s0 // GROUP + tl.arange(0, GROUPS) if GROUP > 0 else tl.arange(0, 1)
    extremes = tl.zeros((GROUPS, BLOCK_T), dtype=tl.uint32)
    if MASKED:
        visible = offs_s[None, :] <= (start + offs_t)[:, None]
        tl.store(out_rows[:, None] + offs_s[None, :], tl.where(visible, scores, float("-inf")),
                 mask=t_ok[:, None] & (offs_s < S)[None, :])  # fmt: skip
        if GROUP > 0:
            stat_ok = t_ok[:, None] & (slot < tl.cdiv(S, GROUP))[None, :]
            packed = _group_extremes(scores, visible, BLOCK_T, GROUPS, GROUP, INTERPRETED)  # [T, GROUPS]
            tl.store(ext_rows[:, None] + slot[None, :], packed, mask=stat_ok)
            extremes = tl.trans(packed).to(tl.uint32, bitcast=True)
    else:
        tl.store(out_rows[:, None] + offs_s[None, :], scores, mask=t_ok[:, None])
        if GROUP > 0:
            # Max and min over a thread's own keys in fp32 (sums start at +0.0, never -0.0, so fp32 orders them as
            # their keys do), then packed and reduced across lanes; before the transpose: keys along rows.
            halves = tl.reshape(by_key, (GROUPS, 2, GROUP // 2, BLOCK_T))
            packed = _pack_extremes(_ordered_key(tl.max(halves, 1)), _ordered_key(tl.min(halves, 1)))
            if INTERPRETED:
                extremes = tl.reduce(packed, 1, _max_halves)  # [GROUPS, BLOCK_T]
            else:
                extremes = tl.reduce(packed, 1, _max_halves_asm)
            tl.store(
                ext_rows[None, :] + slot[:, None], extremes.to(tl.int32, bitcast=True), mask=t_ok[None, :]
            )
    return extremes


@triton.jit
def _indexer_scores_kernel(
    q_ptr,
    w_ptr,
    k_ptr,
    out_ptr,
    q_scale_ptr,
    k_scale_ptr,
    ext_ptr,
    top_ptr,
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
    HP: tl.constexpr,  # H rounded up to a power of two (padding heads have weight 0)
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
    KEY_TILES: tl.constexpr,  # key tiles per program: its q is loaded once for all of them
    FILL_FUTURE: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,  # q and k are e4m3 with per-(t, h) and per-s scales (`quantize_indexer_fp8`)
    GROUP: tl.constexpr,  # > 0: also write each GROUP-key group's packed extremes and the row tops ("minmax")
    OFFSETS_32: tl.constexpr,  # every key's element offset fits int32
    HEAD_MMA: tl.constexpr,  # the weighted head sum on the tensor cores, in bf16 (`launch_indexer_scores`)
    INTERPRETED: tl.constexpr,  # under TRITON_INTERPRET: no inline assembly, fp32 head products
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    t0 = pid_t * BLOCK_T
    last_position = start + tl.minimum(t0 + BLOCK_T, T) - 1
    s_begin = pid_c * (KEY_TILES * BLOCK_S)
    s_stop = tl.minimum(s_begin + KEY_TILES * BLOCK_S, S)  # this program's key range
    s_end = tl.minimum(s_stop, last_position + 1)  # ... of which its queries see some
    offs_t = t0 + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    out_rows = out_ptr + offs_t.to(tl.int64) * stride_ot
    if s_begin < s_end:
        # Tiles before s_full hold only keys that every query of the block sees.
        s_full = tl.maximum(tl.minimum(s_end, (start + t0 + 1) // BLOCK_S * BLOCK_S), s_begin)
        cols = tl.arange(0, HP * BLOCK_T)
        col_t = t0 + cols % BLOCK_T
        col_h = cols // BLOCK_T
        col_ok = (col_t < T) & (col_h < H)
        offs_d = tl.arange(0, BLOCK_D)
        q_all = tl.load(
            q_ptr + col_t[None, :].to(tl.int64) * stride_qt + col_h[None, :] * stride_qh + offs_d[:, None],
            mask=col_ok[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )  # [BLOCK_D, HP * BLOCK_T]: q^T, the products' B operand, loaded once
        w_col = tl.load(w_ptr + col_t * stride_wt + col_h, mask=col_ok, other=0.0).to(tl.float32)
        if FP8:  # the query's positive power-of-two scale joins its weight
            w_col = w_col * tl.load(q_scale_ptr + col_t * stride_qst + col_h, mask=col_ok, other=0.0)
        # w_mat[h * BLOCK_T + t, 2 * t] = w[t, h]: the head sum as a product (HEAD_MMA); other entries 0
        w_mat = tl.where(
            (cols % BLOCK_T)[:, None] * 2 == tl.arange(0, 2 * BLOCK_T)[None, :], w_col[:, None], 0.0
        )
        w_mat = w_mat.to(tl.float32 if INTERPRETED else tl.bfloat16)
        ext_rows = ext_ptr + offs_t.to(tl.int64) * stride_stat
        GROUPS: tl.constexpr = BLOCK_S // GROUP if GROUP > 0 else 1
        best = tl.zeros((GROUPS, BLOCK_T), dtype=tl.uint32)  # the largest packed extremes seen, per query
        for s0 in range(s_begin, s_full, BLOCK_S):
            tile_best = _score_tile(k_ptr, k_scale_ptr, out_rows, ext_rows, q_all, w_col, w_mat, s0, S, start, offs_t,
                        t_ok, stride_ks, HP, D, BLOCK_D, BLOCK_T, BLOCK_S, PRECISION, FP8, GROUP, OFFSETS_32, False,
                        HEAD_MMA, INTERPRETED)  # fmt: skip
            best = tl.maximum(best, tile_best)
        for s0 in range(s_full, s_end, BLOCK_S):
            tile_best = _score_tile(k_ptr, k_scale_ptr, out_rows, ext_rows, q_all, w_col, w_mat, s0, S, start, offs_t,
                        t_ok, stride_ks, HP, D, BLOCK_D, BLOCK_T, BLOCK_S, PRECISION, FP8, GROUP, OFFSETS_32, True,
                        HEAD_MMA, INTERPRETED)  # fmt: skip
            best = tl.maximum(best, tile_best)
        if GROUP > 0:  # the top byte of each row's largest key here, for the select's first digit
            top = (tl.max(best, 0) >> 24).to(tl.int32)
            tl.atomic_max(top_ptr + offs_t, top, mask=t_ok, sem="relaxed")
    if FILL_FUTURE:  # the tiles past the last one scored hold no visible key: -inf
        fill_from = s_begin + tl.cdiv(tl.maximum(s_end - s_begin, 0), BLOCK_S) * BLOCK_S
        for s0 in range(fill_from, s_stop, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            tile = tl.full((BLOCK_T, BLOCK_S), float("-inf"), dtype=tl.float32)
            tl.store(out_rows[:, None] + offs_s[None, :], tile, mask=t_ok[:, None] & (offs_s < S)[None, :])


# The interpreter (TRITON_INTERPRET=1) runs no inline assembly, and Triton 3.9's interpreter multiplies bf16 dots
# wrongly: there the head_mma product runs in fp32.
INTERPRETED = not isinstance(_indexer_scores_kernel, triton.JITFunction)
# ptxas' register cap for e4m3 tiles with the MMA head sum: 112 registers hold four programs per SM, 96 five, with
# no spill in the unmasked loop (Triton 3.6). The tile is latency-bound, so the fifth program pays: H200, session 20,
# 32K tiles 524-535 TFLOP/s against 441-512, indexer + top-k at 256K 189.0-189.2 -> 183.5-184.1 ms (same selections).
# The FMA head sum holds 144-147 registers and spills ~175 instructions at 96: no cap there.
E4M3_MMA_MAX_REGISTERS = 96


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
    block_t: int = 8,
    block_s: int = 64,
    key_tiles: int = 32,
    num_warps: int = 4,
    num_stages: int = 3,
    max_registers: int | None = None,
    head_mma: bool = False,
) -> None:
    """Score q [T, H, D] against k [S, D] into out [T, >= S] (row stride out.stride(0)); no checks.
    `scales` = (q_scale [T, H], k_scale [S]) for e4m3 q and k; `stats` = (int32 [T, >= ceil(S / GROUP)], int32
    [T] holding zeros) (`kernels.topk.minmax.group_stats_buffers`) that also receive each key group's packed
    extremes and the top byte of each row's largest score.

    A program holds `block_t` queries' q for every head in shared memory, as one [D, H * block_t] operand, and
    walks `key_tiles` tiles of `block_s` keys with one tensor-core product each (keys are the product's rows).
    Session 16 on the H200 (4096 queries x 32K keys, with group extremes, each against the previous kernel in the
    same process): 8 queries x 64 keys, 4 warps, 3 stages 363-379 TFLOP/s bf16 and 443-445 e4m3 against 329-349
    and 407-416 for session 15's kernel (64 queries x 128 keys, each head's q tile re-read from L2 per key tile);
    then e4m3 441-467 against 414-426 with both extremes in one store. 16 queries hold 255 registers and were no
    faster; 16 or 64 key tiles per program were level with 32.
    `max_registers` caps ptxas' registers per thread (0: no cap; None: `E4M3_MMA_MAX_REGISTERS` for e4m3 inputs
    with `head_mma` at the measured shape, 16 heads x 64 in 8 x 64 tiles on 4 warps; else no cap).

    `head_mma` sums the heads with a second tensor-core product instead of per-element FMAs: one instruction
    per two logits takes their ReLU and rounds them to bf16, and [keys, heads x queries] . w_mat [heads x
    queries, 2 x queries] (w in bf16, fp32 accumulation) gives the scores. Each term then carries up to 2^-8
    relative error twice (the logit's rounding and w's), so a score is within 2^-7 of sum_h |w_h| ReLU(.)
    of the fp32 sum: far below e4m3 inputs' own rounding, a visible loosening for bf16 ones. Session 19 on the
    H200: the loop step 274 -> 176 instructions, 168 -> 112 registers; e4m3 tiles +5-20 % (32K sweep, two
    machines), indexer + top-k at 256K 11 % faster; bf16 level to +13 % in the sweep, 3-4 % at 256K."""
    tokens, heads, dim = q.shape
    keys = k.shape[0]
    if tokens == 0 or keys == 0:
        return
    block_d = max(32 if scales is not None else 16, triton.next_power_of_2(dim))  # FP8 dots take K >= 32
    padded_heads = triton.next_power_of_2(heads)
    # The product's N = padded heads x queries: at least 16 (the tensor cores' smallest), at most 256 where it can.
    block_t = max(min(block_t, max(1, 256 // padded_heads)), triton.cdiv(16, padded_heads))
    # The register cap where it was measured: e4m3, MMA head sum, Keye's 16 x 64 at the default tile.
    if max_registers is None:
        measured = (block_t, block_s, block_d, padded_heads, num_warps) == (8, 64, 64, 16, 4)
        max_registers = E4M3_MMA_MAX_REGISTERS if head_mma and scales is not None and measured else 0
    precision = "tf32x3" if q.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(keys, block_s * key_tiles))
    q_scale, k_scale = scales if scales is not None else (w, w)  # unused placeholders when not FP8
    extremes, tops = stats if stats is not None else (out, out)  # unused placeholders without stats
    _indexer_scores_kernel[grid](
        q, w, k, out, q_scale, k_scale, extremes, tops, tokens, keys, start,
        q.stride(0), q.stride(1), w.stride(0), k.stride(0), out.stride(0), q_scale.stride(0), extremes.stride(0),
        H=heads, HP=padded_heads, D=dim, BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_S=block_s, KEY_TILES=key_tiles,
        FILL_FUTURE=fill_future, PRECISION=precision, FP8=scales is not None,
        GROUP=GROUP if stats is not None else 0, OFFSETS_32=(keys - 1) * k.stride(0) + dim < 2**31, HEAD_MMA=head_mma,
        INTERPRETED=INTERPRETED,
        num_warps=num_warps, num_stages=num_stages, **({"maxnreg": max_registers} if max_registers else {}),
    )  # fmt: skip


def indexer_scores(
    q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, start: int, *, head_mma: bool = False
) -> torch.Tensor:
    """Lightning-indexer scores, materialised (for tests and short sequences).

    Args:
        q: [T, H_I, D_I] fp32/fp16/bf16 indexer queries; query t sits at position start + t.
        w: [T, H_I] per-head weights (any positive scale already folded in).
        k: [S, D_I] indexer keys, S = start + T, same dtype as q.
        start: absolute position of the first query.
        head_mma: sum the heads on the tensor cores in bf16 (`launch_indexer_scores`).

    Returns:
        fp32 [T, S]: I[t, s] = sum_j w[t, j] * ReLU(q[t, j] . k[s]); -inf where s > start + t.
    """
    check_indexer_args(q, w, k, start)
    q, w, k = contiguous_last(q), contiguous_last(w), contiguous_last(k)
    out = torch.empty(q.shape[0], k.shape[0], dtype=torch.float32, device=q.device)
    launch_indexer_scores(q, w, k, start, out, fill_future=True, head_mma=head_mma)
    return out


def indexer_scores_fp8(
    q8: torch.Tensor,
    q_scale: torch.Tensor,
    w: torch.Tensor,
    k8: torch.Tensor,
    k_scale: torch.Tensor,
    start: int,
    *,
    head_mma: bool = False,
) -> torch.Tensor:
    """`indexer_scores` on FP8 inputs (`quantize_indexer_fp8`: Hadamard-rotated e4m3 with power-of-two
    per-vector scales): one FP8 tensor-core product per head and tile, scaled after the sum. The oracle is
    `indexer_scores_fp8_ref`; fp32 [T, S] with -inf above the causal diagonal."""
    check_indexer_fp8_args(q8, q_scale, w, k8, k_scale, start)
    q8, w, k8 = contiguous_last(q8), contiguous_last(w), contiguous_last(k8)
    scales = (q_scale.float().contiguous(), k_scale.float().contiguous())
    out = torch.empty(q8.shape[0], k8.shape[0], dtype=torch.float32, device=q8.device)
    launch_indexer_scores(q8, w, k8, start, out, fill_future=True, scales=scales, head_mma=head_mma)
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
    head_mma: bool | None = None,
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
        head_mma: the score kernel sums the heads on the tensor cores in bf16 (`launch_indexer_scores`);
            None: for e4m3 inputs only, whose own rounding is 16x coarser (session 19 on the H200: the
            indexer + top-k at 256K 11 % faster, bf16 inputs 3-4 %). A chunk of one bf16 query is scored by
            the decode kernel, exactly, either way.

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
    if head_mma is None:
        head_mma = scales is not None
    q, w, k = contiguous_last(q), contiguous_last(w), contiguous_last(k)
    tokens, keys = q.shape[0], k.shape[0]
    out = torch.empty(tokens, topk, dtype=torch.int32, device=q.device)
    lengths = causal_lengths(tokens, start, q.device)  # [T]
    methods = ("auto", "torch", *TOPK_METHODS)
    require(topk_method in methods, f"topk_method must be one of {methods}, got {topk_method!r}")
    # Bytes per score entry: fp32 score + key/column scratch (12), + "split"'s two 512-bin int32 histograms
    # per 2048-column slice (which "cooperative" falls back to when a chunk's slices do not fit on the GPU
    # at once), + "minmax"'s packed int32 group extremes per GROUP columns; "auto" may use any of them.
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
            # Rows of whole GROUP-key groups, which "minmax" loads whole (`minmax.GROUP_LOADS`).
            padded = triton.cdiv(keys, GROUP) * GROUP
            buffer = torch.empty(min(chunk, tokens), padded, dtype=torch.float32, device=q.device)
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
        else:
            chunk_scales = None if scales is None else (scales[0][first:last], scales[1][:visible])
            launch_indexer_scores(
                q[first:last], w[first:last], k[:visible], start + first, buffer, fill_future=method == "torch",
                scales=chunk_scales, stats=chunk_stats, head_mma=head_mma,
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
