"""TF Serving's request handling, shared by the stand-in's gRPC and REST APIs: a
PredictRequest validated against the signature (aliases, dtypes, declared sizes before
anything is allocated), the signature run, the response protos, and the metadata and
status answers, each failure as the RequestError (status code and message) TF Serving
would answer with."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from animerec import features as f
from animerec.serving.batching import Batcher, RequestError

if TYPE_CHECKING:
    from animerec.serving.versions import LoadedVersion, ModelManager

# An input tensor may declare at most this many elements: checked on the request's
# declared shape, before anything is allocated for it.
MAX_INPUT_ELEMENTS = 1 << 20


def fill_tensor_proto(proto, value: np.ndarray, content: bool = False) -> None:
    """`value` written into the empty TensorProto `proto` (a response's output or a
    request's input, in place: no copy of its strings), directly: tf.make_tensor_proto's
    checks cost more than the model call for small outputs. Strings go into string_val;
    numbers into their typed field (float_val, int64_val, ...), as TF Serving writes a
    response's outputs (`Tensor::AsProtoField`, its default kAsProtoField in
    predict_util.cc), or with `content` into tensor_content (little-endian), as
    tf.make_tensor_proto writes a request's."""
    value = np.asarray(value)
    for size in value.shape:
        proto.tensor_shape.dim.add().size = size
    if value.dtype.kind in ("S", "O"):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(value.reshape(-1).tolist())
        return
    proto.dtype = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
    field = _FIELDS.get(proto.dtype)
    if content or field is None:
        proto.tensor_content = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
    else:
        flat = value.reshape(-1)
        getattr(proto, field).extend((flat.view(np.uint16) if flat.dtype == np.float16 else flat).tolist())


# The typed field Tensor::AsProtoField fills for each dtype (tensor.proto; half as its bits).
_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
}


# The numeric dtypes signatures take, with the repeated field tf.make_ndarray reads for each.
_VALUE_FIELDS = {
    types_pb2.DT_INT64: ("int64_val", np.int64),
    types_pb2.DT_INT32: ("int_val", np.int32),
    types_pb2.DT_FLOAT: ("float_val", np.float32),
}


def to_ndarray(proto, shape: list[int]) -> np.ndarray:
    """tf.make_ndarray(proto) (`shape`: its declared dims) for a well-formed numeric input
    (its tensor_content, or one value an element in its repeated field) without
    tf.make_ndarray's dtype machinery, which is about half of a request's checks here;
    anything else (strings, one value to repeat, a size that does not match) goes
    through tf.make_ndarray itself, with its errors."""
    numeric = _VALUE_FIELDS.get(proto.dtype)
    if numeric is not None:
        field, dtype = numeric
        elements = math.prod(shape)
        if proto.tensor_content:
            content = np.frombuffer(proto.tensor_content, dtype=dtype)
            if content.size == elements:
                return content.copy().reshape(shape)
        else:
            values = getattr(proto, field)
            if 0 < len(values) == elements:
                return np.fromiter(values, dtype=dtype, count=elements).reshape(shape)
    return tf.make_ndarray(proto)


def validate_predict(loaded: LoadedVersion, request: predict_pb2.PredictRequest) -> tuple[str, dict]:
    """The signature name and input arrays of a PredictRequest, or TF Serving's error."""
    name = request.model_spec.signature_name or f.DEFAULT_SIGNATURE
    if name not in loaded.signature_defs:
        # predict_util.cc, RunPredict.
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
    specs = loaded.input_specs(name)
    expected = set(specs)
    given = set(request.inputs)
    if given != expected:
        # predict_util.cc: VerifyRequestInputsSize, then PreProcessPrediction's alias check.
        def names(aliases):
            return "{" + ",".join(sorted(aliases)) + "}"

        if len(given) != len(expected):
            message = (
                f"input size does not match signature: {len(given)}!={len(expected)} len({names(given)}) != "
                f"len({names(expected)}). Sent extra: {names(given - expected)}. "
                f"Missing but required: {names(expected - given)}."
            )
        else:  # saved_model::GetInputValues (tensorflow/cc/saved_model/util.cc); no defaults here
            alias = min(expected - given)
            feed = loaded.signature_defs[name].inputs[alias].name
            message = (
                f"Signature input alias: {alias}(feed name: {feed}) not found in request and no default value "
                f"provided. Inputs expected to be in the request {names(given)}, or default input alias set: "
            )
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)
    inputs = {}
    for key, spec in specs.items():
        proto = request.inputs[key]
        if proto.dtype != spec.dtype.as_datatype_enum:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{key}] to be {spec.dtype.name} but {_dtype_name(proto.dtype)} is provided",
            )
        declared = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in declared) or math.prod(declared) > MAX_INPUT_ELEMENTS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: shape {declared} is over the limit of {MAX_INPUT_ELEMENTS:,} elements",
            )
        try:
            value = to_ndarray(proto, declared)
        except (TypeError, ValueError) as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: {error}") from None
        # A scalar goes on to the batching session, which refuses it with TF Serving's own
        # message (batching_util.h, ComputeTensorBatchSize): no signature check comes first.
        if value.ndim and not spec.shape.is_compatible_with(value.shape):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: shape {list(value.shape)} is not compatible with {spec.shape}",
            )
        if spec.shape.rank and value.ndim and value.shape[0] == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: the batch is empty")
        inputs[key] = value
    # predict_util.cc, PreProcessPrediction: each alias known, none twice.
    outputs = loaded.signature_defs[name].outputs
    seen = set()
    for alias in request.output_filter:
        if alias not in outputs:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(outputs))}}}.",
            )
        if alias in seen:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return name, inputs


def _dtype_name(enum: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"data type {enum}"


def call_signature(loaded: LoadedVersion, name: str, inputs: dict) -> dict:
    """Runs a signature; the model's errors as TF Serving reports them (the op error's own code)."""
    specs = loaded.input_specs(name)
    try:
        return loaded.run(name, {k: np.asarray(v, dtype=specs[k].dtype.as_numpy_dtype) for k, v in inputs.items()})
    except tf.errors.OpError as error:
        code = GRPC_CODES.get(error.error_code, grpc.StatusCode.UNKNOWN)
        raise RequestError(code, _text(error.message)) from None
    except UnicodeDecodeError:
        # TensorFlow's error quoted bytes of the request that are not UTF-8 (a string
        # input that is not what it should be, such as a non-Example): the input's fault.
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"signature {name}: an input could not be parsed (non-UTF-8 bytes)"
        ) from None


# TensorFlow's error codes are gRPC's.
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _text(message) -> str:
    """An error message as text, whatever bytes a request put into it."""
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def build_response(loaded: LoadedVersion, request, name: str, outputs: dict) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = name
    for key in set(request.output_filter) or set(outputs):
        fill_tensor_proto(response.outputs[key], outputs[key])
    return response


def run_batch(key: tuple[LoadedVersion, str], inputs: dict) -> dict:
    return call_signature(key[0], key[1], inputs)


def predict(manager: ModelManager, batcher: Batcher | None, request, timeout: float | None = None):
    """A PredictRequest's PredictResponse, or the RequestError TF Serving would answer with."""
    _has_model_spec(request)
    loaded = manager.resolve(request.model_spec)
    name, inputs = validate_predict(loaded, request)
    if batcher is None or not is_batched(loaded, request, name):
        outputs = call_signature(loaded, name, inputs)
    else:
        outputs = batcher.call((loaded, name), inputs, timeout)
    return build_response(loaded, request, name, outputs)


def is_batched(loaded: LoadedVersion, request, name: str) -> bool:
    """Whether the batching session batches this request's call: one whose inputs and
    outputs are a signature's. A call fetching only some outputs matches none and runs on
    its own ("Bypassing batcher", batching_session.cc; TF Serving sets no default scheduler)."""
    return not request.output_filter or set(request.output_filter) == set(loaded.signature_defs[name].outputs)


def _has_model_spec(request) -> None:
    """predict_impl.cc, get_model_metadata_impl.cc, get_model_status_impl.cc: a request
    without a ModelSpec is refused before anything else."""
    if not request.HasField("model_spec"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def model_metadata(manager: ModelManager, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The signature_def metadata of the version a GetModelMetadataRequest names."""
    # get_model_metadata_impl.cc: the request checked first (the first unsupported field
    # in the request's order), then every signature of the MetaGraph copied
    # (__saved_model_init_op too).
    _has_model_spec(request)
    if not request.metadata_field:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field"
        )
    unsupported = [field for field in request.metadata_field if field != "signature_def"]
    if unsupported:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {unsupported[0]} is not supported")
    loaded = manager.resolve(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in loaded.meta_graph_signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = manager.name
    response.model_spec.version.value = loaded.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(manager: ModelManager, request) -> get_model_status_pb2.GetModelStatusResponse:
    """Every version seen: the served one AVAILABLE; earlier served and unloadable ones END."""
    states_enum = get_model_status_pb2.ModelVersionStatus
    _has_model_spec(request)
    current = manager.current
    states = {}
    if request.model_spec.name == manager.name and current is not None:
        states = {v: states_enum.END for v in manager.retired | set(manager.failed)}
        states[current.version] = states_enum.AVAILABLE
    # get_model_status_impl.cc: a version asked for is looked up as (model, version), so an
    # unknown model with a version is "Could not find version"; without one, every version.
    wanted = request.model_spec.version.value if request.model_spec.HasField("version") else None
    if wanted is not None and wanted not in states:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND, f"Could not find version {wanted} of model {request.model_spec.name}"
        )
    if not states:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in sorted(states, reverse=True):
        if wanted is not None and version != wanted:
            continue
        version_status = response.model_version_status.add()
        version_status.version = version
        version_status.state = states[version]
        version_status.status.error_code = 0  # OK
        if version in manager.failed and version != current.version:
            version_status.status.error_code = manager.failed[version].code.value[0]
            version_status.status.error_message = manager.failed[version].text
    return response
