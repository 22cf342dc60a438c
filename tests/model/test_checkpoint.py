"""Checkpoints: official, Lighthouse and our own format load strictly and safely; bad files are refused
with errors that say what is wrong."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from model_export import (
    CheckpointFormatError,
    CheckpointMismatchError,
    ConfigError,
    TRDETRConfig,
    UnsafeCheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

from .conftest import perturbed_model, random_inputs, tiny_config


def _saliency(model, config):
    txt, txt_mask, vid, vid_mask = random_inputs(config, [(8, 3), (5, 2)])
    with torch.no_grad():
        return model(txt, txt_mask, vid, vid_mask)["saliency_scores"]


@pytest.mark.parametrize("fmt", ["trdetr-service", "official"])
def test_round_trip_gives_identical_outputs(tmp_path, fmt):
    config = tiny_config(clip_length=1.0, use_txt_pos=True)
    model = perturbed_model(config)
    path = save_checkpoint(tmp_path / "m.ckpt", model, config, epoch=7, fmt=fmt)
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config
    assert not loaded.training
    torch.testing.assert_close(_saliency(loaded, config), _saliency(model, config), rtol=0, atol=0)
    info = read_checkpoint(path)
    assert (info.format, info.epoch) == (fmt, 7)


@pytest.mark.parametrize("fmt", ["trdetr-service", "official"])
def test_extra_opt_fields_travel_with_the_checkpoint(tmp_path, fmt):
    config = tiny_config()
    groups = [["slowfast", 20], ["clip", 10]]
    path = save_checkpoint(tmp_path / "m.ckpt", perturbed_model(config), config, fmt=fmt,
                           extra_opt={"video_feature_groups": groups})
    info = read_checkpoint(path)
    assert info.raw_opt["video_feature_groups"] == groups
    assert info.config == config


def test_our_format_needs_no_allow_list(tmp_path):
    config = tiny_config()
    path = save_checkpoint(tmp_path / "m.ckpt", perturbed_model(config), config, fmt="trdetr-service")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "trdetr-service" and raw["version"] == 1
    assert TRDETRConfig.from_opt(raw["config"]) == config


def test_official_format_carries_a_namespace_opt_with_live_v_feat_dim(tmp_path):
    config = tiny_config()
    optimizer = torch.optim.AdamW(perturbed_model(config).parameters())
    path = save_checkpoint(tmp_path / "m.ckpt", perturbed_model(config), config, optimizer=optimizer)
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "optimizer", "lr_scheduler", "epoch", "opt"}
    assert isinstance(raw["opt"], argparse.Namespace) and raw["opt"].v_feat_dim == 12 and raw["opt"].use_tef


def test_the_official_fixture_checkpoint_reads_as_official(official_dir):
    info = read_checkpoint(official_dir / "checkpoint.ckpt")
    assert info.format == "official" and info.epoch == 0
    assert info.config.v_feat_dim == 34 and info.config.nheads == 4 and info.config.num_queries == 5
    assert all(t.device.type == "cpu" for t in info.state_dict.values())


def test_opt_json_style_v_feat_dim_without_tef_is_resolved_from_the_weights(tmp_path):
    config = tiny_config()
    opt = config.to_opt()
    del opt.use_tef  # as opt.json: v_feat_dim before the +2 TEF columns
    opt.v_feat_dim = config.v_feat_dim - 2
    path = tmp_path / "m.ckpt"
    torch.save({"model": perturbed_model(config).state_dict(), "optimizer": None, "epoch": 1, "opt": opt}, path)
    assert load_checkpoint(path)[1].v_feat_dim == config.v_feat_dim


def test_v_feat_dim_contradicting_the_weights_is_refused(tmp_path):
    config = tiny_config()
    opt = config.to_opt()
    opt.v_feat_dim = 40
    path = tmp_path / "m.ckpt"
    torch.save({"model": perturbed_model(config).state_dict(), "opt": opt}, path)
    with pytest.raises(CheckpointMismatchError, match="v_feat_dim=40"):
        read_checkpoint(path)


def test_wrong_shape_names_the_first_offending_key(tmp_path):
    config = tiny_config()
    state = perturbed_model(config).state_dict()
    state["class_embed.weight"] = torch.zeros(3, 256)
    path = tmp_path / "m.ckpt"
    torch.save({"model": state, "opt": config.to_opt()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"'class_embed.weight' has shape \(3, 256\)"):
        load_checkpoint(path)


def test_missing_key_is_named(tmp_path):
    config = tiny_config()
    state = perturbed_model(config).state_dict()
    del state["saliency_proj1.bias"]
    path = tmp_path / "m.ckpt"
    torch.save({"model": state, "opt": config.to_opt()}, path)
    with pytest.raises(CheckpointMismatchError, match="missing key 'saliency_proj1.bias'"):
        read_checkpoint(path)


class _CreatesAFileWhenUnpickled:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"model": {}, "opt": _CreatesAFileWhenUnpickled(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="could run arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_lighthouse_checkpoint_with_an_easydict_opt_loads(tmp_path, monkeypatch):
    """Lighthouse saves {"model", "opt": EasyDict}; v_feat_dim counts TEF; easydict is not needed to load."""
    package = tmp_path / "pkgs" / "easydict"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent("""
        class EasyDict(dict):  # the essentials of easydict.EasyDict: keys mirrored as attributes
            def __init__(self, d=None):
                for k, v in (d or {}).items():
                    setattr(self, k, v)
            def __setattr__(self, name, value):
                super().__setattr__(name, value)
                super().__setitem__(name, value)
            __setitem__ = __setattr__
    """))
    monkeypatch.syspath_prepend(str(package.parent))
    from easydict import EasyDict

    config = tiny_config(clip_length=1.0)
    opt = {k: v for k, v in config.to_dict().items() if k not in ("use_tef", "use_txt_pos")}
    opt.update(model_name="tr_detr", device="cuda", max_a_l=75)
    model = perturbed_model(config)
    path = tmp_path / "lighthouse.ckpt"
    torch.save({"model": model.state_dict(), "opt": EasyDict(opt)}, path)
    monkeypatch.delitem(sys.modules, "easydict")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(package.parent)])

    info = read_checkpoint(path)
    assert info.format == "lighthouse" and info.raw_opt["model_name"] == "tr_detr"
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config
    torch.testing.assert_close(_saliency(loaded, config), _saliency(model, config), rtol=0, atol=0)


def test_not_a_checkpoint_is_a_format_error(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(path)
    torch.save({"weights": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointFormatError, match="expected 'model' and 'opt'"):
        read_checkpoint(tmp_path / "other.ckpt")


def test_hidden_dim_other_than_256_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="hidden_dim must be 256"):
        tiny_config(hidden_dim=128)
    with pytest.raises(ConfigError, match="nheads=3 must divide"):
        tiny_config(nheads=3)


def test_config_dict_is_json_safe_and_round_trips():
    config = tiny_config(a_feat_dim=4)
    assert TRDETRConfig.from_opt(json.loads(json.dumps(config.to_dict()))) == config
    assert TRDETRConfig.from_opt(config.to_opt()) == config


def test_official_opt_without_audio_dir_means_no_audio():
    """The official build_model ignores a_feat_dim unless a_feat_dir is set."""
    opt = tiny_config().to_opt()
    opt.a_feat_dim = 2048
    assert TRDETRConfig.from_opt(opt).a_feat_dim is None
    audio = tiny_config(a_feat_dim=6)
    assert TRDETRConfig.from_opt(audio.to_opt()) == audio
