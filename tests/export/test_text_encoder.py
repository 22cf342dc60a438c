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
