"""Compare our TR-DETR with the official golden fixture (`../shared/fixtures/official_small`).

`python -m model_export.parity_report [FIXTURE_DIR]` prints the max abs difference per output over the
single-run cases and over the padded batch (whose rows must equal the single official runs), and the
MR2HD integer facts. The tests in tests/model use the same functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .model import TRDETR

DEFAULT_FIXTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "official_small"
#: Fixture array name -> what it compares (float outputs and intermediates, batch dim dropped).
FLOAT_KEYS = ("pred_logits", "pred_spans", "saliency_scores", "hd2mr_saliency", "aux_logits", "aux_spans",
              "dbg_vid_proj", "dbg_txt_proj", "dbg_fused_vid", "dbg_t2v_out", "dbg_enc_memory",
              "dbg_hd2mr_memory", "dbg_hs", "dbg_references", "dbg_gru_hidden")
FACT_KEYS = ("top1_query", "start", "end", "slice_len")
#: Facts that depend on which query is top-1 (float noise when the fixture marks a case ambiguous).
TOP1_DEPENDENT = ("top1_query", "start", "end")


def run_model(model: TRDETR, src_txt: np.ndarray, src_txt_mask: np.ndarray, src_vid: np.ndarray,
              src_vid_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Run a batch; returns arrays named as the fixture (batch dim kept, aux/layer dims after it)."""
    with torch.no_grad():
        out = model(torch.from_numpy(src_txt), torch.from_numpy(src_txt_mask), torch.from_numpy(src_vid),
                    torch.from_numpy(src_vid_mask), return_intermediates=True)
    mid = out["intermediates"]
    arrays = {
        "pred_logits": out["pred_logits"], "pred_spans": out["pred_spans"],
        "saliency_scores": out["saliency_scores"], "hd2mr_saliency": mid["hd2mr_saliency"],
        "aux_logits": torch.stack([a["pred_logits"] for a in out["aux_outputs"]], dim=1),
        "aux_spans": torch.stack([a["pred_spans"] for a in out["aux_outputs"]], dim=1),
        "dbg_vid_proj": mid["vid_proj"], "dbg_txt_proj": mid["txt_proj"], "dbg_fused_vid": mid["fused_vid"],
        "dbg_t2v_out": mid["t2v_out"], "dbg_enc_memory": mid["enc_memory"],
        "dbg_hd2mr_memory": mid["hd2mr_memory"], "dbg_hs": mid["hs"].transpose(0, 1),
        "dbg_references": mid["references"].transpose(0, 1), "dbg_gru_hidden": mid["gru_hidden"],
    }
    arrays.update({f"mr2hd_{k}": mid[f"mr2hd_{k}"] for k in FACT_KEYS})
    return {k: v.numpy() for k, v in arrays.items()}


def _valid_part(name: str, row: np.ndarray, n_vid: int, n_txt: int, max_vid: int) -> np.ndarray:
    """The part of one padded-batch row that a single run of the same case has."""
    if name in ("saliency_scores", "hd2mr_saliency", "dbg_vid_proj", "dbg_fused_vid", "dbg_enc_memory",
                "dbg_hd2mr_memory"):
        return row[:n_vid]
    if name == "dbg_txt_proj":
        return row[:n_txt]
    if name == "dbg_t2v_out":
        return np.concatenate([row[:n_vid], row[max_vid:max_vid + n_txt]])
    return row


def case_report(model: TRDETR, cases: np.lib.npyio.NpzFile) -> tuple[dict[str, list[float]], list[str]]:
    """Each single-run case vs the official one: max abs diff per output, and fact mismatches."""
    diffs: dict[str, list[float]] = {k: [] for k in FLOAT_KEYS}
    mismatches: list[str] = []
    for i in range(int(cases["num_cases"])):
        vid, txt = cases[f"src_vid_{i}"][None], cases[f"src_txt_{i}"][None]
        ours = run_model(model, txt, np.ones(txt.shape[:2], np.float32), vid, np.ones(vid.shape[:2], np.float32))
        for key in FLOAT_KEYS:
            diffs[key].append(float(np.abs(ours[key][0] - cases[f"{key}_{i}"]).max()))
        ambiguous = bool(cases[f"mr2hd_top1_ambiguous_{i}"])
        mismatches += _fact_mismatches(f"case {i}", ours, 0, cases, f"_{i}", ambiguous)
    return diffs, mismatches


def padded_batch_report(model: TRDETR, cases: np.lib.npyio.NpzFile, batch: np.lib.npyio.NpzFile
                        ) -> tuple[dict[str, list[float]], list[str]]:
    """The official padded batch through our model, each row vs the SINGLE official run of its case."""
    ours = run_model(model, batch["src_txt"], batch["src_txt_mask"], batch["src_vid"], batch["src_vid_mask"])
    diffs: dict[str, list[float]] = {k: [] for k in FLOAT_KEYS}
    mismatches: list[str] = []
    max_vid = batch["src_vid"].shape[1]
    for i, (n_vid, n_txt) in enumerate(batch["lengths"]):
        for key in FLOAT_KEYS:
            row = _valid_part(key, ours[key][i], int(n_vid), int(n_txt), max_vid)
            diffs[key].append(float(np.abs(row - cases[f"{key}_{i}"]).max()))
        ambiguous = bool(cases[f"mr2hd_top1_ambiguous_{i}"])
        mismatches += _fact_mismatches(f"batch row {i}", ours, i, cases, f"_{i}", ambiguous)
    return diffs, mismatches


def _fact_mismatches(label: str, ours: dict[str, np.ndarray], row: int, ref: np.lib.npyio.NpzFile,
                     suffix: str, ambiguous: bool) -> list[str]:
    out = []
    for key in FACT_KEYS:
        if ambiguous and key in TOP1_DEPENDENT:
            continue
        mine, theirs = int(ours[f"mr2hd_{key}"][row]), int(ref[f"mr2hd_{key}{suffix}"])
        if mine != theirs:
            out.append(f"{label}: mr2hd_{key} {mine} != official {theirs}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture", nargs="?", type=Path, default=DEFAULT_FIXTURE)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, _ = load_checkpoint(args.fixture / "checkpoint.ckpt")
    cases, batch = np.load(args.fixture / "cases.npz"), np.load(args.fixture / "padded_batch.npz")
    single, single_bad = case_report(model, cases)
    padded, padded_bad = padded_batch_report(model, cases, batch)
    print(f"{'output':<18} {'single cases':>13} {'padded batch':>13}")
    for key in FLOAT_KEYS:
        print(f"{key:<18} {max(single[key]):>13.3g} {max(padded[key]):>13.3g}")
    worst = max(max(v) for d in (single, padded) for v in d.values())
    print(f"max over everything: {worst:.3g}; MR2HD fact mismatches: {single_bad + padded_bad or 'none'}")
    return 0 if worst <= 1e-5 and not (single_bad or padded_bad) else 1


if __name__ == "__main__":
    sys.exit(main())
