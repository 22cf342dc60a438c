"""Dependency list of the GPU image: the project's dependencies with onnxruntime-gpu instead of onnxruntime.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` both install the ``onnxruntime`` module, so installing
them side by side leaves whichever was unpacked last. The GPU image therefore installs this list and
then the project itself with ``--no-deps``. Standard library only (runs in the bare build stage).

Usage::

    python gpu_requirements.py pyproject.toml > requirements-gpu.txt
    python gpu_requirements.py --extras s3 pyproject.toml   # plus the s3 extra's requirements
    python gpu_requirements.py --check-installed   # after installing: fail unless the GPU build is usable

The check also loads the CUDA/cuDNN libraries that onnxruntime's CUDA provider needs by soname: the
NVIDIA wheels put them in site-packages/nvidia/*/lib, which the dynamic loader only searches through
LD_LIBRARY_PATH (set in the GPU image). Loading them needs no GPU and no driver.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

CPU_DIST = "onnxruntime"
GPU_DIST = "onnxruntime-gpu"
GPU_EXTRA = "gpu"
# Shared libraries the CUDA execution provider of onnxruntime-gpu (CUDA 13 build) links or dlopens.
CUDA_SONAMES = (
    "libcudart.so.13",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudnn.so.9",
)


def requirement_name(requirement: str) -> str:
    """Normalised distribution name of a PEP 508 requirement string (``"onnxruntime>=1.20"`` -> ``"onnxruntime"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def gpu_requirements(pyproject: dict) -> list[str]:
    """The project's dependencies with the CPU onnxruntime replaced by the ``gpu`` extra's requirements."""
    project = pyproject["project"]
    extra = project.get("optional-dependencies", {}).get(GPU_EXTRA)
    if not extra or not any(requirement_name(req) == GPU_DIST for req in extra):
        raise ValueError(f"pyproject.toml has no [{GPU_EXTRA}] extra requiring {GPU_DIST}")
    if not any(requirement_name(req) == CPU_DIST for req in project["dependencies"]):
        raise ValueError(f"{CPU_DIST} is not a core dependency any more: update docker/gpu_requirements.py")
    kept = [req for req in project["dependencies"] if requirement_name(req) != CPU_DIST]
    return kept + list(extra)


def extra_requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The requirements of the named optional extras (e.g. ``s3``), in order."""
    optional = pyproject["project"].get("optional-dependencies", {})
    missing = [name for name in extras if name not in optional]
    if missing:
        raise ValueError(f"pyproject.toml has no extra(s) {missing}")
    return [req for name in extras for req in optional[name]]


def installed_onnxruntime_problems() -> list[str]:
    """Why the current environment is not a clean GPU install (empty list when it is)."""
    problems = []
    for dist, wanted in ((CPU_DIST, False), (GPU_DIST, True)):
        try:
            importlib.metadata.distribution(dist)
            present = True
        except importlib.metadata.PackageNotFoundError:
            present = False
        if present != wanted:
            problems.append(f"{dist} is {'missing' if wanted else 'installed and shadows the GPU build'}")
    if not problems:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            problems.append("onnxruntime has no CUDAExecutionProvider")
    return problems + unloadable_cuda_libraries()


def unloadable_cuda_libraries(sonames: tuple[str, ...] = CUDA_SONAMES) -> list[str]:
    """One message per CUDA/cuDNN library the dynamic loader cannot find (check LD_LIBRARY_PATH)."""
    problems = []
    for soname in sonames:
        try:
            ctypes.CDLL(soname)
        except OSError as error:
            problems.append(f"{soname} cannot be loaded ({error}); is LD_LIBRARY_PATH set to the nvidia wheels?")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--check-installed", action="store_true", help="verify the installed environment")
    parser.add_argument("--extras", nargs="*", default=[], help="also list these extras' requirements (default: none)")
    args = parser.parse_args(argv)
    if args.check_installed:
        problems = installed_onnxruntime_problems()
        for problem in problems:
            print(f"GPU image: {problem}", file=sys.stderr)
        return 1 if problems else 0
    with args.pyproject.open("rb") as handle:
        pyproject = tomllib.load(handle)
    print("\n".join(gpu_requirements(pyproject) + extra_requirements(pyproject, args.extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
