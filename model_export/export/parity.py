"""Parity gates: a reference (torch, or the official golden outputs) against an ONNX Runtime session.

Generic over "a callable from named input arrays to named output arrays", so the same gates check
the TR-DETR graph, and the tests can check them on any small module.

Gates (defaults in :class:`Thresholds`):
- fp32: max |reference - candidate| <= ``fp32_atol`` on every output of every case
  (``saliency_scores`` over valid clips only; padded clips carry no meaning). MR2HD refines the
  saliency with the clips of the top-1 moment query, so a row whose reference top-1 foreground
  probability beats the runner-up by less than ``fp32_tie_margin`` (a near-tie that fp32 rounding
  can resolve either way) and whose candidate picks another query is a *tie flip*: only that row's
  saliency is left out of the max-abs check, its logits and spans are still checked. The gate fails
  when tie flips exceed ``fp32_max_tie_flip_rate`` of the rows, and on any flip of a decisive row.
- fp16: on the rows whose reference top-1 margin is >= ``fp16_tie_margin`` (decisive rows; at least
  ``fp16_min_decisive_rows`` of them) the candidate's top-1 query must be the reference's in
  >= ``fp16_top1_rate`` of them (strict); over all rows the top-1 moment must be a top-1 of the
  reference (tie-aware: queries within ``fp16_tie_margin`` of the best are all top-1) in
  >= ``fp16_top1_rate``; mean IoU of the top-1 spans >= ``fp16_mean_iou``; mean Spearman
  correlation of the valid saliency >= ``fp16_spearman``. The report gives the strict and the
  tie-aware agreement rates separately, and how many rows were decisive.
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
    # fp32 near-tie margin (foreground probability): ORT moves the logits by ~3e-6 vs torch on the official fixture
    # (README "Models"), the foreground probabilities by at most ~1e-6, so two queries can swap places only when
    # they are closer than ~2e-6; 1e-5 leaves a 5x margin. Closer top-1 picks are decided by rounding.
    fp32_tie_margin: float = 1e-5
    fp32_max_tie_flip_rate: float = 0.02  # tie flips allowed, as a fraction of the rows (rounded down)
    fp16_top1_rate: float = 0.99
    fp16_mean_iou: float = 0.98
    fp16_spearman: float = 0.99
    # Foreground probabilities closer than this are a tie at fp16 precision (fp16 moves the logits
    # by ~1e-3, i.e. probabilities by < 1e-3); see _row_fp16_metrics.
    fp16_tie_margin: float = 1e-3
    # Rows with a decisive reference top-1 (margin >= fp16_tie_margin) the fp16 gate needs: a model without
    # confident answers (random weights) cannot show that fp16 keeps them. Random-weight bundles pass 0
    # explicitly (recorded in parity.json).
    fp16_min_decisive_rows: int = 10
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


def _valid(output: str, inputs: Arrays, shape: tuple[int, ...], skip_rows: Sequence[int] = ()) -> np.ndarray:
    """Boolean mask of the positions of ``output`` that carry meaning (valid clips for saliency).

    ``skip_rows``: batch rows whose saliency is left out (tie flips, see :func:`fp32_gate`).
    """
    if output == "saliency_scores":
        mask = inputs["src_vid_mask"][:, : shape[1]] > 0.5
        mask[list(skip_rows)] = False
        return mask
    return np.ones(shape, dtype=bool)


def _max_abs_diff(output: str, inputs: Arrays, ref: np.ndarray, cand: np.ndarray, skip_rows: Sequence[int] = ()
                  ) -> float:
    """Largest |ref - cand| over the meaningful positions; inf on a shape mismatch or NaN."""
    if output == "saliency_scores":
        width = inputs["src_vid_mask"].shape[1]
        ref, cand = ref[:, :width], cand[:, :width]
    if ref.shape != cand.shape:
        return float("inf")
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))[_valid(output, inputs, ref.shape, skip_rows)]
    if diff.size == 0:
        return 0.0
    return float("inf") if np.isnan(diff).any() else float(diff.max())


def _progress(cases: Sequence[Case], desc: str, show: bool):
    return tqdm(cases, desc=desc, disable=not show, file=sys.stderr, leave=False, unit="case")


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
    """Foreground (class 0) probability of (Q, 2) logits -> (Q,)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    prob = np.exp(shifted)
    return (prob / prob.sum(axis=-1, keepdims=True))[..., 0]


def _top1_margin(fg: np.ndarray) -> float:
    """Best minus second-best foreground probability of (Q,) probabilities (1.0 for a single query)."""
    ranked = np.sort(fg)[::-1]
    return float(ranked[0] - ranked[1]) if len(ranked) > 1 else 1.0


def _top1_picks(ref: Arrays, cand: Arrays) -> list[dict]:
    """Per batch row: the reference top-1 margin, whether the candidate's top-1 query differs, and how far the
    foreground probabilities moved. Empty when the logits' shapes differ (the max-abs check reports that)."""
    ref_logits, cand_logits = ref["pred_logits"], cand["pred_logits"]
    if ref_logits.shape != cand_logits.shape:
        return []
    picks = []
    for row in range(ref_logits.shape[0]):
        ref_fg, cand_fg = _softmax_fg(ref_logits[row]), _softmax_fg(cand_logits[row])
        change = np.abs(ref_fg - cand_fg)
        picks.append({"row": row, "margin": _top1_margin(ref_fg), "flipped": int(ref_fg.argmax()) != int(cand_fg.argmax()),
                      "fg_change": float(change.max()) if np.isfinite(change).all() else float("inf")})
    return picks


def _fp32_case(case: Case, ref: Arrays, cand: Arrays, t: Thresholds) -> dict:
    """One case of the fp32 gate: max abs differences, top-1 margins and flips.

    A near-tie flip (reference margin < ``fp32_tie_margin``, candidate top-1 query another one) leaves its row's
    saliency out of the max-abs check only when that saliency really differs by more than ``fp32_atol``
    ("excused"); a flip that changes no output (e.g. one clip: every query slices the same clip) needs no excuse.
    """
    picks = _top1_picks(ref, cand)
    ties = [p["row"] for p in picks if p["flipped"] and p["margin"] < t.fp32_tie_margin]
    excused = [r for r in ties
               if _max_abs_diff("saliency_scores", _row_inputs(case.inputs, r), ref["saliency_scores"][r:r + 1],
                                cand["saliency_scores"][r:r + 1]) > t.fp32_atol]
    diffs = {o: _max_abs_diff(o, case.inputs, ref[o], cand[o], excused if o == "saliency_scores" else ())
             for o in OUTPUTS}
    return {"case": case.describe(), "notes": case.notes, "max_abs_diff": diffs,
            "reference_top1_margins": [p["margin"] for p in picks], "tie_flip_rows": ties,
            "excused_saliency_rows": excused,
            "decisive_flip_rows": [p["row"] for p in picks if p["flipped"] and p["margin"] >= t.fp32_tie_margin],
            "max_fg_prob_change": max([0.0, *(p["fg_change"] for p in picks)])}


def _row_inputs(inputs: Arrays, row: int) -> Arrays:
    """The inputs of one batch row (batch of one)."""
    return {name: value[row:row + 1] for name, value in inputs.items()}


def fp32_gate(
    name: str,
    reference: Callable[[Case], Arrays],
    candidate: Runner,
    cases: Sequence[Case],
    *,
    reference_label: str,
    candidate_label: str,
    provider: str,
    thresholds: Thresholds,
    progress: bool = False,
) -> GateResult:
    """Max abs difference per output and case, with near-tie top-1 flips counted and bounded.

    Fails when any difference exceeds ``fp32_atol`` (the saliency of an excused near-tie flip's row left out,
    see :func:`_fp32_case`), when the top-1 query differs on a decisive row (reference margin >=
    ``fp32_tie_margin``), or when more than ``fp32_max_tie_flip_rate`` of the rows needed that excuse.
    """
    t = thresholds
    per_case = [_fp32_case(case, reference(case), candidate(case.inputs), t)
                for case in _progress(cases, name, progress)]
    worst = {o: max(((c["max_abs_diff"][o], c["case"]) for c in per_case), default=(0.0, ""), key=lambda x: x[0])
             for o in OUTPUTS}
    rows = sum(len(c["reference_top1_margins"]) for c in per_case)

    def listed(key: str) -> list[str]:
        return [f"{c['case']} row {r} (reference margin {c['reference_top1_margins'][r]:.3g})"
                for c in per_case for r in c[key]]

    excused, decisive_flips = listed("excused_saliency_rows"), listed("decisive_flip_rows")
    failures = [
        f"{name}: output {o} differs by {d:.3g} > {t.fp32_atol:g} in case {c}" for o, (d, c) in worst.items()
        if d > t.fp32_atol
    ]
    failures += _fp32_flip_failures(name, rows, excused, decisive_flips, t)
    measured = {f"max_abs_diff_{o}": d for o, (d, _) in worst.items()}
    measured.update({f"worst_case_{o}": c for o, (_, c) in worst.items()})
    measured.update(
        rows=rows,
        decisive_rows=sum(m >= t.fp32_tie_margin for c in per_case for m in c["reference_top1_margins"]),
        tie_flips=len(listed("tie_flip_rows")), tie_flips_excused=len(excused), decisive_flips=len(decisive_flips),
        max_fg_prob_change=max([0.0, *(c["max_fg_prob_change"] for c in per_case)]),
    )
    limits = {"max_abs_diff": t.fp32_atol, "tie_margin": t.fp32_tie_margin,
              "max_tie_flips_excused": _allowed_tie_flips(rows, t)}
    return GateResult(name, "fp32", reference_label, candidate_label, provider, not failures, limits, measured,
                      failures, per_case)


def _allowed_tie_flips(rows: int, t: Thresholds) -> int:
    """How many near-tie flips with their saliency left out the fp32 gate accepts over ``rows`` rows."""
    return int(np.floor(t.fp32_max_tie_flip_rate * rows + 1e-9))


def _fp32_flip_failures(name: str, rows: int, excused: list[str], decisive: list[str], t: Thresholds) -> list[str]:
    """Messages for top-1 flips on decisive rows and for too many excused near-tie flips."""
    failures = []
    if decisive:
        failures.append(
            f"{name}: output pred_logits top-1 moment query differs on {len(decisive)} decisive rows (reference "
            f"margin >= tie margin {t.fp32_tie_margin:g}), first: {decisive[0]}"
        )
    if len(excused) > _allowed_tie_flips(rows, t):
        failures.append(
            f"{name}: output saliency_scores left out of the check on {len(excused)} rows whose near-tied top-1 "
            f"query flipped (reference margin < {t.fp32_tie_margin:g}) > {_allowed_tie_flips(rows, t)} allowed "
            f"({t.fp32_max_tie_flip_rate:.0%} of {rows} rows), first: {excused[0]}"
        )
    return failures


def _span_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (center, width) spans."""
    a0, a1 = a[0] - a[1] / 2, a[0] + a[1] / 2
    b0, b1 = b[0] - b[1] / 2, b[0] + b[1] / 2
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return 1.0 if union <= 0 else float(inter / union)


def _row_fp16_metrics(ref: Arrays, cand: Arrays, row: int, clips: int, tie_margin: float) -> dict:
    """Top-1 agreement (strict and tie-aware), top-1 span IoU and saliency Spearman of one batch row.

    Strict: the candidate's top-1 query is the reference's. Tie-aware: the candidate's top-1 counts as the
    reference's when its reference foreground probability is within ``tie_margin`` of the best one: such
    queries are tied at fp16 precision, so either is the top-1 moment, and its span is then compared with
    the reference span *of the same query*. A row is decisive when the reference margin is >= ``tie_margin``
    (there the two agreements are the same).
    The saliency is compared only on rows where both graphs provably made the same top-1 pick (same
    argmax, and the reference margin is more than twice the largest foreground-probability change):
    MR2HD refines the saliency with the top-1 moment's clips, so where fp16 noise can reorder tied
    queries inside the graph the saliency legitimately differs.
    """
    ref_fg, cand_fg = _softmax_fg(ref["pred_logits"][row]), _softmax_fg(cand["pred_logits"][row])
    ref_top, cand_top = int(ref_fg.argmax()), int(cand_fg.argmax())
    margin = _top1_margin(ref_fg)
    decisive = margin >= tie_margin
    tie_aware = cand_top == ref_top or (not decisive and bool(ref_fg[cand_top] >= ref_fg.max() - tie_margin))
    ref_span = ref["pred_spans"][row, cand_top if tie_aware else ref_top]
    iou = _span_iou(ref_span, cand["pred_spans"][row, cand_top])
    ref_sal, cand_sal = ref["saliency_scores"][row, :clips], cand["saliency_scores"][row, :clips]
    rho = None  # not compared: top-1 pick not provably shared, < 2 clips or constant scores
    same_pick = cand_top == ref_top and margin > 2 * float(np.abs(cand_fg - ref_fg).max())
    if same_pick and clips >= 2 and np.ptp(ref_sal) > 0 and np.ptp(cand_sal) > 0:
        rho = float(spearmanr(ref_sal, cand_sal).statistic)
    return {
        "top1_tie_aware": tie_aware, "top1_strict": cand_top == ref_top, "decisive": decisive,
        "reference_top1_margin": margin, "top1_iou": iou, "saliency_spearman": rho,
    }


def _rate(flags: Sequence[bool]) -> float | None:
    """Fraction of true flags (None for no flag)."""
    return float(np.mean(flags)) if len(flags) else None


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
    """Task-level agreement of an fp16 graph with the fp32 reference, over every batch row.

    ``measured`` gives the strict top-1 agreement over all rows and over the decisive rows, the tie-aware
    agreement over all rows, the decisive rows and the tie flips (near-tied rows where fp16 picked another
    query), span IoU and saliency Spearman.
    """
    rows = []
    for case in _progress(cases, name, progress):
        ref, cand = reference(case.inputs), candidate(case.inputs)
        for row, clips in enumerate(case.video_lengths):
            metrics = _row_fp16_metrics(ref, cand, row, clips, thresholds.fp16_tie_margin)
            rows.append({"case": case.describe(), "row": row, **metrics})
    rhos = [r["saliency_spearman"] for r in rows if r["saliency_spearman"] is not None]
    decisive = [r for r in rows if r["decisive"]]
    measured = {
        "rows": len(rows),
        "decisive_rows": len(decisive),
        "top1_strict_rate": _rate([r["top1_strict"] for r in rows]),
        "top1_strict_rate_decisive": _rate([r["top1_strict"] for r in decisive]),  # None: no decisive row
        "top1_tie_aware_rate": _rate([r["top1_tie_aware"] for r in rows]),
        "tie_flips": sum(not r["decisive"] and not r["top1_strict"] for r in rows),
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
    """Messages for each fp16 criterion that is not met, naming the first or worst row."""
    failures = []
    if measured["decisive_rows"] < t.fp16_min_decisive_rows:
        failures.append(
            f"{name}: only {measured['decisive_rows']} of {len(rows)} rows have a decisive top-1 margin (>= "
            f"{t.fp16_tie_margin:g}) < {t.fp16_min_decisive_rows}: fp16 cannot be shown to keep this model's answers "
            "(random weights?) - gate a trained checkpoint, add --fixtures, or lower --fp16-min-decisive-rows"
        )
    strict = measured["top1_strict_rate_decisive"]
    if strict is not None and strict < t.fp16_top1_rate:
        bad = [f"{r['case']} row {r['row']} (reference margin {r['reference_top1_margin']:.3g})"
               for r in rows if r["decisive"] and not r["top1_strict"]]
        failures.append(
            f"{name}: output pred_logits top-1 moment query identical in {strict:.2%} of decisive rows "
            f"< {t.fp16_top1_rate:.0%}; differs in {len(bad)} decisive rows, first: {bad[0]}"
        )
    if measured["top1_tie_aware_rate"] < t.fp16_top1_rate:
        bad = [f"{r['case']} row {r['row']}" for r in rows if not r["top1_tie_aware"]]
        failures.append(
            f"{name}: output pred_logits top-1 moment identical (tie-aware) in {measured['top1_tie_aware_rate']:.2%} "
            f"of rows < {t.fp16_top1_rate:.0%}; differs in {len(bad)} rows, first: {bad[0]}"
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
    margin = _top1_margin(ref_fg)
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
