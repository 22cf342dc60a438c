"""KServe v2 / Open Inference Protocol: health, metadata and ``infer`` on the raw model tensors.

``POST /v2/models/{name}/infer`` takes TR-DETR's four inputs as tensors -- ``src_txt`` (B, L_t, D_t),
``src_txt_mask`` (B, L_t), ``src_vid`` (B, L_v, D_v, TEF included), ``src_vid_mask`` (B, L_v) -- as JSON
``data`` or binary tensor data, and answers the three model outputs ``pred_logits`` (B, Q, 2),
``pred_spans`` (B, Q, 2) and ``saliency_scores`` (B, L_v) (0 at padded clips, whose values the model leaves
meaningless). Inputs go to the model as sent (no normalisation, no TEF added: that is the client's job, as
with any raw-tensor protocol), one row per query, through the same dynamic batcher, limits, API keys and
metrics as ``/v1``. A mask must be 1 for a prefix of its row and 0 after it, so that each row can be cut to
its real length and batched with any other request (the model is batch- and padding-invariant).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.auth import require_api_key
from service.deadline import time_left
from service.dependencies import ReadyRuntimeDep, Runtime, RuntimeDep
from service.errors import InvalidInput, NotFound
from service.inference.batcher import RowOutput
from service.json_body import INLINE_PARSE_BYTES, check_value_count
from service.kserve_codec import HEADER_LENGTH, InferRequest, decode_request, encode_response, split_body
from service.schemas import error_responses

MODEL_VERSION = "1"
INPUTS = ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")
OUTPUTS = ("pred_logits", "pred_spans", "saliency_scores")

health = APIRouter(prefix="/v2/health", tags=["kserve-v2"])
router = APIRouter(prefix="/v2", tags=["kserve-v2"], dependencies=[Depends(require_api_key)])


def _server_version() -> str:
    try:
        return version("trdetr-service")
    except PackageNotFoundError:
        return "0"


@health.get("/live", summary="KServe v2 liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@health.get("/ready", summary="KServe v2 readiness (model loaded and warmed up)",
            responses={503: {"description": "Still loading or warming up"}})
async def ready(runtime: RuntimeDep) -> JSONResponse:
    return JSONResponse({"ready": runtime.ready}, status_code=200 if runtime.ready else 503)


@router.get("", summary="KServe v2 server metadata", responses=error_responses(401, 403, kserve=True))
async def server_metadata() -> dict[str, object]:
    return {"name": "trdetr-service", "version": _server_version(), "extensions": ["binary_tensor_data"]}


def _model(runtime: Runtime, name: str, model_version: str | None) -> None:
    """404 unless ``name`` (and ``model_version``, when given) is the served model."""
    if name != runtime.settings.kserve_model_name or model_version not in (None, MODEL_VERSION):
        raise NotFound(f"No model {name!r}{f' version {model_version!r}' if model_version else ''}; this server "
                       f"serves {runtime.settings.kserve_model_name!r} version {MODEL_VERSION}.",
                       {"model": name, "version": model_version})


def _metadata(runtime: Runtime) -> dict[str, object]:
    assert runtime.bundle is not None
    pre = runtime.bundle.pre
    queries = int(runtime.bundle.manifest.config.get("num_queries") or -1)
    shapes = {"src_txt": [-1, -1, pre.text_dim], "src_txt_mask": [-1, -1],
              "src_vid": [-1, -1, pre.video_input_dim], "src_vid_mask": [-1, -1],
              "pred_logits": [-1, queries, 2], "pred_spans": [-1, queries, 2], "saliency_scores": [-1, -1]}
    return {
        "name": runtime.settings.kserve_model_name, "versions": [MODEL_VERSION], "platform": "onnxruntime_onnx",
        "inputs": [{"name": n, "datatype": "FP32", "shape": shapes[n]} for n in INPUTS],
        "outputs": [{"name": n, "datatype": "FP32", "shape": shapes[n]} for n in OUTPUTS],
    }


@router.get("/models/{name}", summary="KServe v2 model metadata", responses=error_responses(401, 403, 404, 503, kserve=True))
@router.get("/models/{name}/versions/{model_version}", include_in_schema=False)
async def model_metadata(name: str, runtime: ReadyRuntimeDep, model_version: str | None = None) -> dict[str, object]:
    _model(runtime, name, model_version)
    return _metadata(runtime)


@router.get("/models/{name}/ready", summary="KServe v2 model readiness", responses=error_responses(401, 403, 404, kserve=True))
@router.get("/models/{name}/versions/{model_version}/ready", include_in_schema=False)
async def model_ready(name: str, runtime: RuntimeDep, model_version: str | None = None) -> JSONResponse:
    _model(runtime, name, model_version)
    return JSONResponse({"name": name, "ready": runtime.ready}, status_code=200 if runtime.ready else 503)


def _max_json_values(runtime: Runtime) -> int:
    """Most JSON values an infer request may hold: a full batch of the longest rows, plus the fields."""
    assert runtime.bundle is not None
    pre = runtime.bundle.pre
    row = pre.max_text_tokens * (pre.text_dim + 1) + pre.max_video_clips * (pre.video_input_dim + 1)
    return runtime.settings.max_batch_size * row + 1024


def _decode(runtime: Runtime, body: bytes, header_length: str | None) -> InferRequest:
    """Bound the JSON header's values, then parse it and the binary tail into tensors."""
    head, _ = split_body(body, header_length)
    check_value_count(head, _max_json_values(runtime))
    return decode_request(body, header_length)


def _valid_lengths(mask: np.ndarray, name: str) -> list[int]:
    """Per row, the length of the mask's prefix of ones; 422 unless each row is ones then zeros, >= 1 one."""
    if not np.isin(mask, (0.0, 1.0)).all():
        raise InvalidInput(f"{name} must hold only 0 and 1.", {"input": name}, code="invalid_tensor")
    lengths = mask.sum(axis=1).astype(int)
    prefix = np.arange(mask.shape[1])[None, :] < lengths[:, None]
    if (lengths == 0).any() or not np.array_equal(prefix, mask.astype(bool)):
        raise InvalidInput(f"Each row of {name} must be 1 for its real positions, then 0 for padding (at least one "
                           "1, no gaps).", {"input": name}, code="invalid_tensor")
    return lengths.tolist()


def _check_shapes(runtime: Runtime, t: dict[str, np.ndarray]) -> None:
    """422 unless the four inputs have the model's ranks, widths, one batch size and allowed lengths."""
    assert runtime.bundle is not None
    pre, settings = runtime.bundle.pre, runtime.settings
    if missing := [n for n in INPUTS if n not in t]:
        raise InvalidInput(f"Missing inputs: {', '.join(missing)}. The model takes {', '.join(INPUTS)}.",
                           {"missing": missing}, code="invalid_tensor")
    if extra := [n for n in t if n not in INPUTS]:
        raise InvalidInput(f"Unknown inputs: {', '.join(extra)}. The model takes {', '.join(INPUTS)}.",
                           {"unknown": extra}, code="invalid_tensor")
    txt, vid = t["src_txt"], t["src_vid"]
    expected = {"src_txt": (3, pre.text_dim), "src_vid": (3, pre.video_input_dim)}
    for name, (rank, width) in expected.items():
        if t[name].ndim != rank or t[name].shape[2] != width:
            raise InvalidInput(f"{name} has shape {list(t[name].shape)}; it must be (batch, length, {width}).",
                               {"input": name}, code="invalid_tensor")
    if t["src_txt_mask"].shape != txt.shape[:2] or t["src_vid_mask"].shape != vid.shape[:2]:
        raise InvalidInput("Each mask must have the shape (batch, length) of its tensor.", code="invalid_tensor")
    batch = txt.shape[0]
    if vid.shape[0] != batch or not 1 <= batch <= settings.max_batch_size:
        raise InvalidInput(f"src_txt and src_vid must have the same batch size, 1 to {settings.max_batch_size} "
                           f"(TRDETR_MAX_BATCH_SIZE); got {txt.shape[0]} and {vid.shape[0]}.",
                           {"max_batch_size": settings.max_batch_size}, code="invalid_tensor")
    if txt.shape[1] > pre.max_text_tokens or vid.shape[1] > pre.max_video_clips:
        raise InvalidInput(f"At most {pre.max_text_tokens} text tokens and {pre.max_video_clips} clips per row (the "
                           "model's window; the /v1 API searches longer videos).",
                           {"max_text_tokens": pre.max_text_tokens, "max_video_clips": pre.max_video_clips},
                           code="invalid_tensor")


def _rows(runtime: Runtime, t: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated float32 (text (L_t_i, D_t), video (L_v_i, D_v)) per row, cut to their masks."""
    _check_shapes(runtime, t)
    tensors = {n: np.asarray(t[n], dtype=np.float32) for n in INPUTS}
    for name in ("src_txt", "src_vid"):
        if not np.isfinite(tensors[name]).all():
            raise InvalidInput(f"{name} holds NaN or infinite values.", {"input": name}, code="invalid_tensor")
    txt_lengths = _valid_lengths(tensors["src_txt_mask"], "src_txt_mask")
    vid_lengths = _valid_lengths(tensors["src_vid_mask"], "src_vid_mask")
    return [(tensors["src_txt"][b, :lt], tensors["src_vid"][b, :lv])
            for b, (lt, lv) in enumerate(zip(txt_lengths, vid_lengths, strict=True))]


def _stack(rows: list[RowOutput], clips: int) -> dict[str, np.ndarray]:
    saliency = np.zeros((len(rows), clips), dtype=np.float32)
    for b, row in enumerate(rows):
        saliency[b, :len(row.saliency)] = row.saliency
    return {"pred_logits": np.stack([r.pred_logits for r in rows]).astype(np.float32, copy=False),
            "pred_spans": np.stack([r.pred_spans for r in rows]).astype(np.float32, copy=False),
            "saliency_scores": saliency}


@router.post("/models/{name}/infer", summary="KServe v2 inference on the raw model tensors",
             responses=error_responses(401, 403, 404, 413, 422, 429, 503, 504, kserve=True))
@router.post("/models/{name}/versions/{model_version}/infer", include_in_schema=False)
async def infer(name: str, request: Request, runtime: ReadyRuntimeDep,
                model_version: str | None = None) -> Response:
    _model(runtime, name, model_version)
    assert runtime.batcher is not None
    batcher = runtime.batcher
    with batcher.preparing():
        body = await request.body()
        header = request.headers.get(HEADER_LENGTH)
        if len(body) <= INLINE_PARSE_BYTES:
            decoded = _decode(runtime, body, header)
            rows = _rows(runtime, decoded.tensors)
        else:
            decoded = await runtime.workers.decode_file(_decode, runtime, body, header)
            rows = await runtime.workers.decode_file(_rows, runtime, decoded.tensors)
    if decoded.outputs is not None and (unknown := [n for n in decoded.outputs if n not in OUTPUTS]):
        raise InvalidInput(f"Unknown outputs: {', '.join(unknown)}. The model gives {', '.join(OUTPUTS)}.",
                           {"unknown": unknown}, code="invalid_tensor")
    timeout = time_left(runtime.settings.request_timeout_s)
    answers = await asyncio.gather(*(batcher.infer([text], video, timeout) for text, video in rows))
    outputs = _stack([answer[0] for answer in answers], decoded.tensors["src_vid"].shape[1])
    wanted = decoded.outputs or list(OUTPUTS)
    content, header_length = encode_response(name, MODEL_VERSION, decoded, {n: outputs[n] for n in wanted})
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})
