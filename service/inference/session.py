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


def cuda_provider_options(*, fp32: bool, cuda_graph: bool) -> dict[str, str]:
    """CUDA EP options: TF32 off for fp32 graphs, CUDA-graph capture when asked.

    TF32 (on by default in the CUDA EP on Ampere and later) rounds MatMul/Conv inputs to a 10-bit mantissa:
    the fp32 graph then differs from the CPU by ~1e-3, above the 1e-4 parity gate, so fp32 runs with
    ``use_tf32=0``. The fp16 graph computes its MatMuls in fp16 anyway and keeps the default.
    """
    options = {"use_tf32": "0"} if fp32 else {}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


class OnnxModel:
    """One ``InferenceSession`` on the configured device; ``run`` is thread-safe (ORT guarantees it).

    ``cuda_options``: CUDA EP provider options (:func:`cuda_provider_options`), ignored on the CPU. With
    ``enable_cuda_graph`` set, plain :meth:`run` calls pass ``gpu_graph_id=-1`` (no capture, no replay):
    graphs are captured and replayed only by :class:`service.inference.bound.BoundRunner`.
    """

    def __init__(
        self,
        path: Path,
        *,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        cuda_options: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        wanted = requested_providers(device, ort.get_available_providers())
        options = session_options(intra_op_threads, inter_op_threads)
        self.cuda_options = dict(cuda_options or {})
        graph_requested = self.cuda_options.get("enable_cuda_graph") == "1"
        providers: list[str | tuple[str, dict[str, str]]] = [
            (CUDA, self.cuda_options) if name == CUDA else name for name in wanted
        ]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises plain RuntimeError/Fail for EP start-up problems
            if wanted == [CPU]:
                raise
            if graph_requested:
                raise ProviderError(
                    f"TRDETR_CUDA_GRAPH=true but ONNX Runtime cannot capture {self.path.name} as a CUDA graph ({exc}); "
                    "every node must run on the CUDA EP. Set TRDETR_CUDA_GRAPH=false."
                ) from exc
            if device == "cuda":
                raise ProviderError(
                    f"TRDETR_DEVICE=cuda but the CUDA EP cannot run {self.path.name}: {exc}"
                ) from exc
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
        self.run_options = ort.RunOptions()
        if self.cuda_graph:
            self.run_options.add_run_config_entry("gpu_graph_id", "-1")

    @property
    def on_cuda(self) -> bool:
        """The session runs on the CUDA EP."""
        return CUDA in self.providers

    @property
    def cuda_graph(self) -> bool:
        """CUDA-graph capture was asked for (effective only :attr:`on_cuda`)."""
        return self.cuda_options.get("enable_cuda_graph") == "1" and self.on_cuda

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns every output by name."""
        outputs = self.session.run(self.output_names, feeds, self.run_options)
        return dict(zip(self.output_names, outputs, strict=True))
