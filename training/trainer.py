"""The training loop: AdamW + step LR drop + grad clipping, periodic evaluation, best/latest checkpoints.

Checkpoints are written in the official layout (``{"model", "optimizer", "lr_scheduler", "epoch", "opt"}``
via ``model_export.save_checkpoint(fmt="official")``) so ``trdetr-export`` converts them without flags and
``--resume`` restores the optimizer, the scheduler and the epoch (official ``--resume_all``):

    OUT_DIR/model_latest.ckpt   after every epoch
    OUT_DIR/model_best.ckpt     whenever the validation ``best_metric`` improves
    OUT_DIR/metrics.csv         long format: epoch, split, name, value (train losses, lr, val metrics)
    OUT_DIR/best_val_preds.jsonl  predictions of the best model on the validation set
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.dataset import Batch, QVHighlightsDataset, collate
from training.losses import TRDETRCriterion
from training.options import TrainConfig
from training.predict import TorchBackend, predict, write_jsonl

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What ``Trainer.fit`` leaves behind."""

    latest_checkpoint: Path
    best_checkpoint: Path | None
    best_score: float | None
    best_metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_state(path: str | Path) -> dict:
    """The raw official-layout checkpoint (optimizer / lr_scheduler / epoch included), loaded safely.

    Only ``argparse.Namespace`` and ``torch.device`` are allowed besides tensors (``weights_only=True``).
    """
    with torch.serialization.safe_globals([argparse.Namespace, torch.device]):
        return torch.load(path, map_location="cpu", weights_only=True)


def backward_step(model: nn.Module, criterion: TRDETRCriterion, batch: Batch) -> dict[str, float]:
    """Forward one batch, compute every loss term and backpropagate their weighted sum.

    Gradients accumulate into the parameters' ``.grad`` (zero them first). Returns the logged loss terms
    (``criterion``'s logs, ``loss_overall`` included); a non-finite total raises FloatingPointError before
    the backward pass.
    """
    outputs = model(**batch.model_inputs)
    loss, logs = criterion(outputs, batch.targets)
    if not math.isfinite(logs["loss_overall"]):
        raise FloatingPointError(f"loss became {logs['loss_overall']}: {logs}; lower --lr")
    loss.backward()
    return logs


class MetricsLog:
    """Appends ``epoch, split, name, value`` rows to a CSV file (header written once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.write_text("epoch,split,name,value\n")

    def write(self, epoch: int, split: str, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for name, value in values.items():
                if value is not None:  # e.g. an mAP of a length bucket without ground truth
                    writer.writerow([epoch, split, name, f"{float(value):.6g}"])


class Trainer:
    """Trains a TR-DETR with the official recipe; see the module docstring for what it writes."""

    def __init__(self, model: nn.Module, model_config, criterion: TRDETRCriterion, config: TrainConfig,
                 train_set: QVHighlightsDataset, out_dir: str | Path,
                 val_set: QVHighlightsDataset | None = None) -> None:
        self.config, self.model_config = config, model_config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.criterion = criterion.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.wd)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_drop)
        self.log = MetricsLog(self.out_dir / "metrics.csv")
        self.start_epoch = 0
        self.best_score: float | None = None
        self.best_metrics: dict = {}
        self._last_predictions: list[dict] = []

    @property
    def latest_path(self) -> Path:
        return self.out_dir / "model_latest.ckpt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "model_best.ckpt"

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint this trainer wrote: weights, optimizer, scheduler, next epoch."""
        state = load_training_state(path)
        self.model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("lr_scheduler") is not None:
            self.scheduler.load_state_dict(state["lr_scheduler"])
        self.start_epoch = int(state.get("epoch", -1)) + 1
        logger.info("resumed from %s at epoch %d", path, self.start_epoch)

    def save(self, path: Path, epoch: int) -> Path:
        from model_export import save_checkpoint

        groups = [[name, dim] for name, dim in self.train_set.video_group_dims()]
        save_checkpoint(path, self.model, self.model_config, optimizer=self.optimizer,
                        lr_scheduler=self.scheduler, epoch=epoch, fmt="official",
                        extra_opt={"video_feature_groups": groups})
        return path

    def _loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed + self.start_epoch)
        return DataLoader(self.train_set, batch_size=self.config.bsz, shuffle=True, collate_fn=collate,
                          num_workers=self.config.num_workers, generator=generator)

    def train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns the mean of every logged loss term."""
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        batches = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not self.config.progress, leave=False)
        for batch in batches:
            self.optimizer.zero_grad()
            try:
                logs = backward_step(self.model, self.criterion, batch.to(self.device))
            except FloatingPointError as error:
                raise FloatingPointError(f"epoch {epoch + 1}: {error}") from None
            if self.config.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            for name, value in logs.items():
                sums[name] += value
            batches.set_postfix(loss=f"{logs['loss_overall']:.3f}")
        return {name: total / len(loader) for name, total in sums.items()}

    def evaluate(self) -> dict:
        """Official metrics of the current model on the validation set (``evaluate(...)["brief"]``)."""
        from training.evaluation import evaluate

        backend = TorchBackend(self.model, self.model_config, self.device)
        rows = predict(backend, self.val_set, self.config.eval_bsz, progress=self.config.progress)
        self.model.train()
        self._last_predictions = rows
        return evaluate(rows, self.val_set.records, max_clips=self.val_set.config.max_v_l)

    def _maybe_evaluate(self, epoch: int) -> None:
        if self.val_set is None or (epoch + 1) % self.config.eval_every:
            return
        brief = self.evaluate()["brief"]
        self.log.write(epoch + 1, "val", brief)
        score = float(brief[self.config.best_metric])
        logger.info("epoch %d: %s = %.4f", epoch + 1, self.config.best_metric, score)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_metrics = score, dict(brief)
            self.save(self.best_path, epoch)
            write_jsonl(self._last_predictions, self.out_dir / "best_val_preds.jsonl")

    def fit(self) -> TrainResult:
        """Train from ``start_epoch`` to ``n_epoch``; returns where the checkpoints are."""
        seed_everything(self.config.seed + self.start_epoch)
        loader = self._loader()
        started = time.perf_counter()
        epochs = range(self.start_epoch, self.config.n_epoch)
        for epoch in tqdm(epochs, desc="training", disable=not self.config.progress):
            means = self.train_epoch(loader, epoch)
            means["lr"] = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            self.log.write(epoch + 1, "train", means)
            self.save(self.latest_path, epoch)
            self._maybe_evaluate(epoch)
        return TrainResult(self.latest_path, self.best_path if self.best_score is not None else None,
                           self.best_score, self.best_metrics, time.perf_counter() - started)
