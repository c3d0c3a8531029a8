"""Assertions shared by the API tests."""

from __future__ import annotations

from typing import Any


def assert_problem(answer: Any, status: int, slug: str | None = None) -> dict:
    """The response is an RFC 9457 document with this status (and type slug)."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    body = answer.json()
    assert body["status"] == status and body["title"]
    assert body["type"].startswith("https://timemark.dev/problems/")
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body
