"""The committed demo bundle (service/default_bundle): valid manifest, files matching their sha256,
marked untrained, small, and runnable end to end (tokenizer -> text encoder -> TR-DETR graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from model_export.export import verify_bundle
from trdetr_common.features import build_text_features, build_video_features
from trdetr_common.manifest import Manifest, verify_files

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "service" / "default_bundle"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load(DEFAULT_BUNDLE)


def test_its_files_match_the_manifest_sha256(manifest):
    assert verify_files(DEFAULT_BUNDLE, manifest) == []
    assert {"model.onnx", "text_encoder.onnx", "tokenizer.json", "parity.json"} <= set(manifest.files)


def test_it_is_marked_untrained_with_a_note_saying_how_to_regenerate(manifest):
    assert manifest.untrained
    assert any(
        "UNTRAINED" in note and "python -m model_export.demo_bundle" in note for note in manifest.notes
    )


def test_it_has_the_released_models_preprocessing_contract(manifest):
    pre = manifest.preprocessing
    assert [(g.name, g.dim) for g in pre.video_groups] == [("slowfast", 2304), ("clip", 512)]
    assert (pre.video_input_dim, pre.text_dim, pre.max_text_tokens, pre.max_video_clips) == (
        2818,
        512,
        32,
        75,
    )
    assert pre.tef and pre.l2_normalize_video and pre.l2_normalize_text and pre.clip_length_s == 2.0
    assert (manifest.config["hidden_dim"], manifest.config["num_queries"]) == (256, 10)


def test_it_passed_the_full_parity_gates_and_stays_small(manifest):
    assert manifest.parity["passed"] and manifest.parity["num_random_cases"] >= 50
    assert manifest.parity["text_encoder"]["passed"]
    assert manifest.parity["image_encoder"]["passed"] and manifest.parity["slowfast"]["passed"]
    # TR-DETR ~8.5 MB + tiny text, image (~0.4 MB) and SlowFast (~0.6 MB) encoders
    assert sum(entry.bytes for entry in manifest.files.values()) < 12_000_000


def test_every_video_group_has_an_untrained_encoder_with_the_real_interface(manifest):
    groups = {g.name: g for g in manifest.preprocessing.video_groups}
    assert manifest.groups_without_encoder() == []
    assert groups["clip"].encoder.kind == "clip_image" and groups["slowfast"].encoder.kind == "slowfast"
    assert all(g.encoder.weights.untrained for g in groups.values())
    for group in groups.values():
        session = ort.InferenceSession(
            str(DEFAULT_BUNDLE / group.encoder.onnx_file), providers=["CPUExecutionProvider"]
        )
        shapes = [i.shape for i in session.get_inputs()]
        assert session.get_outputs()[0].shape[1] == group.dim
        assert shapes == (
            [["batch", 3, 224, 224]]
            if group.name == "clip"
            else [["batch", 3, 8, 224, 224], ["batch", 3, 32, 224, 224]]
        )


def test_a_text_query_runs_end_to_end(manifest):
    """tokenizer.json -> text_encoder.onnx -> the manifest's token selection -> model.onnx."""
    pre = manifest.preprocessing
    ids = Tokenizer.from_file(str(DEFAULT_BUNDLE / pre.text_encoder.tokenizer_file)).encode("A dog runs!").ids
    encoder = ort.InferenceSession(
        str(DEFAULT_BUNDLE / pre.text_encoder.onnx_file), providers=["CPUExecutionProvider"]
    )
    states = encoder.run(
        None, {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64)}
    )[0]
    text = build_text_features(states[0], max_tokens=pre.max_text_tokens)
    rng = np.random.default_rng(0)
    video = build_video_features([rng.standard_normal((20, g.dim)) for g in pre.video_groups])
    model = ort.InferenceSession(
        str(DEFAULT_BUNDLE / manifest.onnx.fp32_file), providers=["CPUExecutionProvider"]
    )
    logits, spans, saliency = model.run(
        None,
        {
            "src_txt": text[None],
            "src_txt_mask": np.ones((1, len(text)), np.float32),
            "src_vid": video[None],
            "src_vid_mask": np.ones((1, 20), np.float32),
        },
    )
    assert logits.shape == (1, 10, 2) and spans.shape == (1, 10, 2) and saliency.shape == (1, 20)
    assert np.isfinite(saliency).all() and ((spans >= 0) & (spans <= 1)).all()


def test_verify_accepts_it():
    report = verify_bundle(DEFAULT_BUNDLE, num_random_cases=2)
    assert report["passed"] and report["files_verified"]


def test_no_file_holds_a_path_or_stack_trace_of_the_machine_that_built_it():
    """Rebuilt bit for bit from any checkout (tests/export/test_reproducible_bundle.py rebuilds it)."""
    for path in DEFAULT_BUNDLE.iterdir():
        data = path.read_bytes()
        found = [
            text for text in ("/work/", "/home/", "/tmp/", "site-packages", 'File "') if text.encode() in data
        ]
        assert not found, f"{path.name} contains {found}"
