"""The published OpenAPI document says what the API really answers: problem documents for every error.

FastAPI documents its own `422 HTTPValidationError` (`{"detail": [...]}`), which this API never sends.
`install_openapi` replaces it, on every operation, with `4XX` and `5XX` responses of media type
`application/problem+json` and one `Problem` schema, so that schema-checking clients and fuzzers
(schemathesis, issue 9) validate errors against what actually comes back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """RFC 9457 problem details; extension members (e.g. `errors`, `retry_after`, `stage`) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a stable URI naming the kind of problem")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


ERROR_RESPONSES = {
    "4XX": "The request cannot be served as sent: an RFC 9457 problem document",
    "5XX": "A dependency is down (503, with Retry-After) or the server failed: an RFC 9457 problem document",
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Problem"] = Problem.model_json_schema()
    problem_content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code, description in ERROR_RESPONSES.items():
                responses[code] = {"description": description, "content": problem_content}
    app.openapi_schema = schema
    return schema


def install_openapi(app: FastAPI) -> None:
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
