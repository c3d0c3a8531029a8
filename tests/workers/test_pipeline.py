"""probe → infer → finalize bodies on real PostgreSQL, moto S3, real videos and the tiny native engine.

The tiny checkpoint has random weights, so its answers are noise: these tests check what the service
promises whatever the model says — plans and chunk rows, one finalize per job, no duplicate segments
under redelivery, attempt caps, cooperative cancel, failures that name their stage.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, update

from core.models import FINAL_CHUNK_INDEX, Chunk, Delivery, Job, Segment
from core.webhooks import generate_secret
from workers.pipeline import finalize_job, infer_chunk, probe_job, release_chunk


def _job(session_factory: Any, job_id: uuid.UUID) -> Job:
    with session_factory() as session:
        return session.get(Job, job_id)


def _chunks(session_factory: Any, job_id: uuid.UUID) -> list[Chunk]:
    with session_factory() as session:
        return list(session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.index)))


def _segment_count(session_factory: Any, job_id: uuid.UUID, *, final: bool) -> int:
    with session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Segment)
                .where(Segment.job_id == job_id, Segment.final.is_(final))
            )
        )


# --------------------------------------------------------------------------------------------- probe


def test_probe_plans_overlapping_chunks_and_sends_one_infer_each(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = make_job(video_uri)
    sends = probe_job(ctx, str(job_id))
    job = _job(session_factory, job_id)
    chunks = _chunks(session_factory, job_id)
    assert job.state == "running" and job.stage == "infer" and job.attempts == 1
    assert job.video_info["duration_s"] == pytest.approx(16.0, abs=0.2)
    assert job.plan["kind"] == "chunked" and job.chunks_total == len(chunks) >= 2
    assert all(a.end_s > b.start_s for a, b in zip(chunks, chunks[1:], strict=False))  # overlap
    assert [s.args for s in sends] == [(str(job_id), c.index) for c in chunks]
    assert {s.task for s in sends} == {"timemark.infer"}

    # A redelivered probe changes nothing.
    assert probe_job(ctx, str(job_id)) == []
    assert len(_chunks(session_factory, job_id)) == len(chunks)


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"hello, I am a text file\n" * 10, "unreadable"), (b"", "empty-file")],
    ids=["text", "empty"],
)
def test_probe_of_a_non_video_fails_the_job_naming_the_stage(
    ctx: Any,
    session_factory: Any,
    make_job: Any,
    s3: Any,
    s3_bucket: str,
    receiver: Any,
    body: bytes,
    code: str,
) -> None:
    key = f"bad/{uuid.uuid4().hex}.mp4"
    s3.put_object(Bucket=s3_bucket, Key=key, Body=body)
    job_id = make_job(f"s3://{s3_bucket}/{key}", webhook_url=receiver.url, webhook_secret=generate_secret())
    sends = probe_job(ctx, str(job_id))
    job = _job(session_factory, job_id)
    assert job.state == "failed" and job.error["stage"] == "probe"
    assert job.error["type"].endswith(code) and job.error["retryable"] is False
    assert "\n" not in job.error["detail"]
    assert [s.task for s in sends] == ["timemark.deliver"]
    with session_factory() as session:
        assert session.get(Delivery, uuid.UUID(sends[0].args[0])).event_type == "job.failed"


def test_probe_refuses_an_unsafe_url(ctx: Any, session_factory: Any, make_job: Any) -> None:
    from workers.context import WorkerContext

    strict = WorkerContext(ctx.settings.model_copy(update={"url_allow_cidrs": ()}))
    job_id = make_job("http://169.254.169.254/latest/meta-data/video.mp4")
    probe_job(strict, str(job_id))
    job = _job(session_factory, job_id)
    assert (
        job.state == "failed"
        and job.error["type"].endswith("address-not-allowed")
        and job.error["stage"] == "probe"
    )


def test_probe_with_impossible_sampling_fails(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = make_job(video_uri, sampling={"fps": 1.0, "min_pixels": 200_000, "max_pixels": 100_000})
    probe_job(ctx, str(job_id))
    job = _job(session_factory, job_id)
    assert job.state == "failed" and job.error["type"].endswith("invalid-sampling")


def test_probe_of_a_canceling_job_cancels_it(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = make_job(video_uri, state="canceling")
    probe_job(ctx, str(job_id))
    assert _job(session_factory, job_id).state == "canceled"


def test_probe_attempt_cap(ctx: Any, session_factory: Any, make_job: Any, video_uri: str) -> None:
    job_id = make_job(video_uri, attempts=ctx.settings.job_max_attempts)
    probe_job(ctx, str(job_id))
    job = _job(session_factory, job_id)
    assert job.state == "failed" and job.error["type"].endswith("probe-attempts-exhausted")


# --------------------------------------------------------------------------------------------- infer


def _planned_job(ctx: Any, make_job: Any, video_uri: str, **overrides: Any) -> uuid.UUID:
    job_id = make_job(video_uri, **overrides)
    probe_job(ctx, str(job_id))
    return job_id


def test_attempt_cap_fails_the_job_before_any_work(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = _planned_job(ctx, make_job, video_uri)
    with session_factory() as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id, Chunk.index == 0)
            .values(attempts=ctx.settings.chunk_max_attempts, state="running")
        )
        session.commit()
    infer_chunk(ctx, str(job_id), 0)
    job = _job(session_factory, job_id)
    assert job.state == "failed" and job.error["type"].endswith("chunk-attempts-exhausted")
    assert _chunks(session_factory, job_id)[0].state == "failed"
    # Later chunks of the failed job do nothing.
    assert infer_chunk(ctx, str(job_id), 1) == []
    assert _chunks(session_factory, job_id)[1].attempts == 0


def test_cancel_stops_between_chunks(ctx: Any, session_factory: Any, make_job: Any, video_uri: str) -> None:
    job_id = _planned_job(ctx, make_job, video_uri)
    with session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="canceling"))
        session.commit()
    infer_chunk(ctx, str(job_id), 0)
    assert _job(session_factory, job_id).state == "canceled"
    assert all(c.attempts == 0 for c in _chunks(session_factory, job_id))


def test_failed_attempt_hands_the_chunk_back_until_the_cap(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = _planned_job(ctx, make_job, video_uri)
    for attempt in range(1, ctx.settings.chunk_max_attempts + 1):
        with session_factory() as session:  # what the claim of attempt N leaves behind
            session.execute(
                update(Chunk)
                .where(Chunk.job_id == job_id, Chunk.index == 0)
                .values(attempts=attempt, state="running")
            )
            session.commit()
        sends = release_chunk(ctx, str(job_id), 0, "RuntimeError: engine exploded", retry_in_s=2.0)
        if attempt < ctx.settings.chunk_max_attempts:
            assert [(s.task, s.args, s.countdown) for s in sends] == [
                ("timemark.infer", (str(job_id), 0), 2.0)
            ]
            assert _chunks(session_factory, job_id)[0].state == "pending"
    job = _job(session_factory, job_id)
    assert job.state == "failed" and "engine exploded" in job.error["detail"]


@pytest.mark.slow
def test_every_chunk_runs_once_finalize_is_sent_once_and_redelivery_never_duplicates(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = _planned_job(ctx, make_job, video_uri)
    chunks = _chunks(session_factory, job_id)
    finalize_sends = []
    for chunk in chunks:
        finalize_sends += [
            s for s in infer_chunk(ctx, str(job_id), chunk.index) if s.task == "timemark.finalize"
        ]
    assert finalize_sends == [finalize_sends[0]] and finalize_sends[0].args == (str(job_id),)
    job = _job(session_factory, job_id)
    assert job.state == "finalizing" and job.chunks_done == len(chunks)
    assert job.tokens > 0 and job.gpu_seconds > 0
    stored = _segment_count(session_factory, job_id, final=False)

    # Duplicate messages of finished chunks do nothing (no attempt, no rows, no second finalize).
    for chunk in chunks:
        assert infer_chunk(ctx, str(job_id), chunk.index) == []
    assert [c.attempts for c in _chunks(session_factory, job_id)] == [1] * len(chunks)

    # A chunk re-run after its rows were written (a redelivery racing a finished run) replaces them.
    with session_factory() as session:
        session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.index == 0).values(state="pending"))
        session.execute(update(Job).where(Job.id == job_id).values(state="running"))
        session.commit()
    infer_chunk(ctx, str(job_id), 0)
    assert _segment_count(session_factory, job_id, final=False) == stored
    assert _job(session_factory, job_id).chunks_done == len(chunks)

    finalize_job(ctx, str(job_id))
    assert _job(session_factory, job_id).state == "succeeded"


# ------------------------------------------------------------------------------------------ finalize


def _job_with_chunk_segments(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str, **overrides: Any
) -> uuid.UUID:
    """A planned job whose chunks are done with stored segments (as infer leaves them), in `finalizing`."""
    job_id = _planned_job(ctx, make_job, video_uri, **overrides)
    chunks = _chunks(session_factory, job_id)
    rows = [  # query 0 seen by both overlapping chunks 0 and 1; query 1 once in chunk 1
        (0, 0, 5.0, 7.5, 0.6),
        (1, 0, 5.2, 7.5, 0.7),
        (1, 1, 9.0, 11.0, 0.4),
    ]
    with session_factory() as session:
        for ordinal, (chunk_index, query_index, start, end, conf) in enumerate(rows):
            session.add(
                Segment(
                    job_id=job_id,
                    chunk_index=chunk_index,
                    query_index=query_index,
                    ordinal=ordinal,
                    start_s=start,
                    end_s=end,
                    confidence=conf,
                    chunk_ids=[chunk_index],
                )
            )
        session.execute(update(Chunk).where(Chunk.job_id == job_id).values(state="done", attempts=1))
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state="finalizing", chunks_done=len(chunks), stage="finalize")
        )
        session.commit()
    return job_id


def test_finalize_merges_ranks_and_announces_once(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str, receiver: Any
) -> None:
    job_id = _job_with_chunk_segments(
        ctx, session_factory, make_job, video_uri, webhook_url=receiver.url, webhook_secret=generate_secret()
    )
    sends = finalize_job(ctx, str(job_id))
    assert [s.task for s in sends] == ["timemark.deliver"]
    with session_factory() as session:
        final = session.scalars(
            select(Segment)
            .where(Segment.job_id == job_id, Segment.final.is_(True))
            .order_by(Segment.query_index)
        ).all()
    assert [(s.query_index, s.rank, s.chunk_index) for s in final] == [
        (0, 1, FINAL_CHUNK_INDEX),
        (1, 1, FINAL_CHUNK_INDEX),
    ]
    assert final[0].chunk_ids == [0, 1] and final[0].confidence > 0.7  # two chunks agreeing raise confidence
    assert _job(session_factory, job_id).state == "succeeded"
    with session_factory() as session:  # the event announces the stored final segments
        delivery = session.get(Delivery, uuid.UUID(sends[0].args[0]))
        assert delivery.payload["data"]["segment_count"] == 2
    # A duplicate finalize message: nothing more.
    assert finalize_job(ctx, str(job_id)) == []
    assert _segment_count(session_factory, job_id, final=True) == 2


def test_coarse_to_fine_adds_refinement_chunks_then_finalizes(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    job_id = make_job(video_uri, strategy="coarse_to_fine")
    probe_job(ctx, str(job_id))
    assert _job(session_factory, job_id).plan["kind"] == "coarse"
    (coarse,) = _chunks(session_factory, job_id)
    with session_factory() as session:
        session.add(
            Segment(
                job_id=job_id,
                chunk_index=0,
                query_index=0,
                ordinal=0,
                start_s=4.0,
                end_s=8.0,
                confidence=0.5,
                chunk_ids=[0],
            )
        )
        session.execute(update(Chunk).where(Chunk.id == coarse.id).values(state="done", attempts=1))
        session.execute(update(Job).where(Job.id == job_id).values(state="finalizing", chunks_done=1))
        session.commit()
    sends = finalize_job(ctx, str(job_id))
    job = _job(session_factory, job_id)
    refine = [c for c in _chunks(session_factory, job_id) if c.index > 0]
    assert job.state == "running" and job.stage == "refine" and refine
    assert job.chunks_total == 1 + len(refine)
    assert [s.args for s in sends] == [(str(job_id), c.index) for c in refine]
    assert all(c.start_s <= 8.0 and c.end_s >= 4.0 for c in refine)  # windows around the candidate


def test_unreachable_source_retries_then_fails_with_its_own_error(
    ctx: Any, session_factory: Any, make_job: Any, video_uri: str
) -> None:
    from workers.pipeline import TransientTaskError

    from .conftest import free_port

    job_id = _planned_job(ctx, make_job, video_uri)
    gone = f"http://127.0.0.1:{free_port()}/video.mp4"  # nothing listens: the fetch fails
    with session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(source_uri=gone))
        session.commit()
    with pytest.raises(TransientTaskError):  # attempt 1 of 3: the task will retry
        infer_chunk(ctx, str(job_id), 0)
    assert _chunks(session_factory, job_id)[0].state == "running"
    with session_factory() as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id, Chunk.index == 0)
            .values(attempts=ctx.settings.chunk_max_attempts - 1)
        )
        session.commit()
    infer_chunk(ctx, str(job_id), 0)  # the last attempt: the job fails with the fetch error
    job = _job(session_factory, job_id)
    assert job.state == "failed" and job.error["stage"] == "infer"
    assert job.error["type"].endswith("fetch-failed") and job.error["retryable"] is True
