"""Run a TR-DETR checkpoint or an ONNX bundle over a dataset and write official-format predictions.

One jsonl line per query (what ``trdetr-eval`` / the official ``standalone_eval`` read)::

    {"qid", "query", "vid", "pred_relevant_windows": [[start_s, end_s, score], ...],
     "pred_saliency_scores": [one float per valid clip]}

Windows and saliency go through ``trdetr_common.postprocess`` exactly as the official
``compute_mr_results`` + ``PostProcessorDETR`` do (scores = foreground softmax, windows in seconds of the
annotation's ``duration``, sorted, 4 decimals, clamped to [0, 150] and rounded to the clip length; the clamp
bound grows to the duration for videos longer than QVHighlights' 150 s).

Videos longer than the model's window (its trained ``max_v_l``) are searched on overlapping windows and the
answers merged by ``trdetr_common.windows``, the same code the service runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from training.dataset import QVHighlightsDataset
from trdetr_common.features import pad_batch
from trdetr_common.manifest import MANIFEST_NAME, Manifest
from trdetr_common.postprocess import official_hl_scores, official_jsonl_windows
from trdetr_common.windows import (
    DEFAULT_MERGE,
    DEFAULT_STRIDE_FRACTION,
    MergeRule,
    WindowOutput,
    WindowPlan,
    merge_moments,
    merge_saliency,
    plan_windows,
    stride_for,
    window_input,
)

OUTPUT_NAMES = ("pred_logits", "pred_spans", "saliency_scores")
QVHIGHLIGHTS_MAX_TS = 150.0


class PredictError(ValueError):
    """The model and the data do not fit together; the message says what to change."""


class Backend(Protocol):
    """Anything mapping a padded batch to numpy ``pred_logits`` (B, Q, 2), ``pred_spans`` (B, Q, 2) and
    ``saliency_scores`` (B, L_v)."""

    video_dim: int
    text_dim: int
    clip_length: float
    window: int  # the model's trained length in clips: longer videos are windowed
    video_groups: list[tuple[str, int]] | None  # ordered (name, width) the model was trained on; None: unknown

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """A PyTorch TR-DETR in eval mode on ``device``."""

    def __init__(self, model: torch.nn.Module, config, device: str | torch.device = "cpu",
                 video_groups: list[tuple[str, int]] | None = None) -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.video_dim, self.text_dim = config.vid_input_dim, config.t_feat_dim
        self.clip_length = float(config.clip_length)
        self.window = int(config.max_v_l)
        self.video_groups = video_groups

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> TorchBackend:
        """The checkpoint's model, and its video groups as ``trdetr-export`` would record them."""
        from model_export import build_model, read_checkpoint
        from model_export.export.layouts import resolve_video_layout

        loaded = read_checkpoint(path)
        model = build_model(loaded.config)
        model.load_state_dict(loaded.state_dict, strict=True)
        config = loaded.config
        layout = resolve_video_layout(loaded.format, config.v_feat_dim, config.use_tef,
                                      recorded=loaded.raw_opt.get("video_feature_groups"))
        groups = None if layout.source == "unknown" else [(g.name, g.dim) for g in layout.groups]
        return cls(model, config, device, groups)

    @torch.no_grad()
    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.as_tensor(v).to(self.device) for k, v in inputs.items()}
        out = self.model(**tensors)
        return {name: out[name].float().cpu().numpy() for name in OUTPUT_NAMES}


class OnnxBackend:
    """An exported bundle (``manifest.json`` + fp32 ``model.onnx``) on ONNX Runtime's CPU provider."""

    def __init__(self, bundle_dir: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        bundle_dir = Path(bundle_dir)
        self.manifest = Manifest.load(bundle_dir)
        model_path = bundle_dir / self.manifest.onnx.fp32_file
        if not model_path.is_file():
            raise PredictError(f"{model_path}: the bundle's ONNX model is missing; re-run trdetr-export")
        self.session = ort.InferenceSession(str(model_path), providers=providers or ["CPUExecutionProvider"])
        pre = self.manifest.preprocessing
        self.video_dim, self.text_dim, self.clip_length = pre.video_input_dim, pre.text_dim, pre.clip_length_s
        self.window = pre.max_video_clips
        known = pre.video_groups_source != "unknown"
        self.video_groups = [(g.name, g.dim) for g in pre.video_groups] if known else None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds), strict=True))


def load_backend(path: str | Path, device: str = "cpu") -> Backend:
    """A bundle directory (holding ``manifest.json``) -> OnnxBackend; a checkpoint file -> TorchBackend."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise PredictError(f"{path} is a directory without {MANIFEST_NAME}: pass a bundle written by "
                               "trdetr-export or a checkpoint file")
        return OnnxBackend(path)
    if not path.is_file():
        raise PredictError(f"{path}: no such checkpoint file or bundle directory")
    return TorchBackend.from_checkpoint(path, device)


def _group_of(folder: str, groups: list[tuple[str, int]]) -> int | None:
    """Index of the one model group a feature folder is named after (``clip_features`` -> ``clip``), else None."""
    name = folder.lower()
    exact = [i for i, (group, _) in enumerate(groups) if name == group.lower()]
    if exact:
        return exact[0]
    prefixed = [i for i, (group, _) in enumerate(groups) if re.match(rf"{re.escape(group.lower())}[_\-.]", name)]
    return prefixed[0] if len(prefixed) == 1 else None


def _describe(groups: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} ({dim})" for name, dim in groups)


def check_video_groups(model_groups: list[tuple[str, int]] | None, data_groups: list[tuple[str, int]]) -> None:
    """Raise PredictError unless the ``--v-feat-dirs`` folders give the model's video groups in its order.

    Args:
        model_groups: ordered ``(name, width)`` the checkpoint or manifest records; None when unknown (then
            only the total width can be checked, by :func:`check_compatible`).
        data_groups: ordered ``(folder name, width)`` of the feature folders.
    Two checks: the widths in order, and, when every folder is named after a different model group
    (``slowfast_features`` -> ``slowfast``), the names in order; so folders of equal widths given in the
    wrong order are caught too.
    """
    if model_groups is None:
        return
    wanted = f"the model takes {len(model_groups)} video feature group(s) in this order: {_describe(model_groups)}"
    given = f"--v-feat-dirs gives {_describe(data_groups)}"
    if len(data_groups) != len(model_groups):
        raise PredictError(f"{wanted}; {given}: give one folder per group")
    matched = [_group_of(folder, model_groups) for folder, _ in data_groups]
    if None not in matched and len(set(matched)) == len(matched) and matched != sorted(matched):
        order = " ".join(data_groups[matched.index(i)][0] for i in range(len(model_groups)))
        raise PredictError(f"{wanted}; {given}: the folders are in the wrong order, list them as {order}")
    if [dim for _, dim in data_groups] != [dim for _, dim in model_groups]:
        hint = ("the folders are in the wrong order" if sorted(d for _, d in data_groups) ==
                sorted(d for _, d in model_groups) else "the widths differ: are these the features it was trained on?")
        raise PredictError(f"{wanted}; {given}: {hint}")


def check_compatible(backend: Backend, dataset: QVHighlightsDataset) -> None:
    """Raise PredictError when the dataset's feature groups or widths differ from what the model takes."""
    check_video_groups(getattr(backend, "video_groups", None), dataset.video_group_dims())
    item = dataset[0]
    video_dim, text_dim = item["video"].shape[1], item["text"].shape[1]
    if (video_dim, text_dim) != (backend.video_dim, backend.text_dim):
        raise PredictError(
            f"the data gives video features of width {video_dim} and text features of width {text_dim}, "
            f"the model takes {backend.video_dim} and {backend.text_dim}: check --v-feat-dirs (groups and "
            "their order), TEF (--no-tef) and --t-feat-dir")


@dataclass
class QueryWindows:
    """One query's model outputs over its video's windows (``trdetr_common.windows``).

    ``outputs[k]``: the model's answer on window k (``pred_spans`` normalised by the window, ``saliency`` of
    its clips).
    """

    meta: dict
    plan: WindowPlan
    outputs: list[WindowOutput] = field(default_factory=list)


def _window_rows(dataset: QVHighlightsDataset, window: int, stride_fraction: float) -> Iterator[tuple]:
    """``(query, text, video, start)`` for every window of every query, in dataset order."""
    stride = stride_for(window, stride_fraction)
    for index in range(len(dataset)):
        item = dataset[index]
        query = QueryWindows(item["meta"], plan_windows(len(item["video"]), window, stride))
        for start in query.plan.starts:
            yield query, item["text"], item["video"], start


def _run_rows(backend: Backend, rows: list[tuple], tef: bool) -> None:
    """Run one batch of window rows and append each row's outputs to its query."""
    videos = [window_input(video, start, query.plan.length, tef=tef) for query, _, video, start in rows]
    src_vid, vid_mask = pad_batch(videos)
    src_txt, txt_mask = pad_batch([text for _, text, _, _ in rows])
    outputs = backend({"src_txt": src_txt, "src_txt_mask": txt_mask, "src_vid": src_vid, "src_vid_mask": vid_mask})
    for row, (query, _, _, _) in enumerate(rows):
        query.outputs.append(WindowOutput(outputs["pred_logits"][row], outputs["pred_spans"][row],
                                          outputs["saliency_scores"][row, :query.plan.length]))


def window_outputs(backend: Backend, dataset: QVHighlightsDataset, batch_size: int = 100, *,
                   stride_fraction: float = DEFAULT_STRIDE_FRACTION, progress: bool = True) -> list[QueryWindows]:
    """The model on every window of every query (batches of ``batch_size`` window rows).

    Videos of at most ``backend.window`` clips are one row, exactly as before windowing existed; longer ones
    are cut into windows by ``trdetr_common.windows.plan_windows`` with TEF relative to each window.
    """
    check_compatible(backend, dataset)
    queries: list[QueryWindows] = []
    batch: list[tuple] = []
    for row in tqdm(_window_rows(dataset, backend.window, stride_fraction), desc="predict", disable=not progress,
                    leave=False):
        if not queries or queries[-1] is not row[0]:
            queries.append(row[0])
        batch.append(row)
        if len(batch) == batch_size:
            _run_rows(backend, batch, dataset.config.use_tef)
            batch = []
    if batch:
        _run_rows(backend, batch, dataset.config.use_tef)
    return queries


def prediction_record(query: QueryWindows, clip_length: float, merge: MergeRule = DEFAULT_MERGE) -> dict:
    """The official jsonl row of one query.

    One window: official ``compute_mr_results`` + ``PostProcessorDETR`` on the annotation's duration, as the
    official code does. Several: ``trdetr_common.windows.merge_moments`` (as many moments as the model has
    queries, scores to 4 decimals like the official file) and ``merge_saliency``.
    """
    meta, plan, outputs = query.meta, query.plan, query.outputs
    if plan.num_windows == 1:
        duration = float(meta["duration"])
        windows = official_jsonl_windows(outputs[0].pred_logits, outputs[0].pred_spans, duration_s=duration,
                                         clip_length_s=clip_length, max_ts_s=max(QVHIGHLIGHTS_MAX_TS, duration))
    else:
        merged = merge_moments(outputs, plan, clip_length_s=clip_length, rule=merge,
                               top_k=len(outputs[0].pred_logits))
        windows = [[float(start), float(end), float(f"{score:.4f}")] for start, end, score in merged]
    saliency = merge_saliency([o.saliency for o in outputs], plan)
    return {"qid": meta["qid"], "query": meta["query"], "vid": meta["vid"], "pred_relevant_windows": windows,
            "pred_saliency_scores": official_hl_scores(saliency)}


def predict(backend: Backend, dataset: QVHighlightsDataset, batch_size: int = 100, progress: bool = True, *,
            stride_fraction: float = DEFAULT_STRIDE_FRACTION, merge: MergeRule = DEFAULT_MERGE) -> list[dict]:
    """Predictions for every query of ``dataset`` in its order; long videos are windowed (see
    :func:`window_outputs` and :func:`prediction_record`)."""
    queries = window_outputs(backend, dataset, batch_size, stride_fraction=stride_fraction, progress=progress)
    return [prediction_record(query, backend.clip_length, merge) for query in queries]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
