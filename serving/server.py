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
import signal
import threading

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from animerec import features as f
from animerec.serving.batching import Batcher, BatchingConfig, RequestError
from animerec.serving.predict import model_metadata, model_status, predict, run_batch
from animerec.serving.versions import INTRA_OP_THREADS, POLL_SECONDS, ModelManager, session_config

DEFAULT_MODEL_NAME = f.MODEL_NAME
DEFAULT_PORT = f.GRPC_PORT
MAX_CONCURRENT_RPCS = 64
WORKERS = 8


# model_servers/grpc_status_util.cc, ToGRPCStatus: longer messages are cut, and say so.
MESSAGE_LIMIT = 1024


def grpc_message(error: RequestError) -> str:
    """A refusal's message as TF Serving's gRPC server sends it."""
    message = str(error)
    return message[:MESSAGE_LIMIT] + "...TRUNCATED" if len(message) > MESSAGE_LIMIT else message


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, batcher: Batcher | None = None):
        self.manager = manager
        self.batcher = batcher

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        try:
            return predict(self.manager, self.batcher, request, context.time_remaining())
        except RequestError as error:
            context.abort(error.code, grpc_message(error))

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            return model_metadata(self.manager, request)
        except RequestError as error:
            context.abort(error.code, grpc_message(error))

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
            context.abort(error.code, grpc_message(error))

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
    executor: concurrent.futures.ThreadPoolExecutor | None = None  # the gRPC handlers' threads

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def rest_url(self) -> str | None:
        return f"http://localhost:{self.rest.port}" if self.rest else None

    def stop(self, grace: float = 1.0) -> None:
        """Drains requests in flight (for up to `grace` seconds) and returns once no thread
        the server started is left running."""
        self.manager.stop()
        if self.rest:
            self.rest.stop()
        self.server.stop(grace).wait()
        if self.batcher:  # answers what is still queued once the grace has run out
            self.batcher.stop()
        if self.executor:  # grpc.Server.stop leaves the executor it was given running
            self.executor.shutdown(wait=True)


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
    index: str = f.BRUTE_FORCE_INDEX,
) -> RunningServer:
    """Starts serving; port 0 picks a free port. Fails if no complete version exists.
    Every signature is batched as TF Serving's --enable_batching does, with `batching`
    (serving/batching.config when None). With `rest_port` (0: a free one), TF Serving's
    REST API is served too, over the same versions and batcher. `index` "scann" answers
    known users' serving_default and recommend from a ScaNN index (serving/scann_index.py)."""
    batching = batching or BatchingConfig.read()
    manager = ModelManager(
        model_name, model_base_path, poll_seconds, session_config(intra_op_threads=intra_op_threads), index, batching
    )
    manager.start()
    if manager.current is None:
        manager.stop()
        broken = "".join(f"; version {v} does not load: {e.message}" for v, e in sorted(manager.failed.items()))
        raise FileNotFoundError(
            f"{model_base_path}: no loadable model version (a numbered folder with saved_model.pb){broken}"
        )
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    server = grpc.server(
        executor,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    batcher = Batcher(run_batch, batching)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, batcher), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    rest = None
    if rest_port is not None:
        from animerec.serving.rest import RestApi, RestServer

        rest = RestServer(RestApi(manager, batcher), host, rest_port)
    return RunningServer(server, manager, bound, batcher, rest, executor)


def serve_forever(
    model_base_path: str,
    port: int,
    model_name: str = DEFAULT_MODEL_NAME,
    host: str = "127.0.0.1",
    rest_port: int | None = None,
    intra_op_threads: int = INTRA_OP_THREADS,
    index: str = f.BRUTE_FORCE_INDEX,
) -> None:
    """Serves until Ctrl-C or SIGTERM (as Kubernetes stops a pod), then drains requests in flight."""
    running = start_server(
        model_base_path,
        port=port,
        model_name=model_name,
        host=host,
        rest_port=rest_port,
        intra_op_threads=intra_op_threads,
        index=index,
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
