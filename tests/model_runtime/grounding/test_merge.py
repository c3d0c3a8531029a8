"""Merging chunk answers: dedupe in overlaps, joins across boundaries, agreement, ranking."""

from __future__ import annotations

import pytest

from model_runtime.grounding.merge import ChunkSegment, FinalSegment, merge_segments
from model_runtime.video import Chunk


def _chunk(index: int, start: float, end: float, fps: float = 1.0) -> Chunk:
    n = int((end - start) * fps)
    return Chunk(index, start, end, [start + i / fps for i in range(n)], 56, 56, 4)


# Two 300 s chunks overlapping by 4 s, one frame a second (edge tolerance = 2 s).
CHUNKS = [_chunk(0, 0.0, 300.0), _chunk(1, 296.0, 596.0)]


def _spans(finals: list[FinalSegment]) -> list[tuple[float, float]]:
    return [(f.start_s, f.end_s) for f in finals]


def test_duplicate_in_overlap_keeps_higher_confidence_and_agreement_raises_it() -> None:
    segs = [ChunkSegment(0, 297.2, 299.4, 0.5, 1), ChunkSegment(0, 297.0, 299.5, 0.6, 0)]
    (final,) = merge_segments(segs, ["q"], chunks=CHUNKS)
    assert (final.start_s, final.end_s) == (297.0, 299.5)
    assert final.confidence == pytest.approx(1 - 0.4 * 0.5)
    assert final.chunk_ids == [0, 1] and final.rank == 1 and final.query == "q"


def test_span_cut_by_the_boundary_is_joined() -> None:
    segs = [ChunkSegment(0, 290.0, 300.0, 0.7, 0), ChunkSegment(0, 296.0, 320.0, 0.6, 1)]
    (final,) = merge_segments(segs, ["q"], chunks=CHUNKS)
    assert (final.start_s, final.end_s, final.chunk_ids) == (290.0, 320.0, [0, 1])
    assert final.confidence == pytest.approx(0.7)  # halves of one event are not two sightings


def test_the_part_a_chunk_saw_before_its_end_is_absorbed_by_the_next_chunks_whole_span() -> None:
    # chunk 0 ends 3 s into the event and reports those 3 s; chunk 1 sees all of it
    segs = [ChunkSegment(0, 297.0, 299.5, 0.6, 0), ChunkSegment(0, 297.0, 330.0, 0.5, 1)]
    (final,) = merge_segments(segs, ["q"], chunks=CHUNKS)
    assert (final.start_s, final.end_s, final.chunk_ids) == (297.0, 330.0, [0, 1])
    assert final.confidence == pytest.approx(1 - 0.4 * 0.5)  # two sightings of one event
    # a span inside another that no chunk edge cut is the model's own claim: kept apart
    wide = [_chunk(0, 0.0, 300.0), _chunk(1, 250.0, 550.0)]
    segs = [ChunkSegment(0, 270.0, 280.0, 0.6, 0), ChunkSegment(0, 255.0, 330.0, 0.5, 1)]
    assert _spans(merge_segments(segs, ["q"], chunks=wide)) == [(270.0, 280.0), (255.0, 330.0)]


def test_halves_a_frame_apart_on_two_frame_grids_still_join() -> None:
    # 2 fps: chunk 0's last frame showing it is at 51.4, chunk 1's first at 52.0 (its own grid): one event
    chunks = [_chunk(0, 44.0, 52.0, fps=2.0), _chunk(1, 51.9, 60.0, fps=2.0)]
    segs = [ChunkSegment(0, 49.5, 51.4, 0.7, 0), ChunkSegment(0, 52.0, 52.9, 0.6, 1)]
    (final,) = merge_segments(segs, ["q"], chunks=chunks)
    assert (final.start_s, final.end_s) == (49.5, 52.9)
    assert len(merge_segments(segs, ["q"])) == 2  # without chunks, only `join_gap_s` (0.5 s) counts


def test_no_join_when_the_later_span_does_not_start_at_its_chunk_edge() -> None:
    segs = [ChunkSegment(0, 290.0, 299.5, 0.7, 0), ChunkSegment(0, 299.0, 310.0, 0.6, 1)]
    finals = merge_segments(segs, ["q"], chunks=CHUNKS)
    assert _spans(finals) == [(290.0, 299.5), (299.0, 310.0)]
    assert [f.rank for f in finals] == [1, 2]


def test_without_chunks_touching_spans_of_different_chunks_join_but_one_chunk_never_joins_itself() -> None:
    across = [ChunkSegment(0, 10.0, 20.0, 0.4, 0), ChunkSegment(0, 20.3, 30.0, 0.5, 1)]
    assert _spans(merge_segments(across, ["q"])) == [(10.0, 30.0)]
    within = [ChunkSegment(0, 10.0, 20.0, 0.4, 0), ChunkSegment(0, 20.3, 30.0, 0.5, 0)]
    assert _spans(merge_segments(within, ["q"])) == [(20.3, 30.0), (10.0, 20.0)]
    apart = [ChunkSegment(0, 10.0, 20.0, 0.4, 0), ChunkSegment(0, 21.0, 30.0, 0.5, 1)]
    assert len(merge_segments(apart, ["q"])) == 2


def test_a_chunk_repeating_itself_is_not_agreement() -> None:
    segs = [
        ChunkSegment(0, 10.0, 20.0, 0.6, 0),
        ChunkSegment(0, 10.0, 20.0, 0.6, 0),
        ChunkSegment(0, 10.5, 20.0, 0.5, 0),
    ]
    (final,) = merge_segments(segs, ["q"])
    assert final.confidence == pytest.approx(0.6) and final.chunk_ids == [0]


def test_zero_length_spans_from_two_chunks_dedupe() -> None:
    segs = [ChunkSegment(0, 298.0, 298.0, 0.5, 0), ChunkSegment(0, 298.0, 298.0, 0.5, 1)]
    (final,) = merge_segments(segs, ["q"], chunks=CHUNKS)
    assert final.confidence == pytest.approx(0.75)


def test_top_k_ranks_and_queries_kept_apart() -> None:
    segs = [ChunkSegment(0, 100.0 * i, 100.0 * i + 5, 0.1 * i, i) for i in range(1, 8)]
    segs.append(ChunkSegment(1, 12.0, 15.0, 0.3, 0))
    finals = merge_segments(segs, ["red circle", "blue square"], top_k=5)
    first = [f for f in finals if f.query_index == 0]
    assert [f.rank for f in first] == [1, 2, 3, 4, 5]
    assert [f.start_s for f in first] == [700.0, 600.0, 500.0, 400.0, 300.0]
    (second,) = [f for f in finals if f.query_index == 1]
    assert (second.query, second.start_s, second.rank) == ("blue square", 12.0, 1)
    assert FinalSegment.from_dict(second.to_dict()) == second


def test_chain_of_three_chunks_joins_into_one() -> None:
    chunks = CHUNKS + [_chunk(2, 592.0, 892.0)]
    segs = [
        ChunkSegment(0, 280.0, 300.0, 0.5, 0),
        ChunkSegment(0, 296.0, 596.0, 0.4, 1),
        ChunkSegment(0, 592.0, 610.0, 0.6, 2),
    ]
    (final,) = merge_segments(segs, ["q"], chunks=chunks)
    assert (final.start_s, final.end_s, final.chunk_ids) == (280.0, 610.0, [0, 1, 2])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="query indices"):
        merge_segments([ChunkSegment(3, 0.0, 1.0, 0.5, 0)], ["q"])
    with pytest.raises(ValueError, match="top_k"):
        merge_segments([], ["q"], top_k=0)
    assert merge_segments([], ["q"]) == []
