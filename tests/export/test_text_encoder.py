"""Text encoder export: tokenizer.json equals the transformers tokenizer, the ONNX graph equals torch,
and long queries are truncated to the context with <|endoftext|> kept last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import CLIPTokenizer

from model_export.export.text_encoder import (
    CHECK_QUERIES,
    TOKENIZER_JSON,
    check_text_encoder,
    export_text_encoder,
)


@pytest.fixture(scope="module")
def exported(tiny_clip_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text")
    info = export_text_encoder(tiny_clip_dir, out, opset=18)
    assert (info.hidden_size, info.context_length) == (16, 77)
    return out


def test_tokenizer_and_encoder_match_transformers_and_torch(tiny_clip_dir: Path, exported: Path):
    report = check_text_encoder(tiny_clip_dir, exported)
    assert report["passed"], report["failures"]
    assert report["tokenizer_ids_equal"] and report["max_abs_diff"] <= 1e-4
    assert report["padded_batch_max_abs_diff"] <= 1e-4
    assert len(report["queries"]) == len(CHECK_QUERIES)


def test_a_long_query_is_truncated_to_77_tokens_ending_with_endoftext(tiny_clip_dir: Path, exported: Path):
    ids = Tokenizer.from_file(str(exported / TOKENIZER_JSON)).encode(CHECK_QUERIES[-1]).ids
    hf = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    assert len(ids) == 77
    assert ids[0] == hf.bos_token_id and ids[-1] == hf.eos_token_id


def test_casing_and_whitespace_are_normalised_like_clip(exported: Path):
    tokenizer = Tokenizer.from_file(str(exported / TOKENIZER_JSON))
    assert tokenizer.encode("A  Dog").ids == tokenizer.encode("a dog").ids


def test_a_tokenizer_that_differs_from_transformers_fails_the_check(tiny_clip_dir: Path, exported: Path, tmp_path):
    broken = tmp_path / "bundle"
    broken.mkdir()
    (broken / "text_encoder.onnx").write_bytes((exported / "text_encoder.onnx").read_bytes())
    spec = json.loads((exported / TOKENIZER_JSON).read_text())
    spec["truncation"] = None  # forgets the 77-token context
    (broken / TOKENIZER_JSON).write_text(json.dumps(spec))
    report = check_text_encoder(tiny_clip_dir, broken)
    assert not report["passed"]
    assert any("tokenizer.json ids differ" in f and "a very long query" in f for f in report["failures"])


def test_text_embeds_is_the_normalised_clip_projection_at_the_end_token(tiny_clip_dir: Path, exported: Path):
    """text_embeds = text_projection(state at <|endoftext|>) / norm, computed here by hand from the torch model
    (what CLIPModel.get_text_features gives, normalised), on a right-padded batch."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection.from_pretrained(tiny_clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    batch = tokenizer(["a dog runs on the beach", "x", "two people talk"], padding=True, return_tensors="np")
    feed = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    session = ort.InferenceSession(str(exported / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "text_embeds"]
    got = session.run(["text_embeds"], feed)[0]
    with torch.no_grad():
        states = model.text_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
        end = feed["attention_mask"].sum(1) - 1  # <|endoftext|> is the last real token
        pooled = states[torch.arange(len(end)), torch.from_numpy(end)]
        ref = model.text_projection(pooled)
        ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    assert got.shape == (3, model.config.projection_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    report = check_text_encoder(tiny_clip_dir, exported)
    assert report["text_embeds_max_abs_diff"] is not None and report["text_embeds_max_abs_diff"] <= 1e-4


def test_a_clip_directory_without_the_projection_exports_no_text_embeds(tiny_clip_dir: Path, tmp_path):
    import onnxruntime as ort
    from transformers import CLIPTextModel

    plain = tmp_path / "plain"
    CLIPTextModel.from_pretrained(tiny_clip_dir).save_pretrained(plain)
    CLIPTokenizer.from_pretrained(tiny_clip_dir).save_pretrained(plain)
    (tmp_path / "out").mkdir()
    info = export_text_encoder(plain, tmp_path / "out", opset=18)
    assert info.embed_dim is None
    session = ort.InferenceSession(str(tmp_path / "out" / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    report = check_text_encoder(plain, tmp_path / "out")
    assert report["passed"] and report["text_embeds_max_abs_diff"] is None
