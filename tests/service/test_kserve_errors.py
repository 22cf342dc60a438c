"""KServe v2 endpoints in process: JSON tensors, bad tensors get a 422 saying what to fix, unknown models 404."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from svc_helpers import manifest_of

pytestmark = pytest.mark.anyio

INFER = "/v2/models/trdetr/infer"


def _tensors(pre, batch=2, tokens=4, clips=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"src_txt": rng.standard_normal((batch, tokens, pre.text_dim)).astype(np.float32),
            "src_txt_mask": np.ones((batch, tokens), np.float32),
            "src_vid": rng.standard_normal((batch, clips, pre.video_input_dim)).astype(np.float32),
            "src_vid_mask": np.ones((batch, clips), np.float32)}


def _json_body(tensors):
    return {"inputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.ravel().tolist()}
                       for n, a in tensors.items()]}


def _binary_body(tensors):
    inputs, raw = [], []
    for name, array in tensors.items():
        data = array.astype("<f4").tobytes()
        inputs.append({"name": name, "datatype": "FP32", "shape": list(array.shape),
                       "parameters": {"binary_data_size": len(data)}})
        raw.append(data)


    head = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return head + b"".join(raw), {"Inference-Header-Content-Length": str(len(head)),
                                  "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


async def test_json_and_binary_requests_give_the_same_tensors(client, pre):
    tensors = _tensors(pre)
    tensors["src_vid_mask"][1, 4:] = 0  # row 1 has 4 real clips
    as_json = await client.post(INFER, json=_json_body(tensors))
    assert as_json.status_code == 200, as_json.text
    doc = as_json.json()
    assert doc["model_name"] == "trdetr" and [o["name"] for o in doc["outputs"]] == [
        "pred_logits", "pred_spans", "saliency_scores"]
    body, headers = _binary_body(tensors)
    binary = await client.post(INFER, content=body, headers=headers)
    assert binary.status_code == 200, binary.text
    head_len = int(binary.headers["inference-header-content-length"])


    head, offset = orjson.loads(binary.content[:head_len]), head_len
    for out_json, out_bin in zip(doc["outputs"], head["outputs"], strict=True):
        size = out_bin["parameters"]["binary_data_size"]
        got = np.frombuffer(binary.content[offset:offset + size], "<f4").reshape(out_bin["shape"])
        offset += size
        np.testing.assert_array_equal(got, np.asarray(out_json["data"], np.float32).reshape(out_json["shape"]))
    saliency = np.asarray(doc["outputs"][2]["data"]).reshape(2, 6)
    assert not saliency[1, 4:].any()


@pytest.mark.parametrize(("change", "words"), [
    (lambda t: t.pop("src_vid_mask"), "Missing inputs"),
    (lambda t: t.__setitem__("src_vid", t["src_vid"][:, :, :10]), "src_vid has shape"),
    (lambda t: t["src_txt_mask"].__setitem__((0, 1), 0), "no gaps"),
    (lambda t: t["src_vid"].__setitem__((0, 0, 0), np.nan), "NaN"),
    (lambda t: t.__setitem__("src_vid", np.zeros((2, 200, t["src_vid"].shape[2]), np.float32)), "At most"),
])
async def test_bad_tensors_get_422(client, pre, change, words):
    tensors = _tensors(pre)
    change(tensors)
    if "src_vid" in tensors and tensors["src_vid"].shape[1] == 200:
        tensors["src_vid_mask"] = np.ones((2, 200), np.float32)
    body, headers = _binary_body(tensors)  # binary: JSON cannot carry NaN
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"] and response.json()["code"] == "invalid_tensor"


async def test_binary_sizes_that_do_not_add_up_get_422(client, pre):
    body, headers = _binary_body(_tensors(pre))
    response = await client.post(INFER, content=body[:-4], headers=headers)
    assert response.status_code == 422 and "binary" in response.json()["error"]
    response = await client.post(INFER, content=body, headers={**headers, "Inference-Header-Content-Length": "x"})
    assert response.status_code == 422


async def test_unknown_model_is_404_and_metadata_names_the_model(client):
    assert (await client.post("/v2/models/other/infer", json={"inputs": []})).status_code == 404
    assert (await client.get("/v2/models/trdetr/versions/7")).status_code == 404
    assert (await client.get("/v2/models/trdetr/versions/1")).json()["name"] == "trdetr"
    assert (await client.get("/v2/models/trdetr/ready")).json() == {"name": "trdetr", "ready": True}
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert "binary_tensor_data" in (await client.get("/v2")).json()["extensions"]
