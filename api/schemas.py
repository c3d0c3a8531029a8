"""Request and response models of the public API: strict on the way in, explicit on the way out.

Every request model forbids unknown fields (spec pitfall 20), bounds every string and list, and uses
the Keye server's sampling names (`fps`, `min_pixels`, `max_pixels`, `video_total_pixels`,
`min_frames`, `max_frames`). Response models never carry secrets: a webhook secret appears once, in the
response to the request that created it. Times are UTC ISO 8601; segments also carry timecodes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_QUERIES = 32
MAX_QUERY_CHARS = 1000
MAX_METADATA_BYTES = 16_384
MAX_METADATA_DEPTH = 8

SOURCE_PATTERN = re.compile(
    r"^(https?://\S+|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S+|upload:[0-9a-fA-F-]{36})$"
)
WEBHOOK_SECRET_PATTERN = r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$"

JobStateName = Literal[
    "queued", "probing", "running", "finalizing", "succeeded", "failed", "canceling", "canceled"
]
Strategy = Literal["chunked", "coarse_to_fine"]
EventName = Literal["job.succeeded", "job.failed", "job.canceled", "batch.completed"]
Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    encoded = json.dumps(value, ensure_ascii=False)
    if len(encoded.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# -------------------------------------------------------------------------------------- requests


class Sampling(Strict):
    """Frame sampling knobs; an omitted one takes the server default (the Keye server's)."""

    fps: float | None = Field(default=None, gt=0, le=30)
    min_pixels: int | None = Field(default=None, ge=784, le=16_056_320)
    max_pixels: int | None = Field(default=None, ge=784, le=16_056_320)
    video_total_pixels: int | None = Field(default=None, ge=784, le=10**10)
    min_frames: int | None = Field(default=None, ge=1, le=10_000)
    max_frames: int | None = Field(default=None, ge=1, le=10_000)


class WebhookSpec(Strict):
    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")]
    secret: Annotated[str, StringConstraints(pattern=WEBHOOK_SECRET_PATTERN)] | None = Field(
        default=None, description="whsec_ secret; generated and returned once when omitted"
    )


class JobCreate(Strict):
    """`POST /v1/jobs`: find when each query happens in the video."""

    source: Annotated[str, StringConstraints(max_length=2048, pattern=SOURCE_PATTERN.pattern)] = Field(
        description="https://…, s3://bucket/key, or upload:<id> from POST /v1/uploads"
    )
    task: Literal["grounding"] = "grounding"
    queries: list[Query] = Field(min_length=1, max_length=MAX_QUERIES)
    sampling: Sampling = Field(default_factory=Sampling)
    strategy: Strategy | None = None
    webhook: WebhookSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    client_ref: Annotated[str, StringConstraints(max_length=200)] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)


class JobTemplate(Strict):
    """What every child job of a batch shares (a `JobCreate` without its source)."""

    task: Literal["grounding"] = "grounding"
    queries: list[Query] = Field(min_length=1, max_length=MAX_QUERIES)
    sampling: Sampling = Field(default_factory=Sampling)
    strategy: Strategy | None = None
    webhook: WebhookSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)


class BatchCreate(Strict):
    """`POST /v1/batches`: one child job per video object under an S3 prefix (deduplicated by ETag)."""

    source: Annotated[
        str, StringConstraints(max_length=2048, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S*$")
    ]
    job: JobTemplate
    max_objects: int = Field(default=1000, ge=1, le=100_000)
    webhook: WebhookSpec | None = Field(default=None, description="receives batch.completed")
    metadata: dict[str, Any] = Field(default_factory=dict)
    client_ref: Annotated[str, StringConstraints(max_length=200)] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)


# ------------------------------------------------------------------------------------- responses


class Progress(BaseModel):
    stage: str | None
    chunks_done: int
    chunks_total: int | None
    pct: float | None


class Usage(BaseModel):
    video_seconds: float | None
    tokens: int
    gpu_seconds: float


class WebhookView(BaseModel):
    url: str
    secret: str | None = Field(default=None, description="only in the response that created it")


class JobView(BaseModel):
    object: Literal["job"] = "job"
    id: uuid.UUID
    state: JobStateName
    terminal: bool
    progress: Progress
    error: dict[str, Any] | None
    source: str
    task: str
    queries: list[str]
    sampling: dict[str, Any]
    strategy: str
    webhook: WebhookView | None
    metadata: dict[str, Any]
    client_ref: str | None
    batch_id: uuid.UUID | None
    attempts: int
    usage: Usage
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]
    next_page_token: str = Field(description="empty on the last page")


class SegmentView(BaseModel):
    query_index: int
    query: str
    start_s: float
    end_s: float
    start_tc: str = Field(description="HH:MM:SS.mmm")
    end_tc: str
    confidence: float
    rank: int | None
    chunk_ids: list[int]
    final: bool


class SegmentList(BaseModel):
    object: Literal["list"] = "list"
    job_id: uuid.UUID
    job_state: JobStateName
    data: list[SegmentView]
    next_page_token: str


class UploadView(BaseModel):
    object: Literal["upload"] = "upload"
    id: uuid.UUID
    source: str = Field(description="use as a job's source")
    filename: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    state: str
    created_at: datetime


class BatchItemError(BaseModel):
    object_uri: str
    etag: str
    error: dict[str, Any]


class BatchView(BaseModel):
    object: Literal["batch"] = "batch"
    id: uuid.UUID
    state: str
    source: str
    max_objects: int
    counts: dict[str, int]
    errors: list[BatchItemError]
    error: dict[str, Any] | None
    metadata: dict[str, Any]
    client_ref: str | None
    webhook: WebhookView | None
    job_webhook: WebhookView | None = Field(description="the child jobs' webhook; secret only on create")
    created_at: datetime
    completed_at: datetime | None
    links: dict[str, str]


class DeliveryAttemptView(BaseModel):
    number: int
    started_at: datetime
    duration_ms: float | None
    status_code: int | None
    error: str | None


class DeliveryView(BaseModel):
    object: Literal["delivery"] = "delivery"
    id: uuid.UUID
    event_type: str
    url: str
    state: str
    attempts: int
    job_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    next_attempt_at: datetime | None
    last_status_code: int | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[DeliveryAttemptView]


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryView]
    next_page_token: str
