"""Pull [start, end] spans (seconds) out of what a video LLM actually wrote.

Models answer in many shapes: `12.5 - 30.0 seconds`, `from 12.5s to 30s`, `[12.5, 30.0]`,
`[[12.5, 30.0], [50, 61]]`, `00:12.5-00:30`, `1:02:03 to 1:02:10`, `{"start": 12.5, "end": 30}`, often
wrapped in `<think>…</think>` or `<answer>…</answer>` and prose. `find_spans` only accepts numbers that
sit in a span-shaped pattern (a range, a bracketed pair, "between … and …", "start … end …"), never a
catch-all "any two numbers" pass, because that is how counts in the query ("2 people") become times
(spec video-and-eval §2.6). Spans outside the chunk (beyond a tolerance) or reversed are dropped; when
nothing parses the answer is empty, never a guess. `extract_time_timelens` is the official TimeLens
extractor's procedure, kept apart because `--timelens` scoring must reproduce it, traps included.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_CLOCK = r"\d{1,2}(?::\d{1,2}){1,2}(?:[.,]\d+)?"
_NUMBER = r"\d+(?:[.,]\d+)?"
_UNIT = r"(?:seconds|second|secs|sec|s|minutes|minute|mins|min)\b"
_MINUTE_UNITS = frozenset({"minutes", "minute", "mins", "min"})


def _time(name: str) -> str:
    """A clock time or plain number with an optional unit; not part of a longer word or number."""
    return (
        rf"(?<![\w.])(?<!\d:)(?P<{name}>{_CLOCK}|{_NUMBER})"
        rf"(?:\s*(?P<{name}u>{_UNIT})|(?![\w:]|\.\d))"
    )


_A, _B = _time("a"), _time("b")
_RANGE_SEP = r"\s*(?:->|→|-{1,2}|–|—|‑|~|\bto\b|\buntil\b|\btill\b|\bthrough\b|\bthru\b)\s*"
_FILLER = r"[^\d\n]{0,30}?"  # words between a keyword and its number, never another number
# Tier 1 are span shapes; tier 2 ("starts … ends …") is looser, so it only fills gaps tier 1 left.
_SPAN_PATTERNS: tuple[tuple[re.Pattern[str], ...], ...] = tuple(
    tuple(re.compile(p, re.IGNORECASE | re.DOTALL) for p in tier)
    for tier in (
        (
            rf"[\[(]\s*{_A}\s*[,;]\s*{_B}\s*[\])]",  # [12.5, 30.0] / (12.5s, 30s)
            rf"\bbetween\s+{_A}\s+and\s+{_B}",
            rf"{_A}{_RANGE_SEP}{_B}",  # 12.5 - 30, 00:12-00:30, 12.5s to 30s
        ),
        (rf"\b(?:start|begin)\w*{_FILLER}{_A}.{{0,60}}?\b(?:end|finish|stop)\w*{_FILLER}{_B}",),
    )
)
_THINK_CLOSE = re.compile(r"</think\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think\s*>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer\s*>(.*?)(?:</answer\s*>|$)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class ParsedSpan:
    """One span in chunk-local seconds, with where it was written in the answer text."""

    start_s: float
    end_s: float
    char_start: int
    char_end: int


def to_seconds(token: str, unit: str | None = None) -> float | None:
    """`12.5`, `12,5`, `1:05` (65 s), `1:02:03.5`, with `min` units scaled; None if not a valid time."""
    token = token.replace(",", ".")
    if ":" in token:
        parts = token.split(":")
        seconds = float(parts[-1])
        minutes = int(parts[-2])
        hours = int(parts[0]) if len(parts) == 3 else 0
        # `1:75` or `1:61:00` are not clock times; a leading field may exceed 59 (`75:30` = 75 min).
        if seconds >= 60 or (len(parts) == 3 and minutes >= 60):
            return None
        return hours * 3600 + minutes * 60 + seconds
    value = float(token)
    if unit is not None and unit.lower() in _MINUTE_UNITS:
        value *= 60
    return value


def _answer_region(text: str) -> tuple[int, int] | None:
    """Where the answer lives: after the last `</think>`, inside `<answer>`; None if only reasoning."""
    start, end = 0, len(text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        start = closes[-1].end()
    elif _THINK_OPEN.search(text):
        return None  # reasoning cut off before it finished: there is no answer to read
    answer = _ANSWER.search(text, start)
    if answer:
        start, end = answer.start(1), answer.end(1)
    return start, end


def _blank_query(text: str, query: str | None) -> str:
    """Replace echoes of the query by spaces (same length, so character offsets stay valid)."""
    if not query or len(query.strip()) < 3:
        return text
    words = [re.escape(w) for w in query.strip().rstrip(".").split()]
    pattern = re.compile(r"\s+".join(words), re.IGNORECASE)
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _span_from_match(match: re.Match[str]) -> tuple[float, float] | None:
    a_unit, b_unit = match.group("au"), match.group("bu")
    # "2 - 3 minutes": a unit written once applies to both ends.
    start = to_seconds(match.group("a"), a_unit or b_unit)
    end = to_seconds(match.group("b"), b_unit or a_unit)
    if start is None or end is None:
        return None
    return start, end


def _non_overlapping_matches(body: str) -> list[re.Match[str]]:
    """Span-shaped matches in reading order; within a tier the earliest (then longest) wins."""
    taken: list[re.Match[str]] = []
    for tier in _SPAN_PATTERNS:
        found = [m for pattern in tier for m in pattern.finditer(body)]
        found.sort(key=lambda m: (m.start(), -(m.end() - m.start())))
        for match in found:
            if all(match.end() <= t.start() or match.start() >= t.end() for t in taken):
                taken.append(match)
    return sorted(taken, key=lambda m: m.start())


def find_spans(
    text: str, *, lo: float, hi: float, tolerance_s: float = 1.0, query: str | None = None
) -> list[ParsedSpan]:
    """Every span written in `text`, in order, kept only if inside [lo - tol, hi + tol] and not reversed.

    Kept spans are clipped to [lo, hi]; exact duplicates are dropped. `query`, when given, is blanked
    out first so numbers echoed from it are never read as times.
    """
    region = _answer_region(text)
    if region is None:
        return []
    offset, stop = region
    body = _blank_query(text[offset:stop], query)
    matches = _non_overlapping_matches(body)
    spans: list[ParsedSpan] = []
    for match in matches:
        pair = _span_from_match(match)
        if pair is None:
            continue
        start, end = pair
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            continue
        if start < lo - tolerance_s or end > hi + tolerance_s:
            continue
        start, end = min(max(start, lo), hi), min(max(end, lo), hi)
        if any(s.start_s == start and s.end_s == end for s in spans):
            continue
        spans.append(ParsedSpan(start, end, offset + match.start(), offset + match.end()))
    return spans


def parse_segments(
    text: str, *, lo: float, hi: float, tolerance_s: float = 1.0, query: str | None = None
) -> list[tuple[float, float]]:
    """`find_spans` as plain (start, end) pairs, in the order the model wrote them."""
    return [
        (s.start_s, s.end_s) for s in find_spans(text, lo=lo, hi=hi, tolerance_s=tolerance_s, query=query)
    ]


_TL_CLOCK = re.compile(r"\b(\d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\d{1,2}:\d{2}(?:\.\d+)?)\b")
_TL_RANGES = (re.compile(r"(\d+\.?\d*)\s*-\s*(\d+\.?\d*)"), re.compile(r"(\d+\.?\d*)\s+to\s+(\d+\.?\d*)"))
_TL_NUMBER = re.compile(r"\b(\d+\.\d+|\d+)\b")


def extract_time_timelens(text: str) -> list[tuple[float, float]]:
    """The official TimeLens answer extractor's procedure (spec video-and-eval §2.2), unchanged.

    On the lower-cased text: (1) clock times `H:MM:SS(.x)` / `M:SS(.x)` taken in pairs; else (2) every
    `a - b`, else every `a to b`; else (3) every number, in pairs. No range checks, no swapping: a
    reversed span later scores IoU 0. Use `find_spans` for anything but reproducing published numbers.
    """
    text = str(text).lower()
    clocks = _TL_CLOCK.findall(text)
    clocks = clocks[: len(clocks) // 2 * 2]
    if clocks:
        seconds = []
        for clock in clocks:
            parts = clock.split(":")
            if len(parts) == 3:
                seconds.append(int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2]))
            else:
                seconds.append(int(parts[0]) * 60 + float(parts[1]))
        return [(seconds[i], seconds[i + 1]) for i in range(0, len(seconds), 2)]
    for pattern in _TL_RANGES:
        pairs = pattern.findall(text)
        if pairs:
            return [(float(a), float(b)) for a, b in pairs]
    numbers = _TL_NUMBER.findall(text)
    numbers = numbers[: len(numbers) // 2 * 2]
    return [(float(numbers[i]), float(numbers[i + 1])) for i in range(0, len(numbers), 2)]
