"""The service commands from the outside: `timemark apikey create`, `timemark worker` argument checks."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from core.security import authenticate

CLI = [sys.executable, "-c", "from timemark.cli import main; main()"]


def _env(service_env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIMEMARK_")}
    return {**base, **service_env}


def test_apikey_create_prints_a_working_key_once(service_env: dict[str, str], session_factory: Any) -> None:
    result = subprocess.run(
        [*CLI, "apikey", "create", "--tenant", "cli-tenant"],
        env=_env(service_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("tm_") and "\n" not in key
    with session_factory() as session:
        row = authenticate(session, key)
        assert row is not None and row.tenant.name == "cli-tenant"


def test_apikey_create_refuses_an_empty_tenant(service_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*CLI, "apikey", "create", "--tenant", "  "],
        env=_env(service_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "tenant" in result.stderr


def test_worker_refuses_unknown_queues(service_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*CLI, "worker", "--queues", "cpu,fast"],
        env=_env(service_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "queues must be cpu and/or gpu" in result.stderr
