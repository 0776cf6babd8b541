"""Retrieval metrics on hand-computed cases, the baselines, and each branch of the blessing."""

import math

import numpy as np
import pytest

from animerec.components.retrieval_evaluator import metrics as m


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


def test_popularity_ranking_is_the_same_scored_in_blocks(monkeypatch):
    from animerec import features as f
    from animerec.components.retrieval_evaluator import executor

    rng = np.random.default_rng(2)
    catalog = np.arange(100, 140)
    train = {f.USER_ID: rng.integers(0, 9, 90), f.ANIME_ID: rng.choice(catalog, 90), f.LIKED: rng.integers(0, 2, 90)}
    eval_ = {f.USER_ID: np.arange(9), f.ANIME_ID: rng.choice(catalog, 9), f.LIKED: np.ones(9, np.int64)}
    data = executor.EvalData(train, eval_, catalog)
    whole = executor.rank_popularity(data, 10)
    monkeypatch.setattr(executor, "SCORE_BATCH", 2)
    assert np.array_equal(executor.rank_popularity(data, 10), whole)
    # Each user's own training titles are masked, block by block.
    for row in range(len(data.users)):
        seen = set(data.seen_col[data.seen_row == row].tolist())
        assert not seen & set(whole[row].tolist())
