"""The model versions a TF Serving stand-in serves: each one's graph loaded into a Session
(as TF Serving loads a SavedModel), its warmup replayed, and TF Serving's latest-version
policy (ModelManager: poll the base path, switch atomically, skip broken versions)."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.saved_model import loader_impl
from tensorflow.python.util import deprecation

from animerec import features as f
from animerec.data import files
from animerec.pipeline.artifacts import complete_versions
from animerec.serving import scann_index
from animerec.serving.batching import BatchingConfig, RequestError, task_size
from animerec.serving.predict import GRPC_CODES, call_signature, is_batched, validate_predict

POLL_SECONDS = 2.0
# How long stopping waits for the version poller (a load in progress finishes first).
STOP_SECONDS = 60.0


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
    # Every SignatureDef of the MetaGraph by name, __saved_model_init_op too, as
    # GetModelMetadata lists them.
    meta_graph_signature_defs: dict
    # With --index scann: answers scann_index.SIGNATURES instead of the Session.
    index: object = None
    _callables: dict = dataclasses.field(default_factory=dict)
    _specs: dict = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def signature_defs(self) -> dict:
        """The signatures Predict runs: all but the init op."""
        return {k: v for k, v in self.meta_graph_signature_defs.items() if k != "__saved_model_init_op"}

    def input_specs(self, name: str) -> dict:
        if name not in self._specs:
            self._specs[name] = {
                alias: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.dtypes.as_dtype(info.dtype), alias)
                for alias, info in self.signature_defs[name].inputs.items()
            }
        return self._specs[name]

    def output_width(self, name: str) -> int:
        """The columns of signature `name`'s outputs (its largest k)."""
        return self.signature_defs[name].outputs[f.OUTPUT_ANIME_IDS].tensor_shape.dim[1].size

    def run(self, name: str, inputs: dict) -> dict:
        """Runs signature `name` on numpy inputs keyed by alias; outputs keyed by alias."""
        if self.index is not None and name in scann_index.SIGNATURES:
            return self.index.run(name, inputs, self.output_width(name))
        if name not in self._callables:
            signature = self.signature_defs[name]
            in_aliases = sorted(signature.inputs)
            out_aliases = sorted(signature.outputs)
            run = session_callable(
                self.session,
                [signature.inputs[a].name for a in in_aliases],
                [signature.outputs[a].name for a in out_aliases],
            )
            self._callables[name] = (in_aliases, out_aliases, run)
        in_aliases, out_aliases, run = self._callables[name]
        return dict(zip(out_aliases, run(*(inputs[a] for a in in_aliases))))


def session_callable(session, feeds: list[str], fetches: list[str]):
    """A callable running `session` from numpy values of the tensors named `feeds` to the
    values of `fetches`: Session::MakeCallable, TensorFlow's C++ API for running the same
    feeds and fetches again and again. (tf.Session.make_callable with feeds goes through
    Session.run's Python feed and fetch handling on every call: about 0.2 ms a request
    here, which TF Serving's C++ never pays.)"""
    return session._make_callable_from_options(config_pb2.CallableOptions(feed=feeds, fetch=fetches))


def session_config(inter_op_threads: int = INTER_OP_THREADS, intra_op_threads: int = INTRA_OP_THREADS):
    config = tf.compat.v1.ConfigProto(
        inter_op_parallelism_threads=inter_op_threads, intra_op_parallelism_threads=intra_op_threads
    )
    config.experimental.disable_thread_spinning = True
    return config


def load_version(base_path: str, version: int, config=None, index: str = f.BRUTE_FORCE_INDEX) -> LoadedVersion:
    """Version `version` in a Session; with index "scann", known users' retrieval from a
    ScaNN index over its arrays (scann_index)."""
    if index not in f.RETRIEVAL_INDEXES:
        raise ValueError(f"unknown index {index!r}; one of {', '.join(f.RETRIEVAL_INDEXES)}")
    path = os.path.join(base_path, str(version))
    session, meta_graph = load_session(path, config)
    return LoadedVersion(
        version,
        path,
        session,
        dict(meta_graph.signature_def),
        scann_index.ScannRetrieval(path, session) if index == f.SCANN_INDEX else None,
    )


def load_session(path: str, config=None):
    """The SavedModel at `path` in a Session, as TF Serving loads it: (session, MetaGraphDef).

    As TensorFlow's C++ loader (`tensorflow/cc/saved_model/loader.cc`, `reader.cc`) does,
    which TF Serving runs: a saved_model.pb that does not parse is DATA_LOSS, one without
    a MetaGraph tagged exactly `serve` is NOT_FOUND, and a version without
    variables/variables.index loads with no variables restored (its first call, the
    warmup's, then fails). Python's loader raises its own exceptions for all three."""
    pb = os.path.join(path, "saved_model.pb")
    try:
        loader = loader_impl.SavedModelLoader(path)
    except OSError:
        if not tf.io.gfile.exists(pb):
            raise
        raise RequestError(grpc.StatusCode.DATA_LOSS, f"Can't parse {pb} as binary proto") from None
    tags = [tf.saved_model.SERVING]
    if not any(set(meta.meta_info_def.tags) == set(tags) for meta in loader.saved_model.meta_graphs):
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            "Could not find meta graph def matching supplied tags: { serve }. To inspect available tag-sets "
            "in the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
        )
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config or session_config())
    # TF Serving's loader (a MetaGraph in a Session) is TF1 API: TensorFlow marks it
    # deprecated and warns on every load, which would end up in every CLI command's output.
    with graph.as_default(), deprecation.silence():
        saver, _ = loader.load_graph(graph, tags)
        index = os.path.join(path, "variables", "variables.index")
        if tf.io.gfile.exists(index):
            loader.restore_variables(session, saver)
        else:
            logging.warning(
                "The specified SavedModel has no variables; no checkpoints were restored. File does not exist: %s",
                index,
            )
        loader.run_init_ops(session, tags)
    return session, loader.get_meta_graph_def_from_tags(tags)


# TF Serving's most warmup records for a version; a file with more fails the load.
MAX_WARMUP_RECORDS = 1000


def warm_up(loaded: LoadedVersion, batching: BatchingConfig | None = None) -> int:
    """Replays the version's assets.extra/tf_serving_warmup_requests before it serves, as
    TF Serving's RunSavedModelWarmup does (`saved_model_warmup_util.cc`,
    `saved_model_warmup.cc`), and fails the load as it does, with its codes: a record that
    is not a PredictionLog, or over MAX_WARMUP_RECORDS records, is INVALID_ARGUMENT; a
    file that is not TFRecords is DATA_LOSS; a PredictLog's request runs through the same
    validation and signature call as a real one (and, with `batching`, the batching
    session's checks: TF Serving replays the warmup on the session it serves with), and
    its error is the load's; a SessionRunLog is UNIMPLEMENTED; a record with no log, or a
    PredictStreamedLog (which only the TFRT runtime replays), is skipped. Classify,
    regress and multi-inference records, which TF Serving runs, the stand-in refuses
    (UNIMPLEMENTED): it serves Predict only. Returns the number of records read (0
    without the file: no warmup, as TF Serving)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(loaded.path, f.WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    try:
        # The v1 record reader raises the file's own error ("corrupted record at 0"), not
        # tf.data's, which wraps it in the iterator op's name.
        with deprecation.silence():
            records = tf.compat.v1.io.tf_record_iterator(path)
        for record in records:
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Failed to parse warmup record: {record.decode('utf-8', 'replace')} from {path}",
                ) from None
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                name, inputs = validate_predict(loaded, request)
                if batching is not None and is_batched(loaded, request, name):
                    task_size(inputs, batching.max_batch_size)
                call_signature(loaded, name, inputs)
            elif kind == "session_run_log":
                number = log.DESCRIPTOR.fields_by_name[kind].number
                raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {number}")
            elif kind in ("classify_log", "regress_log", "multi_inference_log"):
                raise RequestError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{path}: record {count + 1} is a {kind}; the stand-in serves and replays Predict only",
                )
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
                )
    except tf.errors.DataLossError as error:
        raise RequestError(
            grpc.StatusCode.DATA_LOSS, f"{error.message}. Please verify your warmup data is in TFRecord format."
        ) from None
    return count


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """Why a version did not load: its error's code (a RequestError's, as TF Serving's
    loader and warmup give it; TensorFlow's, which are gRPC's; UNKNOWN for any other
    exception) and whole text, as TF Serving's model status reports a
    version's load error (ToStatusProto of its health), its first line for logs, and
    the saved_model.pb it was tried with."""

    code: grpc.StatusCode
    text: str
    stamp: tuple

    @property
    def message(self) -> str:
        return self.text.splitlines()[0]

    @classmethod
    def of(cls, error: Exception, stamp: tuple) -> LoadFailure:
        if isinstance(error, RequestError):
            code = error.code
        elif isinstance(error, tf.errors.OpError):
            code = GRPC_CODES.get(error.error_code)
        else:
            code = None
        return cls(code or grpc.StatusCode.UNKNOWN, str(error) or type(error).__name__, stamp)


class ModelManager:
    """Holds the served version, as TF Serving's latest-version policy does: the newest
    version that loads is served; a newer one replaces it once it has loaded; a version
    that fails to load (empty, truncated, corrupt, missing variables) is logged once and
    skipped, and the one being served keeps serving; if the served version's folder is
    deleted, the newest remaining version takes over."""

    def __init__(
        self,
        name: str,
        base_path: str,
        poll_seconds: float = POLL_SECONDS,
        config=None,
        index: str = f.BRUTE_FORCE_INDEX,
        batching: BatchingConfig | None = None,
    ):
        self.name = name
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self.config = config  # the Sessions' ConfigProto (session_config() when None)
        self.index = index  # known users' retrieval: one of features.RETRIEVAL_INDEXES
        self.batching = batching  # the server's batching, which the warmup's requests go through too
        self._current: LoadedVersion | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        # Versions that failed to load (a version copied again is tried again); versions
        # served before.
        self.failed: dict[int, LoadFailure] = {}
        self.retired: set[int] = set()

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    def _stamp(self, version: int) -> tuple:
        path = os.path.join(self.base_path, str(version), "saved_model.pb")
        return files.mtime_ns(path), files.size(path)

    def refresh(self) -> bool:
        """Serves the newest loadable version if it differs from the served one; True if it switched."""
        current = self._current
        # While its folder is there, only a newer version replaces the served one.
        floor = current.version if current is not None and files.isdir(current.path) else None
        for version in reversed(complete_versions(self.base_path)):
            if floor is not None and version <= floor:
                return False
            try:
                stamp = self._stamp(version)
            except (OSError, tf.errors.NotFoundError):
                continue  # deleted since it was listed
            if version in self.failed and self.failed[version].stamp == stamp:
                continue
            try:
                loaded = load_version(self.base_path, version, self.config, self.index)
                warm_up(loaded, self.batching)
            except Exception as error:  # noqa: BLE001 - any broken version is skipped, never fatal
                failure = LoadFailure.of(error, stamp)
                logging.error("%s version %d does not load; skipped: %s", self.name, version, failure.message)
                self.failed[version] = failure
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

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stops polling and waits for the poller, a version load in progress included: no
        thread of the server's outlives it (a daemon thread still inside TensorFlow when
        the interpreter exits is killed there, which can abort the process)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logging.warning("%s: the version poller did not stop within %.0f s", self.name, timeout)

    def resolve(self, model_spec) -> LoadedVersion:
        """The loaded version a request's ModelSpec names, or TF Serving's NOT_FOUND."""
        current = self._current
        which = model_spec.WhichOneof("version_choice")
        if not model_spec.name:  # ServerCore::ServableRequestFromModelSpec checks the name first
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        if which == "version_label":
            # ServerCore::GetServableHandle resolves a label before it looks the model up, and
            # this server configures none (GetModelVersionForLabel).
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unrecognized servable version label: {model_spec.version_label}",
            )
        if model_spec.name != self.name or current is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        if which == "version" and model_spec.version.value != current.version:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({model_spec.name}, {model_spec.version.value})",
            )
        return current
