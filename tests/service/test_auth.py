"""API keys (header X-API-Key): 401 without, 403 wrong, probes and metrics stay open."""

from __future__ import annotations

import pytest
from svc_helpers import serve

from service.settings import Settings

pytestmark = pytest.mark.anyio


async def test_api_keys_guard_the_api_but_not_the_probes(make_settings):
    async with serve(make_settings(api_keys=["key-one", "key-two"])) as client:
        missing = await client.get("/v1/model")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        assert "X-API-Key" in missing.json()["error"]["message"]
        wrong = await client.get("/v1/videos/x", headers={"X-API-Key": "nope"})
        assert wrong.status_code == 403
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert (await client.post("/v1/moments", json={})).status_code == 401
        assert (await client.get("/v1/model", headers={"X-API-Key": "key-two"})).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(probe)).status_code == 200, probe
        metrics = (await client.get("/metrics")).text
        assert 'trdetr_rejected_requests_total{reason="missing_api_key"} 2.0' in metrics
        assert 'trdetr_rejected_requests_total{reason="invalid_api_key"} 1.0' in metrics


def test_api_keys_come_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("TRDETR_API_KEYS", " a1, b2 ,,")
    assert Settings().api_keys == ["a1", "b2"]
