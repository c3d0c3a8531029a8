"""`timemark serve-model`: the native engine behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from timemark.cli import app  # noqa: F401
