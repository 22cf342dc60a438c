"""The text path: texts of concurrent requests share encoder runs, repeated (normalised) texts hit the LRU,
and either way a text's features equal encoding it alone. Runs the default bundle's real text encoder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from svc_helpers import DEFAULT_BUNDLE

from service.errors import InvalidInput
from service.inference.bundle import ModelBundle
from service.inference.text_queries import TextQueryEncoder
from service.metrics import Metrics

pytestmark = pytest.mark.anyio

TEXTS = ["a man plays the guitar", "two dogs run on the beach", "someone cooks pasta in a small kitchen",
         "a child rides a bike", "fireworks over a city at night", "a woman reads", "cars in traffic",
         "people dance at a wedding party while a band plays"]


@pytest.fixture(scope="module")
def bundle():
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("the default bundle is not in this checkout")
    loaded = ModelBundle(DEFAULT_BUNDLE, device="cpu", intra_op_threads=1)
    assert loaded.text_encoder is not None
    return loaded


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_concurrent_texts_share_runs_and_equal_one_at_a_time(bundle):
    metrics = Metrics()
    text = TextQueryEncoder(bundle.text_encoder, cache_entries=0, max_batch=64, metrics=metrics)
    await text.start()
    try:
        answers = await asyncio.gather(*(text.encode([t]) for t in TEXTS))
    finally:
        await text.stop()
    runs = _sample(metrics, "trdetr_text_encode_batch_size_count")
    assert runs < len(TEXTS), "the texts of concurrent requests did not share encoder runs"
    assert _sample(metrics, "trdetr_text_encode_batch_size_sum") == len(TEXTS)
    for t, got in zip(TEXTS, answers, strict=True):
        alone = bundle.text_encoder.encode([t])[0]
        assert got[0].shape == alone.shape
        np.testing.assert_allclose(got[0], alone, atol=1e-5)


async def test_repeated_normalised_texts_hit_the_lru_and_it_stays_bounded(bundle):
    metrics = Metrics()
    text = TextQueryEncoder(bundle.text_encoder, cache_entries=2, max_batch=64, metrics=metrics)
    await text.start()
    try:
        first = (await text.encode(["A man plays the GUITAR"]))[0]
        again = (await text.encode(["  a man   plays the guitar "]))[0]
        assert again is first and not first.flags.writeable
        assert _sample(metrics, "trdetr_text_cache_requests_total", result="hit") == 1
        both = await text.encode(["same text", "same text"])  # the second waits for the first's run
        assert both[0] is both[1]
        assert _sample(metrics, "trdetr_text_cache_requests_total", result="in_flight") == 1
        await text.encode(["a third text"])
        assert len(text.cache) == 2
        assert text.cache.get((bundle.text_encoder.identity, text.encoder.clean("A man plays the GUITAR"))) is None
        with pytest.raises(InvalidInput) as refused:
            await text.encode(["word " * 200], first_index=3)
        assert refused.value.code == "query_too_long" and "queries[3]" in refused.value.message
    finally:
        await text.stop()
