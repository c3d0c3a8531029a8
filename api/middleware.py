"""Two pure-ASGI middlewares: the request-body guard and Prometheus request metrics.

`BodyGuard` reads JSON bodies before any route sees them: it refuses bodies over `max_body_bytes`
while they stream in (413, even when Content-Length lies), non-JSON content types (415), invalid
UTF-8 and unpaired surrogates (400 `invalid-utf8`), unparsable or absurdly nested JSON (400
`malformed-json`) and NUL characters anywhere in the request (PostgreSQL text cannot hold them), then
replays the body to the app. Streaming endpoints (uploads) pass through and enforce their own limit.
`RequestMetrics` counts requests and times them per route template (never per raw path).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from core.problems import PROBLEM_CONTENT_TYPE, Kinds, ProblemKind, problem_document

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def send_problem(send: Send, kind: ProblemKind, detail: str, path: str) -> None:
    body = json.dumps(problem_document(kind, detail, instance=path)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": kind.status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, streaming_paths: frozenset[str]) -> None:
        self.app, self.max_body_bytes, self.streaming_paths = app, max_body_bytes, streaming_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            # No database column can hold a NUL character; refuse it at the door.
            await send_problem(send, Kinds.BAD_REQUEST, "NUL characters are not allowed in URLs", path)
            return
        if scope["method"] not in BODY_METHODS or path in self.streaming_paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            kind = Kinds.PAYLOAD_TOO_LARGE if declared.isdigit() else Kinds.BAD_REQUEST
            await send_problem(send, kind, f"request bodies are limited to {self.max_body_bytes} bytes", path)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            piece = message.get("body", b"")
            size += len(piece)
            if size > self.max_body_bytes:
                await send_problem(
                    send,
                    Kinds.PAYLOAD_TOO_LARGE,
                    f"request bodies are limited to {self.max_body_bytes} bytes",
                    path,
                )
                return
            chunks.append(piece)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            problem = self._check_json(body, headers.get("content-type", ""))
            if problem is not None:
                await send_problem(send, problem[0], problem[1], path)
                return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _check_json(body: bytes, content_type: str) -> tuple[ProblemKind, str] | None:
        if not _is_json(content_type):
            return Kinds.UNSUPPORTED_MEDIA_TYPE, "request bodies must be application/json"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return Kinds.INVALID_UTF8, f"invalid UTF-8 at byte {err.start}"
        if "\\u0000" in text:
            return Kinds.VALIDATION, "NUL characters (\\u0000) are not allowed in JSON strings"
        try:
            parsed = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            return Kinds.MALFORMED_JSON, "JSON is nested too deeply"
        except ValueError as err:
            return Kinds.MALFORMED_JSON, f"invalid JSON: {str(err)[:120]}"
        try:
            # "\ud800" escapes decode to lone surrogates, which no database column can store.
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return Kinds.INVALID_UTF8, "JSON strings contain unpaired UTF-16 surrogates"
        except RecursionError:
            return Kinds.MALFORMED_JSON, "JSON is nested too deeply"
        return None


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON (RFC 8259), and PostgreSQL's json type refuses them.
    raise ValueError(f"{name} is not valid JSON")


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestMetrics:
    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "timemark_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "timemark_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.requests.labels(scope["method"], template, str(status)).inc()
            self.latency.labels(scope["method"], template).observe(time.perf_counter() - started)
