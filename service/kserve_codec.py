"""The KServe v2 / Open Inference Protocol wire format: tensors in, tensors out (JSON and binary data).

A request body is a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``; each input
is ``{"name", "shape", "datatype", "data"}`` (``data`` flat or nested, row-major). With Triton's
*binary tensor data* extension the JSON header is followed by the raw little-endian bytes of the inputs
whose ``parameters.binary_data_size`` is set, in input order, and the header's length is given by the HTTP
header ``Inference-Header-Content-Length``. Outputs go back as JSON ``data`` or, when the request asks for
it (``outputs[i].parameters.binary_data`` or ``parameters.binary_data_output``), as raw bytes after the
JSON header in the same way.

This module is pure (bytes <-> numpy, no HTTP, no model): :mod:`service.routers.kserve` uses it. Every
problem with a request is an :class:`~service.errors.InvalidInput` (422) saying what to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.errors import InvalidInput, InvalidRequest

HEADER_LENGTH = "inference-header-content-length"
"""HTTP header naming the byte length of the JSON header when binary tensor data follows it."""

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
"""Numeric Open Inference Protocol datatypes and their little-endian numpy dtypes (BYTES is not a tensor
this model takes)."""


@dataclass
class InferRequest:
    """A decoded request: ``tensors`` by input name (as sent, any numeric dtype), which outputs to return
    and how (``binary``: output name -> send as binary data)."""

    id: str | None
    tensors: dict[str, np.ndarray]
    outputs: list[str] | None
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False

    def wants_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a request body; without ``Inference-Header-Content-Length`` all JSON."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {header_length!r}; it must be the byte length of the JSON "
            f"header at the start of the body (the body has {len(body)} bytes).",
            {"inference_header_content_length": header_length, "body_bytes": len(body)},
        )
    length = int(header_length)
    return body[:length], body[length:]


def _shape(spec: dict[str, Any], where: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InvalidInput(f"{where}.shape must be a list of non-negative integers, got {shape!r}.",
                           {"field": f"{where}.shape"}, code="invalid_tensor")
    return tuple(shape)


def _dtype(spec: dict[str, Any], where: str) -> np.dtype:
    name = spec.get("datatype")
    if name not in DATATYPES:
        raise InvalidInput(f"{where}.datatype {name!r} is not supported; use one of {', '.join(DATATYPES)} "
                           "(FP32 is what the model runs).", {"field": f"{where}.datatype"}, code="invalid_tensor")
    return DATATYPES[name]


def _from_json_data(data: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{where}.data is not a list of {dtype.name} numbers ({exc}).",
                           {"field": f"{where}.data"}, code="invalid_tensor") from None
    if array.size != math.prod(shape):
        raise InvalidInput(f"{where}.data holds {array.size} values; shape {list(shape)} needs {math.prod(shape)}.",
                           {"field": f"{where}.data", "values": int(array.size)}, code="invalid_tensor")
    return array.reshape(shape)


def _from_binary(tail: bytes, offset: int, size: Any, dtype: np.dtype, shape: tuple[int, ...],
                 where: str) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or size != expected:
        raise InvalidInput(
            f"{where}.parameters.binary_data_size is {size!r}; shape {list(shape)} of {dtype.name} takes "
            f"{expected} bytes.", {"field": f"{where}.parameters.binary_data_size", "expected": expected},
            code="invalid_tensor",
        )
    if offset + size > len(tail):
        raise InvalidInput(f"{where}: the binary data after the JSON header ends {offset + size - len(tail)} bytes "
                           "early.", {"field": where}, code="invalid_tensor")
    return np.frombuffer(tail, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an inference request body into numpy tensors (runs in a worker thread for large bodies).

    Raises 422 for malformed JSON, unknown datatypes, shapes that disagree with the data, binary sizes
    that do not add up, or duplicate inputs.
    """
    head, tail = split_body(body, header_length)
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The inference request header is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InvalidInput("The inference request must be a JSON object with an 'inputs' list of tensors.",
                           code="invalid_tensor")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(doc["inputs"]):
        where = f"inputs[{index}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput(f"{where} must be an object with a 'name'.", code="invalid_tensor")
        if spec["name"] in tensors:
            raise InvalidInput(f"{where}: input {spec['name']!r} is given twice.", code="invalid_tensor")
        shape, dtype = _shape(spec, where), _dtype(spec, where)
        params = spec.get("parameters") or {}
        if isinstance(params, dict) and "binary_data_size" in params:
            tensors[spec["name"]] = _from_binary(tail, offset, params["binary_data_size"], dtype, shape, where)
            offset += params["binary_data_size"]
        elif "data" in spec:
            tensors[spec["name"]] = _from_json_data(spec["data"], dtype, shape, where)
        else:
            raise InvalidInput(f"{where} has neither 'data' nor parameters.binary_data_size.", code="invalid_tensor")
    if offset != len(tail):
        raise InvalidInput(f"{len(tail) - offset} bytes of binary data follow the JSON header that no input "
                           "claims (check each input's binary_data_size).", code="invalid_tensor")
    return _with_outputs(doc, tensors)


def _with_outputs(doc: dict[str, Any], tensors: dict[str, np.ndarray]) -> InferRequest:
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    request = InferRequest(id=str(doc["id"]) if doc.get("id") is not None else None, tensors=tensors, outputs=None,
                           binary_default=bool(params.get("binary_data_output", False)))
    if isinstance(doc.get("outputs"), list):
        request.outputs = []
        for index, spec in enumerate(doc["outputs"]):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise InvalidInput(f"outputs[{index}] must be an object with a 'name'.", code="invalid_tensor")
            request.outputs.append(spec["name"])
            out_params = spec.get("parameters") or {}
            if isinstance(out_params, dict) and "binary_data" in out_params:
                request.binary[spec["name"]] = bool(out_params["binary_data"])
    return request


def encode_response(model_name: str, model_version: str, request: InferRequest,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body and, when binary data follows the JSON header, the header's length.

    ``outputs`` are float32 arrays in the order they should be listed.
    """
    listed, tail = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if request.wants_binary(name):
            raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = np.asarray(array, dtype=np.float32).ravel()
        listed.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": listed}
    if request.id is not None:
        doc["id"] = request.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)
