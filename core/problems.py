"""RFC 9457 problem documents with stable `type` URIs, for API errors and for a failed job's `error`.

Every error a client can see is one of the `ProblemKind`s below: the slug in the `type` URI never
changes once published, titles are short and generic, and the `detail` says what was wrong with
*this* request (never dependency internals: those go to the log, per the VSS lesson in the spec).
`Problem` is the exception the API raises; `job_error` builds the same shape for `Job.error`, with the
`stage` that failed and whether a retry could help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBLEM_BASE_URI = "https://timemark.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemKind:
    slug: str
    title: str
    status: int

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE_URI + self.slug


class Kinds:
    """The published problem types (slugs are part of the API: never rename one)."""

    VALIDATION = ProblemKind("validation-error", "The request is not valid", 422)
    MALFORMED_JSON = ProblemKind("malformed-json", "The request body is not valid JSON", 400)
    INVALID_UTF8 = ProblemKind("invalid-utf8", "The request is not valid UTF-8", 400)
    BAD_REQUEST = ProblemKind("bad-request", "The request is malformed", 400)
    UNSUPPORTED_MEDIA_TYPE = ProblemKind("unsupported-media-type", "Unsupported content type", 415)
    PAYLOAD_TOO_LARGE = ProblemKind("payload-too-large", "The request body is too large", 413)
    UNAUTHORIZED = ProblemKind("unauthorized", "Missing or invalid API key", 401)
    NOT_FOUND = ProblemKind("not-found", "Not found", 404)
    METHOD_NOT_ALLOWED = ProblemKind("method-not-allowed", "Method not allowed", 405)
    NOT_ACCEPTABLE = ProblemKind("not-acceptable", "Not acceptable", 406)
    IDEMPOTENCY_KEY_INVALID = ProblemKind("idempotency-key-invalid", "Malformed Idempotency-Key header", 400)
    IDEMPOTENCY_KEY_REUSED = ProblemKind(
        "idempotency-key-reused", "Idempotency-Key was already used with a different request", 422
    )
    IDEMPOTENCY_IN_PROGRESS = ProblemKind(
        "idempotency-in-progress", "A request with this Idempotency-Key is still being processed", 409
    )
    BAD_PAGE_TOKEN = ProblemKind("bad-page-token", "The page token is invalid or expired", 400)
    UNSAFE_URL = ProblemKind("unsafe-url", "The URL is not allowed", 422)
    SOURCE_NOT_FOUND = ProblemKind("source-not-found", "The video source does not exist", 422)
    SOURCE_NOT_VIDEO = ProblemKind("source-not-video", "The object is not a video", 422)
    JOB_NOT_CANCELABLE = ProblemKind("job-not-cancelable", "The job has already finished", 409)
    JOB_NOT_TERMINAL = ProblemKind("job-not-terminal", "Only finished jobs can be deleted", 409)
    DELIVERY_NOT_REDELIVERABLE = ProblemKind("delivery-in-progress", "The delivery is still pending", 409)
    QUOTA_EXCEEDED = ProblemKind("quota-exceeded", "Too many active jobs for this tenant", 429)
    SERVICE_UNAVAILABLE = ProblemKind("service-unavailable", "A dependency is unavailable; retry later", 503)
    INTERNAL = ProblemKind("internal-error", "Internal server error", 500)


class Problem(Exception):
    """An error the API turns into an `application/problem+json` response."""

    def __init__(
        self,
        kind: ProblemKind,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or kind.title)
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        return problem_document(self.kind, self.detail, instance=instance, **self.extensions)


def problem_document(
    kind: ProblemKind, detail: str | None = None, *, instance: str | None = None, **extensions: Any
) -> dict[str, Any]:
    """The JSON body: `type`, `title`, `status`, optional `detail` and `instance`, then extensions."""
    body: dict[str, Any] = {"type": kind.type_uri, "title": kind.title, "status": kind.status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return body


def job_error(
    code: str, detail: str, *, stage: str, retryable: bool = False, title: str | None = None
) -> dict:
    """A failed job's `error`: a problem document whose type names the failure (e.g. `no-video-stream`).

    `code` is a stable slug such as `model_runtime.video.VideoError.code`; `stage` is where the job
    stopped (`probe`, `infer`, `finalize`); `detail` is a one-line message fit for the client.
    """
    return {
        "type": PROBLEM_BASE_URI + code,
        "title": title or code.replace("-", " ").capitalize(),
        "status": 422 if not retryable else 503,
        "detail": detail,
        "stage": stage,
        "retryable": retryable,
    }
