"""Reader for the QVHighlights release format (annotations jsonl + per-video / per-query feature files).

On disk::

    annotations.jsonl        one query per line: qid, query, vid, duration, relevant_windows,
                             relevant_clip_ids, saliency_scores (the label keys only when load_labels)
    <v_feat_dir>/<vid>.npz   one folder per video feature group, array ``features`` (clips, d_g)
    <t_feat_dir>/qid<qid>.npz  array ``last_hidden_state`` (tokens, d_t)

Preprocessing is the official ``StartEndDataset``'s, via ``trdetr_common.features`` (per-group L2 norm,
truncation to ``max_v_l`` and to the shortest group, TEF; text L2 norm and truncation to ``max_q_l``).
Labels follow the official dataset too: up to ``max_windows`` normalised (centre, width) spans, one hard and
one easy positive/negative saliency clip each, the all-clips summed-score array and the relevant-clip mask.

Two deliberate differences: relevant clip ids past the (truncated) video are dropped from the score array and
mask instead of growing them by one element (the official padding then no longer lines up with the video),
and the easy positive is clamped to the last clip like the hard ones.

Missing or corrupt feature files are found when the dataset is built: with ``on_bad_file="fail"`` the first
one raises ``FeatureFileError`` naming the file and the query; with ``"skip"`` the query is left out and
listed in ``dataset.skipped``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from trdetr_common.features import FeatureError, build_text_features, build_video_features, pad_batch

logger = logging.getLogger(__name__)

LABEL_KEYS = ("relevant_windows", "relevant_clip_ids", "saliency_scores")
META_KEYS = ("qid", "query", "vid", "duration")


class DatasetError(ValueError):
    """The dataset cannot be read; the message names the file/line and what to fix."""


class FeatureFileError(DatasetError):
    """A feature file is missing, unreadable or holds an unusable array."""


@dataclass(frozen=True)
class DatasetConfig:
    """Where the data lies and how to preprocess it (defaults: the official QVHighlights settings)."""

    annotation_path: Path
    v_feat_dirs: tuple[Path, ...]
    t_feat_dir: Path
    max_q_l: int = 32
    max_v_l: int | None = 75  # None: keep every clip
    clip_length: float = 2.0
    max_windows: int = 5
    normalize_v: bool = True
    normalize_t: bool = True
    use_tef: bool = True
    load_labels: bool = True
    on_bad_file: Literal["skip", "fail"] = "fail"
    cache_features: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotation_path", Path(self.annotation_path))
        object.__setattr__(self, "v_feat_dirs", tuple(Path(p) for p in self.v_feat_dirs))
        object.__setattr__(self, "t_feat_dir", Path(self.t_feat_dir))
        if not self.v_feat_dirs:
            raise DatasetError("DatasetConfig needs at least one video feature folder (v_feat_dirs)")
        if self.on_bad_file not in ("skip", "fail"):
            raise DatasetError(f"on_bad_file must be 'skip' or 'fail', got {self.on_bad_file!r}")


def read_jsonl(path: Path) -> list[dict]:
    """Parse a jsonl file; a bad line raises DatasetError with its line number."""
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist")
    records = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return records


def load_npz_array(path: Path, key: str) -> np.ndarray:
    """Read array ``key`` of an .npz file; any failure becomes a FeatureFileError naming the file."""
    if not path.is_file():
        raise FeatureFileError(f"{path}: file not found")
    try:
        with np.load(path) as archive:
            if key not in archive.files:
                raise FeatureFileError(f"{path}: has no array '{key}' (found {archive.files})")
            return archive[key]
    except FeatureFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise FeatureFileError(f"{path}: unreadable or corrupt .npz ({type(error).__name__}: {error})") from None


def _check_record(record: dict, number: int, load_labels: bool) -> None:
    needed = META_KEYS + (LABEL_KEYS if load_labels else ())
    missing = [key for key in needed if key not in record]
    if missing:
        raise DatasetError(f"annotation line {number} (qid {record.get('qid')}): missing keys {missing}")
    if load_labels and not record["relevant_clip_ids"]:
        raise DatasetError(f"annotation line {number} (qid {record['qid']}): relevant_clip_ids is empty")
    if load_labels and len(record["saliency_scores"]) != len(record["relevant_clip_ids"]):
        raise DatasetError(f"annotation line {number} (qid {record['qid']}): saliency_scores and "
                           "relevant_clip_ids differ in length")


class QVHighlightsDataset(Dataset):
    """One item per query: ``{"meta": record, "video": (L_v, D_v), "text": (L_t, D_t), labels...}``.

    Label entries (with ``load_labels``): ``span_labels`` (n_windows, 2) normalised cxw,
    ``saliency_pos_labels`` / ``saliency_neg_labels`` (2,) clip indices (hard, easy),
    ``saliency_all_labels`` (L_v,) summed annotator scores, ``pos_mask`` (L_v,) 1 on relevant clips.
    """

    def __init__(self, config: DatasetConfig, seed: int = 0) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self._cache: dict[tuple, np.ndarray] = {}
        self.skipped: list[tuple[object, str]] = []
        self.records = self._usable_records(read_jsonl(config.annotation_path))

    def _usable_records(self, records: list[dict]) -> list[dict]:
        usable, video_errors = [], {}
        for number, record in enumerate(records, start=1):
            _check_record(record, number, self.config.load_labels)
            try:
                self._check_video(record["vid"], video_errors)
                self.text_features(record["qid"])
            except FeatureFileError as error:
                message = f"qid {record['qid']} (vid {record['vid']}): {error}"
                if self.config.on_bad_file == "fail":
                    raise FeatureFileError(message + " (use on_bad_file='skip' / --skip-bad-files to leave "
                                           "such queries out)") from None
                logger.warning("skipping %s", message)
                self.skipped.append((record["qid"], str(error)))
                continue
            usable.append(record)
        if not usable:
            raise DatasetError(f"{self.config.annotation_path}: no usable query ({len(self.skipped)} skipped)")
        return usable

    def _check_video(self, vid: str, errors: dict[str, str | None]) -> None:
        """Load each video once; remember its error so every query of a bad video is reported."""
        if vid not in errors:
            try:
                self.video_features(vid)
                errors[vid] = None
            except FeatureFileError as error:
                errors[vid] = str(error)
        if errors[vid] is not None:
            raise FeatureFileError(errors[vid])

    def _cached(self, key: tuple, build) -> np.ndarray:
        if key in self._cache:
            return self._cache[key]
        value = build()
        if self.config.cache_features:
            self._cache[key] = value
        return value

    def video_features(self, vid: str) -> np.ndarray:
        """(L_v, sum d_g [+2 TEF]) float32 model input of one video."""
        def build() -> np.ndarray:
            paths = [folder / f"{vid}.npz" for folder in self.config.v_feat_dirs]
            groups = [load_npz_array(path, "features") for path in paths]
            try:
                return build_video_features(groups, normalize=self.config.normalize_v, tef=self.config.use_tef,
                                            max_clips=self.config.max_v_l)
            except FeatureError as error:
                raise FeatureFileError(f"{', '.join(map(str, paths))}: {error}") from None
        return self._cached(("v", vid), build)

    def text_features(self, qid: object) -> np.ndarray:
        """(L_t, d_t) float32 model input of one query."""
        def build() -> np.ndarray:
            path = self.config.t_feat_dir / f"qid{qid}.npz"
            tokens = load_npz_array(path, "last_hidden_state")
            try:
                return build_text_features(tokens, normalize=self.config.normalize_t, max_tokens=self.config.max_q_l)
            except FeatureError as error:
                raise FeatureFileError(f"{path}: {error}") from None
        return self._cached(("t", qid), build)

    def video_group_dims(self) -> list[tuple[str, int]]:
        """(folder name, feature width) of each video group, read from the first usable video."""
        vid = self.records[0]["vid"]
        return [(folder.name, int(load_npz_array(folder / f"{vid}.npz", "features").shape[1]))
                for folder in self.config.v_feat_dirs]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        video = self.video_features(record["vid"])
        item = {"meta": record, "video": video, "text": self.text_features(record["qid"])}
        if self.config.load_labels:
            item.update(self.labels(record, len(video)))
        return item

    def labels(self, record: dict, num_clips: int) -> dict[str, np.ndarray]:
        """Training targets of one query for a video of ``num_clips`` clips."""
        pos, neg, all_scores = saliency_labels(record["relevant_clip_ids"], record["saliency_scores"],
                                               num_clips, self.rng)
        relevant = [c for c in record["relevant_clip_ids"] if c < num_clips]
        pos_mask = np.zeros(num_clips, dtype=np.float32)
        pos_mask[relevant] = 1.0
        return {"span_labels": span_labels(record["relevant_windows"], num_clips, self.config.clip_length,
                                           self.config.max_windows, self.rng),
                "saliency_pos_labels": pos, "saliency_neg_labels": neg,
                "saliency_all_labels": all_scores, "pos_mask": pos_mask}


def span_labels(windows: list, num_clips: int, clip_length: float, max_windows: int,
                rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float32 normalised (centre, width) of at most ``max_windows`` windows (a random subset if more).

    Windows are in seconds and normalised by ``num_clips * clip_length`` as the official dataset does.
    """
    windows = np.asarray(windows, dtype=np.float32).reshape(-1, 2)
    if len(windows) > max_windows:
        windows = windows[rng.permutation(len(windows))[:max_windows]]
    xx = windows / np.float32(num_clips * clip_length)
    return np.stack([xx.sum(1) * 0.5, xx[:, 1] - xx[:, 0]], axis=1).astype(np.float32)


def saliency_labels(clip_ids: list[int], scores: list, num_clips: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official ``get_saliency_labels_all`` with one hard and one easy pair.

    Hard positive/negative: the relevant clips with the highest/lowest summed annotator score; easy positive: a
    random relevant clip; easy negative: a random non-relevant clip (the hard ones are repeated when every clip
    is relevant). Returns pos (2,), neg (2,) int64 clip indices and the (num_clips,) float32 score array.
    """
    agg = np.asarray(scores, dtype=np.float32).reshape(len(clip_ids), -1).sum(1)
    order = np.argsort(agg)
    last = num_clips - 1
    hard_pos, hard_neg = min(clip_ids[order[-1]], last), min(clip_ids[order[0]], last)
    easy_pool = sorted(set(range(num_clips)) - set(clip_ids))
    if easy_pool:
        easy_pos = min(int(rng.choice(clip_ids)), last)
        easy_neg = int(rng.choice(easy_pool))
    else:
        easy_pos, easy_neg = hard_pos, hard_neg
    all_scores = np.zeros(num_clips, dtype=np.float32)
    for clip, score in zip(clip_ids, agg, strict=True):
        if clip < num_clips:
            all_scores[clip] = score
    return (np.array([hard_pos, easy_pos], dtype=np.int64), np.array([hard_neg, easy_neg], dtype=np.int64),
            all_scores)


@dataclass
class Batch:
    """A padded batch: ``model_inputs`` for ``model(**model_inputs)``, ``targets`` for the criterion.

    model_inputs: src_txt (B, L_t, D_t), src_txt_mask (B, L_t), src_vid (B, L_v, D_v), src_vid_mask (B, L_v);
    float32 masks with 1 = valid (official padded-batch layout).
    targets (None without labels): span_labels list of (n_i, 2), saliency_pos_labels / saliency_neg_labels
    (B, 2) int64, saliency_all_labels (B, L_v), src_pos_mask (B, L_v) and the two masks again.
    """

    meta: list[dict]
    model_inputs: dict[str, torch.Tensor]
    targets: dict | None = field(default=None)

    def to(self, device: torch.device | str) -> Batch:
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            return [move(v) for v in value] if isinstance(value, list) else value
        targets = None if self.targets is None else {k: move(v) for k, v in self.targets.items()}
        return Batch(self.meta, {k: move(v) for k, v in self.model_inputs.items()}, targets)


def collate(items: list[dict]) -> Batch:
    """Pad a list of dataset items into a Batch (zero padding, masks 1 = valid)."""
    vid, vid_mask = pad_batch([item["video"] for item in items])
    txt, txt_mask = pad_batch([item["text"] for item in items])
    inputs = {"src_txt": torch.from_numpy(txt), "src_txt_mask": torch.from_numpy(txt_mask),
              "src_vid": torch.from_numpy(vid), "src_vid_mask": torch.from_numpy(vid_mask)}
    if "span_labels" not in items[0]:
        return Batch([item["meta"] for item in items], inputs)
    targets = {
        "span_labels": [torch.from_numpy(item["span_labels"]) for item in items],
        "saliency_pos_labels": torch.from_numpy(np.stack([item["saliency_pos_labels"] for item in items])),
        "saliency_neg_labels": torch.from_numpy(np.stack([item["saliency_neg_labels"] for item in items])),
        "saliency_all_labels": torch.from_numpy(pad_batch([item["saliency_all_labels"] for item in items])[0]),
        "src_pos_mask": torch.from_numpy(pad_batch([item["pos_mask"] for item in items])[0]),
        "src_vid_mask": inputs["src_vid_mask"], "src_txt_mask": inputs["src_txt_mask"],
    }
    return Batch([item["meta"] for item in items], inputs, targets)
