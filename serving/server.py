"""A gRPC server that speaks TF Serving's API, for development and CI.

TF Serving's binary cannot be installed on every machine; this stand-in
implements the same services (tensorflow.serving.PredictionService: Predict,
GetModelMetadata; tensorflow.serving.ModelService: GetModelStatus) with the
protos from tensorflow-serving-api, the same status codes, and TF Serving's
default version policy: the newest complete version under the model base path
is served, and a newly pushed one replaces it atomically without dropping
requests in flight. Like TF Serving, it loads each version's graph into a
Session and runs signatures by their SignatureDef tensor names. Production runs
tensorflow/serving (see serving/*.config).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import threading

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from animerec import features as f
from animerec.pipeline.artifacts import complete_versions
from animerec.serving.batching import Batcher, BatchingConfig, RequestError

DEFAULT_MODEL_NAME = f.MODEL_NAME
DEFAULT_PORT = 8500
# An input tensor may declare at most this many elements: checked on the request's
# declared shape, before anything is allocated for it.
MAX_INPUT_ELEMENTS = 1 << 20
MAX_CONCURRENT_RPCS = 64
WORKERS = 8
POLL_SECONDS = 2.0


# Session options, as TF Serving's --tensorflow_inter_op_parallelism/--tensorflow_intra_op_parallelism.
# A negative inter-op count runs each request's ops on the thread that received it
# (no hand-off to a pool), and idle pool threads sleep instead of spinning: on a
# small machine the spinning takes the CPU the next request needs.
INTER_OP_THREADS = -1
INTRA_OP_THREADS = 1


@dataclasses.dataclass
class LoadedVersion:
    """One version, loaded the way TF Serving loads it: the SavedModel's graph in a
    Session, each signature run by its SignatureDef's tensor names."""

    version: int
    path: str
    session: object
    signature_defs: dict  # name -> SignatureDef proto
    _callables: dict = dataclasses.field(default_factory=dict)
    _specs: dict = dataclasses.field(default_factory=dict)

    def input_specs(self, name: str) -> dict:
        if name not in self._specs:
            self._specs[name] = {
                alias: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.dtypes.as_dtype(info.dtype), alias)
                for alias, info in self.signature_defs[name].inputs.items()
            }
        return self._specs[name]

    def run(self, name: str, inputs: dict) -> dict:
        """Runs signature `name` on numpy inputs keyed by alias; outputs keyed by alias."""
        if name not in self._callables:
            signature = self.signature_defs[name]
            in_aliases = sorted(signature.inputs)
            out_aliases = sorted(signature.outputs)
            run = self.session.make_callable(
                [signature.outputs[a].name for a in out_aliases],
                feed_list=[signature.inputs[a].name for a in in_aliases],
            )
            self._callables[name] = (in_aliases, out_aliases, run)
        in_aliases, out_aliases, run = self._callables[name]
        return dict(zip(out_aliases, run(*(inputs[a] for a in in_aliases))))


def session_config(inter_op_threads: int = INTER_OP_THREADS, intra_op_threads: int = INTRA_OP_THREADS):
    config = tf.compat.v1.ConfigProto(
        inter_op_parallelism_threads=inter_op_threads, intra_op_parallelism_threads=intra_op_threads
    )
    config.experimental.disable_thread_spinning = True
    return config


def load_version(base_path: str, version: int, config=None) -> LoadedVersion:
    path = os.path.join(base_path, str(version))
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config or session_config())
    # TF Serving's loader (a MetaGraph in a Session) is TF1 API: TensorFlow marks it
    # deprecated and warns on every load, which would end up in every CLI command's output.
    with graph.as_default(), deprecation.silence():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], path)
    signature_defs = dict(meta_graph.signature_def)
    signature_defs.pop("__saved_model_init_op", None)
    return LoadedVersion(version, path, session, signature_defs)


# TF Serving replays at most this many warmup records per version.
MAX_WARMUP_RECORDS = 1000


def warm_up(loaded: LoadedVersion) -> int:
    """Replays the version's assets.extra/tf_serving_warmup_requests, as TF Serving does
    before it serves a version: each PredictLog's request runs through the same
    validation and signature call as a real one, and a failing record fails the load.
    Returns the number of requests run (0 without the file: no warmup, as TF Serving)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(loaded.path, f.WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: record {count + 1} is not a PredictLog; the stand-in replays only those")
        request = log.predict_log.request
        try:
            call_signature(loaded, *validate_predict(loaded, request))
        except RequestError as error:
            raise ValueError(
                f"{path}: warmup request {count + 1} ({request.model_spec.signature_name}) failed: {error}"
            ) from None
        count += 1
    return count


class ModelManager:
    """Holds the served version, as TF Serving's latest-version policy does: the newest
    version that loads is served; a newer one replaces it once it has loaded; a version
    that fails to load (empty, truncated, corrupt, missing variables) is logged once and
    skipped, and the one being served keeps serving; if the served version's folder is
    deleted, the newest remaining version takes over."""

    def __init__(self, name: str, base_path: str, poll_seconds: float = POLL_SECONDS, config=None):
        self.name = name
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self.config = config  # the Sessions' ConfigProto (session_config() when None)
        self._current: LoadedVersion | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        # Versions that failed to load, with the error and the saved_model.pb they were
        # tried with (a version copied again is tried again); versions served before.
        self.failed: dict[int, tuple[str, tuple]] = {}
        self.retired: set[int] = set()

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    def _stamp(self, version: int) -> tuple:
        stat = os.stat(os.path.join(self.base_path, str(version), "saved_model.pb"))
        return stat.st_mtime_ns, stat.st_size

    def refresh(self) -> bool:
        """Serves the newest loadable version if it differs from the served one; True if it switched."""
        current = self._current
        # While its folder is there, only a newer version replaces the served one.
        floor = current.version if current is not None and os.path.isdir(current.path) else None
        for version in reversed(complete_versions(self.base_path)):
            if floor is not None and version <= floor:
                return False
            try:
                stamp = self._stamp(version)
            except OSError:
                continue  # deleted since it was listed
            if version in self.failed and self.failed[version][1] == stamp:
                continue
            try:
                loaded = load_version(self.base_path, version, self.config)
                warm_up(loaded)
            except Exception as error:  # noqa: BLE001 - any broken version is skipped, never fatal
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                logging.error("%s version %d does not load; skipped: %s", self.name, version, message)
                self.failed[version] = (message, stamp)
                continue
            self.failed.pop(version, None)
            with self._lock:
                previous, self._current = self._current, loaded
            if previous is not None:
                self.retired.add(previous.version)
            logging.info("Serving %s version %d (was %s)", self.name, version, previous and previous.version)
            return True
        return False

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="version-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the poller must outlive any file system surprise
                logging.exception("Polling %s failed; the served version keeps serving", self.base_path)

    def stop(self) -> None:
        self._stop.set()

    def resolve(self, model_spec) -> LoadedVersion:
        """The loaded version a request's ModelSpec names, or TF Serving's NOT_FOUND."""
        current = self._current
        if model_spec.name != self.name or current is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        which = model_spec.WhichOneof("version_choice")
        if which == "version" and model_spec.version.value != current.version:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({model_spec.name}, {model_spec.version.value})",
            )
        if which == "version_label":
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unrecognized servable version label: {model_spec.version_label}",
            )
        return current


def tensor_proto(value: np.ndarray):
    """TensorProto of an output, built directly: tf.make_tensor_proto's checks cost
    more than the model call for small outputs. Numbers go into tensor_content
    (little-endian, as TF Serving writes them), strings into string_val."""
    value = np.asarray(value)
    proto = tensor_pb2.TensorProto()
    for size in value.shape:
        proto.tensor_shape.dim.add().size = size
    if value.dtype.kind in ("S", "O"):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(value.reshape(-1).tolist())
        return proto
    proto.dtype = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
    proto.tensor_content = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
    return proto


def validate_predict(loaded: LoadedVersion, request: predict_pb2.PredictRequest) -> tuple[str, dict]:
    """The signature name and input arrays of a PredictRequest, or TF Serving's error."""
    name = request.model_spec.signature_name or f.DEFAULT_SIGNATURE
    if name not in loaded.signature_defs:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature name: "{name}" not found in signature def'
        )
    specs = loaded.input_specs(name)
    expected = set(specs)
    given = set(request.inputs)
    if given != expected:
        missing = sorted(expected - given)
        extra = sorted(given - expected)
        detail = f"input tensor alias not found in signature: {', '.join(extra)}. " if extra else ""
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{detail}Missing inputs: {missing}. Inputs expected to be in the set {{{', '.join(sorted(expected))}}}.",
        )
    inputs = {}
    for key, spec in specs.items():
        proto = request.inputs[key]
        if proto.dtype != spec.dtype.as_datatype_enum:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{key}] to be {spec.dtype.name} but {_dtype_name(proto.dtype)} is provided",
            )
        declared = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in declared) or int(np.prod(declared, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: shape {declared} is over the limit of {MAX_INPUT_ELEMENTS:,} elements",
            )
        try:
            value = tf.make_ndarray(proto)
        except (TypeError, ValueError) as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: {error}") from None
        if not spec.shape.is_compatible_with(value.shape):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {key}: shape {list(value.shape)} is not compatible with {spec.shape}",
            )
        if spec.shape.rank and value.shape[0] == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: the batch is empty")
        inputs[key] = value
    unknown = set(request.output_filter) - set(loaded.signature_defs[name].outputs)
    if unknown:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: {sorted(unknown)}"
        )
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
        code = _GRPC_CODES.get(error.error_code, grpc.StatusCode.UNKNOWN)
        raise RequestError(code, _text(error.message)) from None
    except UnicodeDecodeError:
        # TensorFlow's error quoted bytes of the request that are not UTF-8 (a string
        # input that is not what it should be, such as a non-Example): the input's fault.
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"signature {name}: an input could not be parsed (non-UTF-8 bytes)"
        ) from None


# TensorFlow's error codes are gRPC's.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _text(message) -> str:
    """An error message as text, whatever bytes a request put into it."""
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def build_response(loaded: LoadedVersion, request, name: str, outputs: dict) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = name
    for key in set(request.output_filter) or set(outputs):
        response.outputs[key].CopyFrom(tensor_proto(outputs[key]))
    return response


def _run_batch(key: tuple[LoadedVersion, str], inputs: dict) -> dict:
    return call_signature(key[0], key[1], inputs)


def predict(manager: ModelManager, batcher: Batcher | None, request, timeout: float | None = None):
    """A PredictRequest's PredictResponse, or the RequestError TF Serving would answer with."""
    loaded = manager.resolve(request.model_spec)
    name, inputs = validate_predict(loaded, request)
    if batcher is None:
        outputs = call_signature(loaded, name, inputs)
    else:
        outputs = batcher.call((loaded, name), inputs, timeout)
    return build_response(loaded, request, name, outputs)


def model_metadata(manager: ModelManager, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The signature_def metadata of the version a GetModelMetadataRequest names."""
    loaded = manager.resolve(request.model_spec)
    fields = set(request.metadata_field)
    if fields != {"signature_def"}:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Metadata field {sorted(fields - {'signature_def'}) or '(none)'} is not supported",
        )
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in loaded.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = manager.name
    response.model_spec.version.value = loaded.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_status(manager: ModelManager, request) -> get_model_status_pb2.GetModelStatusResponse:
    """Every version seen: the served one AVAILABLE; earlier served and unloadable ones END."""
    states_enum = get_model_status_pb2.ModelVersionStatus
    current = manager.current
    if request.model_spec.name != manager.name or current is None:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
    states = {v: states_enum.END for v in manager.retired | set(manager.failed)}
    states[current.version] = states_enum.AVAILABLE
    wanted = request.model_spec.version.value if request.model_spec.HasField("version") else None
    if wanted is not None and wanted not in states:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND, f"Could not find version {wanted} of model {request.model_spec.name}"
        )
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in sorted(states, reverse=True):
        if wanted is not None and version != wanted:
            continue
        version_status = response.model_version_status.add()
        version_status.version = version
        version_status.state = states[version]
        version_status.status.error_code = 0  # OK
        if version in manager.failed and version != current.version:
            version_status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            version_status.status.error_message = manager.failed[version][0]
    return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, batcher: Batcher | None = None):
        self.manager = manager
        self.batcher = batcher

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        try:
            return predict(self.manager, self.batcher, request, context.time_remaining())
        except RequestError as error:
            context.abort(error.code, str(error))

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            return model_metadata(self.manager, request)
        except RequestError as error:
            context.abort(error.code, str(error))

    def Classify(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by this retrieval model; use Predict")

    def Regress(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by this retrieval model; use Predict")

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this retrieval model; use Predict"
        )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            return model_status(self.manager, request)
        except RequestError as error:
            context.abort(error.code, str(error))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "model config reloads are not supported; the server follows the base path"
        )


@dataclasses.dataclass
class RunningServer:
    server: grpc.Server
    manager: ModelManager
    port: int
    batcher: Batcher | None = None
    rest: object | None = None  # serving.rest.RestServer

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def rest_url(self) -> str | None:
        return f"http://localhost:{self.rest.port}" if self.rest else None

    def stop(self, grace: float = 1.0) -> None:
        self.manager.stop()
        if self.rest:
            self.rest.stop()
        self.server.stop(grace).wait()
        if self.batcher:
            self.batcher.stop()


def start_server(
    model_base_path: str,
    port: int = DEFAULT_PORT,
    model_name: str = DEFAULT_MODEL_NAME,
    host: str = "127.0.0.1",
    workers: int = WORKERS,
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    poll_seconds: float = POLL_SECONDS,
    batching: BatchingConfig | None = None,
    rest_port: int | None = None,
    intra_op_threads: int = INTRA_OP_THREADS,
) -> RunningServer:
    """Starts serving; port 0 picks a free port. Fails if no complete version exists.
    Every signature is batched as TF Serving's --enable_batching does, with `batching`
    (serving/batching.config when None). With `rest_port` (0: a free one), TF Serving's
    REST API is served too, over the same versions and batcher."""
    manager = ModelManager(model_name, model_base_path, poll_seconds, session_config(intra_op_threads=intra_op_threads))
    manager.start()
    if manager.current is None:
        manager.stop()
        broken = "".join(f"; version {v} does not load: {m}" for v, (m, _) in sorted(manager.failed.items()))
        raise FileNotFoundError(
            f"{model_base_path}: no loadable model version (a numbered folder with saved_model.pb){broken}"
        )
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    batcher = Batcher(_run_batch, batching or BatchingConfig.read())
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, batcher), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    rest = None
    if rest_port is not None:
        from animerec.serving.rest import RestApi, RestServer

        rest = RestServer(RestApi(manager, batcher), host, rest_port)
    return RunningServer(server, manager, bound, batcher, rest)


def serve_forever(
    model_base_path: str,
    port: int,
    model_name: str = DEFAULT_MODEL_NAME,
    host: str = "127.0.0.1",
    rest_port: int | None = None,
    intra_op_threads: int = INTRA_OP_THREADS,
) -> None:
    """Serves until Ctrl-C or SIGTERM (as Kubernetes stops a pod), then drains requests in flight."""
    running = start_server(
        model_base_path,
        port=port,
        model_name=model_name,
        host=host,
        rest_port=rest_port,
        intra_op_threads=intra_op_threads,
    )
    rest = f" and REST on {host}:{running.rest.port}" if running.rest else ""
    print(
        f"Serving model {model_name} version {running.manager.current.version} from {model_base_path}: "
        f"gRPC on {host}:{running.port}{rest}",
        flush=True,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    running.stop(grace=5.0)
