"""KServe v2 / Open Inference Protocol: a real client (``tritonclient.http``) against a live ``trdetr-serve``.

Its answers must equal ``/v1/moments`` on the same inputs (the client sends the model inputs the /v1 API
builds: normalised features, TEF appended) and a plain ONNX Runtime run of each unpadded row.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from svc_helpers import (
    b64,
    manifest_of,
    model_text,
    model_video,
    npy_bytes,
    npz_bytes,
    random_groups,
    random_text,
)
from test_live_server import clean_env, free_port, live_server
from tritonclient.utils import InferenceServerException

from trdetr_common.windows import WindowOutput, merge_moments, plan_windows

LENGTHS = [(5, 14), (3, 9), (8, 14)]  # (tokens, clips) per row: the batch is padded to 8 tokens, 14 clips


def _batch(pre):
    """Per row raw groups and tokens, and the padded model tensors of the whole batch."""
    rows = [(random_groups(pre, clips, seed=40 + i), random_text(pre, tokens, seed=50 + i))
            for i, (tokens, clips) in enumerate(LENGTHS)]
    texts = [model_text(tokens, pre) for _, tokens in rows]
    videos = [model_video(groups, pre, stored=False) for groups, _ in rows]
    lt, lv = max(len(t) for t in texts), max(len(v) for v in videos)
    tensors = {"src_txt": np.zeros((len(rows), lt, pre.text_dim), np.float32),
               "src_txt_mask": np.zeros((len(rows), lt), np.float32),
               "src_vid": np.zeros((len(rows), lv, videos[0].shape[1]), np.float32),
               "src_vid_mask": np.zeros((len(rows), lv), np.float32)}
    for b, (text, video) in enumerate(zip(texts, videos, strict=True)):
        tensors["src_txt"][b, :len(text)], tensors["src_txt_mask"][b, :len(text)] = text, 1
        tensors["src_vid"][b, :len(video)], tensors["src_vid_mask"][b, :len(video)] = video, 1
    return rows, texts, videos, tensors


@pytest.mark.slow
def test_tritonclient_infer_equals_v1_moments_and_plain_onnxruntime(small_bundle, redis_url, key_prefix):
    pre = manifest_of(small_bundle).preprocessing
    rows, texts, videos, tensors = _batch(pre)
    session = ort.InferenceSession(str(small_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    port = free_port()
    env = clean_env(TRDETR_BUNDLE_DIR=str(small_bundle), REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=key_prefix,
                    TRDETR_INTRA_OP_THREADS="1", TRDETR_DEVICE="cpu", TRDETR_API_KEYS="k1")
    with live_server(env, port) as http:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        keyed = {"X-API-Key": "k1"}
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("trdetr", headers=keyed)
        meta = client.get_model_metadata("trdetr", headers=keyed)
        assert [i["name"] for i in meta["inputs"]] == ["src_txt", "src_txt_mask", "src_vid", "src_vid_mask"]
        assert meta["inputs"][2]["shape"] == [-1, -1, pre.video_input_dim]
        with pytest.raises(InferenceServerException):  # no key: refused like /v1
            client.get_model_metadata("trdetr")
        binary, as_json = _infer(client, tensors, keyed, True), _infer(client, tensors, keyed, False)
        for name in binary:
            np.testing.assert_array_equal(binary[name], as_json[name])
        for b, (text, video) in enumerate(zip(texts, videos, strict=True)):
            plain = dict(zip(["pred_logits", "pred_spans", "saliency_scores"], session.run(None, {
                "src_txt": text[None], "src_txt_mask": np.ones((1, len(text)), np.float32),
                "src_vid": video[None], "src_vid_mask": np.ones((1, len(video)), np.float32)}), strict=True))
            np.testing.assert_allclose(binary["pred_logits"][b], plain["pred_logits"][0], atol=1e-5)
            np.testing.assert_allclose(binary["pred_spans"][b], plain["pred_spans"][0], atol=1e-5)
            np.testing.assert_allclose(binary["saliency_scores"][b, :len(video)], plain["saliency_scores"][0], atol=1e-5)
            assert not binary["saliency_scores"][b, len(video):].any()
            groups, tokens = rows[b]
            v1 = http.post("/v1/moments", headers=keyed, json={
                "video": {"format": "npz", "data_b64": b64(npz_bytes(**groups))},
                "queries": [{"features_b64": b64(npy_bytes(tokens))}], "top_k": 5, "nms_iou": 0.7})
            assert v1.status_code == 200, v1.text
            plan = plan_windows(len(video), len(video), len(video))
            from_v2 = merge_moments([_row(binary, b, len(video))], plan, clip_length_s=pre.clip_length_s,
                                    rule="salient", top_k=5, nms_iou=0.7, min_score=0.0)
            got = v1.json()["results"][0]["moments"]
            np.testing.assert_allclose([[m["start"], m["end"], m["score"]] for m in got],
                                       np.asarray(from_v2, dtype=float), atol=1e-5)
        metrics = http.get("/metrics").text
        assert 'route="/v2/models/{name}/infer",status="200"' in metrics
        client.close()


def _infer(client, tensors, headers, binary: bool):
    inputs = []
    for name, array in tensors.items():
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary)
               for n in ("pred_logits", "pred_spans", "saliency_scores")]
    result = client.infer("trdetr", inputs, outputs=outputs, request_id="r1", headers=dict(headers))  # tritonclient adds to it
    assert result.get_response()["id"] == "r1"
    return {n: result.as_numpy(n) for n in ("pred_logits", "pred_spans", "saliency_scores")}


def _row(outputs, b, clips):
    return WindowOutput(pred_logits=outputs["pred_logits"][b], pred_spans=outputs["pred_spans"][b],
                        saliency=outputs["saliency_scores"][b, :clips])
