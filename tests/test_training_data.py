"""The Trainer's inputs: CSR tables and training rows from one streaming pass, and the training batches."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from animerec import features as f
from animerec import trainer
from animerec.data import interactions
from animerec.model import data as model_data
from animerec.model import retrieval

SPEC = {
    **{name: tf.io.FixedLenFeature([1], tf.int64) for name in model_data.INTERACTION_COLUMNS},
    f.WEIGHT: tf.io.FixedLenFeature([1], tf.float32),
    f.NAME: tf.io.FixedLenFeature([1], tf.string),
    f.GENRES: tf.io.FixedLenFeature([1], tf.string),
    **{name: tf.io.VarLenFeature(tf.int64) for name in f.TEXT_MAX_TOKENS},
    f.MAL_SCORE: tf.io.VarLenFeature(tf.float32),
    f.MEMBERS: tf.io.VarLenFeature(tf.int64),
}
# (user_id, user_index, anime_id, anime_index, liked); anime 30 is out of the anime vocabulary (index 2).
INTERACTIONS = [
    (7, 1, 10, 0, 1),
    (7, 1, 20, 1, 1),
    (7, 1, 30, 2, 0),
    (8, 0, 20, 1, 1),
    (8, 0, 10, 0, 0),
    (9, 2, 10, 0, 1),
]
CATALOG = [(30, 2, b"C", b"Drama", [5]), (10, 0, b"A", b"Action", [1, 2, 3]), (20, 1, b"B", b"Action, Drama", [])]
# MyAnimeList metadata where known (anime 20 has none).
METADATA = {10: {f.MAL_SCORE: 8.5, f.MEMBERS: 1000}, 30: {f.MAL_SCORE: 6.25}}


def _example(values: dict) -> bytes:
    feature = {}
    for name, value in values.items():
        if isinstance(value, bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        elif isinstance(value, float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=np.atleast_1d(value).tolist()))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write(folder, rows, shards=2):
    os.makedirs(folder)
    writers = [tf.io.TFRecordWriter(os.path.join(folder, f"part-{i}.gz"), "GZIP") for i in range(shards)]
    for i, row in enumerate(rows):
        writers[i % shards].write(_example(row))
    for w in writers:
        w.close()


def _files(tmp_path):
    interactions = [
        {
            f.USER_ID: u,
            f.USER_INDEX: ui,
            f.ANIME_ID: a,
            f.ANIME_INDEX: ai,
            f.LIKED: liked,
            f.WEIGHT: 0.5 + ui,
            f.NAME: b"",
            f.GENRES: b"",
            **{n: [] for n in f.TEXT_MAX_TOKENS},
        }
        for u, ui, a, ai, liked in INTERACTIONS
    ]
    catalog = [
        {
            f.USER_ID: f.NO_USER,
            f.USER_INDEX: 3,
            f.ANIME_ID: a,
            f.ANIME_INDEX: ai,
            f.LIKED: 0,
            f.WEIGHT: 0.0,
            f.NAME: name,
            f.GENRES: genres,
            **{n: tokens for n in f.TEXT_MAX_TOKENS},
            **METADATA.get(a, {}),
        }
        for a, ai, name, genres, tokens in CATALOG
    ]
    _write(str(tmp_path / "Split-train"), interactions)
    _write(str(tmp_path / "Split-catalog"), catalog)
    return [str(tmp_path / "Split-train" / "*"), str(tmp_path / "Split-catalog" / "*")]


def _read(patterns, columns):
    """The rows above are written as Transform's output: parsed, not transformed again."""
    return model_data.example_batches(patterns, {name: SPEC[name] for name in columns})


def _load(files, user_vocabulary=(b"8", b"7", b"9"), anime_vocab_size=2, validation_percent=0):
    return model_data.load_training_data(
        trainer.split_patterns(files, f.TRAIN_SPLIT),
        trainer.split_patterns(files, f.CATALOG_SPLIT),
        _read,
        user_vocabulary=user_vocabulary,
        anime_vocab_size=anime_vocab_size,
        text_vocab_sizes={n: 6 for n in f.TEXT_MAX_TOKENS},
        validation_percent=validation_percent,
    )


def test_rows_must_agree_with_the_user_vocabulary(tmp_path):
    # User index 1 is user 7 in the rows; a vocabulary from another Transform run says 9.
    with pytest.raises(ValueError, match="user_index 1 of a training row with user_id 7 disagrees"):
        _load(_files(tmp_path), user_vocabulary=(b"8", b"9", b"7"))


def _rows(splits, values):
    return [sorted(values[splits[i] : splits[i + 1]].tolist()) for i in range(len(splits) - 1)]


def test_tables_from_one_streaming_pass(tmp_path):
    data = _load(_files(tmp_path))
    assert data.catalog.anime_id.tolist() == [10, 20, 30]
    assert data.catalog.titles.tolist() == [b"A", b"B", b"C"]
    tokens = data.catalog.tokens[f.SYNOPSIS_TOKENS]
    assert tokens.shape == (3, f.TEXT_MAX_TOKENS[f.SYNOPSIS_TOKENS])
    assert tokens[0, :4].tolist() == [1, 2, 3, 0] and not tokens[1].any() and tokens[2, 0] == 5
    # Row per user index, plus the empty row for unknown users.
    assert data.catalog.mal_score.tolist() == [8.5, 0.0, 6.25]  # 0 where unknown
    assert data.catalog.members.tolist() == [1000, 0, 0]
    assert data.user_ids.tolist() == [8, 7, 9, -1]
    assert _rows(data.history_splits, data.history_values) == [[1], [0, 1], [0], []]  # liked anime indices
    assert _rows(data.seen_splits, data.seen_values) == [[0, 1], [0, 1, 2], [0], []]  # catalog positions
    assert data.liked_rows == 4
    assert data.item_counts().tolist() == [2, 2, 0]


@pytest.mark.parametrize("batch_size, epochs", [(2, 2), (3, 3)])
def test_batches_hold_exactly_the_liked_rows(tmp_path, batch_size, epochs):
    data = _load(_files(tmp_path))
    # The training rows: the liked ones, with their weights.
    assert sorted(zip(data.user_index.tolist(), data.anime_index.tolist(), data.weight.tolist())) == sorted(
        (ui, ai, 0.5 + ui) for _, ui, _, ai, liked in INTERACTIONS if liked
    )
    dataset = retrieval.training_dataset(data, batch_size=batch_size, repeat=True)
    seen = collections.Counter()
    # 4 liked rows: batches of 3 span two passes, and line up with them every 3 passes.
    for user_index, anime_index, weight, history_values, history_rows in dataset.take(4 * epochs // batch_size):
        assert user_index.shape == (batch_size,)
        for row, (u, a, w) in enumerate(zip(user_index.numpy(), anime_index.numpy(), weight.numpy())):
            seen[(int(u), int(a))] += 1
            assert w == 0.5 + u
            # Each row carries its user's liked history (anime indices).
            assert (
                sorted(history_values.numpy()[history_rows.numpy() == row])
                == _rows(data.history_splits, data.history_values)[u]
            )
    # Every liked row once per pass.
    liked = collections.Counter((ui, ai) for _, ui, _, ai, liked in INTERACTIONS if liked)
    assert seen == collections.Counter({row: epochs for row in liked}) and set(liked.values()) == {1}
    # One pass (what Keras iterates once per epoch without steps): each row once, reshuffled
    # from one iteration to the next.
    one_pass = retrieval.training_dataset(data, batch_size=4)
    passes = [tuple(zip(*(t.numpy().tolist() for t in next(iter(one_pass))[:2]))) for _ in range(8)]
    assert all(sorted(p) == sorted(liked) for p in passes) and len(set(passes)) > 1


def test_split_patterns_name_the_missing_split():
    with pytest.raises(ValueError, match="no catalog split"):
        trainer.split_patterns(["/x/Split-train/*"], f.CATALOG_SPLIT)


def _weight(user: int, anime: int) -> float:
    """A weight per (user, anime), exact in float32: a row's weight names the row."""
    return user + anime / 64


def _liked_row(user: int, anime: int, index: int, weight: float = 1.0) -> dict:
    """A liked training row of user 1000 + user (index user) for anime 500 + anime (vocabulary index `index`)."""
    return {
        f.USER_ID: 1000 + user,
        f.USER_INDEX: user,
        f.ANIME_ID: 500 + anime,
        f.ANIME_INDEX: index,
        f.LIKED: 1,
        f.WEIGHT: weight,
        f.NAME: b"",
        f.GENRES: b"",
        **{n: [] for n in f.TEXT_MAX_TOKENS},
    }


def _write_splits(tmp_path, rows: list, n_users: int, index_of) -> list:
    """`rows` as the train split and anime 500 + a (vocabulary index index_of[a]) as the
    catalog split; the file patterns."""
    catalog = [
        {
            f.USER_ID: f.NO_USER,
            f.USER_INDEX: n_users,
            f.ANIME_ID: 500 + a,
            f.ANIME_INDEX: index,
            f.LIKED: 0,
            f.WEIGHT: 0.0,
            f.NAME: b"t",
            f.GENRES: b"g",
            **{n: [1] for n in f.TEXT_MAX_TOKENS},
        }
        for a, index in enumerate(index_of)
    ]
    _write(str(tmp_path / "Split-train"), rows)
    _write(str(tmp_path / "Split-catalog"), catalog)
    return [str(tmp_path / "Split-train" / "*"), str(tmp_path / "Split-catalog" / "*")]


def test_validation_rows_are_carved_out_of_histories_and_training_batches(tmp_path):
    """With validation_percent, some liked rows of users with enough history leave the
    histories and the streamed training rows; put back, they give the histories again."""
    rng = np.random.default_rng(0)
    n_users, n_anime = 30, 40
    rows = [
        _liked_row(user, anime, anime, _weight(user, anime))
        for user in range(n_users)
        for anime in rng.choice(n_anime, 12 if user < 25 else 3, replace=False)  # users 25+ have too little
    ]
    files = _write_splits(tmp_path, rows, n_users, range(n_anime))
    vocabulary = [str(1000 + user).encode() for user in range(n_users)]
    whole = _load(files, vocabulary, n_anime)
    data = _load(files, vocabulary, n_anime, validation_percent=20)
    held = _rows(data.validation_splits, data.validation_values)
    fit = _rows(data.history_splits, data.history_values)
    assert 0 < sum(map(len, held)) < 0.4 * len(rows)
    # Exactly the Evaluator's carve (interactions.validation_rows on the raw ids), which tunes
    # EASE on the same rows: not merely some fifth of each history.
    raw = np.array([(r[f.USER_ID], r[f.ANIME_ID]) for r in rows], np.int64)
    carve = interactions.validation_rows(raw[:, 0], raw[:, 1], 20)
    assert {(u, a) for u in range(n_users) for a in held[u]} == {
        (int(user) - 1000, int(anime) - 500) for user, anime in raw[carve]
    }
    assert all(not held[u] for u in range(25, n_users + 1)), "users below the minimum history keep every row"
    assert all(fit[u] for u in range(n_users)), "every user keeps rows to fit on"
    assert all(not set(fit[u]) & set(held[u]) for u in range(n_users))
    assert _rows(*_csr_of(data.with_validation_in_history())) == _rows(whole.history_splits, whole.history_values)
    # The validation task: the held-out titles are the truth, and are not excluded as seen.
    task = data.validation_task()
    for row, user in enumerate(task.users):
        assert task.truth[row] == {a for a in held[user]}  # anime index == catalog position here
        assert not task.truth[row] & set(task.seen_col[task.seen_row == row].tolist())
    # The training rows are the fitting rows only, each with its own weight, once per pass.
    user_index, anime_index, weight, *_ = next(iter(retrieval.training_dataset(data, batch_size=data.liked_rows)))
    rows = sorted(zip(user_index.numpy().tolist(), anime_index.numpy().tolist(), weight.numpy().tolist()))
    assert rows == sorted((u, a, _weight(u, a)) for u in range(n_users) for a in fit[u])


def test_likes_by_catalog_position_follows_raw_anime_ids(tmp_path):
    """Transform's anime vocabulary orders titles by frequency, not by id: anime index and
    catalog position differ. The popularity the fallback and the prior use must count each
    title's liked rows by its raw id, whatever its index."""
    rng = np.random.default_rng(1)
    n_users, n_anime = 20, 12
    index_of = rng.permutation(n_anime)  # anime 500 + a has vocabulary index index_of[a]
    liked = []
    for user in range(n_users):
        for anime in rng.choice(n_anime - 1, rng.integers(1, 8), replace=False):
            liked.append((user, anime))  # the last anime: in the catalog, liked by nobody
    rows = [_liked_row(user, anime, index_of[anime]) for user, anime in liked]
    files = _write_splits(tmp_path, rows, n_users, index_of)
    data = _load(files, [str(1000 + user).encode() for user in range(n_users)], n_anime)
    assert not np.array_equal(data.catalog.anime_index, np.arange(n_anime)), "the test needs index != position"
    counts = collections.Counter(500 + anime for _, anime in liked)
    assert data.likes_by_catalog_position().tolist() == [counts[a] for a in data.catalog.anime_id.tolist()]
    assert data.likes_by_catalog_position()[data.catalog.anime_id.tolist().index(500 + n_anime - 1)] == 0


def _csr_of(data):
    return data.history_splits, data.history_values


@pytest.mark.parametrize(
    "rows, batch_size, epochs, train_steps, expected",
    [
        (10_000, 100, 5, None, (5, 100)),  # epochs of one pass each
        (50, 100, 3, None, (3, 1)),  # fewer rows than a batch: one step a pass
        (17_800, 100, 5, 200, (2, 100)),  # 200 steps of 178-step passes: 2 epochs of 100, not 356
        (10_000, 100, 5, 20, (1, 20)),  # fewer steps than a pass
        (1_000, 100, 5, 25, (3, 9)),  # 27 steps: at most epochs - 1 more than asked
    ],
)
def test_train_steps_are_what_tfx_asked_for(rows, batch_size, epochs, train_steps, expected):
    assert trainer.epochs_and_steps(rows, batch_size, epochs, train_steps) == expected
