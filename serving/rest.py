"""TF Serving's REST API (port 8501), over the same model manager and batcher as gRPC.

Followed from tensorflow_serving/model_servers/http_rest_api_handler.cc and
util/json_tensor.cc:
  GET  /v1/models/{name}[/versions/{v}]            model status (GetModelStatusResponse as JSON)
  GET  /v1/models/{name}[/versions/{v}]/metadata   signature_def metadata
  POST /v1/models/{name}[/versions/{v}]:predict    {"signature_name": ..., "instances": [...]}
                                                   or {"inputs": {...}}
  (/labels/{label} in place of /versions/{v}: no label is configured, so TF Serving's
  "Unrecognized servable version label")
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
import threading

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


def _model_spec(spec, name: str, version: str | None, label: str | None = None) -> None:
    spec.name = name
    if label is not None:
        spec.version_label = label  # resolved as TF Serving resolves one it has not configured
    if version is not None:
        if not version.isdigit():
            raise _bad(f"Invalid version: {version!r}")
        spec.version.value = int(version)


def _strings(value):
    """JSON strings (and {"b64": ...} objects) as bytes, recursively."""
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _bad(f"JSON Value: {json.dumps(value)} not formatted correctly for base64 data")
        try:
            # absl::Base64Unescape (json_tensor.cc) takes the padding as optional.
            # It skips whitespace too (base64.encodebytes writes a newline every 76 characters).
            text = "".join(value["b64"].split())
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except ValueError:
            raise _bad("Unable to base64 decode") from None
    if not isinstance(value, str):
        raise _bad(f"JSON Value: {json.dumps(value)} is not of expected type: string")
    return value.encode("utf-8")


def _array(value, dtype: np.dtype, alias: str) -> np.ndarray:
    """A JSON value as an array of the signature input's dtype, or TF Serving's refusal."""
    dtype = np.dtype(dtype)
    if dtype.kind == "O":
        value = _strings(value)
    else:
        _check_numbers(value, dtype)
    try:
        return np.array(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise _bad(
            f"input {alias}: {json.dumps(value, default=repr)[:200]} is not a dense {dtype.name} tensor"
        ) from None


_JSON_TYPES = {str: "String", bool: "True", dict: "Object", type(None): "Null", float: "Number", int: "Number"}


def _check_numbers(value, dtype: np.dtype) -> None:
    """Every leaf an integer (int dtypes) or a number (float dtypes), as json_tensor.cc checks."""
    if isinstance(value, list):
        for v in value:
            _check_numbers(v, dtype)
        return
    ok = isinstance(value, int) if dtype.kind in "iu" else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise _bad(
            f"JSON Value: {json.dumps(value)} Type: {_JSON_TYPES.get(type(value), 'Value')} "
            f"is not of expected type: {dtype.name}"
        )


def predict_request(
    body: dict, manager: versions.ModelManager, name: str, version: str | None, label: str | None = None
):
    """A PredictRequest from a REST predict body (row or columnar format) and whether it was rows."""
    if not isinstance(body, dict):
        raise _bad("JSON Value: request body is not an object")
    request = predict_pb2.PredictRequest()
    _model_spec(request.model_spec, name, version, label)
    signature_name = body.get("signature_name", f.DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str):
        raise _bad("'signature_name' key must be a string value.")
    request.model_spec.signature_name = signature_name
    if ("instances" in body) == ("inputs" in body):
        raise _bad('JSON object: must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    loaded = manager.resolve(request.model_spec)
    if signature_name not in loaded.signature_defs:
        raise _bad(f'Serving signature name: "{signature_name}" not found in signature def')
    specs = loaded.input_specs(signature_name)
    rows = "instances" in body
    if rows:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise _bad('"instances" must be a non-empty JSON list')
        named = all(isinstance(i, dict) and not (len(i) == 1 and "b64" in i) for i in instances)
        if named:
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise _bad("Expecting all instances to have the same named inputs")
            columns = {k: [i[k] for i in instances] for k in keys}
        elif len(specs) == 1:
            columns = {next(iter(specs)): instances}
        else:
            raise _bad(f"instances must be objects of the named inputs {sorted(specs)}")
    else:
        inputs = body["inputs"]
        # An object names the inputs (a {"b64": ...} object is one input's value).
        named = isinstance(inputs, dict) and not (set(inputs) == {"b64"} and len(specs) == 1)
        if named:
            # As json_tensor.cc's FillTensorMapFromInputsMap: the signature's inputs are
            # looked up, other keys ignored.
            missing = [alias for alias in sorted(specs) if alias not in inputs]
            if missing:
                raise _bad(f"Missing named input: {missing[0]} in 'inputs' object.")
            columns = {alias: inputs[alias] for alias in specs}
        else:
            columns = {next(iter(specs)): inputs}
    for alias, value in columns.items():
        if alias not in specs:
            raise _bad(f"JSON object: does not have named input: {alias}")
        array = _array(value, specs[alias].dtype.as_numpy_dtype, alias)
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


class RestApi:
    """The REST handlers over a model manager and batcher (those of the gRPC server)."""

    def __init__(self, manager: versions.ModelManager, batcher):
        self.manager = manager
        self.batcher = batcher

    def routes(self) -> list:
        name, version = "{name:[^/:]+}", "{version:[^/:]+}"
        return [
            web.get(f"/v1/models/{name}", self.status),
            web.get(f"/v1/models/{name}/versions/{version}", self.status),
            web.get(f"/v1/models/{name}/metadata", self.metadata),
            web.get(f"/v1/models/{name}/versions/{version}/metadata", self.metadata),
            web.post(f"/v1/models/{name}:predict", self.predict),
            web.post(f"/v1/models/{name}/versions/{version}:predict", self.predict),
            # Version labels (http_rest_api_handler.cc's paths): the stand-in configures none.
            web.get(f"/v1/models/{name}/labels/{{label:[^/:]+}}", self.status),
            web.get(f"/v1/models/{name}/labels/{{label:[^/:]+}}/metadata", self.metadata),
            web.post(f"/v1/models/{name}/labels/{{label:[^/:]+}}:predict", self.predict),
        ]

    async def _answer(self, compute) -> web.Response:
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, compute)
            status = 200
        except RequestError as error:
            body, status = {"error": str(error)}, HTTP_STATUS.get(error.code, 500)
        # allow_nan: -inf scores are written -Infinity, as TF Serving writes them.
        return web.Response(text=json.dumps(body, allow_nan=True), status=status, content_type="application/json")

    async def status(self, http: web.Request) -> web.Response:
        def compute():
            request = get_model_status_pb2.GetModelStatusRequest()
            label = http.match_info.get("label")
            if label is not None:
                raise _bad(f"Unrecognized servable version label: {label}")
            _model_spec(request.model_spec, http.match_info["name"], http.match_info.get("version"))
            # Every field printed, as TF Serving prints them (error_code "OK" included).
            return json_format.MessageToDict(
                predict.model_status(self.manager, request),
                including_default_value_fields=True,
                preserving_proto_field_name=True,
            )

        return await self._answer(compute)

    async def metadata(self, http: web.Request) -> web.Response:
        def compute():
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            match = http.match_info
            _model_spec(request.model_spec, match["name"], match.get("version"), match.get("label"))
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

    async def predict(self, http: web.Request) -> web.Response:
        try:
            body = json.loads(await http.read())
        except (ValueError, UnicodeDecodeError) as error:
            return web.json_response({"error": f"JSON Parse error: {error}"}, status=400)

        def compute():
            match = http.match_info
            request, rows = predict_request(body, self.manager, match["name"], match.get("version"), match.get("label"))
            return predict_json(predict.predict(self.manager, self.batcher, request), rows)

        return await self._answer(compute)


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
