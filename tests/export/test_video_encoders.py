"""Video encoders of the bundle: our SlowFast equals an independent implementation loaded from every published
checkpoint format, checkpoints cannot run code, and ``trdetr-export --clip --slowfast`` writes gated encoders."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from model_export import TRDETRConfig, build_model, save_checkpoint
from model_export.cli import main as export_main
from model_export.demo_bundle import write_tiny_clip_text_dir
from model_export.slowfast import SlowFastWeightsError, load_slowfast, proportional_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slowfast_files import reference_features, reference_slowfast, write_checkpoint  # noqa: E402

FORMATS = ["pytorchvideo-pyth", "pyslowfast-pyth", "pyslowfast-caffe2-pkl"]


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """R50-deep SlowFast (3, 4, 6, 3 blocks), width 8/1, for 64x64 inputs."""
    return reference_slowfast(width=8, depth=50, pool=(2, 2))


@pytest.mark.parametrize("fmt", FORMATS)
def test_our_slowfast_equals_pytorchvideo_loaded_from_each_format(reference, tmp_path, fmt):
    path = write_checkpoint(reference, tmp_path / ("sf.pkl" if fmt.endswith("pkl") else "sf.pyth"), fmt)
    loaded = load_slowfast(path)
    assert loaded.format == fmt and loaded.file_name == path.name and len(loaded.sha256) == 64
    assert loaded.model.config == proportional_config(8)
    generator = torch.Generator().manual_seed(3)
    fast = torch.randn(2, 3, 32, 64, 64, generator=generator)
    slow = fast[:, :, torch.linspace(0, 31, 8).long()]
    expected = reference_features(reference, slow, fast)
    with torch.no_grad():
        ours = loaded.model(slow, fast)
    assert ours.shape == expected.shape == (2, 256 + 32)
    assert expected.abs().max() > 0.1  # not a degenerate all-zero comparison
    assert (ours - expected).abs().max().item() <= 1e-4


def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": Payload()}}, protocol=2))
    with pytest.raises(SlowFastWeightsError, match="refusing to load"):
        load_slowfast(path)
    assert not marker.exists()


def test_incomplete_weights_are_named(reference, tmp_path):
    path = write_checkpoint(reference, tmp_path / "sf.pyth", "pytorchvideo-pyth")
    data = torch.load(path, weights_only=True)
    del data["model_state"]["blocks.3.multipathway_blocks.1.res_blocks.2.branch2.conv_b.weight"]
    torch.save(data, path)
    with pytest.raises(SlowFastWeightsError, match=r"fast_stages\.2\.2\.conv_b\.weight"):
        load_slowfast(path)


def write_tiny_clip_dir(directory: Path) -> Path:
    """A Hugging Face CLIP directory with both towers (16-d text states, 16-d image embeddings) + tokenizer."""
    write_tiny_clip_text_dir(directory, seed=2, hidden_size=16, num_layers=1, num_heads=4, intermediate_size=32)
    text = CLIPTextConfig.from_pretrained(directory)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=224, patch_size=32, projection_dim=16)
    torch.manual_seed(2)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_export_writes_gated_clip_image_and_slowfast_encoders_that_extract_a_video(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extraction"))
    from video_helpers import write_video

    from extraction import Extractor

    sf = write_checkpoint(reference_slowfast(width=8, depth=18, pool=(7, 7)), tmp_path / "SLOWFAST_tiny.pkl",
                          "pyslowfast-caffe2-pkl")
    clip_dir = write_tiny_clip_dir(tmp_path / "clip")
    config = TRDETRConfig(v_feat_dim=288 + 16 + 2, t_feat_dim=16, nheads=4, enc_layers=1, dec_layers=1,
                          dim_feedforward=32, num_queries=4, max_q_l=32, max_v_l=75)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "m.ckpt", build_model(config).eval(), config)
    out = tmp_path / "bundle"
    status = export_main([str(checkpoint), "--out", str(out), "--clip", str(clip_dir), "--slowfast", str(sf),
                          "--video-groups", "slowfast:288,clip:16", "--random-cases", "2", "--quiet"])
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    groups = {g["name"]: g for g in manifest["preprocessing"]["video_groups"]}
    assert groups["slowfast"]["encoder"]["weights"]["format"] == "pyslowfast-caffe2-pkl"
    assert groups["slowfast"]["encoder"]["output_layout"].startswith("concat(slow pathway")
    assert groups["clip"]["encoder"]["kind"] == "clip_image"
    assert {"image_encoder.onnx", "slowfast.onnx", "text_encoder.onnx"} <= set(manifest["files"])
    assert manifest["parity"]["image_encoder"]["max_abs_diff"] <= 1e-4
    assert manifest["parity"]["image_encoder"]["reference"] == "transformers CLIPModel.get_image_features"
    assert manifest["parity"]["slowfast"]["passed"]
    video = Extractor(out, device="cpu").extract(write_video(tmp_path / "v.mp4", seconds=3.0, fps=25))
    assert {k: v.shape for k, v in video.groups.items()} == {"slowfast": (2, 288), "clip": (2, 16)}
    assert np.isfinite(video.groups["slowfast"]).all()


def test_the_2d_export_form_computes_the_same_network(reference, tmp_path):
    """factorized_for_export (3D convs as 2D ones, BN folded) equals the network it was made from."""
    from model_export.slowfast.factorize import factorized_for_export

    model = load_slowfast(write_checkpoint(reference, tmp_path / "sf.pyth", "pytorchvideo-pyth")).model
    fast = torch.randn(1, 3, 32, 64, 48, generator=torch.Generator().manual_seed(5))
    slow = fast[:, :, torch.linspace(0, 31, 8).long()]
    with torch.no_grad():
        expected, got = model(slow, fast), factorized_for_export(model)(slow, fast)
    assert (got - expected).abs().max().item() <= 1e-4
    assert not any(isinstance(m, torch.nn.Conv3d | torch.nn.BatchNorm3d) for m in factorized_for_export(model).modules())
