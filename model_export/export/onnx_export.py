"""torch -> ONNX export with the pitfalls of this model guarded by checks, not hopes.

Uses the torch.export-based exporter (``dynamo=True``): it traces symbolic sizes, so batch and
sequence lengths stay dynamic (the TorchScript exporter bakes the example's lengths into
``nn.MultiheadAttention`` reshapes). The checks below run on every exported file:

- every ONNX ``GRU`` node has ``linear_before_reset = 1`` (torch applies the reset gate after the
  hidden-state linear layer; ONNX's default 0 is a different recurrence);
- the dynamic axes really are symbolic in the graph's inputs and outputs;
- the ``nn.MultiheadAttention`` fast path is off while tracing (it is a fused inference kernel
  that only some inputs take, so tracing it would export a different computation);
- the written file is reproducible: the exporter's per-node Python stack traces (absolute source
  paths and line numbers) and any other doc string or metadata value naming a file path are removed
  (``strip_build_metadata``), so the same weights give the same bytes from any checkout or venv.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

TRDETR_INPUTS = ["src_txt", "src_txt_mask", "src_vid", "src_vid_mask"]
TRDETR_OUTPUTS = ["pred_logits", "pred_spans", "saliency_scores"]
# (name -> {axis: symbol}); inputs sharing a symbol must agree in size at run time.
TRDETR_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "src_txt": {0: "batch", 1: "text_tokens"},
    "src_txt_mask": {0: "batch", 1: "text_tokens"},
    "src_vid": {0: "batch", 1: "video_clips"},
    "src_vid_mask": {0: "batch", 1: "video_clips"},
    "pred_logits": {0: "batch"},
    "pred_spans": {0: "batch"},
    "saliency_scores": {0: "batch", 1: "video_clips"},
}
DEFAULT_OPSET = 18
# metadata keys the exporter fills with Python stack traces ("File \"/abs/path.py\", line N, in ...")
_STACK_TRACE_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})
# an absolute POSIX or Windows file path inside a metadata value; module paths such as "a.b.C/d: e.F"
# (the exporter's namespaces) have no slash at the start of a token, so they are kept
_FILE_PATH = re.compile(r'(?:^|[\s"\'(\[=])(?:/[\w.+~-]+/|[A-Za-z]:\\)')


class ExportError(RuntimeError):
    """The exported graph is wrong in a way a check found; the message names the check."""


class TRDETROutputs(nn.Module):
    """Wraps the TR-DETR model so the graph returns exactly the three served outputs.

    forward(src_txt (B, L_t, D_t), src_txt_mask (B, L_t), src_vid (B, L_v, D_v), src_vid_mask (B, L_v))
    -> pred_logits (B, Q, 2), pred_spans (B, Q, 2), saliency_scores (B, L_v).
    Auxiliary decoder outputs are dropped from the graph.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        src_txt: torch.Tensor,
        src_txt_mask: torch.Tensor,
        src_vid: torch.Tensor,
        src_vid_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(src_txt, src_txt_mask, src_vid, src_vid_mask)
        return out["pred_logits"], out["pred_spans"], out["saliency_scores"]


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Turn off torch's fused MultiheadAttention inference path for the duration of the block."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _clear_rnn_dispatch_caches() -> None:
    """Forget torch's cached kernels of the RNN ops before tracing (torch 2.13 bug workaround).

    For dynamic shapes torch.onnx swaps in a while-loop GRU/LSTM decomposition by assigning
    ``op.py_kernels`` directly, which does not invalidate ``op._dispatch_cache``. A second export in
    the same process then traces the cached per-step unrolled decomposition and silently bakes the
    example's sequence length into the graph (``dynamic_axis_problems`` catches it).
    """
    for op in (torch.ops.aten.gru.input, torch.ops.aten.lstm.input):
        cache = getattr(op, "_dispatch_cache", None)
        if cache is not None:
            cache.clear()


def _dynamic_shapes(
    input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]]
) -> tuple[dict[int, torch.export.Dim], ...]:
    """Per positional input, its dynamic axes: one ``torch.export.Dim`` per symbol, shared by name."""
    symbols: dict[str, torch.export.Dim] = {}
    return tuple(
        {
            axis: symbols.setdefault(sym, torch.export.Dim(sym))
            for axis, sym in dynamic_axes.get(name, {}).items()
        }
        for name in input_names
    )


def export_module(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export an eval-mode module to one self-contained ONNX file and check it.

    Args:
        module: torch module whose forward takes ``example_inputs`` positionally.
        example_inputs: tensors used for tracing; dynamic axes should be >= 2 and differ from each
            other so that no size is mistaken for a constant.
        path: output ``.onnx`` file (weights inside, no external data).
        input_names / output_names: graph I/O names, in forward order.
        dynamic_axes: name -> {axis: symbol} for inputs (traced as dynamic) and outputs; the checks
            require all of these axes to stay symbolic in the written graph.
        opset: ONNX default-domain opset.
    Returns:
        the exported ModelProto (as written).
    """
    module = module.eval()
    # torch.onnx logs that torchvision ops are not registered; this model uses none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    shapes = _dynamic_shapes(input_names, dynamic_axes)
    _clear_rnn_dispatch_caches()
    with (
        mha_fastpath_disabled(),
        torch.no_grad(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),  # the exporter and optimizer print progress lines
        contextlib.redirect_stderr(io.StringIO()),  # failures still surface as exceptions
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    model = onnx.load(str(path))
    strip_build_metadata(model)
    onnx.save(model, str(path))
    problems = gru_problems(model) + dynamic_axis_problems(model, dynamic_axes)
    if problems:
        raise ExportError(f"exported graph {path} failed its checks: " + "; ".join(problems))
    onnx.checker.check_model(model, full_check=True)
    return model


def _drop_path_metadata(props) -> int:
    """Remove the stack-trace entries and every entry whose value names a file path; returns how many."""
    kept = [
        (p.key, p.value) for p in props if p.key not in _STACK_TRACE_KEYS and not _FILE_PATH.search(p.value)
    ]
    removed = len(props) - len(kept)
    if removed:
        del props[:]
        for key, value in kept:
            props.add(key=key, value=value)
    return removed


def strip_build_metadata(model: onnx.ModelProto) -> int:
    """Remove what ties an ONNX model to the machine that wrote it, in place; returns entries removed.

    Clears every doc string (model, graphs, nodes, functions, I/O) and drops the metadata entries that
    hold a stack trace or a file path (the exporter records each node's Python stack: absolute source
    paths and line numbers). Module names and scopes (``namespace``, ``pkg.torch.onnx.name_scopes``)
    stay: they name the torch module a node came from and are the same everywhere. ``producer_name``
    and ``producer_version`` are the exporting library's name and version. Computation is unchanged.
    """
    removed = _drop_path_metadata(model.metadata_props)
    model.doc_string = ""
    graphs = [model.graph]
    for function in model.functions:
        function.doc_string = ""
        removed += _drop_path_metadata(function.metadata_props)
        removed += _strip_nodes(function.node, graphs)
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        removed += _drop_path_metadata(graph.metadata_props)
        removed += _strip_nodes(graph.node, graphs)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.doc_string = ""
            removed += _drop_path_metadata(value.metadata_props)
        for tensor in graph.initializer:
            tensor.doc_string = ""
            removed += _drop_path_metadata(tensor.metadata_props)
    return removed


def _strip_nodes(nodes, subgraphs: list[onnx.GraphProto]) -> int:
    """Clear the nodes' doc strings and path metadata; queue their subgraphs (If/Loop/Scan bodies)."""
    removed = 0
    for node in nodes:
        node.doc_string = ""
        removed += _drop_path_metadata(node.metadata_props)
        for attr in node.attribute:
            attr.doc_string = ""
            if attr.type == onnx.AttributeProto.GRAPH:
                subgraphs.append(attr.g)
            subgraphs.extend(attr.graphs)
    return removed


def strip_build_metadata_file(path: str | Path) -> int:
    """``strip_build_metadata`` on an ONNX file, rewritten in place; returns the entries removed."""
    model = onnx.load(str(path))
    removed = strip_build_metadata(model)
    onnx.save(model, str(path))
    return removed


def gru_problems(model: onnx.ModelProto) -> list[str]:
    """One message per ONNX GRU node whose ``linear_before_reset`` is not 1 (torch semantics)."""
    problems = []
    for node in all_nodes(model.graph):
        if node.op_type != "GRU":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("linear_before_reset", 0) != 1:
            problems.append(
                f"GRU node {node.name!r} has linear_before_reset={attrs.get('linear_before_reset', 0)}, "
                "torch.nn.GRU needs 1"
            )
    return problems


def dynamic_axis_problems(model: onnx.ModelProto, dynamic_axes: Mapping[str, Mapping[int, str]]) -> list[str]:
    """One message per axis that should be dynamic but has a fixed size in the graph's I/O."""
    problems = []
    values = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    for name, axes in dynamic_axes.items():
        if name not in values:
            problems.append(f"graph has no input or output named {name!r}")
            continue
        dims = values[name].type.tensor_type.shape.dim
        for axis in axes:
            if axis >= len(dims) or dims[axis].HasField("dim_value"):
                fixed = dims[axis].dim_value if axis < len(dims) else "missing"
                problems.append(f"{name} axis {axis} is fixed ({fixed}) instead of dynamic")
    return problems


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph, including those of subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)
            for sub in attr.graphs:
                yield from all_nodes(sub)


def example_trdetr_inputs(
    t_feat_dim: int, v_feat_dim: int, text_tokens: int = 7, video_clips: int = 13, batch: int = 2
) -> tuple[torch.Tensor, ...]:
    """Tracing inputs (src_txt, src_txt_mask, src_vid, src_vid_mask) with a padded second row.

    Sizes are >= 2 and distinct from each other and from the model's fixed dims, so the tracer
    cannot confuse a length with a constant; the padding exercises the mask paths.
    """
    generator = torch.Generator().manual_seed(0)
    src_txt = torch.randn(batch, text_tokens, t_feat_dim, generator=generator)
    src_vid = torch.randn(batch, video_clips, v_feat_dim, generator=generator)
    src_txt_mask = torch.ones(batch, text_tokens)
    src_vid_mask = torch.ones(batch, video_clips)
    src_txt_mask[1:, text_tokens // 2 :] = 0
    src_vid_mask[1:, video_clips // 2 :] = 0
    return src_txt * src_txt_mask[..., None], src_txt_mask, src_vid * src_vid_mask[..., None], src_vid_mask


def export_trdetr(
    model: nn.Module, t_feat_dim: int, v_feat_dim: int, path: str | Path, opset: int
) -> onnx.ModelProto:
    """Export a TR-DETR model (eval mode, CPU) to ``path`` with the served I/O contract."""
    return export_module(
        TRDETROutputs(model),
        example_trdetr_inputs(t_feat_dim, v_feat_dim),
        path,
        input_names=TRDETR_INPUTS,
        output_names=TRDETR_OUTPUTS,
        dynamic_axes=TRDETR_DYNAMIC_AXES,
        opset=opset,
    )


def store_exact_fp16_weights(path: str | Path, min_elements: int = 1024) -> int:
    """Store each float32 initializer whose values are all exact in fp16 as fp16 + a Cast to float32.

    Lossless: the graph computes in float32 on bit-identical weights (ONNX Runtime folds the Casts
    when the session starts), only the file shrinks. Real trained weights are rarely exact in fp16
    and stay as they are; the demo bundle's random weights are drawn on the fp16 grid for this.

    Args:
        path: ONNX file, rewritten in place when anything changes.
        min_elements: smaller initializers are left alone (not worth a node).
    Returns:
        number of initializers converted.
    """
    model = onnx.load(str(path))
    casts, converted = [], 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        values = onnx.numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue
        name = init.name
        init.CopyFrom(onnx.numpy_helper.from_array(half, f"{name}__fp16"))
        casts.append(
            onnx.helper.make_node(
                "Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}__to_fp32"
            )
        )
        converted += 1
    if converted:
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(casts + nodes)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return converted
