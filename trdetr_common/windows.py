"""Videos longer than the model's window: window plan, per-window model inputs and merged answers (numpy only).

TR-DETR sees at most ``max_video_clips`` clips (its trained length W: 75 clips = 150 s for QVHighlights;
its position embeddings stop there). A longer video of T clips is searched on overlapping windows of W
clips, every ``stride`` clips, the last one aligned to the video's end::

    starts = 0, stride, 2 * stride, ... (while start + W < T), then T - W

A video of at most W clips is one window over the whole video: the model input, the outputs and the
post-processing are then exactly those of the single-window path (:func:`merge_moments` calls
:func:`trdetr_common.postprocess.rank_moments` unchanged, :func:`merge_saliency` returns the saliency as is).

**Model input of a window.** The official dataset (``StartEndDataset``) L2-normalises each clip row on
its own and computes the TEF columns ``[i / L, (i + 1) / L]`` over the ``L`` clips the model is given.
QVHighlights videos are 150 s cuts of longer YouTube videos (``vid = <youtube id>_<start>_<end>``), so the
model was trained on exactly this: a crop of a longer video, TEF relative to the crop. A window's input is
therefore the stored (already normalised: per row, so slicing commutes with it) rows ``[s, s + L)`` with
TEF recomputed for ``L`` clips (:func:`fill_window`), never the whole video's TEF.

**Moments.** Each window's candidates go through the official post-processing inside the window
(:func:`trdetr_common.postprocess.rank_moments`: foreground probability, span x window duration, clamp,
round to whole clips) and are shifted by the window's start. The model was only ever trained on videos
that contain the query's moment, so its foreground probability is conditional on the window containing
it: windows of unrelated content still return confident candidates, and a plain merge lets them win on a
long video. Three merge rules (scores always stay foreground probabilities):

- ``nms``: pool every window's candidates and run greedy temporal NMS (hull IoU > :data:`MERGE_IOU`
  suppressed). A moment seen by two overlapping windows keeps its best-scoring copy.
- ``fuse``: overlapping windows are treated as an ensemble that votes on each moment (the 1-D analogue of
  weighted boxes fusion, Solovyev et al. 2021). Candidates are clustered greedily by score (hull IoU >
  :data:`MERGE_IOU`, at most one candidate per window in a cluster); a cluster's span is the
  score-weighted mean of its members' spans, rounded to whole clips, and its score is the **mean
  foreground probability over the windows that contain the whole span** (a window that contains it but did
  not predict it counts as 0).
- ``salient``: TR-DETR's own premise is that highlight detection and moment retrieval inform each other
  (its HD2MR / MR2HD modules). The per-clip saliency, merged over the whole video (below), says *where*
  the query is relevant; the foreground probability says *which span* inside a window. A candidate is
  kept only if the mean saliency of its clips is within one standard deviation (of the video's clip
  saliencies; scale-free, no tuned threshold) of the most salient candidate's, then the survivors are
  ranked by foreground probability and deduplicated as by ``nms``.

The measured comparison (``bench/bench_long_video.py``, README) chose the default.

**Highlights.** One score per clip of the whole video: the mean of the raw saliency logits of the windows
that contain the clip (1 or 2 windows at stride W/2; the min-max ``normalized`` score and ``top_clips``
are then computed over the whole video).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trdetr_common.features import tef_columns
from trdetr_common.postprocess import rank_moments, temporal_nms
from trdetr_common.spans import hull_iou

__all__ = [
    "DEFAULT_MERGE",
    "DEFAULT_STRIDE_FRACTION",
    "MERGE_IOU",
    "MERGE_RULES",
    "MergeRule",
    "WindowOutput",
    "WindowPlan",
    "fill_window",
    "merge_moments",
    "merge_saliency",
    "plan_windows",
    "stride_for",
    "window_input",
    "window_moments",
]

MergeRule = Literal["nms", "fuse", "salient"]
MERGE_RULES: tuple[str, ...] = ("nms", "fuse", "salient")
#: Default stride as a fraction of the window (see the README's long-video table for the measurement).
DEFAULT_STRIDE_FRACTION = 0.25
#: Default rule for merging moments across windows (measured, see the README).
DEFAULT_MERGE: MergeRule = "salient"
#: Hull IoU above which two candidates from different windows are taken for the same moment.
MERGE_IOU = 0.5


@dataclass(frozen=True)
class WindowOutput:
    """The model's answer for one query on one window.

    ``pred_logits`` (Q, 2), ``pred_spans`` (Q, 2) ``[center, width]`` normalised by the window, ``saliency``
    (L,) of the window's clips.
    """

    pred_logits: np.ndarray
    pred_spans: np.ndarray
    saliency: np.ndarray


@dataclass(frozen=True)
class WindowPlan:
    """Where the model runs on a video of ``num_clips`` clips.

    Attributes:
        num_clips: T, clips of the whole video.
        window: W, the model's window (trained length) in clips.
        stride: clips between consecutive window starts (1 <= stride <= W).
        starts: (K,) first clip of each window, increasing; K = 1 when T <= W.
    """

    num_clips: int
    window: int
    stride: int
    starts: tuple[int, ...]

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    @property
    def length(self) -> int:
        """Clips in every window: ``min(W, T)``."""
        return min(self.window, self.num_clips)

    def bounds(self, index: int) -> tuple[int, int]:
        """``[start, end)`` clips of window ``index``."""
        start = self.starts[index]
        return start, start + self.length

    def coverage(self) -> np.ndarray:
        """(T,) int64: how many windows contain each clip (>= 1 everywhere)."""
        count = np.zeros(self.num_clips, dtype=np.int64)
        for start in self.starts:
            count[start:start + self.length] += 1
        return count


def stride_for(window: int, fraction: float) -> int:
    """Stride in clips for a stride given as a fraction of the window: ``round(fraction * W)``, in [1, W]."""
    if window < 1 or not 0 < fraction <= 1:
        raise ValueError(f"need window >= 1 and 0 < fraction <= 1, got {window} and {fraction}")
    return min(window, max(1, round(fraction * window)))


def plan_windows(num_clips: int, window: int, stride: int) -> WindowPlan:
    """Overlapping windows of ``window`` clips every ``stride`` clips, the last one ending at the video's end.

    A video of at most ``window`` clips is a single window over the whole video.

    Args:
        num_clips: T >= 1.
        window: W >= 1, the model's trained length.
        stride: 1 <= stride <= W (a larger stride would leave clips that no window sees).
    """
    if num_clips < 1 or window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need num_clips >= 1, window >= 1 and 1 <= stride <= window; got {num_clips}, "
                         f"{window}, {stride}")
    if num_clips <= window:
        return WindowPlan(num_clips, window, stride, (0,))
    last = num_clips - window
    starts = tuple(range(0, last, stride)) + (last,)
    return WindowPlan(num_clips, window, stride, starts)


# --- model inputs ------------------------------------------------------------------------------
def _tef_starts(tef: bool | Sequence[int], width: int) -> Sequence[int]:
    """Columns where TEF pairs start: ``True`` = the last two columns, ``False`` = none."""
    if tef is True:
        return (width - 2,)
    if tef is False:
        return ()
    return tef


def fill_window(out: np.ndarray, video: np.ndarray, start: int, length: int, *,
                tef: bool | Sequence[int]) -> None:
    """Write one window's model input into ``out[:length]`` (a row of a padded batch).

    Args:
        out: (>= length, D_v) float32 destination.
        video: (T, D_v) the whole video's model input (normalised features with the TEF columns of the
            whole video); only rows ``[start, start + length)`` are read.
        tef: where the TEF pairs are: ``True`` the last two columns, ``False`` none, or the start column
            of each pair (an audio model has one after the video groups and, in the official layout, one
            after the audio). They are rewritten as ``tef_columns(length)``, relative to the window, as
            the model saw them in training. For the whole video (``start == 0``, ``length == T``) these
            are the values already there.
    """
    out[:length] = video[start:start + length]
    starts = _tef_starts(tef, video.shape[1])
    if starts:
        columns = tef_columns(length)
        for column in starts:
            out[:length, column:column + 2] = columns


def window_input(video: np.ndarray, start: int, length: int, *, tef: bool | Sequence[int]) -> np.ndarray:
    """(length, D_v) float32 model input of one window; the whole video comes back as is (no copy).

    See :func:`fill_window` for the arguments.
    """
    if start == 0 and length == len(video):
        return video
    out = np.empty((length, video.shape[1]), dtype=np.float32)
    fill_window(out, video, start, length, tef=tef)
    return out


# --- moments ----------------------------------------------------------------------------------
def window_moments(
    pred_logits: np.ndarray, pred_spans: np.ndarray, plan: WindowPlan, index: int, clip_length_s: float
) -> np.ndarray:
    """One window's candidates in video seconds, post-processed inside the window as the official code does.

    Args:
        pred_logits: (Q, 2) class logits; pred_spans: (Q, 2) ``[center, width]`` normalised by the window.
    Returns:
        (Q, 3) float64 ``[start_s, end_s, score]``, best first; times are whole clips inside the window.
    """
    start, _ = plan.bounds(index)
    moments = rank_moments(pred_logits, pred_spans, num_clips=plan.length, clip_length_s=clip_length_s)
    moments[:, :2] += start * clip_length_s
    return moments


def _pooled(outputs: Sequence[WindowOutput], plan: WindowPlan,
            clip_length_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Every window's candidates, best first (stable: earlier window first among equal scores).

    Returns (N, 3) ``[start_s, end_s, score]`` and (N,) the window index of each row.
    """
    moments = [window_moments(o.pred_logits, o.pred_spans, plan, k, clip_length_s) for k, o in enumerate(outputs)]
    windows = np.concatenate([np.full(len(m), k) for k, m in enumerate(moments)])
    pooled = np.concatenate(moments)
    order = np.argsort(-pooled[:, 2], kind="stable")
    return pooled[order], windows[order]


def _cluster(moments: np.ndarray, windows: np.ndarray) -> list[list[int]]:
    """Greedy clusters of candidates (rows best first): each joins the existing cluster it overlaps most
    (hull IoU > MERGE_IOU) that has no candidate from its window yet, else starts a new one.

    Args:
        moments: (N, 3) ``[start_s, end_s, score]`` sorted by score, descending.
        windows: (N,) window index of each row.
    Returns:
        clusters as lists of row indices, in order of creation (best first member first).
    """
    count = len(moments)
    spans = np.zeros((count, 2))  # running score-weighted mean span of each cluster
    weights = np.zeros(count)
    has_window = np.zeros((count, int(windows.max()) + 1), dtype=bool)
    clusters: list[list[int]] = []
    for row, (start, end, score) in enumerate(moments):
        window = windows[row]
        made = len(clusters)
        iou = hull_iou(spans[:made], np.array([start, end]))
        iou[has_window[:made, window] | (iou <= MERGE_IOU)] = -1.0
        chosen = int(np.argmax(iou)) if made and iou.max() > 0 else made
        if chosen == made:
            clusters.append([])
        clusters[chosen].append(row)
        has_window[chosen, window] = True
        total = weights[chosen] + score
        if total > 0:
            spans[chosen] = (spans[chosen] * weights[chosen] + np.array([start, end]) * score) / total
        elif chosen == made:
            spans[chosen] = (start, end)
        weights[chosen] = total
    return clusters


def _fuse(moments: np.ndarray, windows: np.ndarray, plan: WindowPlan, clip_length_s: float) -> np.ndarray:
    """The ``fuse`` rule: one moment per cluster, its span the score-weighted mean rounded to whole clips,
    its score the mean probability over the windows that contain the whole span. Best first."""
    duration = plan.num_clips * clip_length_s
    window_s = np.array([plan.bounds(k) for k in range(plan.num_windows)], dtype=float) * clip_length_s
    fused = []
    for members in _cluster(moments, windows):
        rows = moments[members]
        weights = rows[:, 2] if rows[:, 2].sum() > 0 else np.ones(len(rows))
        span = (rows[:, :2] * weights[:, None]).sum(0) / weights.sum()
        span = np.clip(np.round(span / clip_length_s) * clip_length_s, 0.0, duration)
        seeing = int(np.sum((window_s[:, 0] <= span[0]) & (span[1] <= window_s[:, 1])))
        fused.append([span[0], span[1], rows[:, 2].sum() / max(seeing, len(members))])
    fused_array = np.array(fused, dtype=float).reshape(-1, 3)
    return fused_array[np.argsort(-fused_array[:, 2], kind="stable")]


def _salient(moments: np.ndarray, saliency: np.ndarray, clip_length_s: float) -> np.ndarray:
    """The ``salient`` gate: candidates whose clips' mean saliency is within one standard deviation of the
    video's clip saliencies of the most salient candidate's (order kept).

    Args:
        moments: (N, 3) ``[start_s, end_s, score]`` in whole clips.
        saliency: (T,) merged saliency of the whole video.
    """
    first = np.clip(np.round(moments[:, 0] / clip_length_s).astype(np.int64), 0, len(saliency) - 1)
    stop = np.maximum(np.round(moments[:, 1] / clip_length_s).astype(np.int64), first + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(saliency, dtype=np.float64)])
    mean = (cumulative[stop] - cumulative[first]) / (stop - first)
    return moments[mean >= mean.max() - float(np.std(saliency))]


def merge_moments(
    outputs: Sequence[WindowOutput],
    plan: WindowPlan,
    *,
    clip_length_s: float,
    rule: MergeRule = DEFAULT_MERGE,
    top_k: int | None = None,
    nms_iou: float | None = None,
    min_score: float = 0.0,
) -> np.ndarray:
    """Ranked moments of ONE query over the whole video from its per-window model outputs.

    With one window this is exactly :func:`trdetr_common.postprocess.rank_moments` (today's single-video
    answer). Otherwise each window's candidates are mapped to video time (:func:`window_moments`), merged
    by ``rule`` (module docstring), then ``nms_iou``, ``min_score`` and ``top_k`` apply as for one window.

    Args:
        outputs: per window, in plan order, the model's answer (only ``salient`` reads the saliency).
        plan: the plan the outputs were computed for.
    Returns:
        (K, 3) float64 ``[start_s, end_s, score]``, best first.
    """
    if len(outputs) != plan.num_windows:
        raise ValueError(f"got outputs for {len(outputs)} windows, the plan has {plan.num_windows}")
    if plan.num_windows == 1:
        return rank_moments(outputs[0].pred_logits, outputs[0].pred_spans, num_clips=plan.num_clips,
                            clip_length_s=clip_length_s, top_k=top_k, nms_iou=nms_iou, min_score=min_score)
    if rule not in MERGE_RULES:
        raise ValueError(f"unknown merge rule {rule!r}; use one of {MERGE_RULES}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    moments, windows = _pooled(outputs, plan, clip_length_s)
    if rule == "fuse":
        merged = _fuse(moments, windows, plan, clip_length_s)
    else:
        if rule == "salient":
            moments = _salient(moments, merge_saliency([o.saliency for o in outputs], plan), clip_length_s)
        merged = temporal_nms(moments, MERGE_IOU)
    if nms_iou is not None:
        merged = temporal_nms(merged, nms_iou)
    merged = merged[merged[:, 2] >= min_score]
    return merged[:top_k]


# --- highlights -------------------------------------------------------------------------------
def merge_saliency(saliency: Sequence[np.ndarray], plan: WindowPlan) -> np.ndarray:
    """One saliency score per clip of the whole video: the mean over the windows containing the clip.

    Args:
        saliency: per window, in plan order, (L,) raw saliency of its clips.
    Returns:
        (T,) the window's own array when there is one window (unchanged), else float64 means.
    """
    if len(saliency) != plan.num_windows:
        raise ValueError(f"got saliency for {len(saliency)} windows, the plan has {plan.num_windows}")
    if plan.num_windows == 1:
        return saliency[0]
    total = np.zeros(plan.num_clips, dtype=np.float64)
    for index, scores in enumerate(saliency):
        start, end = plan.bounds(index)
        if len(scores) != end - start:
            raise ValueError(f"window {index} has {len(scores)} saliency scores, expected {end - start}")
        total[start:end] += scores
    return total / plan.coverage()
