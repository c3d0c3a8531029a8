"""Helpers shared by the deployment checks (tests/deploy): paths, tools, rendering, imports of deploy/ scripts.

Everything is offline. The tools come from the `dev` extra (kubectl with its built-in kustomize,
hadolint, check-jsonschema); a missing tool fails the test with the install command rather than
skipping, because a skipped deployment check would read as a passed one.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(
    path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").exists()
)


def tool(name: str) -> str:
    """Path of a command-line tool from the venv's `dev` extra (else PATH); fails with how to install."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def load_deploy_module(name: str) -> ModuleType:
    """Import `deploy/<name>.py` (deploy/ is scripts, not a package; `name` may be `docker/worker_control`)."""
    if str(DEPLOY) not in sys.path:
        sys.path.insert(0, str(DEPLOY))
    path = DEPLOY / f"{name}.py"
    spec = importlib.util.spec_from_file_location("deploy_" + name.replace("/", "_"), path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def render_kustomization(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <path>` parsed into a list of resources."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kustomize failed for {path}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]
