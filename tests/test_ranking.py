"""The second stage: EASE as factors, candidates from two retrievers, the ranker, the fit on
validation, and the exported two-stage signatures."""

import numpy as np
import pytest
import tensorflow as tf

from animerec import evaluation
from animerec import features as f
from animerec.config import TrainingConfig
from animerec.model import export, ranking, retrieval, two_stage
from animerec.model.data import Catalog, TrainingData, _csr


def _liked(rng, users=30, items=12, rows=200):
    return rng.integers(0, users, rows), rng.integers(0, items, rows)


def _features_module(
    item_in,
    item_out,
    column,
    catalog_size,
    genres=None,
    members=None,
    neighbours=None,
    candidate_rank=None,
    likes=None,
    candidate_titles=None,
):
    rng = np.random.default_rng(9)
    if neighbours is None:  # no title has a neighbour
        neighbours = np.full((catalog_size, 3), -1, np.int32), np.zeros((catalog_size, 3), np.float32)
    return ranking.RankingFeatures(
        item_in,
        item_out,
        column,
        *neighbours,
        likes if likes is not None else rng.integers(0, 50, catalog_size).astype(np.float64),
        genres if genres is not None else ranking.genre_matrix(rng.integers(0, 4, (catalog_size, 3)), 4),
        rng.uniform(5, 9, catalog_size).astype(np.float32),
        members if members is not None else rng.integers(0, 10_000, catalog_size),
        candidate_rank,
        candidate_titles,
    )


@pytest.mark.parametrize("users", [30, 5])  # more users than titles, then fewer
def test_ease_factors_give_ease_scores_on_unseen_titles(users):
    rng = np.random.default_rng(0)
    users, positions = _liked(rng, users=users, rows=200 if users > 12 else 30)
    catalog_size = 15  # titles 12-14 nobody liked: outside EASE's items
    index = evaluation.EaseIndex(users, positions, catalog_size)
    l2 = 3.0
    weights = index.weights(l2)
    module = _features_module(*ranking.ease_factors(index.eigen, index.items, catalog_size, l2, rank=64), catalog_size)
    history = np.array([[0, 3, 5, -1], [7, -1, -1, -1], [2, 4, 6, 8]], np.int32)
    got = module.item_item_scores(tf.constant(history)).numpy()
    for row, liked in enumerate(history):
        x = np.zeros(len(index.items), np.float32)
        x[index.column[liked[liked >= 0]]] = 1.0
        expected = np.zeros(catalog_size, np.float32)
        expected[index.items] = x @ weights
        unseen = np.setdiff1d(np.arange(catalog_size), liked)
        np.testing.assert_allclose(got[row, unseen], expected[unseen], atol=1e-4)
        assert np.all(got[row, 12:] == 0.0)


# Item-item's candidates by every EASE component, by the 3 leading ones, then from the 10
# most liked of EASE's titles only.
@pytest.mark.parametrize("candidate_rank, candidate_titles", [(None, None), (3, None), (None, 10)])
def test_candidates_are_both_retrievers_top_titles_unseen_and_ordered_by_retrieval(candidate_rank, candidate_titles):
    rng = np.random.default_rng(1)
    users, positions = _liked(rng, items=40, rows=600)
    index = evaluation.EaseIndex(users, positions, 40)
    members = rng.integers(0, 10_000, 40)
    likes = rng.permutation(40).astype(np.float64)  # no ties: which 10 titles are the most liked is clear
    genres = ranking.genre_matrix(rng.integers(0, 6, (40, 3)), 6)
    factors = ranking.ease_factors(index.eigen, index.items, 40, 5.0, rank=32)
    module = _features_module(
        *factors,
        40,
        genres=genres,
        members=members,
        candidate_rank=candidate_rank,
        likes=likes,
        candidate_titles=candidate_titles,
    )
    history = np.array([[1, 2, 3, -1], [5, 6, -1, -1]], np.int32)
    retrieval_scores = rng.normal(size=(2, 40)).astype(np.float32)
    retrieval_scores[0, [1, 2, 3, 10]] = -np.inf  # seen
    retrieval_scores[1, [5, 6]] = -np.inf
    candidates, features, present = module(tf.constant(history), tf.constant(retrieval_scores), 5, 4)
    candidates, features, present = candidates.numpy(), features.numpy(), present.numpy()
    item_item = module.item_item_scores(tf.constant(history)).numpy()
    # What chooses item-item's candidates: EASE's scores from the leading components alone.
    item_in, item_out, column = factors
    head = slice(None) if candidate_rank is None else slice(0, candidate_rank)
    leading = np.stack([item_in[liked[liked >= 0]][:, head].sum(axis=0) for liked in history]) @ item_out[head]
    leading = leading[:, column]
    if candidate_rank is not None:
        assert not np.allclose(leading, item_item, atol=1e-3), "3 components should score differently from 32"
    eligible = column < len(index.items)
    if candidate_titles is not None:
        most_liked = index.items[np.argsort(-likes[index.items], kind="stable")[:candidate_titles]]
        eligible = np.isin(np.arange(40), most_liked)
    assert candidates.shape == present.shape == (2, 9) and features.shape == (2, 9, len(ranking.FEATURE_NAMES))
    for row in range(2):
        unseen = np.isfinite(retrieval_scores[row])
        chosen = set(candidates[row][present[row]].tolist())
        by_retrieval = np.argsort(-retrieval_scores[row], kind="stable")[:5]
        by_item_item = np.argsort(-np.where(unseen & eligible, leading[row], -np.inf), kind="stable")[:4]
        assert chosen == set(by_retrieval.tolist()) | set(by_item_item.tolist())
        assert all(unseen[c] for c in chosen), "a seen title became a candidate"
        kept = retrieval_scores[row, candidates[row][present[row]]]
        assert np.all(np.diff(kept) <= 0), "candidates are in retrieval order"
        # Padding's features are finite (the ranker's moments and loss mask them out, but a
        # -inf would turn its gradients into NaN).
        assert np.all(np.isfinite(features[row]))
        np.testing.assert_allclose(features[row, present[row], ranking.FEATURE_NAMES.index("retrieval_score")], kept)
        np.testing.assert_allclose(
            features[row, :, ranking.FEATURE_NAMES.index("log_retrieval_rank")], np.log1p(np.arange(9)), rtol=1e-6
        )
        np.testing.assert_allclose(
            features[row, present[row], ranking.FEATURE_NAMES.index("item_item")],
            item_item[row, candidates[row][present[row]]],
            rtol=1e-5,
        )
        titles = candidates[row][present[row]]
        np.testing.assert_allclose(
            features[row, present[row], ranking.FEATURE_NAMES.index("log_mal_members")],
            np.log1p(members[titles]),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            features[row, present[row], ranking.FEATURE_NAMES.index("log_popularity")],
            np.log1p(likes[titles]),
            rtol=1e-6,
        )
        # The candidate's genres against the history's unit-norm genre profile.
        profile = genres[history[row][history[row] >= 0]].sum(axis=0)
        np.testing.assert_allclose(
            features[row, present[row], ranking.FEATURE_NAMES.index("genre_affinity")],
            genres[titles] @ (profile / np.linalg.norm(profile)),
            rtol=1e-5,
        )


def test_an_approximate_index_keeps_the_item_item_titles_it_missed():
    """of_retrieved with an index's top titles: exact, a title scoring above the last one
    retrieved counts as retrieved; approximate, one the index missed is kept as an
    item-item candidate, and one it found is still listed once."""
    rng = np.random.default_rng(2)
    users, positions = _liked(rng, items=40, rows=600)
    index = evaluation.EaseIndex(users, positions, 40)
    module = _features_module(*ranking.ease_factors(index.eigen, index.items, 40, 5.0, rank=32), 40)
    history = tf.constant([[1, 2, 3, -1]], tf.int32)
    scores = rng.normal(size=(1, 40)).astype(np.float32)
    scores[0, [1, 2, 3]] = -np.inf
    exclusion = tf.constant(np.where(np.isfinite(scores), 0.0, -np.inf).astype(np.float32))
    item_item = module.item_item_scores(history).numpy()[0]
    proposed = [p for p in np.argsort(-np.where(np.isfinite(scores[0]), item_item, -np.inf)) if p in index.items][:4]
    # An index that missed the first item-item title, though it scores above all it returned.
    missed = int(proposed[0])
    scores[0, missed] = scores[0][np.isfinite(scores[0])].max() + 1.0
    found = [int(p) for p in np.argsort(-scores[0], kind="stable") if p != missed][:5]
    exact_top = np.argsort(-scores[0], kind="stable")[:5]
    assert missed in exact_top

    def candidates(exact: bool) -> set:
        c, _, present = module.of_retrieved(
            history,
            tf.constant([found], tf.int32),
            tf.constant(scores[:, found]),
            exclusion,
            lambda p: tf.gather(tf.constant(scores), p, batch_dims=1),
            4,
            exact=exact,
        )
        listed = c.numpy()[0][present.numpy()[0]].tolist()
        assert len(listed) == len(set(listed)), f"a title listed twice: {listed}"
        return set(listed)

    assert missed not in candidates(exact=True)
    assert candidates(exact=False) == set(found) | {int(p) for p in proposed}


def _cosine(users, positions, catalog_size):
    x = np.zeros((users.max() + 1, catalog_size))
    x[users, positions] = 1.0
    norms = np.linalg.norm(x, axis=0)
    return (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-12)


def _rows_of_scores():
    """[batch, catalog] score rows that each path of ranking.top_k meets, by name."""
    rng = np.random.default_rng(4)
    catalog = 6_000
    plain = rng.normal(size=(1, catalog)).astype(np.float32)
    # Few distinct values: ties at the k-th value, which top_k resolves by lower index.
    ties = rng.integers(0, 40, (1, catalog)).astype(np.float32)
    # Fewer unseen titles than k: the rest excluded (-inf), the threshold -inf.
    mostly_seen = np.full((1, catalog), -np.inf, np.float32)
    mostly_seen[0, rng.choice(catalog, 60, replace=False)] = rng.normal(size=60)
    # Every sampled (stride-th) title scores above every other: too few clear the threshold.
    sampled_best = rng.normal(size=(1, catalog)).astype(np.float32)
    sampled_best[0, ::10] += 100.0
    return {
        "one row": plain,
        "ties": ties,
        "mostly seen": mostly_seen,
        "too few above the threshold": sampled_best,
        "a batch": rng.normal(size=(3, catalog)).astype(np.float32),
        "no rows": np.zeros((0, catalog), np.float32),
    }


@pytest.mark.parametrize("case", list(_rows_of_scores()))
def test_top_k_gives_tf_top_k_values_and_indices(case):
    scores = _rows_of_scores()[case]
    expected = tf.math.top_k(scores, k=150)
    in_graph = tf.function(lambda s: ranking.top_k(s, 150), input_signature=[tf.TensorSpec([None, 6_000])])
    for values, indices in (ranking.top_k(tf.constant(scores), 150), in_graph(scores)):
        np.testing.assert_array_equal(indices.numpy(), expected.indices.numpy())
        np.testing.assert_array_equal(values.numpy(), expected.values.numpy())


def test_cosine_neighbours_are_each_titles_nearest_by_co_likes():
    rng = np.random.default_rng(4)
    users, positions = _liked(rng, users=20, items=10, rows=60)
    catalog_size = 13  # titles 10-12 nobody liked: no neighbours
    index = evaluation.EaseIndex(users, positions, catalog_size)
    cosine = _cosine(users, positions, catalog_size)
    neighbours, similarity = ranking.cosine_neighbours(index.gram, index.items, catalog_size, k=4, block=3)
    assert neighbours.shape == similarity.shape == (catalog_size, 4)
    assert np.all(neighbours[10:] == -1) and np.all(similarity[10:] == 0.0)
    for title in range(10):
        others = np.delete(np.arange(10), title)
        expected = np.sort(cosine[title, others])[::-1][:4]
        expected = expected[expected > 0]
        listed = neighbours[title][neighbours[title] >= 0]
        assert title not in listed
        np.testing.assert_allclose(similarity[title, : len(listed)], expected, rtol=1e-6)
        np.testing.assert_allclose(cosine[title, listed], expected, rtol=1e-6)
        assert np.all(similarity[title, len(listed) :] == 0.0)


def test_item_knn_feature_is_the_highest_similarity_to_a_liked_neighbour():
    rng = np.random.default_rng(5)
    users, positions = _liked(rng, users=25, items=16, rows=90)
    catalog_size = 16
    index = evaluation.EaseIndex(users, positions, catalog_size)
    cosine = _cosine(users, positions, catalog_size)
    np.fill_diagonal(cosine, 0.0)
    history = np.array([[0, 3, 5, -1], [7, 7, -1, -1], [2, 4, 6, 8]], np.int32)  # a title sent twice counts once
    scores = np.zeros((3, catalog_size), np.float32)
    for row, liked in enumerate(history):
        scores[row, liked[liked >= 0]] = -np.inf
    column = ranking.FEATURE_NAMES.index("item_knn_similarity")
    factors = ranking.ease_factors(index.eigen, index.items, catalog_size, 3.0, rank=16)
    for k in (15, 2):  # every other title a neighbour (exact), then only the 2 nearest
        table = ranking.cosine_neighbours(index.gram, index.items, catalog_size, k=k)
        module = _features_module(*factors, catalog_size, neighbours=table)
        candidates, features, present = (t.numpy() for t in module(tf.constant(history), tf.constant(scores), 8, 0))
        for row, liked in enumerate(history):
            liked = liked[liked >= 0]
            for title, value in zip(candidates[row][present[row]], features[row, present[row], column]):
                near = table[0][title][table[0][title] >= 0]
                expected = max([cosine[title, h] for h in liked if h in near], default=0.0)
                assert value == pytest.approx(expected, rel=1e-5)
                if k == 15:
                    assert value == pytest.approx(cosine[title, liked].max(), rel=1e-5)


def test_item_item_candidates_need_at_least_one_title():
    rng = np.random.default_rng(1)
    index = evaluation.EaseIndex(*_liked(rng, items=40, rows=600), 40)
    with pytest.raises(ValueError, match="item_item_candidate_titles must be at least 1"):
        _features_module(*ranking.ease_factors(index.eigen, index.items, 40, 5.0, rank=8), 40, candidate_titles=0)


def test_stored_user_side_is_the_one_computed_from_the_history():
    """What the serving model stores per known user (RankingFeatures.user_side_table) equals
    what a request computes from the history (new users), empty histories included."""
    rng = np.random.default_rng(4)
    users, positions = _liked(rng, items=40, rows=600)
    index = evaluation.EaseIndex(users, positions, 44)  # titles 40-43: nobody liked them, outside EASE
    module = _features_module(*ranking.ease_factors(index.eigen, index.items, 44, 5.0, rank=16), 44)
    lengths = np.array([3, 0, 7, 1, 12, 0])
    splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 40, int(splits[-1])).astype(np.int32)
    values[[0, 5]] = [41, 43]
    stored = module.user_side_table(splits, values)
    computed = module.user_side(tf.constant(two_stage.padded_histories(splits, values, np.arange(len(lengths)))))
    assert [a.shape[0] for a in stored] == [len(lengths)] * 3
    for table, runtime in zip(stored, computed):
        np.testing.assert_allclose(table, runtime.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(stored[0][0]).sum() > 0 and np.all(stored[0][1] == 0) and np.all(stored[1][5] == 0)
    np.testing.assert_allclose(np.linalg.norm(stored[1][lengths > 0], axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 44\); got -1 to"):
        module.user_side_table(splits, np.where(np.arange(len(values)) == 2, -1, values))


def test_ranker_learns_which_feature_marks_the_liked_title():
    rng = np.random.default_rng(2)
    lists, n, width = 300, 20, 4
    features = rng.normal(size=(lists, n, width)).astype(np.float32)
    labels = np.zeros((lists, n), np.float32)
    labels[np.arange(lists), features[:, :, 2].argmax(axis=1)] = 1.0  # feature 2 decides
    present = np.ones((lists, n), bool)
    ranker = ranking.fit_ranker(features[:200], labels[:200], present[:200], (8,), epochs=100, max_steps=300, members=2)
    # The served form (one MLP of all members' units, normalization folded in) is the members' mean.
    np.testing.assert_allclose(
        ranking.ServingRanker(ranker)(tf.constant(features[200:])).numpy(),
        tf.reduce_mean(ranker.member_scores(tf.constant(features[200:])), axis=0).numpy(),
        rtol=1e-4,
        atol=1e-4,
    )
    order = ranking.rerank(ranker, features[200:], present[200:])
    top = order[:, 0]
    assert (labels[200:][np.arange(100), top] == 1).mean() > 0.8
    # Padding is never ranked above a present candidate.
    present[200:, 0] = False
    order = ranking.rerank(ranker, features[200:], present[200:])
    assert np.all(order[:, -1] == 0)


@pytest.mark.parametrize("hidden_units", [(), (6,), (6, 3)])
def test_serving_ranker_computes_the_members_mean(hidden_units):
    rng = np.random.default_rng(3)
    width = 4
    ranker = ranking.Ranker(rng.normal(size=width).tolist(), rng.uniform(0.1, 3.0, width).tolist(), hidden_units, 3)
    features = tf.constant(rng.normal(size=(5, 7, width)).astype(np.float32))
    ranker(features)  # builds the members
    for scorer in ranker.scorers:  # away from the initialization's zero biases
        for layer in scorer.layers:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    served = ranking.ServingRanker(ranker)(features).numpy()
    assert served.shape == (5, 7)
    np.testing.assert_allclose(served, ranker(features).numpy(), rtol=1e-4, atol=1e-4)


def _clustered_data(users=80, seed=0) -> TrainingData:
    """Two taste groups over 24 titles (0-11 and 12-23); each user likes 10 of their group's."""
    rng = np.random.default_rng(seed)
    n_anime = 24
    catalog = Catalog(
        anime_id=np.arange(n_anime) + 100,
        anime_index=np.arange(n_anime),
        titles=np.array([f"t{i}".encode() for i in range(n_anime)]),
        genres=np.array([b"Mecha" if i < 12 else b"Romance" for i in range(n_anime)]),
        tokens={
            name: np.where(np.arange(n_anime)[:, None] < 12, 1, 2) * np.ones((1, length), np.int64)
            for name, length in f.TEXT_MAX_TOKENS.items()
        },
        mal_score=rng.uniform(6, 9, n_anime).astype(np.float32),
        members=rng.integers(100, 10_000, n_anime),
    )
    user, item = [], []
    for u in range(users):
        group = np.arange(12) + (0 if u % 2 == 0 else 12)
        for a in rng.choice(group, 10, replace=False):
            user.append(u)
            item.append(a)
    user, item = np.array(user), np.array(item)
    held = evaluation.interactions.validation_rows(user + 1000, item + 100)
    n_users = users + 1
    history_splits, history_values = _csr(user[~held], item[~held], n_users)
    validation_splits, validation_values = _csr(user[held], item[held], n_users)
    seen_splits, seen_values = _csr(user, item, n_users)
    return TrainingData(
        user_vocab_size=users,
        anime_vocab_size=n_anime,
        text_vocab_sizes={name: 3 for name in f.TEXT_MAX_TOKENS},
        catalog=catalog,
        user_ids=np.append(np.arange(users) + 1000, -1),
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
        user_index=user[~held],
        anime_index=item[~held],
        weight=np.ones(int((~held).sum()), np.float32),
        validation_splits=validation_splits,
        validation_values=validation_values,
    )


CONFIG = TrainingConfig(
    embedding_dim=8,
    ranking_candidates=6,
    item_item_candidates=4,
    item_item_rank=16,
    ease_l2_grid=(1.0, 10.0),
    popularity_prior_grid=(0.0, 0.5),
    ranker_epochs=20,
    ranker_max_steps=60,
    ranker_members=2,
    top_k=5,
)


@pytest.fixture(scope="module")
def fitted():
    data = _clustered_data()
    tf.keras.utils.set_random_seed(0)
    model = retrieval.build_model_from_config(data, CONFIG)
    model.fit(retrieval.training_dataset(data, batch_size=64), epochs=5, verbose=0)
    return data, model, two_stage.fit_second_stage(model, data, CONFIG)


def test_second_stage_is_chosen_on_validation_rows(fitted):
    data, _, stage = fitted
    report = stage.report
    assert report["validation_users"] == len(data.validation_task().users) > 0
    # Each choice is the grid's best on validation (ties to the smaller value), and the
    # scores reported are the validation users' own.
    l2_scores = {float(k): v for k, v in report["ease_l2_validation_recall@50"].items()}
    assert l2_scores == evaluation.tune_ease_l2(data.validation_task(), CONFIG.ease_l2_grid)[1]
    assert report["ease_l2"] == max(CONFIG.ease_l2_grid, key=lambda l2: (l2_scores[l2], -l2))
    prior_scores = {float(k): v for k, v in report[f"retrieval_validation_recall@{CONFIG.ranking_candidates}"].items()}
    assert len(set(prior_scores.values())) > 1, "the fixture must tell the priors apart"
    assert stage.popularity_prior == max(CONFIG.popularity_prior_grid, key=lambda p: (prior_scores[p], -p))
    assert set(report["validation_recall@50"]) >= {"retrieval only", "ease"}
    assert stage.candidates == 6 and stage.item_item_candidates == 4
    # The serving tables know every training row: validation rows are back in the item-item counts.
    log_popularity = stage.features.title_features[:, ranking.TITLE_FEATURES.index("log_popularity")]
    assert float(tf.reduce_sum(log_popularity)) == pytest.approx(
        float(np.log1p(np.bincount(np.concatenate([data.history_values, data.validation_values]), minlength=24)).sum()),
        rel=1e-5,
    )


def test_ranker_shapes_are_scored_by_cross_fitting(monkeypatch):
    data = _clustered_data(users=60, seed=1)
    config = TrainingConfig(**{**CONFIG.to_json_dict(), "ranker_hidden_units": [[], [4]]})
    model = retrieval.build_model_from_config(data, config)
    # Which users' lists each ranker is fitted on and scores (a list's features identify it).
    fitted_on, scored = [], []
    fit, rerank = ranking.fit_ranker, ranking.rerank

    def lists(features):
        return [row.tobytes() for row in features]

    def recording_fit(features, *args, **kwargs):
        fitted_on.append(lists(features))
        return fit(features, *args, **kwargs)

    def recording_rerank(ranker, features, *args, **kwargs):
        scored.append(lists(features))
        return rerank(ranker, features, *args, **kwargs)

    monkeypatch.setattr(ranking, "fit_ranker", recording_fit)
    monkeypatch.setattr(ranking, "rerank", recording_rerank)
    stage = two_stage.fit_second_stage(model, data, config)
    everyone = set(fitted_on[-1])  # the final fit, on every validation user
    assert len(everyone) == stage.report["validation_users"]
    folds = two_stage.SELECTION_FOLDS
    assert len(scored) == 2 * folds and len(fitted_on) == 2 * folds + 1
    for shape in range(2):
        held_out = [set(s) for s in scored[shape * folds : (shape + 1) * folds]]
        for fitting, scoring in zip(fitted_on[shape * folds : (shape + 1) * folds], held_out):
            assert not set(fitting) & scoring, "a ranker was scored on users it was fitted on"
            assert set(fitting) | scoring == everyone
        assert sum(len(s) for s in held_out) == len(everyone) and set.union(*held_out) == everyone
    scores = stage.report["validation_recall@50"]
    assert {"ranker []", "ranker [4]"} <= set(scores)
    assert stage.report["ranker_hidden_units"] == list(max([(), (4,)], key=lambda h: scores[f"ranker {list(h)}"]))


def test_choices_are_made_on_fewer_users_than_the_ranker_learns_from(monkeypatch):
    # EASE's L2 and the prior are scored over the whole catalog at every grid value: they
    # are chosen on at most VALIDATION_MAX_USERS users, the ranker fitted on up to
    # ranker_max_users users' lists.
    data = _clustered_data(users=60, seed=1)
    monkeypatch.setattr(evaluation, "VALIDATION_MAX_USERS", 20)
    config = TrainingConfig(**{**CONFIG.to_json_dict(), "ranker_max_users": 40})
    model = retrieval.build_model_from_config(data, config)
    stage = two_stage.fit_second_stage(model, data, config)
    assert stage.report["choice_users"] == 20 and stage.report["validation_users"] == 40
    choice = data.validation_task(max_users=20)
    _, l2_scores = evaluation.tune_ease_l2(choice, config.ease_l2_grid)
    assert stage.report["ease_l2_validation_recall@50"] == {str(k): v for k, v in l2_scores.items()}


def test_too_few_validation_users_serve_retrieval_alone():
    data = _clustered_data(users=10)
    model = retrieval.build_model_from_config(data, CONFIG)
    assert two_stage.fit_second_stage(model, data, CONFIG) is None


@pytest.fixture(scope="module")
def served(fitted, tmp_path_factory):
    data, model, stage = fitted
    full = data.with_validation_in_history()
    path = str(tmp_path_factory.mktemp("two_stage"))
    bias = retrieval.popularity_bias(full, stage.popularity_prior, CONFIG.temperature)
    embeddings = retrieval.catalog_embeddings(model, full)
    export.export_serving_model(model, full, embeddings, CONFIG.top_k, path, bias, stage)
    return full, model, stage, tf.saved_model.load(path), embeddings, bias, path


def test_served_two_stages_rank_the_candidates_as_the_ranker_does(served):
    full, model, stage, loaded, embeddings, bias, _ = served
    users = np.arange(0, 80, 7)
    out = loaded.signatures[f.RECOMMEND_SIGNATURE](
        user_id=tf.constant(users + 1000, tf.int64),
        k=tf.fill([len(users)], 5),
        exclude_anime_ids=tf.zeros([len(users), 0], tf.int64),
    )
    # A fixed width (the 24-title catalog), each row's top 5 then padding.
    assert (out[f.OUTPUT_ANIME_IDS].numpy()[:, 5:] == -1).all()
    ids = out[f.OUTPUT_ANIME_IDS].numpy()[:, :5]
    # The same computation outside the SavedModel.
    queries = retrieval.query_embeddings(model, full, users)
    scores = queries @ embeddings.T + bias
    history = two_stage.padded_histories(*two_stage.liked_positions(full), users)
    for row, user in enumerate(users):
        seen = full.seen_values[full.seen_splits[user] : full.seen_splits[user + 1]]
        scores[row, seen] = -np.inf
        assert not set(ids[row] - 100) & set(seen.tolist())
    # Retrieval's top max(N, output width): here the whole 24-title catalog.
    width = out[f.OUTPUT_ANIME_IDS].shape[1]
    candidates, features, present = stage.features(
        tf.constant(history), tf.constant(scores), max(width, stage.candidates), stage.item_item_candidates
    )
    order = ranking.rerank(stage.ranker, features.numpy(), present.numpy())
    expected = np.take_along_axis(candidates.numpy(), order, axis=1)[:, :5] + 100
    np.testing.assert_array_equal(ids, expected)
    assert np.all(np.diff(out[f.OUTPUT_SCORES].numpy()[:, :5], axis=1) <= 0)


def test_k_above_the_candidates_and_fallbacks_and_the_retrieval_ablation(served):
    full, _, stage, loaded, _, _, _ = served
    recommend = loaded.signatures[f.RECOMMEND_SIGNATURE]
    # k above N: every unseen title comes back (24 titles, 10 seen), then padding.
    out = recommend(
        user_id=tf.constant([1000], tf.int64), k=tf.constant([16]), exclude_anime_ids=tf.zeros([1, 0], tf.int64)
    )
    ids = out[f.OUTPUT_ANIME_IDS].numpy()[0]
    seen = set((full.seen_values[full.seen_splits[0] : full.seen_splits[1]] + 100).tolist())
    assert set(ids[:14].tolist()) == set(range(100, 124)) - seen and ids[14:].tolist() == [-1] * 10
    # An unknown user: the most popular titles, flagged.
    out = loaded.signatures["serving_default"](user_id=tf.constant([5], tf.int64))
    assert out[f.OUTPUT_IS_FALLBACK].numpy().tolist() == [True]
    popular = np.argsort(-full.likes_by_catalog_position(), kind="stable")[:5] + 100
    assert out[f.OUTPUT_ANIME_IDS].numpy()[0].tolist() == popular.tolist()
    # The retrieval-only signature is the first stage alone: top k by retrieval score.
    request = dict(
        user_id=tf.constant([1000, 1001], tf.int64), k=tf.constant([5, 5]), exclude_anime_ids=tf.zeros([2, 0], tf.int64)
    )
    alone = loaded.signatures[f.EVAL_RETRIEVAL_SIGNATURE](**request)
    assert np.all(np.diff(alone[f.OUTPUT_SCORES].numpy()[:, :5], axis=1) <= 0)
    both = loaded.signatures[f.EVAL_SIGNATURE](**request)
    assert not np.array_equal(alone[f.OUTPUT_SCORES].numpy(), both[f.OUTPUT_SCORES].numpy())


def test_the_retrieval_ablation_keeps_held_out_titles_and_ranks_by_retrieval_alone(fitted, tmp_path):
    """retrieve_for_eval is the Evaluator's first-stage baseline: retrieval's top k with the
    training titles excluded and the held-out ones kept (it is scored on them)."""
    data, model, stage = fitted
    full = data.with_validation_in_history()
    users = np.arange(0, 80, 9)
    bias = retrieval.popularity_bias(full, stage.popularity_prior, CONFIG.temperature)
    embeddings = retrieval.catalog_embeddings(model, full)
    scores = retrieval.query_embeddings(model, full, users) @ embeddings.T + bias
    for row, user in enumerate(users):
        scores[row, full.seen_values[full.seen_splits[user] : full.seen_splits[user + 1]]] = -np.inf
    # Each user's best unseen title by retrieval is held out for evaluation.
    best = np.argmax(scores, axis=1)
    held = full.with_heldout(users, full.catalog.anime_id[best])
    export.export_serving_model(model, held, embeddings, CONFIG.top_k, str(tmp_path), bias, stage)
    loaded = tf.saved_model.load(str(tmp_path))
    request = dict(
        user_id=tf.constant(users + 1000, tf.int64),
        k=tf.fill([len(users)], 5),
        exclude_anime_ids=tf.zeros([len(users), 0], tf.int64),
    )
    alone = loaded.signatures[f.EVAL_RETRIEVAL_SIGNATURE](**request)[f.OUTPUT_ANIME_IDS].numpy()[:, :5]
    expected = full.catalog.anime_id[np.argsort(-scores, axis=1, kind="stable")[:, :5]]
    np.testing.assert_array_equal(alone, expected)
    # recommend, as served, leaves the held-out titles out.
    served = loaded.signatures[f.RECOMMEND_SIGNATURE](**request)[f.OUTPUT_ANIME_IDS].numpy()
    assert not (served == full.catalog.anime_id[best][:, None]).any()


def test_a_scann_index_serves_the_trained_two_stages_as_the_savedmodel(served):
    """On the trained model: the index's retrieved titles (max(k, N), here N = 6 of 24, then
    the whole catalog for recommend's width) through rank_retrieved give the signatures' answers,
    unknown users' popularity order included."""
    from animerec.serving import scann_index

    full, _, _, loaded, _, _, path = served
    index = scann_index.ScannRetrieval(path)
    users = np.array([1000, 1003, 1010, 1041, 5], np.int64)  # 5: unknown
    exclude = np.full((len(users), 2), -1, np.int64)
    exclude[1:3, 1] = [101, 113]
    k = np.array([0, 3, 5, 24, 7], np.int32)
    cases = [
        (f.DEFAULT_SIGNATURE, index.top(users, np.full(len(users), 5), 5, None), {"user_id": users}),
        (
            f.RECOMMEND_SIGNATURE,
            index.top(users, k, 24, exclude),
            {"user_id": users, "k": k, "exclude_anime_ids": exclude},
        ),
    ]
    for name, got, inputs in cases:
        expected = loaded.signatures[name](**{key: tf.constant(v) for key, v in inputs.items()})
        for key, value in expected.items():
            if key == f.OUTPUT_SCORES:
                np.testing.assert_allclose(got[key], value.numpy(), rtol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(got[key], value.numpy(), err_msg=f"{name} {key}")
    assert got[f.OUTPUT_IS_FALLBACK].tolist() == [False] * 4 + [True]


def test_stored_item_item_candidates_answer_as_chosen_per_request_and_are_chosen_again_on_a_clash(served):
    """Known users' item-item candidates and their EASE scores are stored at export. Served
    with them (serving_default: N = 6 retrieved and 4 item-item of 24 titles), the top 5 are
    those the second stage computes from scratch; a request that excludes stored candidates
    (rank_retrieved, width 5) gets the answer computed from scratch with those exclusions."""
    full, model, stage, loaded, embeddings, bias, _ = served
    users = np.arange(80)
    queries = retrieval.query_embeddings(model, full, users)
    history = two_stage.padded_histories(*two_stage.liked_positions(full), users)
    stored = loaded.user_item_item_candidates.numpy()[users].astype(np.int64)  # rows of the user ids 1000 + users

    def retrieval_scores(asked: np.ndarray) -> np.ndarray:
        scores = queries @ embeddings.T + bias
        for row, user in enumerate(users):
            scores[row, full.seen_values[full.seen_splits[user] : full.seen_splits[user + 1]]] = -np.inf
            scores[row, asked[row][asked[row] >= 0]] = -np.inf
        return scores

    def from_scratch(asked: np.ndarray) -> np.ndarray:
        candidates, features, present = stage.features(
            tf.constant(history), tf.constant(retrieval_scores(asked), tf.float32), 6, 4
        )
        order = ranking.rerank(stage.ranker, features.numpy(), present.numpy())
        return np.take_along_axis(candidates.numpy(), order, axis=1)[:, :5] + 100

    nothing = np.full((len(users), 1), -1)
    out = loaded.signatures[f.DEFAULT_SIGNATURE](user_id=tf.constant(users + 1000, tf.int64))
    served_ids = out[f.OUTPUT_ANIME_IDS].numpy()
    np.testing.assert_array_equal(served_ids, from_scratch(nothing))
    retrieved = np.argsort(-retrieval_scores(nothing), axis=1, kind="stable")[:, :6]
    from_item_item = [set(a) - set(r + 100) for a, r in zip(served_ids, retrieved)]
    assert sum(map(len, from_item_item)) > 0, "some answers hold stored item-item candidates"

    asked = stored[:, :1]  # each user's best stored candidate excluded: chosen again
    expected = from_scratch(asked)
    retrieved = np.argsort(-retrieval_scores(asked), axis=1, kind="stable")[:, :6]
    rechosen = [set(e) - set(s + 100) - set(r + 100) for e, s, r in zip(expected, stored, retrieved)]
    assert sum(map(len, rechosen)) > 0, "some answers hold a candidate the stored ones did not"
    got = loaded.rank_retrieved(
        tf.constant(users + 1000, tf.int64),
        tf.fill([len(users)], 5),
        tf.constant(np.concatenate([nothing, asked + 100], axis=1), tf.int64),
        tf.constant(retrieved, tf.int32),
        tf.constant(5),
        tf.constant(True),
    )
    np.testing.assert_array_equal(got[f.OUTPUT_ANIME_IDS].numpy(), expected)


def test_stored_item_item_candidates_leave_out_held_out_titles(served, tmp_path):
    """Titles held out for evaluation are excluded from the served lists, so the stored
    candidates are chosen without them: each user's best stored candidate, held out,
    gives way to the from-scratch choice with seen and held-out titles excluded."""
    full, model, stage, loaded, embeddings, bias, _ = served
    users = np.arange(80)
    best = loaded.user_item_item_candidates.numpy()[users, 0].astype(np.int64)
    held = full.with_heldout(users, best + 100)
    path = str(tmp_path / "held")
    export.export_serving_model(model, held, embeddings, CONFIG.top_k, path, bias, stage)
    stored = tf.saved_model.load(path).user_item_item_candidates.numpy()[users].astype(np.int64)
    assert not (stored == best[:, None]).any()
    exclusion = np.zeros((len(users), len(full.catalog.anime_id)), np.float32)
    for row, user in enumerate(users):
        exclusion[row, full.seen_values[full.seen_splits[user] : full.seen_splits[user + 1]]] = -np.inf
        exclusion[row, best[row]] = -np.inf
    user_side = stage.features.user_side_table(*two_stage.liked_positions(full))[0][users]
    expected = stage.features.item_item_candidates(tf.constant(user_side), tf.constant(exclusion), stored.shape[1])
    np.testing.assert_array_equal(stored, expected.numpy())
