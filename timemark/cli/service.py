"""`timemark` commands: service group."""

from __future__ import annotations

from timemark.cli import app  # noqa: F401
