"""Cursor pagination with opaque, sealed page tokens (AIP-158).

A token holds the sort key of the last row served and a digest of the listing's filters, sealed with
AES-GCM (`core.security.seal_token`), so clients cannot read or forge it, and a token reused with other
filters is refused (`bad-page-token`). `page_size` is clamped to the maximum; zero or negative is 422
(FastAPI's bounds). An empty `next_page_token` is the only end-of-list signal.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.problems import Kinds, Problem
from core.security import BadToken, open_token, seal_token
from core.settings import Settings


def clamp_page_size(requested: int | None, settings: Settings) -> int:
    if requested is None:
        return settings.page_size_default
    return min(requested, settings.page_size_max)


def _filters_digest(listing: str, filters: dict[str, Any]) -> str:
    encoded = json.dumps([listing, filters], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]


def make_page_token(listing: str, filters: dict[str, Any], position: list[Any], settings: Settings) -> str:
    """A token resuming `listing` after `position` (JSON-safe sort-key values of the last row)."""
    return seal_token({"f": _filters_digest(listing, filters), "k": position}, settings)


def read_page_token(
    token: str | None, listing: str, filters: dict[str, Any], settings: Settings
) -> list[Any] | None:
    """The position a token resumes after, None for the first page; a `Problem` for a bad token."""
    if not token:
        return None
    try:
        payload = open_token(token, settings)
    except BadToken as err:
        raise Problem(Kinds.BAD_PAGE_TOKEN, str(err)) from err
    if payload.get("f") != _filters_digest(listing, filters) or not isinstance(payload.get("k"), list):
        raise Problem(Kinds.BAD_PAGE_TOKEN, "page token belongs to another listing or other filters")
    return payload["k"]
