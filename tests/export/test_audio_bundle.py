"""Bundles of checkpoints trained with audio (official and Lighthouse layouts): the manifest's audio
contract, the single-input graph, and parity gates that call the torch model the official way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_export import load_checkpoint
from model_export.export import export_bundle, parse_audio_groups, parse_video_groups, verify_bundle
from model_export.export.cases import InputSpec, model_video_input
from trdetr_common.features import build_text_features
from trdetr_common.manifest import Manifest

from .audio_checkpoints import (
    AUDIO_DIM,
    VIDEO_GROUPS,
    write_lighthouse_audio_checkpoint,
    write_official_audio_checkpoint,
)
from .conftest import RANDOM_WEIGHTS

pytestmark = pytest.mark.slow  # each module exports ONNX graphs

CASES = 4


@pytest.fixture(scope="module")
def official_audio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, bundle) of the official-layout audio checkpoint, fp16 included."""
    root = tmp_path_factory.mktemp("audio_official")
    ckpt = write_official_audio_checkpoint(root / "audio.ckpt")
    export_bundle(ckpt, root / "bundle", fp16=True, video_groups=parse_video_groups(VIDEO_GROUPS),
                  audio_groups=parse_audio_groups(f"pann:{AUDIO_DIM}"), num_random_cases=CASES,
                  thresholds=RANDOM_WEIGHTS)
    return ckpt, root / "bundle"


def test_official_audio_manifest_puts_pann_and_a_second_tef_after_the_video(official_audio):
    pre = Manifest.load(official_audio[1]).preprocessing
    assert [(g.name, g.dim) for g in pre.audio_groups] == [("pann", AUDIO_DIM)]
    assert pre.audio_tef and pre.audio_groups_source == "flag" and "shortest" in pre.audio_alignment
    assert pre.video_input_dim == 28 + 2 + AUDIO_DIM + 2
    assert pre.stored_dim == 28 + AUDIO_DIM and pre.tef_offsets == (28, 28 + 2 + AUDIO_DIM)
    assert [g.name for g in pre.feature_groups] == ["slowfast", "clip", "pann"]


def test_official_audio_gates_ran_on_every_case_and_passed(official_audio):
    report = json.loads((official_audio[1] / "parity.json").read_text())
    assert report["passed"]
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["fp32 torch vs ORT (CPUExecutionProvider)"]["passed"]
    assert len(gates["fp32 torch vs ORT (CPUExecutionProvider)"]["cases"]) == CASES
    assert gates["fp16 ORT vs torch (CPUExecutionProvider)"]["passed"]


def _inputs(rng: np.random.Generator, clips: int, audio_scale: float) -> dict[str, np.ndarray]:
    spec = InputSpec(video_group_dims=[20, 8], text_dim=16, use_tef=True, normalize_video=True, normalize_text=True,
                     max_text_tokens=32, audio_group_dims=[AUDIO_DIM], audio_tef=True)
    groups = [rng.standard_normal((clips, d)).astype(np.float32) for d in (20, 8)]
    audio = audio_scale * rng.standard_normal((clips + 3, AUDIO_DIM)).astype(np.float32)  # longer: cut
    video = model_video_input(spec, [*groups, audio])
    text = build_text_features(rng.standard_normal((6, 16)).astype(np.float32))
    return {"src_txt": text[None], "src_txt_mask": np.ones((1, 6), np.float32), "src_vid": video[None],
            "src_vid_mask": np.ones((1, clips), np.float32)}


def test_the_graph_reads_audio_as_the_official_model_does(official_audio):
    """ORT on the manifest's single input == torch called with separate src_vid / src_aud built as the official
    start_end_dataset_audio builds them (L2 per group, cut to the shortest, TEF after video and after audio)."""
    ckpt, bundle = official_audio
    model, _ = load_checkpoint(ckpt)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    feeds = _inputs(rng, 17, 1.0)
    vid = feeds["src_vid"][0]
    assert vid.shape == (17, 44)
    tef = np.stack([np.arange(17) / 17, np.arange(1, 18) / 17], 1).astype(np.float32)
    np.testing.assert_allclose(vid[:, 28:30], tef, atol=1e-7)
    np.testing.assert_allclose(vid[:, 42:44], tef, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(vid[:, 30:42], axis=1), 1.0, atol=1e-4)
    got = session.run(None, feeds)
    with torch.inference_mode():
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        ref = model(t["src_txt"], t["src_txt_mask"], t["src_vid"][..., :30], t["src_vid_mask"],
                    src_aud=t["src_vid"][..., 30:])
    for name, value in zip(["pred_logits", "pred_spans", "saliency_scores"], got, strict=True):
        np.testing.assert_allclose(value, ref[name].numpy(), atol=1e-4)
    # the audio columns matter: other audio, other saliency
    other = dict(feeds, src_vid=feeds["src_vid"].copy())
    other["src_vid"][0, :, 30:42] = np.roll(other["src_vid"][0, :, 30:42], 5, axis=0)
    assert np.abs(session.run(None, other)[2] - got[2]).max() > 1e-3


def test_verify_re_checks_an_audio_bundle_against_its_checkpoint(official_audio):
    ckpt, bundle = official_audio
    report = verify_bundle(bundle, ckpt, num_random_cases=2, thresholds=RANDOM_WEIGHTS)
    assert report["passed"] and len(report["gates"]) == 2


@pytest.mark.slow
def test_lighthouse_audio_checkpoint_has_no_tef_after_the_audio(tmp_path):
    ckpt = write_lighthouse_audio_checkpoint(tmp_path / "lighthouse_audio.ckpt")
    manifest = export_bundle(ckpt, tmp_path / "bundle", video_groups=parse_video_groups(VIDEO_GROUPS),
                             num_random_cases=2)
    pre = manifest.preprocessing
    assert manifest.source.checkpoint_format == "lighthouse"
    assert [(g.name, g.dim) for g in pre.audio_groups] == [("audio", AUDIO_DIM)]
    assert not pre.audio_tef and pre.audio_groups_source == "lighthouse"
    assert pre.video_input_dim == 30 + AUDIO_DIM and pre.tef_offsets == (28,)
    assert json.loads((tmp_path / "bundle" / "parity.json").read_text())["passed"]
