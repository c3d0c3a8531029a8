"""Keye-VL-2.0's language model: a Qwen3-MoE decoder whose attention is top-k sparse (spec §1–§2).

Read top-down: the per-sequence cache, the decoder (`KeyeTextModel` → `DecoderLayer` → `Attention`), the
attention backends (dense / reference top-k mask / Triton kernels), the `Indexer` that picks each query's
keys, the MoE block, norms and rotary helpers. The model only does math: the engine creates caches,
decides what to prefill and decode, and samples. A forward takes a ragged batch: the new tokens of
several sequences concatenated, each `Segment` saying how many tokens are its own and which cache they
extend, so prefill of different prompts and batched decode are the same call.

Legend: N = new tokens of all sequences, T = new tokens of one sequence, S = its keys (cached + new),
D = hidden, H = query heads, K = kv heads, G = H/K, Dh = head dim, I = indexer heads, Di = indexer dim,
E = experts, F = expert width, k = experts per token, L = layers.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from model_runtime.config import TextConfig
from model_runtime.fp8 import Fp8Experts, moe_fp8_reference, quantize_blocks
from model_runtime.index_fp8 import round_fp8, split_fp8

if TYPE_CHECKING:
    from model_runtime.decode import DecodeState

ATTN_IMPLS = ("dense", "reference", "triton")
MOE_IMPLS = ("reference", "triton", "all_experts")  # all_experts: sync-free, for training small models
# Upper bound on the elements of one attention-score tile (queries × heads × keys): bounds the
# activation memory of long prefills, whatever the prompt length.
SCORE_TILE_ELEMENTS = 1 << 26
# Up to this many (token, expert) pairs the MoE gathers per-pair weights instead of looping over experts.
GATHERED_MOE_PAIRS = 64


class KVCache:
    """Keys, values and indexer keys of ONE sequence for every layer; grows by doubling.

    `length` counts the tokens of the sequence so far. A forward writes its new tokens at
    [length, length + T) in every layer (`write`), reads [0, end) back (`read`), and then advances
    `length`. Several queries continue one encoded video prefix either by `fork()` (a full copy) or by
    `branch()`: the branch keeps only its own tokens and reads the prefix from its parent, which must
    not grow afterwards; one copy of the prefix then serves every query. With `index_fp8` (for a model
    whose indexer rounds its keys through e4m3: `index_fp8.round_fp8`) the indexer keys are stored as the
    official server stores them, e4m3 + one fp32 scale (68 bytes per token and layer instead of 128 in bf16),
    split and read back exactly. A prefix made with `spare` rows gives its branches rows of its own storage,
    so a decode batch over them reads one storage through page tables (`model_runtime.decode`).
    """

    def __init__(
        self,
        config: TextConfig,
        *,
        capacity: int = 256,
        device: Any = "cpu",
        dtype: Any = None,
        parent: KVCache | None = None,
        index_fp8: bool = False,
        spare: int = 0,
    ):
        self.config = config
        self.parent = parent
        self.base = parent.length if parent is not None else 0  # tokens that live in the parent
        self.length = self.base
        self.index_fp8 = index_fp8
        self._allocate(capacity, spare, device, dtype or torch.get_default_dtype())

    def _allocate(self, capacity: int, spare: int, device: Any, dtype: Any) -> None:
        """Fresh storage for `capacity` own rows plus `spare` rows that branches may take (`branch`)."""
        cfg = self.config
        n_layers, kv, dh = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        di = cfg.sa.indexer_head_dim if cfg.sa else 0
        rows = capacity + spare
        k = torch.zeros(n_layers, rows, kv, dh, device=device, dtype=dtype)  # [L, R, K, Dh]
        index_dtype = torch.float8_e4m3fn if self.index_fp8 else dtype
        index_k = torch.zeros(n_layers, rows, di, device=device, dtype=index_dtype)  # [L, R, Di]
        # e4m3 keys: each key's power-of-two scale [L, R]
        index_scale = torch.ones(n_layers, rows, device=device) if self.index_fp8 else None
        self._take((k, torch.zeros_like(k), index_k, index_scale), 0, capacity, spare_to=rows)

    def _take(
        self, storage: tuple[Tensor, Tensor, Tensor, Tensor | None], lo: int, hi: int, spare_to: int
    ) -> None:
        """Own rows [lo, hi) of `storage`, spare rows [hi, spare_to)."""
        # `storage`: the tensors whose rows hold this cache's tokens (shared with its branches when they were
        # carved from its spare rows); `offset`: the row there of position `base`.
        self.storage, self.offset, self._spare = storage, lo, [hi, spare_to]
        self.k, self.v, self.index_k, self.index_scale = (
            t[:, lo:hi] if t is not None else None for t in storage
        )

    @property
    def capacity(self) -> int:
        return self.base + self.k.shape[1]

    def reserve(self, n_new: int) -> None:
        """Make room for n_new more tokens (doubling, so appending one token at a time stays cheap)."""
        need = self.length + n_new - self.base
        own = self.length - self.base
        if need <= self.k.shape[1]:
            return
        old = self.k, self.v, self.index_k, self.index_scale
        self._allocate(max(need, 2 * self.k.shape[1]), 0, self.k.device, self.k.dtype)
        for grown, kept in zip((self.k, self.v, self.index_k, self.index_scale), old, strict=True):
            if grown is not None:
                grown[:, :own] = kept[:, :own]

    def write(self, layer: int, start: int, k: Tensor, v: Tensor, index_k: Tensor | None) -> None:
        """Store T new tokens' k/v [T, K, Dh] and indexer keys [T, Di] at positions start…start+T−1."""
        lo, hi = start - self.base, start - self.base + k.shape[0]
        if lo < 0:
            raise ValueError("cannot overwrite tokens that live in the parent cache")
        self.k[layer, lo:hi], self.v[layer, lo:hi] = k, v
        if index_k is None:
            return
        if self.index_scale is None:
            self.index_k[layer, lo:hi] = index_k
        else:
            self.index_k[layer, lo:hi], self.index_scale[layer, lo:hi] = split_fp8(index_k)

    def read(self, layer: int, end: int) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values [end, K, Dh] and indexer keys [end, Di] of positions 0…end−1."""
        own = end - self.base
        index_k = self.index_k[layer, :own]
        if self.index_scale is not None:
            index_k = (index_k.float() * self.index_scale[layer, :own, None]).to(self.k.dtype)
        mine = self.k[layer, :own], self.v[layer, :own], index_k
        if self.parent is None:
            return mine
        if self.parent.length != self.base:
            raise RuntimeError("the parent cache of a branch grew after branching")
        theirs = self.parent.read(layer, self.base)
        return tuple(torch.cat([p, m]) for p, m in zip(theirs, mine, strict=True))  # type: ignore[return-value]

    def branch(self, extra_capacity: int = 0) -> KVCache:
        """A cache that continues this one without copying it (this one must stay as it is). Its rows come
        from this cache's spare rows while they last (`spare=`), so a batch of branches and their prefix live
        in one storage, which one decode launch reads for all of them (`decode.py`); else it gets its own."""
        size = max(extra_capacity, 1)
        branch = KVCache(
            self.config,
            capacity=0 if self._spare[1] - self._spare[0] >= size else size,
            device=self.k.device,
            dtype=self.k.dtype,
            parent=self,
            index_fp8=self.index_fp8,
        )
        if branch.k.shape[1] == 0:
            lo = self._spare[0]
            branch._take(self.storage, lo, lo + size, spare_to=lo + size)
            self._spare[0] = lo + size
        return branch

    def storage_rows(self) -> np.ndarray | None:
        """The row in `storage` of each position 0 … capacity−1, or None when they are not all in one
        storage (a branch with rows of its own while its parent's live elsewhere)."""
        own = self.offset + np.arange(self.k.shape[1])
        if self.parent is None:
            return own
        theirs = self.parent.storage_rows()
        if theirs is None or self.parent.storage[0] is not self.storage[0]:
            return None
        return np.concatenate([theirs[: self.base], own])

    def fork(self, extra_capacity: int = 0) -> KVCache:
        """An independent flat copy of everything so far, with room for `extra_capacity` more tokens."""
        twin = KVCache(
            self.config,
            capacity=self.length + max(extra_capacity, 1),
            device=self.k.device,
            dtype=self.k.dtype,
            index_fp8=self.index_fp8,
        )
        for layer in range(self.k.shape[0]):
            k, v, index_k = self.read(layer, self.length)
            twin.write(layer, 0, k, v, index_k)
        twin.length = self.length
        return twin


@dataclass
class Segment:
    """`length` consecutive new tokens of one sequence; `cache` None means no history and nothing kept."""

    length: int
    cache: KVCache | None = None


@dataclass
class ForwardContext:
    """What every layer needs besides its input: the ragged layout, rotary tables, backend choices."""

    segments: Sequence[Segment]
    starts: list[int]  # tokens already cached per segment (absolute position of its first new key)
    rope: tuple[Tensor, Tensor]  # cos, sin [N, Dh]
    index_rope: tuple[Tensor, Tensor] | None  # cos, sin [N, Di]
    attn_impl: str
    moe_impl: str
    kernels: KernelLoader
    score_tile_elements: int = SCORE_TILE_ELEMENTS
    index_fp8: bool = False  # the indexer's q and k through the served model's FP8 rounding (index_fp8.py)
    decode: DecodeState | None = None  # one new token per sequence, read through page tables (decode.py)

    def norm(self, norm: RMSNorm, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`norm(x)`, rotated by `rope` if given. Under attn_impl="triton" (and without autograd) one fused
        kernel does it: in eager PyTorch these element-wise chains were a quarter of a 16K prefill's GPU time and
        three quarters of a decode step's kernel launches (H200 profile, kernels/NOTES.md, session 17)."""
        if self.attn_impl == "triton" and not (torch.is_grad_enabled() and x.requires_grad):
            fused = getattr(self.kernels.get(x.device), "rms_norm", None)
            if fused is not None and x.shape[-1] % 2 == 0:
                return fused(x, norm.weight, norm.eps, rope)
        return norm_rotary(norm.weight, norm.eps, x, rope)


# Fresh sequences up to this long run the reference sparse attention packed, with [B, T, T] index scores
# (training batches); longer ones go one by one through the tiled path, whose memory stays bounded.
PACKED_SPARSE_MAX_TOKENS = 4096


# (norm module, x, rope or None) → normed (and rotated) x: `ForwardContext.norm`'s signature.
NormRotary = Callable[["RMSNorm", Tensor, tuple[Tensor, Tensor] | None], Tensor]


# ---- the decoder ------------------------------------------------------------------------------------


class KeyeTextModel(nn.Module):
    """Token embedding, L decoder layers, final RMSNorm. Names match the checkpoint's `model.*`."""

    def __init__(self, config: TextConfig, *, attn_impl: str = "reference", moe_impl: str = "reference"):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.kernels = KernelLoader()
        # Bound on one attention-score tile (queries × heads × keys); larger is faster, needs more memory.
        self.score_tile_elements = SCORE_TILE_ELEMENTS
        self.index_fp8 = False
        self.set_impl(attn_impl=attn_impl, moe_impl=moe_impl)

    def set_impl(
        self, *, attn_impl: str | None = None, moe_impl: str | None = None, index_fp8: bool | None = None
    ) -> None:
        """Backends (`index_fp8`: score keys as the served model does, Hadamard + e4m3; see index_fp8.py)."""
        if attn_impl is not None:
            if attn_impl not in ATTN_IMPLS:
                raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
            self.attn_impl = attn_impl
        if moe_impl is not None:
            if moe_impl not in MOE_IMPLS:
                raise ValueError(f"moe_impl must be one of {MOE_IMPLS}, got {moe_impl!r}")
            self.moe_impl = moe_impl
        if index_fp8 is not None:
            self.index_fp8 = bool(index_fp8)

    def forward(self, embeds: Tensor, positions: Tensor, segments: Sequence[Segment] | None = None) -> Tensor:
        """embeds [N, D], positions [3, N] (t/h/w mRoPE channels) → normed hidden states [N, D].

        Segments with a cache read its history and append their new keys; `length` advances at the end.
        """
        n = embeds.shape[0]
        segments = list(segments) if segments is not None else [Segment(n)]
        if sum(s.length for s in segments) != n:
            raise ValueError(f"segments cover {sum(s.length for s in segments)} tokens, embeds has {n}")
        if positions.shape != (3, n):
            raise ValueError(f"positions must be [3, {n}], got {list(positions.shape)}")
        for seg in segments:
            if seg.cache is not None:
                seg.cache.reserve(seg.length)
        ctx = self._context(
            positions, segments, [s.cache.length if s.cache is not None else 0 for s in segments]
        )
        h = embeds  # [N, D]
        for layer in self.layers:
            h = layer(h, ctx)
        for seg in segments:
            if seg.cache is not None:
                seg.cache.length += seg.length
        return ctx.norm(self.norm, h)

    def fuse_input_projections(self) -> None:
        """Every layer's `Attention.fuse_input_projections` (inference engines only: see there)."""
        for layer in self.layers:
            layer.self_attn.fuse_input_projections()

    def decode_step(self, embeds: Tensor, positions: Tensor, state: DecodeState) -> Tensor:
        """embeds [B, D], positions [3, B]: the next token of each sequence of `state`, whose keys go where
        its device-side rows say; the lengths and rows then advance on the device. No host-side cache state is
        read or changed (the caller advances `length`), so the step can be captured as a CUDA graph.
        → normed hidden states [B, D]."""
        ctx = self._context(positions, [], [], decode=state)
        h = embeds
        for layer in self.layers:
            h = layer(h, ctx)
        state.advance()
        return ctx.norm(self.norm, h)

    def _context(
        self, positions: Tensor, segments: list[Segment], starts: list[int], decode: DecodeState | None = None
    ) -> ForwardContext:
        cfg = self.config
        index_rope = None
        if cfg.sa is not None:
            index_rope = mrope_cos_sin(
                positions, cfg.sa.indexer_head_dim, cfg.indexer_mrope_section, cfg.rope_theta
            )
        return ForwardContext(
            segments=segments,
            starts=starts,
            rope=mrope_cos_sin(positions, cfg.head_dim, cfg.mrope_section, cfg.rope_theta),
            index_rope=index_rope,
            attn_impl=self.attn_impl,
            moe_impl=self.moe_impl,
            kernels=self.kernels,
            score_tile_elements=self.score_tile_elements,
            index_fp8=self.index_fp8,
            decode=decode,
        )


class DecoderLayer(nn.Module):
    """Pre-norm residual block: h += attn(norm(h)); h += moe(norm(h))."""

    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SparseMoe(config)

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        h = h + self.self_attn(ctx.norm(self.input_layernorm, h), ctx)
        return h + self.mlp(ctx.norm(self.post_attention_layernorm, h), ctx)


class Attention(nn.Module):
    """GQA with QK RMSNorm and mRoPE; each query attends only to the keys its indexer selects (§2.1)."""

    tp_group: Any = None  # set by `parallel.load_shard`: this rank holds a share of the heads

    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.topk = config.sa.topk if config.sa else None
        self.q_chunk = config.sa.q_chunk_size if config.sa else 512
        self.sa_indexer = Indexer(config) if config.sa else None
        self.in_proj: Tensor | None
        self.register_buffer("in_proj", None, persistent=False)  # set by `fuse_input_projections`

    def input_linears(self) -> list[nn.Linear]:
        """The projections of the layer input: q, k, v, then the indexer's q (+ head weights) and k."""
        linears = [self.q_proj, self.k_proj, self.v_proj]
        if self.sa_indexer is not None:
            linears += [self.sa_indexer.q_proj, self.sa_indexer.k_proj]
        return linears

    @torch.no_grad()
    def fuse_input_projections(self) -> None:
        """Serve the five projections of the layer input with one GEMM. At decode each was its own small,
        latency-bound launch (H200, kernels/NOTES.md, session 18). The five weights become row views of the
        fused one, so memory does not grow; safetensors will not save a module so fused (shared storage),
        which is why only inference engines call this. Biased projections are left alone."""
        linears = self.input_linears()
        if self.in_proj is not None or any(lin.bias is not None for lin in linears):
            return
        fused = torch.cat([lin.weight for lin in linears])  # [ΣN, D]
        row = 0
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight = nn.Parameter(fused[row : row + rows], requires_grad=False)
            row += rows
        self.in_proj = fused

    def project_inputs(self, x: Tensor) -> list[Tensor]:
        """`input_linears` applied to x [N, D]: one GEMM when fused (column slices of its output)."""
        if self.in_proj is None:
            return [lin(x) for lin in self.input_linears()]
        return list(
            F.linear(x, self.in_proj).split([lin.weight.shape[0] for lin in self.input_linears()], -1)
        )

    def project(
        self, x: Tensor, ctx: ForwardContext, raw: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, D] → q [N, H, Dh], k [N, K, Dh], v [N, K, Dh] after QK-norm and mRoPE (`raw`: the q, k, v
        projections of x when already made)."""
        n = x.shape[0]
        q_raw, k_raw, v_raw = raw if raw is not None else self.project_inputs(x)[:3]
        q = ctx.norm(self.q_norm, q_raw.view(n, self.n_heads, self.head_dim), ctx.rope)
        k = ctx.norm(self.k_norm, k_raw.view(n, self.n_kv, self.head_dim), ctx.rope)
        return q, k, v_raw.view(n, self.n_kv, self.head_dim)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        raw = self.project_inputs(x)
        q, k, v = self.project(x, ctx, raw[:3])  # [N, H, Dh], [N, K, Dh], [N, K, Dh]
        iq = iw = ik = None
        if self.sa_indexer is not None:
            iq, iw, ik = self.sa_indexer(
                x, ctx.index_rope, fp8=ctx.index_fp8, norm=ctx.norm, projected=(raw[3], raw[4])
            )  # [N, I, Di], [N, I], [N, Di]
        if ctx.decode is not None:
            assert iq is not None and iw is not None and ik is not None  # decode_state requires the indexer
            out = self.decode_attend(q, k, v, (iq, iw, ik), ctx.decode, ctx.kernels)
            return all_reduce(self.o_proj(out.flatten(1)), self.tp_group)
        lengths = [seg.length for seg in ctx.segments]
        fresh = len(lengths) > 1 and all(seg.cache is None for seg in ctx.segments)
        dense = ctx.attn_impl == "dense" or self.sa_indexer is None or max(lengths) <= self.topk
        packed_sparse = ctx.attn_impl == "reference" and max(lengths) <= PACKED_SPARSE_MAX_TOKENS
        if fresh and (dense or packed_sparse):
            # Many fresh sequences (training batches): a few padded attention calls, each sequence's
            # top-k selection (if any) as one boolean mask, instead of a tiled loop per sequence.
            index = None if dense else (iq, iw, ik, self.topk)
            out = torch.empty_like(q)
            offsets = [0, *itertools.accumulate(lengths)]
            for group in similar_lengths(lengths):
                starts = [offsets[i] for i in group]
                rows = host_index(
                    np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in group]), q.device
                )
                out[rows] = padded_causal_attention(
                    q, k, v, starts, [lengths[i] for i in group], self.head_dim**-0.5, index
                ).to(out.dtype)  # under bf16 autocast SDPA answers in bf16; q (after the norms) is fp32
            return all_reduce(self.o_proj(out.flatten(1)), self.tp_group)
        out = torch.empty_like(q)  # [N, H, Dh]
        a = 0
        for seg, start in zip(ctx.segments, ctx.starts, strict=True):
            b = a + seg.length
            keys, values, index_keys = k[a:b], v[a:b], ik[a:b] if ik is not None else None
            if seg.cache is not None:
                # Write the new keys first: a token attends to (and scores) itself.
                seg.cache.write(self.layer_idx, start, k[a:b], v[a:b], index_keys)
                keys, values, cached_index = seg.cache.read(self.layer_idx, start + seg.length)  # [S, …]
                index_keys = cached_index if ik is not None else None
            index = (iq[a:b], iw[a:b], index_keys) if iq is not None else None
            out[a:b] = self.attend(q[a:b], keys, values, index, start, ctx)
            a = b
        return all_reduce(self.o_proj(out.flatten(1)), self.tp_group)

    def decode_attend(
        self, q: Tensor, k: Tensor, v: Tensor, index: tuple[Tensor, Tensor, Tensor], state: DecodeState,
        kernels: KernelLoader,
    ) -> Tensor:  # fmt: skip
        """q [B, H, Dh], k/v [B, K, Dh]: one new token per sequence. Its keys are written to the storage rows
        `state` holds on the device, and it attends through page tables of page size 1 (the storage row of each
        position) with the decode kernels: one indexer and one attention launch per storage. [B, H, Dh] out."""
        iq, iw, ik = index
        kern = kernels.get(q.device)
        out = torch.empty_like(q)
        for g in state.groups:
            layer = self.layer_idx
            keys, values, index_keys = g.storage[0][layer], g.storage[1][layer], g.storage[2][layer]
            scales = g.storage[3][layer] if g.storage[3] is not None else None  # [R] with e4m3 indexer keys
            keys.index_copy_(0, g.rows, k[g.lo : g.hi])  # [R, K, Dh]
            values.index_copy_(0, g.rows, v[g.lo : g.hi])
            if scales is None:
                index_keys.index_copy_(0, g.rows, ik[g.lo : g.hi])  # [R, Di]
            else:  # as `KVCache.write` stores them: e4m3 + one scale each, exactly
                index_e4m3, index_scale = split_fp8(ik[g.lo : g.hi])
                # as bytes: index_copy_ has no e4m3 kernel
                index_keys.view(torch.uint8).index_copy_(0, g.rows, index_e4m3.view(torch.uint8))
                scales.index_copy_(0, g.rows, index_scale)
            selected = kern.indexer_decode_topk(
                iq[g.lo : g.hi], iw[g.lo : g.hi], index_keys[:, None], g.pages, g.lengths, self.topk,
                k_scale=scales[:, None] if scales is not None else None,
            )  # fmt: skip
            out[g.lo : g.hi] = kern.sparse_decode(
                q[g.lo : g.hi], keys[:, None], values[:, None], g.pages, selected, self.head_dim**-0.5
            )
        return out

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        index: tuple[Tensor, Tensor, Tensor] | None,
        start: int,
        ctx: ForwardContext,
    ) -> Tensor:
        """One sequence: q [T, H, Dh] at positions start…start+T−1, k/v [S, K, Dh] → [T, H, Dh]."""
        scale = self.head_dim**-0.5
        n_keys = k.shape[0]
        impl = ctx.attn_impl
        # At ≤ topk keys every causal key is selected, so sparse == dense (spec §2.2); skip the indexer.
        if impl == "dense" or index is None or n_keys <= self.topk:
            return causal_attention(q, k, v, start, scale)
        iq, iw, ik = index
        if impl == "triton":
            kern = ctx.kernels.get(q.device)
            if kern is not None:
                idx = shared_topk(
                    kern, iq, iw, ik, self.topk, start, self.tp_group, ctx.index_fp8
                )  # [T, topk]
                return kern.sparse_attention(q, k, v, idx, scale)
        return topk_masked_attention(
            q, k, v, iq, iw, ik, start, self.topk, scale, self.q_chunk, ctx.score_tile_elements
        )


# ---- attention backends -----------------------------------------------------------------------------


def causal_attention(q: Tensor, k: Tensor, v: Tensor, start: int, scale: float) -> Tensor:
    """Dense causal GQA: query t (absolute position start+t) sees keys 0…start+t. [T, H, Dh] out."""
    t, n_keys = q.shape[0], k.shape[0]
    if n_keys != start + t:
        raise ValueError(f"{n_keys} keys for {t} queries starting at {start}")
    if start == 0 and t == n_keys:  # fresh prefill: the fused causal kernel, no explicit mask
        return _sdpa(q, k, v, None, scale, is_causal=True)
    if t == 1:  # decode: every cached key is visible
        return _sdpa(q, k, v, None, scale)
    # A chunk after cached keys: causal aligned to the lower right (query t sees keys ≤ start + t),
    # which SDPA's fused kernels run without a materialised mask. They lack GQA, hence one K/V copy per
    # query head. The CPU falls back to a materialised mask inside SDPA.
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [S, H, Dh]
    return _sdpa(q, k, v, causal_lower_right(t, n_keys), scale)


def similar_lengths(lengths: Sequence[int], max_waste: float = 2.0) -> list[list[int]]:
    """Sequences grouped (by index, shortest first) so that padding each group to its longest costs at
    most `max_waste` × its exact causal work (Σ length²): few groups, little padding."""
    groups: list[list[int]] = []
    exact = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        grown = exact + lengths[i] ** 2
        if groups and (len(groups[-1]) + 1) * lengths[i] ** 2 <= max_waste * grown:
            groups[-1].append(i)
            exact = grown
        else:
            groups.append([i])
            exact = lengths[i] ** 2
    return groups


def padded_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    starts: Sequence[int],
    lengths: Sequence[int],
    scale: float,
    index: tuple[Tensor, Tensor, Tensor, int] | None = None,
) -> Tensor:
    """Causal attention of fresh sequences packed in q [N, H, Dh], k/v [N, K, Dh] (sequence i at rows
    starts[i] … starts[i] + lengths[i] − 1), in one SDPA call: each is right-padded to the longest, which
    causality keeps invisible to its real queries. → [Σ lengths, H, Dh], sequence after sequence.

    `index` = (iq, iw, ik, topk) makes it the reference sparse attention (each query sees only its top-k
    causal keys by indexer score, `select_topk`'s ties), all sequences masked at once: what
    `topk_masked_attention` computes one sequence and one query tile at a time. Scores are [B, T, T], so
    this is for short sequences (training batches)."""
    n_seq, longest = len(lengths), max(lengths)
    # Index arrays come from the host's lengths (numpy: no GPU tensor made from a list, no boolean-mask
    # read, so no stream sync). Padding moves rows by index_select/index_copy, whose backward passes are
    # index_add/index_select over distinct rows: a gather with every padding slot reading one zero row
    # had a backward (index_put with accumulate) that serialised on that row, ~140 ms a step on an H200.
    src = host_index(
        np.concatenate([np.arange(s, s + t) for s, t in zip(starts, lengths, strict=True)]), q.device
    )
    dst = host_index(np.concatenate([np.arange(t) + i * longest for i, t in enumerate(lengths)]), q.device)

    def pad(x: Tensor) -> Tensor:  # [N, …] → [B, T, …], padding rows zero
        flat = x.new_zeros(n_seq * longest, *x.shape[1:]).index_copy(0, dst, x.index_select(0, src))
        return flat.view(n_seq, longest, *x.shape[1:])

    def padded(x: Tensor) -> Tensor:  # [N, heads, Dh] → [B, heads, T, Dh]
        return pad(x).transpose(1, 2)

    def unpadded(x: Tensor) -> Tensor:  # [B, H, T, Dh] → [Σ lengths, H, Dh]
        return x.transpose(1, 2).flatten(0, 1).index_select(0, dst)

    if index is None:
        out = F.scaled_dot_product_attention(
            padded(q), padded(k), padded(v), is_causal=True, scale=scale, enable_gqa=True
        )  # [B, H, T, Dh]
        return unpadded(out)
    iq, iw, ik, topk = index
    causal = torch.ones(longest, longest, dtype=torch.bool, device=q.device).tril()
    with torch.no_grad():  # the selection passes no gradient (the indexer learns from its KL)
        pad_iq, pad_ik, pad_iw = pad(iq), pad(ik), pad(iw)  # [B, T, I, Di], [B, T, Di], [B, T, I]
        logits = torch.einsum("btid,bsd->btis", pad_iq.float(), pad_ik.float()).relu_()
        scores = torch.einsum("btis,bti->bts", logits, pad_iw.float())  # [B, T, T] fp32, as `indexer_scores`
        chosen = scores.masked_fill(~causal, float("-inf")).sort(dim=-1, descending=True, stable=True).indices
        keep = torch.zeros_like(causal).expand_as(scores).scatter(-1, chosen[..., : min(topk, longest)], True)
    # Padded keys sit after every real query (causal hides them); a padded query keeps its own key, so no
    # row is all masked (SDPA would answer NaN there). K/V copied per query head: masked fused kernels
    # lack GQA.
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(
        padded(q), padded(k), padded(v), attn_mask=(keep & causal)[:, None], scale=scale
    )
    return unpadded(out)


def host_index(index: np.ndarray, device: torch.device) -> Tensor:
    """An index array made on the host, copied to `device` without a stream sync."""
    return torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)).to(device, non_blocking=True)


def topk_masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    iq: Tensor,
    iw: Tensor,
    ik: Tensor,
    start: int,
    topk: int,
    scale: float,
    q_chunk: int,
    tile_elements: int = SCORE_TILE_ELEMENTS,
) -> Tensor:
    """The reference sparse path: causal attention with every key outside the query's top-k masked.

    Tiled over query blocks so the [block, S] index scores and masks stay bounded. A single query
    (decode) gathers its selected keys instead of masking all of them.
    """
    n_keys = k.shape[0]
    if q.shape[0] == 1:
        causal = _causal_mask(0, 1, start, n_keys, q.device)  # [1, S]
        selected = select_topk(indexer_scores(iq, iw, ik), causal, topk)[0]  # [min(topk, S)]
        return _sdpa(q, k[selected], v[selected], None, scale)

    def keep(lo: int, hi: int) -> Tensor:
        scores = indexer_scores(iq[lo:hi], iw[lo:hi], ik)  # [tq, S] fp32
        causal = _causal_mask(lo, hi, start, n_keys, q.device)  # [tq, S]
        selected = select_topk(scores, causal, topk)  # [tq, min(topk, S)]
        mask = torch.zeros_like(causal).scatter_(1, selected, True)
        return mask & causal

    return _tiled(q, k, v, scale, keep, tile_elements, max_block=q_chunk)


def indexer_scores(iq: Tensor, iw: Tensor, ik: Tensor) -> Tensor:
    """I[t, s] = Σ_j w[t, j]·ReLU(q[t, j]·k[s]) in fp32; iq [T, I, Di], iw [T, I], ik [S, Di] → [T, S].

    The Di^(−1/2) factor of spec §2.2 is already folded into w by the indexer.
    """
    logits = torch.einsum("tid,sd->tis", iq.float(), ik.float()).relu_()  # [T, I, S]
    return torch.einsum("tis,ti->ts", logits, iw.float())


def select_topk(scores: Tensor, causal: Tensor, topk: int) -> Tensor:
    """Indices of the topk best causal keys per row, [T, min(topk, S)] (rows with fewer keys pad with
    masked ones, which the caller drops again by AND-ing with the causal mask).

    Ties go to the earlier key (stable sort), so the selection does not depend on how queries are
    tiled or chunked; the fork's radix select leaves ties unordered (spec §2.2).
    """
    masked = scores.masked_fill(~causal, float("-inf"))
    return masked.sort(dim=1, descending=True, stable=True).indices[:, : min(topk, scores.shape[1])]


def _causal_mask(lo: int, hi: int, start: int, n_keys: int, device: Any) -> Tensor:
    rows = torch.arange(start + lo, start + hi, device=device)[:, None]  # absolute query positions
    return torch.arange(n_keys, device=device)[None, :] <= rows  # [tq, S]


def _tiled(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask_fn: Any, tile_elements: int, max_block: int = 1 << 30
) -> Tensor:
    """Masked attention over query blocks sized so one block's scores fit `tile_elements`."""
    t, h = q.shape[:2]
    block = max(1, min(max_block, tile_elements // max(1, h * k.shape[0])))
    # One copy of K/V per query head: masked attention kernels (memory-efficient SDPA) lack GQA.
    group = h // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [S, H, Dh]
    out = torch.empty_like(q)
    for lo in range(0, t, block):
        hi = min(t, lo + block)
        out[lo:hi] = _sdpa(q[lo:hi], k, v, mask_fn(lo, hi), scale)
    return out


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Any, scale: float, is_causal: bool = False) -> Tensor:
    """q [T, H, Dh], k/v [S, K, Dh], mask [T, S] bool or a CausalBias → [T, H, Dh]; K may divide H (GQA)."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],  # [1, H, T, Dh]
        k.transpose(0, 1)[None],  # [1, K, S, Dh]
        v.transpose(0, 1)[None],
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)


# ---- the lightning indexer --------------------------------------------------------------------------


class Indexer(nn.Module):
    """`sa_indexer`: MQA scorer with I heads of width Di and one shared key per token (spec §2.2).

    q_proj holds the I×Di query rows and then the I head weights (DeepSeek's `weights_proj`, fused).
    The served model's Hadamard rotation and FP8 rounding apply with `fp8` (`index_fp8.round_fp8`); by
    default they are left out: in exact arithmetic the rotation changes no score, and FP8 only moves
    selections near the top-k boundary.
    """

    def __init__(self, config: TextConfig):
        super().__init__()
        sa = config.sa
        assert sa is not None
        self.n_heads, self.head_dim = sa.indexer_num_heads, sa.indexer_head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim + self.n_heads, bias=False)
        self.k_proj = nn.Linear(d, self.head_dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, 1e-6)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        *,
        fp8: bool = False,
        norm: NormRotary | None = None,
        projected: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, D] (the normed layer input) → q [N, I, Di], w [N, I] fp32, k [N, Di]. `norm` is the
        forward's `ForwardContext.norm` (q's RMSNorm and rotary in one kernel where it can); `projected` the
        q_proj and k_proj outputs when the caller made them (`Attention.project_inputs`)."""
        n = x.shape[0]
        qw, k_lin = (
            projected if projected is not None else (self.q_proj(x), self.k_proj(x))
        )  # [N, I·Di + I], [N, Di]
        q_raw = qw[:, : self.n_heads * self.head_dim].view(n, self.n_heads, self.head_dim)
        if norm is not None:
            q = norm(self.q_norm, q_raw, rope)
        else:
            q = norm_rotary(self.q_norm.weight, self.q_norm.eps, q_raw, rope)
        w = qw[:, self.n_heads * self.head_dim :].float() * self.head_dim**-0.5  # [N, I]
        k = F.layer_norm(
            k_lin.float(),
            (self.head_dim,),
            self.k_norm.weight.float(),
            self.k_norm.bias.float(),
            1e-6,
        ).to(x.dtype)  # [N, Di]
        k = apply_rotary(k[:, None], *rope)[:, 0]
        if fp8:
            q, k = round_fp8(q), round_fp8(k)
        return q, w, k


# ---- mixture of experts -----------------------------------------------------------------------------


class SparseMoe(nn.Module):
    """Softmax router, top-k experts with renormalised weights, no shared expert (spec §1.2)."""

    tp_group: Any = None  # set by `parallel.load_shard`: this rank holds a share of each expert's width

    def __init__(self, config: TextConfig):
        super().__init__()
        self.top_k, self.renormalize = config.num_experts_per_tok, config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Experts(config.num_experts, config.hidden_size, config.moe_intermediate_size)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, D] → (expert ids [N, k], weights [N, k] in x's dtype)."""
        probs = self.gate(x).float().softmax(dim=-1)  # [N, E]
        weights, ids = probs.topk(self.top_k, dim=-1)  # [N, k]
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return ids, weights.to(x.dtype)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        return all_reduce(self.experts_output(x, ctx), self.tp_group)

    def experts_output(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        ids, weights = self.route(x)
        gate_up, down = self.experts.gate_up_proj, self.experts.down_proj
        if isinstance(self.experts, Fp8Experts):
            scales = self.experts.gate_up_proj_scale_inv, self.experts.down_proj_scale_inv
            kern = ctx.kernels.get(x.device) if ctx.moe_impl == "triton" else None
            if kern is not None:
                return kern.fused_moe_fp8(x, gate_up, scales[0], down, scales[1], ids, weights)
            return moe_fp8_reference(x, gate_up, scales[0], down, scales[1], ids, weights)
        if ctx.moe_impl == "triton":
            kern = ctx.kernels.get(x.device)
            if kern is not None:
                return kern.fused_moe(x, gate_up, down, ids, weights)
        if ctx.moe_impl == "all_experts":
            return moe_all_experts(x, gate_up, down, ids, weights)
        return moe_reference(x, gate_up, down, ids, weights)


def use_fp8_experts(model: nn.Module) -> None:
    """Swap every layer's `Experts` for empty `Fp8Experts` (on the model's device; meta before loading)."""
    for moe in [m for m in model.modules() if isinstance(m, SparseMoe)]:
        e, hidden, width2 = moe.experts.gate_up_proj.shape
        with torch.device(moe.experts.gate_up_proj.device):
            moe.experts = Fp8Experts(e, hidden, width2 // 2)


@torch.no_grad()
def quantize_experts(model: nn.Module) -> None:
    """A loaded model's experts to FP8 in place, layer by layer (each full-precision copy is freed as it goes)."""
    for moe in [m for m in model.modules() if isinstance(m, SparseMoe)]:
        dense = moe.experts
        if isinstance(dense, Fp8Experts):
            continue
        use_fp8_experts(moe)
        for name in ("gate_up_proj", "down_proj"):
            q, scale = quantize_blocks(getattr(dense, name))
            getattr(moe.experts, name).copy_(q)
            getattr(moe.experts, name + "_scale_inv").copy_(scale)
        del dense


class Experts(nn.Module):
    """All experts' weights in the checkpoint's fused, input-major layout (gate = first F columns)."""

    def __init__(self, n_experts: int, hidden: int, width: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, hidden, 2 * width))  # [E, D, 2F]
        self.down_proj = nn.Parameter(torch.empty(n_experts, width, hidden))  # [E, F, D]


def moe_reference(x: Tensor, gate_up: Tensor, down: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    """out[t] = Σ_k w·(SiLU(x·gate)⊙(x·up))·down over each token's experts. [N, D] out.

    Few (token, expert) pairs (decode): gather each pair's weights and run two batched products, with
    no host round trip. Many (prefill): loop over the experts that got tokens.
    """
    width = down.shape[1]
    if ids.numel() <= GATHERED_MOE_PAIRS:
        flat = ids.flatten()  # [N·k]
        h = torch.bmm(x.repeat_interleave(ids.shape[1], dim=0)[:, None], gate_up[flat])[:, 0]  # [N·k, 2F]
        act = F.silu(h[:, :width]) * h[:, width:]  # [N·k, F]
        y = torch.bmm(act[:, None], down[flat])[:, 0] * weights.flatten()[:, None]  # [N·k, D]
        return y.view(*ids.shape, -1).sum(dim=1)
    out = torch.zeros_like(x)  # [N, D]
    counts = torch.bincount(ids.flatten(), minlength=gate_up.shape[0]).tolist()
    for e, count in enumerate(counts):
        if count == 0:
            continue
        tok, slot = torch.where(ids == e)  # [n], [n]
        h = x[tok] @ gate_up[e]  # [n, 2F]
        y = (F.silu(h[:, :width]) * h[:, width:]) @ down[e]  # [n, D]
        out.index_add_(0, tok, y * weights[tok, slot, None])
    return out


def all_reduce(x: Tensor, group: Any) -> Tensor:
    """Sum of the ranks' partial outputs under tensor parallelism (`model_runtime.parallel`); x itself
    without it."""
    if group is not None:
        torch.distributed.all_reduce(x, group=group)
    return x


def shared_topk(
    kern: Any, iq: Tensor, iw: Tensor, ik: Tensor, topk: int, start: int, group: Any, fp8: bool = False
) -> Tensor:
    """The indexer's top-k keys per query [T, topk] (`kern.indexer_topk`; with `fp8`, q and k hold
    `round_fp8` values and the e4m3 score kernel takes them, split exactly into e4m3 and scale).

    Under tensor parallelism every rank needs the same selection (one set for all heads, spec §2.1), and
    at long contexts scoring every causal key is most of a layer's time, so each rank scores an equal
    share of the query rows and the shares are all-gathered: the same rows and the same ties as one
    rank scoring them all. Short chunks (decode) are scored whole on every rank.
    """

    def select(q: Tensor, w: Tensor, k: Tensor, first: int) -> Tensor:
        if not fp8:
            return kern.indexer_topk(q, w, k, topk, first)
        (q8, q_scale), (k8, k_scale) = split_fp8(q), split_fp8(k)
        return kern.indexer_topk(q8, w, k8, topk, first, scales=(q_scale, k_scale))

    world = torch.distributed.get_world_size(group) if group is not None else 1
    rows = iq.shape[0]
    if world == 1 or rows < world * 64:
        return select(iq, iw, ik, start)
    share = -(-rows // world)
    lo = min(rows, torch.distributed.get_rank(group) * share)
    hi = min(rows, lo + share)
    mine = torch.full((share, topk), -1, dtype=torch.int32, device=iq.device)
    if hi > lo:
        mine[: hi - lo] = select(iq[lo:hi], iw[lo:hi], ik[: start + hi], start + lo)
    shares = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(shares, mine, group=group)
    return torch.cat(shares)[:rows]


def moe_all_experts(x: Tensor, gate_up: Tensor, down: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
    """The same sum as `moe_reference`, computed by every expert for every token and weighted by the
    routing weights (zero for the experts a token did not pick): E/k times the FLOPs, but a fixed
    handful of batched products with no host sync, which is what training a small model needs."""
    width = down.shape[1]
    h = torch.einsum("nd,edf->enf", x, gate_up)  # [E, N, 2F]
    y = torch.einsum("enf,efd->end", F.silu(h[..., :width]) * h[..., width:], down)  # [E, N, D]
    dense = torch.zeros(x.shape[0], gate_up.shape[0], dtype=y.dtype, device=x.device)
    dense = dense.scatter(1, ids, weights.to(y.dtype))  # [N, E]
    return torch.einsum("end,ne->nd", y, dense)


# ---- norms and rotary -------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Normalised in fp32, rounded back to x's dtype, then scaled (the checkpoint's Qwen3 order)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def norm_rotary(weight: Tensor, eps: float, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """`rms_norm`, then `apply_rotary` with rope = (cos, sin) if given: the oracle of `kernels.rms_norm`."""
    out = rms_norm(x, weight, eps)
    return apply_rotary(out, *rope) if rope is not None else out


def mrope_cos_sin(
    positions: Tensor, dim: int, sections: Sequence[int], theta: float
) -> tuple[Tensor, Tensor]:
    """positions [3, N] → cos, sin [N, dim] fp32 for contiguous-section mRoPE (spec §1.2).

    Frequency i (of dim/2) takes its position from channel t, h or w by the section it falls in; the
    dim/2 angles are duplicated for rotate-half pairing (lane j with j + dim/2).
    """
    device = positions.device
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)  # [dim/2]
    # Channel of each frequency, made on the device (no host copy: a decode step is captured as a CUDA graph).
    freq = torch.arange(dim // 2, device=device)
    channel = (freq >= sections[0]).long() + (freq >= sections[0] + sections[1]).long()
    pos = positions.to(torch.float64)[channel]  # [dim/2, N]
    angles = (pos.T * inv_freq).float()  # [N, dim/2]
    emb = torch.cat([angles, angles], dim=-1)  # [N, dim]
    return emb.cos(), emb.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [N, heads, dim] rotated by per-token angles cos/sin [N, dim] (NeoX rotate-half)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


# ---- optional Triton kernels ------------------------------------------------------------------------


class KernelLoader:
    """Imports `kernels` lazily on first use; warns once and returns None where it cannot run.

    `functions` (anything with `indexer_topk`, `sparse_attention`, `fused_moe`) replaces the import,
    e.g. the kernels' plain-PyTorch `*_ref` twins, which also run on the CPU.
    """

    def __init__(self, functions: Any = None) -> None:
        self._module: Any = functions
        self._injected = functions is not None
        self._failed: str | None = None
        self._warned = False

    def get(self, device: torch.device) -> Any:
        if self._injected:
            return self._module  # the caller vouches for the device
        if device.type != "cuda":
            return self._fail("the Triton kernels need a CUDA device")
        if self._module is None and self._failed is None:
            try:
                import kernels

                for name in ("indexer_topk", "sparse_attention", "fused_moe"):
                    getattr(kernels, name)
                self._module = kernels
            except (ImportError, AttributeError) as exc:
                self._failed = f"kernels unavailable ({exc})"
        return self._module if self._module is not None else self._fail(self._failed or "")

    def _fail(self, why: str) -> None:
        if not self._warned:
            warnings.warn(f"attn/moe impl 'triton' falls back to 'reference': {why}", stacklevel=3)
            self._warned = True
        return None


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
