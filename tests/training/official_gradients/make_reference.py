"""Write `reference.npz`: gradient fingerprints of the official TR-DETR training step (see README.md here).

Runs the official `train_epoch` (imported from a checkout of mingyao1120/TR-DETR given by --official; none of
its code is copied here) in float64 with dropout off and no clipping on the batches of `reference_data.py`,
and records per parameter tensor the `training.gradcheck` fingerprint of the gradient of the total loss,
plus every loss term. --report also runs our training step on the same batches and prints the full
per-tensor relative differences ||g_ours - g_official|| / ||g_official||.

    PYTHONPATH=DEPS .venv/bin/python tests/training/official_gradients/make_reference.py \\
        --official /tmp/official [--report] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parent)]

import reference_data as data  # noqa: E402

from training import gradcheck  # noqa: E402
from training.trainer import load_training_state  # noqa: E402

#: our names of the official alignment terms, which `train_epoch` computes outside the criterion
ALIGNMENT_NAMES = {"VTCLoss": "loss_vtc", "CTC_Loss": "loss_ctc"}


def install_import_stand_ins() -> None:
    """Make the official modules importable on a CPU-only machine without their logging extras.

    - `torch.utils.tensorboard` (train.py imports SummaryWriter; the tensorboard package may be absent):
      a stand-in whose writer does nothing; logging does not touch the computation.
    - torchvision, whose compiled ops fail to load against a CPU build of torch: the official criterion only
      calls `torchvision.ops.focal_loss.sigmoid_focal_loss`, a pure-Python function, which is then loaded
      from the installed torchvision's own `ops/focal_loss.py`.
    """
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        board = types.ModuleType("torch.utils.tensorboard")
        board.SummaryWriter = type("SummaryWriter", (), {"__init__": lambda self, *a, **k: None,
                                                        "add_scalar": lambda self, *a, **k: None})
        sys.modules["torch.utils.tensorboard"] = board
    try:
        importlib.import_module("torchvision")
    except Exception as error:  # a broken compiled extension, or not installed
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            raise SystemExit("torchvision is needed for the official focal loss: `pip install --no-deps --target "
                             "DIR torchvision==<the release matching torch>` and set PYTHONPATH=DIR") from error
        _load_focal_loss_only(Path(spec.origin).parent / "ops" / "focal_loss.py")


def _load_focal_loss_only(path: Path) -> None:
    package, ops, utils = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.utils"))
    utils._log_api_usage_once = lambda obj: None
    package.ops, package.utils, package.__path__, ops.__path__ = ops, utils, [], []
    sys.modules.update({"torchvision": package, "torchvision.ops": ops, "torchvision.utils": utils})
    spec = importlib.util.spec_from_file_location("torchvision.ops.focal_loss", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    ops.focal_loss = module


@contextlib.contextmanager
def official_cpu_float64() -> Iterator[None]:
    """The official Transformer builds its decoder input with `torch.zeros(...).cuda()`: on a CPU run
    `.cuda()` returns the tensor itself, and float64 is the default dtype so that tensor is float64."""
    cuda, dtype = torch.Tensor.cuda, torch.get_default_dtype()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda
        torch.set_default_dtype(dtype)


class GradientCatcher:
    """Stands in for the optimizer in `train_epoch`: `step()` records the gradients instead of updating."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.grads = model, {}
        self.param_groups = [{"lr": 0.0}]

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.grads = {n: (p.numel(), None if p.grad is None else p.grad.detach().clone())
                      for n, p in self.model.named_parameters()}


def official_opt(checkpoint: Path, weights: str) -> argparse.Namespace:
    """The fixture's live opt (`SEEDED_OPT` applied for the seeded set), on the CPU, no grad clipping."""
    opt = argparse.Namespace(**vars(load_training_state(checkpoint)["opt"]))
    if weights == "seeded":
        vars(opt).update(data.SEEDED_OPT)
    opt.device, opt.grad_clip, opt.debug, opt.pin_memory = torch.device("cpu"), 0.0, False, False
    return opt


def official_step(opt: argparse.Namespace, weights: str, checkpoint: Path,
                  samples: list[dict[str, np.ndarray]]) -> tuple[dict, dict]:
    """The official `train_epoch` on one batch, float64, dropout off: ({name: (size, grad or None)}, loss terms)."""
    train = importlib.import_module("tr_detr.train")
    pad = importlib.import_module("utils.tensor_utils").pad_sequences_1d
    opt = argparse.Namespace(**vars(opt))
    opt.train_log_filepath = str(Path(tempfile.mkdtemp(prefix="official_grad_")) / "train.log")
    opt.train_log_txt_formatter = "{loss_str}\n"
    with official_cpu_float64():
        model, criterion = importlib.import_module("tr_detr.model").build_model(opt)
        model.load_state_dict(_state_dict(model, weights, checkpoint), strict=True)
        model.double()
        data.disable_dropout(model)
        terms = _record_loss_terms(train, criterion)
        catcher = GradientCatcher(model)
        loader = [([{}] * len(samples), _official_batch(pad, samples))]
        train.train_epoch(model, criterion, loader, catcher, opt, 0, types.SimpleNamespace(add_scalar=lambda *a, **k: None))
    total = sum(float(v) * criterion.weight_dict[k] for k, v in terms.items() if k in criterion.weight_dict)
    total += opt.VTC_loss_coef * float(terms["loss_vtc"]) + opt.CTC_loss_coef * float(terms["loss_ctc"])
    values = {k: float(v) for k, v in terms.items() if k.startswith("loss_")}
    return catcher.grads, {**values, "loss_overall": total}


def _state_dict(model: nn.Module, weights: str, checkpoint: Path) -> dict[str, torch.Tensor]:
    if weights == "fixture":
        return load_training_state(checkpoint)["model"]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return {n: torch.from_numpy(w) for n, w in gradcheck.seeded_parameters(shapes).items()}


def _official_batch(pad, samples: list[dict[str, np.ndarray]]) -> dict:
    """What `start_end_collate` gives for these samples, with the features in float64."""
    def padded(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        values, mask = pad([torch.from_numpy(s[key]) for s in samples], dtype=torch.float32, fixed_length=None)
        return values.double(), mask
    return {"query_feat": padded("text"), "video_feat": padded("video"),
            "span_labels": [{"spans": torch.from_numpy(s["spans"]).double()} for s in samples],
            "saliency_pos_labels": torch.LongTensor(np.stack([s["pos"] for s in samples])),
            "saliency_neg_labels": torch.LongTensor(np.stack([s["neg"] for s in samples])),
            "saliency_all_labels": torch.from_numpy(np.stack([s["all"] for s in samples])),
            "pos_mask": pad([torch.from_numpy(s["pos_mask"]) for s in samples], dtype=torch.float32,
                            fixed_length=None)}


def _record_loss_terms(train, criterion) -> dict:
    """Wrap the criterion and `train_epoch`'s two alignment losses so their values are recorded."""
    terms: dict = {}
    criterion_forward = criterion.forward

    def recording_forward(outputs, targets):
        losses = criterion_forward(outputs, targets)
        terms.update({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in losses.items()})
        return losses
    criterion.forward = recording_forward
    for cls_name, our_name in ALIGNMENT_NAMES.items():
        base = getattr(train, cls_name)
        base = getattr(base, "official_class", base)

        def forward(self, *args, _base=base, _name=our_name):
            value = _base.forward(self, *args)
            terms[_name] = value.detach()
            return value
        setattr(train, cls_name, type(cls_name, (base,), {"forward": forward, "official_class": base}))
    return terms


def report(index: int, weights: str, opt: dict, batch, official_grads: dict, terms: dict) -> None:
    """Print loss-term and per-tensor gradient differences, ours vs official, largest first."""
    ours, logs = data.our_step(weights, opt, batch)
    print(f"batch {index} ({weights}): loss terms max |ours - official| "
          f"{max(abs(logs[k] - v) for k, v in terms.items()):.3e}")
    rows = []
    for name, (_, ref) in official_grads.items():
        mine = ours[name][1]
        if ref is None or mine is None:
            rows.append((0.0 if ref is None and mine is None else float("inf"), 0.0, name))
            continue
        norm = float(ref.norm())
        rows.append((float((mine - ref).norm()) / norm if norm else float((mine - ref).norm()), norm, name))
    for diff, norm, name in sorted(rows, reverse=True):
        print(f"  {diff:.3e}  (|g| {norm:.2e})  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of mingyao1120/TR-DETR")
    parser.add_argument("--checkpoint", type=Path, default=data.FIXTURE_CHECKPOINT,
                        help="the official golden fixture's checkpoint (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=data.REFERENCE, help="output file (default: %(default)s)")
    parser.add_argument("--report", action="store_true", help="also print ours-vs-official gradient differences")
    parser.add_argument("--no-write", action="store_true", help="do not write --out")
    args = parser.parse_args(argv)
    if args.checkpoint.resolve() != data.FIXTURE_CHECKPOINT.resolve():
        data.FIXTURE_CHECKPOINT = args.checkpoint
    logging.disable(logging.INFO)
    torch.set_num_threads(2)
    sys.path.insert(0, str(args.official.resolve()))
    install_import_stand_ins()
    arrays: dict[str, np.ndarray] = {}
    for weights in ("fixture", "seeded"):
        arrays[f"opt_{weights}"] = np.array(data.json_opt(official_opt(args.checkpoint, weights)))
    for index, (weights, *_) in enumerate(data.BATCHES):
        opt, prefix = official_opt(args.checkpoint, weights), f"b{index}_"
        samples = data.make_batch(index, int(opt.t_feat_dim))
        arrays.update(data.batch_arrays(samples, prefix))
        grads, terms = official_step(opt, weights, args.checkpoint, samples)
        arrays.update(gradcheck.to_arrays(data.fingerprints(grads), prefix))
        arrays[f"{prefix}weights"] = np.array(weights)
        arrays[f"{prefix}loss_names"] = np.array(sorted(terms))
        arrays[f"{prefix}loss_values"] = np.array([terms[k] for k in sorted(terms)])
        if args.report:
            report(index, weights, json.loads(str(arrays[f"opt_{weights}"])), data.our_batch(arrays, prefix),
                   grads, terms)
    if not args.no_write:
        np.savez_compressed(args.out, **arrays)
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
