"""fp32 ONNX graph -> fp16 weights/compute, with fp32 inputs/outputs and sensitive ops kept fp32.

Kept in fp32 (on top of onnxruntime's default block list of non-numeric ops):
- ``LayerNormalization``: variance of 256-d activations loses too much in fp16;
- ``Softmax``: attention and class probabilities; the MR2HD top-1 query is an argmax over them;
- ``Log``: the decoder's inverse sigmoid ``log(x / (1 - x))`` blows up near 0 and 1;
- ``GRU``: a recurrence that accumulates error over every clip;
- ``ReduceMean`` / ``Pow`` / ``Sqrt`` / ``Erf``: the pieces of a decomposed LayerNorm or GELU, if
  an exporter ever emits them unfused.
The parity gates (top-1 moment, span IoU, saliency rank correlation) decide whether this is enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

FP32_OPS = ("LayerNormalization", "Softmax", "Log", "GRU", "ReduceMean", "Pow", "Sqrt", "Erf")


def convert_to_fp16(
    src: str | Path,
    dst: str | Path,
    *,
    keep_fp32_ops: Sequence[str] = FP32_OPS,
    keep_fp32_nodes: Sequence[str] = (),
) -> list[str]:
    """Write an fp16 copy of ``src`` to ``dst`` whose graph inputs and outputs stay float32.

    Args:
        src: fp32 ONNX file.
        dst: fp16 ONNX file to write.
        keep_fp32_ops: op types computed in fp32 (added to onnxruntime's default block list).
        keep_fp32_nodes: node names computed in fp32 as well.
    Returns:
        the sorted op types kept in fp32 (for the manifest).
    """
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    model = onnx.load(str(src))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=blocked, node_block_list=list(keep_fp32_nodes)
    )
    # The converter appends the input Casts at the end of the node list; restore topological order.
    OnnxModel(converted).topological_sort()
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return sorted(keep_fp32_ops)
