"""PANN Cnn14: our torch network against the reference implementation (panns_inference, the code
Lighthouse's audio extractor copied) on weights written in the released ``Cnn14_mAP=0.431.pth`` layout,
and ``trdetr-export --pann``: audio_encoder.onnx, its gate, and the manifest's audio encoder spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_export.cli import main
from model_export.export import (
    LayoutError,
    export_bundle,
    parse_audio_groups,
    parse_video_groups,
    verify_bundle,
)
from model_export.pann import Cnn14Config, LoadedPann, PannWeightsError, load_pann, random_pann, save_pann
from trdetr_common.manifest import Manifest

from .audio_checkpoints import AUDIO_DIM, VIDEO_GROUPS, write_official_audio_checkpoint

TINY = Cnn14Config(channels=(4, 4, 8, 8, 8, AUDIO_DIM))


@pytest.mark.slow
def test_our_cnn14_equals_the_reference_on_released_layout_weights(tmp_path):
    pytest.importorskip("torchlibrosa")
    from panns_inference.models import Cnn14 as ReferenceCnn14

    path = save_pann(tmp_path / "Cnn14_mAP=0.431.pth", random_pann(seed=3))
    ours = load_pann(path).model
    reference = ReferenceCnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,
                               classes_num=527).eval()
    released = torch.load(path, map_location="cpu", weights_only=True)["model"]
    front_end = {k: v for k, v in reference.state_dict().items() if k.startswith(("spectrogram", "logmel"))}
    for name, tensor in front_end.items():  # our DFT kernels and mel filters equal torchlibrosa's / librosa's
        np.testing.assert_allclose(released[name].numpy(), tensor.numpy(), atol=1e-6, err_msg=name)
    reference.load_state_dict(released)
    waves = torch.rand(2, 64000, generator=torch.Generator().manual_seed(0)) - 0.5
    waves[1, :20000] = 0.0  # silence: the log floor
    with torch.no_grad():
        want = reference(waves, None)["embedding"]
        got = ours(waves)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, want, atol=1e-4 * float(want.abs().max()), rtol=0)


def test_load_pann_names_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"fc1.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(PannWeightsError, match="Cnn14"):
        load_pann(bad)
    with pytest.raises(FileNotFoundError, match="zenodo"):
        load_pann(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def pann_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint, tiny PANN file, bundle) of the official-layout audio checkpoint exported with --pann."""
    root = tmp_path_factory.mktemp("pann_bundle")
    ckpt = write_official_audio_checkpoint(root / "audio.ckpt")
    pth = save_pann(root / "tiny_cnn14.pth", random_pann(TINY, seed=4))
    code = main([str(ckpt), "--out", str(root / "bundle"), "--video-groups", VIDEO_GROUPS, "--audio-groups",
                 f"pann:{AUDIO_DIM}", "--pann", str(pth), "--random-cases", "2", "--quiet"])
    assert code == 0
    return ckpt, pth, root / "bundle"


def test_export_with_pann_writes_the_audio_encoder_and_its_spec(pann_bundle):
    _, pth, bundle = pann_bundle
    manifest = Manifest.load(bundle)
    assert "audio_encoder.onnx" in manifest.files
    spec = manifest.preprocessing.audio_groups[0].encoder
    assert spec is not None and spec.kind == "pann_cnn14" and spec.dim == AUDIO_DIM
    assert (spec.sample_rate, spec.window_size, spec.hop_size, spec.mel_bins, spec.fmin, spec.fmax) == (
        32000, 1024, 320, 64, 50.0, 14000.0)
    assert spec.clip_samples == 64000 and spec.weights.file_name == pth.name and not spec.weights.untrained
    report = json.loads((bundle / "parity.json").read_text())
    assert report["video_encoders"]["audio_encoder"]["passed"]
    assert manifest.parity["audio_encoder"]["passed"]
    assert manifest.groups_without_encoder() == ["slowfast", "clip"]


def test_the_audio_encoder_graph_equals_torch_for_any_number_of_clips(pann_bundle):
    _, pth, bundle = pann_bundle
    model = load_pann(pth).model
    session = ort.InferenceSession(str(bundle / "audio_encoder.onnx"), providers=["CPUExecutionProvider"])
    waves = np.random.default_rng(1).uniform(-1, 1, (5, 64000)).astype(np.float32)
    got = session.run(["embedding"], {"waveform": waves})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(waves)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_verify_re_gates_the_audio_encoder(pann_bundle):
    ckpt, pth, bundle = pann_bundle
    report = verify_bundle(bundle, ckpt, num_random_cases=1, pann=load_pann(pth))
    assert report["passed"] and report["video_encoders"]["audio_encoder_parity"]["passed"]
    assert report["video_encoders"]["pann"]["passed"]


def test_pann_on_a_model_without_audio_is_refused(tmp_path, small_checkpoint):
    loaded = LoadedPann(random_pann(TINY), "tiny.pth", None, "random-init")
    with pytest.raises(LayoutError, match="trained without audio"):
        export_bundle(small_checkpoint, tmp_path / "b", run_parity=False,
                      video_groups=parse_video_groups("slowfast:20,clip:8"), pann=loaded)


def test_pann_of_the_wrong_width_is_refused(tmp_path):
    ckpt = write_official_audio_checkpoint(tmp_path / "audio.ckpt")
    loaded = LoadedPann(random_pann(Cnn14Config(channels=(4, 4, 4, 4, 4, 8))), "small.pth", None, "random-init")
    with pytest.raises(LayoutError, match="outputs 8 values"):
        export_bundle(ckpt, tmp_path / "b", run_parity=False, video_groups=parse_video_groups(VIDEO_GROUPS),
                      audio_groups=parse_audio_groups(f"pann:{AUDIO_DIM}"), pann=loaded)
