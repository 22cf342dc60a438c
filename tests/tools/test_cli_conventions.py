"""What every ``trdetr-*`` command shares: instant torch-free ``--help``, a help text and shown default for
every flag, clear errors for paths of the wrong kind, and a quiet end when stdout is closed early."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trdetr_common.cli import SIGPIPE_EXIT, HelpFormatter

ENTRY_POINTS = {  # installed script -> module:function (as in pyproject's [project.scripts])
    "trdetr-export": "model_export.cli",
    "trdetr-train": "training.train_cli",
    "trdetr-predict": "training.predict_cli",
    "trdetr-eval": "training.eval_cli",
    "trdetr-synth": "training.synth_cli",
}

PARSERS = {  # every CLI of the project -> the function that builds its parser
    "trdetr-export": ("model_export.cli", "export_parser"),
    "trdetr-export verify": ("model_export.cli", "verify_parser"),
    "trdetr-train": ("training.train_cli", "build_parser"),
    "trdetr-predict": ("training.predict_cli", "build_parser"),
    "trdetr-eval": ("training.eval_cli", "_parser"),
    "trdetr-synth": ("training.synth_cli", "build_parser"),
    "trdetr-serve": ("service.cli", "build_parser"),
    "trdetr-extract": ("extraction.cli", "parser"),
    "trdetr-worker": ("ingestion.cli", "build_parser"),
}

HELP_PROBE = """
import sys, time
started = time.perf_counter()
from {module} import main
try:
    main({argv!r})
except SystemExit as end:
    code = end.code
print("\\nPROBE", code, "torch" in sys.modules, round(time.perf_counter() - started, 3))
"""


def _run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs)


def test_pyproject_declares_every_checked_entry_point():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    for script, module in ENTRY_POINTS.items():
        assert f'{script} = "{module}:main"' in text


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"]], ids=["export", "export-verify"])
def test_export_help_never_imports_torch(argv):
    _assert_quick_torch_free_help("model_export.cli", argv)


@pytest.mark.parametrize("module", ["training.train_cli", "training.predict_cli", "training.eval_cli",
                                    "training.synth_cli"])
def test_help_never_imports_torch(module):
    _assert_quick_torch_free_help(module, ["--help"])


def _assert_quick_torch_free_help(module: str, argv: list[str]) -> None:
    """``--help`` prints usage, exits 0 and does not import torch (the 9-14 s it used to take)."""
    result = _run_python(HELP_PROBE.format(module=module, argv=argv))
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    code, imported_torch, seconds = result.stdout.rsplit("PROBE", 1)[1].split()
    assert code == "0"
    assert imported_torch == "False", f"{module} {argv} imported torch"
    # Measured 0.1-0.3 s on idle cores; the bound only catches a torch import (9-14 s) on loaded ones.
    assert float(seconds) < 5.0


def _parser(name: str) -> argparse.ArgumentParser:
    module, function = PARSERS[name]
    return getattr(importlib.import_module(module), function)()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_has_help_and_its_default_is_shown(name):
    parser = _parser(name)
    assert issubclass(parser.formatter_class, HelpFormatter), f"{name} does not use trdetr_common.cli.HelpFormatter"
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name}: {label} has no help text"
        if action.option_strings and not action.required and action.default not in (None, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, f"{name}: default of {label} not shown"


def test_help_shows_defaults_in_the_rendered_text():
    text = " ".join(_parser("trdetr-export").format_help().split())
    assert "fp32 gate: max abs difference (default: 0.0001)" in text
    assert "(default: None)" not in text


def test_export_of_a_directory_says_what_to_give(tmp_path):
    from model_export.cli import main

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    result = _run_python(f"from model_export.cli import main; raise SystemExit(main([{str(bundle)!r}, '--out', "
                         f"{str(tmp_path / 'out')!r}]))")
    assert result.returncode == 2, result.stderr
    assert "is a directory: give the checkpoint file" in result.stderr
    assert "trdetr-export verify BUNDLE_DIR" in result.stderr
    assert "Traceback" not in result.stderr and "IsADirectoryError" not in result.stderr
    assert main([str(tmp_path / "absent.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert main(["verify", str(bundle / "manifest.json")]) == 2


def test_eval_into_a_closed_pipe_ends_quietly(tmp_path):
    """``trdetr-eval ... | head -0``: the reader is gone before the metrics are printed."""
    annotation = {"qid": 1, "duration": 10, "relevant_windows": [[0, 8]], "relevant_clip_ids": [0],
                  "saliency_scores": [[2, 2, 2]]}
    prediction = {"qid": 1, "pred_relevant_windows": [[0, 8, 0.9]], "pred_saliency_scores": [0.5] * 5}
    (tmp_path / "gt.jsonl").write_text(json.dumps(annotation) + "\n")
    (tmp_path / "preds.jsonl").write_text(json.dumps(prediction) + "\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from training.eval_cli import main; sys.exit(main())",
             str(tmp_path / "preds.jsonl"), str(tmp_path / "gt.jsonl")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == SIGPIPE_EXIT
    assert result.stderr == "", result.stderr


def test_synth_writes_a_dataset_that_trdetr_train_reads(tmp_path):
    from training.dataset import QVHighlightsDataset
    from training.synth_cli import main

    out = tmp_path / "synth"
    assert main([str(out), "--train", "6", "--val", "3", "--max-clips", "20", "--group-dims", "5,3"]) == 0
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert len(train) == 6 and len(val) == 3 and not (out / "test.jsonl").exists()
    assert not {r["qid"] for r in train} & {r["qid"] for r in val}
    from training.synthetic import SyntheticSpec, SyntheticSplit

    spec = SyntheticSpec(group_dims=(5, 3), min_clips=16, max_clips=20)
    dataset = QVHighlightsDataset(SyntheticSplit(out, "train", spec).dataset_config())
    assert dataset[0]["video"].shape[1] == 5 + 3 + 2
    first = (out / "train.jsonl").read_bytes()
    assert main([str(tmp_path / "again"), "--train", "6", "--val", "3", "--max-clips", "20",
                 "--group-dims", "5,3"]) == 0
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == first  # a pure function of the flags


@pytest.mark.parametrize("argv", [["--min-clips", "40", "--max-clips", "20"], ["--train", "0", "--val", "0"],
                                  ["--group-dims", "5,x"]])
def test_synth_rejects_impossible_flags(tmp_path, argv, capsys):
    from training.synth_cli import main

    with pytest.raises(SystemExit) as end:
        main([str(tmp_path / "d"), *argv])
    assert end.value.code == 2
    assert "trdetr-synth: error:" in capsys.readouterr().err
