"""Synthetic data in the QVHighlights on-disk format, for tests and the training smoke benchmark.

Every query belongs to one of ``num_concepts`` concepts. A concept has a prototype vector per video feature
group and one for text. A video of ``L`` clips (``min_clips``..``max_clips``, 2 s each) is background noise
with the query's moment planted (clips = concept prototype + noise) and, with ``distractor_prob``, a moment of a
*different* concept planted elsewhere, so only the text tells which moment is wanted. The query's token
features are its concept's text prototype + noise. Relevant clips get three annotator saliency scores (0..4),
highest in the middle of the moment.

Layout written under ``root`` (what ``training.dataset.DatasetConfig`` reads)::

    <split>.jsonl
    video/<group name>/<vid>.npz   array "features" (L, dim)
    text/qid<qid>.npz              array "last_hidden_state" (tokens, text_dim)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported when used: writing data (trdetr-synth) needs no torch
    from training.dataset import DatasetConfig


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic world; the concepts are drawn from ``concept_seed`` (shared by all splits)."""

    group_dims: tuple[int, ...] = (24, 8)
    text_dim: int = 16
    num_concepts: int = 8
    min_clips: int = 16
    max_clips: int = 75
    min_tokens: int = 3
    max_tokens: int = 12
    moment_noise: float = 0.5
    text_noise: float = 0.5
    distractor_prob: float = 0.5
    clip_length: float = 2.0
    concept_seed: int = 1234

    @property
    def group_names(self) -> list[str]:
        return [f"group{i}_dim{d}" for i, d in enumerate(self.group_dims)]

    @property
    def video_input_dim(self) -> int:
        """Width of the model's src_vid: all groups + 2 TEF columns."""
        return sum(self.group_dims) + 2


@dataclass(frozen=True)
class SyntheticSplit:
    """Where a written split lies; ``dataset_config()`` reads it back."""

    root: Path
    split: str
    spec: SyntheticSpec

    @property
    def annotation_path(self) -> Path:
        return self.root / f"{self.split}.jsonl"

    def dataset_config(self, **overrides) -> DatasetConfig:
        from training.dataset import DatasetConfig

        values = dict(annotation_path=self.annotation_path,
                      v_feat_dirs=tuple(self.root / "video" / n for n in self.spec.group_names),
                      t_feat_dir=self.root / "text", clip_length=self.spec.clip_length,
                      max_v_l=self.spec.max_clips)
        values.update(overrides)
        return DatasetConfig(**values)


def _concepts(spec: SyntheticSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """Per group (num_concepts, d_g) video prototypes and (num_concepts, text_dim) text prototypes."""
    rng = np.random.default_rng(spec.concept_seed)
    video = [rng.standard_normal((spec.num_concepts, d)) for d in spec.group_dims]
    return video, rng.standard_normal((spec.num_concepts, spec.text_dim))


def _window(rng: np.random.Generator, num_clips: int, avoid: tuple[int, int] | None) -> tuple[int, int]:
    """A random [start, end) clip range, 2..~40% of the video long, not overlapping ``avoid``."""
    for _ in range(100):
        width = int(rng.integers(2, max(3, int(0.4 * num_clips)) + 1))
        start = int(rng.integers(0, num_clips - width + 1))
        if avoid is None or start >= avoid[1] or start + width <= avoid[0]:
            return start, start + width
    raise RuntimeError("could not place a non-overlapping window; raise min_clips")


def _plant(groups: list[np.ndarray], protos: list[np.ndarray], concept: int, window: tuple[int, int],
           noise: float, rng: np.random.Generator) -> None:
    start, end = window
    for group, proto in zip(groups, protos, strict=True):
        scale = np.linalg.norm(proto[concept])
        group[start:end] = proto[concept] + noise * scale / np.sqrt(len(proto[concept])) * \
            rng.standard_normal((end - start, group.shape[1]))


def _saliency(window: tuple[int, int], rng: np.random.Generator) -> list[list[int]]:
    """Three annotator scores (0..4) per relevant clip, peaking in the middle of the moment."""
    start, end = window
    centre, half = (start + end - 1) / 2, max((end - start) / 2, 1.0)
    base = [4 - 3 * abs(c - centre) / half for c in range(start, end)]
    return [[int(np.clip(round(b + rng.normal(0, 0.5)), 0, 4)) for _ in range(3)] for b in base]


def _example(qid: int, spec: SyntheticSpec, protos: tuple, rng: np.random.Generator):
    video_protos, text_protos = protos
    num_clips = int(rng.integers(spec.min_clips, spec.max_clips + 1))
    concept = int(rng.integers(spec.num_concepts))
    groups = [rng.standard_normal((num_clips, d)) for d in spec.group_dims]
    window = _window(rng, num_clips, None)
    _plant(groups, video_protos, concept, window, spec.moment_noise, rng)
    if rng.random() < spec.distractor_prob:
        other = int((concept + rng.integers(1, spec.num_concepts)) % spec.num_concepts)
        _plant(groups, video_protos, other, _window(rng, num_clips, window), spec.moment_noise, rng)
    tokens = int(rng.integers(spec.min_tokens, spec.max_tokens + 1))
    text = text_protos[concept] + spec.text_noise * rng.standard_normal((tokens, spec.text_dim))
    vid = f"synthetic{qid:05d}_0.0_{num_clips * spec.clip_length:.1f}"
    record = {"qid": qid, "query": f"synthetic concept {concept}", "vid": vid,
              "duration": num_clips * spec.clip_length,
              "relevant_windows": [[window[0] * spec.clip_length, window[1] * spec.clip_length]],
              "relevant_clip_ids": list(range(*window)), "saliency_scores": _saliency(window, rng)}
    return record, [g.astype(np.float32) for g in groups], text.astype(np.float32)


def write_synthetic_split(root: str | Path, split: str, num_queries: int, *, seed: int,
                          spec: SyntheticSpec | None = None, first_qid: int = 0) -> SyntheticSplit:
    """Write ``num_queries`` one-query videos of ``split`` under ``root`` and return where they lie.

    Use a different ``seed`` and ``first_qid`` per split so held-out videos and qids are new.
    """
    spec = spec or SyntheticSpec()
    root = Path(root)
    folders = [root / "video" / name for name in spec.group_names]
    for folder in [*folders, root / "text"]:
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    protos = _concepts(spec)
    lines = []
    for i in range(num_queries):
        qid = first_qid + i
        record, groups, text = _example(qid, spec, protos, rng)
        for folder, group in zip(folders, groups, strict=True):
            np.savez(folder / f"{record['vid']}.npz", features=group)
        np.savez(root / "text" / f"qid{qid}.npz", last_hidden_state=text)
        lines.append(json.dumps(record))
    (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return SyntheticSplit(root, split, spec)
