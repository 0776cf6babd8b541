"""Known users' retrieval from a ScaNN index: the same answers as the SavedModel's brute force
(exactly on a small catalog, where ScaNN scores every title; nearly on a partitioned one),
through the stand-in server over real gRPC."""

import numpy as np
import pytest
import tensorflow as tf

from animerec import features as f
from animerec.bench.serve import build_serving_model
from animerec.config import TrainingConfig
from animerec.serving import scann_index, server
from tests.model_fixtures import export_small_model
from tests.test_serving import BATCHING, _request, _stub, push

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# (signature, inputs): known, unknown (999) and history-less users, several k, exclusions.
REQUESTS = [
    (f.DEFAULT_SIGNATURE, {f.SERVING_USER_ID: np.array([100, 999, 102], np.int64)}),
    (
        f.RECOMMEND_SIGNATURE,
        {
            f.SERVING_USER_ID: np.array([101, 100, 999], np.int64),
            f.SERVING_K: np.array([1, 3, 2], np.int32),
            f.SERVING_EXCLUDE: np.array([[50, -1], [40, 60], [-1, 10]], np.int64),
        },
    ),
    (
        f.RECOMMEND_SIGNATURE,
        {
            f.SERVING_USER_ID: np.array([102], np.int64),
            f.SERVING_K: np.array([100], np.int32),  # capped at the signature's width
            f.SERVING_EXCLUDE: np.array([[7777]], np.int64),  # not in the catalog: ignored
        },
    ),
]


def _assert_same(got: dict, expected: dict, what: str) -> None:
    for key, value in expected.items():
        value = value.numpy() if hasattr(value, "numpy") else value
        assert got[key].shape == value.shape, (what, key)
        if key == f.OUTPUT_SCORES:
            np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=f"{what} {key}")
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=f"{what} {key}")


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    return export_small_model(str(tmp_path_factory.mktemp("exported")))


def test_scann_server_answers_as_the_savedmodel(exported_model, tmp_path):
    serving_dir = str(tmp_path / "serving")
    push(exported_model, serving_dir, 1)
    srv = server.start_server(serving_dir, port=0, batching=BATCHING, index="scann")
    try:
        assert isinstance(srv.manager.current.index, scann_index.ScannRetrieval)
        signatures = tf.saved_model.load(exported_model).signatures
        stub = _stub(srv)
        for name, inputs in REQUESTS:
            expected = signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
            response = stub.Predict(_request(name, **inputs), timeout=30)
            got = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
            _assert_same(got, expected, name)
        # The other signatures still run on the Session.
        liked = _request(
            f.FROM_LIKED_SIGNATURE,
            **{
                f.SERVING_LIKED: np.array([[10, 20]], np.int64),
                f.SERVING_K: np.array([2], np.int32),
                f.SERVING_EXCLUDE: np.array([[-1]], np.int64),
            },
        )
        assert tf.make_ndarray(stub.Predict(liked, timeout=30).outputs[f.OUTPUT_ANIME_IDS]).shape[0] == 1
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def partitioned_model(tmp_path_factory):
    """A retrieval-only model of 6,000 titles (untrained towers: nearly uniform directions,
    the hardest case for an index)."""
    path = build_serving_model(
        str(tmp_path_factory.mktemp("partitioned")),
        users=600,
        anime=6000,
        dim=16,
        history=20,
        seen=40,
        second_stage=False,
    )
    return path


def test_partitioned_index_finds_the_brute_force_top_titles(partitioned_model):
    # Hashing and rescoring, as ScaNN's rules of thumb have it from 20,000 titles.
    index = scann_index.ScannRetrieval(partitioned_model, exact_below=2048)
    model = tf.saved_model.load(partitioned_model)
    users = model.known_user_ids.numpy()[:300]
    k = 50
    exclude = np.full((len(users), 1), -1, np.int64)
    exclude[::2, 0] = index.anime_ids[0]  # half of the users also exclude the first title
    expected = model.signatures[f.RECOMMEND_SIGNATURE](
        user_id=tf.constant(users), k=tf.fill([len(users)], k), exclude_anime_ids=tf.constant(exclude)
    )
    want = expected[f.OUTPUT_ANIME_IDS].numpy()[:, :k]
    got = index.top(users, np.full(len(users), k), k, exclude)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(got[f.OUTPUT_ANIME_IDS], want)])
    assert overlap >= 0.95, overlap
    # Returned scores are exact (rescored), in order, and nothing excluded comes back.
    scores = got[f.OUTPUT_SCORES]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    rows = index.user_rows(users)
    positions = index.positions(got[f.OUTPUT_ANIME_IDS])
    exact = np.einsum("bd,bkd->bk", index.user_embeddings[rows], index.catalog[positions]) + index.bias[positions]
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4)
    for b, row in enumerate(rows):
        seen = index.seen[1][index.seen[0][row] : index.seen[0][row + 1]]
        assert not set(positions[b]) & set(seen)
        if b % 2 == 0:
            assert 0 not in positions[b]


def test_two_stages_from_the_index_answer_as_the_savedmodel(tmp_path):
    """A two-stage model (random second stage of the default shape: N = 150 of 400 titles,
    100 item-item candidates): the index retrieves, the SavedModel's rank_retrieved ranks,
    and the answers are the SavedModel's own, through the server over real gRPC."""
    serving_dir = str(tmp_path / "serving")
    path = build_serving_model(serving_dir, users=60, anime=400, dim=8, history=12, seen=30, second_stage=True)
    model = tf.saved_model.load(path)
    # rank_retrieved is a saved function, not a signature: what TF Serving sees is unchanged.
    assert callable(model.rank_retrieved) and "rank_retrieved" not in model.signatures
    assert len(model.signatures) == 6
    users = model.known_user_ids.numpy()
    # Known users and an unknown one (popularity); k from 0 to beyond the width.
    users = np.concatenate([users[:7], [10**9]])  # BATCHING allows 8 a request
    k = np.arange(len(users), dtype=np.int32) * 15
    exclude = np.full((len(users), 3), -1, np.int64)
    exclude[::3, 1:] = model.catalog_anime_ids.numpy()[[5, 77]]
    requests = [
        (f.DEFAULT_SIGNATURE, {f.SERVING_USER_ID: users}),
        (f.RECOMMEND_SIGNATURE, {f.SERVING_USER_ID: users, f.SERVING_K: k, f.SERVING_EXCLUDE: exclude}),
    ]
    srv = server.start_server(serving_dir, port=0, batching=BATCHING, index="scann")
    try:
        index = srv.manager.current.index
        assert (
            index.rank_retrieved is not None and index.ranking_candidates == TrainingConfig().ranking_candidates > 100
        )
        # The second stage runs in the Session that serves the signatures: no second copy of the model.
        assert index.session is srv.manager.current.session
        with pytest.raises(ValueError, match="no function 'rank_everything'"):
            scann_index.saved_function(index.session, scann_index.read_saved_model(path), "rank_everything")
        stub = _stub(srv)
        for name, inputs in requests:
            expected = model.signatures[name](**{key: tf.constant(v) for key, v in inputs.items()})
            response = stub.Predict(_request(name, **inputs), timeout=60)
            got = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
            _assert_same(got, expected, name)
        assert got[f.OUTPUT_IS_FALLBACK].any() and not got[f.OUTPUT_IS_FALLBACK].all()
    finally:
        srv.stop()


def test_a_partitioned_searcher_finds_the_nearest_titles_of_a_clustered_catalog():
    """Past scann_index.PARTITION_FROM titles a tree narrows the scan (catalogs are clustered:
    by genre, by audience); here from 20,000, on 25,000."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(200, 16))
    n = 25_000
    database = (centers[rng.integers(0, 200, n)] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)
    queries = (centers[rng.integers(0, 200, 100)] + 0.3 * rng.normal(size=(100, 16))).astype(np.float32)
    searcher = scann_index.build_searcher(database, exact_below=2048, partition_from=20_000)
    found, scores = scann_index.search(searcher, queries, 50, n)
    exact = np.argsort(-(queries @ database.T), axis=1)[:, :50]
    overlap = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(found, exact)])
    assert overlap >= 0.95, overlap
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ database.T, found.astype(np.int64), 1), rtol=1e-4)


def test_two_stages_from_an_approximate_index_keep_every_title_once(tmp_path):
    """With hashing instead of exact scoring (ScaNN's path from 20,000 titles; here forced on
    400), an item-item title the index missed is added, not taken for one it retrieved: no
    title comes back twice or seen, and the top 50 stay close to the SavedModel's."""
    path = build_serving_model(
        str(tmp_path / "serving"), users=60, anime=400, dim=8, history=12, seen=30, second_stage=True
    )
    index = scann_index.ScannRetrieval(path, exact_below=64)
    assert not index.exact
    model = tf.saved_model.load(path)
    users = model.known_user_ids.numpy()[:40]
    none = np.full((len(users), 1), -1, np.int64)
    got = index.top(users, np.full(len(users), 50), index.recommend_width, none)[f.OUTPUT_ANIME_IDS][:, :50]
    want = model.signatures[f.RECOMMEND_SIGNATURE](
        user_id=tf.constant(users), k=tf.fill([len(users)], 50), exclude_anime_ids=tf.constant(none)
    )[f.OUTPUT_ANIME_IDS].numpy()[:, :50]
    rows = index.user_rows(users)
    for b, row in enumerate(rows):
        assert len(set(got[b])) == 50 and -1 not in got[b]
        seen = index.anime_ids[index.seen[1][index.seen[0][row] : index.seen[0][row + 1]]]
        assert not set(got[b]) & set(seen)
    overlap = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(got, want)])
    assert overlap >= 0.9, overlap
