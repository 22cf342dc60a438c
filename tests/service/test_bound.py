"""The GPU engine path on the CPU EP: IOBinding buckets equal plain runs, warm-up covers every bucket before
/readyz, precision auto, TF32 and CUDA-graph options (a no-op, logged, off the CUDA EP)."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from svc_helpers import (
    DEFAULT_BUNDLE,
    b64,
    manifest_of,
    npy_bytes,
    npz_bytes,
    random_groups,
    random_text,
    serve,
)

from service.app import create_app
from service.inference.bound import CUDA_GRAPH_CAPTURE_RUNS, BoundRunner, default_buckets
from service.inference.bundle import ModelBundle, resolve_precision
from service.inference.session import OnnxModel, cuda_provider_options
from service.settings import Settings


@pytest.fixture(scope="module")
def plain(small_bundle) -> ModelBundle:
    return ModelBundle(small_bundle, device="cpu", intra_op_threads=1, io_binding="off")


@pytest.fixture(scope="module")
def bound(small_bundle) -> ModelBundle:
    return ModelBundle(small_bundle, device="cpu", intra_op_threads=1, io_binding="on", max_batch_size=8)


def random_batch(pre, rng: np.random.Generator, rows: int, tokens: int, clips: int) -> dict[str, np.ndarray]:
    """A padded batch as the batcher builds it: rows of random lengths up to (tokens, clips), masks 1 = valid."""
    batch = {
        "src_txt": np.zeros((rows, tokens, pre.text_dim), np.float32),
        "src_txt_mask": np.zeros((rows, tokens), np.float32),
        "src_vid": np.zeros((rows, clips, pre.video_input_dim), np.float32),
        "src_vid_mask": np.zeros((rows, clips), np.float32),
    }
    for row in range(rows):
        lt = tokens if row == 0 else int(rng.integers(1, tokens + 1))
        lv = clips if row == rows - 1 else int(rng.integers(1, clips + 1))
        batch["src_txt"][row, :lt] = rng.standard_normal((lt, pre.text_dim))
        batch["src_vid"][row, :lv] = rng.standard_normal((lv, pre.video_input_dim))
        batch["src_txt_mask"][row, :lt] = 1.0
        batch["src_vid_mask"][row, :lv] = 1.0
    return batch


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], vid_mask: np.ndarray) -> float:
    """Largest difference over the valid positions, relative to the value where it is above 1.

    Padding changes float32 summation order inside ORT's kernels (the plain session shows it too: padding
    one clip to 75 moves saliency logits of magnitude ~6 by up to ~8e-6), so 1e-5 is absolute for values
    up to 1 and relative above.
    """
    worst = 0.0
    for name, ref in b.items():
        assert a[name].shape == ref.shape, (name, a[name].shape, ref.shape)
        valid = vid_mask > 0 if name == "saliency_scores" else np.ones(ref.shape, bool)
        scaled = np.abs(a[name] - ref) / np.maximum(1.0, np.abs(ref))
        worst = max(worst, float(scaled[valid].max()))
    return worst


def test_default_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert default_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert default_buckets(6) == (1, 2, 4, 6)
    assert default_buckets(1) == (1,)


def test_bucketed_runs_equal_plain_runs_for_many_shapes_and_batch_sizes(plain, bound):
    pre = plain.pre
    rng = np.random.default_rng(0)
    shapes = [
        (rows, tokens, clips)
        for rows in (1, 2, 3, 5, 8)
        for tokens, clips in (
            (1, 1),
            (pre.max_text_tokens, pre.max_video_clips),
            (7, 13),
            (int(rng.integers(1, 33)), 40),
        )
    ]
    for rows, tokens, clips in shapes:  # one runner, shapes in turn: the staging buffer is reused across them
        batch = random_batch(pre, rng, rows, tokens, clips)
        assert bound.bound.fits(batch)
        diff = max_diff(bound.run(batch), plain.run(batch), batch["src_vid_mask"])
        assert diff <= 1e-5, (rows, tokens, clips, diff)
    assert set(bound.bound.runs) == {1, 2, 4, 8}


def test_each_row_equals_its_run_alone(plain, bound):
    """Batch- and padding-invariance, the premise of the buckets: row r of a padded bucket = row r alone."""
    pre = plain.pre
    batch = random_batch(pre, np.random.default_rng(1), 5, 20, 60)
    together = bound.run(batch)
    for row in range(5):
        lt, lv = int(batch["src_txt_mask"][row].sum()), int(batch["src_vid_mask"][row].sum())
        alone_feeds = {
            "src_txt": batch["src_txt"][row : row + 1, :lt],
            "src_txt_mask": batch["src_txt_mask"][row : row + 1, :lt],
            "src_vid": batch["src_vid"][row : row + 1, :lv],
            "src_vid_mask": batch["src_vid_mask"][row : row + 1, :lv],
        }
        alone = plain.run(alone_feeds)
        for name, ref in alone.items():
            got = (
                together[name][row : row + 1, :lv]
                if name == "saliency_scores"
                else together[name][row : row + 1]
            )
            assert (np.abs(got - ref) / np.maximum(1.0, np.abs(ref))).max() <= 1e-5, (row, name)


def test_buffers_are_allocated_once_and_answers_are_not_overwritten_by_the_next_run(bound):
    runner = bound.bound
    pointers = {b: [v.data_ptr() for v in runner._bound[b].inputs.values()] for b in runner.buckets}
    rng = np.random.default_rng(2)
    first_batch = random_batch(bound.pre, rng, 3, 10, 30)
    first = bound.run(first_batch)
    kept = {name: value.copy() for name, value in first.items()}
    bound.run(random_batch(bound.pre, rng, 4, 32, 75))
    for name, value in kept.items():
        np.testing.assert_array_equal(first[name], value)
    assert pointers == {b: [v.data_ptr() for v in runner._bound[b].inputs.values()] for b in runner.buckets}


def test_batches_beyond_the_buckets_fall_back_to_plain_runs(plain, bound):
    batch = random_batch(plain.pre, np.random.default_rng(3), 9, 4, 5)  # 9 rows > largest bucket 8
    assert not bound.bound.fits(batch)
    assert max_diff(bound.run(batch), plain.run(batch), batch["src_vid_mask"]) == 0.0


def test_warmup_runs_every_bucket(small_bundle):
    model = OnnxModel(small_bundle / "model.onnx", device="cpu", intra_op_threads=1)
    pre = manifest_of(small_bundle).preprocessing
    runner = BoundRunner(model, buckets=(1, 3, 4), tokens=pre.max_text_tokens, clips=pre.max_video_clips)
    runner.warmup(2)
    assert dict(runner.runs) == {1: 2, 3: 2, 4: 2}
    assert not runner.cuda_graph and runner.device == "cpu"


@pytest.mark.anyio
async def test_readyz_waits_until_every_bucket_is_warmed_up(make_settings, monkeypatch):
    gate, original = threading.Event(), BoundRunner.warmup
    monkeypatch.setattr(
        BoundRunner, "warmup", lambda self, runs, rng=None: (gate.wait(30), original(self, runs, rng))
    )
    app = create_app(make_settings(io_binding="on", max_batch_size=4, warmup_runs=2))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:

        async def probe_during_warmup() -> None:
            while app.state.runtime.bundle is None:
                await asyncio.sleep(0.02)
            during = await client.get("/readyz")
            assert during.status_code == 503 and during.json()["status"] == "starting"
            assert app.state.runtime.bundle.bound.runs == {}
            gate.set()

        probe = asyncio.create_task(probe_during_warmup())
        async with app.router.lifespan_context(app):
            await probe
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            checks = ready.json()["checks"]
            assert (checks["io_binding"], checks["cuda_graph"], checks["precision"]) == (True, False, "fp32")
            assert dict(app.state.runtime.bundle.bound.runs) == {1: 2, 2: 2, 4: 2}


def mixed_bodies(pre, count: int) -> list[dict]:
    rng = np.random.default_rng(7)
    bodies = []
    for index in range(count):
        clips = int(rng.integers(1, pre.max_video_clips + 1))
        queries = [
            {
                "features_b64": b64(
                    npy_bytes(random_text(pre, int(rng.integers(1, pre.max_text_tokens + 1)), 10 * index + q))
                )
            }
            for q in range(1 + index % 3)
        ]
        video = {"format": "npz", "data_b64": b64(npz_bytes(**random_groups(pre, clips, seed=index)))}
        bodies.append({"video": video, "queries": queries, "top_k": 5})
    return bodies


async def answers(settings: Settings, bodies: list[dict]) -> list[dict]:
    async with serve(settings) as client:
        responses = await asyncio.gather(*(client.post("/v1/highlights", json=body) for body in bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json() for r in responses]


@pytest.mark.anyio
async def test_the_service_answers_the_same_through_the_buckets(make_settings, small_bundle):
    bodies = mixed_bodies(manifest_of(small_bundle).preprocessing, 8)
    plain_answers = await answers(make_settings(io_binding="off", max_batch_wait_ms=50.0), bodies)
    bound_answers = await answers(
        make_settings(io_binding="on", max_batch_wait_ms=50.0, max_batch_size=8), bodies
    )
    for plain_answer, bound_answer in zip(plain_answers, bound_answers, strict=True):
        for a, b in zip(plain_answer["results"], bound_answer["results"], strict=True):
            raw_a, raw_b = [c["raw"] for c in a["clips"]], [c["raw"] for c in b["clips"]]
            np.testing.assert_allclose(raw_b, raw_a, rtol=1e-5, atol=1e-5)


def test_cuda_graph_off_the_cuda_ep_is_a_logged_no_op(small_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="service.inference.bundle"):
        bundle = ModelBundle(
            small_bundle, device="cpu", intra_op_threads=1, io_binding="on", cuda_graph=True, max_batch_size=2
        )
    assert "TRDETR_CUDA_GRAPH=true has no effect" in caplog.text
    assert bundle.bound is not None and not bundle.cuda_graph
    bundle.warmup(1)  # no capture runs off CUDA: each bucket runs exactly the asked number of times
    assert dict(bundle.bound.runs) == {1: 1, 2: 1}
    with pytest.raises(RuntimeError, match="gpu_graph_id"):  # plain runs carry no graph id either
        bundle.model.run_options.get_run_config_entry("gpu_graph_id")


def test_io_binding_auto_is_off_on_the_cpu(small_bundle):
    assert ModelBundle(small_bundle, device="cpu", intra_op_threads=1, io_binding="auto").bound is None


def test_cuda_graph_without_io_binding_is_refused_by_the_settings():
    with pytest.raises(ValidationError, match="TRDETR_CUDA_GRAPH=true needs TRDETR_IO_BINDING"):
        Settings(cuda_graph=True, io_binding="off")
    assert Settings(cuda_graph=True).io_binding == "auto"


def test_precision_auto_is_fp16_only_on_cuda_with_an_fp16_graph():
    assert resolve_precision("auto", cuda=True, has_fp16=True) == "fp16"
    assert resolve_precision("auto", cuda=True, has_fp16=False) == "fp32"
    assert resolve_precision("auto", cuda=False, has_fp16=True) == "fp32"
    assert resolve_precision("int8", cuda=False, has_fp16=True) == "int8"
    assert Settings().precision == "auto"


def test_precision_auto_on_the_cpu_runs_the_fp32_graph():
    bundle = ModelBundle(DEFAULT_BUNDLE, device="cpu", intra_op_threads=1, precision="auto")
    assert bundle.precision == "fp32" and bundle.model_file == "model.onnx"


def test_cuda_options_turn_tf32_off_for_fp32_and_ask_for_graph_capture():
    assert cuda_provider_options(fp32=True, cuda_graph=False) == {"use_tf32": "0"}
    assert cuda_provider_options(fp32=False, cuda_graph=False) == {}
    assert cuda_provider_options(fp32=True, cuda_graph=True) == {"use_tf32": "0", "enable_cuda_graph": "1"}
    assert CUDA_GRAPH_CAPTURE_RUNS >= 2
