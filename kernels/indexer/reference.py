"""Plain-PyTorch lightning-indexer scores and causal top-k: the oracles for the Triton path.

I[t, s] = sum_j w[t, j] * ReLU(q[t, j] . k[s]) in fp32 (spec keye-vl-2 §2.2, with any positive
scale folded into w by the caller). Query t sits at absolute position start + t and sees keys
s <= start + t. The top-k reference tiles over queries so long sequences never hold the full
[T, S] matrix at once.
"""

from __future__ import annotations

import torch

from kernels._validate import FLOAT_DTYPES, require, require_dtype, require_rank, require_same_device
from kernels.topk.reference import select_topk_ref
from model_runtime.index_fp8 import hadamard as runtime_hadamard


def check_indexer_args(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, start: int) -> None:
    require_rank("q", q, 3)
    require_rank("w", w, 2)
    require_rank("k", k, 2)
    require_dtype("q", q, FLOAT_DTYPES)
    require_dtype("w", w, FLOAT_DTYPES)
    require(k.dtype == q.dtype, f"k dtype {k.dtype} must match q dtype {q.dtype}")
    require_same_device(q=q, w=w, k=k)
    tokens, heads, dim = q.shape
    require(w.shape == (tokens, heads), f"w must be [T, H_I] = {(tokens, heads)}, got {tuple(w.shape)}")
    require(k.shape[1] == dim, f"k head dim {k.shape[1]} must match q head dim {dim}")
    require(start >= 0, f"start must be >= 0, got {start}")
    require(k.shape[0] == start + tokens, f"k must hold start + T = {start + tokens} keys, got {k.shape[0]}")


def causal_lengths(tokens: int, start: int, device: torch.device) -> torch.Tensor:
    """int32 [T]: how many keys query t may see (positions 0 .. start + t inclusive)."""
    return torch.arange(start + 1, start + tokens + 1, dtype=torch.int32, device=device)


def indexer_scores_ref(
    q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, start: int, *, head_rounding: torch.dtype | None = None
) -> torch.Tensor:
    """fp32 [T, S] indexer scores; entries above the causal diagonal are -inf. `head_rounding` rounds each
    ReLU'd logit and each weight to that dtype before the head sum, as the kernels' `head_mma` does."""
    check_indexer_args(q, w, k, start)
    relu = torch.einsum("thd,sd->ths", q.float(), k.float()).clamp_min(0)  # [T, H, S]
    w = w.float()
    if head_rounding is not None:
        relu, w = relu.to(head_rounding).float(), w.to(head_rounding).float()
    scores = torch.einsum("th,ths->ts", w, relu)  # [T, S]
    lengths = causal_lengths(q.shape[0], start, q.device)  # [T]
    future = torch.arange(k.shape[0], device=q.device)[None, :] >= lengths[:, None]  # [T, S]
    return scores.masked_fill(future, float("-inf"))


def indexer_topk_ref(
    q: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    topk: int,
    start: int,
    *,
    query_chunk: int = 256,
    head_rounding: torch.dtype | None = None,
) -> torch.Tensor:
    """int32 [T, topk]: per query, the `topk` best causal keys by indexer score (`indexer_scores_ref`, with its
    `head_rounding`), padded with -1."""
    check_indexer_args(q, w, k, start)
    require(topk >= 1, f"topk must be >= 1, got {topk}")
    pieces = []
    for first in range(0, q.shape[0], query_chunk):
        last = min(first + query_chunk, q.shape[0])
        visible = start + last  # keys any query of this chunk may see
        scores = indexer_scores_ref(
            q[first:last], w[first:last], k[:visible], start + first, head_rounding=head_rounding
        )  # [t, visible]
        lengths = causal_lengths(last - first, start + first, q.device)
        pieces.append(select_topk_ref(scores, topk, lengths))
    if not pieces:
        return torch.empty(0, topk, dtype=torch.int32, device=q.device)
    return torch.cat(pieces)


def indexer_decode_scores_ref(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 [B, capacity] scores of `indexer_decode_scores`, one sequence at a time: gather positions
    0 .. L-1 through the page table and score the new query at position L - 1; -inf from L on. e4m3 keys
    (with `k_scale`) are first read back in q's dtype, exactly (4 significant bits times a power of two)."""
    if k_scale is not None:
        k_cache = (k_cache.float() * k_scale[..., None]).to(q.dtype)
    page_size = k_cache.shape[1]
    capacity = page_table.shape[1] * page_size
    scores = torch.full((q.shape[0], capacity), float("-inf"), dtype=torch.float32, device=q.device)
    for b, length in enumerate(lengths.long().clamp(0, capacity).tolist()):
        if length:
            positions = torch.arange(length, device=q.device)
            keys = k_cache[page_table[b, positions // page_size].long(), positions % page_size]  # [L, D]
            scores[b, :length] = indexer_scores_ref(q[b : b + 1], w[b : b + 1], keys, length - 1)[0]
    return scores


def indexer_decode_topk_ref(
    q: torch.Tensor,
    w: torch.Tensor,
    k_cache: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    topk: int,
    *,
    k_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """int32 [B, topk]: `indexer_decode_topk`'s selection from the reference scores, padded with -1."""
    capacity = page_table.shape[1] * k_cache.shape[1]
    scores = indexer_decode_scores_ref(q, w, k_cache, page_table, lengths, k_scale=k_scale)
    return select_topk_ref(scores, topk, lengths.to(torch.int32).clamp(0, capacity))


# ---- FP8 indexer (spec §2.2: e4m3 with power-of-two per-vector scales after a Hadamard transform) ----

E4M3_MAX = 448.0


def hadamard(dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix [dim, dim] (dim a power of two): x @ H keeps dot products
    and spreads an outlier channel over all of them, so one per-vector scale fits the vector."""
    require(dim >= 1 and dim & (dim - 1) == 0, f"the Hadamard transform needs a power-of-two dim, got {dim}")
    # The served model's matrix (`model_runtime.index_fp8`, cached there; a copy, so callers may write to it).
    return runtime_hadamard(dim, torch.device(device)).clone()


def quantize_indexer_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] → (e4m3 [..., D] of the Hadamard-rotated x, fp32 power-of-two scales [...]) with
    rotated x ≈ q * scale; the scale is the smallest power of two that fits the vector's largest value."""
    rotated = x.float() @ hadamard(x.shape[-1], x.device)
    amax = rotated.abs().amax(dim=-1).clamp_min(1e-30)
    scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    return (rotated / scale[..., None]).to(torch.float8_e4m3fn), scale


def check_indexer_fp8_args(
    q8: torch.Tensor,
    q_scale: torch.Tensor,
    w: torch.Tensor,
    k8: torch.Tensor,
    k_scale: torch.Tensor,
    start: int,
) -> None:
    require(q8.dtype == torch.float8_e4m3fn and k8.dtype == torch.float8_e4m3fn, "q8 and k8 must be e4m3")
    require(q_scale.shape == q8.shape[:2], f"q_scale must be [T, H] = {tuple(q8.shape[:2])}")
    require(k_scale.shape == k8.shape[:1], f"k_scale must be [S] = {tuple(k8.shape[:1])}")
    require(q8.shape[0] == w.shape[0] and q8.shape[1] == w.shape[1], "w must be [T, H_I]")
    require(k8.shape[0] == start + q8.shape[0], f"k must hold start + T = {start + q8.shape[0]} keys")
    require(k8.shape[1] == q8.shape[2], "k head dim must match q head dim")
    require_same_device(q8=q8, q_scale=q_scale, w=w, k8=k8, k_scale=k_scale)
    # The kernel takes the scales out of the ReLU, which only a positive scale commutes with.
    require(bool((q_scale > 0).all()) and bool((k_scale > 0).all()), "q_scale and k_scale must be positive")


def indexer_scores_fp8_ref(
    q8: torch.Tensor,
    q_scale: torch.Tensor,
    w: torch.Tensor,
    k8: torch.Tensor,
    k_scale: torch.Tensor,
    start: int,
    *,
    head_rounding: torch.dtype | None = None,
) -> torch.Tensor:
    """`indexer_scores_ref` on FP8 inputs from `quantize_indexer_fp8_ref` (q8 [T, H, D], q_scale [T, H], k8 [S, D],
    k_scale [S]): the scores of the dequantised vectors, fp32 [T, S], -inf above the causal diagonal. The
    scales are powers of two, so rounding the dequantised terms (`head_rounding`) rounds the kernel's."""
    check_indexer_fp8_args(q8, q_scale, w, k8, k_scale, start)
    q = q8.float() * q_scale[..., None].float()
    k = k8.float() * k_scale[:, None].float()
    return indexer_scores_ref(q, w, k, start, head_rounding=head_rounding)
