"""docker-compose.yml (+ the GPU override): valid per the compose specification, and a working stack.

The schema is the compose-spec JSON schema vendored in check-jsonschema (``vendor.compose-spec``),
so this runs offline.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import dockerfile
import pytest
from deploy_helpers import BASE_COMPOSE, REPO, compose_files, tool

Compose = dict[str, dict[str, Any]]


def _check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else env


def _duration_s(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


def test_compose_matches_spec() -> None:
    result = _check_jsonschema(*compose_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    image: 3\n    restart: sometimes\n")
    result = _check_jsonschema(bad)
    assert result.returncode != 0 and "image" in result.stdout


def test_there_is_a_gpu_override(compose: Compose) -> None:
    assert "docker-compose.gpu.yml" in compose


def test_api_waits_for_a_healthy_redis(compose: Compose) -> None:
    services = compose[BASE_COMPOSE.name]["services"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert _environment(services["api"])["REDIS_URL"].startswith("redis://redis:")


def test_redis_is_the_official_image_as_a_bounded_lru_cache(compose: Compose) -> None:
    redis = compose[BASE_COMPOSE.name]["services"]["redis"]
    assert redis["image"].startswith("redis:") and "bitnami" not in redis["image"]
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in command
    assert redis["deploy"]["resources"]["limits"]["memory"]


def test_api_is_published_on_localhost_with_the_cpu_image(compose: Compose) -> None:
    api = compose[BASE_COMPOSE.name]["services"]["api"]
    assert any(port.startswith("127.0.0.1:") and port.endswith(":8000") for port in api["ports"])
    assert api["build"]["target"] == "cpu"
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]


def test_stop_grace_period_outlasts_uvicorns_drain(compose: Compose) -> None:
    api = compose[BASE_COMPOSE.name]["services"]["api"]
    assert _duration_s(api["stop_grace_period"]) > float(_environment(api)["TRDETR_GRACEFUL_SHUTDOWN_S"])


def test_gpu_override_reserves_an_nvidia_gpu_for_the_gpu_image(compose: Compose) -> None:
    api = compose["docker-compose.gpu.yml"]["services"]["api"]
    assert api["build"]["target"] == "gpu"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert _environment(api)["TRDETR_DEVICE"] == "cuda"


@pytest.mark.parametrize("name", [path.name for path in compose_files()])
def test_build_targets_are_stages_of_the_dockerfile(compose: Compose, name: str) -> None:
    base_build = compose[BASE_COMPOSE.name]["services"]["api"]["build"]
    for service in compose[name]["services"].values():
        if "build" not in service:
            continue
        build = {**base_build, **service["build"]}
        path = REPO / build["context"] / build["dockerfile"]
        stages = {c.value[2] for c in dockerfile.parse_file(str(path)) if c.cmd == "FROM" and len(c.value) == 3}
        assert build["target"] in stages


# --- ingestion: workers, the job queue's Redis, the shared upload store ------------------------


def test_worker_runs_the_api_image_with_the_worker_command(compose: Compose) -> None:
    services = compose[BASE_COMPOSE.name]["services"]
    worker, api = services["worker"], services["api"]
    assert worker["image"] == api["image"] and worker["build"] == api["build"]
    assert worker["command"] == ["trdetr-worker"]
    assert _environment(api)["TRDETR_INPROCESS_WORKER"] == "false", "the worker service does the extraction"
    gpu = compose["docker-compose.gpu.yml"]["services"]["worker"]
    assert gpu["build"]["target"] == "gpu" and _environment(gpu)["TRDETR_DEVICE"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_api_and_worker_share_the_upload_store_and_the_queue(compose: Compose) -> None:
    services = compose[BASE_COMPOSE.name]["services"]
    worker, api = services["worker"], services["api"]
    for name in ("REDIS_URL", "TRDETR_JOBS_REDIS_URL", "TRDETR_INGEST_DIR"):
        assert _environment(worker)[name] == _environment(api)[name], name
    ingest_dir = _environment(api)["TRDETR_INGEST_DIR"]
    mounts = {service: {v.split(":")[1]: v.split(":")[0] for v in services[service]["volumes"]}
              for service in ("api", "worker")}
    assert mounts["api"][ingest_dir] == mounts["worker"][ingest_dir] in compose[BASE_COMPOSE.name]["volumes"]
    assert _duration_s(worker["stop_grace_period"]) > float(_environment(worker)["TRDETR_GRACEFUL_SHUTDOWN_S"])


def test_the_job_queue_redis_persists_and_never_evicts(compose: Compose) -> None:
    services = compose[BASE_COMPOSE.name]["services"]
    jobs = services["redis-jobs"]
    command = jobs["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") for volume in jobs["volumes"])
    assert _environment(services["api"])["TRDETR_JOBS_REDIS_URL"].startswith("redis://redis-jobs:")
