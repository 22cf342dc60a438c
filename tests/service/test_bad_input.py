"""Bad input gets the documented 4xx in the one error shape, and nothing already stored is lost."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from svc_helpers import b64, full_layout, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}
NPY = {"content-type": "application/x-npy"}
VIDEO = "bad-input-victim"


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


@pytest.fixture(scope="module")
async def stored(client, pre):
    """A video stored before the bad requests; every test checks it survived unchanged."""
    response = await client.put(f"/v1/videos/{VIDEO}/features", content=npz_bytes(**random_groups(pre, 9, seed=1)),
                                headers=NPZ)
    assert response.status_code == 200
    return response.json()


def assert_error(response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


async def assert_still_stored(client, stored) -> None:
    response = await client.get(f"/v1/videos/{VIDEO}")
    assert response.status_code == 200
    assert response.json()["num_clips"] == stored["num_clips"]


def groups_with(pre, **replace):
    groups = random_groups(pre, 9, seed=2)
    groups.update(replace)
    return groups


def pickled_npy() -> bytes:
    """An object array: loading it would need pickle, which the service never allows."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def lying_npy() -> bytes:
    """A 2x32 .npy whose header claims 2e13 rows: loading it naively would try to allocate terabytes."""
    return npy_bytes(np.zeros((2, 32), np.float32)).replace(b"(2, 32)", b"(20000000000000, 32)")


def lying_npz(pre) -> bytes:
    groups = {name: npy_bytes(array) for name, array in random_groups(pre, 2, seed=8).items()}
    first_name = pre.video_groups[0].name
    groups[first_name] = lying_npy().replace(b"32)", f"{pre.video_groups[0].dim})".encode())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in groups.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def first(pre) -> str:
    return pre.video_groups[0].name


# --- uploads -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make_body", "headers", "status", "code", "words"),
    [
        (lambda pre: npy_bytes(np.zeros((9, 5), np.float32)), NPY, 422, "bad_shape", ["expects"]),
        (lambda pre: npy_bytes(np.zeros(9 * 32, np.float32)), NPY, 422, "bad_shape", ["2-D"]),
        (lambda pre: npy_bytes(np.zeros((9, sum(g.dim for g in pre.video_groups) + 2), np.float32)), NPY, 422,
         "bad_shape", ["TEF"]),
        (lambda pre: npy_bytes(np.zeros((0, sum(g.dim for g in pre.video_groups)), np.float32)), NPY, 422,
         "bad_shape", ["no clips"]),
        (lambda pre: npy_bytes(np.zeros((9, sum(g.dim for g in pre.video_groups)), np.int32)), NPY, 422,
         "bad_dtype", ["float16, float32 or float64"]),
        (lambda pre: pickled_npy(), NPY, 422, "corrupt_file", ["readable"]),
        (lambda pre: b"\x93NUMPY garbage that is no npy header", NPY, 422, "corrupt_file", ["readable"]),
        (lambda pre: npz_bytes(**random_groups(pre, 9, seed=3))[:-40], NPZ, 422, "corrupt_file", ["npz"]),
        (lambda pre: b"", NPY, 422, "corrupt_file", ["empty"]),
        (lambda pre: lying_npy(), NPY, 422, "corrupt_file", ["declares shape"]),
        (lambda pre: lying_npz(pre), NPZ, 422, "corrupt_file", ["declares shape"]),
        (lambda pre: npz_bytes(**{first(pre): random_groups(pre, 9, seed=3)[first(pre)]}), NPZ, 422, "bad_groups",
         ["missing"]),
        (lambda pre: npz_bytes(**groups_with(pre, extra=np.zeros((9, 2), np.float32))), NPZ, 422, "bad_groups",
         ["unexpected"]),
        (lambda pre: npz_bytes(**groups_with(pre, **{first(pre): np.full((9, pre.video_groups[0].dim), np.nan,
                                                                         np.float32)})), NPZ, 422, "non_finite",
         ["NaN"]),
        (lambda pre: npz_bytes(**groups_with(pre, **{first(pre): np.full((9, pre.video_groups[0].dim), np.inf,
                                                                         np.float16)})), NPZ, 422, "non_finite",
         ["infinite"]),
        (lambda pre: npz_bytes(**random_groups(pre, pre.max_video_clips + 1, seed=4)), NPZ, 422, "video_too_long",
         ["at most"]),
        (lambda pre: b'{"features": [1, 2]}', {"content-type": "application/json"}, 415, "unsupported_media_type",
         ["application/x-npy"]),
        (lambda pre: npy_bytes(np.zeros((9, 32), np.float32)), {"content-type": "text/plain"}, 415,
         "unsupported_media_type", ["text/plain"]),
    ],
    ids=["wrong-dim", "1-d", "with-tef", "zero-clips", "int-dtype", "pickled-object", "garbage-npy",
         "truncated-npz", "empty-body", "lying-npy-header", "lying-npz-header", "missing-group", "extra-array", "nan", "inf-fp16", "too-long-video",
         "json-content-type", "text-content-type"],
)
async def test_bad_upload_is_refused_and_the_stored_video_survives(client, pre, stored, make_body, headers, status,
                                                                   code, words):
    response = await client.put(f"/v1/videos/{VIDEO}/features", content=make_body(pre), headers=headers)
    assert_error(response, status, code, *words)
    await assert_still_stored(client, stored)


async def test_octet_stream_is_sniffed_and_accepted(client, pre):
    body = npy_bytes(full_layout(random_groups(pre, 4, seed=5)))
    response = await client.put("/v1/videos/sniffed/features", content=body,
                                headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200 and response.json()["num_clips"] == 4


async def test_bad_video_id_is_a_422(client, pre):
    body = npz_bytes(**random_groups(pre, 4, seed=6))
    assert_error(await client.put("/v1/videos/has space!/features", content=body, headers=NPZ), 422, "invalid_request",
                 "video_id")


async def test_oversize_body_is_413_from_content_length_and_from_a_stream(make_settings, pre):
    async with serve(make_settings(max_body_bytes=4096)) as small:
        big = npz_bytes(**random_groups(pre, 60, seed=7))
        assert len(big) > 4096
        assert_error(await small.put("/v1/videos/big/features", content=big, headers=NPZ), 413, "payload_too_large",
                     "4096")

        async def chunks():
            for start in range(0, len(big), 1000):
                yield big[start:start + 1000]

        assert_error(await small.put("/v1/videos/big/features", content=chunks(), headers=NPZ), 413,
                     "payload_too_large")
        metrics = (await small.get("/metrics")).text
        assert 'trdetr_rejected_requests_total{reason="payload_too_large"} 2.0' in metrics
        assert (await small.get("/v1/videos/big")).status_code == 404


# --- search requests -------------------------------------------------------------------------
def query(pre, tokens: int = 4, dim: int | None = None) -> dict:
    array = np.random.default_rng(0).standard_normal((tokens, dim or pre.text_dim)).astype(np.float32)
    return {"features_b64": b64(npy_bytes(array))}


@pytest.mark.parametrize(
    ("make_json", "status", "code", "words"),
    [
        (lambda pre: {"video_id": "never-stored", "queries": [query(pre)]}, 404, "not_found", ["never-stored", "PUT"]),
        (lambda pre: {"video_id": VIDEO, "queries": [""]}, 422, "invalid_request", ["at least 1 character"]),
        (lambda pre: {"video_id": VIDEO, "queries": [{"text": "   "}]}, 422, "invalid_request", ["empty"]),
        (lambda pre: {"video_id": VIDEO, "queries": []}, 422, "invalid_request", ["queries"]),
        (lambda pre: {"video_id": VIDEO, "queries": [query(pre)] * 17}, 422, "too_many_queries", ["16"]),
        (lambda pre: {"video_id": VIDEO, "queries": [query(pre, dim=pre.text_dim + 1)]}, 422, "bad_shape",
         ["expects"]),
        (lambda pre: {"video_id": VIDEO, "queries": [query(pre, tokens=pre.max_text_tokens + 1)]}, 422,
         "query_too_long", ["at most"]),
        (lambda pre: {"video_id": VIDEO, "queries": [{"features_b64": "not base64!"}]}, 422, "invalid_input",
         ["base64"]),
        (lambda pre: {"video_id": VIDEO, "queries": [
            {"features_b64": b64(npy_bytes(np.full((3, pre.text_dim), np.nan, np.float32)))}]}, 422, "non_finite",
         ["NaN", "token 0"]),
        (lambda pre: {"video_id": VIDEO, "queries": ["a person cooks"]}, 422, "text_encoder_missing",
         ["features_b64", "text encoder"]),
        (lambda pre: {"video_id": VIDEO, "queries": [{"text": "x" * 1001}]}, 422, "query_too_long", ["1000"]),
        (lambda pre: {"queries": [query(pre)]}, 422, "invalid_request", ["video_id"]),
        (lambda pre: {"video_id": VIDEO, "video": {"format": "npy", "data_b64": "AAAA"}, "queries": [query(pre)]},
         422, "invalid_request", ["exactly one"]),
        (lambda pre: {"video": {"format": "npy", "data_b64": b64(npy_bytes(np.full((3, 32), np.nan, np.float32)))},
                      "queries": [query(pre)]}, 422, "non_finite", ["NaN"]),
        (lambda pre: {"video": {"format": "npz", "data_b64": b64(b"PK\x03\x04broken")}, "queries": [query(pre)]},
         422, "corrupt_file", ["npz"]),
        (lambda pre: {"video_id": VIDEO, "queries": [query(pre)], "top_k": 0}, 422, "invalid_request", ["top_k"]),
        (lambda pre: {"video_id": VIDEO, "queries": [query(pre)], "nms_iou": 1.5}, 422, "invalid_request",
         ["nms_iou"]),
    ],
    ids=["unknown-video", "empty-text", "blank-text", "no-queries", "too-many-queries", "wrong-text-dim",
         "too-many-tokens", "bad-base64", "query-nan", "text-without-encoder", "too-long-text", "no-video", "two-videos",
         "inline-nan", "inline-corrupt", "top-k-0", "nms-over-1"],
)
async def test_bad_search_request_gets_a_clear_4xx(client, pre, stored, make_json, status, code, words):
    response = await client.post("/v1/moments", json=make_json(pre))
    assert_error(response, status, code, *words)
    await assert_still_stored(client, stored)


async def test_malformed_json_unknown_route_and_wrong_method_use_the_error_shape(client):
    assert_error(await client.post("/v1/moments", content=b"{not json", headers={"content-type": "application/json"}),
                 422, "invalid_request")
    assert_error(await client.get("/v2/nothing"), 404, "not_found", "/v2/nothing")
    assert_error(await client.patch("/v1/moments"), 405, "method_not_allowed", "PATCH")


async def test_refused_requests_are_counted_by_reason(client, pre):
    bad_video = {"format": "npy", "data_b64": b64(npy_bytes(np.full((2, 32), np.inf, np.float32)))}
    await client.post("/v1/moments", json={"video": bad_video, "queries": [query(pre)]})
    await client.post("/v1/moments", json={"video_id": VIDEO})
    metrics = (await client.get("/metrics")).text
    for reason in ("non_finite", "invalid_request"):
        assert f'trdetr_rejected_requests_total{{reason="{reason}"}}' in metrics, reason


async def test_unknown_field_is_named(client, pre):
    response = await client.post("/v1/highlights", json={"video_id": VIDEO, "queries": [query(pre)], "topk": 3})
    assert "topk" in assert_error(response, 422, "invalid_request")["message"]


async def test_search_result_of_the_stored_video_is_unchanged_after_bad_requests(client, pre, stored):
    response = await client.post("/v1/highlights", json={"video_id": VIDEO, "queries": [query(pre)]})
    assert response.status_code == 200
    assert response.json()["num_clips"] == stored["num_clips"]
    text = random_text(pre, 2, seed=9)
    assert text.shape == (2, pre.text_dim)
