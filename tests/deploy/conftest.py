"""Fixtures for the deployment checks: rendered kustomize overlays and the settings' variable names.

deploy_support.py (beside this file, put on sys.path here) holds the plain helpers the test modules
import; the fixtures below cache the slow parts (rendering every overlay) for the session.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_support import K8S, OVERLAYS, render_kustomization  # noqa: E402


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay (and the base) rendered once per session."""
    assert OVERLAYS, "no kustomize overlays under deploy/k8s/overlays"
    renders = {name: render_kustomization(K8S / "overlays" / name) for name in OVERLAYS}
    renders["base"] = render_kustomization(K8S / "base")
    return renders


@pytest.fixture(scope="session")
def settings_env_names() -> set[str]:
    """`TIMEMARK_*` names the settings model reads (the only valid ones in manifests)."""
    from core.settings import Settings

    return {f"TIMEMARK_{name.upper()}" for name in Settings.model_fields}
