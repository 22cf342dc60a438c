"""Run a TR-DETR checkpoint or an ONNX bundle over a dataset and write official-format predictions.

One jsonl line per query (what ``trdetr-eval`` / the official ``standalone_eval`` read)::

    {"qid", "query", "vid", "pred_relevant_windows": [[start_s, end_s, score], ...],
     "pred_saliency_scores": [one float per valid clip]}

Windows and saliency go through ``trdetr_common.postprocess`` exactly as the official
``compute_mr_results`` + ``PostProcessorDETR`` do (scores = foreground softmax, windows in seconds of the
annotation's ``duration``, sorted, 4 decimals, clamped to [0, 150] and rounded to the clip length; the clamp
bound grows to the duration for videos longer than QVHighlights' 150 s).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.dataset import Batch, QVHighlightsDataset, collate
from trdetr_common.manifest import MANIFEST_NAME, Manifest
from trdetr_common.postprocess import official_hl_scores, official_jsonl_windows

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

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """A PyTorch TR-DETR in eval mode on ``device``."""

    def __init__(self, model: torch.nn.Module, config, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.video_dim, self.text_dim = config.vid_input_dim, config.t_feat_dim
        self.clip_length = float(config.clip_length)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> TorchBackend:
        from model_export import load_checkpoint

        model, config = load_checkpoint(path)
        return cls(model, config, device)

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


def check_compatible(backend: Backend, dataset: QVHighlightsDataset) -> None:
    """Raise PredictError when the dataset's feature widths differ from what the model takes."""
    item = dataset[0]
    video_dim, text_dim = item["video"].shape[1], item["text"].shape[1]
    if (video_dim, text_dim) != (backend.video_dim, backend.text_dim):
        raise PredictError(
            f"the data gives video features of width {video_dim} and text features of width {text_dim}, "
            f"the model takes {backend.video_dim} and {backend.text_dim}: check --v-feat-dirs (groups and "
            "their order), TEF (--no-tef) and --t-feat-dir")


def predictions_for_batch(batch: Batch, outputs: dict[str, np.ndarray], clip_length: float) -> list[dict]:
    """Official jsonl rows of one batch; outputs as a Backend returns them."""
    lengths = batch.model_inputs["src_vid_mask"].sum(1).to(torch.int64).tolist()
    rows = []
    for i, meta in enumerate(batch.meta):
        duration = float(meta["duration"])
        windows = official_jsonl_windows(outputs["pred_logits"][i], outputs["pred_spans"][i], duration_s=duration,
                                         clip_length_s=clip_length,
                                         max_ts_s=max(QVHIGHLIGHTS_MAX_TS, duration))
        rows.append({"qid": meta["qid"], "query": meta["query"], "vid": meta["vid"],
                     "pred_relevant_windows": windows,
                     "pred_saliency_scores": official_hl_scores(outputs["saliency_scores"][i], lengths[i])})
    return rows


def predict(backend: Backend, dataset: QVHighlightsDataset, batch_size: int = 100,
            progress: bool = True) -> list[dict]:
    """Predictions for every query of ``dataset`` in its order."""
    check_compatible(backend, dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    rows: list[dict] = []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        inputs = {k: v.numpy() for k, v in batch.model_inputs.items()}
        rows.extend(predictions_for_batch(batch, backend(inputs), backend.clip_length))
    return rows


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
