"""Export-time graph rewrites (model_export.export.graph_opt): exact, and the rewritten graph passes the fp32 gate."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from model_export import build_model
from model_export.export.cases import InputSpec, random_cases
from model_export.export.checks import torch_runner
from model_export.export.graph_opt import optimise_graph, prelu_to_leaky_relu
from model_export.export.onnx_export import export_trdetr
from model_export.export.parity import Thresholds, fp32_gate, make_session, ort_runner

from .conftest import small_config

SPEC = InputSpec(video_group_dims=[20, 8], text_dim=16, use_tef=True, normalize_video=True, normalize_text=True,
                 max_text_tokens=32)


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _prelu_graph(slope: np.ndarray) -> onnx.ModelProto:
    """x (2, 3, 4) -> PRelu(x, slope) with the slope as an initializer."""
    node = helper.make_node("PRelu", ["x", "slope"], ["y"], name="act")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        initializer=[numpy_helper.from_array(slope.astype(np.float32), "slope")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_scalar_prelu_becomes_leaky_relu_with_bit_identical_outputs():
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    model = _prelu_graph(np.full((1, 1, 1), 0.2371))
    before = _run(model, x)
    assert prelu_to_leaky_relu(model) == 1
    assert [n.op_type for n in model.graph.node] == ["LeakyRelu"]
    after = _run(model, x)
    assert (x < 0).any() and np.array_equal(before, after)


def test_prelu_with_per_channel_slopes_is_left_alone():
    model = _prelu_graph(np.linspace(0.1, 0.4, 4))
    assert prelu_to_leaky_relu(model) == 0
    assert [n.op_type for n in model.graph.node] == ["PRelu"]


def test_optimised_trdetr_graph_equals_the_plain_one_and_passes_the_fp32_gate(tmp_path):
    torch.manual_seed(3)
    model = build_model(small_config()).eval()
    with torch.no_grad():  # a slope far from PReLU's 0.25 default, so a wrong alpha would show
        for module in model.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.fill_(-0.37)
    plain, optimised = tmp_path / "plain.onnx", tmp_path / "optimised.onnx"
    export_trdetr(model, 16, 30, plain, 18)
    optimised.write_bytes(plain.read_bytes())
    info = optimise_graph(optimised)
    assert info.prelu_to_leaky_relu == _ops(plain)["PRelu"] > 0
    assert _ops(optimised)["PRelu"] == 0 and _ops(optimised)["LeakyRelu"] == info.prelu_to_leaky_relu
    # the rewrites torch-side: no Conv (pointwise Conv1D is a linear layer), no Where over attention scores
    assert _ops(plain)["Conv"] == 0

    cases = random_cases(SPEC, 6, seed=0)
    gate = fp32_gate("fp32 torch vs optimised ORT", lambda case: torch_runner(model)(case.inputs),
                     ort_runner(make_session(str(optimised))), cases, reference_label="torch",
                     candidate_label="ORT fp32 optimised", provider="CPUExecutionProvider",
                     thresholds=Thresholds(fp32_atol=1e-4))
    assert gate.passed, gate.failures
    run_plain, run_optimised = ort_runner(make_session(str(plain))), ort_runner(make_session(str(optimised)))
    for case in cases:
        for name, value in run_plain(case.inputs).items():
            assert np.array_equal(value, run_optimised(case.inputs)[name]), name


def test_exported_bundle_serves_the_rewritten_graph_and_its_gates_passed(small_bundle):
    assert _ops(small_bundle / "model.onnx")["PRelu"] == 0
    assert _ops(small_bundle / "model.onnx")["LeakyRelu"] > 0
    report = json.loads((small_bundle / "parity.json").read_text())
    fp32 = [g for g in report["gates"] if g["kind"] == "fp32"]
    assert fp32 and all(g["passed"] for g in fp32)
    assert all(v <= 1e-4 for g in fp32 for k, v in g["measured"].items() if k.startswith("max_abs_diff"))
