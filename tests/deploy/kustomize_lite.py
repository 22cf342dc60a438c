"""A small, strict renderer for the subset of Kustomize that ``k8s/`` uses (CI has no kubectl).

Supported ``kustomization.yaml`` fields: ``resources`` (files or directories with their own
kustomization), ``images`` (``newName``/``newTag``/``digest``) and ``patches`` with a ``target`` and an
RFC 6902 JSON patch (applied with the ``jsonpatch`` library, as ``kubectl apply -k`` would).
Any other field, or a strategic-merge patch, raises ``UnsupportedKustomization``: extending ``k8s/``
with a feature this renderer does not implement must fail the tests, not render silently wrong.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "images", "patches"}
TARGET_FIELDS = {"group", "version", "kind", "name"}

Resource = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: Path) -> list[Resource]:
    """All resources of the kustomization in ``directory``, with its images and patches applied."""
    config = _load_kustomization(directory)
    resources: list[Resource] = []
    for entry in config.get("resources", []):
        path = (directory / entry).resolve()
        resources.extend(render(path) if path.is_dir() else load_manifests(path))
    for image in config.get("images", []):
        set_image(resources, image)
    for patch in config.get("patches", []):
        apply_patch(resources, patch, directory)
    return resources


def load_manifests(path: Path) -> list[Resource]:
    """The YAML documents of one manifest file (empty documents dropped)."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / KUSTOMIZATION
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {KUSTOMIZATION}")
    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{path}: fields {sorted(unknown)} are not supported by kustomize_lite")
    return config


def set_image(resources: list[Resource], rule: dict[str, str]) -> None:
    """Kustomize's ``images`` transformer: rewrite every container image whose name is ``rule['name']``."""
    for resource in resources:
        pod_spec = _pod_spec(resource)
        if pod_spec is None:
            continue
        for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
            name, _ = _split_image(container["image"])
            if name != rule["name"]:
                continue
            new = rule.get("newName", name)
            if "digest" in rule:
                container["image"] = f"{new}@{rule['digest']}"
            else:
                tag = rule.get("newTag", _split_image(container["image"])[1])
                container["image"] = f"{new}:{tag}" if tag else new


def _split_image(image: str) -> tuple[str, str | None]:
    """``"registry:5000/app:1.2"`` -> ``("registry:5000/app", "1.2")``; digests are kept with the name."""
    if "@" in image:
        return image, None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, None


def _pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource.get("kind") == "Pod":
        return resource.get("spec")
    return resource.get("spec", {}).get("template", {}).get("spec")


def apply_patch(resources: list[Resource], patch: dict[str, Any], directory: Path) -> None:
    """Apply one ``patches`` entry (RFC 6902 operations) to every resource its ``target`` selects."""
    target = patch.get("target")
    if not target or set(target) - TARGET_FIELDS:
        raise UnsupportedKustomization(f"patch needs a target with only {sorted(TARGET_FIELDS)}: {patch}")
    operations = yaml.safe_load((directory / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(
        patch["patch"]
    )
    if not isinstance(operations, list):
        raise UnsupportedKustomization(f"only RFC 6902 (list of operations) patches are supported: {patch}")
    matched = [i for i, resource in enumerate(resources) if _selects(target, resource)]
    if not matched:
        raise ValueError(f"patch target {target} matches no resource")
    for index in matched:
        resources[index] = jsonpatch.apply_patch(copy.deepcopy(resources[index]), operations)


def _selects(target: dict[str, str], resource: Resource) -> bool:
    group, _, version = resource.get("apiVersion", "").rpartition("/")
    actual = {"group": group, "version": version, "kind": resource.get("kind"),
              "name": resource.get("metadata", {}).get("name")}
    return all(actual[key] == value for key, value in target.items())
