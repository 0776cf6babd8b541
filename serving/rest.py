"""TF Serving's REST API (port 8501), over the same model manager and batcher as gRPC.

Followed from tensorflow_serving/model_servers/http_rest_api_handler.cc and
util/json_tensor.cc:
  GET  /v1/models/{name}[/versions/{v}]            model status (GetModelStatusResponse as JSON)
  GET  /v1/models/{name}[/versions/{v}]/metadata   signature_def metadata
  POST /v1/models/{name}[/versions/{v}]:predict    {"signature_name": ..., "instances": [...]}
                                                   or {"inputs": {...}}
  (/labels/{label} in place of /versions/{v}: no label is configured, so predict and
  metadata answer TF Serving's "Unrecognized servable version label"; status ignores a
  label and answers every version, as GetModelStatusImpl does)
Paths are matched with TF Serving's own patterns (http_rest_api_util.cc, case-insensitive);
any other path under /v1/ is 400 "Malformed request: METHOD PATH", and :classify and
:regress are 501, as the gRPC stand-in answers them. A predict body is read as
json_tensor.cc's FillPredictRequestFromJson reads it, with its checks in its order and
its messages.
The row format ("instances": one entry per batch row, an object of named inputs or a bare
value when the signature has one input) answers {"predictions": [...]}, the columnar
format ("inputs") answers {"outputs": {...}}; a signature with one output gets its values
without the name. Strings are JSON strings, or {"b64": ...} for an output whose name ends
in "_bytes"; float32 values as WriteDecimal writes them (six significant digits when they
read back as the same float32, else nine), non-finite ones as NaN, Infinity and -Infinity.
Errors are {"error": message} with TF Serving's HTTP codes (400 for a bad request,
404 for an unknown model or version, ...). The HTTP server is aiohttp's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import threading
import urllib.parse

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from animerec import features as f
from animerec.serving import predict, versions
from animerec.serving.batching import RequestError

DEFAULT_REST_PORT = f.REST_PORT
# Request bodies above this size are refused (413), as gRPC refuses messages over its limit.
MAX_BODY_BYTES = 64 * 1024 * 1024

# TF Serving's HTTP status per canonical code (model_servers/http_server.cc ToHTTPStatusCode).
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def _bad(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _model_spec(spec, name: str, version: int | None, label: str | None = None) -> None:
    """FillModelSpecWithNameVersionAndLabel (the path's patterns allow one of the two)."""
    spec.name = name
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label


# DataTypeString (tensorflow/core/framework/types.cc) of the dtypes signatures take.
_DTYPE_NAMES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int8): "int8",
    np.dtype(np.int16): "int16",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.uint64): "uint64",
    np.dtype(bool): "bool",
    np.dtype(object): "string",
}
# The integer range each dtype's JSON check accepts (rapidjson's IsInt, IsInt64, IsUint, IsUint64).
_INT_RANGES = {
    "int8": (-(2**31), 2**31 - 1),  # int8 to int32 are read with IsInt, as json_tensor.cc does
    "int16": (-(2**31), 2**31 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint8": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def _dtype_name(dtype: np.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, dtype.name)


def _json_text(value) -> str:
    """JsonValueToString: the value as JSON text, for error messages."""
    return json.dumps(value, allow_nan=True, default=repr)


def _json_type(value) -> str:
    """JsonTypeString."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value, dtype: np.dtype) -> RequestError:
    return _bad(
        f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected type: {_dtype_name(dtype)}"
    )


def _is_base64(value) -> bool:
    """IsValBase64Object: an object whose one key, "b64", holds a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value, dtype: np.dtype):
    """One element of a tensor (AddValueToTensor, or JsonDecodeBase64Object for an object
    where a string is expected), or TF Serving's refusal."""
    if isinstance(value, dict):
        if dtype.kind != "O":
            raise _type_error(value, dtype)
        if not _is_base64(value):
            raise _bad(f"JSON Value: {_json_text(value)} not formatted correctly for base64 data")
        try:
            # absl::Base64Unescape takes the padding as optional, and skips whitespace
            # (base64.encodebytes writes a newline every 76 characters).
            text = "".join(value["b64"].split())
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except ValueError:
            raise _bad("Unable to base64 decode") from None
    if dtype.kind == "O":
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype.kind == "b":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(value, dtype)
    if dtype.kind == "f":
        # IsLosslessDecimal: an integer beyond the float's exact range, or a number
        # beyond its largest, loses precision.
        exact = 2 ** np.finfo(dtype).nmant * 2 - 1
        largest = float(np.finfo(dtype).max)
        if (isinstance(value, int) and abs(value) > exact) or (math.isfinite(value) and abs(value) > largest):
            raise _bad(
                f"Cannot convert JSON value: {_json_text(value)} to {_dtype_name(dtype)} without loss of precision."
            )
        return value
    low, high = _INT_RANGES.get(_dtype_name(dtype), (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)))
    if not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, dtype)
    return value


def _dense_shape(value) -> list[int]:
    """GetDenseTensorShape: the sizes of the first list at each level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, dtype: np.dtype, shape: list[int], out: list) -> None:
    """FillTensorProto: every element at the tensor's rank, every list of its level's size."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise _bad(
                f"JSON Value: {_json_text(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise _bad(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise _bad(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, dtype, shape, out)


def _tensor(value, dtype) -> np.ndarray:
    """A JSON value as a dense array of `dtype`, or TF Serving's refusal."""
    dtype = np.dtype(dtype)
    shape, flat = _dense_shape(value), []
    _fill(value, 0, dtype, shape, flat)
    return np.array(flat, dtype=dtype).reshape(shape)


def _from_instances(instances: list, dtypes: dict) -> dict:
    """FillTensorMapFromInstancesList: one tensor an input, its rows the instances."""
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise _bad(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            "per tensorinfo_map"
        )

    def is_object(value) -> bool:
        return isinstance(value, dict) and not _is_base64(value)

    objects = is_object(instances[0])
    rows: dict[str, list] = {}

    def add(value, name: str) -> None:  # AddInstanceItem
        if name not in dtypes:
            raise _bad(f"JSON object: does not have named input: {name}")
        row = _tensor(value, dtypes[name])
        if name in rows:
            first = rows[name][0]
            if first.size != row.size:
                raise _bad(f"Expecting tensor size: {first.size} but got: {row.size}")
            if first.shape != row.shape:
                raise _bad(
                    f"Expecting shape [{','.join(map(str, first.shape))}] but got: [{','.join(map(str, row.shape))}]"
                )
        rows.setdefault(name, []).append(row)

    for i, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise _bad(f"Expecting object but got list at item {i} of input list")
            for name, value in element.items():
                try:
                    add(value, name)
                except RequestError as error:
                    raise _bad(
                        f"Failed to process element: {i} key: {name} of 'instances' list. Error: "
                        f"INVALID_ARGUMENT: {error}"
                    ) from None
            if set(element) != set(dtypes):
                raise _bad(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {_json_text(element)} "
                    f"keys must be equal to: {','.join(sorted(dtypes))}"
                )
        else:
            if is_object(element):
                raise _bad(f"Expecting value/list but got object at item {i} of input list")
            try:
                add(element, next(iter(dtypes)))
            except RequestError as error:
                raise _bad(
                    f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: {error}"
                ) from None
    return {name: np.stack(values) for name, values in rows.items()}


def _from_inputs(inputs, dtypes: dict) -> dict:
    """FillTensorMapFromInputsMap: a plain value (one input), or an object of the named
    inputs (other keys ignored)."""
    if not isinstance(inputs, dict) or _is_base64(inputs):
        if len(dtypes) > 1:
            raise _bad(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        ((name, dtype),) = dtypes.items()
        return {name: _tensor(inputs, dtype)}
    columns = {}
    for name in sorted(dtypes):
        if name not in inputs:
            raise _bad(f"Missing named input: {name} in 'inputs' object.")
        columns[name] = _tensor(inputs[name], dtypes[name])
    return columns


def predict_request(
    body, manager: versions.ModelManager, name: str, version: int | None, label: str | None = None
) -> tuple[predict_pb2.PredictRequest, bool]:
    """A PredictRequest from a REST predict body and whether it was in the row format:
    FillPredictRequestFromJson's checks in its order (the body an object, signature_name a
    string, the model and signature found, then "instances" or "inputs")."""
    if not isinstance(body, dict):
        raise _bad(f"JSON Value: {_json_text(body)} Is not object")
    request = predict_pb2.PredictRequest()
    _model_spec(request.model_spec, name, version, label)
    signature_name = body.get("signature_name", f.DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise _bad(
            f"JSON Value: {_json_text(body)} not formatted correctly. 'signature_name' key must be a string value."
        )
    request.model_spec.signature_name = signature_name
    loaded = manager.resolve(request.model_spec)
    if signature_name not in loaded.signature_defs:
        raise _bad(f'Serving signature name: "{signature_name}" not found in signature def')
    dtypes = {alias: spec.dtype.as_numpy_dtype for alias, spec in loaded.input_specs(signature_name).items()}
    if not dtypes:
        raise _bad(f"Failed to get input map for signature: {signature_name}")
    rows = "instances" in body
    if rows and "inputs" in body:
        raise _bad(
            f"JSON Value: {_json_text(body)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if rows:
        if not isinstance(body["instances"], list):
            raise _bad(f"JSON Value: {_json_text(body)} Excepting 'instances' to be an list/array")
        if not body["instances"]:
            raise _bad(f"JSON Value: {_json_text(body)} No values in 'instances' array")
        columns = _from_instances(body["instances"], dtypes)
    elif "inputs" in body:
        columns = _from_inputs(body["inputs"], dtypes)
    else:
        raise _bad("Missing 'inputs' or 'instances' key")
    for alias, array in columns.items():
        predict.fill_tensor_proto(request.inputs[alias], array, content=True)
    return request, rows


def _json_value(array: np.ndarray, alias: str):
    """An output as TF Serving's json_tensor.cc writes it: strings as text, or as
    {"b64": ...} when the output's name ends in "_bytes" (IsNamedTensorBytes); float32
    as json_tensor.cc's WriteDecimal writes it (_write_decimal)."""
    if array.dtype.kind in ("S", "O"):
        if alias.endswith("_bytes"):
            flat = [{"b64": base64.b64encode(v).decode("ascii")} for v in array.reshape(-1).tolist()]
        else:
            # TF Serving writes the bytes as they are; JSON text must be UTF-8.
            flat = [v.decode("utf-8", "replace") for v in array.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    if array.dtype == np.float32:
        flat = [_write_decimal(v) for v in array.reshape(-1).tolist()]
        return np.array(flat, dtype=np.float64).reshape(array.shape).tolist()
    return array.tolist()


def _write_decimal(value: float) -> float:
    """The number json_tensor.cc's WriteDecimal writes for a float32: six significant
    digits (absl::StrCat) when they read back as the same float32, else nine (%.9g).
    Returned as the double that text denotes; json writes it back as the same number."""
    if not math.isfinite(value):
        return value
    text = f"{value:g}"
    if np.float32(text) != np.float32(value):
        text = f"{value:.9g}"
    return float(text)


def predict_json(response: predict_pb2.PredictResponse, rows: bool) -> dict:
    import tensorflow as tf

    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    if not rows:
        values = {k: _json_value(v, k) for k, v in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = {len(v) for v in outputs.values()}
    if len(batch) != 1:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "outputs of different batch sizes cannot be rows")
    if len(outputs) == 1:
        ((alias, value),) = outputs.items()
        return {"predictions": _json_value(value, alias)}
    columns = {k: _json_value(v, k) for k, v in outputs.items()}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(batch.pop())]}


# The paths TF Serving's REST handler serves (http_rest_api_util.cc, kPredictionApiGegex and
# kModelStatusApiRegex), matched against the whole path, case-insensitively.
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
MODEL_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
# http_rest_api_handler.cc's kPathRegex: what the HTTP server hands to the REST handler.
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)


class RestApi:
    """The REST handlers over a model manager and batcher (those of the gRPC server)."""

    def __init__(self, manager: versions.ModelManager, batcher):
        self.manager = manager
        self.batcher = batcher

    def routes(self) -> list:
        # One route: the paths are told apart as TF Serving tells them (ProcessRequest).
        return [web.route("*", "/{path:.*}", self.dispatch)]

    async def dispatch(self, http: web.Request) -> web.Response:
        """ParseModelInfo, then ProcessRequest's dispatch, for a request to any path."""
        path = http.rel_url.raw_path
        if not API_PATH.fullmatch(path):
            raise web.HTTPNotFound()
        method = http.method
        pattern = {"POST": PREDICT_PATH, "GET": MODEL_PATH}.get(method)
        match = pattern.fullmatch(path) if pattern else None
        if match is None:
            return _refusal(_bad(f"Malformed request: {method} {path}"))
        name, version, label, verb = (urllib.parse.unquote(g) if g is not None else None for g in match.groups())
        if version is not None:
            number = int(version)
            if number >= 2**63:
                # ParseModelInfo returns before the error is written: an empty body.
                return web.Response(status=400, content_type="application/json")
            version = number
        if method == "POST":
            if verb.lower() != "predict":
                message = f"{verb.capitalize()} is not supported by this retrieval model; use Predict"
                return _refusal(RequestError(grpc.StatusCode.UNIMPLEMENTED, message))
            return await self.predict(http, name, version, label)
        if not name:
            return _refusal(_bad("Missing model name in request."))
        if verb is not None:  # the metadata subresource
            return await self.metadata(name, version, label)
        return await self.status(name, version, label)

    async def _answer(self, compute) -> web.Response:
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, compute)
        except RequestError as error:
            return _refusal(error)
        return _json_response(body, 200)

    async def status(self, name: str, version: int | None, label: str | None) -> web.Response:
        def compute():
            request = get_model_status_pb2.GetModelStatusRequest()
            # A label is set and ignored: GetModelStatusImpl reads only a version.
            _model_spec(request.model_spec, name, version, label)
            # Every field printed, as TF Serving prints them (error_code "OK" included).
            return json_format.MessageToDict(
                predict.model_status(self.manager, request),
                including_default_value_fields=True,
                preserving_proto_field_name=True,
            )

        return await self._answer(compute)

    async def metadata(self, name: str, version: int | None, label: str | None) -> web.Response:
        def compute():
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            _model_spec(request.model_spec, name, version, label)
            request.metadata_field.append("signature_def")
            response = predict.model_metadata(self.manager, request)
            # As http_rest_api_util.cc's ToJsonString: the model spec and the unpacked
            # SignatureDefMap, every field printed, proto field names.
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            options = {"including_default_value_fields": True, "preserving_proto_field_name": True}
            return {
                "model_spec": json_format.MessageToDict(response.model_spec, **options),
                "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)},
            }

        return await self._answer(compute)

    async def predict(self, http: web.Request, name: str, version: int | None, label: str | None) -> web.Response:
        text = await http.read()
        if not text:
            return _refusal(_bad("JSON Parse error: The document is empty"))
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            return _refusal(_bad(f"JSON Parse error: {error}"))

        def compute():
            request, rows = predict_request(body, self.manager, name, version, label)
            return predict_json(predict.predict(self.manager, self.batcher, request), rows)

        return await self._answer(compute)


def _json_response(body, status: int) -> web.Response:
    # allow_nan: -inf scores are written -Infinity, as TF Serving writes them.
    return web.Response(text=json.dumps(body, allow_nan=True), status=status, content_type="application/json")


def _refusal(error: RequestError) -> web.Response:
    """TF Serving's answer to a refused request: {"error": message} with its HTTP status."""
    return _json_response({"error": str(error)}, HTTP_STATUS.get(error.code, 500))


class RestServer:
    """aiohttp serving RestApi on its own thread and event loop."""

    def __init__(self, api: RestApi, host: str, port: int):
        self.loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(api.routes())
        self._runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, host, port)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self.loop.run_forever, name="rest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
