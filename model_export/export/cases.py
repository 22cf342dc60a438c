"""Input sets for the parity checks: seeded random batches and the official golden fixture.

Random inputs follow the model's preprocessing contract (per-group L2 normalisation, TEF columns
from each row's own length, L2-normalised text tokens, zero padding with 0/1 float masks) through
``trdetr_common.features``, so the checks exercise the inputs the service will really send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trdetr_common.features import build_text_features, build_video_features, pad_batch, with_tef

Arrays = dict[str, np.ndarray]

# (description, [(L_v, L_t) per row]). L_v: FULL is the model's window (``max_v_l``, the longest video it
# runs on: the service windows longer videos to it), HALF its half; other lengths are capped at the window.
# L_t: -1 stands for the model's max text tokens.
FULL, HALF = -1, -2
_EDGE_SHAPES: list[tuple[str, list[tuple[int, int]]]] = [
    ("1 clip, 1 token", [(1, 1)]),
    ("1 clip", [(1, 9)]),
    ("1 token", [(40, 1)]),
    ("max_v_l clips", [(FULL, 20)]),
    ("half max_v_l clips", [(HALF, 12)]),
    ("max text tokens", [(30, -1)]),
    ("padded batch of mixed lengths", [(HALF, 5), (1, 1), (FULL, -1), (20, 9)]),
    ("padded batch, 1-clip rows", [(1, 3), (2, 1), (1, 7)]),
    ("equal lengths, no padding", [(60, 10), (60, 10)]),
]


@dataclass
class Case:
    """One model input batch, optionally with the official outputs it must reproduce.

    inputs: src_txt (B, L_t, D_t), src_txt_mask (B, L_t), src_vid (B, L_v, D_v), src_vid_mask (B, L_v).
    golden: pred_logits (B, Q, 2), pred_spans (B, Q, 2), saliency_scores (B, L_v) or None.
    """

    name: str
    inputs: Arrays
    golden: Arrays | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def video_lengths(self) -> list[int]:
        return [int(n) for n in self.inputs["src_vid_mask"].sum(axis=1)]

    @property
    def text_lengths(self) -> list[int]:
        return [int(n) for n in self.inputs["src_txt_mask"].sum(axis=1)]

    def describe(self) -> str:
        """e.g. ``random-07 (B=3, L_v=[75, 1, 9], L_t=[5, 1, 32])``."""
        b = len(self.video_lengths)
        return f"{self.name} (B={b}, L_v={self.video_lengths}, L_t={self.text_lengths})"


@dataclass(frozen=True)
class InputSpec:
    """What the model's inputs look like: group widths, TEF, normalisation and text width.

    ``audio_group_dims``: audio groups after the video groups and their TEF (empty without audio);
    ``audio_tef``: the TEF columns follow the audio groups too (official layout).
    ``max_video_clips``: the model's ``max_v_l``, the longest video it is ever run on (the service and
    ``trdetr-predict`` run longer videos as windows of this length), so no parity case is longer.
    """

    video_group_dims: Sequence[int]
    text_dim: int
    use_tef: bool
    normalize_video: bool
    normalize_text: bool
    max_text_tokens: int
    audio_group_dims: Sequence[int] = ()
    audio_tef: bool = False
    normalize_audio: bool = True
    max_video_clips: int = 75

    @property
    def tef_after(self) -> tuple[int, ...]:
        """Stored-column positions after which TEF pairs go (see ``trdetr_common.features.with_tef``)."""
        if not self.use_tef:
            return ()
        video, audio = sum(self.video_group_dims), sum(self.audio_group_dims)
        return (video, video + audio) if audio and self.audio_tef else (video,)


def model_video_input(spec: InputSpec, groups: Sequence[np.ndarray]) -> np.ndarray:
    """Raw video then audio groups (each (T_g, d_g)) -> the model's src_vid row (T, D_v), as the service builds it."""
    flags = [spec.normalize_video] * len(spec.video_group_dims) + [spec.normalize_audio] * len(spec.audio_group_dims)
    return with_tef(build_video_features(groups, normalize=flags, tef=False), spec.tef_after)


def _row(spec: InputSpec, rng: np.random.Generator, clips: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """One (video (L_v, D_v), text (L_t, D_t)) pair built through the preprocessing contract."""
    dims = [*spec.video_group_dims, *spec.audio_group_dims]
    video = model_video_input(spec, [rng.standard_normal((clips, dim)).astype(np.float32) for dim in dims])
    text = rng.standard_normal((tokens, spec.text_dim)).astype(np.float32)
    return video, build_text_features(text, normalize=spec.normalize_text, max_tokens=None)


def batch_case(name: str, spec: InputSpec, shapes: Sequence[tuple[int, int]], rng: np.random.Generator) -> Case:
    """A zero-padded batch with one row per (L_v, L_t) in ``shapes``."""
    rows = [_row(spec, rng, clips, tokens) for clips, tokens in shapes]
    src_vid, src_vid_mask = pad_batch([video for video, _ in rows])
    src_txt, src_txt_mask = pad_batch([text for _, text in rows])
    inputs = {"src_txt": src_txt, "src_txt_mask": src_txt_mask, "src_vid": src_vid, "src_vid_mask": src_vid_mask}
    return Case(name, inputs)


def _edge_shapes(spec: InputSpec, index: int) -> tuple[str, list[tuple[int, int]]]:
    """Edge shape ``index`` with FULL/HALF and the text marker resolved, every length within the model's."""
    label, shapes = _EDGE_SHAPES[index]
    window = spec.max_video_clips
    lengths = {FULL: window, HALF: max(1, (window + 1) // 2)}
    resolved = [(lengths.get(v, min(v, window)), spec.max_text_tokens if t < 0 else min(t, spec.max_text_tokens))
                for v, t in shapes]
    return label.replace("max_v_l", f"{window}"), resolved


def random_cases(spec: InputSpec, num_cases: int, seed: int = 0) -> list[Case]:
    """``num_cases`` seeded batches: the edge shapes first, then random batch sizes and lengths.

    Every video is 1..``spec.max_video_clips`` clips long: the model never runs on a longer input
    (longer videos are served as windows of ``max_v_l`` clips), and its position embeddings stop there.

    Args:
        spec: input contract of the model.
        num_cases: how many batches (the first ``len(_EDGE_SHAPES)`` are the fixed edge shapes).
        seed: numpy seed; the same seed gives the same inputs.
    Returns:
        list of Case without golden outputs.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(num_cases):
        if index < len(_EDGE_SHAPES):
            label, shapes = _edge_shapes(spec, index)
        else:
            label = "random"
            batch = int(rng.integers(1, 5))
            shapes = [
                (int(rng.integers(1, spec.max_video_clips + 1)), int(rng.integers(1, spec.max_text_tokens + 1)))
                for _ in range(batch)
            ]
        case = batch_case(f"random-{index:02d}", spec, shapes, rng)
        case.notes.append(label)
        cases.append(case)
    return cases


def fixture_cases(fixtures_dir: str | Path) -> list[Case]:
    """The official golden cases (``cases.npz``) one at a time, plus all of them as one padded batch.

    The padded batch (``padded_batch.npz`` inputs) is compared with the *single-case* official
    outputs: the served model must be batch-invariant, while the official code's own batched outputs
    differ from its single runs (see the fixture README), so those are not used.

    Args:
        fixtures_dir: directory holding ``cases.npz`` and optionally ``padded_batch.npz``.
    Returns:
        list of Case with golden outputs.
    """
    fixtures_dir = Path(fixtures_dir)
    path = fixtures_dir / "cases.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --fixtures must be a directory holding cases.npz")
    data = np.load(path)
    cases = [_single_fixture_case(data, i) for i in range(int(data["num_cases"]))]
    padded = fixtures_dir / "padded_batch.npz"
    if padded.is_file():
        cases.append(_padded_fixture_case(np.load(padded), cases))
    return cases


def _single_fixture_case(data: np.lib.npyio.NpzFile, i: int) -> Case:
    """Case ``i`` of ``cases.npz`` as a batch of one with all-ones masks."""
    src_vid = data[f"src_vid_{i}"][None].astype(np.float32)
    src_txt = data[f"src_txt_{i}"][None].astype(np.float32)
    inputs = {
        "src_txt": src_txt,
        "src_txt_mask": np.ones(src_txt.shape[:2], np.float32),
        "src_vid": src_vid,
        "src_vid_mask": np.ones(src_vid.shape[:2], np.float32),
    }
    golden = {name: data[f"{name}_{i}"][None] for name in ("pred_logits", "pred_spans", "saliency_scores")}
    case = Case(f"fixture-{i}", inputs, golden)
    if f"mr2hd_top1_ambiguous_{i}" in data.files and bool(data[f"mr2hd_top1_ambiguous_{i}"]):
        case.notes.append("top-1 query is a tie (all queries equal); outputs are still comparable")
    return case


def _padded_fixture_case(data: np.lib.npyio.NpzFile, singles: list[Case]) -> Case:
    """The padded batch of ``padded_batch.npz`` with golden outputs taken from the single cases."""
    inputs = {name: data[name].astype(np.float32) for name in ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")}
    padded_len = inputs["src_vid"].shape[1]
    saliency = np.zeros((len(singles), padded_len), np.float32)
    for row, single in enumerate(singles):
        values = single.golden["saliency_scores"][0]
        saliency[row, : len(values)] = values
    golden = {
        "pred_logits": np.concatenate([c.golden["pred_logits"] for c in singles]),
        "pred_spans": np.concatenate([c.golden["pred_spans"] for c in singles]),
        "saliency_scores": saliency,
    }
    return Case("fixture-padded-batch", inputs, golden, ["golden = official single-case outputs"])
