"""ONNX Runtime sessions: execution-provider choice, CPU thread counts, named inputs/outputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderError(RuntimeError):
    """The configured execution provider cannot be used (raised at start-up, never per request)."""


def requested_providers(device: Literal["auto", "cpu", "cuda"], available: list[str]) -> list[str]:
    """Providers to ask ONNX Runtime for, best first.

    ``auto`` asks for CUDA when this onnxruntime build has it, ``cuda`` insists on it and ``cpu``
    never uses it. The CPU EP is always last as the fallback for unsupported nodes.
    """
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise ProviderError(
            "TRDETR_DEVICE=cuda but this onnxruntime build has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}). Install the 'gpu' extra (onnxruntime-gpu) or set "
            "TRDETR_DEVICE=cpu/auto."
        )
    return [CPU]


def session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    """Explicit thread counts (0 intra-op threads = one per CPU core), full graph optimisation, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No busy-waiting between runs: the event loop and Redis I/O share these cores with ORT.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxModel:
    """One ``InferenceSession`` on the configured device; ``run`` is thread-safe (ORT guarantees it)."""

    def __init__(
        self,
        path: Path,
        *,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
    ) -> None:
        self.path = Path(path)
        wanted = requested_providers(device, ort.get_available_providers())
        options = session_options(intra_op_threads, inter_op_threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises plain RuntimeError/Fail for EP start-up problems
            if wanted == [CPU]:
                raise
            if device == "cuda":
                raise ProviderError(f"TRDETR_DEVICE=cuda but the CUDA EP cannot run {self.path.name}: {exc}") from exc
            log.warning("CUDA EP failed for %s (%s); running on the CPU", self.path.name, exc)
            self.session = ort.InferenceSession(str(self.path), options, providers=[CPU])
        self.providers: list[str] = self.session.get_providers()
        if wanted[0] == CUDA and CUDA not in self.providers:
            if device == "cuda":
                raise ProviderError(
                    f"TRDETR_DEVICE=cuda but ONNX Runtime could not start the CUDA EP for {self.path.name} "
                    "(no usable GPU, or CUDA/cuDNN libraries missing; see the onnxruntime log above). "
                    "Fix the GPU setup or set TRDETR_DEVICE=cpu/auto."
                )
            log.warning("CUDA EP is not usable for %s; running on the CPU", self.path.name)
        log.info("%s runs on %s", self.path.name, ", ".join(self.providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns every output by name."""
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))
