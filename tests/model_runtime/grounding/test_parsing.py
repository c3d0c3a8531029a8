"""The answer parser against the shapes models really write, and the traps eval scripts fall into."""

from __future__ import annotations

import pytest

from model_runtime.grounding.parsing import (
    extract_time_timelens,
    find_spans,
    parse_segments,
    to_seconds,
)


def _flat(spans: list[tuple[float, float]]) -> list[float]:
    return [t for span in spans for t in span]


# (answer, chunk length hi, query or None, expected spans). lo is 0 and tolerance 1 s unless the id says.
CASES = [
    ("12.5 - 30.0 seconds", 60, None, [(12.5, 30.0)]),
    ("The event happens in 24.3 - 30.4 seconds.", 60, None, [(24.3, 30.4)]),
    ("The event happens in 24.3 - 30.4 seonds", 60, None, [(24.3, 30.4)]),
    ("from 12.5s to 30s", 60, None, [(12.5, 30.0)]),
    ("From 12.5 seconds to 30 seconds.", 60, None, [(12.5, 30.0)]),
    ("[12.5, 30.0]", 60, None, [(12.5, 30.0)]),
    ("[12,30]", 60, None, [(12.0, 30.0)]),
    ("(12.5s, 30s)", 60, None, [(12.5, 30.0)]),
    ("[[12.5, 30.0], [50, 61]]", 90, None, [(12.5, 30.0), (50.0, 61.0)]),
    ("[[12.5, 30.0], [50, 61]]", 55, None, [(12.5, 30.0)]),
    ("00:12.5-00:30", 60, None, [(12.5, 30.0)]),
    ("1:02:03 to 1:02:10", 4000, None, [(3723.0, 3730.0)]),
    ("00:01:05.5 to 00:01:10", 120, None, [(65.5, 70.0)]),
    ("1:05 - 1:20", 120, None, [(65.0, 80.0)]),
    ("\\boxed{[00:12, 00:30]}", 60, None, [(12.0, 30.0)]),
    ("<think>The man appears at 3 s, maybe 40 - 50.</think>\n[12.5, 30.0]", 60, None, [(12.5, 30.0)]),
    ("reasoning about 40 - 50 seconds</think>The event happens in 5 - 9 seconds.", 60, None, [(5.0, 9.0)]),
    ("<think>It starts near 10 - 20 seconds and I keep thinking", 60, None, []),
    ("<think>hmm</think><answer>The event happens in 3.0 to 7.5</answer>", 60, None, [(3.0, 7.5)]),
    ("Let me check 40 - 50 first. <answer>3 - 7</answer>", 60, None, [(3.0, 7.0)]),
    ("<answer>[4.0, 8.0]", 60, None, [(4.0, 8.0)]),
    ("12.5 – 30.0 s", 60, None, [(12.5, 30.0)]),
    ("12.5—30.0", 60, None, [(12.5, 30.0)]),
    ("12.5s–30s", 60, None, [(12.5, 30.0)]),
    ("12,5 - 30,0 Sekunden", 60, None, [(12.5, 30.0)]),
    ("von 12,5 bis 30,0", 60, None, []),
    ("between 12 and 15 seconds", 60, None, [(12.0, 15.0)]),
    ("The event starts at 12.5 seconds and ends at 30 seconds.", 60, None, [(12.5, 30.0)]),
    ("Starting time: 0.8 seconds. Ending time: 1.1 seconds", 60, None, [(0.8, 1.1)]),
    ("The start time for this event is 0 seconds, and the end time is 12 seconds.", 60, None, [(0.0, 12.0)]),
    ('{"start": 12.5, "end": 30.0}', 60, None, [(12.5, 30.0)]),
    ('{"start_time": 2, "end_time": 4.5}', 60, None, [(2.0, 4.5)]),
    ("start:12.5 end:30", 60, None, [(12.5, 30.0)]),
    ("**Answer:** 3.5 - 9.0", 60, None, [(3.5, 9.0)]),
    ("It happens twice: 3 - 5 seconds and again 20 - 24 seconds.", 60, None, [(3.0, 5.0), (20.0, 24.0)]),
    ("2 - 3 minutes", 200, None, [(120.0, 180.0)]),
    ("none", 60, None, []),
    ("The event does not occur in this clip.", 60, None, []),
    ("The event happens at 12 seconds.", 60, None, []),
    ("", 60, None, []),
    ("The event happens in 400 - 420 seconds.", 300, None, []),
    ("The event happens in 280 - 300.8 seconds.", 300, None, [(280.0, 300.0)]),
    ("The event happens in 280 - 303 seconds.", 300, None, []),
    ("30 - 12.5 seconds", 60, None, []),
    ("12.5 - 12.5", 60, None, [(12.5, 12.5)]),
    ("12:75 - 13:00", 1000, None, []),
    ("2 people shake hands for a while", 60, None, []),
    ("The 3rd person sits down from 4 to 9 s", 60, None, [(4.0, 9.0)]),
    (
        "The event 'a man counts from 1 to 10' happens in 3.0 - 8.5 seconds.",
        60,
        "a man counts from 1 to 10",
        [(3.0, 8.5)],
    ),
    (
        "The event 'person puts 2 - 3 cups away' happens in 5 - 9 seconds.",
        60,
        "person puts 2 - 3 cups away.",
        [(5.0, 9.0)],
    ),
    ("Recorded on 2024-05-01. The clip shows it at 3 - 4 s.", 60, None, [(3.0, 4.0)]),
    ("The scene with the red circle: [10.0, 14.5]; the blue square later.", 60, None, [(10.0, 14.5)]),
    ("The event happens in 0 - 0.9 seconds", 30, None, [(0.0, 0.9)]),
    ("12.5 -> 30", 60, None, [(12.5, 30.0)]),
    ("12.5 ~ 30", 60, None, [(12.5, 30.0)]),
    ("version v2 - v3 of the clip", 60, None, []),
    ("Start: 12.5s\nEnd: 30.0s", 60, None, [(12.5, 30.0)]),
    ("- start: 12.5\n- end: 30", 60, None, [(12.5, 30.0)]),
    ("[00:00:12.5, 00:00:30.0]", 60, None, [(12.5, 30.0)]),
    ("The red circle appears from 00:12 to 00:30.", 60, None, [(12.0, 30.0)]),
    (
        "It is visible during 12.5-30.0s, then again during 40.0-45.0s.",
        60,
        None,
        [(12.5, 30.0), (40.0, 45.0)],
    ),
    ("The event happens in 5.0 - 9.0 seconds. It happens in 5 - 9 seconds.", 60, None, [(5.0, 9.0)]),
    ("The event happens between 1:05 and 1:20.", 120, None, [(65.0, 80.0)]),
]


@pytest.mark.parametrize(
    ("answer", "hi", "query", "expected"), CASES, ids=[f"case{i}" for i in range(len(CASES))]
)
def test_parse_table(answer: str, hi: float, query: str | None, expected: list[tuple[float, float]]) -> None:
    got = parse_segments(answer, lo=0.0, hi=hi, tolerance_s=1.0, query=query)
    assert _flat(got) == pytest.approx(_flat(expected))


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_negative_lower_bound_tolerance_clips_to_lo() -> None:
    # A chunk starting at local 0: a slightly negative start inside the tolerance is clipped.
    assert parse_segments("[-0.5, 4]", lo=0, hi=10) == []  # "-0.5" is not a time we accept (no sign)
    assert parse_segments("[0.0, 4]", lo=0.5, hi=10) == [(0.5, 4.0)]
    assert parse_segments("[0.0, 4]", lo=2.0, hi=10) == []


def test_char_offsets_point_at_the_span_text() -> None:
    text = "<think>x 1 - 2</think> The event happens in 12.5 - 30.0 seconds."
    (span,) = find_spans(text, lo=0, hi=60)
    assert text[span.char_start : span.char_end].startswith("12.5 - 30.0")


def test_duplicates_are_dropped() -> None:
    assert parse_segments("[3, 5] or rather [3, 5]", lo=0, hi=10) == [(3.0, 5.0)]


@pytest.mark.parametrize(
    ("token", "unit", "seconds"),
    [
        ("12.5", None, 12.5),
        ("12,5", None, 12.5),
        ("1:05", None, 65.0),
        ("1:02:03.5", None, 3723.5),
        ("2", "min", 120.0),
        ("75:30", None, 4530.0),
        ("1:60", None, None),
        ("1:60:00", None, None),
    ],
)
def test_to_seconds(token: str, unit: str | None, seconds: float | None) -> None:
    assert to_seconds(token, unit) == seconds


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The event happens in 24.3 - 30.4 seconds.", [(24.3, 30.4)]),
        ("00:12 to 00:30 and 1:00:00 - 1:00:05", [(12.0, 30.0), (3600.0, 3605.0)]),
        ("from 3 to 9", [(3.0, 9.0)]),
        ("Starting time: 0.8 seconds. Ending time: 1.1 seconds", [(0.8, 1.1)]),
        # The official catch-all pass reads counts in the text as times; we reproduce that on purpose.
        ("2 people appear, then at 5 they leave", [(2.0, 5.0)]),
        ("30 - 12", [(30.0, 12.0)]),
        ("no idea", []),
        ("only 00:12 here", [(0.0, 12.0)]),
    ],
)
def test_timelens_extractor(answer: str, expected: list[tuple[float, float]]) -> None:
    assert _flat(extract_time_timelens(answer)) == pytest.approx(_flat(expected))
