"""Every knob of the timemark service, read from the environment (prefix `TIMEMARK_`) in one place.

DESIGN §1: only this module reads environment variables; everything else receives a `Settings`
object. Embedded mode (`TIMEMARK_EMBEDDED=1`, DESIGN §4) fills in SQLite, a kombu SQLAlchemy
transport and a local storage folder under `data_dir`; outside embedded mode the default secret is
refused so that a forgotten variable can never ship a known key. List-valued settings are JSON in
the environment, e.g. `TIMEMARK_URL_ALLOW_CIDRS='["127.0.0.0/8"]'`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "change-me-in-production"
# Standard Webhooks' example schedule: 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (~75 h).
DEFAULT_WEBHOOK_SCHEDULE_S = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


class Settings(BaseSettings):
    """The service configuration; frozen so no code path can change it behind another's back."""

    model_config = SettingsConfigDict(env_prefix="TIMEMARK_", extra="ignore", frozen=True)

    # --- mode and places -------------------------------------------------------------------------
    embedded: bool = False
    data_dir: Path = Path(".timemark")
    database_url: str | None = None  # None: SQLite under data_dir (embedded) or local PostgreSQL
    broker_url: str | None = None  # None: kombu SQLAlchemy transport (embedded) or local Redis
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=20, ge=0, le=500)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)

    # --- object storage: "s3://bucket/prefix" or "file:///abs/folder" -----------------------------
    storage_url: str | None = None  # None: file://{data_dir}/objects (embedded) or s3://timemark
    s3_endpoint_url: str | None = None  # e.g. a MinIO or moto server; None means AWS
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    presigned_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)

    # --- secrets ---------------------------------------------------------------------------------
    # Keys page tokens (AES-GCM) and anything else the server signs; must be set outside embedded mode.
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)

    # --- engine, for workers ---------------------------------------------------------------------
    engine_kind: Literal["native", "openai", "sglang"] = "native"
    engine_checkpoint: str | None = None
    engine_device: str = "cpu"
    engine_dtype: Literal["float32", "bfloat16", "float16"] | None = (
        None  # default: bf16 on CUDA, fp32 on CPU
    )
    engine_attn_impl: Literal["dense", "reference", "triton"] = "reference"
    engine_moe_impl: Literal["reference", "triton"] = "reference"
    engine_quantize: Literal["none", "fp8"] = "none"  # fp8: expert weights in FP8 (half their memory)
    # the indexer's Hadamard + e4m3 rounding: keys scored, selected and cached (e4m3 + scale) as the official server does
    engine_index_fp8: bool = False
    engine_tp: int = Field(default=1, ge=1, le=8)  # tensor parallelism: processes (GPUs) per engine
    engine_max_batch: int = Field(default=8, ge=1)
    engine_cuda_graphs: bool = True  # native engine on CUDA: decode steps replayed from a captured graph
    engine_base_url: str | None = None  # openai engine
    engine_model: str | None = None  # openai engine
    engine_api_key: SecretStr | None = None  # openai engine
    engine_timeout_s: float = Field(default=300.0, gt=0)

    # --- sampling defaults (the Keye-VL-2.0 server's names and values, spec §4.2) ----------------
    sampling_fps: float = Field(default=2.0, gt=0, le=30)
    sampling_min_pixels: int = Field(default=50_176, ge=784)
    sampling_max_pixels: int = Field(default=200_704, ge=784)
    sampling_video_total_pixels: int = Field(default=144_506_880, ge=784)
    sampling_min_frames: int = Field(default=2, ge=1)
    sampling_max_frames: int | None = Field(default=None, ge=1)
    chunk_overlap_s: float = Field(default=4.0, ge=0)
    default_strategy: Literal["chunked", "coarse_to_fine"] = "chunked"
    grounding_top_k: int = Field(default=5, ge=1, le=100)

    # --- quotas and limits -----------------------------------------------------------------------
    tenant_max_active_jobs: int = Field(default=1000, ge=1)  # non-terminal jobs; above it: 429
    quota_retry_after_s: int = Field(default=30, ge=1)
    quota_count_ttl_s: float = Field(
        default=1.0, ge=0
    )  # an API process recounts a tenant's active jobs this often
    unavailable_retry_after_s: int = Field(default=5, ge=1)
    max_queries_per_job: int = Field(default=32, ge=1)
    max_query_chars: int = Field(default=1000, ge=1)
    max_metadata_bytes: int = Field(default=16_384, ge=2)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # JSON request bodies
    max_upload_bytes: int = Field(default=4 * 1024**3, ge=1)
    upload_chunk_bytes: int = Field(default=8 * 1024**2, ge=5 * 1024**2)  # S3 multipart part size
    page_size_default: int = Field(default=50, ge=1)
    page_size_max: int = Field(default=1000, ge=1)
    page_token_ttl_s: int = Field(default=3 * 86400, ge=60)
    idempotency_ttl_s: int = Field(default=86400, ge=60)  # published in the API docs
    batch_max_objects: int = Field(default=10_000, ge=1)

    # --- workers ---------------------------------------------------------------------------------
    chunk_max_attempts: int = Field(default=3, ge=1)
    job_max_attempts: int = Field(default=3, ge=1)
    task_soft_time_limit_s: int = Field(default=600, ge=1)
    task_time_limit_s: int = Field(default=720, ge=1)
    visibility_timeout_s: int = Field(default=3600, ge=60)
    sweep_interval_s: float = Field(default=30.0, gt=0)
    queued_stale_after_s: float = Field(default=60.0, gt=0)  # a queued job older than this is re-enqueued
    probe_timeout_s: float = Field(default=30.0, gt=0)

    # --- webhooks --------------------------------------------------------------------------------
    webhook_retry_schedule_s: tuple[float, ...] = DEFAULT_WEBHOOK_SCHEDULE_S
    webhook_jitter_fraction: float = Field(default=0.1, ge=0, le=1)
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=60)
    webhook_max_response_bytes: int = Field(default=4096, ge=0)

    # --- outbound URL guard (SSRF) ---------------------------------------------------------------
    # By default only public addresses over http(s) may be fetched or called back. Networks listed
    # here (CIDR) and host names listed here are allowed anyway; the tests allow 127.0.0.0/8.
    url_allowed_schemes: tuple[str, ...] = ("https", "http")
    url_allow_cidrs: tuple[str, ...] = ()
    url_allow_hosts: tuple[str, ...] = ()
    url_max_redirects: int = Field(default=5, ge=0, le=20)

    # --- api -------------------------------------------------------------------------------------
    api_threads: int = Field(default=16, ge=1, le=400)  # route worker threads per API process
    auth_cache_ttl_s: float = Field(default=10.0, ge=0)  # a revoked key keeps working this long at most
    public_base_url: str | None = None  # for absolute Location headers behind a proxy
    log_level: str = "INFO"

    @field_validator("url_allow_cidrs")
    @classmethod
    def _cidrs_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError on garbage
        return value

    @field_validator("url_allowed_schemes", "url_allow_hosts")
    @classmethod
    def _lowercase(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(item.lower() for item in value)

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("s3://", "file://")):
            raise ValueError("storage_url must start with s3:// or file://")
        return value

    @model_validator(mode="after")
    def _fill_defaults_and_refuse_default_secrets(self) -> Settings:
        data_dir = self.data_dir.resolve()
        # Frozen model: defaults are filled through object.__setattr__ during validation only.
        if self.database_url is None:
            url = (
                f"sqlite:///{data_dir / 'timemark.db'}"
                if self.embedded
                else "postgresql+psycopg://postgres@127.0.0.1:5432/timemark"
            )
            object.__setattr__(self, "database_url", url)
        if self.broker_url is None:
            url = f"sqla+sqlite:///{data_dir / 'broker.db'}" if self.embedded else "redis://127.0.0.1:6379/0"
            object.__setattr__(self, "broker_url", url)
        if self.storage_url is None:
            url = f"file://{data_dir / 'objects'}" if self.embedded else "s3://timemark"
            object.__setattr__(self, "storage_url", url)
        if not self.embedded and self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
            raise ValueError("TIMEMARK_SECRET_KEY must be set to a random value outside embedded mode")
        if len(self.secret_key.get_secret_value()) < 16 and not self.embedded:
            raise ValueError("TIMEMARK_SECRET_KEY must be at least 16 characters")
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        if self.sampling_min_pixels > self.sampling_max_pixels:
            raise ValueError("sampling_min_pixels must not exceed sampling_max_pixels")
        if not self.webhook_retry_schedule_s:
            raise ValueError("webhook_retry_schedule_s needs at least one attempt")
        return self

    @property
    def sampling_defaults(self) -> dict[str, float | int | None]:
        """Sampling knobs with the Keye server's names, as a job stores them when the client omits them."""
        return {
            "fps": self.sampling_fps,
            "min_pixels": self.sampling_min_pixels,
            "max_pixels": self.sampling_max_pixels,
            "video_total_pixels": self.sampling_video_total_pixels,
            "min_frames": self.sampling_min_frames,
            "max_frames": self.sampling_max_frames,
        }

    @property
    def is_sqlite(self) -> bool:
        return str(self.database_url).startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment (tests build `Settings(...)` directly)."""
    return Settings()
