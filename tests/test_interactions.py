"""The liked filter and the per-user split on hand-made rows."""

import numpy as np

from animerec.data import interactions, kaggle
from animerec.data.interactions import REASONS, LikedFilter, SplitConfig


def _reasons(codes):
    return [REASONS[c] for c in codes]


def test_liked_filter_each_case():
    rating = np.array([9, 7, 6, 0, 0, 10, 0, 8, 0])
    status = np.array([2, 1, 2, 2, 1, 4, 6, 3, 3])
    got = _reasons(LikedFilter(min_score=7).classify(rating, status))
    assert got == [
        interactions.LIKED,  # completed, 9
        interactions.LIKED,  # watching, 7 (threshold is inclusive)
        interactions.LOW_SCORE,  # completed, 6
        interactions.LIKED,  # completed, unscored
        interactions.LIKED,  # watching, unscored
        interactions.DROPPED,  # dropped even with a 10
        interactions.PLAN_TO_WATCH,
        interactions.ON_HOLD,  # on hold, scored
        interactions.ON_HOLD,  # on hold, nothing watched
    ]


def test_liked_filter_is_configurable():
    rating = np.array([6, 0, 0])
    status = np.array([2, 2, 1])
    strict = LikedFilter(min_score=5, keep_unscored_completed=False, keep_unscored_watching=False)
    assert _reasons(strict.classify(rating, status)) == [
        interactions.LIKED,
        interactions.UNSCORED,
        interactions.UNSCORED,
    ]


def test_split_hash_is_stable_and_spread():
    users = np.repeat(np.arange(200), 50)
    anime = np.tile(np.arange(50), 200)
    buckets = interactions.split_hash(users, anime)
    assert np.array_equal(buckets, interactions.split_hash(users, anime))
    assert buckets.min() >= 0 and buckets.max() <= 99
    assert abs((buckets < 20).mean() - 0.2) < 0.03
    assert not np.array_equal(buckets, interactions.split_hash(users, anime, seed=1))


def test_assign_eval_keeps_history_for_every_eval_user():
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(300), 12)
    anime = rng.integers(0, 10_000, len(user))
    liked = rng.random(len(user)) < 0.8
    config = SplitConfig(eval_percent=30, min_history=5)
    is_eval = interactions.assign_eval(user, anime, liked, config)
    assert not (is_eval & ~liked).any(), "only liked rows are held out"
    for u in range(300):
        rows = user == u
        if is_eval[rows].any():
            assert liked[rows].sum() >= 5
            assert (liked[rows] & ~is_eval[rows]).any(), f"user {u} has eval rows but no training history"
    assert 0.2 < is_eval.sum() / liked.sum() < 0.35


def test_users_below_min_history_stay_in_train():
    user = np.array([1, 1, 1, 2, 2, 2, 2, 2, 2])
    anime = np.arange(9)
    liked = np.ones(9, dtype=bool)
    is_eval = interactions.assign_eval(user, anime, liked, SplitConfig(eval_percent=100, min_history=4))
    # User 1 has 3 liked rows (< 4): train only. User 2 would lose all rows to eval: kept in train.
    assert not is_eval.any()
    is_eval = interactions.assign_eval(user, anime, liked, SplitConfig(eval_percent=99, min_history=4))
    assert not is_eval[:3].any()


def test_scan_labels_real_sample(real_data_dir):
    import os

    catalog, _ = kaggle.read_catalog(real_data_dir)
    path = os.path.join(real_data_dir, kaggle.ANIMELIST_CSV)
    report = kaggle.ReadReport(path)
    stats = interactions.ScanStats()
    blocks = list(
        interactions.scan_animelist(
            path, catalog["anime_id"].to_numpy(), LikedFilter(), SplitConfig(), report, stats, block_lines=7000
        )
    )
    rows = sum(len(b.user_id) for b in blocks)
    assert rows == 55336 == stats.train_rows + stats.eval_rows
    assert stats.users == 180
    # Blocks hold whole users even though 7,000-line blocks cut users apart.
    users = [u for b in blocks for u in np.unique(b.user_id)]
    assert len(users) == len(set(users)) == 180
    liked = sum(int(b.liked.sum()) for b in blocks)
    assert liked == stats.rows_by_reason[interactions.LIKED]
    assert all((b.liked[b.is_eval]).all() for b in blocks)
    assert 0.15 < stats.eval_rows / liked < 0.25
