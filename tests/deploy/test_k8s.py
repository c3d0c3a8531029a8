"""Kubernetes manifests: every kustomize overlay renders, passes the API schemas, and says what we rely on.

Schemas: kubernetes-validate's bundled OpenAPI schemas in strict mode (unknown fields fail) for the
newest bundled version and for 1.31 (the oldest we claim: native sidecars and the preStop `sleep`
action need 1.30+). KEDA kinds are not in those schemas; they are checked against cloudcoil's
pydantic models generated from KEDA's CRDs, with a round trip that catches fields KEDA would drop.
The semantic checks pin down the drain-before-stop and autoscaling contract of issue 8.
"""

from __future__ import annotations

import base64
import copy
import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from cloudcoil.models.keda import v1alpha1 as keda
from deploy_support import OVERLAYS, find, load_deploy_module

KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
KEDA_MODELS = {"ScaledObject": keda.ScaledObject, "TriggerAuthentication": keda.TriggerAuthentication}
GPU_WORKER = "timemark-worker-gpu"


class KedaSchemaError(ValueError):
    """A KEDA resource that KEDA's CRD schema rejects or would silently prune."""


def validate_keda(doc: dict[str, Any]) -> None:
    """Validate against the CRD model; an unknown field is dropped by the model, so compare round trips."""
    model = KEDA_MODELS[doc["kind"]].model_validate(doc)
    round_trip = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    if round_trip != doc:
        raise KedaSchemaError(f"{doc['kind']}/{doc['metadata']['name']} has fields KEDA does not know")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod_spec(deployment)
    matches = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    assert len(matches) == 1, f"no single container {name!r}"
    return matches[0]


def all_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return spec["containers"] + spec.get("initContainers", [])


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_passes_the_kubernetes_schemas_strictly(rendered, overlay: str, version: str) -> None:
    checked = 0
    for doc in rendered[overlay]:
        if doc["apiVersion"].startswith("keda.sh/"):
            validate_keda(doc)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 15


def test_overlays_exist_for_the_two_documented_layouts() -> None:
    assert {"single-gpu", "h800-tp2"} <= set(OVERLAYS)


def test_strict_schema_check_rejects_a_misspelled_field(rendered) -> None:
    deployment = copy.deepcopy(find(rendered["single-gpu"], "Deployment", GPU_WORKER))
    pod_spec(deployment)["terminationGracePeriod"] = 900  # the real field ends in "Seconds"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_keda_check_rejects_a_field_keda_would_drop(rendered) -> None:
    scaled = copy.deepcopy(find(rendered["single-gpu"], "ScaledObject", GPU_WORKER))
    scaled["spec"]["coolDownPeriod"] = 60  # KEDA's field is cooldownPeriod
    with pytest.raises(KedaSchemaError):
        validate_keda(scaled)
    scaled = copy.deepcopy(find(rendered["single-gpu"], "ScaledObject", GPU_WORKER))
    scaled["spec"]["minReplicaCount"] = "one"
    with pytest.raises(ValueError):
        validate_keda(scaled)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_worker_drains_before_it_stops(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    worker_deployment = find(docs, "Deployment", GPU_WORKER)
    worker = container(worker_deployment, "worker")
    command = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python", "/opt/timemark/worker_control.py", "drain"]
    assert command[command.index("--queue") + 1] == "gpu"
    drain_wait_s = float(command[command.index("--wait-s") + 1])
    config = next(
        doc
        for doc in docs
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("timemark-config")
    )
    hard_limit_s = float(config["data"]["TIMEMARK_TASK_TIME_LIMIT_S"])
    assert drain_wait_s > hard_limit_s, "the drain must outwait a chunk at its hard time limit"
    from core.queue import DEFAULT_SOFT_SHUTDOWN_S  # worker_soft_shutdown_timeout after SIGTERM

    grace_s = pod_spec(worker_deployment)["terminationGracePeriodSeconds"]
    assert grace_s >= drain_wait_s + DEFAULT_SOFT_SHUTDOWN_S + 30, "the kubelet would SIGKILL mid-shutdown"
    env = {item["name"]: item.get("value") for item in worker.get("env", [])}
    assert env.get("REMAP_SIGTERM") == "SIGQUIT", "SIGTERM must start Celery's soft shutdown, then requeue"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_are_requested_scheduled_and_tolerated(rendered, overlay: str) -> None:
    deployment = find(rendered[overlay], "Deployment", GPU_WORKER)
    spec = pod_spec(deployment)
    gpus = sum(
        int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) for c in all_containers(deployment)
    )
    assert gpus == {"single-gpu": 1, "h800-tp2": 2}.get(overlay, gpus) and gpus >= 1
    assert "nvidia.com/gpu.product" in spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])


def test_tp2_server_is_a_native_sidecar_with_two_gpus(rendered) -> None:
    deployment = find(rendered["h800-tp2"], "Deployment", GPU_WORKER)
    server = container(deployment, "keye-sglang")
    assert server["restartPolicy"] == "Always", "a native sidecar outlives the draining worker"
    assert server["image"] == "kwaikeye/kwai-keye-vl:keye_vl_v2_30b_a3b"
    assert server["command"][server["command"].index("--tp") + 1] == "2"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2
    worker = container(deployment, "worker")
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["TIMEMARK_ENGINE_KIND"] == "openai"
    port = server["ports"][0]["containerPort"]
    assert urlsplit(env["TIMEMARK_ENGINE_BASE_URL"]).port == port
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_the_gpu_list_and_on_tasks_in_flight(rendered, overlay: str) -> None:
    from core.queue import GPU_QUEUE

    docs = rendered[overlay]
    scaled = find(docs, "ScaledObject", GPU_WORKER)
    spec = scaled["spec"]
    find(docs, "Deployment", spec["scaleTargetRef"]["name"])
    triggers = {trigger["type"]: trigger for trigger in spec["triggers"]}
    assert set(triggers) == {"redis", "prometheus"}
    redis_trigger = triggers["redis"]
    assert redis_trigger["metadata"]["listName"] == GPU_QUEUE
    find(docs, "TriggerAuthentication", redis_trigger["authenticationRef"]["name"])
    # The trigger must read the list Celery writes: same Redis DB index as the broker URL.
    secret = next(
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("timemark-secrets")
    )
    broker_url = base64.b64decode(secret["data"]["TIMEMARK_BROKER_URL"]).decode()
    assert urlsplit(broker_url).path.strip("/") == redis_trigger["metadata"]["databaseIndex"]
    metrics = load_deploy_module("metrics_catalog")
    query = triggers["prometheus"]["metadata"]["query"]
    assert set(re.findall(r"timemark_[a-z_]+", query)) <= metrics.metric_names("api")
    assert "timemark_queue_inflight" in query
    # Never scale away a pod mid-chunk for lack of signal; scale down slower than a model load.
    assert spec["minReplicaCount"] >= 1
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 900
    assert spec["cooldownPeriod"] >= 900


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_every_deployment_has_a_disruption_budget(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    api = container(find(docs, "Deployment", "timemark-api"), "api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    budgets = {
        doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for doc in docs
        if doc["kind"] == "PodDisruptionBudget"
    }
    replicated = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Deployment"} - {"timemark-beat"}
    assert replicated <= budgets
    beat = find(docs, "Deployment", "timemark-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_as_a_job_and_pods_wait_for_them(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    job = find(docs, "Job", "timemark-migrate")
    assert container(job, "migrate")["command"] == ["/opt/timemark/prestart.sh", "upgrade"]
    for name in ("timemark-api", "timemark-worker-cpu", GPU_WORKER):
        waiter = container(find(docs, "Deployment", name), "wait-for-migrations")
        assert waiter["command"] == ["/opt/timemark/prestart.sh", "wait"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_and_env_names_are_real_settings(
    rendered, overlay: str, settings_env_names
) -> None:
    docs = rendered[overlay]
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    for doc in workloads(docs):
        spec = doc["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for item in all_containers(doc):
            for source in item.get("envFrom", []):
                kind, ref = (
                    ("ConfigMap", source["configMapRef"])
                    if "configMapRef" in source
                    else ("Secret", source["secretRef"])
                )
                assert (kind, ref["name"]) in names, (
                    f"{doc['metadata']['name']} refers to missing {kind} {ref['name']}"
                )
            for env in item.get("env", []):
                if env["name"].startswith("TIMEMARK_"):
                    assert env["name"] in settings_env_names, f"{env['name']} is not a core.settings field"
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"].startswith(
            ("timemark-config", "timemark-secrets")
        ):
            unknown = {key for key in doc.get("data", {}) if key not in settings_env_names}
            assert not unknown, f"{doc['metadata']['name']} sets {unknown}, which core.settings does not read"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_pinned_images(rendered, overlay: str) -> None:
    for doc in workloads(rendered[overlay]):
        spec = doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for item in all_containers(doc):
            assert item["securityContext"]["allowPrivilegeEscalation"] is False
            assert item["securityContext"]["capabilities"]["drop"] == ["ALL"]
            image = item["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{image} is not pinned"
