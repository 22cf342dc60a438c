"""Text queries go through the bundle's text encoder (OpenAI CLIP's text cleaning, tokenizers + ONNX) exactly
as the torch encoder would on the cleaned text."""

from __future__ import annotations

import numpy as np
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

from trdetr_common.postprocess import clip_saliency, rank_moments
from trdetr_common.text import clean_clip_text

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # exports a second bundle (~30-50 s)

NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    """(bundle with a tiny random CLIP-interface text encoder, its Hugging Face directory)."""
    out_dir = tmp_path_factory.mktemp("text_bundle")
    run_exporter("export_small_text_bundle", out_dir)
    return out_dir / "bundle", out_dir / "tiny_clip_text"


@pytest.fixture(scope="module")
def torch_text_encoder(text_bundle):
    """Text -> (tokens, 16) last_hidden_state with transformers on the CLIP-cleaned text (the source of truth)."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(text_bundle[1])
    model = CLIPTextModel.from_pretrained(text_bundle[1]).eval()

    def encode(text: str) -> np.ndarray:
        inputs = tokenizer(clean_clip_text(text), return_tensors="pt")
        with torch.no_grad():
            return model(**inputs).last_hidden_state[0].numpy()

    return encode


@pytest.fixture(scope="module")
async def text_client(make_settings, text_bundle):
    async with serve(make_settings(bundle_dir=text_bundle[0])) as client:
        yield client


async def test_text_and_feature_queries_in_one_request_equal_the_torch_pipeline(
        text_client, text_bundle, torch_text_encoder, reference):
    pre = manifest_of(text_bundle[0]).preprocessing
    groups = random_groups(pre, 33, seed=21)
    assert (await text_client.put("/v1/videos/tx/features", content=npz_bytes(**groups), headers=NPZ)).is_success
    tokens = random_text(pre, 6, seed=22)
    queries = ["a man cooks pasta in the kitchen", {"features_b64": b64(npy_bytes(tokens))},
               {"text": "“Café” crème &amp; ‘東京’ 🎉 at 3:45pm!"}]
    response = await text_client.post("/v1/moments", json={"video_id": "tx", "queries": queries, "top_k": 10})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["text"] for r in results] == [queries[0], None, queries[2]["text"]]
    video = model_video(groups, pre, stored=True)
    for result, raw_tokens in zip(results, [torch_text_encoder(queries[0]), tokens,
                                            torch_text_encoder(queries[2]["text"])], strict=True):
        out = reference(model_text(raw_tokens, pre), video)
        want = rank_moments(out["pred_logits"], out["pred_spans"], num_clips=33, clip_length_s=pre.clip_length_s,
                            top_k=10)
        got = np.array([[m["start"], m["end"], m["score"]] for m in result["moments"]])
        np.testing.assert_array_equal(got[:, :2], want[:, :2])
        np.testing.assert_allclose(got[:, 2], want[:, 2], atol=1e-4)


async def test_highlights_for_a_text_query(text_client, text_bundle, torch_text_encoder, reference):
    pre = manifest_of(text_bundle[0]).preprocessing
    groups = random_groups(pre, 12, seed=23)
    video = {"format": "npz", "data_b64": b64(npz_bytes(**groups))}
    response = await text_client.post("/v1/highlights", json={"video": video, "queries": ["dog runs"]})
    assert response.status_code == 200, response.text
    saliency = reference(model_text(torch_text_encoder("dog runs"), pre),
                         model_video(groups, pre, stored=False))["saliency_scores"]
    clips = response.json()["results"][0]["clips"]
    np.testing.assert_allclose([c["raw"] for c in clips], clip_saliency(saliency, 2.0).raw, atol=1e-4)


async def test_text_longer_than_the_encoder_context_is_a_422(text_client):
    response = await text_client.post("/v1/moments", json={
        "video": {"format": "npy", "data_b64": b64(npy_bytes(np.ones((3, 32), np.float32)))},
        "queries": ["x" * 200]})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "query_too_long"
    assert "77" in response.json()["error"]["message"]


async def test_model_summary_says_text_queries_are_accepted(text_client):
    assert (await text_client.get("/v1/model")).json()["text_encoder"] is True
