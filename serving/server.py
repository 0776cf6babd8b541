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
import threading
import time

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
from tensorflow_serving.apis import status_pb2 as serving_status_pb2

DEFAULT_MODEL_NAME = "animerec"
DEFAULT_PORT = 8500
# Requests over this many users are refused (TF Serving's batching config caps batches the same way).
MAX_BATCH = 1024
MAX_CONCURRENT_RPCS = 64
WORKERS = 8
POLL_SECONDS = 2.0


class RequestError(Exception):
    """A request TF Serving would refuse, with the gRPC code it would use."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


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


def complete_versions(base_path: str) -> list[int]:
    """Version folders that hold a saved_model.pb (Pusher copies that file last)."""
    if not os.path.isdir(base_path):
        return []
    return sorted(
        int(name)
        for name in os.listdir(base_path)
        if name.isdigit() and os.path.exists(os.path.join(base_path, name, "saved_model.pb"))
    )


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


def _warm_up(loaded: LoadedVersion) -> None:
    """One request before the swap, so the first real request after it is not slow."""
    signature = loaded.signature_defs.get("serving_default")
    if signature is not None and list(signature.inputs) == ["user_id"]:
        loaded.run("serving_default", {"user_id": np.zeros([1], np.int64)})


class ModelManager:
    """Holds the served version; a poller swaps in newer versions as they appear."""

    def __init__(self, name: str, base_path: str, poll_seconds: float = POLL_SECONDS):
        self.name = name
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self._current: LoadedVersion | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    def refresh(self) -> bool:
        """Loads the newest complete version if it is newer; True if it switched."""
        versions = complete_versions(self.base_path)
        if not versions or (self._current and versions[-1] <= self._current.version):
            return False
        loaded = load_version(self.base_path, versions[-1])
        _warm_up(loaded)
        with self._lock:
            previous, self._current = self._current, loaded
        logging.info("Serving %s version %d (was %s)", self.name, loaded.version, previous and previous.version)
        return True

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="version-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except (OSError, ValueError, tf.errors.OpError) as error:
                # A version that fails to load is skipped; the current one keeps serving.
                logging.error("Could not load a new version from %s: %s", self.base_path, error)

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


def _dtype_name(dtype: tf.DType) -> str:
    return dtype.name


def validate_predict(
    loaded: LoadedVersion, request: predict_pb2.PredictRequest, max_batch: int = MAX_BATCH
) -> tuple[str, dict]:
    """The signature name and input arrays of a PredictRequest, or TF Serving's error."""
    name = request.model_spec.signature_name or "serving_default"
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
                f"Expects arg[{key}] to be {_dtype_name(spec.dtype)} but {_dtype_name(tf.dtypes.as_dtype(proto.dtype))} is provided",
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
        if spec.shape.rank and spec.shape.rank >= 1:
            if value.shape[0] == 0:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key}: the batch is empty")
            if value.shape[0] > max_batch:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {key}: batch of {value.shape[0]} is larger than the maximum of {max_batch}",
                )
        inputs[key] = value
    unknown = set(request.output_filter) - set(loaded.signature_defs[name].outputs)
    if unknown:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: {sorted(unknown)}"
        )
    return name, inputs


def call_signature(loaded: LoadedVersion, name: str, inputs: dict) -> dict:
    specs = loaded.input_specs(name)
    try:
        return loaded.run(name, {k: np.asarray(v, dtype=specs[k].dtype.as_numpy_dtype) for k, v in inputs.items()})
    except tf.errors.InvalidArgumentError as error:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, error.message) from None


def build_response(loaded: LoadedVersion, request, name: str, outputs: dict) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = name
    for key in set(request.output_filter) or set(outputs):
        response.outputs[key].CopyFrom(tensor_proto(outputs[key]))
    return response


def run_predict(
    loaded: LoadedVersion, request: predict_pb2.PredictRequest, max_batch: int = MAX_BATCH
) -> predict_pb2.PredictResponse:
    """Validates a PredictRequest against the signature and runs it."""
    name, inputs = validate_predict(loaded, request, max_batch)
    return build_response(loaded, request, name, call_signature(loaded, name, inputs))


class _Pending:
    __slots__ = ("loaded", "request", "name", "inputs", "done", "response", "error")

    def __init__(self, loaded, request, name, inputs):
        self.loaded, self.request, self.name, self.inputs = loaded, request, name, inputs
        self.done = threading.Event()
        self.response = None
        self.error = None


class Batcher:
    """Greedy server-side batching of one-input signatures (serving_default: user_id).

    A worker takes every request queued for the same version and signature and
    runs them as one call, then splits the outputs. Nothing waits for a batch to
    fill: under light load a request runs alone at once; under load, requests
    that arrive while the model is busy share the next call (TF Serving's
    --enable_batching does the same job in production).
    """

    def __init__(self, max_batch: int = MAX_BATCH, workers: int = 2):
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._stop = False
        self._busy = 0  # calls running, inline or in a worker
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def try_inline(self) -> bool:
        """True (and counted as busy) when nothing is queued or running: the caller
        runs its request on its own thread, saving two thread hand-offs."""
        with self._cond:
            if self._queue or self._busy:
                return False
            self._busy += 1
            return True

    def finish_inline(self) -> None:
        with self._cond:
            self._busy -= 1

    def submit(self, pending: _Pending) -> _Pending:
        with self._cond:
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        return pending

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def _take(self) -> list[_Pending]:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
            first = self._queue[0]
            batch, rest, size = [], [], 0
            for p in self._queue:
                rows = len(next(iter(p.inputs.values())))
                if p.loaded is first.loaded and p.name == first.name and size + rows <= self.max_batch:
                    batch.append(p)
                    size += rows
                else:
                    rest.append(p)
            self._queue = rest
            self._busy += 1
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as error:  # noqa: BLE001 - every waiting request must get an answer
                logging.exception("batched call failed")
                for p in batch:
                    if not p.done.is_set():
                        p.error = RequestError(grpc.StatusCode.INTERNAL, f"model call failed: {error}")
                        p.done.set()
            finally:
                with self._cond:
                    self._busy -= 1

    def _run(self, batch: list[_Pending]) -> None:
        first = batch[0]
        key = next(iter(first.inputs))
        sizes = [len(p.inputs[key]) for p in batch]
        try:
            outputs = call_signature(first.loaded, first.name, {key: np.concatenate([p.inputs[key] for p in batch])})
        except RequestError:
            # One bad member fails a merged call: run each alone to give each its own answer.
            for p in batch:
                try:
                    p.response = build_response(p.loaded, p.request, p.name, call_signature(p.loaded, p.name, p.inputs))
                except RequestError as error:
                    p.error = error
                p.done.set()
            return
        offset = 0
        for p, n in zip(batch, sizes):
            part = {k: v[offset : offset + n] for k, v in outputs.items()}
            offset += n
            try:
                p.response = build_response(p.loaded, p.request, p.name, part)
            except (RequestError, ValueError) as error:
                p.error = (
                    error if isinstance(error, RequestError) else RequestError(grpc.StatusCode.INTERNAL, str(error))
                )
            p.done.set()


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, max_batch: int = MAX_BATCH, batcher: Batcher | None = None):
        self.manager = manager
        self.max_batch = max_batch
        self.batcher = batcher

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        try:
            loaded = self.manager.resolve(request.model_spec)
            name, inputs = validate_predict(loaded, request, self.max_batch)
            if self.batcher is None or len(inputs) != 1:
                return build_response(loaded, request, name, call_signature(loaded, name, inputs))
            if self.batcher.try_inline():
                try:
                    return build_response(loaded, request, name, call_signature(loaded, name, inputs))
                finally:
                    self.batcher.finish_inline()
            done = self.batcher.submit(_Pending(loaded, request, name, inputs))
            if done.error is not None:
                raise done.error
            return done.response
        except RequestError as error:
            context.abort(error.code, str(error))

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            loaded = self.manager.resolve(request.model_spec)
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
            response.model_spec.name = self.manager.name
            response.model_spec.version.value = loaded.version
            response.metadata["signature_def"].Pack(signature_map)
            return response
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
        from tensorflow_serving.apis import get_model_status_pb2 as status  # noqa: PLC0415

        current = self.manager.current
        if request.model_spec.name != self.manager.name or current is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
        if request.model_spec.HasField("version") and request.model_spec.version.value != current.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find version {request.model_spec.version.value} of model {request.model_spec.name}",
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        version_status = response.model_version_status.add()
        version_status.version = current.version
        version_status.state = status.ModelVersionStatus.AVAILABLE
        version_status.status.CopyFrom(serving_status_pb2.StatusProto())
        return response

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

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        self.manager.stop()
        self.server.stop(grace).wait()
        if self.batcher:
            self.batcher.stop()


def start_server(
    model_base_path: str,
    port: int = DEFAULT_PORT,
    model_name: str = DEFAULT_MODEL_NAME,
    host: str = "127.0.0.1",
    max_batch: int = MAX_BATCH,
    workers: int = WORKERS,
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    poll_seconds: float = POLL_SECONDS,
    batching: bool = True,
) -> RunningServer:
    """Starts serving; port 0 picks a free port. Fails if no complete version exists."""
    manager = ModelManager(model_name, model_base_path, poll_seconds)
    manager.start()
    if manager.current is None:
        manager.stop()
        raise FileNotFoundError(f"{model_base_path}: no complete model version (a numbered folder with saved_model.pb)")
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    batcher = Batcher(max_batch) if batching else None
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, max_batch, batcher), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return RunningServer(server, manager, bound, batcher)


def serve_forever(model_base_path: str, port: int, model_name: str = DEFAULT_MODEL_NAME) -> None:
    running = start_server(model_base_path, port=port, model_name=model_name, host="0.0.0.0")
    print(
        f"Serving model {model_name} version {running.manager.current.version} from {model_base_path} on port {running.port}"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        running.stop()
