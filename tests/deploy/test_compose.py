"""deploy/compose.yaml: valid against the Compose Specification schema, and wired the way README says.

No Docker engine or compose plugin runs on this machine, so `docker compose config` is attempted only
where the plugin exists (skipped otherwise, saying so). The schema check uses the compose-spec JSON
schema vendored in check-jsonschema, on the raw file and again after `${VAR}` interpolation with the
values of `.env.example` (compose's rules: `$$` escapes, `:-` default, `:?` required-and-non-empty).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, REPO_ROOT, tool

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
PROFILES = ("native", "split", "sglang-tp2")


class MissingVariableError(KeyError):
    """A `${VAR:?message}` whose variable is unset or empty: compose refuses to start."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style substitution in every string of a parsed compose file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg, current = match.group("op"), match.group("arg") or "", env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise MissingVariableError(f"{name}: {arg}")
        return current or ""

    return VARIABLE.sub(substitute, value)


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def test_env_example_names_every_variable_and_ships_no_secret() -> None:
    env = read_env_file(ENV_EXAMPLE)
    text = COMPOSE.read_text()
    used = {m.group("braced") or m.group("bare") for m in VARIABLE.finditer(text) if m.group(0) != "$$"}
    assert used <= set(env), f"compose uses variables .env.example does not document: {used - set(env)}"
    required = set(re.findall(r"\$\{([A-Z_0-9]+):\?", text))
    for secret in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "TIMEMARK_SECRET_KEY"):
        assert secret in required, f"{secret} must be required (`:?`), never defaulted"
        assert env[secret] == "", f".env.example must not ship a value for {secret}"
    with pytest.raises(MissingVariableError, match="POSTGRES_PASSWORD"):
        interpolate(yaml.safe_load(text), env)  # as shipped, compose refuses to start without secrets


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    env = read_env_file(ENV_EXAMPLE)
    env.update(POSTGRES_PASSWORD="pg-test", REDIS_PASSWORD="redis-test", MINIO_ROOT_PASSWORD="minio-test")
    env["TIMEMARK_SECRET_KEY"] = "a-test-secret-of-enough-length"
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any], tmp_path: Path) -> None:
    raw = check_compose_schema(COMPOSE)
    assert raw.returncode == 0, raw.stdout + raw.stderr
    resolved = tmp_path / "compose.resolved.yaml"
    resolved.write_text(yaml.safe_dump(compose))
    result = check_compose_schema(resolved)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_an_unknown_service_key(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["api"]["depends"] = ["postgres"]  # the key is depends_on
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose_schema(path).returncode != 0


def enabled(services: dict[str, Any], profile: str) -> dict[str, Any]:
    return {
        name: svc for name, svc in services.items() if not svc.get("profiles") or profile in svc["profiles"]
    }


def queues_consumed(service: dict[str, Any]) -> set[str]:
    command = service.get("command") or []
    if isinstance(command, str) or "worker" not in command:
        return set()
    return set(command[command.index("--queues") + 1].split(","))


@pytest.mark.parametrize("profile", PROFILES)
def test_each_layout_starts_in_order_with_one_consumer_per_queue(
    compose: dict[str, Any], profile: str
) -> None:
    services = enabled(compose["services"], profile)
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on {target}, which profile {profile} does not start"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck for {name} to wait on"
            if condition["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot step"
    consumers = {
        queue: [n for n, s in services.items() if queue in queues_consumed(s)] for queue in ("cpu", "gpu")
    }
    assert len(consumers["cpu"]) == 1 and len(consumers["gpu"]) == 1, consumers
    assert "migrate" in services["api"]["depends_on"]


def test_redis_never_evicts_and_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"


@pytest.mark.parametrize(("profile", "gpus"), [("native", 1), ("split", 1), ("sglang-tp2", 2)])
def test_gpu_reservations_per_layout(compose: dict[str, Any], profile: str, gpus: int) -> None:
    reserved = 0
    for service in enabled(compose["services"], profile).values():
        for device in (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        ):
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
            reserved += len(device["device_ids"])
    assert reserved == gpus


def test_images_are_built_here_or_pinned_and_env_names_are_settings(
    compose: dict[str, Any], settings_env_names
) -> None:
    built = {svc["image"] for svc in compose["services"].values() if "build" in svc}
    for name, service in compose["services"].items():
        if "build" in service:
            assert (REPO_ROOT / service["build"]["dockerfile"]).exists(), name
        elif service["image"] not in built:
            tag = service["image"].rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"
        for key in service.get("environment") or {}:
            if key.startswith("TIMEMARK_"):
                assert key in settings_env_names, f"{name}: {key} is not a core.settings field"


def test_docker_compose_config_where_the_plugin_exists(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = (
        subprocess.run([docker, "compose", "version"], capture_output=True, check=False) if docker else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("no `docker compose` plugin on this machine; the schema checks above stand in for it")
    env = read_env_file(ENV_EXAMPLE)
    env.update(
        POSTGRES_PASSWORD="x", REDIS_PASSWORD="x", MINIO_ROOT_PASSWORD="x", TIMEMARK_SECRET_KEY="x" * 32
    )
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    command = [docker, "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
