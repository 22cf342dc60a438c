"""TRDETR_PRECISION=int8: the service runs the bundle's model.int8.onnx, says so, and its answers are that
graph's; a bundle without it is a clear start-up error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from svc_helpers import (
    b64,
    manifest_of,
    model_text,
    model_video,
    npy_bytes,
    npz_bytes,
    random_groups,
    random_text,
    run_exporter,
    serve,
)

from service.inference.bundle import BundleError, ModelBundle
from trdetr_common.postprocess import rank_moments

NPZ = {"content-type": "application/x-npz"}
pytestmark = pytest.mark.slow  # exports a bundle with an int8 graph in a subprocess


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("int8_bundle")
    run_exporter("export_small_int8_bundle", out_dir)
    return out_dir / "bundle"


def int8_moments(bundle: Path, text: np.ndarray, video: np.ndarray, pre, top_k: int) -> np.ndarray:
    """The int8 graph run directly by onnxruntime (batch 1), post-processed like the service."""
    session = ort.InferenceSession(str(bundle / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    text = model_text(text, pre)
    logits, spans, _ = session.run(None, {
        "src_txt": text[None], "src_txt_mask": np.ones((1, len(text)), np.float32),
        "src_vid": video[None], "src_vid_mask": np.ones((1, len(video)), np.float32)})
    return rank_moments(logits[0], spans[0], num_clips=len(video), clip_length_s=pre.clip_length_s, top_k=top_k)


def test_int8_graph_is_listed_in_the_manifest_and_really_quantized(int8_bundle):
    manifest = manifest_of(int8_bundle)
    assert manifest.onnx.int8_file == "model.int8.onnx" and "model.int8.onnx" in manifest.files
    assert manifest.onnx.int8_quantization.startswith("static int8")
    bundle = ModelBundle(int8_bundle, precision="int8", device="cpu", intra_op_threads=1)
    assert bundle.model_file == "model.int8.onnx" and bundle.model.path.name == "model.int8.onnx"
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8_bundle / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.anyio
async def test_service_serves_the_int8_graph_and_shows_it(int8_bundle, make_settings):
    pre = manifest_of(int8_bundle).preprocessing
    async with serve(make_settings(bundle_dir=int8_bundle, precision="int8")) as client:
        info = (await client.get("/v1/model")).json()
        assert (info["precision"], info["model_file"]) == ("int8", "model.int8.onnx")
        groups = random_groups(pre, 33, seed=11)
        stored = await client.put("/v1/videos/int8-vid/features", content=npz_bytes(**groups), headers=NPZ)
        assert stored.status_code == 200, stored.text
        text = random_text(pre, 7, seed=12)
        response = await client.post("/v1/moments", json={
            "video_id": "int8-vid", "queries": [{"features_b64": b64(npy_bytes(text))}], "top_k": 3})
        assert response.status_code == 200, response.text
    got = np.array([[m["start"], m["end"], m["score"]] for m in response.json()["results"][0]["moments"]])
    want = int8_moments(int8_bundle, text, model_video(groups, pre, stored=True), pre, top_k=3)
    np.testing.assert_allclose(got[:, 2], want[:, 2], atol=2e-3)  # stored features are fp16
    assert got.shape == want.shape


def test_int8_without_an_int8_graph_is_a_clear_start_up_error(small_bundle):
    with pytest.raises(BundleError, match="no int8 graph.*trdetr-export --int8"):
        ModelBundle(small_bundle, precision="int8", device="cpu")
