"""Parity gates: a reference (torch, or the official golden outputs) against an ONNX Runtime session.

Generic over "a callable from named input arrays to named output arrays", so the same gates check
the TR-DETR graph, and the tests can check them on any small module.

Gates (defaults in :class:`Thresholds`):
- fp32: max |reference - candidate| <= ``fp32_atol`` on every output of every case
  (``saliency_scores`` over valid clips only; padded clips carry no meaning);
- fp16: the top-1 moment (highest foreground probability) is a top-1 of the reference in
  >= ``fp16_top1_rate`` of the rows, mean IoU of the top-1 spans >= ``fp16_mean_iou``, mean
  Spearman correlation of the valid saliency >= ``fp16_spearman``. Queries whose reference
  foreground probabilities differ by less than ``fp16_tie_margin`` are tied: fp16 may pick either
  (random-weight models have many such near-ties; trained ones have clear winners). The report
  also gives the exact-query rate and how many rows had a decisive reference top-1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnxruntime as ort
from scipy.stats import spearmanr
from tqdm import tqdm

from .cases import Arrays, Case

Runner = Callable[[Arrays], Arrays]
OUTPUTS = ("pred_logits", "pred_spans", "saliency_scores")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ParityError(RuntimeError):
    """A parity gate failed; the message names the gate, output, case and difference."""


@dataclass(frozen=True)
class Thresholds:
    """Pass marks of the gates."""

    fp32_atol: float = 1e-4
    fp16_top1_rate: float = 0.99
    fp16_mean_iou: float = 0.98
    fp16_spearman: float = 0.99
    # Foreground probabilities closer than this are a tie at fp16 precision (fp16 moves the logits
    # by ~1e-3, i.e. probabilities by < 1e-3); see _row_fp16_metrics.
    fp16_tie_margin: float = 1e-3
    # int8 gate (model.int8.onnx vs the fp32 reference): the top-1 query must be the same on rows whose
    # reference top-1 foreground probability beats the runner-up by >= int8_decisive_margin (int8 moves
    # the probabilities by up to a few 1e-2, so closer queries are a coin toss at int8 precision).
    int8_top1_rate: float = 0.99
    int8_decisive_margin: float = 0.05
    int8_min_decisive_rows: int = 10
    int8_spearman: float = 0.99
    int8_max_r1_drop: float = 1.0  # R1@0.5 points (0-100) on the benchmark dataset


@dataclass
class GateResult:
    """Outcome of one gate over a list of cases (JSON-serialisable via ``asdict``)."""

    name: str
    kind: str  # "fp32" | "fp16" | "int8" | "int8-r1"
    reference: str
    candidate: str
    provider: str
    passed: bool
    thresholds: dict
    measured: dict
    failures: list[str] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_session(path: str, provider: str = CPU, *, fp32: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime session on ``provider``; CUDA fp32 runs with TF32 off (``use_tf32: 0``)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = [(CUDA, {"use_tf32": 0} if fp32 else {}), CPU] if provider == CUDA else [CPU]
    return ort.InferenceSession(path, options, providers=providers)


def parity_providers() -> tuple[list[str], list[str]]:
    """Providers to run the gates on, and a note per provider skipped and why."""
    available = ort.get_available_providers()
    if CUDA in available:
        return [CPU, CUDA], []
    return [CPU], [f"{CUDA} not usable here (onnxruntime {ort.__version__} offers {available}); CUDA gates skipped"]


def ort_runner(session: ort.InferenceSession) -> Runner:
    """Run a session on the inputs it declares; outputs by name as float32 arrays."""
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]

    def run(inputs: Arrays) -> Arrays:
        values = session.run(output_names, {name: inputs[name] for name in input_names})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(output_names, values, strict=True)}

    return run


def golden_runner(case: Case) -> Arrays:
    """The official outputs stored with a fixture case."""
    if case.golden is None:
        raise ValueError(f"case {case.name} has no golden outputs")
    return case.golden


def _valid(output: str, inputs: Arrays, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the positions of ``output`` that carry meaning (valid clips for saliency)."""
    if output == "saliency_scores":
        return inputs["src_vid_mask"][:, : shape[1]] > 0.5
    return np.ones(shape, dtype=bool)


def _max_abs_diff(output: str, inputs: Arrays, ref: np.ndarray, cand: np.ndarray) -> float:
    """Largest |ref - cand| over the meaningful positions; inf on a shape mismatch or NaN."""
    if output == "saliency_scores":
        width = inputs["src_vid_mask"].shape[1]
        ref, cand = ref[:, :width], cand[:, :width]
    if ref.shape != cand.shape:
        return float("inf")
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))[_valid(output, inputs, ref.shape)]
    if diff.size == 0:
        return 0.0
    return float("inf") if np.isnan(diff).any() else float(diff.max())


def _progress(cases: Sequence[Case], desc: str, show: bool):
    return tqdm(cases, desc=desc, disable=not show, file=sys.stderr, leave=False, unit="case")


def fp32_gate(
    name: str,
    reference: Callable[[Case], Arrays],
    candidate: Runner,
    cases: Sequence[Case],
    *,
    reference_label: str,
    candidate_label: str,
    provider: str,
    atol: float,
    progress: bool = False,
) -> GateResult:
    """Max abs difference per output and case; fails when any exceeds ``atol``."""
    per_case, worst = [], {o: (-1.0, "") for o in OUTPUTS}
    for case in _progress(cases, name, progress):
        ref, cand = reference(case), candidate(case.inputs)
        diffs = {o: _max_abs_diff(o, case.inputs, ref[o], cand[o]) for o in OUTPUTS}
        per_case.append({"case": case.describe(), "notes": case.notes, "max_abs_diff": diffs})
        for output, value in diffs.items():
            if value > worst[output][0]:
                worst[output] = (value, case.describe())
    failures = [
        f"{name}: output {o} differs by {d:.3g} > {atol:g} in case {c}" for o, (d, c) in worst.items() if d > atol
    ]
    measured = {f"max_abs_diff_{o}": d for o, (d, _) in worst.items()}
    measured.update({f"worst_case_{o}": c for o, (_, c) in worst.items()})
    return GateResult(
        name, "fp32", reference_label, candidate_label, provider, not failures, {"max_abs_diff": atol},
        measured, failures, per_case,
    )


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
    """Foreground (class 0) probability of (Q, 2) logits -> (Q,)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    prob = np.exp(shifted)
    return (prob / prob.sum(axis=-1, keepdims=True))[..., 0]


def _span_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (center, width) spans."""
    a0, a1 = a[0] - a[1] / 2, a[0] + a[1] / 2
    b0, b1 = b[0] - b[1] / 2, b[0] + b[1] / 2
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return 1.0 if union <= 0 else float(inter / union)


def _row_fp16_metrics(ref: Arrays, cand: Arrays, row: int, clips: int, tie_margin: float) -> dict:
    """Top-1 agreement, top-1 span IoU and saliency Spearman of one batch row.

    The candidate's top-1 counts as the reference's when its reference foreground probability is
    within ``tie_margin`` of the best one: such queries are tied at fp16 precision, so either is the
    top-1 moment, and its span is then compared with the reference span *of the same query*.
    The saliency is compared only on rows where both graphs provably made the same top-1 pick (same
    argmax, and the reference margin is more than twice the largest foreground-probability change):
    MR2HD refines the saliency with the top-1 moment's clips, so where fp16 noise can reorder tied
    queries inside the graph the saliency legitimately differs.
    """
    ref_fg, cand_fg = _softmax_fg(ref["pred_logits"][row]), _softmax_fg(cand["pred_logits"][row])
    ref_top, cand_top = int(ref_fg.argmax()), int(cand_fg.argmax())
    ranked = np.sort(ref_fg)[::-1]
    margin = float(ranked[0] - ranked[1]) if len(ranked) > 1 else 1.0
    same = bool(ref_fg[cand_top] >= ref_fg.max() - tie_margin)
    ref_span = ref["pred_spans"][row, cand_top if same else ref_top]
    iou = _span_iou(ref_span, cand["pred_spans"][row, cand_top])
    ref_sal, cand_sal = ref["saliency_scores"][row, :clips], cand["saliency_scores"][row, :clips]
    rho = None  # not compared: top-1 pick not provably shared, < 2 clips or constant scores
    same_pick = cand_top == ref_top and margin > 2 * float(np.abs(cand_fg - ref_fg).max())
    if same_pick and clips >= 2 and np.ptp(ref_sal) > 0 and np.ptp(cand_sal) > 0:
        rho = float(spearmanr(ref_sal, cand_sal).statistic)
    return {
        "top1_same": same, "top1_exact_query": cand_top == ref_top, "reference_top1_margin": margin,
        "top1_iou": iou, "saliency_spearman": rho,
    }


def fp16_gate(
    name: str,
    reference: Runner,
    candidate: Runner,
    cases: Sequence[Case],
    *,
    provider: str,
    thresholds: Thresholds,
    progress: bool = False,
) -> GateResult:
    """Task-level agreement of an fp16 graph with the fp32 reference, over every batch row."""
    rows = []
    for case in _progress(cases, name, progress):
        ref, cand = reference(case.inputs), candidate(case.inputs)
        for row, clips in enumerate(case.video_lengths):
            metrics = _row_fp16_metrics(ref, cand, row, clips, thresholds.fp16_tie_margin)
            rows.append({"case": case.describe(), "row": row, **metrics})
    rhos = [r["saliency_spearman"] for r in rows if r["saliency_spearman"] is not None]
    measured = {
        "rows": len(rows),
        "top1_same_rate": float(np.mean([r["top1_same"] for r in rows])),
        "top1_exact_query_rate": float(np.mean([r["top1_exact_query"] for r in rows])),
        "decisive_rows": sum(r["reference_top1_margin"] >= thresholds.fp16_tie_margin for r in rows),
        "mean_top1_iou": float(np.mean([r["top1_iou"] for r in rows])),
        "min_top1_iou": float(np.min([r["top1_iou"] for r in rows])),
        "mean_saliency_spearman": float(np.mean(rhos)) if rhos else None,  # None: no comparable row
        "min_saliency_spearman": float(np.min(rhos)) if rhos else None,
        "rows_with_spearman": len(rhos),
    }
    failures = _fp16_failures(name, rows, measured, thresholds)
    limits = {k: v for k, v in asdict(thresholds).items() if k.startswith("fp16")}
    return GateResult(name, "fp16", "fp32", "fp16", provider, not failures, limits, measured, failures, rows)


def _fp16_failures(name: str, rows: list[dict], measured: dict, t: Thresholds) -> list[str]:
    """Messages for each fp16 metric under its threshold, naming the worst row."""
    failures = []
    if measured["top1_same_rate"] < t.fp16_top1_rate:
        bad = [f"{r['case']} row {r['row']}" for r in rows if not r["top1_same"]]
        failures.append(
            f"{name}: output pred_logits top-1 moment identical in {measured['top1_same_rate']:.2%} of rows "
            f"< {t.fp16_top1_rate:.0%}; differs in {len(bad)} rows, first: {bad[0]}"
        )
    if measured["mean_top1_iou"] < t.fp16_mean_iou:
        worst = min(rows, key=lambda r: r["top1_iou"])
        failures.append(
            f"{name}: output pred_spans mean top-1 IoU {measured['mean_top1_iou']:.4f} < {t.fp16_mean_iou}; "
            f"worst {worst['top1_iou']:.4f} in case {worst['case']} row {worst['row']}"
        )
    if measured["mean_saliency_spearman"] is not None and measured["mean_saliency_spearman"] < t.fp16_spearman:
        worst = min((r for r in rows if r["saliency_spearman"] is not None), key=lambda r: r["saliency_spearman"])
        failures.append(
            f"{name}: output saliency_scores mean Spearman {measured['mean_saliency_spearman']:.4f} < "
            f"{t.fp16_spearman}; worst {worst['saliency_spearman']:.4f} in case {worst['case']} row {worst['row']}"
        )
    return failures


def _row_int8_metrics(ref: Arrays, cand: Arrays, row: int, clips: int) -> dict:
    """Top-1 query agreement, reference margin, top-1 span IoU and valid-clip saliency Spearman of one row.

    The saliency is compared on every row with >= 2 clips and non-constant scores; the gate averages it over
    the decisive rows with the same top-1 pick (MR2HD refines the saliency with the top-1 moment's clips).
    """
    ref_fg, cand_fg = _softmax_fg(ref["pred_logits"][row]), _softmax_fg(cand["pred_logits"][row])
    ref_top, cand_top = int(ref_fg.argmax()), int(cand_fg.argmax())
    ranked = np.sort(ref_fg)[::-1]
    margin = float(ranked[0] - ranked[1]) if len(ranked) > 1 else 1.0
    ref_sal, cand_sal = ref["saliency_scores"][row, :clips], cand["saliency_scores"][row, :clips]
    rho = None
    if clips >= 2 and np.ptp(ref_sal) > 0 and np.ptp(cand_sal) > 0:
        rho = float(spearmanr(ref_sal, cand_sal).statistic)
    return {"top1_identical": cand_top == ref_top, "reference_top1_margin": margin,
            "top1_iou": _span_iou(ref["pred_spans"][row, ref_top], cand["pred_spans"][row, cand_top]),
            "saliency_spearman": rho}


def int8_gate(
    name: str,
    reference: Runner,
    candidate: Runner,
    cases: Sequence[Case],
    *,
    provider: str,
    thresholds: Thresholds,
    reference_label: str = "fp32",
    progress: bool = False,
) -> GateResult:
    """Task-level agreement of the int8 graph with the fp32 reference on decisive-margin rows.

    Passes when the top-1 query is identical on >= ``int8_top1_rate`` of the rows whose reference margin is
    >= ``int8_decisive_margin`` (at least ``int8_min_decisive_rows`` of them: a model without confident
    answers, e.g. random weights, cannot show that int8 keeps them) and the mean saliency Spearman over the
    decisive same-pick rows is >= ``int8_spearman``.
    """
    t, rows = thresholds, []
    for case in _progress(cases, name, progress):
        ref, cand = reference(case.inputs), candidate(case.inputs)
        rows += [{"case": case.describe(), "row": row, **_row_int8_metrics(ref, cand, row, clips)}
                 for row, clips in enumerate(case.video_lengths)]
    decisive = [r for r in rows if r["reference_top1_margin"] >= t.int8_decisive_margin]
    rhos = [r["saliency_spearman"] for r in decisive if r["top1_identical"] and r["saliency_spearman"] is not None]
    measured = {
        "rows": len(rows), "decisive_rows": len(decisive),
        "top1_identical_rate_decisive": float(np.mean([r["top1_identical"] for r in decisive])) if decisive else None,
        "top1_identical_rate_all": float(np.mean([r["top1_identical"] for r in rows])),
        "mean_top1_iou_decisive": float(np.mean([r["top1_iou"] for r in decisive])) if decisive else None,
        "mean_saliency_spearman": float(np.mean(rhos)) if rhos else None,
        "min_saliency_spearman": float(np.min(rhos)) if rhos else None,
        "rows_with_spearman": len(rhos),
    }
    failures = _int8_failures(name, decisive, measured, t)
    limits = {k: v for k, v in asdict(t).items() if k.startswith("int8")}
    return GateResult(name, "int8", reference_label, "int8", provider, not failures, limits, measured, failures, rows)


def _int8_failures(name: str, decisive: list[dict], measured: dict, t: Thresholds) -> list[str]:
    """Messages for each int8 criterion that is not met, naming the first offending row."""
    if len(decisive) < t.int8_min_decisive_rows:
        return [f"{name}: only {len(decisive)} rows have a decisive top-1 margin (>= {t.int8_decisive_margin}) "
                f"< {t.int8_min_decisive_rows}: int8 cannot be validated on this model's answers (random weights?) "
                "- gate it on a trained checkpoint or more cases (--int8-data)"]
    failures = []
    if measured["top1_identical_rate_decisive"] < t.int8_top1_rate:
        bad = [f"{r['case']} row {r['row']}" for r in decisive if not r["top1_identical"]]
        failures.append(f"{name}: output pred_logits top-1 moment identical in "
                        f"{measured['top1_identical_rate_decisive']:.2%} of decisive rows < {t.int8_top1_rate:.0%}; "
                        f"differs in {len(bad)} rows, first: {bad[0]}")
    if measured["mean_saliency_spearman"] is None or measured["mean_saliency_spearman"] < t.int8_spearman:
        failures.append(f"{name}: output saliency_scores mean Spearman {measured['mean_saliency_spearman']} < "
                        f"{t.int8_spearman} over {measured['rows_with_spearman']} decisive rows")
    return failures


def r1_gate(name: str, fp32_r1: float, int8_r1: float, queries: int, *, thresholds: Thresholds,
            dataset: str) -> GateResult:
    """R1@0.5 (0-100) of the int8 graph on a benchmark dataset must be within ``int8_max_r1_drop`` of fp32's."""
    drop = fp32_r1 - int8_r1
    failures = [] if drop <= thresholds.int8_max_r1_drop else [
        f"{name}: R1@0.5 {int8_r1:.2f} is {drop:.2f} points below fp32's {fp32_r1:.2f} on {dataset} "
        f"(> {thresholds.int8_max_r1_drop})"]
    measured = {"fp32_r1_at_0.5": fp32_r1, "int8_r1_at_0.5": int8_r1, "r1_drop_points": drop, "queries": queries}
    return GateResult(name, "int8-r1", "fp32", "int8", CPU, not failures,
                      {"int8_max_r1_drop": thresholds.int8_max_r1_drop}, measured, failures, [{"dataset": dataset}])


def summarize(gates: Sequence[dict]) -> dict:
    """Manifest-sized summary of gate dicts (``GateResult.to_dict()``): pass/fail and measured numbers."""
    return {
        "passed": all(g["passed"] for g in gates),
        "gates": [
            {"name": g["name"], "provider": g["provider"], "passed": g["passed"], "thresholds": g["thresholds"],
             "measured": {k: v for k, v in g["measured"].items() if not k.startswith("worst_case")}}
            for g in gates
        ],
    }


def raise_on_failure(gates: Sequence[GateResult]) -> None:
    """Raise ParityError listing every failure of every gate, if any."""
    failures = [message for gate in gates for message in gate.failures]
    if failures:
        raise ParityError("parity gates failed:\n  " + "\n  ".join(failures))
