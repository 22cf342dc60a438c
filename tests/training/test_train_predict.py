"""trdetr-train and trdetr-predict end to end on a small synthetic set (real model, real files)."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import predict_cli, train_cli
from training.dataset import QVHighlightsDataset, read_jsonl
from training.evaluation import evaluate
from training.predict import OnnxBackend, PredictError, TorchBackend, check_compatible, load_backend, predict
from training.trainer import load_training_state

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = ["--enc-layers", "1", "--dec-layers", "2", "--dim-feedforward", "64", "--num-queries", "3",
              "--nheads", "4", "--input-dropout", "0.1"]


def _data_flags(split) -> list[str]:
    config = split.dataset_config()
    return ["--v-feat-dirs", *map(str, config.v_feat_dirs), "--t-feat-dir", str(config.t_feat_dir),
            "--max-v-l", str(split.spec.max_clips)]


def _train(split, out_dir: Path, *extra: str) -> int:
    return train_cli.main(["--train-path", str(split.annotation_path), *_data_flags(split), *TINY_MODEL,
                           "--bsz", "8", "--out-dir", str(out_dir), "--no-progress", *extra])


@pytest.fixture(scope="module")
def trained(synthetic_train, tmp_path_factory) -> Path:
    """Two epochs with evaluation after each (validating on the training split itself)."""
    out = tmp_path_factory.mktemp("run")
    assert _train(synthetic_train, out, "--n-epoch", "2", "--eval-path", str(synthetic_train.annotation_path),
                  "--eval-every", "1") == 0
    return out


def test_training_writes_official_checkpoints(trained):
    state = load_training_state(trained / "model_latest.ckpt")
    assert set(state) == {"model", "optimizer", "lr_scheduler", "epoch", "opt"}
    assert state["epoch"] == 1 and isinstance(state["opt"], argparse.Namespace)
    assert state["opt"].v_feat_dim == 34 and state["opt"].enc_layers == 1  # live official opt: TEF included
    assert state["optimizer"]["state"]  # AdamW moments saved for --resume
    assert (trained / "model_best.ckpt").is_file() and (trained / "best_val_preds.jsonl").is_file()


def test_training_logs_losses_and_validation_metrics(trained):
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    train_rows = {(r["epoch"], r["name"]): float(r["value"]) for r in rows if r["split"] == "train"}
    for epoch in ("1", "2"):
        for name in ("loss_overall", "loss_span", "loss_giou", "loss_label", "loss_saliency", "loss_vtc",
                     "loss_ctc", "loss_span_0", "lr"):
            assert np.isfinite(train_rows[(epoch, name)])
    val_names = {r["name"] for r in rows if r["split"] == "val"}
    assert {"MR-full-mAP", "MR-full-R1@0.5", "HL-min-VeryGood-mAP"} <= val_names


def test_resume_continues_from_the_next_epoch(trained, synthetic_train, tmp_path):
    resumed = tmp_path / "resumed"
    assert _train(synthetic_train, resumed, "--n-epoch", "3", "--resume", str(trained / "model_latest.ckpt")) == 0
    before = load_training_state(trained / "model_latest.ckpt")
    after = load_training_state(resumed / "model_latest.ckpt")
    assert after["epoch"] == 2
    steps_per_epoch = 3  # 24 queries / batch 8
    first = next(iter(after["optimizer"]["state"].values()))["step"]
    assert int(first) == int(next(iter(before["optimizer"]["state"].values()))["step"]) + steps_per_epoch
    epochs = {r["epoch"] for r in csv.DictReader((resumed / "metrics.csv").open())}
    assert epochs == {"3"}


def test_same_seed_gives_the_same_training(synthetic_train, tmp_path):
    losses = []
    for run in ("a", "b"):
        assert _train(synthetic_train, tmp_path / run, "--n-epoch", "1", "--seed", "7") == 0
        rows = csv.DictReader((tmp_path / run / "metrics.csv").open())
        losses.append([r["value"] for r in rows if r["name"] == "loss_overall"])
    assert losses[0] == losses[1]


def test_predict_cli_writes_official_jsonl_that_evaluates(trained, synthetic_train, tmp_path):
    out = tmp_path / "preds.jsonl"
    assert predict_cli.main([str(trained / "model_latest.ckpt"), "--data-path", str(synthetic_train.annotation_path),
                             *_data_flags(synthetic_train), "--out", str(out), "--no-progress"]) == 0
    rows, annotations = read_jsonl(out), read_jsonl(synthetic_train.annotation_path)
    assert [r["qid"] for r in rows] == [a["qid"] for a in annotations]
    for row, annotation in zip(rows, annotations, strict=True):
        assert set(row) == {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}
        scores = [w[2] for w in row["pred_relevant_windows"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(0 <= w[0] <= w[1] <= annotation["duration"] and w[0] % 2 == 0 for w in row["pred_relevant_windows"])
        assert len(row["pred_saliency_scores"]) == annotation["duration"] / 2
    assert set(evaluate(rows, annotations)["brief"]) >= {"MR-full-R1@0.5", "HL-min-VeryGood-mAP"}


def _long_split(synthetic_train, root: Path, parts: int = 4) -> tuple[Path, list[Path], int]:
    """One query whose video is ``parts`` synthetic videos end to end (longer than the model's 40 clips).

    Returns the annotation path, the video feature folders and the video's clip count.
    """
    config = synthetic_train.dataset_config()
    records = read_jsonl(synthetic_train.annotation_path)[:parts]
    folders = [root / folder.name for folder in config.v_feat_dirs]
    clips = 0
    for folder, source in zip(folders, config.v_feat_dirs, strict=True):
        folder.mkdir(parents=True)
        video = np.concatenate([np.load(source / f"{r['vid']}.npz")["features"] for r in records])
        np.savez(folder / "long.npz", features=video)
        clips = len(video)
    annotation = root / "long.jsonl"
    annotation.write_text(json.dumps({**records[0], "vid": "long", "duration": clips * 2.0}) + "\n")
    return annotation, folders, clips


def test_predict_windows_videos_longer_than_the_model_with_the_shared_code(trained, synthetic_train, tmp_path):
    """Windows of the model's 40 clips, TEF relative to each window (the crop as the dataset builds it),
    merged by trdetr_common.windows; one saliency per clip of the whole video. --max-v-l 40 cuts instead."""
    from trdetr_common.features import build_text_features, build_video_features
    from trdetr_common.windows import WindowOutput, merge_moments, merge_saliency, plan_windows

    annotation, folders, clips = _long_split(synthetic_train, tmp_path)
    flags = ["--data-path", str(annotation), "--v-feat-dirs", *map(str, folders),
             "--t-feat-dir", str(synthetic_train.dataset_config().t_feat_dir), "--no-progress"]
    checkpoint = str(trained / "model_latest.ckpt")
    assert predict_cli.main([checkpoint, *flags, "--out", str(tmp_path / "w.jsonl"), "--window-stride", "0.5",
                             "--moment-merge", "nms"]) == 0
    assert predict_cli.main([checkpoint, *flags, "--out", str(tmp_path / "cut.jsonl"), "--max-v-l", "40"]) == 0
    row, cut = read_jsonl(tmp_path / "w.jsonl")[0], read_jsonl(tmp_path / "cut.jsonl")[0]

    plan = plan_windows(clips, 40, 20)
    groups = [np.load(folder / "long.npz")["features"] for folder in folders]
    crops = np.stack([build_video_features([g[s:s + 40] for g in groups]) for s in plan.starts])
    text = build_text_features(np.load(synthetic_train.dataset_config().t_feat_dir / f"qid{row['qid']}.npz")
                               ["last_hidden_state"])
    out = TorchBackend.from_checkpoint(trained / "model_latest.ckpt")(
        {"src_txt": np.repeat(text[None], len(crops), 0), "src_txt_mask": np.ones((len(crops), len(text)), np.float32),
         "src_vid": crops, "src_vid_mask": np.ones(crops.shape[:2], np.float32)})
    windows = [WindowOutput(out["pred_logits"][k], out["pred_spans"][k], out["saliency_scores"][k])
               for k in range(len(crops))]
    expected = merge_moments(windows, plan, clip_length_s=2.0, rule="nms", top_k=3)
    assert plan.num_windows >= 2  # at least 4 x 12 clips
    assert row["pred_relevant_windows"] == [[s, e, float(f"{p:.4f}")] for s, e, p in expected.tolist()]
    saliency = merge_saliency([w.saliency for w in windows], plan)
    assert row["pred_saliency_scores"] == saliency.astype(np.float16).astype(float).tolist()
    assert len(cut["pred_saliency_scores"]) == 40


def test_predict_refuses_features_of_the_wrong_width(trained, synthetic_train, capsys):
    config = synthetic_train.dataset_config()
    args = [str(trained / "model_latest.ckpt"), "--data-path", str(synthetic_train.annotation_path),
            "--v-feat-dirs", str(config.v_feat_dirs[0]), "--t-feat-dir", str(config.t_feat_dir), "--out", "x.jsonl"]
    assert predict_cli.main(args) == 2
    assert "the model takes 2 video feature group(s) in this order: group0_dim24 (24), group1_dim8 (8)" in \
        capsys.readouterr().err
    with pytest.raises(PredictError, match="bundle written by trdetr-export"):
        load_backend(config.t_feat_dir)


@pytest.mark.parametrize("model", ["checkpoint", "bundle"])
def test_predict_refuses_feature_folders_in_the_wrong_order(model, trained, exported_bundle, synthetic_train,
                                                            tmp_path, capsys):
    """The checkpoint and the manifest record the group names, order and widths; a swap is an error."""
    config = synthetic_train.dataset_config()
    source = str(trained / "model_latest.ckpt") if model == "checkpoint" else str(exported_bundle)
    args = [source, "--data-path", str(synthetic_train.annotation_path), "--v-feat-dirs",
            *map(str, reversed(config.v_feat_dirs)), "--t-feat-dir", str(config.t_feat_dir),
            "--out", str(tmp_path / "x.jsonl"), "--no-progress"]
    assert predict_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--v-feat-dirs gives group1_dim8 (8), group0_dim24 (24): the folders are in the wrong order, list " \
        "them as group0_dim24 group1_dim8" in err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(("data", "message"), [
    ([("clip_features", 512), ("slowfast_features", 512)], "wrong order, list them as slowfast_features clip_features"),
    ([("b", 512), ("a", 512)], None),  # equal widths, names that say nothing: cannot be told apart
    ([("slowfast_features", 512), ("clip_features", 512)], None),
    ([("x", 512), ("y", 256)], "the widths differ"),
    ([("x", 512)], "give one folder per group"),
])
def test_video_groups_are_matched_by_name_then_width(data, message):
    from training.predict import check_video_groups

    model = [("slowfast", 512), ("clip", 512)]
    if message is None:
        check_video_groups(model, data)
    else:
        with pytest.raises(PredictError, match=message):
            check_video_groups(model, data)
    check_video_groups(None, data)  # unknown layout: only the total width is checked


def test_train_cli_reports_a_missing_feature_folder(synthetic_train, tmp_path, capsys):
    code = train_cli.main(["--train-path", str(synthetic_train.annotation_path), "--v-feat-dirs",
                           str(tmp_path / "nowhere"), "--t-feat-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert code == 2
    assert "file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported_bundle(trained, tmp_path_factory) -> Path:
    """trdetr-export converts our checkpoint without flags (the groups come from the checkpoint)."""
    bundle = tmp_path_factory.mktemp("export") / "bundle"
    done = subprocess.run([sys.executable, "-m", "model_export.cli", str(trained / "model_latest.ckpt"),
                           "--out", str(bundle), "--random-cases", "3", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return bundle


@pytest.mark.slow
def test_exported_bundle_predicts_like_the_checkpoint(trained, exported_bundle, synthetic_train):
    """ORT predictions of the exported bundle equal the torch ones."""
    bundle = exported_bundle
    preprocessing = json.loads((bundle / "manifest.json").read_text())["preprocessing"]
    assert preprocessing["video_groups_source"] == "checkpoint"
    assert [(g["name"], g["dim"]) for g in preprocessing["video_groups"]] == [("group0_dim24", 24), ("group1_dim8", 8)]
    dataset = QVHighlightsDataset(synthetic_train.dataset_config(load_labels=False))
    onnx_backend = OnnxBackend(bundle)
    check_compatible(onnx_backend, dataset)
    torch_rows = predict(TorchBackend.from_checkpoint(trained / "model_latest.ckpt"), dataset, 8, progress=False)
    onnx_rows = predict(onnx_backend, dataset, 8, progress=False)
    for t, o in zip(torch_rows, onnx_rows, strict=True):
        np.testing.assert_allclose(np.array(t["pred_relevant_windows"]), np.array(o["pred_relevant_windows"]),
                                   atol=2e-3)
        np.testing.assert_allclose(t["pred_saliency_scores"], o["pred_saliency_scores"], atol=1e-2)
    json.dumps(onnx_rows)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_service_answers_with_the_trained_bundle(trained, exported_bundle, synthetic_train):
    """Train -> export -> serve: the service's moments for a synthetic video equal the torch model's."""
    import base64
    import io
    import os
    import uuid

    import httpx

    from service.app import create_app
    from service.settings import Settings
    from trdetr_common.postprocess import rank_moments

    dataset = QVHighlightsDataset(synthetic_train.dataset_config(load_labels=False))
    item, config = dataset[0], synthetic_train.dataset_config()
    vid, qid = item["meta"]["vid"], item["meta"]["qid"]
    groups = {folder.name: np.load(folder / f"{vid}.npz")["features"] for folder in config.v_feat_dirs}
    buffer = io.BytesIO()
    np.savez(buffer, **groups)
    text = np.load(config.t_feat_dir / f"qid{qid}.npz")["last_hidden_state"].astype(np.float32)
    query = io.BytesIO()
    np.save(query, text)

    torch_out = TorchBackend.from_checkpoint(trained / "model_latest.ckpt")(
        {"src_txt": item["text"][None], "src_txt_mask": np.ones((1, len(item["text"])), np.float32),
         "src_vid": item["video"][None], "src_vid_mask": np.ones((1, len(item["video"])), np.float32)})
    expected = rank_moments(torch_out["pred_logits"][0], torch_out["pred_spans"][0], num_clips=len(item["video"]),
                            clip_length_s=2.0)

    settings = Settings(bundle_dir=exported_bundle, redis_url=os.environ.get("REDIS_URL"), device="cpu",
                        redis_key_prefix=f"test-train-{uuid.uuid4().hex[:8]}", warmup_runs=1)
    app = create_app(settings)
    body = {"video": {"format": "npz", "data_b64": base64.b64encode(buffer.getvalue()).decode()},
            "queries": [{"features_b64": base64.b64encode(query.getvalue()).decode()}]}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        response = await client.post("/v1/moments", json=body)
    assert response.status_code == 200, response.text
    moments = response.json()["results"][0]["moments"]
    got = np.array([[m["start"], m["end"], m["score"]] for m in moments])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_few_epochs_reduce_the_training_loss(tmp_path, synthetic_spec):
    from training.synthetic import write_synthetic_split

    split = write_synthetic_split(tmp_path / "data", "train", 48, seed=5, spec=synthetic_spec)
    assert _train(split, tmp_path / "run", "--n-epoch", "5", "--lr", "5e-4", "--dropout", "0") == 0
    losses = [float(r["value"]) for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open())
              if r["name"] == "loss_overall"]
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0]


def test_checkpoints_record_the_video_feature_groups_for_the_exporter(trained):
    """trdetr-export reads the groups from the checkpoint, so the bundle normalises each group on its own."""
    from model_export import read_checkpoint

    loaded = read_checkpoint(trained / "model_latest.ckpt")
    assert loaded.format == "official"
    assert loaded.raw_opt["video_feature_groups"] == [["group0_dim24", 24], ["group1_dim8", 8]]
