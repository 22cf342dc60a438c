"""The model traces to ONNX with dynamic batch and lengths (legacy TorchScript exporter, dynamo=False)
and ONNX Runtime then equals torch at lengths other than the traced ones."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from .conftest import perturbed_model, random_inputs, tiny_config

INPUTS = ["src_txt", "src_txt_mask", "src_vid", "src_vid_mask"]
OUTPUTS = ["pred_logits", "pred_spans", "saliency_scores", "aux_spans"]


class _TupleOutputs(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src_txt, src_txt_mask, src_vid, src_vid_mask):
        out = self.model(src_txt, src_txt_mask, src_vid, src_vid_mask)
        aux_spans = torch.stack([a["pred_spans"] for a in out["aux_outputs"]], dim=1)
        return out["pred_logits"], out["pred_spans"], out["saliency_scores"], aux_spans


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = tiny_config(enc_layers=1, dec_layers=2)
    wrapper = _TupleOutputs(perturbed_model(config, seed=5)).eval()
    path = tmp_path_factory.mktemp("onnx") / "trdetr.onnx"
    dynamic = {"src_txt": {0: "batch", 1: "L_t"}, "src_txt_mask": {0: "batch", 1: "L_t"},
               "src_vid": {0: "batch", 1: "L_v"}, "src_vid_mask": {0: "batch", 1: "L_v"},
               "pred_logits": {0: "batch"}, "pred_spans": {0: "batch"},
               "saliency_scores": {0: "batch", 1: "L_v"}, "aux_spans": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, random_inputs(config, [(12, 5), (7, 3)]), str(path), dynamo=False,
                          opset_version=17, input_names=INPUTS, output_names=OUTPUTS, dynamic_axes=dynamic)
    return wrapper, config, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_ort_equals_torch(wrapper, config, session, lengths) -> None:
    """ORT and torch give the same outputs (atol 1e-4) on random inputs of the given (clips, tokens)."""
    inputs = random_inputs(config, lengths, seed=11)
    with torch.no_grad():
        expected = wrapper(*inputs)
    got = session.run(OUTPUTS, {name: t.numpy() for name, t in zip(INPUTS, inputs, strict=True)})
    for name, want, have in zip(OUTPUTS, expected, got, strict=True):
        np.testing.assert_allclose(have, want.numpy(), rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("lengths", [[(30, 9), (4, 1), (17, 2)], [(1, 1)], [(150, 20)]],
                         ids=["batch3-mixed", "one-clip-one-token", "150-clips"])
def test_onnx_runtime_equals_torch_at_untraced_shapes(exported, lengths):
    _assert_ort_equals_torch(*exported, lengths)


@pytest.mark.slow
def test_dynamo_exporter_also_handles_dynamic_shapes(tmp_path):
    """torch 2.13's dynamo exporter works too (about 40 s to export; the legacy one takes about 2 s)."""
    config = tiny_config(enc_layers=1, dec_layers=2)
    wrapper = _TupleOutputs(perturbed_model(config, seed=5)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    l_t, l_v = torch.export.Dim("L_t", min=1, max=64), torch.export.Dim("L_v", min=1, max=1024)
    shapes = ({0: batch, 1: l_t}, {0: batch, 1: l_t}, {0: batch, 1: l_v}, {0: batch, 1: l_v})
    path = tmp_path / "trdetr_dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, random_inputs(config, [(12, 5), (7, 3)]), str(path), dynamo=True,
                          input_names=INPUTS, output_names=OUTPUTS, dynamic_shapes=shapes, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for lengths in ([(30, 9), (4, 1), (17, 2)], [(1, 1)]):
        _assert_ort_equals_torch(wrapper, config, session, lengths)
