"""The TF Serving stand-in and the client over loopback gRPC: happy path, bad requests, version switch."""

import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from animerec import features as f
from animerec.model import export, retrieval
from animerec.serving import client, server
from tests.model_fixtures import ANIME_IDS, small_training_data

MAX_BATCH = 8


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    data = small_training_data()
    tf.keras.utils.set_random_seed(0)
    model = retrieval.build_model(data, 8, temperature=0.1, learning_rate=0.05)
    model.fit(retrieval.training_dataset(data, batch_size=6), epochs=2, verbose=0)
    path = str(tmp_path_factory.mktemp("exported"))
    export.export_serving_model(model, data, retrieval.catalog_embeddings(model, data), top_k=4, path=path)
    return path


def push(exported: str, serving_dir: str, version: int) -> None:
    """Copies like Pusher: everything, then saved_model.pb last."""
    target = os.path.join(serving_dir, str(version))
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copy(os.path.join(exported, "saved_model.pb"), os.path.join(target, "saved_model.pb"))


@pytest.fixture()
def running(exported_model, tmp_path):
    serving_dir = str(tmp_path / "serving")
    os.makedirs(serving_dir)
    push(exported_model, serving_dir, 1)
    srv = server.start_server(serving_dir, port=0, max_batch=MAX_BATCH, poll_seconds=0.2)
    yield srv, serving_dir
    srv.stop()


def _stub(srv):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(srv.target))


def _request(signature="serving_default", name="animerec", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_client_gets_recommendations(running):
    srv, _ = running
    recommender = client.RecommenderClient(srv.target)
    results = recommender.recommend([100, 999])
    assert [r.user_id for r in results] == [100, 999]
    assert [i.anime_id for i in results[0].items] and not {10, 20, 30} & {i.anime_id for i in results[0].items}
    assert results[0].items[0].title.startswith("Title ")
    assert not results[0].is_fallback and results[1].is_fallback
    scores = [i.score for i in results[0].items]
    assert scores == sorted(scores, reverse=True)
    limited = recommender.recommend([101], k=2, exclude_anime_ids=[[10]])
    assert len(limited[0].items) == 2 and 10 not in {i.anime_id for i in limited[0].items}
    text = client.format_recommendations(results[0])
    assert "Top" in text and results[0].items[0].title in text
    recommender.close()


def test_metadata_and_status(running):
    srv, _ = running
    channel = grpc.insecure_channel(srv.target)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "animerec"
    request.metadata_field.append("signature_def")
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", f.RECOMMEND_SIGNATURE, f.TF_EXAMPLE_SIGNATURE} <= set(signatures.signature_def)
    assert set(signatures.signature_def["serving_default"].inputs) == {f.USER_ID}
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "animerec"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
    assert status.model_version_status[0].version == 1
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


BAD_REQUESTS = {
    "missing input": (
        _request(f.RECOMMEND_SIGNATURE, user_id=np.array([100], np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing inputs",
    ),
    "wrong dtype": (_request(user_id=np.array(["100"])), grpc.StatusCode.INVALID_ARGUMENT, "to be int64 but string"),
    "k zero": (
        _request(
            f.RECOMMEND_SIGNATURE,
            user_id=np.array([100], np.int64),
            k=np.int32(0),
            exclude_anime_ids=np.zeros((1, 0), np.int64),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be positive",
    ),
    "k above catalog": (
        _request(
            f.RECOMMEND_SIGNATURE,
            user_id=np.array([100], np.int64),
            k=np.int32(len(ANIME_IDS) + 1),
            exclude_anime_ids=np.zeros((1, 0), np.int64),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most the catalog size",
    ),
    "empty batch": (_request(user_id=np.zeros(0, np.int64)), grpc.StatusCode.INVALID_ARGUMENT, "batch is empty"),
    "oversized batch": (
        _request(user_id=np.arange(MAX_BATCH + 1, dtype=np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "larger than the maximum",
    ),
    "unknown model": (
        _request(name="other", user_id=np.array([100], np.int64)),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found",
    ),
    "unknown signature": (
        _request("nope", user_id=np.array([100], np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not found in signature def",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_tf_serving_status_codes(running, case):
    srv, _ = running
    request, code, message = BAD_REQUESTS[case]
    stub = _stub(srv)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == code
    assert message in error.value.details()
    # The server is still serving.
    assert stub.Predict(_request(user_id=np.array([100], np.int64)), timeout=10).outputs[f.OUTPUT_ANIME_IDS]


def test_unknown_version_is_not_found(running):
    srv, _ = running
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


def test_concurrent_requests_each_get_their_own_answer(running, exported_model):
    srv, _ = running
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
    ],
    ids=["int64", "float32", "bool", "string", "empty"],
)
def test_output_tensor_protos_match_tensorflows(value):
    proto, reference = server.tensor_proto(value), tf.make_tensor_proto(value)
    assert (proto.dtype, proto.tensor_shape) == (reference.dtype, reference.tensor_shape)
    np.testing.assert_array_equal(tf.make_ndarray(proto), tf.make_ndarray(reference))


def test_session_run_matches_the_eager_signature(exported_model, tmp_path):
    """The server runs SignatureDefs by tensor name in a Session, as TF Serving does."""
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    loaded = server.load_version(serving_dir, 1)
    eager = tf.saved_model.load(exported_model).signatures[f.RECOMMEND_SIGNATURE]
    inputs = {
        f.SERVING_USER_ID: np.array([100, 101, 999], np.int64),
        f.SERVING_K: np.int32(3),
        f.SERVING_EXCLUDE: np.array([[ANIME_IDS[0], -1], [ANIME_IDS[1], ANIME_IDS[2]], [-1, -1]], np.int64),
    }
    by_session = loaded.run(f.RECOMMEND_SIGNATURE, inputs)
    by_eager = eager(**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(by_session) == set(by_eager)
    for key, value in by_eager.items():
        np.testing.assert_array_equal(by_session[key], value.numpy())
