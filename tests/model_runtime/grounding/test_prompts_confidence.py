"""Prompt templates and the log-prob → confidence mapping."""

from __future__ import annotations

import math

import pytest

from model_runtime.engine.base import Completion
from model_runtime.grounding.confidence import (
    UNKNOWN_CONFIDENCE,
    combine_agreeing,
    min_confidence,
    span_confidence,
)
from model_runtime.grounding.merge import ChunkSegment
from model_runtime.grounding.parsing import find_spans
from model_runtime.grounding.prompts import PROMPT_TEMPLATES, PromptError, build_grounding_prompt


def test_default_prompt_names_duration_query_and_switch() -> None:
    text = build_grounding_prompt("the red  circle appears", 296.04)
    assert "296.0 seconds" in text and '"the red circle appears"' in text
    assert text.endswith("/no_think")
    assert build_grounding_prompt("x y z", 10, think=True).endswith("/think")


def test_official_timelens_prompt_is_verbatim() -> None:
    text = build_grounding_prompt("person turn a light on", 30, template="timelens")
    assert text == (
        "Please find the visual event described by the sentence 'person turn a light on', determining its "
        "starting and ending times. The format should be: 'The event happens in <start time> - <end time> "
        "seconds'. /no_think"
    )
    assert "timelens_timestamped" in PROMPT_TEMPLATES


def test_custom_template_text_and_errors() -> None:
    assert (
        build_grounding_prompt("dog", 12, template="Clip of {duration}s. When: {query}?")
        == "Clip of 12.0s. When: dog? /no_think"
    )
    with pytest.raises(PromptError, match="unknown prompt template"):
        build_grounding_prompt("dog", 12, template="nope")
    with pytest.raises(PromptError, match="unknown field"):
        build_grounding_prompt("dog", 12, template="{query} {fps}")
    with pytest.raises(PromptError, match="empty"):
        build_grounding_prompt("  ", 12)
    with pytest.raises(PromptError, match="positive"):
        build_grounding_prompt("dog", 0)


def _completion(pieces: list[str], logprobs: list[float]) -> Completion:
    return Completion("".join(pieces), list(range(len(pieces))), logprobs, 100, "stop")


def test_a_bracketed_answer_also_counts_the_doubt_between_answering_and_none() -> None:
    pieces = ["[", "3", ".", "5", ",", " ", "12", ".", "0", "]"]
    sure = [math.log(0.9)] + [math.log(0.8) if any(c.isdigit() for c in p) else -2.0 for p in pieces[1:]]
    unsure = [math.log(0.4)] + sure[1:]  # the same times after a near coin-flip against `none`
    (span,) = find_spans("".join(pieces), lo=0, hi=60)
    confident, doubtful = (span_confidence(_completion(pieces, lp), span, pieces) for lp in (sure, unsure))
    assert confident == pytest.approx(0.9 * 0.8) and doubtful == pytest.approx(0.4 * 0.8)


def test_span_confidence_uses_the_number_tokens_when_token_texts_are_known() -> None:
    pieces = ["The", " event", " happens", " in", " ", "12", ".", "5", " -", " ", "30", " seconds", "."]
    logprobs = [
        -3.0,
        -3.0,
        -3.0,
        -3.0,
        -3.0,
        math.log(0.9),
        -3.0,
        math.log(0.8),
        -3.0,
        -3.0,
        math.log(0.7),
        -3.0,
        -3.0,
    ]
    completion = _completion(pieces, logprobs)
    (span,) = find_spans(completion.text, lo=0, hi=60)
    expected = (0.9 * 0.8 * 0.7) ** (1 / 3)  # geometric mean of the digit tokens "12", "5", "30"
    assert span_confidence(completion, span, pieces) == pytest.approx(expected)
    # Without token strings, every token counts.
    assert span_confidence(completion, span) == pytest.approx(math.exp(sum(logprobs) / len(logprobs)))


def test_confidence_edge_cases() -> None:
    empty = _completion(["[1, 2]"], [])
    (span,) = find_spans(empty.text, lo=0, hi=60)
    assert span_confidence(empty, span) == UNKNOWN_CONFIDENCE
    certain = _completion(["[1, 2]"], [0.0])
    assert span_confidence(certain, span) == 1.0


def test_agreement_and_filter() -> None:
    assert combine_agreeing([0.5, 0.5]) == pytest.approx(0.75)
    assert combine_agreeing([0.9]) == pytest.approx(0.9)
    assert combine_agreeing([]) == 0.0
    segs = [ChunkSegment(0, 0, 1, c, 0) for c in (0.2, 0.5, 0.8)]
    assert [s.confidence for s in min_confidence(segs, 0.5)] == [0.5, 0.8]
    with pytest.raises(ValueError):
        min_confidence(segs, 1.5)
