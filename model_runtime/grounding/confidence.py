"""How sure the model was of a span, as a number in 0–1 a user can threshold.

Mapping. The engine returns log p(token) for every generated token under the unmodified distribution
(base.py `Completion`). A span's confidence is the geometric-mean probability of the tokens that spell
its numbers: exp(mean(log p)) over the tokens whose characters overlap the span's text and contain a
digit, i.e. how readily the model wrote those exact times; when the answer opens with bare punctuation
("[", the strict format whose alternative is `none`), times the probability of that opening token, i.e.
how sure the model was that the event happens in the chunk at all. When per-token strings are not available
(`token_texts=None`), the whole completion's tokens stand in, which for the short default answer format
is nearly the same set. A completion without log-probs yields 0.5: no evidence either way.
Agreement: when overlapping chunks report the same span independently, the merged confidence is the
noisy-OR 1 − Π(1 − cᵢ) of theirs, so agreement raises it and never lowers it (see merge.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from model_runtime.engine.base import Completion
from model_runtime.grounding.parsing import ParsedSpan

UNKNOWN_CONFIDENCE = 0.5


def geometric_mean_probability(logprobs: Sequence[float]) -> float:
    """exp(mean(log p)), clamped to [0, 1]; UNKNOWN_CONFIDENCE for an empty list."""
    finite = [lp for lp in logprobs if not math.isnan(lp)]
    if not finite:
        return UNKNOWN_CONFIDENCE
    return min(1.0, max(0.0, math.exp(sum(finite) / len(finite))))


def span_token_indices(span: ParsedSpan, token_texts: Sequence[str]) -> list[int]:
    """Indices of the tokens whose text overlaps the span's characters and carries a digit."""
    indices, position = [], 0
    for i, piece in enumerate(token_texts):
        start, position = position, position + len(piece)
        if start < span.char_end and position > span.char_start and any(ch.isdigit() for ch in piece):
            indices.append(i)
    return indices


def _opens_an_answer(piece: str) -> bool:
    """A first token of bare punctuation ("[", "[[") opens the strict answer format, where the model's
    alternative was `none`: its probability is how sure the model was that the event happens at all."""
    return bool(piece.strip()) and not any(ch.isalnum() for ch in piece)


def span_confidence(
    completion: Completion, span: ParsedSpan, token_texts: Sequence[str] | None = None
) -> float:
    """Confidence of one parsed span of `completion` (see the module docstring for the mapping)."""
    logprobs = completion.token_logprobs
    # Token strings are only trusted when they spell the text exactly (byte-level pieces may not).
    aligned = (
        token_texts is not None
        and len(token_texts) == len(logprobs)
        and sum(len(t) for t in token_texts) == len(completion.text)
    )
    if aligned:
        indices = span_token_indices(span, token_texts)  # type: ignore[arg-type]
        if indices:
            times = geometric_mean_probability([logprobs[i] for i in indices])
            opening = token_texts[0]  # type: ignore[index]
            if indices[0] > 0 and _opens_an_answer(opening) and not math.isnan(logprobs[0]):
                return times * math.exp(logprobs[0])
            return times
    return geometric_mean_probability(logprobs)


def combine_agreeing(confidences: Iterable[float]) -> float:
    """Noisy-OR of independent observations of the same span: 1 − Π(1 − c)."""
    remaining = 1.0
    for c in confidences:
        remaining *= 1.0 - min(1.0, max(0.0, c))
    return 1.0 - remaining


class _HasConfidence(Protocol):
    confidence: float


T = TypeVar("T", bound=_HasConfidence)


def min_confidence(segments: Iterable[T], threshold: float) -> list[T]:
    """The segments whose confidence is at least `threshold` (order kept)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"min_confidence must be within [0, 1], got {threshold}")
    return [s for s in segments if s.confidence >= threshold]
