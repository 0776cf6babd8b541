"""Towers, the TFRS model and the exported serving signatures on a hand-made dataset."""

import numpy as np
import pytest
import tensorflow as tf

from animerec import features as f
from animerec.model import export, retrieval
from animerec.model.towers import CandidateTower, QueryTower
from tests.model_fixtures import ANIME_IDS, small_training_data

DIM = 8


@pytest.fixture(scope="module")
def data():
    return small_training_data()


@pytest.fixture(scope="module")
def trained(data):
    tf.keras.utils.set_random_seed(1)
    model = retrieval.build_model(data, DIM, temperature=0.1, learning_rate=0.05)
    history = model.fit(retrieval.training_dataset(data, batch_size=len(data.user_index)), epochs=20, verbose=0)
    return model, history.history["loss"]


def test_query_tower_shapes_and_target_exclusion():
    tower = QueryTower(user_vocab_size=3, anime_vocab_size=4, dim=DIM)
    history = tf.ragged.constant([[0, 1], [2], []], dtype=tf.int64)
    out = tower(tf.constant([0, 1, 2], tf.int64), history, exclude=tf.constant([-1, -1, -1], tf.int64))
    assert out.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, rtol=1e-5)
    # Taking the target out of a one-item history leaves the same query as an empty history.
    with_target = tower(
        tf.constant([1], tf.int64), tf.ragged.constant([[2]], dtype=tf.int64), exclude=tf.constant([2], tf.int64)
    )
    empty = tower(
        tf.constant([1], tf.int64),
        tf.ragged.constant([[]], dtype=tf.int64, ragged_rank=1),
        exclude=tf.constant([-1], tf.int64),
    )
    np.testing.assert_allclose(with_target.numpy(), empty.numpy(), atol=1e-6)


def test_candidate_tower_ignores_the_id_of_cold_start_titles(data):
    tower = CandidateTower(anime_vocab_size=4, text_vocab_sizes=data.text_vocab_sizes, dim=DIM)
    batch = {name: tf.constant(t) for name, t in data.catalog.tokens.items()}
    batch[f.ANIME_INDEX] = tf.constant(data.catalog.anime_index)
    before = tower(batch).numpy()
    assert before.shape == (6, DIM)
    weights = tower.id_embedding.get_weights()[0]
    weights[4] = 100.0  # the out-of-vocabulary row
    weights[0] = 100.0  # a known title's row
    tower.id_embedding.set_weights([weights])
    after = tower(batch).numpy()
    np.testing.assert_allclose(after[4:], before[4:], atol=1e-6)
    assert not np.allclose(after[0], before[0])


def test_training_loss_is_finite_and_falls(trained):
    _, losses = trained
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def serving(trained, data, tmp_path_factory):
    model, _ = trained
    path = str(tmp_path_factory.mktemp("model"))
    # User 102 liked anime 40 too, but that row was held out for eval.
    with_heldout = data.with_heldout(np.array([2]), np.array([40]))
    export.export_serving_model(model, with_heldout, retrieval.catalog_embeddings(model, data), top_k=3, path=path)
    return tf.saved_model.load(path)


def test_serving_default_excludes_seen_and_sorts(serving):
    out = serving.signatures["serving_default"](user_id=tf.constant([100, 101, 102], tf.int64))
    ids = out[f.OUTPUT_ANIME_IDS].numpy()
    scores = out[f.OUTPUT_SCORES].numpy()
    assert ids.shape == scores.shape == (3, 3)
    seen = {100: {10, 20, 30}, 101: {20, 30, 40}, 102: {10, 40}}
    for row, user in enumerate([100, 101, 102]):
        assert not set(ids[row]) & seen[user], f"user {user} was recommended a title already seen"
        assert np.all(np.diff(scores[row]) <= 0)
    # User 100 has seen three of six titles: exactly the other three come back, cold-start titles included.
    assert set(ids[0]) == {40, 50, 60}
    assert not out[f.OUTPUT_IS_FALLBACK].numpy().any()
    titles = out[f.OUTPUT_TITLES].numpy()
    assert titles[0][0] == f"Title {ids[0][0]}".encode()


def test_unknown_user_gets_popular_titles_flagged(serving):
    out = serving.signatures["serving_default"](user_id=tf.constant([999], tf.int64))
    assert out[f.OUTPUT_IS_FALLBACK].numpy().tolist() == [True]
    # Liked counts: 20 twice, 10 twice, 30 and 40 once; ties go to the catalog's first.
    assert out[f.OUTPUT_ANIME_IDS].numpy()[0].tolist()[:2] == [10, 20]


def test_recommend_takes_k_and_exclusions(serving):
    recommend = serving.signatures[f.RECOMMEND_SIGNATURE]
    out = recommend(
        user_id=tf.constant([102, 102, 102], tf.int64),
        k=tf.constant([4, 4, 2]),
        exclude_anime_ids=tf.constant([[-1, -1], [50, 60], [-1, -1]], tf.int64),
    )
    ids = out[f.OUTPUT_ANIME_IDS].numpy()
    # A fixed width (the catalog here: 6 titles), each row holding its own k.
    assert ids.shape == (3, len(ANIME_IDS))
    # User 102 has seen anime 10 and 40 (held out); row 2 also excludes 50 and 60, leaving two titles.
    assert set(ids[0][:4]) == {20, 30, 50, 60} and ids[0][4:].tolist() == [-1, -1]
    assert sorted(ids[1][:2]) == [20, 30]
    assert ids[1][2:].tolist() == [-1] * 4 and out[f.OUTPUT_TITLES].numpy()[1][3] == b""
    assert np.isneginf(out[f.OUTPUT_SCORES].numpy()[1][2:]).all()
    # Row 3 asks for k=2: the first two of row 1's list, the rest padding.
    assert ids[2][:2].tolist() == ids[0][:2].tolist() and (ids[2][2:] == -1).all()
    assert np.isneginf(out[f.OUTPUT_SCORES].numpy()[2][2:]).all()


def test_eval_signature_keeps_heldout_titles(serving):
    out = serving.signatures[f.EVAL_SIGNATURE](
        user_id=tf.constant([102], tf.int64), k=tf.constant([5]), exclude_anime_ids=tf.zeros([1, 0], tf.int64)
    )
    assert set(out[f.OUTPUT_ANIME_IDS].numpy()[0][:5]) == {20, 30, 40, 50, 60}


def test_recommend_caps_k_instead_of_failing(serving):
    """A bad k must not fail the call: TF Serving's batching would fail the whole merged batch."""
    out = serving.signatures[f.RECOMMEND_SIGNATURE](
        user_id=tf.constant([100, 100, 100], tf.int64),
        k=tf.constant([0, -3, len(ANIME_IDS) + 5]),
        exclude_anime_ids=tf.fill([3, 1], tf.constant(-1, tf.int64)),
    )
    ids = out[f.OUTPUT_ANIME_IDS].numpy()
    assert (ids[:2] == -1).all() and np.isneginf(out[f.OUTPUT_SCORES].numpy()[:2]).all()
    # Over the width: every unseen title (user 100 has seen 10, 20 and 30).
    assert sorted(ids[2][ids[2] >= 0]) == [40, 50, 60]


def test_recommend_needs_one_k_per_user(serving):
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must have one row per user_id"):
        serving.signatures[f.RECOMMEND_SIGNATURE](
            user_id=tf.constant([100], tf.int64), k=tf.constant([3, 3]), exclude_anime_ids=tf.zeros([1, 0], tf.int64)
        )


def _ids_of_positions(data, positions) -> list[int]:
    return [int(ANIME_IDS[p]) for p in positions]


@pytest.fixture(scope="module")
def history_only_serving(data, tmp_path_factory):
    """As `serving`, with the query tower of the default config: the liked history alone, no user id embedding."""
    tf.keras.utils.set_random_seed(2)
    model = retrieval.build_model(data, DIM, temperature=0.1, learning_rate=0.05, use_user_embedding=False)
    model.fit(retrieval.training_dataset(data, batch_size=len(data.user_index)), epochs=20, verbose=0)
    path = str(tmp_path_factory.mktemp("history_only"))
    with_heldout = data.with_heldout(np.array([2]), np.array([40]))
    export.export_serving_model(model, with_heldout, retrieval.catalog_embeddings(model, data), top_k=3, path=path)
    return tf.saved_model.load(path)


def test_recommend_from_liked_matches_the_precomputed_path(history_only_serving, data):
    """A known user's liked titles, sent as a new user's, give the same top k (the query
    tower runs at request time instead of at export)."""
    serving = history_only_serving
    index_to_position = data.catalog.positions_of_index(data.anime_vocab_size)
    liked = [
        _ids_of_positions(
            data, index_to_position[data.history_values[data.history_splits[u] : data.history_splits[u + 1]]]
        )
        for u in range(3)
    ]
    seen = [_ids_of_positions(data, data.seen_values[data.seen_splits[u] : data.seen_splits[u + 1]]) for u in range(3)]
    seen[2].append(40)  # held out for eval in this export
    width = max(map(len, liked)) + 1
    liked_matrix = np.full((3, width), -1, np.int64)
    exclude = np.full((3, 5), -1, np.int64)
    for u in range(3):
        liked_matrix[u, 1 : len(liked[u]) + 1] = liked[u]
        exclude[u, 1 : len(seen[u]) + 1] = seen[u]
    k = tf.constant([6, 2, 6])
    by_liked = serving.signatures[f.FROM_LIKED_SIGNATURE](
        liked_anime_ids=tf.constant(liked_matrix), k=k, exclude_anime_ids=tf.constant(exclude)
    )
    by_id = serving.signatures[f.RECOMMEND_SIGNATURE](
        user_id=tf.constant([100, 101, 102], tf.int64),
        k=k,
        exclude_anime_ids=tf.fill([3, 1], tf.constant(-1, tf.int64)),
    )
    np.testing.assert_array_equal(by_liked[f.OUTPUT_ANIME_IDS].numpy(), by_id[f.OUTPUT_ANIME_IDS].numpy())
    np.testing.assert_allclose(by_liked[f.OUTPUT_SCORES].numpy(), by_id[f.OUTPUT_SCORES].numpy(), rtol=1e-5)
    assert not by_liked[f.OUTPUT_IS_FALLBACK].numpy().any()


def test_recommend_from_liked_leaves_out_the_liked_and_falls_back_without_known_titles(serving):
    out = serving.signatures[f.FROM_LIKED_SIGNATURE](
        # Row 1 likes 20 and an id outside the catalog; row 2 only titles nobody liked in training.
        liked_anime_ids=tf.constant([[20, 99999], [50, 60]], tf.int64),
        k=tf.constant([6, 6]),
        exclude_anime_ids=tf.constant([[-1], [10]], tf.int64),
    )
    ids = out[f.OUTPUT_ANIME_IDS].numpy()
    assert 20 not in ids[0] and sorted(ids[0][ids[0] >= 0]) == [10, 30, 40, 50, 60]
    assert out[f.OUTPUT_IS_FALLBACK].numpy().tolist() == [False, True]
    assert sorted(ids[1][ids[1] >= 0]) == [20, 30, 40]


def test_tf_example_signature_matches_default(serving):
    examples = []
    for user in (100, 101):
        example = tf.train.Example()
        example.features.feature[f.USER_ID].int64_list.value.append(user)
        examples.append(example.SerializeToString())
    by_example = serving.signatures[f.TF_EXAMPLE_SIGNATURE](examples=tf.constant(examples))
    by_id = serving.signatures["serving_default"](user_id=tf.constant([100, 101], tf.int64))
    np.testing.assert_array_equal(by_example[f.OUTPUT_ANIME_IDS].numpy(), by_id[f.OUTPUT_ANIME_IDS].numpy())


def test_an_example_without_one_user_id_gets_the_fallback_not_an_error(serving):
    """Batched with others, an Example lacking user_id (or holding two) must not fail the
    call, and so its neighbours' requests: it is served as an unknown user."""
    missing, two = tf.train.Example(), tf.train.Example()
    two.features.feature[f.USER_ID].int64_list.value.extend([100, 101])
    good = []
    for user in (100, 101):
        example = tf.train.Example()
        example.features.feature[f.USER_ID].int64_list.value.append(user)
        good.append(example.SerializeToString())
    batch = [good[0], missing.SerializeToString(), two.SerializeToString(), good[1]]
    out = serving.signatures[f.TF_EXAMPLE_SIGNATURE](examples=tf.constant(batch))
    by_id = serving.signatures["serving_default"](user_id=tf.constant([100, 424242, 424242, 101], tf.int64))
    np.testing.assert_array_equal(out[f.OUTPUT_ANIME_IDS].numpy(), by_id[f.OUTPUT_ANIME_IDS].numpy())
    assert out[f.OUTPUT_IS_FALLBACK].numpy().tolist() == [False, True, True, False]
    # A user_id of another type is a malformed Example, which tf.io.parse_example refuses.
    as_bytes = tf.train.Example()
    as_bytes.features.feature[f.USER_ID].bytes_list.value.append(b"100")
    with pytest.raises(tf.errors.InvalidArgumentError):
        serving.signatures[f.TF_EXAMPLE_SIGNATURE](examples=tf.constant([good[0], as_bytes.SerializeToString()]))


def test_shared_item_embeddings_are_one_table(data):
    shared = retrieval.build_model(data, DIM, 0.1, 0.01, share_item_embeddings=True)
    separate = retrieval.build_model(data, DIM, 0.1, 0.01, share_item_embeddings=False)
    assert shared.query_tower.history_embedding is shared.candidate_tower.id_embedding
    assert separate.query_tower.history_embedding is not separate.candidate_tower.id_embedding
    for model, tables in ((shared, 1), (separate, 2)):
        model.fit(retrieval.training_dataset(data, batch_size=6), epochs=1, verbose=0)
        item_tables = [v for v in model.trainable_variables if v.shape == (data.anime_vocab_size + 1, DIM)]
        assert len(item_tables) == tables


def test_popularity_bias_enters_the_served_ranking(trained, data, tmp_path):
    model, _ = trained
    bias = retrieval.popularity_bias(data, prior=1.0, temperature=0.1)
    # Liked counts per catalog position: 10 -> 2, 20 -> 2, 30 -> 1, 40 -> 1, cold titles 0.
    np.testing.assert_allclose(bias, 0.1 * np.log1p([2, 2, 1, 1, 0, 0]), rtol=1e-6)
    huge = np.zeros(6, np.float32)
    huge[5] = 10.0  # anime 60, unseen by everyone
    export.export_serving_model(
        model, data, retrieval.catalog_embeddings(model, data), top_k=2, path=str(tmp_path), catalog_bias=huge
    )
    out = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](
        user_id=tf.constant([100, 101, 102], tf.int64)
    )
    assert out[f.OUTPUT_ANIME_IDS].numpy()[:, 0].tolist() == [60, 60, 60]


def test_in_batch_loss_matches_tfrs_retrieval_task():
    import tensorflow_recommenders as tfrs

    rng = np.random.default_rng(0)
    query = tf.math.l2_normalize(tf.constant(rng.normal(size=(64, DIM)), tf.float32), axis=1)
    item_vectors = tf.math.l2_normalize(tf.constant(rng.normal(size=(20, DIM)), tf.float32), axis=1)
    item_probability = tf.constant(rng.uniform(0.01, 0.2, 20), tf.float32)
    ids = tf.constant(rng.integers(0, 20, 64))  # many duplicates: accidental hits matter
    candidates, probability = tf.gather(item_vectors, ids), tf.gather(item_probability, ids)
    weight = tf.constant(rng.uniform(0.5, 1.0, 64), tf.float32)
    task = tfrs.tasks.Retrieval(temperature=0.05, remove_accidental_hits=True)
    expected = task(
        query,
        candidates,
        sample_weight=weight,
        candidate_sampling_probability=probability,
        candidate_ids=ids,
        compute_metrics=False,
        compute_batch_metrics=False,
    )
    # The model passes each distinct item of the batch once.
    items, positions = tf.unique(ids, out_idx=tf.int64)
    got = retrieval.in_batch_softmax_loss(
        query, tf.gather(item_vectors, items), positions, tf.gather(item_probability, items), weight, 0.05
    )
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5)
