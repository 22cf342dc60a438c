"""docker/Dockerfile: lint, build inputs that exist and pass the ignore file, and the image contract.

No Docker engine in CI: these tests check statically what a ``docker build`` would trip over.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
from deploy_helpers import DOCKER_DIR, REPO, dockerfiles, tool

from service.settings import DEFAULT_BUNDLE_DIR

SERVICE_TARGETS = ("cpu", "gpu")
# What the service images copy from the repo; the service must not import the torch-side packages.
SERVICE_PACKAGES = ("service", "trdetr_common")
FIRST_PARTY = {"service", "trdetr_common", "model_export", "training"}
TORCH_SIDE = {"torch", "model_export", "training", "transformers", "onnx", "onnxscript"}
DEFAULT_BUNDLE = REPO / "service" / "default_bundle"


def _stages(path: Path) -> dict[str, list[dockerfile.Command]]:
    """Stage name (or index) -> its instructions, the ``FROM`` included."""
    stages: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            value = command.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else str(len(stages))
            current = stages.setdefault(name, [])
        current.append(command)
    return stages


def _arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            defaults[name] = default
    return defaults


def _copy_sources(path: Path) -> list[str]:
    """Build-context paths of every COPY/ADD without ``--from`` (ARG defaults substituted)."""
    args = _arg_defaults(path)
    sources = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd in ("COPY", "ADD") and not any(flag.startswith("--from") for flag in command.flags):
            for source in command.value[:-1]:
                sources.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), source))
    return sources


def _chain(stages: dict[str, list[dockerfile.Command]], target: str) -> list[dockerfile.Command]:
    """Instructions that apply to ``target``, its parent stages' first (``FROM <stage>`` inheritance)."""
    commands = stages[target]
    parent = commands[0].value[0]
    return (_chain(stages, parent) if parent in stages else []) + commands


def _last(commands: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [command for command in commands if command.cmd == cmd]
    assert found, f"no {cmd} instruction"
    return found[-1]


def _env(commands: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in commands:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def test_there_is_a_dockerfile_to_check() -> None:
    assert dockerfiles(), "no Dockerfile under docker/"


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_pass_hadolint(path: Path) -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"hadolint findings in {path.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint gate is live: an unpinned base image and pip install are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_copy_source_exists_in_the_repo(path: Path) -> None:
    missing = [source for source in _copy_sources(path) if not (REPO / source).exists()]
    if missing and not DEFAULT_BUNDLE.exists() and all(m.startswith("service/default_bundle") for m in missing):
        pytest.skip("service/default_bundle/ (the service's demo bundle) is not in the repo yet; "
                    "the service images cannot be built until it is")
    assert not missing, f"{path.name} copies paths that are not in the repo: {missing}"


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    excluded = False
    parts = path.strip("/").split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern.strip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            excluded = not negate
    return excluded


def _ignore_patterns(path: Path) -> list[str]:
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} missing: the build would send .venv and .git to the builder"
    lines = (line.strip() for line in ignore.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_copy_sources_are_not_dockerignored(path: Path) -> None:
    patterns = _ignore_patterns(path)
    ignored = [source for source in _copy_sources(path) if _dockerignore_excludes(patterns, source)]
    assert not ignored, f"{path.name} copies paths its .dockerignore excludes: {ignored}"


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_build_context_leaves_out_the_heavy_local_state(path: Path) -> None:
    patterns = _ignore_patterns(path)
    for heavy in (".venv/lib", ".git/objects", "runs/x", "tests/service/conftest.py", "service/__pycache__/x.pyc"):
        assert _dockerignore_excludes(patterns, heavy), f"{heavy} would be sent to the builder"


def test_dockerignore_matcher_follows_dockers_last_match_rule() -> None:
    patterns = ["*", "!service/", "**/__pycache__"]
    assert _dockerignore_excludes(patterns, "README.md")
    assert not _dockerignore_excludes(patterns, "service/app.py")
    assert _dockerignore_excludes(patterns, "service/__pycache__/app.cpython-311.pyc")


def test_the_baked_bundle_is_the_default_bundle_and_the_one_the_service_loads() -> None:
    stages = _stages(DOCKER_DIR / "Dockerfile")
    bundle_copy = _last(stages["bundle"], "COPY")
    assert (REPO / bundle_copy.value[0]).resolve() == DEFAULT_BUNDLE_DIR.resolve(), "not the Settings default"
    for target in SERVICE_TARGETS:
        commands = _chain(stages, target)
        from_bundle = [c for c in commands if c.cmd == "COPY" and "--from=bundle" in c.flags]
        assert len(from_bundle) == 1, f"{target} must copy the bundle stage exactly once"
        destination = from_bundle[0].value[-1].rstrip("/")
        assert _env(commands)["TRDETR_BUNDLE_DIR"] == destination


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_service_images_run_trdetr_serve_as_non_root_with_a_healthcheck(target: str) -> None:
    commands = _chain(_stages(DOCKER_DIR / "Dockerfile"), target)
    user = _last(commands, "USER").value[0].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root USER (lets k8s verify runAsNonRoot)"
    healthcheck = " ".join(_last(commands, "HEALTHCHECK").value)
    assert "/healthz" in healthcheck
    assert _last(commands, "CMD").value == ("trdetr-serve",)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "trdetr-serve" in scripts
    env = _env(commands)
    assert env["TRDETR_HOST"] == "0.0.0.0", "uvicorn must listen beyond the container's loopback"
    assert int(env["TRDETR_GRACEFUL_SHUTDOWN_S"]) > 0


def test_gpu_image_uses_the_cuda_provider_and_finds_the_nvidia_wheels() -> None:
    commands = _chain(_stages(DOCKER_DIR / "Dockerfile"), "gpu")
    env = _env(commands)
    assert env["TRDETR_DEVICE"] == "cuda"
    assert "/opt/venv/nvidia/cu13/lib" in env["LD_LIBRARY_PATH"].split(":")
    assert "/opt/venv/nvidia/cudnn/lib" in env["LD_LIBRARY_PATH"].split(":")


def _imported_top_level(package: str) -> dict[str, set[str]]:
    """Top-level module name -> the files of ``package`` that import it (absolute imports only)."""
    imported: dict[str, set[str]] = {}
    for source in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                imported.setdefault(name.split(".")[0], set()).add(str(source.relative_to(REPO)))
    return imported


def _copied_packages(target: str) -> set[str]:
    commands = _chain(_stages(DOCKER_DIR / "Dockerfile"), target)
    copies = [c for c in commands if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)]
    return {source.strip("/") for c in copies for source in c.value[:-1]} & FIRST_PARTY


@pytest.mark.parametrize("package", SERVICE_PACKAGES)
def test_packages_in_the_service_images_never_import_torch_side_code(package: str) -> None:
    """The service images copy only these packages (and no torch): an import of torch-side code breaks them."""
    imported = _imported_top_level(package)
    offenders = {name: files for name, files in imported.items() if name in TORCH_SIDE}
    assert not offenders, offenders


@pytest.mark.parametrize("target", ["build-cpu", "build-gpu", "export"])
def test_each_image_copies_the_first_party_packages_its_code_imports(target: str) -> None:
    copied = _copied_packages(target)
    for package in copied:
        missing = {name: files for name, files in _imported_top_level(package).items()
                   if name in FIRST_PARTY - copied}
        assert not missing, f"{target} copies {package}, which imports packages the image lacks: {missing}"


def test_export_image_pins_the_cpu_build_of_torch() -> None:
    commands = _stages(DOCKER_DIR / "Dockerfile")["export"]
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "torch==2.13.0" in runs and "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert _last(commands, "ENTRYPOINT").value == ("trdetr-export",)


def test_the_service_images_hold_every_package_the_api_and_the_workers_import() -> None:
    """A first-party package the service or ``trdetr-worker`` imports but the image does not copy would only
    fail when the container starts."""
    first_party = sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file())
    code = ("import sys, service.app, service.cli, ingestion.cli\n"
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({first_party!r}))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert {"service", "ingestion", "extraction", "trdetr_common"} <= set(imported)
    copied = {source.rstrip("/") for source in _copy_sources(DOCKER_DIR / "Dockerfile")}
    allowed = (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    for package in imported:
        assert package in copied, f"docker/Dockerfile does not COPY {package}/"
        assert f"!{package}/" in allowed, f"docker/Dockerfile.dockerignore does not let {package}/ through"
