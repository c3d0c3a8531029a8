"""Every error leaves the API as an RFC 9457 `application/problem+json` document.

FastAPI's own validation, 404 and 405 answers are replaced; database and broker outages become 503 with
`Retry-After` (the client retries, nothing was half-written); anything unexpected is a 500 problem
whose detail names nothing internal (the traceback goes to the log only).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.poll import DatabaseUnavailable
from core.db import is_unavailable_error
from core.problems import PROBLEM_CONTENT_TYPE, Kinds, Problem, ProblemKind, problem_document
from core.queue import QueueUnavailableError
from core.storage import StorageError

log = logging.getLogger("timemark.api")

_STATUS_KINDS: dict[int, ProblemKind] = {
    400: Kinds.BAD_REQUEST,
    401: Kinds.UNAUTHORIZED,
    404: Kinds.NOT_FOUND,
    405: Kinds.METHOD_NOT_ALLOWED,
    406: Kinds.NOT_ACCEPTABLE,
    413: Kinds.PAYLOAD_TOO_LARGE,
    415: Kinds.UNSUPPORTED_MEDIA_TYPE,
}


def problem_response(
    kind: ProblemKind,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    return JSONResponse(
        problem_document(kind, detail, instance=instance, **extensions),
        status_code=kind.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def unavailable_response(request: Request, what: str) -> JSONResponse:
    retry_after = request.app.state.settings.unavailable_retry_after_s
    return problem_response(
        Kinds.SERVICE_UNAVAILABLE,
        f"the {what} is unavailable; retry later",
        instance=request.url.path,
        headers={"Retry-After": str(retry_after)},
        retry_after=retry_after,
    )


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return JSONResponse(
        exc.to_dict(instance=request.url.path),
        status_code=exc.kind.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=exc.headers,
    )


def _clean_error(error: dict[str, Any]) -> dict[str, Any]:
    # Never echo `input` back: it may be megabytes, or a secret the client sent by mistake.
    return {
        "loc": [str(p) for p in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": error.get("type"),
    }


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_clean_error(e) for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(Kinds.MALFORMED_JSON, instance=request.url.path)
    summary = "; ".join(f"{'.'.join(e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors[:5])
    return problem_response(Kinds.VALIDATION, summary, instance=request.url.path, errors=errors[:50])


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _STATUS_KINDS.get(exc.status_code) or ProblemKind(
        f"http-{exc.status_code}", "HTTP error", exc.status_code
    )
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != kind.title else None
    if exc.status_code in (404, 405):
        detail = None  # Starlette's "Not Found" text adds nothing
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; a resource here is
        # several routes (GET and DELETE /v1/jobs/{id}), so list every method its path allows.
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return problem_response(kind, detail, instance=request.url.path, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    # FastAPI wraps included routers, so walk the routers' own route lists (kept by create_app).
    for route in request.app.state.route_table:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _on_queue_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", exc)
    return unavailable_response(request, "job queue")


async def _on_poll_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return unavailable_response(request, "database")


async def _on_storage_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("object storage error: %s", exc)
    return unavailable_response(request, "object storage")


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DataError):  # a value the column type cannot hold slipped past validation
        log.warning(
            "database refused a value on %s %s: %s", request.method, request.url.path, type(exc).__name__
        )
        return problem_response(
            Kinds.VALIDATION, "a value in the request cannot be stored", instance=request.url.path
        )
    if is_unavailable_error(exc):
        log.warning("database unavailable: %s", type(exc).__name__)
        return unavailable_response(request, "database")
    log.exception("database error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(Kinds.INTERNAL, instance=request.url.path)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(Kinds.INTERNAL, instance=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(QueueUnavailableError, _on_queue_down)
    app.add_exception_handler(StorageError, _on_storage_error)
    app.add_exception_handler(SQLAlchemyError, _on_database_error)
    app.add_exception_handler(DatabaseUnavailable, _on_poll_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
