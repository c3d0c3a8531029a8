"""Turn per-chunk answers into one ranked list of segments per query.

Chunks overlap (plan_chunks' `overlap_s`), so one event can be reported by two chunks, and an event
that crosses a chunk boundary arrives as two halves. `merge_segments` handles both, per query:
- dedupe: two spans with IoU ≥ `iou_threshold` are one; the higher-confidence span is kept, chunk ids
  are pooled, and when they came from different chunks the agreement raises the confidence (noisy-OR,
  confidence.py); a chunk repeating itself is not agreement;
- join: spans from different chunks that overlap or touch become their union (gap ≤ `join_gap_s`; when
  the chunks are known, ≤ their edge tolerance, and only if the earlier span ends near its chunk's end and
  the later starts near its chunk's start: the signature of a cut event). Halves are not independent
  sightings: confidence = max;
- absorb (chunks known): a span cut by its chunk's edge that lies inside another chunk's span is that
  event seen in part (a chunk that ends mid-event reports its first seconds, the next chunk the whole);
  the larger span stays, and as two sightings of one event its confidence is their noisy-OR;
- rank: by confidence, top-k, ranks from 1.
All times are VIDEO seconds (ground_chunk has already added chunk.start_s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from model_runtime.grounding.confidence import combine_agreeing
from model_runtime.grounding.metrics import temporal_iou


@dataclass
class ChunkSegment:
    """One span one chunk reported for one query, in video seconds."""

    query_index: int
    start_s: float
    end_s: float
    confidence: float
    chunk_index: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChunkSegment:
        return cls(
            int(d["query_index"]),
            float(d["start_s"]),
            float(d["end_s"]),
            float(d["confidence"]),
            int(d["chunk_index"]),
        )


@dataclass
class FinalSegment:
    """A merged, ranked answer for one query, in video seconds; `rank` 1 is the best."""

    query_index: int
    query: str
    start_s: float
    end_s: float
    confidence: float
    rank: int
    chunk_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinalSegment:
        return cls(
            int(d["query_index"]), str(d["query"]), float(d["start_s"]), float(d["end_s"]),
            float(d["confidence"]), int(d["rank"]), [int(c) for c in d.get("chunk_ids", [])],
        )  # fmt: skip


@dataclass
class _Cluster:
    start_s: float
    end_s: float
    confidence: float
    chunk_ids: set[int]


@dataclass(frozen=True)
class _ChunkBounds:
    start_s: float
    end_s: float
    edge_s: float  # how close to the edge a span must end/start to count as cut by it


def _bounds(chunks: Sequence[Any] | None) -> dict[int, _ChunkBounds] | None:
    if chunks is None:
        return None
    out = {}
    for c in chunks:
        spacing = (c.end_s - c.start_s) / max(len(c.timestamps), 1)
        # A span is "at the edge" within two frame spacings (the model cannot be more precise), ≥ 1 s.
        out[c.index] = _ChunkBounds(c.start_s, c.end_s, max(1.0, 2.0 * spacing))
    return out


def _same_span(a: _Cluster, b: _Cluster, iou_threshold: float) -> bool:
    if a.start_s == b.start_s and a.end_s == b.end_s:
        return True  # also covers zero-length spans, whose IoU is 0 by definition
    return temporal_iou((a.start_s, a.end_s), (b.start_s, b.end_s)) >= iou_threshold


def _cut_by_boundary(first: _Cluster, second: _Cluster, bounds: Mapping[int, _ChunkBounds]) -> bool:
    """`first` (starting earlier) ends at one of its chunks' ends; `second` starts at one of its chunks' starts."""
    ends_at_edge = any(
        c in bounds and abs(first.end_s - bounds[c].end_s) <= bounds[c].edge_s for c in first.chunk_ids
    )
    starts_at_edge = any(
        c in bounds and abs(second.start_s - bounds[c].start_s) <= bounds[c].edge_s for c in second.chunk_ids
    )
    return ends_at_edge and starts_at_edge


def _is_cut(c: _Cluster, bounds: Mapping[int, _ChunkBounds]) -> bool:
    """The span starts at one of its chunks' starts or ends at one of its chunks' ends."""
    return any(
        abs(c.start_s - bounds[i].start_s) <= bounds[i].edge_s
        or abs(c.end_s - bounds[i].end_s) <= bounds[i].edge_s
        for i in c.chunk_ids
        if i in bounds
    )


def _partial_view(
    a: _Cluster, b: _Cluster, slack_s: float, bounds: Mapping[int, _ChunkBounds] | None
) -> bool:
    """One span, cut by its chunk's edge, lies within the other (from other chunks): see `absorb`."""
    if bounds is None or a.chunk_ids & b.chunk_ids:
        return False

    def inside(x: _Cluster, y: _Cluster) -> bool:
        return x.start_s >= y.start_s - slack_s and x.end_s <= y.end_s + slack_s

    return (inside(b, a) and _is_cut(b, bounds)) or (inside(a, b) and _is_cut(a, bounds))


def _should_join(
    a: _Cluster, b: _Cluster, join_gap_s: float, bounds: Mapping[int, _ChunkBounds] | None
) -> bool:
    if a.chunk_ids & b.chunk_ids:
        return False  # two spans of one chunk are two events as far as the model said
    first, second = (a, b) if (a.start_s, a.end_s) <= (b.start_s, b.end_s) else (b, a)
    if bounds is not None:  # halves end and start at frames of two grids: as precise as an edge, no more
        join_gap_s = max([join_gap_s] + [bounds[i].edge_s for i in a.chunk_ids | b.chunk_ids if i in bounds])
    if second.start_s - first.end_s > join_gap_s:
        return False
    return bounds is None or _cut_by_boundary(first, second, bounds)


def _merge_query(
    segments: list[ChunkSegment],
    iou_threshold: float,
    join_gap_s: float,
    bounds: Mapping[int, _ChunkBounds] | None,
) -> list[_Cluster]:
    clusters: list[_Cluster] = []
    # Per chunk, a span repeated by the model counts once, at its best confidence.
    for s in sorted(segments, key=lambda s: (-s.confidence, s.start_s, s.end_s)):
        twin = next(
            (
                c
                for c in clusters
                if c.chunk_ids == {s.chunk_index} and (c.start_s, c.end_s) == (s.start_s, s.end_s)
            ),
            None,
        )
        if twin is None:
            clusters.append(_Cluster(s.start_s, s.end_s, s.confidence, {s.chunk_index}))
    changed = True
    while changed:
        changed = False
        clusters.sort(key=lambda c: (-c.confidence, c.start_s))
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                a, b = clusters[i], clusters[j]
                if _same_span(a, b, iou_threshold):
                    independent = not (a.chunk_ids & b.chunk_ids)
                    a.confidence = (
                        combine_agreeing([a.confidence, b.confidence]) if independent else a.confidence
                    )
                    a.chunk_ids |= b.chunk_ids  # a keeps its span: it is the more confident one
                elif _partial_view(a, b, join_gap_s, bounds):
                    a.start_s, a.end_s = min(a.start_s, b.start_s), max(a.end_s, b.end_s)
                    a.confidence = combine_agreeing([a.confidence, b.confidence])
                    a.chunk_ids |= b.chunk_ids
                elif _should_join(a, b, join_gap_s, bounds):
                    a.start_s, a.end_s = min(a.start_s, b.start_s), max(a.end_s, b.end_s)
                    a.chunk_ids |= b.chunk_ids
                else:
                    continue
                del clusters[j]
                changed = True
                break
            if changed:
                break
    return clusters


def merge_segments(
    segments: list[ChunkSegment],
    queries: list[str],
    *,
    iou_threshold: float = 0.5,
    top_k: int = 5,
    chunks: Sequence[Any] | None = None,
    join_gap_s: float = 0.5,
) -> list[FinalSegment]:
    """Deduplicate, join and rank chunk segments per query (module docstring); top-k per query.

    `chunks` (the plan's `Chunk`s, optional) lets joining require the cut-at-a-boundary signature.
    Output is ordered by query index, then rank.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    bounds = _bounds(chunks)
    out: list[FinalSegment] = []
    for qi, query in enumerate(queries):
        mine = [s for s in segments if s.query_index == qi]
        clusters = _merge_query(mine, iou_threshold, join_gap_s, bounds)
        clusters.sort(key=lambda c: (-c.confidence, c.start_s, c.end_s))
        for rank, c in enumerate(clusters[:top_k], 1):
            out.append(FinalSegment(qi, query, c.start_s, c.end_s, c.confidence, rank, sorted(c.chunk_ids)))
    unknown = {s.query_index for s in segments} - set(range(len(queries)))
    if unknown:
        raise ValueError(
            f"segments refer to query indices {sorted(unknown)} beyond the {len(queries)} queries"
        )
    return out
