"""Synthetic grounding sets: videos with known events plus their annotation file in TimeLens-Bench format.

`timemark synth` and the benchmarks use this to get a test set that needs no download: each video holds
a few coloured shapes that appear during known intervals (model_runtime.video.synthetic), and each
event becomes one query ("When does the red circle appear?") with exactly one answer, written as
`{video_id: {duration, spans, queries}}` so `timemark eval` reads it like the published sets.

Each entry also carries `absent_queries` (readers of the published format ignore it): a question about a
shape drawn nowhere in the video, whose right answer is no segment. A near miss when possible (the colour
or the shape of one of its events), so a model that answers by colour alone, by shape alone, or with
whatever is on screen gets caught: the held-out scorer reports how often such a query gets a segment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from model_runtime.video import (
    COLORS,
    SHAPES,
    SyntheticEvent,
    SyntheticTruth,
    make_synthetic_video,
    random_events,
)

ANNOTATION_FILE = "annotations.json"


def event_query(event: SyntheticEvent) -> str:
    """The natural-language query whose one answer is `event`'s interval."""
    return f"When does the {event.label} appear?"


def query_label(query: str) -> str:
    """`event_query`'s shape label back ("When does the red circle appear?" → "red circle")."""
    label = query.removeprefix("When does the ").removesuffix(" appear?")
    if label == query or len(label.split()) != 2:
        raise ValueError(f"not a synthetic event query: {query!r}")
    return label


def near_miss_kind(label: str, shown: list[str]) -> str:
    """What `label` shares with `shown`'s shapes: "colour", "shape", "colour+shape" (each with a different
    one: the label itself is never shown) or "neither"."""
    colour, shape = label.split()
    shared = [
        name
        for name, part, at in (("colour", colour, 0), ("shape", shape, 1))
        if any(part == other.split()[at] for other in shown)
    ]
    return "+".join(shared) or "neither"


def near_miss(label: str, shown: list[str]) -> bool:
    """`label` ("red square") shares its colour or its shape with one of `shown` ("red circle")."""
    return near_miss_kind(label, shown) != "neither"


def absent_query(truth: SyntheticTruth, rng: np.random.Generator) -> str:
    """A query about a shape the video never shows; a near miss of one of its events when possible."""
    drawn = {e.label for e in [*truth.events, *truth.distractors]}
    absent = [f"{color} {shape}" for color in COLORS for shape in SHAPES if f"{color} {shape}" not in drawn]
    pool = [x for x in absent if near_miss(x, [e.label for e in truth.events])] or absent
    return f"When does the {pool[int(rng.integers(len(pool)))]} appear?"


SET_LIMITS = {
    "count": 100_000,
    "duration_s": 24 * 3600.0,
    "fps": 120.0,
    "side": 4096,
    "events": 63,
    "distractors": 48,
}


def _check_set_args(
    count: int, seed: int, duration_s: float, events: int, fps: float, width: int, height: int,
    min_event_s: float | None, distractors: int,
) -> None:  # fmt: skip
    """Refuse, in one line, what would write nonsense (reversed spans) or run without end (huge sets)."""
    limits = SET_LIMITS
    if not 1 <= count <= limits["count"]:
        raise ValueError(f"count must be within 1 and {limits['count']}, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not (math.isfinite(duration_s) and 0 < duration_s <= limits["duration_s"]):
        raise ValueError(f"duration must be within 0 and {limits['duration_s']:.0f} s, got {duration_s}")
    if not (math.isfinite(fps) and 1 <= fps <= limits["fps"]):
        raise ValueError(f"video fps must be within 1 and {limits['fps']:.0f}, got {fps}")
    if not (16 <= width <= limits["side"] and 16 <= height <= limits["side"]):
        raise ValueError(
            f"width and height must be within 16 and {limits['side']} pixels, got {width}x{height}"
        )
    if not 1 <= events <= limits["events"]:  # one colour/shape pair each
        raise ValueError(f"events must be within 1 and {limits['events']}, got {events}")
    if not 0 <= distractors <= limits["distractors"]:
        raise ValueError(f"distractors must be within 0 and {limits['distractors']}, got {distractors}")
    if min_event_s is not None and not (
        math.isfinite(min_event_s) and 0 < min_event_s <= duration_s / events
    ):
        raise ValueError(
            f"min event must be positive and fit {events} events in {duration_s} s, got {min_event_s}"
        )


def write_synthetic_set(
    out_dir: str | Path,
    *,
    count: int,
    seed: int,
    duration_s: float = 60.0,
    events_per_video: int = 2,
    fps: float = 10.0,
    width: int = 160,
    height: int = 96,
    min_event_s: float | None = None,
    distractors: int = 2,
) -> Path:
    """Write `count` videos (`synth_000.mp4`, …) and `annotations.json` into `out_dir`; returns the latter.

    Deterministic per `seed`. Events last between `min_event_s` (default 5 % of the video, at least 1 s)
    and a third of the video; `distractors` unrelated shapes per video come and go (no query is about them).
    """
    _check_set_args(count, seed, duration_s, events_per_video, fps, width, height, min_event_s, distractors)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    min_len = min_event_s if min_event_s is not None else max(1.0, 0.05 * duration_s)
    annotations: dict[str, Any] = {}
    for i in range(count):
        video_id = f"synth_{i:03d}"
        events = random_events(rng, duration_s, n_events=events_per_video, min_len_s=min_len)
        truth = make_synthetic_video(
            out / f"{video_id}.mp4", duration_s=duration_s, fps=fps, width=width, height=height,
            events=events, seed=seed * 1000 + i, n_distractors=distractors,
        )  # fmt: skip
        annotations[video_id] = {
            "duration": round(truth.duration_s, 3),
            "spans": [[e.start_s, e.end_s] for e in truth.events],
            "queries": [event_query(e) for e in truth.events],
            # its own stream, so the videos stay those of every earlier run with the same seed
            "absent_queries": [absent_query(truth, np.random.default_rng([seed, i]))],
        }
    path = out / ANNOTATION_FILE
    path.write_text(json.dumps(annotations, indent=2) + "\n", encoding="utf-8")
    return path
