"""The TF Serving stand-in and the client over loopback gRPC: happy path, bad requests, version switch."""

import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from animerec import features as f
from animerec.data import files
from animerec.serving import client, predict, server, versions
from animerec.serving.batching import BatchingConfig
from tests.model_fixtures import ANIME_IDS, export_small_model, small_training_data

MAX_BATCH = 8
# As serving/batching.config, with a smaller batch so that the limit is cheap to test.
BATCHING = BatchingConfig(max_batch_size=MAX_BATCH, num_batch_threads=2, pad_variable_length_inputs=True)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    return export_small_model(str(tmp_path_factory.mktemp("exported")))


def push(exported: str, serving_dir: str, version: int) -> None:
    """Copies like Pusher: everything, then saved_model.pb last."""
    target = os.path.join(serving_dir, str(version))
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copy(os.path.join(exported, "saved_model.pb"), os.path.join(target, "saved_model.pb"))


@pytest.fixture(scope="module")
def running_rest(exported_model, tmp_path_factory):
    """One server (gRPC and REST) for the tests that only send requests."""
    serving_dir = str(tmp_path_factory.mktemp("shared") / "serving")
    push(exported_model, serving_dir, 1)
    srv = server.start_server(serving_dir, port=0, poll_seconds=0.2, batching=BATCHING, rest_port=0)
    yield srv
    srv.stop()


@pytest.fixture()
def running(exported_model, tmp_path):
    """A server of its own, for the tests that change its serving dir."""
    serving_dir = str(tmp_path / "serving")
    os.makedirs(serving_dir)
    push(exported_model, serving_dir, 1)
    srv = server.start_server(serving_dir, port=0, poll_seconds=0.2, batching=BATCHING)
    yield srv, serving_dir
    srv.stop()


def _stub(srv):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(srv.target))


def _request(signature="serving_default", name="animerec", **inputs):
    return client.make_request(signature, inputs, name)


def _filtered(request, *aliases):
    request.output_filter.extend(aliases)
    return request


def _declared(request, alias: str, shape: list[int]):
    """`request` whose input `alias` declares `shape` while holding one value: 56 bytes on the wire."""
    proto = request.inputs[alias]
    del proto.tensor_shape.dim[:]
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return request


def test_client_gets_recommendations(running_rest):
    srv = running_rest
    recommender = client.RecommenderClient(srv.target)
    results = recommender.recommend([100, 999])
    assert [r.user_id for r in results] == [100, 999]
    # User 100 has seen 10, 20 and 30 (model_fixtures): exactly the other three come back,
    # each with its own title and genres.
    assert sorted(i.anime_id for i in results[0].items) == [40, 50, 60]
    catalog = small_training_data().catalog
    genres = {int(a): g.decode() for a, g in zip(catalog.anime_id, catalog.genres)}
    assert all(i.title == f"Title {i.anime_id}" and i.genres == genres[i.anime_id] for i in results[0].items)
    assert not results[0].is_fallback and results[1].is_fallback
    scores = [i.score for i in results[0].items]
    assert scores == sorted(scores, reverse=True)
    limited = recommender.recommend([101], k=2, exclude_anime_ids=[[10]])
    # User 101 has seen 20, 30 and 40 and excludes 10: 50 and 60 are all that is left.
    assert sorted(i.anime_id for i in limited[0].items) == [50, 60]
    text = client.format_recommendations(results[0])
    assert "Top" in text and results[0].items[0].title in text
    recommender.close()


def test_metadata_and_status(running_rest):
    srv = running_rest
    channel = grpc.insecure_channel(srv.target)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "animerec"
    request.metadata_field.append("signature_def")
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", f.RECOMMEND_SIGNATURE, f.TF_EXAMPLE_SIGNATURE} <= set(signatures.signature_def)
    # Every signature of the MetaGraph, as get_model_metadata_impl.cc copies them.
    assert "__saved_model_init_op" in signatures.signature_def
    assert set(signatures.signature_def["serving_default"].inputs) == {f.USER_ID}
    request.ClearField("metadata_field")
    with pytest.raises(grpc.RpcError) as error:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "animerec"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
    assert status.model_version_status[0].version == 1
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_requests_without_a_model_spec_or_name_are_refused_as_tf_serving_refuses_them(running_rest):
    channel = grpc.insecure_channel(running_rest.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)

    def refused(call, request) -> tuple:
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        return error.value.code(), error.value.details()

    no_spec = _request(user_id=np.array([100], np.int64))
    no_spec.ClearField("model_spec")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert refused(predictions.Predict, no_spec) == (invalid, "Missing ModelSpec")
    no_name = _request(name="", user_id=np.array([100], np.int64))
    assert refused(predictions.Predict, no_name) == (invalid, "ModelSpec has no name specified.")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert refused(predictions.GetModelMetadata, metadata) == (invalid, "Missing ModelSpec")
    # The first unsupported field, in the request's order (get_model_metadata_impl.cc).
    metadata.model_spec.name = "animerec"
    metadata.metadata_field[:] = ["signature_def", "zeta", "alpha"]
    assert refused(predictions.GetModelMetadata, metadata) == (invalid, "Metadata field zeta is not supported")
    assert refused(models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        invalid,
        "Missing ModelSpec",
    )
    # A version of an unknown model is looked up as (model, version) (get_model_status_impl.cc).
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "other"
    status.model_spec.version.value = 3
    assert refused(models.GetModelStatus, status) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 3 of model other",
    )


def test_long_refusals_are_cut_as_tf_servings_grpc_status_does(running_rest):
    """grpc_status_util.cc, ToGRPCStatus: a message over 1,024 characters is cut there."""
    name = "s" * 2000
    with pytest.raises(grpc.RpcError) as error:
        _stub(running_rest).Predict(_request(name, user_id=np.array([100], np.int64)), timeout=10)
    expected = f'Serving signature key "{name}" not found.'
    assert error.value.details() == expected[:1024] + "...TRUNCATED"


def test_a_call_fetching_some_outputs_is_not_batched(running_rest):
    """batching_session.cc: a Run() whose outputs are not a signature's matches no batching
    queue and runs on its own ("Bypassing batcher"), so the batching session's checks do not
    apply to it."""
    stub = _stub(running_rest)
    running_rest.batcher.batch_sizes.clear()  # the batcher's log of calls, newest last
    before = 0
    response = stub.Predict(_filtered(_request(user_id=np.array([100], np.int64)), f.OUTPUT_ANIME_IDS), timeout=10)
    assert set(response.outputs) == {f.OUTPUT_ANIME_IDS}
    assert len(running_rest.batcher.batch_sizes) == before, "the filtered call went through the batcher"
    stub.Predict(_request(user_id=np.array([100], np.int64)), timeout=10)
    assert len(running_rest.batcher.batch_sizes) == before + 1, "a whole-signature call is batched"


BAD_REQUESTS = {
    "missing input": (
        _request(f.RECOMMEND_SIGNATURE, user_id=np.array([100], np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 1!=3 len({user_id}) != len({exclude_anime_ids,k,user_id}). "
        "Sent extra: {}. Missing but required: {exclude_anime_ids,k}.",
    ),
    "unknown input alias": (
        _request(user=np.array([100], np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Signature input alias: user_id(feed name: serving_default_user_id:0) not found in request and no "
        "default value provided. Inputs expected to be in the request {user}, or default input alias set: ",
    ),
    "wrong dtype": (_request(user_id=np.array(["100"])), grpc.StatusCode.INVALID_ARGUMENT, "to be int64 but string"),
    "scalar k": (
        _request(
            f.RECOMMEND_SIGNATURE,
            user_id=np.array([100], np.int64),
            k=np.int32(3),
            exclude_anime_ids=np.full((1, 1), -1, np.int64),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Batching Run() input tensors must have at least one dimension",
    ),
    "k rows differ from users": (
        _request(
            f.RECOMMEND_SIGNATURE,
            user_id=np.array([100], np.int64),
            k=np.array([3, 3], np.int32),
            exclude_anime_ids=np.full((1, 1), -1, np.int64),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must have equal 0th-dimension size",
    ),
    "declared shape over the limit": (
        _declared(_request(user_id=np.array([100], np.int64)), f.USER_ID, [250_000_000]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "over the limit",
    ),
    "declared shape of 10^12": (
        _declared(_request(user_id=np.array([100], np.int64)), f.USER_ID, [10**12]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "over the limit",
    ),
    "non-UTF-8 example": (
        _request(f.TF_EXAMPLE_SIGNATURE, examples=np.array([b"\xff\xfe\x00garbage"], object)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "an input could not be parsed",
    ),
    "empty batch": (_request(user_id=np.zeros(0, np.int64)), grpc.StatusCode.INVALID_ARGUMENT, "batch is empty"),
    "oversized batch": (
        _request(user_id=np.arange(MAX_BATCH + 1, dtype=np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}",
    ),
    "unknown model": (
        _request(name="other", user_id=np.array([100], np.int64)),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found",
    ),
    "unknown signature": (
        _request("nope", user_id=np.array([100], np.int64)),
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    ),
    "unknown output alias": (
        _filtered(_request(user_id=np.array([100], np.int64)), "nope"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: nope Outputs expected to be in the set {",
    ),
    "output alias twice": (
        _filtered(_request(user_id=np.array([100], np.int64)), f.OUTPUT_SCORES, f.OUTPUT_SCORES),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"duplicate output tensor alias: {f.OUTPUT_SCORES}",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_tf_serving_status_codes(running_rest, case):
    srv = running_rest
    request, code, message = BAD_REQUESTS[case]
    stub = _stub(srv)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == code
    assert message in error.value.details()
    # The server is still serving.
    assert stub.Predict(_request(user_id=np.array([100], np.int64)), timeout=10).outputs[f.OUTPUT_ANIME_IDS]


def test_unknown_version_is_not_found(running_rest):
    srv = running_rest
    request = _request(user_id=np.array([100], np.int64))
    request.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as error:
        _stub(srv).Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Specific(animerec, 7)" in error.value.details()


def test_version_switch_while_requests_run(running, exported_model):
    srv, serving_dir = running
    stub = _stub(srv)
    versions, errors = [], []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                response = stub.Predict(_request(user_id=np.array([100, 101], np.int64)), timeout=10)
                versions.append(response.model_spec.version.value)
            except grpc.RpcError as error:
                errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # A half-copied version (no saved_model.pb yet) is never picked up.
    os.makedirs(os.path.join(serving_dir, "3", "variables"))
    push(exported_model, serving_dir, 2)
    deadline = time.time() + 30
    while time.time() < deadline and (not versions or versions[-1] != 2):
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert versions[0] == 1 and versions[-1] == 2
    # Requests that resolved version 1 before the swap may finish after it; the tail is all version 2.
    assert set(versions[-10:]) == {2}
    assert srv.manager.current.version == 2


def test_concurrent_requests_each_get_their_own_answer(running_rest, exported_model):
    srv = running_rest
    direct = tf.saved_model.load(exported_model).signatures["serving_default"]
    users = [100, 101, 102, 999] * 10
    expected = {
        u: direct(user_id=tf.constant([u], tf.int64))[f.OUTPUT_ANIME_IDS].numpy()[0].tolist() for u in set(users)
    }
    stub = _stub(srv)
    answers, errors = {}, []

    def ask(i, user):
        try:
            response = stub.Predict(_request(user_id=np.array([user], np.int64)), timeout=10)
            answers[i] = (user, tf.make_ndarray(response.outputs[f.OUTPUT_ANIME_IDS])[0].tolist())
        except grpc.RpcError as error:
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(i, u)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(answers) == len(users)
    for user, ids in answers.values():
        assert ids == expected[user], f"user {user} got another request's answer"


@pytest.mark.parametrize(
    "value",
    [
        np.array([[1, 2], [3, 4]], np.int64),
        np.array([0.5, -np.inf], np.float32),
        np.array([True, False]),
        np.array([[b"Naruto", b""]]),
        np.zeros((2, 0), np.int64),
        np.array([-3, 7], np.int32),
        np.array([0.1, 2.5], np.float64),
        np.array([0, 255], np.uint8),
        np.array([2**40, 1], np.uint64),
        np.array([0.5, -2.0], np.float16),
    ],
    ids=["int64", "float32", "bool", "string", "empty", "int32", "float64", "uint8", "uint64", "float16"],
)
def test_output_tensor_protos_match_tensorflows(value):
    """A response's outputs in their typed fields, as TF Serving writes them by default
    (Tensor::AsProtoField: a client reading float_val gets the scores); a request's inputs
    in tensor_content, as tf.make_tensor_proto writes them."""
    reference = tf.make_tensor_proto(value)
    fields = {
        np.dtype(np.int64): "int64_val",
        np.dtype(np.float32): "float_val",
        np.dtype(bool): "bool_val",
        np.dtype(np.int32): "int_val",
        np.dtype(np.float64): "double_val",
        np.dtype(np.uint8): "int_val",
        np.dtype(np.uint64): "uint64_val",
        np.dtype(np.float16): "half_val",  # the bits, as uint16
    }
    for content in (False, True):
        proto = tensor_pb2.TensorProto()
        predict.fill_tensor_proto(proto, value, content=content)
        assert (proto.dtype, proto.tensor_shape) == (reference.dtype, reference.tensor_shape)
        np.testing.assert_array_equal(tf.make_ndarray(proto), tf.make_ndarray(reference))
        if value.dtype in fields and value.size:
            expected = (value.view(np.uint16) if value.dtype == np.float16 else value).reshape(-1).tolist()
            assert bool(proto.tensor_content) == content
            assert list(getattr(proto, fields[value.dtype])) == ([] if content else expected)


def _input_proto(dtype, dims, field=None, values=(), content=None):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        proto.tensor_shape.dim.add().size = size
    if field:
        getattr(proto, field).extend(values)
    if content is not None:
        proto.tensor_content = content
    return proto


@pytest.mark.parametrize(
    "proto",
    [
        tf.make_tensor_proto(np.array([7, 8], np.int64)),  # one value an element, int64_val
        tf.make_tensor_proto(np.array([[1, -1, 5]], np.int64)),
        tf.make_tensor_proto(np.arange(40, dtype=np.int64).reshape(4, 10)),  # tensor_content
        tf.make_tensor_proto(np.array([3, 1], np.int32)),
        tf.make_tensor_proto(np.array([0.5, -2.0], np.float32)),
        tf.make_tensor_proto(np.int64(5)),  # a scalar
        _input_proto(types_pb2.DT_INT64, [3], "int64_val", [4]),  # one value, repeated
        _input_proto(types_pb2.DT_INT64, [2, 2], "int64_val", [1, 2]),  # too few: the last repeated
        _input_proto(types_pb2.DT_INT64, [2]),  # no values: zeros
        _input_proto(types_pb2.DT_INT64, [0]),  # empty
        _input_proto(types_pb2.DT_INT32, [2], "int64_val", [1, 2]),  # the wrong field: zeros
        _input_proto(types_pb2.DT_STRING, [2], "string_val", [b"a", b"b"]),
        _input_proto(types_pb2.DT_INT64, [3], content=np.arange(2, dtype=np.int64).tobytes()),  # short
        _input_proto(types_pb2.DT_INT64, [1], "int64_val", [1, 2, 3]),  # too many values
    ],
)
def test_request_inputs_read_as_tensorflow_reads_them(proto):
    dims = [d.size for d in proto.tensor_shape.dim]
    try:
        reference = tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        with pytest.raises(type(error)):
            predict.to_ndarray(proto, dims)
        return
    value = predict.to_ndarray(proto, dims)
    assert value.dtype == reference.dtype and value.shape == reference.shape
    np.testing.assert_array_equal(value, reference)
    assert value.flags.writeable  # a copy, not a view of the request's bytes


def test_session_run_matches_the_eager_signature(exported_model, tmp_path):
    """The server runs SignatureDefs by tensor name in a Session, as TF Serving does."""
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    loaded = versions.load_version(serving_dir, 1)
    eager = tf.saved_model.load(exported_model).signatures[f.RECOMMEND_SIGNATURE]
    inputs = {
        f.SERVING_USER_ID: np.array([100, 101, 999], np.int64),
        f.SERVING_K: np.array([3, 1, 2], np.int32),
        f.SERVING_EXCLUDE: np.array([[ANIME_IDS[0], -1], [ANIME_IDS[1], ANIME_IDS[2]], [-1, -1]], np.int64),
    }
    by_session = loaded.run(f.RECOMMEND_SIGNATURE, inputs)
    by_eager = eager(**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(by_session) == set(by_eager)
    for key, value in by_eager.items():
        np.testing.assert_array_equal(by_session[key], value.numpy())


def _example(user: int) -> bytes:
    example = tf.train.Example()
    example.features.feature[f.USER_ID].int64_list.value.append(user)
    return example.SerializeToString()


# Requests of every signature, of several batch sizes, k and exclusion widths (the
# client's layout: a leading -1 column, so TF Serving's padding value is -1).
def _ranked(signature: str, users: list[int], ks: list[int], exclude: list[list[int]], key=f.SERVING_USER_ID):
    """A request of a signature that takes k and exclusions: users (or liked lists, with key)."""
    return (
        signature,
        {
            key: np.array(users, np.int64),
            f.SERVING_K: np.array(ks, np.int32),
            f.SERVING_EXCLUDE: np.array(exclude, np.int64),
        },
    )


MIXED_REQUESTS = [
    ("serving_default", {f.SERVING_USER_ID: np.array([100], np.int64)}),
    ("serving_default", {f.SERVING_USER_ID: np.array([101, 999], np.int64)}),
    (f.TF_EXAMPLE_SIGNATURE, {"examples": np.array([_example(102), _example(100)], object)}),
    (f.TF_EXAMPLE_SIGNATURE, {"examples": np.array([_example(999)], object)}),
    _ranked(f.RECOMMEND_SIGNATURE, [100], [1], [[-1]]),
    _ranked(f.RECOMMEND_SIGNATURE, [101, 102], [4, 2], [[-1, ANIME_IDS[3], ANIME_IDS[4]], [-1, ANIME_IDS[5], -1]]),
    _ranked(f.RECOMMEND_SIGNATURE, [999], [3], [[-1, ANIME_IDS[0]]]),
    _ranked(f.EVAL_SIGNATURE, [102], [5], [[-1]]),
    _ranked(f.EVAL_SIGNATURE, [100, 101], [2, 6], [[-1, ANIME_IDS[5]], [-1, -1]]),
    _ranked(f.FROM_LIKED_SIGNATURE, [[-1, 20, 30]], [3], [[-1]], key=f.SERVING_LIKED),
    _ranked(f.FROM_LIKED_SIGNATURE, [[-1, 10], [-1, -1]], [2, 4], [[-1, 40], [-1, -1]], key=f.SERVING_LIKED),
]


def test_batched_mixed_requests_equal_their_answers_alone(exported_model, tmp_path):
    """Concurrent requests merged as TF Serving's batching session merges them (padded,
    concatenated, split) each get the answer the model gives them alone."""
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    # A long timeout and one batch thread: the concurrent requests of a signature share a batch.
    config = BatchingConfig(
        max_batch_size=MAX_BATCH, batch_timeout_micros=300_000, num_batch_threads=1, pad_variable_length_inputs=True
    )
    # Enough RPC threads for every request to be in flight at once.
    srv = server.start_server(serving_dir, port=0, batching=config, workers=len(MIXED_REQUESTS) + 4)
    signatures = tf.saved_model.load(exported_model).signatures
    expected = [signatures[name](**{k: tf.constant(v) for k, v in inputs.items()}) for name, inputs in MIXED_REQUESTS]
    stub, answers, errors = _stub(srv), {}, []

    def ask(i):
        name, inputs = MIXED_REQUESTS[i]
        try:
            answers[i] = stub.Predict(_request(name, **inputs), timeout=30)
        except grpc.RpcError as error:
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(MIXED_REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    srv.stop()
    assert not errors, errors[:3]
    sizes = list(srv.batcher.batch_sizes)
    assert sum(sizes) == len(MIXED_REQUESTS) and max(sizes) >= 2, f"no merged batch: {sizes}"
    for i, alone in enumerate(expected):
        for key, value in alone.items():
            got = tf.make_ndarray(answers[i].outputs[key])
            assert got.shape == value.shape, (MIXED_REQUESTS[i][0], key)
            if key == f.OUTPUT_SCORES:
                np.testing.assert_allclose(got, value.numpy(), rtol=1e-5)
            else:
                np.testing.assert_array_equal(got, value.numpy(), err_msg=f"{MIXED_REQUESTS[i][0]} {key}")


def test_batch_pads_with_each_requests_first_element():
    from animerec.serving import batching

    merged = batching.merge_inputs(
        [{"x": np.array([[7]], np.int64)}, {"x": np.array([[-1, 3, 4], [5, 6, 8]], np.int64)}], pad=True
    )
    assert merged["x"].tolist() == [[7, 7, 7], [-1, 3, 4], [5, 6, 8]]
    with pytest.raises(batching.RequestError, match="empty tensor"):
        batching.merge_inputs([{"x": np.zeros((1, 0), np.int64)}, {"x": np.ones((1, 2), np.int64)}], pad=True)
    with pytest.raises(batching.RequestError, match="padding is turned off"):
        batching.merge_inputs([{"x": np.ones((1, 1))}, {"x": np.ones((1, 2))}], pad=False)
    parts = batching.split_outputs({"y": np.arange(6).reshape(3, 2)}, [1, 2])
    assert [p["y"].tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5]]]
    with pytest.raises(batching.RequestError, match="0 dimensions"):
        batching.split_outputs({"y": np.float32(1.0)}, [1])


def test_shipped_batching_config_is_read():
    config = BatchingConfig.read()
    assert config.pad_variable_length_inputs, "exclusion lists have variable widths"
    assert 0 < config.max_batch_size <= 1000 and config.num_batch_threads > 0


def test_unknown_batching_parameter_names_file_and_line(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 }\nmax_batch_sise { value: 9 }\n")
    with pytest.raises(ValueError, match=r"batching.config, line 2: 'max_batch_sise"):
        BatchingConfig.read(str(path))


def _status(srv) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "animerec"
    response = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(srv.target)).GetModelStatus(request)
    return {s.version: (s.state, s.status.error_message, s.status.error_code) for s in response.model_version_status}


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_broken_versions_are_skipped_and_the_poller_survives(exported_model, tmp_path):
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    # Version 2: a copy in progress with a zero-byte saved_model.pb; version 3: corrupt bytes.
    push(exported_model, serving_dir, 2)
    open(os.path.join(serving_dir, "2", "saved_model.pb"), "wb").close()
    push(exported_model, serving_dir, 3)
    with open(os.path.join(serving_dir, "3", "saved_model.pb"), "wb") as fh:
        fh.write(b"\x08\x01garbage" * 10)
    srv = server.start_server(serving_dir, port=0, poll_seconds=0.1, batching=BATCHING)
    try:
        assert srv.manager.current.version == 1, "the newest version that loads is served"
        status = _status(srv)
        assert status[1][0] == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert status[2][0] == status[3][0] == get_model_status_pb2.ModelVersionStatus.END
        assert status[2][1] and status[3][1], "a version that does not load says why"
        # With TensorFlow's C++ loader's codes (reader.cc), not Python's loader's exceptions.
        assert status[2][2] == grpc.StatusCode.NOT_FOUND.value[0]
        assert status[2][1].startswith("Could not find meta graph def matching supplied tags: { serve }")
        assert status[3][2] == grpc.StatusCode.DATA_LOSS.value[0]
        assert status[3][1].endswith("/3/saved_model.pb as binary proto")
        # Its whole error, as TF Serving reports a version's load error; the log has its first line.
        assert status[3][1] == srv.manager.failed[3].text and "\n" not in srv.manager.failed[3].message
        # The poller is alive: a good version 4 is picked up.
        push(exported_model, serving_dir, 4)
        assert _wait_for(lambda: srv.manager.current.version == 4)
        # Its folder deleted, the newest remaining loadable version (1) takes over.
        shutil.rmtree(os.path.join(serving_dir, "4"))
        assert _wait_for(lambda: srv.manager.current.version == 1)
        response = _stub(srv).Predict(_request(user_id=np.array([100], np.int64)), timeout=10)
        assert response.model_spec.version.value == 1
        # Version 2's copy completes (its saved_model.pb rewritten): it is tried again and
        # served; version 3, unchanged, is not.
        shutil.copy(os.path.join(exported_model, "saved_model.pb"), os.path.join(serving_dir, "2", "saved_model.pb"))
        assert _wait_for(lambda: srv.manager.current.version == 2), "a completed copy was not retried"
        assert _status(srv)[3][0] == get_model_status_pb2.ModelVersionStatus.END
    finally:
        srv.stop()


def _push_remote(exported: str, serving_dir: str, version: int) -> None:
    """push(), through TensorFlow's filesystems (Pusher's copy to gs:// in a Kubeflow run)."""
    target = os.path.join(serving_dir, str(version))
    paths = [os.path.relpath(os.path.join(d, n), exported) for d, _, names in os.walk(exported) for n in names]
    for path in sorted(paths, key=lambda p: p == "saved_model.pb"):  # saved_model.pb last
        files.makedirs(os.path.dirname(os.path.join(target, path)))
        files.write_bytes(os.path.join(target, path), files.read_bytes(os.path.join(exported, path)))


def test_versions_are_served_from_a_path_with_a_scheme(exported_model, running_rest, tmp_path):
    """A serving folder on TensorFlow's in-memory filesystem, as a Kubeflow Pusher's gs://
    one is: the versions are found, loaded and polled through TensorFlow's filesystems."""
    serving_dir = f"ram://serving_{tmp_path.name}"
    _push_remote(exported_model, serving_dir, 1)
    srv = server.start_server(serving_dir, port=0, poll_seconds=0.2, batching=BATCHING)
    try:
        request = _request(user_id=np.array([100, 102], np.int64))
        remote = _stub(srv).Predict(request, timeout=30)
        local = _stub(running_rest).Predict(request, timeout=30)
        assert remote.model_spec.version.value == 1
        assert remote.outputs[f.OUTPUT_ANIME_IDS] == local.outputs[f.OUTPUT_ANIME_IDS]
        _push_remote(exported_model, serving_dir, 2)
        picked_up = _wait_for(lambda: _stub(srv).Predict(request, timeout=30).model_spec.version.value == 2)
        assert picked_up, "version 2 was not loaded from the serving folder"
    finally:
        srv.stop()  # (ram:// cannot delete a tree of folders; the small model stays in memory)


def test_no_loadable_version_is_one_clear_error(exported_model, tmp_path):
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    # As TF Serving's loader, a version without variables loads with none restored; its
    # warmup's first call is what fails.
    shutil.rmtree(os.path.join(serving_dir, "1", "variables"))
    with pytest.raises(FileNotFoundError, match="version 1 does not load: Could not find variable"):
        server.start_server(serving_dir, port=0, batching=BATCHING)


def test_exported_model_carries_warmup_requests_for_every_signature(exported_model, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(exported_model, f.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    signatures = set(tf.saved_model.load(exported_model).signatures)
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == signatures
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    assert versions.warm_up(versions.load_version(serving_dir, 1)) == len(signatures)
    warmup = os.path.join(serving_dir, "1", f.WARMUP_FILE)

    def load_error(records: list | None = None) -> tuple:
        """(code, message) of loading version 1 with these warmup records (None: the file
        as it is), or (None, the records read)."""
        if records is not None:
            with tf.io.TFRecordWriter(warmup) as writer:
                for record in records:
                    writer.write(record)
        try:
            return None, versions.warm_up(versions.load_version(serving_dir, 1), BATCHING)
        except Exception as error:  # noqa: BLE001 - what the manager records of any
            failure = versions.LoadFailure.of(error, ())
            return failure.code, failure.text

    # As TF Serving's RunSavedModelWarmup: a failing request fails the load with its own error.
    bad = prediction_log_pb2.PredictionLog()
    bad.CopyFrom(logs[0])
    bad.predict_log.request.model_spec.signature_name = "no_such_signature"
    assert load_error([logs[0].SerializeToString(), bad.SerializeToString()]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "no_such_signature" not found.',
    )
    # At most 1,000 records (a record with no log is read and skipped, as is a
    # PredictStreamedLog, which only the TFRT runtime replays); one more fails the load,
    # counted after it has run.
    streamed = prediction_log_pb2.PredictionLog()
    streamed.predict_streamed_log.SetInParent()
    assert load_error([b""] * 999 + [streamed.SerializeToString()]) == (None, 1000)
    assert load_error([b""] * 1001) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Number of warmup records exceeds the maximum (1000) at {warmup}",
    )
    assert load_error([b""] * 1000 + [bad.SerializeToString()])[0] == grpc.StatusCode.FAILED_PRECONDITION
    # The requests go through the batching session, as TF Serving replays them on the
    # session it serves with.
    scalar = prediction_log_pb2.PredictionLog()
    scalar.predict_log.request.CopyFrom(_request(user_id=np.int64(100)))
    assert load_error([scalar.SerializeToString()]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Batching Run() input tensors must have at least one dimension",
    )
    # ... unless it fetches only some outputs, which the batching session runs on its own.
    scalar.predict_log.request.output_filter.append(f.OUTPUT_ANIME_IDS)
    code, message = load_error([scalar.SerializeToString()])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Batching Run()" not in message
    too_many = prediction_log_pb2.PredictionLog()
    users = np.full(MAX_BATCH + 1, 100, np.int64)
    too_many.predict_log.request.CopyFrom(_request(user_id=users))
    assert load_error([too_many.SerializeToString()]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}",
    )
    session_run = prediction_log_pb2.PredictionLog()
    session_run.session_run_log.SetInParent()
    assert load_error([session_run.SerializeToString()]) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported log_type for warmup: 5",
    )
    code, message = load_error([b"\x08\x01garbage"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("Failed to parse warmup record: ")
    with open(warmup, "wb") as fh:
        fh.write(b"not TFRecords at all, but long enough to hold a header")
    # The record reader's own error (tensorflow/core/lib/io/record_reader.cc), as TF Serving's.
    assert load_error() == (
        grpc.StatusCode.DATA_LOSS,
        "corrupted record at 0 (Is this even a TFRecord file?). Please verify your warmup data is in TFRecord format.",
    )


def _http(srv, path: str, body=None, method: str | None = None) -> tuple[int, dict | None]:
    """(status, JSON body, None when empty) of a GET, or of a POST when `body` is given
    (bytes sent as they are), or of `method`."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(srv.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    return status, json.loads(text) if text else None


def test_rest_status_and_metadata(running_rest):
    status, body = _http(running_rest, "/v1/models/animerec")
    assert status == 200
    assert body["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    assert _http(running_rest, "/v1/models/animerec/versions/1")[0] == 200
    status, body = _http(running_rest, "/v1/models/animerec/versions/7")
    assert status == 404 and "Could not find version 7" in body["error"]
    status, body = _http(running_rest, "/v1/models/animerec/metadata")
    assert status == 200, body
    # http_rest_api_util.cc's shape: the SignatureDefMap unpacked (no "@type"), every
    # field printed (the model spec's empty signature_name too).
    assert body["model_spec"] == {"name": "animerec", "version": "1", "signature_name": ""}
    assert set(body["metadata"]) == {"signature_def"} and set(body["metadata"]["signature_def"]) == {"signature_def"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {f.DEFAULT_SIGNATURE, f.RECOMMEND_SIGNATURE, f.FROM_LIKED_SIGNATURE} <= set(signatures)
    assert _http(running_rest, "/v1/models/other/metadata")[0] == 404
    # No version label is configured: TF Serving's answer to one it does not know, before
    # the model is looked up (ServerCore::ServableRequestFromModelSpec).
    for path, body in (
        ("/v1/models/animerec/labels/stable/metadata", None),
        ("/v1/models/animerec/labels/stable:predict", {"instances": [100]}),
        ("/v1/models/other/labels/stable:predict", {"instances": [100]}),
    ):
        status, answer = _http(running_rest, path, body)
        assert status == 400 and answer["error"] == "Unrecognized servable version label: stable"
    # Status reads only a version (GetModelStatusImpl): with a label, every version's status.
    assert _http(running_rest, "/v1/models/animerec/labels/stable") == _http(running_rest, "/v1/models/animerec")
    # TF Serving's paths are matched without regard to case.
    assert _http(running_rest, "/V1/Models/animerec") == _http(running_rest, "/v1/models/animerec")
    # Other methods are malformed requests; a version beyond int64 fails before any body
    # is written (http_rest_api_util.cc, ParseModelInfo).
    assert _http(running_rest, "/v1/models/animerec", b"{}", method="PUT") == (
        400,
        {"error": "Malformed request: PUT /v1/models/animerec"},
    )
    assert _http(running_rest, f"/v1/models/animerec/versions/{2**63}") == (400, None)


def test_rest_predict_formats_match_grpc(running_rest):
    import base64

    stub = _stub(running_rest)
    by_grpc = stub.Predict(_request(user_id=np.array([100, 999], np.int64)), timeout=10)
    grpc_ids = tf.make_ndarray(by_grpc.outputs[f.OUTPUT_ANIME_IDS]).tolist()
    status, body = _http(running_rest, "/v1/models/animerec:predict", {"instances": [100, 999]})
    assert status == 200
    assert [row[f.OUTPUT_ANIME_IDS] for row in body["predictions"]] == grpc_ids
    assert [row[f.OUTPUT_IS_FALLBACK] for row in body["predictions"]] == [False, True]
    assert isinstance(body["predictions"][0][f.OUTPUT_TITLES][0], str)
    # Columnar, a named signature, a version in the path, and -inf written as -Infinity.
    inputs = {f.SERVING_USER_ID: [101], f.SERVING_K: [2], f.SERVING_EXCLUDE: [[-1, 10]]}
    status, body = _http(
        running_rest, "/v1/models/animerec/versions/1:predict", {"signature_name": "recommend", "inputs": inputs}
    )
    assert status == 200
    by_grpc = stub.Predict(
        _request(
            f.RECOMMEND_SIGNATURE,
            **{k: np.array(v, np.int32 if k == f.SERVING_K else np.int64) for k, v in inputs.items()},
        ),
        timeout=10,
    )
    assert body["outputs"][f.OUTPUT_ANIME_IDS] == tf.make_ndarray(by_grpc.outputs[f.OUTPUT_ANIME_IDS]).tolist()
    assert body["outputs"][f.OUTPUT_SCORES][0][-1] == float("-inf")
    # float32 scores as WriteDecimal writes them, never float64's expansion of the float32
    # (a dozen characters at most; the cases are in the test below).
    scores = tf.make_ndarray(by_grpc.outputs[f.OUTPUT_SCORES])[0]
    written = body["outputs"][f.OUTPUT_SCORES][0][:2]
    assert all(np.float32(v) == s and len(repr(v)) <= 12 for v, s in zip(written, scores[:2])), written
    # Keys that are not the signature's inputs are ignored (FillTensorMapFromInputsMap).
    status, extra = _http(
        running_rest,
        "/v1/models/animerec:predict",
        {"signature_name": "recommend", "inputs": {**inputs, "trace_id": "abc"}},
    )
    assert status == 200 and extra["outputs"][f.OUTPUT_ANIME_IDS] == body["outputs"][f.OUTPUT_ANIME_IDS]
    # Rows of named inputs.
    status, rows = _http(
        running_rest,
        "/v1/models/animerec:predict",
        {"signature_name": "recommend", "instances": [{"user_id": 101, "k": 2, "exclude_anime_ids": [-1, 10]}]},
    )
    assert status == 200 and rows["predictions"][0][f.OUTPUT_ANIME_IDS] == body["outputs"][f.OUTPUT_ANIME_IDS][0]
    # Binary strings as {"b64": ...}: serialized tf.Examples.
    status, body = _http(
        running_rest,
        "/v1/models/animerec:predict",
        {"signature_name": f.TF_EXAMPLE_SIGNATURE, "instances": [{"b64": base64.b64encode(_example(100)).decode()}]},
    )
    assert status == 200 and body["predictions"][0][f.OUTPUT_ANIME_IDS] == grpc_ids[0]
    # Padding is optional and whitespace skipped, as absl::Base64Unescape takes them.
    unpadded = base64.b64encode(_example(100)).decode().rstrip("=")
    assert unpadded != base64.b64encode(_example(100)).decode(), "the example must need padding"
    for text in (unpadded, unpadded[:4] + "\n" + unpadded[4:] + " "):
        status, same = _http(
            running_rest,
            "/v1/models/animerec:predict",
            {"signature_name": f.TF_EXAMPLE_SIGNATURE, "instances": [{"b64": text}]},
        )
        assert status == 200 and same["predictions"] == body["predictions"]


def test_rest_writes_float32_as_tf_servings_write_decimal():
    """json_tensor.cc's WriteDecimal: absl::StrCat's six significant digits when they read
    back as the same float32, else %.9g; the JSON number is that decimal."""
    from animerec.serving import rest

    values = np.array([0.2, 0.1234567, 123456789, 1e6, 0.6011859, -np.inf, np.nan], np.float32)
    written = rest._json_value(values, "scores")
    assert written[:5] == [0.2, 0.123456702, 123456792.0, 1000000.0, 0.601185918]
    assert written[5] == float("-inf") and np.isnan(written[6])


REST_BAD_REQUESTS = {
    "not JSON": ("/v1/models/animerec:predict", b"{nope", 400, "JSON Parse error"),
    "unknown model": ("/v1/models/other:predict", {"instances": [100]}, 404, "Servable not found"),
    "unknown signature": ("/v1/models/animerec:predict", {"signature_name": "x", "instances": [1]}, 400, "not found"),
    "wrong dtype": ("/v1/models/animerec:predict", {"instances": ["100"]}, 400, "is not of expected type"),
    "float for int": ("/v1/models/animerec:predict", {"instances": [1.5]}, 400, "is not of expected type: int64"),
    "both formats": (
        "/v1/models/animerec:predict",
        {"instances": [1], "inputs": [1]},
        400,
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
    ),
    "neither format": (
        "/v1/models/animerec:predict",
        {"signature_name": "serving_default"},
        400,
        "Missing 'inputs' or",
    ),
    # The model is looked up before the body's format is read (FillPredictRequestFromJson).
    "neither format, unknown model": ("/v1/models/other:predict", {}, 404, "Servable not found"),
    "instances not a list": ("/v1/models/animerec:predict", {"instances": 100}, 400, "'instances' to be an list/array"),
    "no instances": ("/v1/models/animerec:predict", {"instances": []}, 400, "No values in 'instances' array"),
    "false for int": (
        "/v1/models/animerec:predict",
        {"inputs": [False]},
        400,
        "JSON Value: false Type: False is not of expected type: int64",
    ),
    "a row of the wrong type": (
        "/v1/models/animerec:predict",
        {"instances": [100, 1.5]},
        400,
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: Number",
    ),
    "instance keys short of the inputs": (
        "/v1/models/animerec:predict",
        {"signature_name": "recommend", "instances": [{"user_id": 100, "k": 3}]},
        400,
        "keys must be equal to: exclude_anime_ids,k,user_id",
    ),
    "instances of different shapes": (
        "/v1/models/animerec:predict",
        {
            "signature_name": "recommend",
            "instances": [
                {"user_id": 100, "k": 3, "exclude_anime_ids": [-1]},
                {"user_id": 101, "k": 3, "exclude_anime_ids": [-1, 10]},
            ],
        },
        400,
        "Failed to process element: 1 key: exclude_anime_ids of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 1 but got: 2",
    ),
    "a path no pattern matches": (
        "/v1/models/animerec/versions/abc",
        None,
        400,
        "Malformed request: GET /v1/models/animerec/versions/abc",
    ),
    "predict by GET": ("/v1/models/animerec:predict", None, 400, "Malformed request: GET /v1/models/animerec:predict"),
    "no model name": ("/v1/models", None, 400, "Missing model name in request."),
    "classify": ("/v1/models/animerec:classify", {"examples": []}, 501, "Classify is not supported"),
    "unknown input name": (
        "/v1/models/animerec:predict",
        {"inputs": {"user": [1]}},
        400,
        "Missing named input: user_id",
    ),
    "unknown instance key": (
        "/v1/models/animerec:predict",
        {"instances": [{"user": 1}]},
        400,
        "does not have named input",
    ),
    "missing input": (
        "/v1/models/animerec:predict",
        {"signature_name": "recommend", "inputs": {"user_id": [1], "k": [1]}},
        400,
        "Missing named input: exclude_anime_ids in 'inputs' object.",
    ),
    "ragged rows": (
        "/v1/models/animerec:predict",
        {"signature_name": "recommend", "inputs": {"user_id": [1, 2], "k": [1, 1], "exclude_anime_ids": [[1], [1, 2]]}},
        400,
        "Encountered list at unexpected size: 2 at level: 1 expected size: 1",
    ),
}


@pytest.mark.parametrize("case", sorted(REST_BAD_REQUESTS))
def test_rest_errors_have_tf_servings_shape_and_codes(running_rest, case):
    path, body, code, message = REST_BAD_REQUESTS[case]
    status, answer = _http(running_rest, path, body)
    assert status == code and message in answer["error"]
    assert _http(running_rest, "/v1/models/animerec:predict", {"instances": [100]})[0] == 200


def test_rest_client_gives_what_the_grpc_client_gives(running_rest):
    by_rest = client.RestClient(running_rest.rest_url)
    by_grpc = client.RecommenderClient(running_rest.target)
    assert by_rest.recommend([100, 999]) == by_grpc.recommend([100, 999])
    assert by_rest.recommend([101], k=2, exclude_anime_ids=[[10]]) == by_grpc.recommend(
        [101], k=2, exclude_anime_ids=[[10]]
    )
    assert by_rest.recommend_from_liked([[20, 30]], k=3) == by_grpc.recommend_from_liked([[20, 30]], k=3)
    with pytest.raises(client.RestError, match="HTTP 404"):
        client.RestClient(running_rest.rest_url, model_name="other").recommend([100])
    by_grpc.close()


def test_a_full_queue_refuses_as_tf_servings_scheduler_does():
    """shared_batch_scheduler.h: each version's signature queues its own batches; a task is
    refused when it does not fit the open batch and max_enqueued_batches are queued."""
    from animerec.serving import batching

    started, release = threading.Event(), threading.Event()

    def run(key, inputs):
        started.set()
        release.wait(10)  # the model is busy: the next tasks queue
        return {"y": inputs["x"]}

    config = BatchingConfig(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    batcher = batching.Batcher(run, config)
    callers = [threading.Thread(target=batcher.call, args=("sig", {"x": np.array([0])}))]
    callers[0].start()
    assert started.wait(5)
    callers.append(threading.Thread(target=batcher.call, args=("sig", {"x": np.array([1, 2])})))
    callers[-1].start()
    while not batcher._queue:
        time.sleep(0.01)
    with pytest.raises(batching.RequestError) as error:
        batcher.call("sig", {"x": np.array([3])})
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(error.value) == (
        "The batch scheduling queue to which this task was submitted is full; currently 1 batches enqueued "
        "and max_enqueued_batches is 1"
    )
    # Another signature has a queue of its own.
    callers.append(threading.Thread(target=batcher.call, args=("other", {"x": np.array([4])})))
    callers[-1].start()
    while len(batcher._queue) < 2:
        time.sleep(0.01)
    release.set()
    for caller in callers:
        caller.join()
    batcher.stop()


def test_a_batch_whose_deadlines_all_passed_in_the_queue_is_not_run():
    """BatchingSession::ProcessBatch: a batch runs unless every task in it has timed out
    while queued; then each gets RESOURCE_EXHAUSTED (HTTP 429)."""
    from animerec.serving import batching

    calls, started = [], threading.Event()

    def run(key, inputs):
        calls.append(inputs["x"].tolist())
        started.set()
        time.sleep(0.5)  # the model is busy: the next requests wait in the queue
        return {"y": inputs["x"]}

    batcher = batching.Batcher(run, BatchingConfig(max_batch_size=8, num_batch_threads=1))
    first = threading.Thread(target=batcher.call, args=("sig", {"x": np.array([1])}))
    first.start()
    started.wait(5)
    with pytest.raises(batching.RequestError) as error:
        batcher.call("sig", {"x": np.array([2])}, timeout=0.1)
    first.join()
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(error.value) == "Run() timeout exceeded while waiting in batching queue"
    assert calls == [[1]], "the expired request never reached the model"
    # One task of the batch still in time: the whole batch runs, the expired task too.
    calls.clear()
    started.clear()
    first = threading.Thread(target=batcher.call, args=("sig", {"x": np.array([1])}))
    first.start()
    started.wait(5)
    answers = {}
    late = threading.Thread(target=lambda: answers.update(late=batcher.call("sig", {"x": np.array([2])}, 0.1)))
    patient = threading.Thread(target=lambda: answers.update(patient=batcher.call("sig", {"x": np.array([3])}, 10)))
    late.start()
    patient.start()
    for thread in (first, late, patient):
        thread.join()
    batcher.stop()
    assert sorted(calls[1]) == [2, 3], calls
    assert answers["late"]["y"].tolist() == [2] and answers["patient"]["y"].tolist() == [3]


def test_stopping_waits_for_the_threads_the_server_started(tmp_path):
    """No poller or batch thread outlives stop(): a daemon thread still inside TensorFlow
    when the interpreter exits is killed there, which can abort the process."""
    from animerec.serving import batching

    started = threading.Event()

    def run(key, inputs):
        started.set()
        time.sleep(0.3)  # a batch still running when stop() is called
        return {"y": inputs["x"]}

    # batch_timeout_micros > 0: the task runs on a batch thread, not on the caller's.
    batcher = batching.Batcher(run, BatchingConfig(max_batch_size=8, num_batch_threads=1, batch_timeout_micros=1))
    caller = threading.Thread(target=batcher.call, args=("sig", {"x": np.array([1])}))
    caller.start()
    assert started.wait(5)
    batcher.stop()
    assert not any(thread.is_alive() for thread in batcher._threads), "a batch thread outlived stop()"
    caller.join()

    manager = versions.ModelManager("m", str(tmp_path), poll_seconds=0.01)
    polling = threading.Event()

    def slow_refresh():  # a version load in progress when stop() is called
        polling.set()
        time.sleep(0.3)
        return False

    manager.refresh = slow_refresh
    manager.start()
    assert polling.wait(5)
    manager.stop()
    assert not manager._thread.is_alive(), "the version poller outlived stop()"


def test_a_stopped_server_leaves_no_thread_running(exported_model, tmp_path):
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    srv = server.start_server(serving_dir, port=0, poll_seconds=0.2, batching=BATCHING)
    before = set(threading.enumerate())
    recommender = client.RecommenderClient(srv.target)
    assert recommender.recommend([100])[0].items, "a request was answered"
    recommender.close()
    started = set(threading.enumerate()) - before
    assert started, "the request ran on a thread of the server's"
    srv.stop()
    assert not [t.name for t in started if t.is_alive()]
    assert not srv.manager._thread.is_alive() and not any(t.is_alive() for t in srv.batcher._threads)
