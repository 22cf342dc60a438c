"""fp32 ONNX graph -> int8 graph for CPU inference (``model.int8.onnx``), with its calibration inputs.

What is quantized: only the weight matrix products (``MatMul`` / ``Gemm`` nodes whose second input is
an initializer, i.e. every ``nn.Linear`` and the attention in/out projections): per-output-channel
symmetric int8 weights. The activation-by-activation products of attention (Q·Kᵀ, P·V), LayerNorm,
Softmax, the GRU, PReLU and the decoder's inverse sigmoid stay float32: they are a small share of the
FLOPs, and even the weight-only selection already moves the MR2HD top-1 pick on some confident rows (README
"Benchmarks": the gate decides per model whether the graph may be written).

Two modes (``trdetr-export --int8 [--int8-mode static|dynamic]``):
- ``static`` (QDQ, ``onnxruntime.quantization.quantize_static``): activation scales from calibration
  batches run through the fp32 graph (MinMax); ONNX Runtime fuses DQ→MatMul→Q into integer kernels.
- ``dynamic`` (``quantize_dynamic``): activation scales computed per run (``DynamicQuantizeLinear`` +
  ``MatMulInteger``), no calibration; the fallback when the static graph fails the gate.

Calibration inputs follow the model's preprocessing contract: rows of a real feature dataset when one is
given (``--int8-data``; a quarter of its rows, the rest are gated) and seeded random batches built through
``trdetr_common.features`` (per-group L2 normalisation, TEF, padding) at the lengths the service sees.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from .cases import Arrays, Case

INT8_FILE = "model.int8.onnx"
Int8Mode = Literal["static", "dynamic"]
QUANTIZED_OP_TYPES = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Info:
    """What the quantizer did (recorded in the manifest)."""

    mode: Int8Mode
    quantized_nodes: int
    calibration_batches: int

    def describe(self) -> str:
        calibration = f", {self.calibration_batches} calibration batches" if self.mode == "static" else ""
        return (f"{self.mode} int8: {self.quantized_nodes} weight MatMul/Gemm nodes with per-channel int8 weights"
                f"{calibration}; attention products, LayerNorm, Softmax, GRU, PReLU kept float32")


class _BatchReader(CalibrationDataReader):
    """Feeds a fixed list of named input batches to the calibrator, once each."""

    def __init__(self, batches: Sequence[Arrays], input_names: Sequence[str]) -> None:
        self._batches = [{name: np.ascontiguousarray(b[name], dtype=np.float32) for name in input_names}
                         for b in batches]
        self._iter: Iterator[Arrays] = iter(self._batches)

    def get_next(self) -> Arrays | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def named_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every unnamed node given a unique name (the quantizer selects nodes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the top-level MatMul/Gemm nodes whose second input (the weight) is an initializer."""
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES and n.input[1] in weights]


def calibration_batches(cases: Sequence[Case], max_rows: int = 256) -> list[Arrays]:
    """Split ``cases`` into batches of one row each (trimmed to the row's own lengths), at most ``max_rows``.

    One row per batch: padding rows would show the calibrator zero activations that the service never
    computes with, and single rows are what the service's batch-1 path runs.
    """
    batches: list[Arrays] = []
    for case in cases:
        for row, (clips, tokens) in enumerate(zip(case.video_lengths, case.text_lengths, strict=True)):
            if len(batches) >= max_rows:
                return batches
            batches.append({
                "src_txt": case.inputs["src_txt"][row : row + 1, :tokens],
                "src_txt_mask": case.inputs["src_txt_mask"][row : row + 1, :tokens],
                "src_vid": case.inputs["src_vid"][row : row + 1, :clips],
                "src_vid_mask": case.inputs["src_vid_mask"][row : row + 1, :clips],
            })
    return batches


def quantize_int8(
    src: str | Path, dst: str | Path, calibration: Sequence[Arrays], *, mode: Int8Mode = "static"
) -> Int8Info:
    """Write an int8 copy of the fp32 TR-DETR graph ``src`` to ``dst`` (same inputs and outputs, float32).

    Args:
        src: fp32 ONNX file (weights as plain float32 initializers).
        dst: int8 ONNX file to write.
        calibration: named input batches (src_txt (1, L_t, D_t), src_txt_mask, src_vid (1, L_v, D_v),
            src_vid_mask) for the static mode's activation ranges; ignored by the dynamic mode.
        mode: "static" (QDQ, calibrated) or "dynamic".
    Returns:
        Int8Info for the manifest.
    """
    model = named_graph(onnx.load(str(src)))
    nodes = weight_matmuls(model)
    if not nodes:
        raise ValueError(f"{src} has no MatMul/Gemm node with a weight initializer: nothing to quantize")
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        if mode == "static":
            if not calibration:
                raise ValueError("static int8 quantization needs calibration batches")
            reader = _BatchReader(calibration, [i.name for i in model.graph.input])
            quantize_static(
                str(named), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_quantize=nodes,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        elif mode == "dynamic":
            quantize_dynamic(
                str(named), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_quantize=nodes,
            )
        else:
            raise ValueError(f"int8 mode {mode!r}: use 'static' or 'dynamic'")
    onnx.checker.check_model(str(dst))
    return Int8Info(mode=mode, quantized_nodes=len(nodes),
                    calibration_batches=len(calibration) if mode == "static" else 0)


CALIBRATION_EVERY = 4  # dataset rows 0, 4, 8, ... calibrate; the others are gated


def dataset_cases(config, max_rows: int, *, calibration: bool) -> list[Case]:
    """Rows of a QVHighlights-format feature dataset (``training.dataset.DatasetConfig``) as batch-1 Cases.

    Args:
        config: annotation jsonl + video/text feature folders, read with the model's preprocessing.
        max_rows: most rows returned.
        calibration: True: every ``CALIBRATION_EVERY``-th row (for the calibrator); False: the other rows
            (for the gate), so the gate never sees a row the scales were fitted on.
    """
    from training.dataset import QVHighlightsDataset

    dataset = QVHighlightsDataset(config)
    cases = []
    for index in range(len(dataset)):
        if len(cases) >= max_rows:
            break
        if (index % CALIBRATION_EVERY == 0) != calibration:
            continue
        item = dataset[index]
        video, text = item["video"][None], item["text"][None]
        inputs = {"src_txt": text, "src_txt_mask": np.ones(text.shape[:2], np.float32),
                  "src_vid": video, "src_vid_mask": np.ones(video.shape[:2], np.float32)}
        cases.append(Case(f"data-{item['meta']['qid']}", inputs, notes=["dataset row"]))
    return cases


class _SessionBackend:
    """An ONNX Runtime session as a ``training.predict.Backend`` (the benchmark's prediction path)."""

    def __init__(self, runner, video_dim: int, text_dim: int, clip_length: float, window: int) -> None:
        self.runner, self.video_dim, self.text_dim = runner, video_dim, text_dim
        self.clip_length, self.window = clip_length, window

    def __call__(self, inputs: Arrays) -> Arrays:
        return self.runner({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})


def r1_at_05(runner, config, *, video_dim: int, text_dim: int, clip_length: float, window: int) -> tuple[float, int]:
    """Moment-retrieval R1@0.5 (0-100) of a graph on the gate rows of a labelled dataset (every row but the
    calibration rows of :func:`dataset_cases`), and the number of queries.

    Predictions go through ``training.predict`` (official post-processing, windowing of long videos) and are
    scored by ``training.evaluation`` exactly as ``trdetr-predict`` + ``trdetr-eval`` do.
    """
    from training.dataset import QVHighlightsDataset, read_jsonl
    from training.evaluation import evaluate
    from training.predict import predict

    records = [r for i, r in enumerate(read_jsonl(config.annotation_path)) if i % CALIBRATION_EVERY]
    backend = _SessionBackend(runner, video_dim, text_dim, clip_length, window)
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "gate_rows.jsonl"
        subset.write_text("".join(json.dumps(r) + "\n" for r in records))
        dataset = QVHighlightsDataset(dataclasses.replace(config, annotation_path=subset))
        predictions = predict(backend, dataset, batch_size=32, progress=False)
    qids = {p["qid"] for p in predictions}
    annotations = [a for a in records if a["qid"] in qids]
    return float(evaluate(predictions, annotations)["brief"]["MR-full-R1@0.5"]), len(predictions)
