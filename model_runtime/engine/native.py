"""The native engine: our PyTorch Keye-VL-2.0 in this process, behind the `Engine` interface.

It owns what the model does not: per-sequence KV caches, chunked prefill (activation memory bounded by
`prefill_chunk` tokens whatever the prompt length), batched decode, sampling, stop tokens and strings,
and per-token log-probs of the unmodified distribution. Requests that carry the same `VideoInput`
object and system text share one encoded video prefix: the frames go through the vision tower and the
LM once, then each query branches from that cache (one copy of the prefix serves all of them).

Legend: B = sequences decoding together, N = tokens in one forward, D = hidden, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from model_runtime.checkpoint import load_model
from model_runtime.decode import DecodeGraph, decode_state
from model_runtime.engine.base import Completion, GenerationRequest
from model_runtime.model import KVCache, Segment
from model_runtime.processor import KeyeProcessor, ModelInputs
from model_runtime.vlm import KeyeVL


@dataclass
class _Sequence:
    """One request in flight."""

    index: int
    request: GenerationRequest
    inputs: ModelInputs
    cache: KVCache
    generator: torch.Generator
    last_hidden: Tensor | None = None  # [D] hidden state whose logits pick the next token
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


@dataclass
class _Prefill:
    """Tokens to push through the LM into `cache` (embeddings already built)."""

    embeds: Tensor  # [n, D]
    positions: Tensor  # [3, n]
    cache: KVCache


class NativeEngine:
    name = "native"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        attn_impl: str = "reference",
        moe_impl: str = "reference",
        quantize: str | None = None,
        index_fp8: bool = False,
        max_batch: int = 8,
        prefill_chunk: int = 4096,
        vision_chunk_frames: int = 32,
        score_tile_elements: int | None = None,
        cuda_graphs: bool = True,
    ):
        model = load_model(
            checkpoint, device=torch.device(device), dtype=dtype, attn_impl=attn_impl, moe_impl=moe_impl,
            quantize=quantize,
        )  # fmt: skip
        model.model.set_impl(index_fp8=index_fp8)  # the served model's FP8 indexer rounding (index_fp8.py)
        self._adopt(model, KeyeProcessor.from_pretrained(checkpoint), max_batch, prefill_chunk,
                    vision_chunk_frames, score_tile_elements, cuda_graphs)  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: KeyeVL,
        processor: KeyeProcessor,
        *,
        max_batch: int = 8,
        prefill_chunk: int = 4096,
        vision_chunk_frames: int = 32,
        score_tile_elements: int | None = None,
        cuda_graphs: bool = True,
    ) -> NativeEngine:
        """An engine around a model already in memory (benchmarks build the full-size model with random
        weights on the GPU instead of writing 62 GB of checkpoint files)."""
        engine = cls.__new__(cls)
        engine._adopt(
            model, processor, max_batch, prefill_chunk, vision_chunk_frames, score_tile_elements, cuda_graphs
        )
        return engine

    def _adopt(
        self,
        model: KeyeVL,
        processor: KeyeProcessor,
        max_batch: int,
        prefill_chunk: int,
        vision_chunk_frames: int,
        score_tile_elements: int | None,
        cuda_graphs: bool,
    ) -> None:
        self.model = model
        model.model.fuse_input_projections()  # one GEMM for each layer input's five projections
        self.cuda_graphs = cuda_graphs
        self.decode_graphs = 0  # decode steps captured so far (one per wave of requests on CUDA)
        self.device = model.lm_head.weight.device
        if score_tile_elements is not None:
            self.model.model.score_tile_elements = score_tile_elements
        self.processor = processor
        self.dtype = self.model.lm_head.weight.dtype
        self.max_batch, self.prefill_chunk, self.vision_chunk_frames = (
            max_batch,
            prefill_chunk,
            vision_chunk_frames,
        )
        cfg = self.model.config
        self.stop_token_ids = set(self.processor.stop_token_ids) | (
            {cfg.pad_token_id} if cfg.pad_token_id is not None else set()
        )

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- the Engine interface -------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        inputs = [self.processor.encode_request(r.prompt, r.video, r.system) for r in requests]
        return self.generate_encoded(list(zip(requests, inputs, strict=True)))

    @torch.inference_mode()
    def generate_encoded(self, items: Sequence[tuple[GenerationRequest, ModelInputs]]) -> list[Completion]:
        """Like `generate`, for prompts the caller encoded (`processor.encode_messages`: images, several
        turns). The request supplies the sampling settings; its prompt is not re-read. Requests sharing
        one `VideoInput` object and system text share the encoded prefix up to `inputs.prefix_len`."""
        requests = [r for r, _ in items]
        inputs = [i for _, i in items]
        for request, encoded in items:
            self._check(request, encoded)
        # Shared prefixes live until the last request that uses them has started; their storage has room for
        # every branch's own tokens, so one decode launch reads a prefix and all its branches.
        uses: dict[tuple, int] = {}
        rooms: dict[tuple, int] = {}
        for r, i in items:
            key = _prefix_key(r, i)
            if key is not None:
                uses[key] = uses.get(key, 0) + 1
                rooms[key] = rooms.get(key, 0) + _room(r, i) - i.prefix_len
        prefixes: dict[tuple, KVCache] = {}
        results: list[Completion] = []
        for lo in range(0, len(requests), self.max_batch):
            started = [
                self._start(i, requests[i], inputs[i], prefixes, uses, rooms)
                for i in range(lo, min(len(requests), lo + self.max_batch))
            ]
            wave = [seq for seq, _ in started]
            # The prompts' own tokens (after any shared prefix) go through the LM together.
            for seq, hidden in zip(wave, self._prefill([job for _, job in started]), strict=True):
                seq.last_hidden = hidden
            self._decode(wave)
            results += [self._completion(s) for s in wave]
        return results

    def _check(self, request: GenerationRequest, inputs: ModelInputs) -> None:
        """Refuse settings that have no meaning, before any compute is spent."""
        problems = []
        if request.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be >= 0, got {request.max_new_tokens}")
        if request.temperature < 0:
            problems.append(f"temperature must be >= 0, got {request.temperature}")
        if not 0 < request.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {request.top_p}")
        if request.top_k < 0:
            problems.append(f"top_k must be >= 0, got {request.top_k}")
        limit = self.model.config.text.max_position_embeddings
        if int(inputs.positions.max()) + 1 + request.max_new_tokens > limit:
            problems.append(f"prompt + max_new_tokens exceed the model's {limit} positions")
        if problems:
            raise ValueError("; ".join(problems))

    # ---- prefill --------------------------------------------------------------------------------------

    def _start(
        self,
        index: int,
        request: GenerationRequest,
        inputs: ModelInputs,
        prefixes: dict[tuple, KVCache],
        uses: dict[tuple, int],
        rooms: dict[tuple, int],
    ) -> tuple[_Sequence, _Prefill]:
        """Set up one request: its cache holds the shared video prefix (encoded now if this is its first
        user); the returned job prefills the rest of the prompt."""
        n, start = inputs.input_ids.shape[0], 0
        room = _room(request, inputs)
        key = _prefix_key(request, inputs)
        if key is not None and key in uses:
            if key not in prefixes:
                prefix_cache = self._cache(inputs.prefix_len, spare=rooms[key])
                self._prefill([self._prepare(inputs, 0, inputs.prefix_len, prefix_cache)])
                prefixes[key] = prefix_cache
            start = inputs.prefix_len
            cache = prefixes[key].branch(extra_capacity=room - start)  # reads the prefix, no copy
            uses[key] -= 1
            if uses[key] == 0:
                del prefixes[key]
        else:
            cache = self._cache(room)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(
            request.seed if request.seed is not None else int(torch.randint(0, 2**62, ()).item())
        )
        return _Sequence(index, request, inputs, cache, generator), self._prepare(inputs, start, n, cache)

    def _cache(self, capacity: int, spare: int = 0) -> KVCache:
        """An empty cache (with `spare` rows for branches); e4m3 indexer keys when the model rounds them so."""
        return KVCache(
            self.model.config.text, capacity=capacity, device=self.device, dtype=self.dtype,
            index_fp8=self.model.model.index_fp8, spare=spare,
        )  # fmt: skip

    def _prepare(self, inputs: ModelInputs, lo: int, hi: int, cache: KVCache) -> _Prefill:
        """Embeddings of prompt tokens [lo, hi), encoding the visual tokens that fall inside."""
        ids = inputs.input_ids[lo:hi].to(self.device)
        cfg = self.model.config
        visual = None
        n_visual = int(((ids == cfg.image_token_id) | (ids == cfg.video_token_id)).sum())
        if n_visual:
            # Visual tokens in [lo, hi) are those of the whole prompt when lo is 0 or past all of them.
            if lo != 0:
                raise ValueError("visual tokens must lie inside the shared prefix")
            visual = self._encode_vision(inputs)
        embeds = self.model.embed(ids, visual)
        return _Prefill(embeds, inputs.positions[:, lo:hi].to(self.device), cache)

    def _encode_vision(self, inputs: ModelInputs) -> Tensor:
        """All frames through the tower + projector, `vision_chunk_frames` at a time. [M, D]"""
        assert inputs.pixel_values is not None
        out, offset = [], 0
        grids = inputs.grids
        for lo in range(0, len(grids), self.vision_chunk_frames):
            chunk = grids[lo : lo + self.vision_chunk_frames]
            n = sum(t * h * w for t, h, w in chunk)
            pixels = inputs.pixel_values[offset : offset + n].to(self.device)
            out.append(self.model.encode_vision(pixels, chunk))
            offset += n
        return torch.cat(out)

    def _prefill(self, jobs: list[_Prefill]) -> list[Tensor]:
        """Push the jobs' tokens through the LM in forwards of ≤ prefill_chunk tokens (several jobs may
        share one forward); returns each job's last hidden state [D]."""
        cursor = [0] * len(jobs)
        last: list[Tensor | None] = [None] * len(jobs)
        while any(c < job.embeds.shape[0] for c, job in zip(cursor, jobs, strict=True)):
            budget, pieces = self.prefill_chunk, []
            for j, job in enumerate(jobs):
                take = min(job.embeds.shape[0] - cursor[j], budget)
                if take > 0:
                    pieces.append((j, cursor[j], cursor[j] + take))
                    budget -= take
            embeds = torch.cat([jobs[j].embeds[a:b] for j, a, b in pieces])  # [N, D]
            positions = torch.cat([jobs[j].positions[:, a:b] for j, a, b in pieces], dim=1)  # [3, N]
            hidden = self.model.model(
                embeds, positions, [Segment(b - a, jobs[j].cache) for j, a, b in pieces]
            )
            offset = 0
            for j, a, b in pieces:
                offset += b - a
                cursor[j] = b
                if b == jobs[j].embeds.shape[0]:
                    last[j] = hidden[offset - 1]
        return last  # type: ignore[return-value]

    # ---- decode ---------------------------------------------------------------------------------------

    def _decode(self, seqs: list[_Sequence]) -> None:
        """Sample and append one token per unfinished sequence per step, all in one forward (on CUDA one
        replay of a step captured once for the wave)."""
        active = [s for s in seqs if s.request.max_new_tokens > 0]
        for s in seqs:
            if s.request.max_new_tokens <= 0:
                s.finish_reason = "length"
        graph: DecodeGraph | None = None
        first = True
        while active:
            logits = self.model.logits(torch.stack([s.last_hidden for s in active]))  # [B, V] fp32
            logprobs = torch.log_softmax(logits, dim=-1).cpu()  # [B, V]
            still = []
            for s, row_logits, row_logprobs in zip(active, logits.cpu(), logprobs, strict=True):
                token = self._pick(s, row_logits)
                if self._append(s, token, float(row_logprobs[token])):
                    still.append(s)
            active = still
            if not active:
                break
            if first:  # the wave's decode batch: capture its step once (sequences that finish stay frozen)
                graph = self._decode_graph(
                    [s.cache for s in active], [s.request.max_new_tokens - len(s.token_ids) for s in active]
                )
                first = False
            tokens = [s.token_ids[-1] for s in active]
            positions = [s.cache.length + s.inputs.rope_delta for s in active]
            if graph is not None:
                hidden = graph.step([s.cache for s in active], tokens, positions)  # [B, D]
            else:
                # Generated tokens are text even when they happen to be a placeholder id (a random model
                # may write <|video_pad|>): plain embedding lookup, no visual scatter.
                embeds = self.model.model.embed_tokens(torch.tensor(tokens, device=self.device))  # [B, D]
                position_rows = torch.tensor(positions, device=self.device).expand(3, -1)  # [3, B]
                hidden = self.model.model(embeds, position_rows, [Segment(1, s.cache) for s in active])
            for s, h in zip(active, hidden, strict=True):
                s.last_hidden = h

    def _decode_graph(self, caches: list[KVCache], steps: list[int]) -> DecodeGraph | None:
        """A captured decode step for this batch where one can run (CUDA, the Triton kernels for attention and
        the MoE, no tensor parallelism, caches `decode_state` can read); None means the eager forward."""
        text = self.model.model
        if (
            not self.cuda_graphs
            or self.device.type != "cuda"
            or (text.attn_impl, text.moe_impl) != ("triton",) * 2
        ):
            return None
        if text.kernels.get(self.device) is None or any(getattr(m, "tp_group", None) for m in text.modules()):
            return None
        state = decode_state(caches, steps)
        if state is None:
            return None
        self.decode_graphs += 1
        return DecodeGraph(self.model, caches, state)

    def _pick(self, seq: _Sequence, logits: Tensor) -> int:
        """Greedy at temperature 0, else temperature + top-k + top-p sampling with the request's seed."""
        req = seq.request
        if req.temperature <= 0:
            return int(logits.argmax())
        scaled = logits / req.temperature
        if req.top_k > 0:
            kth = scaled.topk(min(req.top_k, scaled.shape[0])).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = scaled.softmax(-1)
        if req.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = sorted_probs.cumsum(0) - sorted_probs > req.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _append(self, seq: _Sequence, token: int, logprob: float) -> bool:
        """Record a sampled token; False once the sequence is finished."""
        req = seq.request
        if token in self.stop_token_ids:
            seq.finish_reason = "stop"
            return False
        seq.token_ids.append(token)
        seq.logprobs.append(logprob)
        seq.text = self.processor.decode(seq.token_ids)
        cut = min((seq.text.find(s) for s in req.stop if s and s in seq.text), default=-1)
        if cut >= 0:
            seq.text, seq.finish_reason = seq.text[:cut], "stop"
            return False
        if len(seq.token_ids) >= req.max_new_tokens:
            seq.finish_reason = "length"
            return False
        return True

    def _completion(self, seq: _Sequence) -> Completion:
        return Completion(
            text=seq.text,
            token_ids=seq.token_ids,
            token_logprobs=seq.logprobs,
            prompt_tokens=int(seq.inputs.input_ids.shape[0]),
            finish_reason=seq.finish_reason or "length",  # type: ignore[arg-type]
        )


def _room(request: GenerationRequest, inputs: ModelInputs) -> int:
    """Cache positions a request can fill: its prompt, every token it may generate, and one spare."""
    return int(inputs.input_ids.shape[0]) + request.max_new_tokens + 1


def _prefix_key(request: GenerationRequest, inputs: ModelInputs) -> tuple | None:
    """Requests with equal keys share one encoded prefix: same VideoInput object, same system text and
    the same prefix tokens (which also covers callers that built the messages themselves)."""
    if request.video is None or inputs.prefix_len == 0:
        return None
    prefix = inputs.input_ids[: inputs.prefix_len].numpy().tobytes()
    return (id(request.video), request.system, hash(prefix))
