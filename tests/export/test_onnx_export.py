"""Exporter pitfalls, each guarded on a small real module with a GRU and multi-head attention:
torch GRU semantics (linear_before_reset), the MHA fast path, and lengths baked into the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from model_export.export.onnx_export import (
    dynamic_axis_problems,
    export_module,
    gru_problems,
    store_exact_fp16_weights,
)

NAMES = ["text", "text_mask", "video", "video_mask"]
AXES = {
    "text": {0: "batch", 1: "tokens"},
    "text_mask": {0: "batch", 1: "tokens"},
    "video": {0: "batch", 1: "clips"},
    "video_mask": {0: "batch", 1: "clips"},
    "scores": {0: "batch", 1: "clips"},
}
FASTPATH_SEEN: list[bool] = []  # the MHA fast-path flag at each forward (the exporter traces a copy)


class VideoTextToy(nn.Module):
    """Video clips attend to text tokens, then a GRU summarises the clips.

    forward(text (B, L_t, 8), text_mask (B, L_t), video (B, L_v, 8), video_mask (B, L_v))
    -> scores (B, L_v), summary (B, 8).
    """

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, text, text_mask, video, video_mask):
        FASTPATH_SEEN.append(torch.backends.mha.get_fastpath_enabled())
        attended, _ = self.attn(video, text, text, key_padding_mask=text_mask < 0.5)
        # Only the final state leaves the GRU: the exporter annotates the per-step output with the
        # traced length (a wrong declared shape that dynamic_axis_problems reports).
        _, last = self.gru(attended * video_mask[..., None])
        return (attended * last[0][:, None, :]).sum(-1), last[0]


def _inputs(batch: int, tokens: int, clips: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    text_mask, video_mask = torch.ones(batch, tokens), torch.ones(batch, clips)
    text_mask[1:, max(1, tokens // 2):] = 0  # padded rows keep >= 1 valid token
    video_mask[1:, max(1, clips // 2):] = 0
    return torch.randn(batch, tokens, 8, generator=g), text_mask, torch.randn(batch, clips, 8, generator=g), video_mask


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory) -> tuple[VideoTextToy, Path, onnx.ModelProto]:
    torch.manual_seed(0)
    module = VideoTextToy().eval()
    path = tmp_path_factory.mktemp("toy") / "toy.onnx"
    graph = export_module(module, _inputs(2, 7, 13), path, input_names=NAMES, output_names=["scores", "summary"],
                          dynamic_axes=AXES)
    return module, path, graph


def test_the_gru_is_exported_with_torch_reset_semantics(toy_export):
    _, _, graph = toy_export
    grus = [n for n in graph.graph.node if n.op_type == "GRU"]
    assert grus, "the toy's GRU should be one ONNX GRU node"
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in grus for a in n.attribute
               if a.name == "linear_before_reset")
    assert gru_problems(graph) == []


def test_a_gru_with_onnx_default_reset_semantics_is_reported(toy_export):
    _, _, graph = toy_export
    broken = onnx.ModelProto()
    broken.CopyFrom(graph)
    gru = next(n for n in broken.graph.node if n.op_type == "GRU")
    for attr in gru.attribute:
        if attr.name == "linear_before_reset":
            attr.i = 0
    assert len(gru_problems(broken)) == 1 and "linear_before_reset=0" in gru_problems(broken)[0]


def test_the_mha_fast_path_is_off_while_tracing_and_restored_after(toy_export):
    assert FASTPATH_SEEN and not FASTPATH_SEEN[0]  # the first forward is the export's trace
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("batch,tokens,clips", [(1, 1, 1), (1, 1, 150), (3, 32, 75), (4, 5, 2)])
def test_lengths_other_than_the_traced_ones_give_torch_outputs(toy_export, batch, tokens, clips):
    """Traced with (2, 7, 13): a baked-in length would fail or differ at every other size."""
    module, path, _ = toy_export
    inputs = _inputs(batch, tokens, clips, seed=batch + tokens + clips)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(NAMES, inputs, strict=True)})
    with torch.no_grad():
        want = module(*inputs)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


def test_a_second_export_in_the_same_process_keeps_lengths_dynamic(toy_export, tmp_path):
    """torch caches the GRU kernel of the first export; a second one must not bake in the length."""
    export_module(VideoTextToy().eval(), _inputs(2, 7, 13), tmp_path / "again.onnx", input_names=NAMES,
                  output_names=["scores", "summary"], dynamic_axes=AXES)  # raises ExportError if baked


def test_all_declared_dynamic_axes_are_symbolic_in_the_graph(toy_export):
    _, _, graph = toy_export
    assert dynamic_axis_problems(graph, AXES) == []


def test_a_fixed_axis_is_reported():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 5])
    graph = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                                          [x], [y]))
    problems = dynamic_axis_problems(graph, {"x": {0: "batch"}, "y": {0: "batch", 1: "clips"}})
    assert problems == ["x axis 0 is fixed (2) instead of dynamic", "y axis 1 is fixed (5) instead of dynamic"]


def test_fp16_exact_weights_are_stored_compactly_without_changing_outputs(tmp_path):
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    module[0].weight.data = module[0].weight.data.half().float()  # on the fp16 grid: stored as fp16
    path = tmp_path / "mlp.onnx"
    export_module(module, (torch.randn(2, 64),), path, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "batch"}})
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    size = path.stat().st_size
    assert store_exact_fp16_weights(path) == 1  # only the rounded weight is exact in fp16
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)
    assert path.stat().st_size < size - 64 * 64
