"""Fixtures for the deployment tests: the repo's Dockerfile, compose files and rendered k8s overlays.

These tests validate statically what CI cannot run (no Docker engine, no cluster): hadolint,
the compose specification's JSON schema, the Kubernetes OpenAPI schemas, and cross-checks between
the deployment files and the service's own code (settings names, routes, metric names).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_helpers import K8S_OVERLAYS, REPO, compose_files, kubectl, kustomize, load_yaml  # noqa: E402


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Overlay name (``cpu``/``gpu``) -> the resources ``kubectl kustomize`` renders for it."""
    if kubectl() is None:
        pytest.skip("kubectl is not installed (Debian package kubectl; .ci/run installs it): the k8s overlays "
                    "cannot be rendered with kustomize")
    return {overlay.name: kustomize(overlay) for overlay in K8S_OVERLAYS}


@pytest.fixture(scope="session")
def compose() -> dict[str, dict[str, Any]]:
    """Compose file name -> parsed content (the base file and every override file)."""
    return {path.name: load_yaml(path) for path in compose_files()}
