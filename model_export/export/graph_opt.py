"""Export-time rewrites of the fp32 TR-DETR graph: the same numbers from faster standard ONNX ops.

The rewrites use only default-domain ONNX ops, so the written ``model.onnx`` stays valid for every ONNX Runtime
version and execution provider; ONNX Runtime's own fusions (SkipLayerNormalization, FusedMatMul, ...) are left
to session creation (``ORT_ENABLE_ALL`` in ``service/inference/session.py``), where they match the running
version and provider. Why not ship an ORT-optimised file: README "Benchmarks" (the saved graph is only valid for
the ORT version and EP that wrote it and ran no faster than the plain graph optimised at load).

- ``PRelu`` with one learned slope (``nn.PReLU()``) -> ``LeakyRelu(alpha=slope)``: both compute ``x`` for
  ``x >= 0`` and ``slope * x`` otherwise, bit for bit, but ONNX Runtime runs PRelu through its generic
  broadcasting kernel (~10 ns per element on the benchmark machine, 8 nodes of (B, L_v, 1024)) and LeakyRelu
  through a vectorised one.

The fp32 parity gate (<= 1e-4 vs torch) runs on the rewritten graph like on any other ``model.onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_export import all_nodes


@dataclass(frozen=True)
class GraphOptInfo:
    """What :func:`optimise_graph` changed (recorded in the manifest)."""

    prelu_to_leaky_relu: int

    def describe(self) -> str:
        return f"{self.prelu_to_leaky_relu} scalar-slope PRelu -> LeakyRelu (exact)"


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the graph's initializers and ``Constant`` node outputs, by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def prelu_to_leaky_relu(model: onnx.ModelProto) -> int:
    """Replace, in place, every top-level ``PRelu`` whose slope is a one-element constant by ``LeakyRelu``.

    Returns the number of nodes replaced; PRelu nodes with per-channel slopes are left alone.
    """
    constants = _constant_values(model)
    replaced = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx"):
            continue
        slope = constants.get(node.input[1])
        if slope is None or slope.size != 1 or slope.dtype != np.float32:
            continue
        leaky = onnx.helper.make_node(
            "LeakyRelu",
            [node.input[0]],
            list(node.output),
            name=node.name or None,
            alpha=float(slope.reshape(-1)[0]),
        )
        model.graph.node[index].CopyFrom(leaky)
        replaced += 1
    return replaced


def optimise_graph(path: str | Path) -> GraphOptInfo:
    """Apply the rewrites to the ONNX file ``path`` in place (unused initializers removed) and check it."""
    model = onnx.load(str(path))
    info = GraphOptInfo(prelu_to_leaky_relu=prelu_to_leaky_relu(model))
    if info.prelu_to_leaky_relu:
        _drop_unused_initializers(model)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
    return info


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove top-level initializers no node (or subgraph) reads any more."""
    used = {name for node in all_nodes(model.graph) for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
