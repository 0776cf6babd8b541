"""Retrieval metrics on hand-computed cases, the baselines, and each branch of the blessing."""

import math

import numpy as np
import pytest

from animerec import evaluation as m
from animerec import ids as m_ids


def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert m.top_k(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert m.top_k(scores, 10).shape == (2, 5), "k is capped at the catalog size"


def test_metrics_hand_computed():
    ranked = np.array([[5, 1, 2], [7, 8, 9]])
    truth = [{1, 9}, {9}]  # user 1 has a single eval item
    got = m.retrieval_metrics(ranked, truth, catalog_size=10, ks=(1, 2, 3))
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert got["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    # NDCG@2, user 0: hit at rank 2 -> 1/log2(3); ideal: 1 + 1/log2(3).
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["ndcg@2"] == pytest.approx(ndcg_user0 / 2)
    # NDCG@3, user 1: one item, hit at rank 3 -> (1/log2(4)) / 1.
    assert got["ndcg@3"] == pytest.approx((ndcg_user0 + 0.5) / 2)
    assert got["hit_rate@2"] == 0.5 and got["hit_rate@3"] == 1.0
    assert got["coverage@50"] == pytest.approx(6 / 10)
    assert got["users"] == 2


def test_padding_is_never_a_hit_nor_coverage():
    got = m.retrieval_metrics(np.array([[3, -1, -1]]), [{3, 2}], catalog_size=4, ks=(3,))
    assert got["recall@3"] == 0.5
    assert got["coverage@50"] == 0.25


def test_recall_curve_is_monotone():
    ranked = np.array([[1, 2, 3, 4], [4, 3, 2, 1]])
    curve = m.recall_curve(ranked, [{3, 4}, {1}], ks=(1, 2, 3, 4))
    assert curve == [pytest.approx(0.0), pytest.approx(0.0), pytest.approx(0.25), pytest.approx(1.0)]


def test_popularity_and_masking():
    scores = m.popularity_scores(np.array([2, 2, 0, 2, 1]), catalog_size=4)
    assert scores.tolist() == [1, 1, 3, 0]
    masked = m.mask_seen(np.tile(scores, (2, 1)), np.array([0]), np.array([2]))
    assert m.top_k(masked, 2).tolist() == [[0, 1], [2, 0]]


def test_ease_recovers_co_occurrence():
    # Items 0 and 1 always go together; item 2 goes with 3.
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    items = np.array([0, 1, 0, 1, 2, 3, 2, 3, 0])
    weights = m.ease_item_weights(users, items, n_items=4, l2=0.5)
    assert np.all(np.diag(weights) == 0)
    assert weights[0, 1] > weights[0, 2] and weights[2, 3] > weights[2, 1]
    # User 4 liked item 0: EASE ranks item 1 first among the rest.
    x = np.zeros((1, 4), np.float32)
    x[0, 0] = 1
    scores = m.mask_seen(x @ weights, np.array([0]), np.array([0]))
    assert m.top_k(scores, 1).tolist() == [[1]]


def _metrics(model, popularity, last=None):
    out = {"model": {"recall@50": model}, "popularity": {"recall@50": popularity}}
    if last is not None:
        out["last_blessed"] = {"recall@50": last}
    return out


GATE = m.GateConfig(min_value=0.1, min_lift_over_popularity=0.2, max_regression=0.01)


def test_blessed_when_every_check_passes():
    blessed, reasons = m.decide_blessing(_metrics(0.30, 0.20, last=0.305), GATE)
    assert blessed
    assert all(r.startswith("PASS") for r in reasons)


def test_not_blessed_below_threshold():
    blessed, reasons = m.decide_blessing(_metrics(0.09, 0.01), GATE)
    assert not blessed
    assert reasons[0].startswith("FAIL: recall@50 0.0900 < threshold 0.1000")


def test_not_blessed_below_popularity_margin():
    blessed, reasons = m.decide_blessing(_metrics(0.23, 0.20), GATE)  # needs 0.24
    assert not blessed
    assert reasons[1].startswith("FAIL") and "0.2400" in reasons[1]


def test_not_blessed_on_regression_against_last_blessed():
    blessed, reasons = m.decide_blessing(_metrics(0.30, 0.20, last=0.32), GATE)
    assert not blessed
    assert reasons[2].startswith("FAIL") and "last blessed model 0.3200" in reasons[2]
    # Within the tolerance it passes.
    assert m.decide_blessing(_metrics(0.30, 0.20, last=0.309), GATE)[0]


def test_ease_is_the_closed_form_on_binary_interactions():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 30, 200), rng.integers(0, 12, 200)  # with repeated pairs
    x = np.zeros((30, 12))
    x[users, items] = 1.0
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(12))
    expected = -p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(m.ease_item_weights(users, items, n_items=12, l2=3.0), expected, rtol=1e-4, atol=1e-6)


def _task(rng, users=9, catalog_size=40, rows=90):
    train_user, train_position = rng.integers(0, users, rows), rng.integers(0, catalog_size, rows)
    liked = rng.integers(0, 2, rows) == 1
    return m.EvalData(
        catalog_size,
        train_user[liked],
        train_position[liked],
        train_user,
        train_position,
        np.arange(users),
        rng.integers(0, catalog_size, users),
    )


def test_popularity_and_ease_rankings_are_the_same_scored_in_blocks(monkeypatch):
    data = _task(np.random.default_rng(2))
    index = m.EaseIndex.of(data)
    # Weights on a 1/1024 grid: their sums are exact whatever the BLAS blocking, so no near-tie flips.
    weights = np.round(index.weights(10.0) * 1024) / 1024
    whole = m.rank_popularity(data, 10), index.rank(data, weights, 10)
    monkeypatch.setattr(m, "SCORE_BATCH", 2)
    assert np.array_equal(m.rank_popularity(data, 10), whole[0])
    assert np.array_equal(index.rank(data, weights, 10), whole[1])
    # Each user's own training titles are masked, block by block.
    for ranked in whole:
        for row in range(len(data.users)):
            seen = set(data.seen_col[data.seen_row == row].tolist())
            assert not seen & set(ranked[row].tolist())


@pytest.mark.parametrize("users, catalog_size", [(30, 12), (6, 40)])
def test_ease_index_scores_as_the_closed_form(users, catalog_size):
    """Both ways to the eigenpairs: from the titles' Gram matrix, and from the users' side
    when there are fewer users than titles."""
    rng = np.random.default_rng(3)
    data = _task(rng, users=users, catalog_size=catalog_size, rows=200)
    index = m.EaseIndex.of(data, titles_eigen_dtype=np.float64)
    assert (len(index.eigen[0]) < len(index.items)) == (users < len(index.items))
    _, rows = np.unique(data.liked_user, return_inverse=True)
    for l2 in (0.5, 5.0):
        expected = m.ease_item_weights(rows, index.column[data.liked_position], len(index.items), l2)
        np.testing.assert_allclose(index.weights(l2), expected, atol=1e-5)
        p = np.linalg.inv(index.gram + l2 * np.eye(len(index.items)))
        np.testing.assert_allclose(m.ease_inverse_diagonal(index.eigen, l2), np.diag(p), rtol=1e-6)
    # Scored straight from the eigenpairs, every L2 at once: the top 10 unseen by the closed
    # form's scores (compared by score: this tiny data has exact ties that rounding may order).
    ranked = index.rank_each(data, (0.5, 5.0), 10)
    x = np.zeros((len(data.users), len(index.items)))
    x[np.searchsorted(data.users, data.liked_user), index.column[data.liked_position]] = 1.0
    for l2 in (0.5, 5.0):
        scores = np.full((len(data.users), catalog_size), -1e9)
        scores[:, index.items] = x @ m.ease_item_weights(rows, index.column[data.liked_position], len(index.items), l2)
        scores = m.mask_seen(scores, *data.seen_in(0, len(data.users)))
        best = -np.sort(-scores, axis=1)[:, :10]
        np.testing.assert_allclose(np.take_along_axis(scores, ranked[l2], axis=1), best, atol=1e-4)


def test_single_precision_eigenpairs_score_as_double_precision():
    """The titles-side eigendecomposition runs in float32 by default: P's diagonal and the
    top titles' scores match float64's closely (compared by score: near-ties may swap), for
    more users than titles (scored through B) and fewer (straight from the eigenpairs)."""
    data = _task(np.random.default_rng(5), users=400, catalog_size=150, rows=12000)
    single, double = m.EaseIndex.of(data), m.EaseIndex.of(data, titles_eigen_dtype=np.float64)
    assert single.likes is None, "more users than titles: the titles' side"
    assert single.eigen[1].dtype == np.float32 and double.eigen[1].dtype == np.float64
    for l2 in (50.0, 400.0):
        np.testing.assert_allclose(
            m.ease_inverse_diagonal(single.eigen, l2), m.ease_inverse_diagonal(double.eigen, l2), rtol=1e-4
        )
    # The first 100 users alone (their liked titles as what they saw).
    liked = (data.liked_user, data.liked_position)
    few = m.EvalData(data.catalog_size, *liked, *liked, np.arange(100), np.zeros(100, np.int64))
    for task in (data, few):
        rows = np.isin(data.liked_user, task.users)
        x = np.zeros((len(task.users), len(double.items)))
        x[np.searchsorted(task.users, data.liked_user[rows]), double.column[data.liked_position[rows]]] = 1.0
        ranked_single, ranked_double = (index.rank_each(task, (50.0, 400.0), 20) for index in (single, double))
        for l2 in (50.0, 400.0):
            scores = np.full((len(task.users), task.catalog_size), -1e9)
            scores[:, double.items] = x @ double.weights(l2)
            scores = m.mask_seen(scores, *task.seen_in(0, len(task.users)))
            chosen, best = (np.take_along_axis(scores, r[l2], axis=1) for r in (ranked_single, ranked_double))
            np.testing.assert_allclose(chosen, best, atol=1e-4 * np.abs(best).max())
            assert np.mean(np.all(ranked_single[l2] == ranked_double[l2], axis=1)) > 0.9


def test_tune_ease_l2_picks_the_best_value_of_the_grid():
    data = _task(np.random.default_rng(4), users=40, catalog_size=30, rows=600)
    best, scores = m.tune_ease_l2(data, grid=(0.1, 10.0, 1000.0))
    assert set(scores) == {0.1, 10.0, 1000.0}
    assert scores[best] == max(scores.values())
    index = m.EaseIndex.of(data)
    assert scores[10.0] == data.metrics(index.rank_each(data, [10.0], 30)[10.0])["recall@50"]
    # A tie goes to the smaller L2, wherever it stands in the grid: a twin of the best value
    # ranks every user's titles alike.
    twin = best * (1 - 1e-9)
    tied, tied_scores = m.tune_ease_l2(data, grid=(best, twin), index=index)
    assert tied_scores[best] == tied_scores[twin] and tied == twin


def test_catalog_positions_map_padding_and_unknown_ids_to_minus_one():
    """A -1 pad (fewer titles left than k) must not become catalog position 0 and count as a hit."""
    catalog = np.array([10, 20, 30])
    assert m_ids.catalog_positions(catalog, np.array([[20, -1, 5, 30, 99]])).tolist() == [[1, -1, -1, 2, -1]]
    ranked = m_ids.catalog_positions(catalog, np.array([[20, -1, -1]]))
    assert m.retrieval_metrics(ranked, [{0, 1}], catalog_size=3, ks=(3,))["recall@3"] == 0.5


def test_slices_by_history_length_and_cold_titles():
    # Users 0 (2 liked), 1 (7 liked); title 9 was never liked in training (cold).
    liked_user = np.array([0, 0] + [1] * 7)
    liked_position = np.array([0, 1, 0, 1, 2, 3, 4, 5, 6])
    data = m.EvalData(
        10, liked_user, liked_position, liked_user, liked_position, np.array([0, 0, 1]), np.array([7, 9, 8])
    )
    ranked = np.array([[9, 2, 3], [8, 7, 9]])
    slices = data.slices(ranked, k=1)
    assert slices["history 1-5"] == {"users": 1, "recall@1": 0.5}
    assert slices["history 6-20"] == {"users": 1, "recall@1": 1.0}
    assert slices["history >100"] == {"users": 0, "recall@1": None}
    # Cold truth: user 0 {7, 9} (finds 9 first: 0.5), user 1 {8} (found: 1.0).
    assert slices["cold titles"] == {"users": 2, "recall@1": 0.75}


def test_validation_task_holds_out_liked_rows_of_users_with_enough_history():
    rng = np.random.default_rng(5)
    user_id = np.repeat(np.arange(50), 20)
    anime_id = np.tile(np.arange(20), 50)
    liked = rng.random(len(user_id)) < 0.8
    liked[user_id >= 45] &= np.tile(np.arange(20), 5) < 3  # users 45+ like 3 titles at most
    task = m.validation_task(user_id, anime_id, anime_id, liked, catalog_size=20, percent=20, min_history=5)
    assert 30 < len(task.users) <= 45 and task.users.max() < 45
    held = set(
        zip(np.repeat(task.users, [len(t) for t in task.truth]).tolist(), [p for t in task.truth for p in sorted(t)])
    )
    assert held <= set(zip(user_id[liked].tolist(), anime_id[liked].tolist()))
    assert not held & set(zip(task.liked_user.tolist(), task.liked_position.tolist()))
    assert not held & set(zip(task.users[task.seen_row].tolist(), task.seen_col.tolist()))
    # The same rows whatever the order they come in.
    order = rng.permutation(len(user_id))
    shuffled = m.validation_task(user_id[order], anime_id[order], anime_id[order], liked[order], 20, 20, 5)
    assert [sorted(t) for t in shuffled.truth] == [sorted(t) for t in task.truth]


def test_the_console_summary_reads_every_column_the_metrics_have():
    """The run's console line names its columns from the metrics' owner (evaluation.KS)."""
    from animerec.report import SUMMARY_COLUMNS, summary_line

    ranked = np.array([[1, 2, 3] + [-1] * 97, [4, 5, 6] + [-1] * 97])
    metrics = m.retrieval_metrics(ranked, [{1, 9}, {6}], catalog_size=10)
    line = summary_line("model", metrics)
    assert line.split() == ["model"] + [word for c in SUMMARY_COLUMNS for word in (c, f"{metrics[c]:.4f}")]
    assert "recall@10 0.7500" in line and "coverage@50 0.6000" in line


def test_the_evaluator_reads_the_validation_carve_the_model_shipped(tmp_path):
    import json

    from animerec import features as f
    from animerec.components.retrieval_evaluator import executor
    from animerec.config import TrainingConfig
    from animerec.data import interactions

    default = interactions.VALIDATION_PERCENT
    # An older model, without the file: the default carve, never the eval split.
    assert executor.trained_validation_percent(str(tmp_path)) == default
    path = tmp_path / f.TRAINING_CONFIG_FILE
    path.parent.mkdir()
    # A Trainer that carved none (0, or 100 and over: no user keeps a row to fit on): the default.
    for percent, expected in ((35, 35), (1, 1), (99, 99), (0, default), (100, default), (-5, default)):
        path.write_text(json.dumps({**TrainingConfig().to_json_dict(), "validation_percent": percent}))
        assert executor.trained_validation_percent(str(tmp_path)) == expected
    for bad in ("[1]", "{}", '{"validation_percent": 12.5}', '{"validation_percent": true}', "{not json"):
        path.write_text(bad)
        with pytest.raises(ValueError, match=str(path)):
            executor.trained_validation_percent(str(tmp_path))
