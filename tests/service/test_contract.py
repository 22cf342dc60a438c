"""Contract and security (issue 14, items 6-9): guarded offline docs, one error shape, safe numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

from service.tenancy import SHARED_TENANT_ID

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}
KEY = {"X-API-Key": "docs-key-5b1f"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def query(pre) -> dict:
    return {"features_b64": b64(npy_bytes(random_text(pre, 3, seed=1)))}


# --- item 6 and 9: docs ---------------------------------------------------------------------------
async def test_docs_need_the_key_when_keys_are_set_unless_public(make_settings):
    async with serve(make_settings(api_keys=[KEY["X-API-Key"]])) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=KEY)).status_code == 200, path
        schema = (await client.get("/openapi.json", headers=KEY)).json()
        assert "APIKeyHeader" in schema["components"]["securitySchemes"]
    async with serve(make_settings(api_keys=[KEY["X-API-Key"]], public_docs=True)) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path


async def test_without_keys_the_schema_declares_no_security(client):
    schema = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in schema.get("components", {})
    assert not any("security" in op for ops in schema["paths"].values() for op in ops.values())


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_this_server(client, page):
    html = (await client.get(page)).text
    assert "http://" not in html and "https://" not in html, "the page loads something from another host"
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    assert any(a.endswith(".js") for a in assets), html
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset


async def test_model_summary_shows_no_server_paths(client, small_bundle):
    text = (await client.get("/v1/model")).text
    assert str(small_bundle) not in text and str(small_bundle.parent) not in text
    assert not re.search(r'"/(?:tmp|home|work|usr|root|models)\b', text), text


# --- item 7: the one error shape, schema, OPTIONS ------------------------------------------------
async def test_bad_utf8_and_absurd_nesting_get_a_documented_422(client):
    for body in (b'{"video_id": "\xff\xfe", "queries": ["x"]}', b"[" * 5000 + b"]" * 5000):
        response = await client.post("/v1/moments", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and "JSON" in error["message"]
        assert isinstance(error["details"], dict)


async def test_a_non_json_body_is_told_to_send_json(client):
    response = await client.post("/v1/moments", content=b"video_id=x", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["error"]["message"]


async def test_an_empty_features_b64_fails_the_schema(client):
    schema = (await client.get("/openapi.json")).json()
    query_schema = schema["components"]["schemas"]["QueryIn"]["properties"]["features_b64"]
    assert any(option.get("minLength") == 1 for option in query_schema.get("anyOf", [query_schema]))
    response = await client.post("/v1/moments", json={"video_id": "v", "queries": [{"features_b64": ""}]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    assert "features_b64" in response.json()["error"]["message"]


async def test_options_and_405_list_every_method_of_the_path(client):
    options = await client.options("/v1/videos/some-id")
    assert options.status_code == 204
    assert {"GET", "DELETE", "OPTIONS"} <= {m.strip() for m in options.headers["allow"].split(",")}
    wrong = await client.post("/v1/videos/some-id")
    assert wrong.status_code == 405 and "DELETE" in wrong.headers["allow"]


async def test_details_is_always_an_object(client):
    responses = [
        await client.get("/v2/nothing"), await client.patch("/v1/moments"),
        await client.post("/v1/moments", json={"video_id": "v"}),
        await client.post("/v1/moments", json={"video_id": "never", "queries": ["x"]}),
        await client.put("/v1/videos/v/features", content=b"abc", headers={"content-type": "text/plain"}),
    ]
    for response in responses:
        assert response.status_code >= 400
        assert isinstance(response.json()["error"]["details"], dict), response.text


# --- item 8: numbers -------------------------------------------------------------------------------
async def test_values_near_float32_max_are_normalised_not_zeroed(client, pre):
    groups = random_groups(pre, 5, seed=7, dtype="float64")
    first = pre.video_groups[0].name
    groups[first] = np.sign(groups[first]) * 3.0e38  # finite in float32; their squares overflow
    stored = await client.put("/v1/videos/huge/features", content=npz_bytes(**groups), headers=NPZ)
    assert stored.status_code == 200, stored.text
    video = await client.app.state.runtime.store.tenant(SHARED_TENANT_ID).video_input("huge")
    dim = pre.video_groups[0].dim
    np.testing.assert_allclose(np.linalg.norm(video[:, :dim], axis=1), 1.0, atol=2e-3)
    assert (await client.post("/v1/moments", json={"video_id": "huge", "queries": [query(pre)]})).status_code == 200


async def test_float64_beyond_float32_range_is_refused_by_name(client, pre):
    groups = random_groups(pre, 3, seed=8, dtype="float64")
    groups[pre.video_groups[0].name][1, 2] = 1e300
    response = await client.put("/v1/videos/too-big/features", content=npz_bytes(**groups), headers=NPZ)
    assert response.status_code == 422 and response.json()["error"]["code"] == "non_finite"
    assert "float32" in response.json()["error"]["message"]
