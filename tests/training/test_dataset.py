"""The QVHighlights-format reader: preprocessing, labels, batching and bad-file handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.dataset import (
    DatasetConfig,
    DatasetError,
    FeatureFileError,
    QVHighlightsDataset,
    collate,
    read_jsonl,
    saliency_labels,
    span_labels,
)

from .conftest import shared_path


def _tiny_dataset(root: Path, records: list[dict], groups: dict[str, list[np.ndarray]],
                  text_dim: int = 6) -> DatasetConfig:
    """Write ``records`` with the given per-vid group arrays and random text features."""
    rng = np.random.default_rng(0)
    names = [f"g{i}" for i in range(len(next(iter(groups.values()))))]
    for vid, arrays in groups.items():
        for name, array in zip(names, arrays, strict=True):
            (root / name).mkdir(parents=True, exist_ok=True)
            np.savez(root / name / f"{vid}.npz", features=array)
    (root / "text").mkdir(exist_ok=True)
    for record in records:
        np.savez(root / "text" / f"qid{record['qid']}.npz", last_hidden_state=rng.standard_normal((40, text_dim)))
    (root / "ann.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return DatasetConfig(root / "ann.jsonl", tuple(root / n for n in names), root / "text")


def _record(qid: int, vid: str, windows=((4, 10),), clip_ids=(2, 3, 4), scores=((1, 2, 3), (4, 4, 4), (0, 1, 0))):
    return {"qid": qid, "query": "q", "vid": vid, "duration": 40, "relevant_windows": [list(w) for w in windows],
            "relevant_clip_ids": list(clip_ids), "saliency_scores": [list(s) for s in scores]}


def test_synthetic_items_have_the_official_preprocessing(synthetic_train, synthetic_spec):
    dataset = QVHighlightsDataset(synthetic_train.dataset_config())
    item = dataset[0]
    video, text = item["video"], item["text"]
    length = len(video)
    assert video.shape == (length, synthetic_spec.video_input_dim) and video.dtype == np.float32
    assert text.shape[1] == synthetic_spec.text_dim
    # each group is L2-normalised on its own, then the two TEF columns [i/T, (i+1)/T]
    np.testing.assert_allclose(np.linalg.norm(video[:, :24], axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(video[:, 24:32], axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(video[:, 32], np.arange(length) / length, atol=1e-6)
    np.testing.assert_allclose(video[:, 33], (np.arange(length) + 1) / length, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)


def test_synthetic_labels_match_the_planted_moment(synthetic_train):
    dataset = QVHighlightsDataset(synthetic_train.dataset_config())
    for item in (dataset[i] for i in range(len(dataset))):
        meta, length = item["meta"], len(item["video"])
        start, end = meta["relevant_windows"][0]
        np.testing.assert_allclose(item["span_labels"], [[(start + end) / 2 / (2 * length), (end - start) / (2 * length)]],
                                   rtol=1e-6)
        relevant = meta["relevant_clip_ids"]
        assert np.flatnonzero(item["pos_mask"]).tolist() == relevant
        assert np.flatnonzero(item["saliency_all_labels"]).tolist() == [
            c for c, s in zip(relevant, meta["saliency_scores"], strict=True) if sum(s) > 0]
        hard_pos, easy_pos = item["saliency_pos_labels"]
        hard_neg, easy_neg = item["saliency_neg_labels"]
        assert item["saliency_all_labels"][hard_pos] == item["saliency_all_labels"][relevant].max()
        assert easy_pos in relevant and hard_neg in relevant and easy_neg not in relevant


def test_video_is_cut_to_max_v_l_and_labels_follow(synthetic_train):
    dataset = QVHighlightsDataset(synthetic_train.dataset_config(max_v_l=10, max_q_l=2))
    for item in (dataset[i] for i in range(len(dataset))):
        assert len(item["video"]) <= 10 and len(item["text"]) <= 2
        assert item["saliency_all_labels"].shape == item["pos_mask"].shape == (len(item["video"]),)
        assert item["saliency_pos_labels"].max() < len(item["video"])


def test_groups_of_different_lengths_are_cut_to_the_shortest(tmp_path):
    rng = np.random.default_rng(1)
    config = _tiny_dataset(tmp_path, [_record(1, "v")], {"v": [rng.standard_normal((20, 5)),
                                                                 rng.standard_normal((18, 3))]})
    item = QVHighlightsDataset(config)[0]
    assert item["video"].shape == (18, 5 + 3 + 2)
    assert item["text"].shape == (32, 6)  # official max_q_l


def test_at_most_max_windows_span_labels():
    windows = [[2 * i, 2 * i + 2] for i in range(7)]
    labels = span_labels(windows, num_clips=75, clip_length=2, max_windows=5, rng=np.random.default_rng(0))
    assert labels.shape == (5, 2)
    centres = set(np.round(labels[:, 0] * 150, 4))
    assert centres <= {2 * i + 1 for i in range(7)}


def test_every_clip_relevant_reuses_the_hard_pair():
    pos, neg, scores = saliency_labels([0, 1, 2], [[1, 1, 1], [4, 4, 4], [0, 0, 1]], 3, np.random.default_rng(0))
    assert pos.tolist() == [1, 1] and neg.tolist() == [2, 2]
    assert scores.tolist() == [3, 12, 1]


def test_collate_pads_and_masks(synthetic_train):
    dataset = QVHighlightsDataset(synthetic_train.dataset_config())
    items = [dataset[i] for i in range(4)]
    batch = collate(items)
    lengths = [len(i["video"]) for i in items]
    assert batch.model_inputs["src_vid"].shape == (4, max(lengths), 34)
    assert batch.model_inputs["src_vid_mask"].sum(1).tolist() == lengths
    assert batch.model_inputs["src_txt_mask"].sum(1).tolist() == [len(i["text"]) for i in items]
    assert batch.targets["saliency_all_labels"].shape == (4, max(lengths))
    assert batch.targets["saliency_pos_labels"].dtype == torch.int64
    assert len(batch.targets["span_labels"]) == 4
    for row, length in enumerate(lengths):
        assert torch.all(batch.model_inputs["src_vid"][row, length:] == 0)


def test_missing_feature_file_fails_fast_naming_it(tmp_path):
    rng = np.random.default_rng(2)
    config = _tiny_dataset(tmp_path, [_record(1, "a"), _record(2, "b")], {"a": [rng.standard_normal((20, 4))]})
    with pytest.raises(FeatureFileError, match=r"qid 2 \(vid b\).*b\.npz: file not found"):
        QVHighlightsDataset(config)


def test_bad_files_can_be_skipped_and_are_listed(tmp_path):
    rng = np.random.default_rng(3)
    records = [_record(1, "a"), _record(2, "b"), _record(3, "c"), _record(4, "d")]
    config = _tiny_dataset(tmp_path, records, {v: [rng.standard_normal((20, 4))] for v in "abc"})
    (tmp_path / "g0" / "b.npz").write_bytes(b"not a zip file")  # corrupt
    np.savez(tmp_path / "g0" / "c.npz", wrong_key=np.zeros((3, 4)))
    dataset = QVHighlightsDataset(DatasetConfig(**{**config.__dict__, "on_bad_file": "skip"}))
    assert [r["qid"] for r in dataset.records] == [1]
    reasons = dict(dataset.skipped)
    assert "corrupt" in reasons[2] and "b.npz" in reasons[2]
    assert "has no array 'features'" in reasons[3]
    assert "file not found" in reasons[4]


def test_nan_features_are_reported_by_file(tmp_path):
    bad = np.ones((20, 4))
    bad[5, 1] = np.nan
    config = _tiny_dataset(tmp_path, [_record(1, "a")], {"a": [bad]})
    with pytest.raises(FeatureFileError, match=r"a\.npz.*NaN"):
        QVHighlightsDataset(config)


def test_annotation_without_labels_is_rejected_with_its_line(tmp_path):
    rng = np.random.default_rng(4)
    record = _record(1, "a")
    del record["relevant_windows"]
    config = _tiny_dataset(tmp_path, [record], {"a": [rng.standard_normal((20, 4))]})
    with pytest.raises(DatasetError, match=r"line 1 \(qid 1\): missing keys \['relevant_windows'\]"):
        QVHighlightsDataset(config)
    assert len(QVHighlightsDataset(DatasetConfig(**{**config.__dict__, "load_labels": False}))) == 1


def test_real_qvhighlights_annotations_give_valid_labels():
    records = read_jsonl(shared_path("data", "qvhighlights", "highlight_train_release.jsonl"))[:300]
    rng = np.random.default_rng(5)
    for record in records:
        length = int(record["duration"] // 2)
        spans = span_labels(record["relevant_windows"], min(length, 75), 2, 5, rng)
        assert spans.shape[1] == 2 and (spans[:, 1] > 0).all() and (spans[:, 0] <= 1.0 + 1e-6).all()
        pos, neg, scores = saliency_labels(record["relevant_clip_ids"], record["saliency_scores"], 75, rng)
        assert scores.shape == (75,) and scores.max() <= 12
        assert pos.max() < 75 and neg.max() < 75
