"""Readers for the grounding annotation formats `timemark eval` understands, and our predictions file.

Every format becomes a list of `GroundingSample` (one query with its ground-truth window(s)) so the
same metric code scores all of them (spec video-and-eval §2.1–§2.4): TimeLens-Bench JSON, Charades-STA
text, ActivityNet Captions JSON, QVHighlights JSONL, the TimeLens results file (whose keys carry the
ground truth and whose values carry `timestamps` and/or raw `answers`) and timemark's predictions JSON
(what `timemark ground` prints). Malformed input raises `AnnotationError` with a one-line message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("timelens-bench", "charades-sta", "activitynet", "qvhighlights", "timelens-results", "predictions")


class AnnotationError(ValueError):
    """An annotation or predictions file that is missing, unreadable or not in the expected shape."""


@dataclass
class GroundingSample:
    """One query over one video and its ground-truth window(s) in seconds."""

    video: str
    query: str
    spans: list[tuple[float, float]]
    duration_s: float | None = None


@dataclass
class Prediction:
    """A model's answer for one query: ranked segments (top-1 first) and/or the raw answer text."""

    video: str
    query: str
    segments: list[tuple[float, float, float]] = field(default_factory=list)  # (start_s, end_s, confidence)
    answer: str | None = None


def normalize_query(query: str) -> str:
    """Collapse whitespace and strip trailing periods, as TimeLens does; case-folded for matching."""
    return re.sub(r"\s+", " ", query).strip().strip(".").strip().casefold()


def video_key(video: str) -> str:
    """A video's id for matching: the file name without folders or extension."""
    name = video.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.lower() in {"mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg"} else name


def _span(value: Any, where: str, *, ordered: bool = True) -> tuple[float, float]:
    """[start, end] as floats; `ordered=False` for a model's predicted span, which may be reversed (it scores 0)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise AnnotationError(f"{where}: expected [start, end], got {value!r}")
    try:
        start, end = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: expected numbers in [start, end], got {value!r}") from None
    _check_times(start, end, where, ordered=ordered)
    return start, end


def _check_times(start: float, end: float, where: str, *, ordered: bool = True) -> None:
    """A span scores nothing if it is not finite, starts before 0 or ends before it starts: say so instead."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise AnnotationError(f"{where}: times must be finite numbers, got [{start}, {end}]")
    if ordered and (start < 0 or end < start):
        raise AnnotationError(f"{where}: expected 0 <= start <= end, got [{start}, {end}]")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not UTF-8 text") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _load_jsonl(path: Path) -> list[Any]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return rows


def _require_dict(data: Any, path: Path, shape: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected {shape}")
    return data


def read_timelens_bench(path: Path) -> list[GroundingSample]:
    """`{video_id: {duration, spans: [[s, e], ...], queries: [...]}}`, spans and queries paired by position."""
    data = _require_dict(_load_json(path), path, "an object keyed by video id")
    samples = []
    for vid, entry in data.items():
        if not isinstance(entry, dict) or "spans" not in entry or "queries" not in entry:
            raise AnnotationError(f"{path}: entry {vid!r} lacks 'spans' and 'queries'")
        if not isinstance(entry["spans"], list) or not isinstance(entry["queries"], list):
            raise AnnotationError(f"{path}: entry {vid!r}: 'spans' and 'queries' must be lists")
        if len(entry["spans"]) != len(entry["queries"]):
            raise AnnotationError(
                f"{path}: entry {vid!r} has {len(entry['spans'])} spans for {len(entry['queries'])} queries"
            )
        duration = float(entry["duration"]) if entry.get("duration") is not None else None
        for i, (span, query) in enumerate(zip(entry["spans"], entry["queries"], strict=True)):
            samples.append(
                GroundingSample(vid, str(query), [_span(span, f"{path}: {vid} span {i}")], duration)
            )
    return samples


def read_charades_sta(path: Path) -> list[GroundingSample]:
    """One sample per line: `video_id start end##sentence`."""
    samples = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        fields = head.split()
        if not sep or len(fields) != 3:
            raise AnnotationError(f"{path}:{number}: expected 'video start end##sentence', got {line[:60]!r}")
        samples.append(GroundingSample(fields[0], sentence.strip(), [_span(fields[1:], f"{path}:{number}")]))
    return samples


def read_activitynet_captions(path: Path) -> list[GroundingSample]:
    """`{video_id: {duration, timestamps: [[s, e], ...], sentences: [...]}}`."""
    data = _require_dict(_load_json(path), path, "an object keyed by video id")
    samples = []
    for vid, entry in data.items():
        if not isinstance(entry, dict) or "timestamps" not in entry or "sentences" not in entry:
            raise AnnotationError(f"{path}: entry {vid!r} lacks 'timestamps' and 'sentences'")
        if len(entry["timestamps"]) != len(entry["sentences"]):
            raise AnnotationError(f"{path}: entry {vid!r} has unequal timestamps and sentences")
        duration = float(entry["duration"]) if entry.get("duration") is not None else None
        for i, (span, sentence) in enumerate(zip(entry["timestamps"], entry["sentences"], strict=True)):
            samples.append(
                GroundingSample(vid, str(sentence).strip(), [_span(span, f"{path}: {vid} #{i}")], duration)
            )
    return samples


def read_qvhighlights(path: Path) -> list[GroundingSample]:
    """JSONL, one query per line with `vid`, `query`, `duration` and one or more `relevant_windows`."""
    samples = []
    for number, row in enumerate(_load_jsonl(path), 1):
        if not isinstance(row, dict) or not {"vid", "query", "relevant_windows"} <= row.keys():
            raise AnnotationError(f"{path}:{number}: expected 'vid', 'query' and 'relevant_windows'")
        windows = [_span(w, f"{path}:{number}") for w in row["relevant_windows"]]
        duration = float(row["duration"]) if row.get("duration") is not None else None
        samples.append(GroundingSample(str(row["vid"]), str(row["query"]), windows, duration))
    return samples


def _timelens_result_entries(path: Path) -> list[tuple[str, Any]]:
    # JSON object, or JSON/JSONL of single-entry objects.
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise AnnotationError(f"{path}: file is empty")
    try:
        data = json.loads(text)
        rows = [data] if isinstance(data, dict) else data
    except json.JSONDecodeError:
        rows = _load_jsonl(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AnnotationError(f"{path}: expected objects keyed by 'video>>>query>>>[start, end]'")
    return [(key, value) for row in rows for key, value in row.items()]


def read_timelens_results(path: Path) -> tuple[list[GroundingSample], list[Prediction]]:
    """TimeLens results: keys `video>>>query>>>[gt_start, gt_end]`, values with `timestamps` and/or `answers`."""
    samples, predictions = [], []
    for key, value in _timelens_result_entries(path):
        video, sep1, rest = key.partition(">>>")
        query, sep2, gt_text = rest.rpartition(">>>")
        if not (sep1 and sep2):
            raise AnnotationError(f"{path}: key {key[:60]!r} is not 'video>>>query>>>[start, end]'")
        try:
            gt = _span(json.loads(gt_text), f"{path}: key {key[:40]!r}")
        except json.JSONDecodeError:
            raise AnnotationError(f"{path}: key {key[:60]!r} does not end in [start, end]") from None
        if not isinstance(value, dict):
            raise AnnotationError(f"{path}: value of {key[:60]!r} is not an object")
        timestamps = value.get("timestamps") or []
        segments = [(*_span(t, f"{path}: {key[:40]!r} timestamps", ordered=False), 1.0) for t in timestamps]
        answers = value.get("answers")
        answer = answers[0] if isinstance(answers, list) and answers else answers
        samples.append(GroundingSample(video, query, [gt]))
        predictions.append(Prediction(video, query, segments, None if answer is None else str(answer)))
    return samples, predictions


def read_predictions(path: Path) -> list[Prediction]:
    """timemark's predictions: a list of `{"video", "query", "segments": [{"start_s", "end_s", "confidence"}]}`."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of {{video, query, segments}} objects")
    predictions = []
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not {"video", "query", "segments"} <= row.keys():
            raise AnnotationError(f"{path}: item {i} lacks 'video', 'query' or 'segments'")
        if not isinstance(row["segments"], list):
            raise AnnotationError(f"{path}: item {i}: 'segments' must be a list")
        segments = []
        for seg in row["segments"]:
            try:
                start, end = float(seg["start_s"]), float(seg["end_s"])
                confidence = float(seg.get("confidence", 1.0))
            except (AttributeError, KeyError, TypeError, ValueError):
                raise AnnotationError(
                    f"{path}: item {i} has a segment without numeric start_s/end_s"
                ) from None
            _check_times(start, end, f"{path}: item {i}", ordered=False)
            if not math.isfinite(confidence):
                raise AnnotationError(f"{path}: item {i}: confidence must be a finite number")
            segments.append((start, end, confidence))
        predictions.append(Prediction(str(row["video"]), str(row["query"]), segments, row.get("answer")))
    return predictions


def detect_format(path: Path) -> str:
    """Guess a file's format from its extension and first entry."""
    if path.suffix.lower() == ".txt":
        return "charades-sta"
    if path.suffix.lower() == ".jsonl":
        rows = _load_jsonl(path)
        first = rows[0] if rows else {}
        if isinstance(first, dict) and "relevant_windows" in first:
            return "qvhighlights"
        if isinstance(first, dict) and any(">>>" in k for k in first):
            return "timelens-results"
        raise AnnotationError(f"{path}: cannot tell the format of this JSONL file")
    data = _load_json(path)
    if isinstance(data, list):
        first = data[0] if data else {}
        if isinstance(first, dict) and "segments" in first:
            return "predictions"
        if isinstance(first, dict) and any(">>>" in k for k in first):
            return "timelens-results"
    elif isinstance(data, dict) and data:
        key, first = next(iter(data.items()))
        if ">>>" in key:
            return "timelens-results"
        if isinstance(first, dict) and "spans" in first and "queries" in first:
            return "timelens-bench"
        if isinstance(first, dict) and "timestamps" in first and "sentences" in first:
            return "activitynet"
    raise AnnotationError(f"{path}: cannot tell the format (expected one of {', '.join(FORMATS)})")


def load_annotations(path: str | Path, fmt: str = "auto") -> tuple[list[GroundingSample], list[Prediction]]:
    """Samples from any supported file; predictions too when the file carries them (TimeLens results)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file")
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {
        "timelens-bench": read_timelens_bench,
        "charades-sta": read_charades_sta,
        "activitynet": read_activitynet_captions,
        "qvhighlights": read_qvhighlights,
    }
    if fmt == "timelens-results":
        return read_timelens_results(path)
    if fmt in readers:
        return readers[fmt](path), []
    if fmt == "predictions":
        raise AnnotationError(f"{path}: this is a predictions file; pass it as --predictions")
    raise AnnotationError(f"unknown annotation format {fmt!r} (known: {', '.join(FORMATS)})")


def predictions_to_json(predictions: list[Prediction]) -> list[dict[str, Any]]:
    """The predictions file's JSON shape (what `timemark ground` prints and `read_predictions` reads)."""
    rows = []
    for p in predictions:
        row: dict[str, Any] = {
            "video": p.video,
            "query": p.query,
            "segments": [
                {"start_s": round(s, 3), "end_s": round(e, 3), "confidence": round(c, 4)}
                for s, e, c in p.segments
            ],
        }
        if p.answer is not None:
            row["answer"] = p.answer
        rows.append(row)
    return rows
