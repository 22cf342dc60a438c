"""A real quality floor: ``trdetr-train`` on a CI-sized synthetic set must find the planted moments.

The run goes through the real entry points, as ``bench/train_synthetic.py`` does at a larger size:
``training.synthetic`` writes the data, ``trdetr-train``'s trainer trains (official losses, official
checkpoint), ``trdetr-predict`` predicts held-out videos from the saved checkpoint and
``training.evaluation`` scores them (official R1@0.5).

Measured with exactly this module's run (128 train / 50 held-out queries of 12-16 clips, seeds 1 and 2
for the data, 0 for training, 10 epochs of batch 8, one torch thread), on the shared 2 cores at load ~11:
R1@0.5 = 70.0 after training (50-63 s of training, 79-86 s in all over three runs), 14.0 for the same
model before training (chance: its top moment overlaps the planted one by luck). The floor, 40, sits well below the first and
far above the second. The run is short and not converged: other seeds of data and model gave 30.0
(untrained 10.0), so a change that moves the training trajectory (losses, init, data generator) may move
this number by tens of points; re-measure then rather than lowering the floor blindly. More threads do
not help on loaded cores: a wider run (96 queries of up to 24 clips, 5 moment queries, batch 16, 8
epochs) with 2 threads trained for 550 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from training import predict_cli, train_cli
from training.dataset import read_jsonl
from training.evaluation import evaluate
from training.synthetic import SyntheticSpec, SyntheticSplit, write_synthetic_split

TRAIN_QUERIES, TEST_QUERIES, EPOCHS, MIN_CLIPS, MAX_CLIPS = 128, 50, 10, 12, 16
R1_FLOOR = 40.0  # percent; measured 70.0 (see the module docstring)
UNTRAINED_CEILING = 30.0  # percent: an untrained model must stay below it, or the floor proves nothing

pytestmark = pytest.mark.slow


def _data_flags(split: SyntheticSplit) -> list[str]:
    config = split.dataset_config()
    return [
        "--v-feat-dirs",
        *map(str, config.v_feat_dirs),
        "--t-feat-dir",
        str(config.t_feat_dir),
        "--max-v-l",
        str(MAX_CLIPS),
    ]


def _r1_at_05(checkpoint: Path, split: SyntheticSplit, out: Path) -> float:
    """R1@0.5 (percent) of ``trdetr-predict CHECKPOINT`` on ``split``, scored by the official metric."""
    annotations = split.dataset_config().annotation_path
    assert (
        predict_cli.main(
            [
                str(checkpoint),
                "--data-path",
                str(annotations),
                *_data_flags(split),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    return evaluate(read_jsonl(out), read_jsonl(annotations))["brief"]["MR-full-R1@0.5"]


@pytest.fixture(scope="module")
def quality(tmp_path_factory) -> dict[str, float]:
    """Train once; R1@0.5 of the trained and of the same model before training, and the training time."""
    root = tmp_path_factory.mktemp("quality")
    spec = SyntheticSpec(min_clips=MIN_CLIPS, max_clips=MAX_CLIPS)
    train = write_synthetic_split(root / "data", "train", TRAIN_QUERIES, seed=1, spec=spec)
    test = write_synthetic_split(root / "data", "test", TEST_QUERIES, seed=2, spec=spec, first_qid=1_000_000)
    args = train_cli.build_parser().parse_args(
        [
            "--train-path",
            str(train.annotation_path),
            *_data_flags(train),
            "--cache-features",
            "--enc-layers",
            "1",
            "--dec-layers",
            "2",
            "--dim-feedforward",
            "256",
            "--num-queries",
            "3",
            "--nheads",
            "4",
            "--dropout",
            "0.0",
            "--input-dropout",
            "0.1",
            "--n-epoch",
            str(EPOCHS),
            "--bsz",
            "8",
            "--lr",
            "5e-4",
            "--seed",
            "0",
            "--out-dir",
            str(root / "run"),
            "--no-progress",
        ]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as measured; float sums depend on the thread count
    try:
        trainer = train_cli.build_trainer(args)
        untrained = trainer.save(root / "untrained.ckpt", epoch=0)
        started = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return {
        "trained": _r1_at_05(result.latest_checkpoint, test, root / "trained.jsonl"),
        "untrained": _r1_at_05(untrained, test, root / "untrained.jsonl"),
        "train_seconds": seconds,
    }


def test_training_finds_the_planted_moments_of_held_out_videos(quality):
    assert quality["trained"] >= R1_FLOOR, (
        f"R1@0.5 {quality['trained']} after training < floor {R1_FLOOR}: {quality}"
    )


def test_an_untrained_model_stays_far_below_the_floor(quality):
    """The floor means something only if chance cannot reach it."""
    assert quality["untrained"] < UNTRAINED_CEILING, quality
