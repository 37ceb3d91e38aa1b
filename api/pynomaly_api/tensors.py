"""Open Inference Protocol v2 tensors: requests in, responses out, JSON and binary.

A request body is a JSON object; with the binary tensor data extension (what
``tritonclient.http`` sends by default) the JSON is followed by raw little-endian tensor
bytes: the ``Inference-Header-Content-Length`` header gives the JSON's length and each input
with ``parameters.binary_data_size`` takes that many bytes, in the order of the inputs.
Responses mirror it: outputs asked for as binary (``parameters.binary_data`` on an output,
or ``binary_data_output`` on the request) follow the JSON header as raw bytes.

Everything here is a plain function over bytes and arrays (no HTTP), so that every bad body
can be tested for its 400 without a server.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import msgspec
import numpy as np

# OIP datatype -> little-endian NumPy dtype. BYTES (strings) cannot be a detector's input.
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
# What a detector answers: output name -> (datatype, dtype of the bytes sent, the
# DetectionResult field it is encoded from). The protocol's BOOL labels are the result's flags;
# attributions are [n, d] (each row's per-feature explanation, by the parameter explain_method).
OUTPUTS = {
    "scores": ("FP64", np.dtype("<f8"), "scores"),
    "labels": ("BOOL", np.dtype("?"), "flags"),
    "probabilities": ("FP64", np.dtype("<f8"), "probabilities"),
    "confidence": ("FP64", np.dtype("<f8"), "confidence"),
    "attributions": ("FP64", np.dtype("<f8"), "attributions"),
}
DEFAULT_OUTPUTS = ("scores", "labels")
_FP64 = DTYPES["FP64"]
MAX_DIMS = 8
MAX_JSON_DEPTH = 64  # JSON nested deeper than this is refused (400), in every request body


def nested_too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a decoded JSON value nests objects and arrays deeper than ``limit`` (walked
    without recursion: the point is that a deep value must not exhaust the stack)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        items = v.values() if isinstance(v, dict) else v
        if depth > limit:
            return True
        stack.extend((x, depth + 1) for x in items if isinstance(x, (dict, list)))
    return False


def too_deep_message(limit: int = MAX_JSON_DEPTH) -> str:
    return f"JSON nested deeper than {limit} levels; nest objects and arrays at most {limit} deep"


class TensorError(ValueError):
    """A request that does not follow the protocol or does not fit the model (HTTP 400)."""


INFER_SHAPE_HINT = ('{"inputs": [{"name": "input-0", "shape": [ROWS, FEATURES], "datatype": "FP64", '
                    '"data": [[...], ...]}]}')


class _Input(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    shape: List[int]
    datatype: str
    parameters: Optional[Dict[str, Any]] = None
    data: Any = None


class _Output(msgspec.Struct):
    name: str
    parameters: Optional[Dict[str, Any]] = None


class _Request(msgspec.Struct):
    inputs: List[_Input]
    id: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    outputs: Optional[List[_Output]] = None


_decode = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


class InferRequest:
    """A decoded infer request: its rows (float64, 2-D), the outputs asked for and how."""

    __slots__ = ("id", "rows", "outputs", "binary", "parameters", "input_name")

    def __init__(self, id, rows, outputs, binary, parameters, input_name):
        self.id = id
        self.rows = rows
        self.outputs = outputs  # names, in the order asked
        self.binary = binary  # set of output names to send as raw bytes
        self.parameters = parameters
        self.input_name = input_name


def header_length(value: Optional[str], body_length: int) -> Optional[int]:
    """The JSON header's length from ``Inference-Header-Content-Length`` (None when absent), checked."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise TensorError(f"Inference-Header-Content-Length must be an integer, got {value[:40]!r}") from None
    if n <= 0 or n > body_length:
        raise TensorError(
            f"Inference-Header-Content-Length is {n} but the body has {body_length} bytes"
        )
    return n


def _shape(inp: _Input) -> Tuple[int, ...]:
    shape = inp.shape
    if not 1 <= len(shape) <= MAX_DIMS or any(type(s) is not int or s < 0 for s in shape):
        raise TensorError(f"input {inp.name!r}: shape must be 1 to {MAX_DIMS} non-negative integers, got {shape[:10]}")
    return tuple(shape)


def _count(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s  # Python ints: a huge shape cannot overflow into a small count
    return n


def _parse_head(head, hlen: Optional[int]):
    """The request's JSON, its one input and that input's dtype and shape (checked)."""
    try:
        req = _decode(head)
    except RecursionError:  # msgspec nests as deep as Python's stack allows
        raise TensorError(too_deep_message()) from None
    except msgspec.ValidationError as e:
        # Plain rows ([[...], ...]) or a pandas-style record land here: show the shape wanted.
        raise TensorError(f"bad inference request: {e}; an OIP v2 request is {INFER_SHAPE_HINT}") from None
    except msgspec.DecodeError as e:
        if hlen is not None:
            raise TensorError(f"the first {hlen} bytes (Inference-Header-Content-Length) are not a JSON inference "
                              f"request: {e}") from None
        raise TensorError(f"the request is not valid JSON: {e}") from None
    if any(p is not None and nested_too_deep(p) for p in
           (req.parameters, *(i.parameters for i in req.inputs), *(o.parameters for o in req.outputs or ()))):
        raise TensorError(too_deep_message())
    if len(req.inputs) != 1:
        raise TensorError(f"a detector takes one input tensor, got {len(req.inputs)}")
    inp = req.inputs[0]
    dtype = DTYPES.get(inp.datatype)
    if dtype is None:
        raise TensorError(f"input {inp.name!r}: datatype {inp.datatype[:20]!r} is not accepted; use one of "
                          f"{', '.join(DTYPES)}")
    return req, inp, dtype, _shape(inp)


def _binary_size(inp: _Input, dtype: np.dtype, count: int, hlen: Optional[int], body_length: int) -> Optional[int]:
    """The input's binary_data_size, checked against its shape and the body; None for JSON data."""
    size = (inp.parameters or {}).get("binary_data_size")
    if size is None:
        if hlen is not None and hlen != body_length:
            raise TensorError(f"the body has {body_length - hlen} bytes after the JSON header but no input "
                              "declares binary_data_size")
        if inp.data is None:
            raise TensorError(f"input {inp.name!r} has no data (and no binary_data_size)")
        return None
    if hlen is None:
        raise TensorError("binary tensor data needs the Inference-Header-Content-Length header")
    if type(size) is not int or size < 0:
        raise TensorError(f"input {inp.name!r}: binary_data_size must be a non-negative integer")
    if inp.data is not None:
        raise TensorError(f"input {inp.name!r} has both data and binary_data_size")
    if size != count * dtype.itemsize:
        raise TensorError(f"input {inp.name!r}: shape {list(inp.shape)} of {inp.datatype} needs "
                          f"{count * dtype.itemsize} bytes, binary_data_size says {size}")
    if hlen + size != body_length:
        raise TensorError(f"the body holds {body_length - hlen} bytes after the JSON header; the inputs declare {size}")
    return size


def _matrix_shape(inp: _Input, shape: Tuple[int, ...], count: int, n_features: int) -> Tuple[int, int]:
    if len(shape) == 1:
        shape = (1, shape[0]) if count else (0, n_features)
    elif len(shape) != 2:
        raise TensorError(f"input {inp.name!r}: shape must be [rows, {n_features}], got {list(shape)}")
    if shape[1] != n_features:
        raise TensorError(f"input {inp.name!r}: the detector takes {n_features} features, got shape {list(shape)}")
    return shape


def decode_infer(body: bytes, header_length_value: Optional[str], n_features: int) -> InferRequest:
    """Read an infer request for a detector of ``n_features`` features.

    The one input is a 2-D tensor ``[rows, n_features]`` (a 1-D one of ``n_features`` values
    is one row) of any numeric datatype; it is converted to float64 (exactly, for every
    datatype but the 64-bit integers beyond 2**53). Raises TensorError with the reason.
    """
    hlen = header_length(header_length_value, len(body))
    req, inp, dtype, shape = _parse_head(body if hlen is None else memoryview(body)[:hlen], hlen)
    count = _count(shape)
    size = _binary_size(inp, dtype, count, hlen, len(body))
    if size is not None:
        flat = np.frombuffer(body, dtype=dtype, count=count, offset=hlen)
    else:
        flat = _json_data(inp, dtype, count)
    rows = flat.reshape(_matrix_shape(inp, shape, count, n_features))
    if rows.dtype != np.float64 or not rows.flags.aligned:
        rows = rows.astype(np.float64)
    outputs, binary = _outputs(req)
    return InferRequest(req.id, rows, outputs, binary, req.parameters or {}, inp.name)


class BinaryPlan:
    """What the JSON header of a binary request says about the bytes that follow it: the
    request (``rows`` None until read), the rows' dtype and count (for reading them in blocks)."""

    __slots__ = ("request", "dtype", "n_rows", "n_features", "done")

    def __init__(self, request, dtype, n_rows, n_features):
        self.request, self.dtype, self.n_rows, self.n_features = request, dtype, n_rows, n_features
        self.done = 0  # rows handed out so far: the blocks come in order

    def rows(self, raw) -> np.ndarray:
        """float64 rows of the next block of whole rows' bytes. A value that is not finite is
        refused here, naming its row in the whole request: the model scoring the block would
        name its row within the block."""
        block = np.frombuffer(raw, dtype=self.dtype).reshape(-1, self.n_features)
        first, self.done = self.done, self.done + block.shape[0]
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                r, c = np.argwhere(~finite)[0]
                raise TensorError(f"input {self.request.input_name!r}: the value at row {first + r}, column {c} is "
                                  f"{block[r, c]}; values must be finite numbers")
        return block.astype(np.float64) if block.dtype != np.float64 or not block.flags.aligned else block


def plan_binary(head: bytes, hlen: int, body_length: int, n_features: int) -> Optional[BinaryPlan]:
    """For a request whose JSON header (``head``, ``hlen`` bytes) is read before the rest of
    its ``body_length`` bytes: the plan for reading its rows as they arrive, or None when its
    input is not binary data (then the whole body is read and :func:`decode_infer` used)."""
    req, inp, dtype, shape = _parse_head(head, hlen)
    if (inp.parameters or {}).get("binary_data_size") is None:
        return None
    count = _count(shape)
    _binary_size(inp, dtype, count, hlen, body_length)
    n_rows, _ = _matrix_shape(inp, shape, count, n_features)
    outputs, binary = _outputs(req)
    return BinaryPlan(InferRequest(req.id, None, outputs, binary, req.parameters or {}, inp.name), dtype, n_rows,
                      n_features)


def _json_data(inp: _Input, dtype: np.dtype, count: int) -> np.ndarray:
    data = inp.data
    if dtype is _FP64 and type(data) is list and len(data) == count and (not data or type(data[0]) is float):
        try:  # the commonest body: a flat list of floats
            return np.array(data, dtype=np.float64)
        except (ValueError, TypeError):
            pass  # a string or a list further in: the checks below say what is wrong
    if not isinstance(data, list):
        raise TensorError(f"input {inp.name!r}: data must be an array of numbers")
    if data and isinstance(data[0], list):  # nested (the spec allows it): flatten row-major
        try:
            flat = np.asarray(data, dtype=np.float64 if dtype.kind != "b" else dtype)
        except (ValueError, TypeError):
            raise TensorError(f"input {inp.name!r}: data must be a (nested) array of numbers of one shape") from None
        flat = flat.reshape(-1)
    else:
        for v in data[:1]:
            if isinstance(v, (str, dict)) or v is None:
                raise TensorError(f"input {inp.name!r}: data must hold numbers, found {type(v).__name__}")
        try:
            flat = np.asarray(data, dtype=np.float64 if dtype.kind != "b" else dtype)
        except (ValueError, TypeError):
            raise TensorError(f"input {inp.name!r}: data must hold numbers only") from None
    if flat.ndim != 1 or flat.shape[0] != count:
        raise TensorError(f"input {inp.name!r}: shape {list(inp.shape)} needs {count} values, data has "
                          f"{flat.size}")
    if dtype.kind in "iu":
        if not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
            raise TensorError(f"input {inp.name!r}: {inp.datatype} data must be integers")
        info = np.iinfo(dtype)
        if flat.size and (flat.min() < info.min or flat.max() > info.max):
            raise TensorError(f"input {inp.name!r}: a value is outside the range of {inp.datatype}")
    elif dtype.kind == "f" and dtype.itemsize < 8:
        flat = flat.astype(dtype)  # the values a client sending FP32 means: rounded to FP32
    return flat


def _outputs(req: _Request):
    binary_default = bool((req.parameters or {}).get("binary_data_output", False))
    if not req.outputs:
        names = DEFAULT_OUTPUTS
        return names, set(names) if binary_default else set()
    names, binary = [], set()
    for out in req.outputs:
        if out.name not in OUTPUTS:
            raise TensorError(f"unknown output {out.name[:40]!r}; a detector gives {', '.join(OUTPUTS)}")
        if out.name in names:
            raise TensorError(f"output {out.name!r} is asked for twice")
        names.append(out.name)
        flag = (out.parameters or {}).get("binary_data", binary_default)
        if flag:
            binary.add(out.name)
    return tuple(names), binary


def encode_infer(model_name: str, model_version: int, request_id: Optional[str], result, names,
                 binary) -> Tuple[bytes, Optional[int]]:
    """The response body for the outputs ``names`` of ``result`` (a
    :class:`pynomaly.DetectionResult`) and, when some outputs are binary, the JSON header's length."""
    heads = []
    raw = []
    for name in names:
        datatype, dtype, field = OUTPUTS[name]
        values = getattr(result, field)
        if values.dtype != dtype:
            values = values.astype(dtype)
        head = {"name": name, "datatype": datatype, "shape": [int(x) for x in values.shape]}
        if name in binary:
            b = np.ascontiguousarray(values).tobytes()  # row-major, as the protocol flattens tensors
            head["parameters"] = {"binary_data_size": len(b)}
            raw.append(b)
        else:
            head["data"] = values.ravel().tolist()
        heads.append(head)
    doc = {"model_name": model_name, "model_version": str(model_version), "outputs": heads}
    if request_id is not None:
        doc["id"] = request_id
    header = _encode(doc)
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)


def encode(doc) -> bytes:
    """JSON bytes of a plain document (msgspec: floats written shortest-exact)."""
    return _encode(doc)


__all__ = ["DTYPES", "OUTPUTS", "DEFAULT_OUTPUTS", "TensorError", "InferRequest", "BinaryPlan", "decode_infer",
           "plan_binary", "encode_infer", "encode"]
