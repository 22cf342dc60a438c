"""No drift between the deployment files and ``service.settings.Settings``.

Every ``TRDETR_*`` / ``REDIS_URL`` variable that the Dockerfile, compose or Kubernetes sets must be the
environment name of a Settings field (a misspelt name would be ignored silently: the Settings
ignore unknown variables), and each file's values must pass the Settings' own validation.
"""

from __future__ import annotations

import re
from typing import Any

import dockerfile
import pytest
from deploy_helpers import DOCKER_DIR, compose_files, load_yaml
from pydantic import AliasChoices

from service.settings import Settings

SECRET_PLACEHOLDERS = {"TRDETR_API_KEYS": "key-one,key-two"}


def settings_env_names() -> set[str]:
    """The environment variable names Settings reads, computed from its fields."""
    prefix = Settings.model_config["env_prefix"]
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def _is_setting_like(name: str) -> bool:
    return name.startswith("TRDETR_") or name == "REDIS_URL"


def _compose_default(value: Any) -> str:
    """Compose interpolation with the fallback a bare ``docker compose up`` uses: ``${X:-d}`` -> ``d``."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


def compose_environments() -> dict[str, dict[str, str]]:
    found = {}
    for path in compose_files():
        for service_name, service in load_yaml(path)["services"].items():
            env = service.get("environment", {})
            if isinstance(env, list):
                env = dict(item.split("=", 1) for item in env)
            found[f"{path.name}:{service_name}"] = {k: _compose_default(v) for k, v in env.items()}
    return found


def k8s_environments(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """Per overlay: the api container's variables (ConfigMaps through envFrom, then env)."""
    found = {}
    for overlay, resources in rendered.items():
        configmaps = {r["metadata"]["name"]: r.get("data", {}) for r in resources if r["kind"] == "ConfigMap"}
        for workload in resources:
            for container in workload.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                env: dict[str, str] = {}
                for source in container.get("envFrom", []):
                    env.update(configmaps[source["configMapRef"]["name"]])
                for item in container.get("env", []):
                    env[item["name"]] = item.get("value", SECRET_PLACEHOLDERS.get(item["name"], ""))
                found[f"k8s/{overlay}:{workload['metadata']['name']}/{container['name']}"] = env
    return found


def dockerfile_environments() -> dict[str, dict[str, str]]:
    """Per stage of docker/Dockerfile: the ENV it sets (parents' ENV is checked with the parent)."""
    found: dict[str, dict[str, str]] = {}
    stage = "?"
    for command in dockerfile.parse_file(str(DOCKER_DIR / "Dockerfile")):
        if command.cmd == "FROM":
            stage = command.value[-1]
        elif command.cmd == "ENV":
            found.setdefault(f"Dockerfile:{stage}", {}).update(zip(command.value[::2], command.value[1::2], strict=True))
    return found


@pytest.fixture(scope="module")
def environments(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, str]]:
    return {**compose_environments(), **k8s_environments(rendered), **dockerfile_environments()}


def test_settings_env_names_include_the_unprefixed_redis_url() -> None:
    names = settings_env_names()
    assert "REDIS_URL" in names and "TRDETR_BUNDLE_DIR" in names and "TRDETR_API_KEYS" in names


def test_deployment_files_set_settings_at_all(environments: dict[str, dict[str, str]]) -> None:
    for source in ("docker-compose.yml:api", "k8s/cpu:trdetr/api", "k8s/gpu:trdetr/api", "Dockerfile:runtime-base"):
        assert any(_is_setting_like(name) for name in environments[source]), source


def unknown_variables(environments: dict[str, dict[str, str]]) -> list[str]:
    """``"source: NAME"`` for each setting-like variable that no Settings field reads."""
    known = settings_env_names()
    return [
        f"{source}: {name}" for source, env in environments.items() for name in env
        if _is_setting_like(name) and name not in known
    ]


def rejected_values(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Settings' validation error for these variables (alone in the environment), or None."""
    with monkeypatch.context() as patch:
        for name in settings_env_names():
            patch.delenv(name, raising=False)
        for name, value in env.items():
            if _is_setting_like(name):
                patch.setenv(name, value)
        try:
            Settings()
        except ValueError as error:
            return str(error)
    return None


def test_every_deployment_variable_is_a_settings_field(environments: dict[str, dict[str, str]]) -> None:
    unknown = unknown_variables(environments)
    assert not unknown, "not read by service.settings.Settings (typo or stale name?):\n" + "\n".join(unknown)


def test_a_misspelt_variable_is_reported() -> None:
    env = {"compose:api": {"TRDETR_MAX_BATCH": "8", "TRDETR_MAX_BATCH_SIZE": "8", "OTHER": "x"}}
    assert unknown_variables(env) == ["compose:api: TRDETR_MAX_BATCH"]


def test_deployment_values_pass_settings_validation(
    environments: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    problems = {source: rejected_values(env, monkeypatch) for source, env in environments.items()}
    assert not any(problems.values()), {source: p for source, p in problems.items() if p}


def test_an_invalid_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = rejected_values({"TRDETR_LOG_LEVEL": "verbose"}, monkeypatch)
    assert problem is not None and "log_level" in problem
