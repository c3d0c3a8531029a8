"""The bodies of the job tasks: probe → plan → infer per chunk → finalize (DESIGN §2).

Each function takes a `WorkerContext` and ids, loads everything else from the database, and returns the
messages to send after its last commit (`Send`). Heavy work (probing, decoding, the model) runs with no
transaction open; state changes are short transactions on the locked job row. Redelivery is safe
everywhere: a probe of a job already planned does nothing, a chunk already done is skipped, chunk
segments are replaced as a whole keyed by (job, chunk, query, ordinal), and only the transaction that
sees the last chunk done moves the job to `finalizing` and sends `finalize` (exactly once).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.models import FINAL_CHUNK_INDEX, Chunk, Job, Segment
from core.security import UnsafeURLError, resolve_redirects
from core.states import JobState, transition
from core.storage import ObjectNotFound, StorageError
from core.webhooks import record_job_event
from workers import metrics
from workers.context import EngineConfigError, WorkerContext
from workers.lifecycle import (
    Send,
    cancel_job,
    deliveries_to_send,
    fail_job,
    lock_chunk,
    lock_job,
    stage_error,
    utcnow,
)

if TYPE_CHECKING:
    from model_runtime.video import Chunk as VideoChunk

log = logging.getLogger(__name__)


class TransientTaskError(RuntimeError):
    """Worth another try later (network blip, retryable video error); the task retries with backoff.

    `error` is the job's problem document should the attempts run out first.
    """

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error


# --------------------------------------------------------------------------------------------- probe


def _attempt(work: Callable[[], Any], attempts: int, max_attempts: int) -> tuple[Any, dict[str, Any] | None]:
    """Run a task's slow part outside any transaction: (result, None), or (None, the job's error).

    A transient error re-raises (the task retries with backoff) until the attempts run out; then it,
    like an input error, becomes the job's failure.
    """
    try:
        return work(), None
    except TransientTaskError as err:
        if attempts < max_attempts or err.error is None:
            raise
        return None, err.error
    except _JobInputError as err:
        return None, err.error


def _fail_by_id(ctx: WorkerContext, job_id: str, failure: dict[str, Any]) -> list[Send]:
    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        return [] if job is None else fail_job(session, job, failure, ctx.settings)


def probe_job(ctx: WorkerContext, job_id: str) -> list[Send]:
    """Probe the job's video, store the plan and its chunks, and send one `infer` per chunk."""
    settings = ctx.settings
    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        if job is None:
            return []
        if job.state == JobState.CANCELING:
            return cancel_job(session, job, settings)
        if job.state not in (JobState.QUEUED, JobState.PROBING):
            return []  # already planned, or finished: a duplicate message
        job.attempts += 1
        if job.attempts > settings.job_max_attempts:
            detail = f"probing failed {job.attempts - 1} times"
            return fail_job(
                session, job, stage_error("probe-attempts-exhausted", detail, stage="probe"), settings
            )
        transition(job, JobState.PROBING)
        job.stage = "probe"
        source_uri, sampling, strategy = job.source_uri, dict(job.sampling or {}), job.strategy
        attempts = job.attempts

    result, failure = _attempt(
        lambda: _probe_and_plan(ctx, source_uri, sampling, strategy), attempts, settings.job_max_attempts
    )
    if failure is not None:
        return _fail_by_id(ctx, job_id, failure)
    info, plan = result

    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        if job is None:
            return []
        if job.state == JobState.CANCELING:
            return cancel_job(session, job, settings)
        if job.state != JobState.PROBING:
            return []
        job.video_info = info.to_dict()
        job.plan = plan.to_dict()
        job.video_seconds = info.duration_s
        existing = set(session.scalars(select(Chunk.index).where(Chunk.job_id == job.id)))
        for chunk in plan.chunks:
            if chunk.index not in existing:
                session.add(_chunk_row(job.id, chunk))
        job.chunks_total = len(plan.chunks)
        job.chunks_done = 0
        transition(job, JobState.RUNNING)
        job.stage = "infer"
        return [Send("timemark.infer", (str(job.id), chunk.index)) for chunk in plan.chunks]


class _JobInputError(Exception):
    """The job's input cannot work (bad video, unsafe URL, bad sampling): fail the job, do not retry."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("detail", ""))
        self.error = error


def _probe_and_plan(
    ctx: WorkerContext, source_uri: str, sampling: dict[str, Any], strategy: str
) -> tuple[Any, Any]:
    from model_runtime.video import SamplingParams, VideoError, plan_chunks, plan_coarse, probe_video

    settings = ctx.settings
    try:
        params = SamplingParams.from_kwargs(sampling)
    except (TypeError, ValueError) as err:
        raise _JobInputError(stage_error("invalid-sampling", str(err), stage="probe")) from err
    _check_stored_object(ctx, source_uri)
    url = _openable_source(ctx, source_uri, stage="probe")
    try:
        info = probe_video(url, timeout_s=settings.probe_timeout_s)
        plan = (
            plan_coarse(info, params)
            if strategy == "coarse_to_fine"
            else plan_chunks(info, params, overlap_s=settings.chunk_overlap_s)
        )
    except VideoError as err:
        if err.retryable:
            error = stage_error(err.code, _video_detail(err, url, source_uri), stage="probe", retryable=True)
            raise TransientTaskError(f"probe: {err.code}", error) from err
        raise _JobInputError(
            stage_error(err.code, _video_detail(err, url, source_uri), stage="probe")
        ) from err
    if not plan.chunks:
        raise _JobInputError(stage_error("no-frames", "the video yields no frames to sample", stage="probe"))
    return info, plan


def _check_stored_object(ctx: WorkerContext, source_uri: str) -> None:
    """Our own storage can say "missing" or "empty" plainly, before FFmpeg turns it into a network error."""
    if not source_uri.startswith(("s3://", "file://")):
        return
    try:
        size = ctx.storage.head(source_uri).size
    except ObjectNotFound as err:
        raise _JobInputError(
            stage_error("not-found", "the video object does not exist", stage="probe")
        ) from err
    except StorageError as err:
        raise TransientTaskError(f"probe: storage: {err}") from err
    if size == 0:
        raise _JobInputError(stage_error("empty-file", "the video object is empty (0 bytes)", stage="probe"))


def _openable_source(ctx: WorkerContext, source_uri: str, *, stage: str) -> str:
    """What the decoder opens. A user's http(s) URL is checked again here (its DNS may have changed)
    and its redirects are followed by hand through the guard, since FFmpeg would follow them blindly."""
    if source_uri.startswith(("http://", "https://")):
        try:
            return resolve_redirects(source_uri, ctx.settings, timeout_s=ctx.settings.probe_timeout_s)
        except UnsafeURLError as err:
            error = stage_error(err.code, err.detail, stage=stage, retryable=err.code == "fetch-failed")
            if err.code == "fetch-failed":
                raise TransientTaskError(f"{stage}: {err.detail}", error) from err
            raise _JobInputError(error) from err
    try:
        return ctx.source_url(source_uri)
    except Exception as err:  # storage errors: the object may come back (S3 hiccup)
        raise TransientTaskError(f"{stage}: cannot resolve source ({type(err).__name__})") from err


def _video_detail(err: Exception, opened_url: str, source_uri: str) -> str:
    """A video error's message naming the job's own source, not the presigned storage URL opened for it
    (which would show clients the internal S3 endpoint; the reliability corpus found it in job errors)."""
    message = str(err)
    if opened_url != source_uri:
        message = message.replace(opened_url.split("?", 1)[0], source_uri)
    return message


def _chunk_row(job_id: uuid.UUID, chunk: VideoChunk) -> Chunk:
    return Chunk(
        job_id=job_id, index=chunk.index, start_s=chunk.start_s, end_s=chunk.end_s, spec=chunk.to_dict()
    )


# --------------------------------------------------------------------------------------------- infer


def infer_chunk(ctx: WorkerContext, job_id: str, chunk_index: int) -> list[Send]:
    """Run the model over one chunk for all of the job's queries and store its segments."""
    settings = ctx.settings
    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        if job is None or JobState(job.state).terminal:
            return []
        if job.state == JobState.CANCELING:
            return cancel_job(session, job, settings)  # cooperative cancel: stop between chunks
        if job.state != JobState.RUNNING:
            return []
        chunk = lock_chunk(session, job.id, int(chunk_index))
        if chunk is None or chunk.state in ("done", "failed"):
            return []
        chunk.attempts += 1
        if chunk.attempts > settings.chunk_max_attempts:
            chunk.state = "failed"
            detail = f"chunk {chunk.index} failed {chunk.attempts - 1} times"
            chunk.error = stage_error("chunk-attempts-exhausted", detail, stage="infer")
            return fail_job(session, job, chunk.error, settings)
        chunk.state = "running"
        chunk.started_at = utcnow()
        spec, source_uri, queries = dict(chunk.spec or {}), job.source_uri, [str(q) for q in job.queries]
        attempts = chunk.attempts

    started = time.perf_counter()
    # A retry of this task reclaims the chunk (its attempt counter above).
    result, failure = _attempt(
        lambda: _ground_one_chunk(ctx, source_uri, spec, queries), attempts, settings.chunk_max_attempts
    )
    if failure is not None:
        return _fail_by_id(ctx, job_id, failure)
    segments, seconds, tokens, raw = result

    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        if job is None or job.state not in (JobState.RUNNING, JobState.CANCELING):
            return []
        chunk = lock_chunk(session, job.id, int(chunk_index))
        if chunk is None or chunk.state == "done":
            return []  # a duplicate delivery finished first; its segments stand
        _replace_chunk_segments(session, job.id, chunk.index, segments)
        chunk.state = "done"
        chunk.error = None
        chunk.finished_at = utcnow()
        chunk.gpu_seconds = seconds
        chunk.tokens = tokens
        chunk.raw_outputs = raw
        session.flush()
        metrics.record_chunk_done(settings.engine_kind, time.perf_counter() - started)
        log.info(
            "chunk %d of job %s done",
            chunk.index,
            job_id,
            extra={"job_id": job_id, "chunk_index": chunk.index},
        )
        _refresh_job_counters(session, job)
        if job.state == JobState.CANCELING:
            return cancel_job(session, job, settings)
        if job.chunks_done < (job.chunks_total or 0):
            return []
        transition(job, JobState.FINALIZING)
        job.stage = "finalize"
        return [Send("timemark.finalize", (str(job.id),))]


def release_chunk(
    ctx: WorkerContext, job_id: str, chunk_index: int, reason: str, *, retry_in_s: float
) -> list[Send]:
    """After a failed attempt: hand the chunk back (retry later) or, past the attempt cap, fail the job."""
    settings = ctx.settings
    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        if job is None or JobState(job.state).terminal:
            return []
        chunk = lock_chunk(session, job.id, int(chunk_index))
        if chunk is None or chunk.state != "running":
            return []
        chunk.error = stage_error("chunk-attempt-failed", reason, stage="infer", retryable=True)
        if chunk.attempts >= settings.chunk_max_attempts:
            chunk.state = "failed"
            detail = f"chunk {chunk.index} failed {chunk.attempts} times; last: {reason}"
            return fail_job(
                session, job, stage_error("chunk-attempts-exhausted", detail, stage="infer"), settings
            )
        chunk.state = "pending"
        return [Send("timemark.infer", (str(job.id), chunk.index), countdown=retry_in_s)]


def _ground_one_chunk(
    ctx: WorkerContext, source_uri: str, spec: dict[str, Any], queries: list[str]
) -> tuple[list[Any], float, int, list[Any] | None]:
    """Decode the chunk's frames and ask the engine; returns (segments, engine seconds, tokens, raw).

    Tokens are what the engine reports: prompt tokens (the video prefix counted per request, as
    billed by servers) plus generated tokens. Raw texts are not exposed by `ground_chunk`, so None.
    """
    from model_runtime.grounding import GroundingStats, ground_chunk
    from model_runtime.video import Chunk as VideoChunk
    from model_runtime.video import VideoError, sample_chunk

    chunk = VideoChunk.from_dict(spec)
    url = _openable_source(ctx, source_uri, stage="infer")
    stats = GroundingStats()
    decode_started = time.perf_counter()
    try:
        frames = sample_chunk(url, chunk)
    except VideoError as err:
        if err.retryable:
            raise TransientTaskError(
                f"infer: {err.code}",
                stage_error(err.code, _video_detail(err, url, source_uri), stage="infer"),
            ) from err
        raise _JobInputError(
            stage_error(err.code, _video_detail(err, url, source_uri), stage="infer")
        ) from err
    stats.decode_s, stats.frames = time.perf_counter() - decode_started, len(frames.timestamps)
    try:
        engine = ctx.engine()
    except EngineConfigError as err:
        raise _JobInputError(stage_error("engine-not-configured", str(err), stage="infer")) from err
    started = time.perf_counter()
    segments = ground_chunk(engine, frames, chunk, queries, stats=stats)
    seconds = stats.engine_s or (time.perf_counter() - started)
    metrics.record_chunk(ctx.settings.engine_kind, stats)
    return segments, seconds, stats.prompt_tokens + stats.generated_tokens, None


def _replace_chunk_segments(
    session: Session, job_id: uuid.UUID, chunk_index: int, segments: list[Any]
) -> None:
    """Replace the chunk's rows as a whole: a redelivered chunk overwrites, never duplicates."""
    session.execute(
        delete(Segment).where(
            Segment.job_id == job_id, Segment.chunk_index == chunk_index, Segment.final.is_(False)
        )
    )
    ordinals: dict[int, int] = {}
    for seg in sorted(segments, key=lambda s: (s.query_index, -s.confidence, s.start_s)):
        ordinal = ordinals.get(seg.query_index, 0)
        ordinals[seg.query_index] = ordinal + 1
        session.add(
            Segment(
                job_id=job_id,
                chunk_index=chunk_index,
                query_index=seg.query_index,
                ordinal=ordinal,
                final=False,
                start_s=float(seg.start_s),
                end_s=float(seg.end_s),
                confidence=float(seg.confidence),
                chunk_ids=[chunk_index],
            )
        )


def _refresh_job_counters(session: Session, job: Job) -> None:
    """Counters recomputed from the chunk rows (not incremented), so duplicates cannot inflate them."""
    done, tokens, seconds = session.execute(
        select(
            func.count(Chunk.id).filter(Chunk.state == "done"),
            func.coalesce(func.sum(Chunk.tokens), 0),
            func.coalesce(func.sum(Chunk.gpu_seconds), 0.0),
        ).where(Chunk.job_id == job.id)
    ).one()
    job.chunks_done = int(done)
    job.tokens = int(tokens)
    job.gpu_seconds = float(seconds)


# ------------------------------------------------------------------------------------------ finalize


def finalize_job(ctx: WorkerContext, job_id: str) -> list[Send]:
    """Merge chunk segments into the final ranked list, or (coarse-to-fine) start the refinement pass."""
    from model_runtime.grounding import ChunkSegment, merge_segments

    settings = ctx.settings
    with session_scope(ctx.session_factory) as session:
        job = lock_job(session, job_id)
        if job is None:
            return []
        if job.state == JobState.CANCELING:
            return cancel_job(session, job, settings)
        if job.state != JobState.FINALIZING:
            return []  # duplicate message, or already finished
        queries = [str(q) for q in job.queries]
        planned = len((job.plan or {}).get("chunks", []))
        chunk_specs = _chunk_specs(session, job.id)
        refined = any(index >= planned for index in chunk_specs)
        rows = session.scalars(
            select(Segment).where(Segment.job_id == job.id, Segment.final.is_(False)).order_by(Segment.id)
        ).all()
        pieces = [ChunkSegment(r.query_index, r.start_s, r.end_s, r.confidence, r.chunk_index) for r in rows]
        coarse = [p for p in pieces if p.chunk_index < planned]
        try:
            first_pass = merge_segments(
                coarse,
                queries,
                top_k=settings.grounding_top_k,
                chunks=[chunk_specs[i] for i in sorted(chunk_specs) if i < planned],
            )
            if job.strategy == "coarse_to_fine" and not refined:
                coarse_chunks = [chunk_specs[i] for i in sorted(chunk_specs) if i < planned]
                windows = _refine_windows(job, first_pass, coarse_chunks)
                if windows:
                    return _start_refinement(session, job, windows, planned)
            final = first_pass
            if refined:
                fine = [p for p in pieces if p.chunk_index >= planned]
                final = _prefer_refined(
                    merge_segments(fine, queries, top_k=settings.grounding_top_k), first_pass
                )
        except ValueError as err:
            return fail_job(session, job, stage_error("merge-failed", str(err), stage="finalize"), settings)
        _store_final_segments(session, job.id, final)
        session.flush()  # sessions do not autoflush: the event below counts these rows
        transition(job, JobState.SUCCEEDED)
        metrics.record_job_succeeded(job.video_seconds)
        log.info("job %s succeeded", job_id, extra={"job_id": job_id})
        return deliveries_to_send(record_job_event(session, job, settings))


def _chunk_specs(session: Session, job_id: uuid.UUID) -> dict[int, Any]:
    from model_runtime.video import Chunk as VideoChunk

    rows = session.execute(select(Chunk.index, Chunk.spec).where(Chunk.job_id == job_id)).all()
    return {index: VideoChunk.from_dict(spec) for index, spec in rows if spec}


def _refine_windows(job: Job, candidates: list[Any], coarse_chunks: list[Any]) -> list[Any]:
    """Windows around the coarse candidates, padded by at least two coarse frame spacings (the coarse
    pass cannot place a boundary closer than that)."""
    from model_runtime.grounding import refine_windows
    from model_runtime.grounding.ground import refine_padding
    from model_runtime.video import SamplingParams, VideoInfo

    if not candidates or job.video_info is None or not coarse_chunks:
        return []
    info = VideoInfo.from_dict(job.video_info)
    params = SamplingParams.from_kwargs(dict(job.sampling or {}))
    return list(refine_windows(candidates, info, params, pad_s=refine_padding(coarse_chunks)))


def _start_refinement(session: Session, job: Job, windows: list[Any], planned: int) -> list[Send]:
    """Add one chunk per refinement window after the planned ones, back to `running`, send infers."""
    first = max([planned - 1, *session.scalars(select(Chunk.index).where(Chunk.job_id == job.id))]) + 1
    sends = []
    for offset, window in enumerate(windows):
        chunk = dataclasses.replace(window, index=first + offset)
        session.add(_chunk_row(job.id, chunk))
        sends.append(Send("timemark.infer", (str(job.id), chunk.index)))
    job.chunks_total = (job.chunks_total or 0) + len(windows)
    transition(job, JobState.RUNNING)
    job.stage = "refine"
    return sends


def _prefer_refined(fine: list[Any], coarse: list[Any]) -> list[Any]:
    """Refined answers where refinement found any for a query; the coarse ones for the other queries."""
    answered = {s.query_index for s in fine}
    merged = fine + [s for s in coarse if s.query_index not in answered]
    return sorted(merged, key=lambda s: (s.query_index, s.rank))


def _store_final_segments(session: Session, job_id: uuid.UUID, final: list[Any]) -> None:
    session.execute(delete(Segment).where(Segment.job_id == job_id, Segment.final.is_(True)))
    for seg in final:
        session.add(
            Segment(
                job_id=job_id,
                chunk_index=FINAL_CHUNK_INDEX,
                query_index=seg.query_index,
                ordinal=seg.rank - 1,
                final=True,
                start_s=float(seg.start_s),
                end_s=float(seg.end_s),
                confidence=float(seg.confidence),
                rank=seg.rank,
                chunk_ids=[int(c) for c in seg.chunk_ids],
            )
        )
