"""What the Trainer reads from the examples through Transform's graph, as compact numpy arrays.

Each user's liked history and seen titles, the transformed catalog, and the training
rows. Histories and seen lists are CSR arrays indexed by the Transform's user index;
one extra empty row serves unknown users. They are model state (the serving model
excludes seen titles and embeds histories). They and the training rows (user index,
anime index and weight of each liked row the two-tower fits on: 12 bytes a row) come
from one streaming pass at about 13 bytes per interaction while reading.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from animerec import features as f
from animerec.data import interactions
from animerec.evaluation import EvalData
from animerec.ids import catalog_positions

READ_BATCH = 65536


@dataclasses.dataclass
class Catalog:
    anime_id: np.ndarray  # sorted raw ids; a catalog position indexes every array here
    anime_index: np.ndarray  # Transform's anime index (anime_vocab_size = out of vocabulary)
    titles: np.ndarray
    genres: np.ndarray
    tokens: dict  # text token feature -> [N, max_tokens]
    mal_score: np.ndarray  # MyAnimeList's mean score, 0 where unknown
    members: np.ndarray  # MyAnimeList members listing the title, 0 where unknown

    def positions(self, anime_id: np.ndarray) -> np.ndarray:
        """Catalog positions of raw anime ids (-1 where absent)."""
        return catalog_positions(self.anime_id, anime_id)

    def positions_of_index(self, anime_vocab_size: int) -> np.ndarray:
        """Catalog position per Transform anime index (anime_vocab_size + 1 entries, -1 where none)."""
        out = np.full(anime_vocab_size + 1, -1, np.int64)
        known = self.anime_index < anime_vocab_size
        out[self.anime_index[known]] = np.flatnonzero(known)
        return out


@dataclasses.dataclass
class TrainingData:
    user_vocab_size: int
    anime_vocab_size: int
    text_vocab_sizes: dict
    catalog: Catalog
    # Per user index (user_vocab_size + 1 rows, the last one empty).
    user_ids: np.ndarray  # raw user id per index, -1 where unknown
    history_splits: np.ndarray  # liked anime indices (validation rows left out)
    history_values: np.ndarray
    seen_splits: np.ndarray  # catalog positions of every training row (liked or not)
    seen_values: np.ndarray
    # The training rows: the liked rows the two-tower fits on (validation rows left out).
    user_index: np.ndarray | None = None
    anime_index: np.ndarray | None = None
    weight: np.ndarray | None = None
    # Catalog positions held out for eval: seen by the user, so serving excludes them too.
    heldout_splits: np.ndarray | None = None
    heldout_values: np.ndarray | None = None
    # Liked training rows held out for validation (anime indices per user index).
    validation_splits: np.ndarray | None = None
    validation_values: np.ndarray | None = None

    def with_validation_in_history(self) -> TrainingData:
        """The validation rows put back into the liked histories: what the exported model knows."""
        if self.validation_splits is None:
            return self
        n_users = len(self.history_splits) - 1
        users = np.concatenate(
            [
                np.repeat(np.arange(n_users), np.diff(self.history_splits)),
                np.repeat(np.arange(n_users), np.diff(self.validation_splits)),
            ]
        )
        splits, values = _csr(users, np.concatenate([self.history_values, self.validation_values]), n_users)
        return dataclasses.replace(
            self, history_splits=splits, history_values=values, validation_splits=None, validation_values=None
        )

    def validation_task(self, max_users: int | None = None) -> EvalData:
        """Validation as a ranking task over user indices and catalog positions: the fitting
        histories are the liked rows, every training row but the validation ones is seen."""
        n_users = len(self.history_splits) - 1
        position = self.catalog.positions_of_index(self.anime_vocab_size)
        history_user = np.repeat(np.arange(n_users), np.diff(self.history_splits))
        held_user = np.repeat(np.arange(n_users), np.diff(self.validation_splits))
        held_position = position[self.validation_values]
        seen_user = np.repeat(np.arange(n_users), np.diff(self.seen_splits))
        n_catalog = len(self.catalog.anime_id)
        seen_key = seen_user * n_catalog + self.seen_values
        keep = ~np.isin(seen_key, held_user * n_catalog + held_position)
        return EvalData(
            n_catalog,
            history_user,
            position[self.history_values],
            seen_user[keep],
            self.seen_values[keep],
            held_user,
            held_position,
            max_users=max_users,
        )

    def with_heldout(self, user_index: np.ndarray, anime_id: np.ndarray) -> TrainingData:
        """Adds the eval split's rows (raw anime ids by user index) as held-out seen titles."""
        splits, values = _csr(user_index, self.catalog.positions(anime_id), self.user_vocab_size + 1)
        return dataclasses.replace(self, heldout_splits=splits, heldout_values=values)

    @property
    def candidate_tokens_by_anime_index(self) -> dict:
        """Text tokens per anime index, for gathering a batch's candidate features."""
        out = {}
        known = self.catalog.anime_index < self.anime_vocab_size
        for name, tokens in self.catalog.tokens.items():
            table = np.zeros((self.anime_vocab_size + 1, tokens.shape[1]), dtype=np.int64)
            table[self.catalog.anime_index[known]] = tokens[known]
            out[name] = table
        return out

    @property
    def liked_rows(self) -> int:
        return int(self.history_splits[-1])

    def item_counts(self) -> np.ndarray:
        """Liked training rows per anime index (the histories hold exactly the liked rows)."""
        return np.bincount(self.history_values, minlength=self.anime_vocab_size + 1)

    def likes_by_catalog_position(self) -> np.ndarray:
        """Liked training rows per catalog position (0 for titles nobody liked)."""
        counts = np.zeros(len(self.catalog.anime_id), np.float64)
        known = self.catalog.anime_index < self.anime_vocab_size
        counts[known] = self.item_counts()[self.catalog.anime_index[known]]
        return counts


def _dense(features: dict, rows: tf.Tensor) -> dict:
    """Sparse features made dense: token lists padded to TEXT_MAX_TOKENS, optional catalog
    values one value, 0 where absent."""
    out = dict(features)
    for name, value in features.items():
        if isinstance(value, tf.sparse.SparseTensor):
            shape = tf.stack([rows, f.TEXT_MAX_TOKENS.get(name, 1)])
            out[name] = tf.sparse.to_dense(
                tf.sparse.reset_shape(value, shape), default_value=tf.constant(f.PAD_TOKEN, value.dtype)
            )
    return out


def dense_parser(feature_spec: dict):
    """tf.io.parse_example, with the variable-length token features padded to TEXT_MAX_TOKENS."""

    @tf.autograph.experimental.do_not_convert  # plain Python around the ops: nothing to convert
    def parse(serialized: tf.Tensor) -> dict:
        return _dense(tf.io.parse_example(serialized, feature_spec), tf.shape(serialized, out_type=tf.int64)[0])

    return parse


def as_patterns(file_patterns) -> list[str]:
    return [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)


def glob_files(file_patterns) -> tuple[list[str], str]:
    """The files matching the patterns, sorted, and their TFRecord compression ("GZIP" or "")."""
    files = sorted(p for pattern in as_patterns(file_patterns) for p in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no example files match {file_patterns}")
    return files, "GZIP" if files[0].endswith(".gz") else ""


def _parsed_batches(file_patterns, parse, batch_size: int):
    """Streams (gzipped) TFRecords as dicts of numpy arrays, `parse` applied to each batch."""
    files, compression = glob_files(file_patterns)
    # One reader: parallel reads hand every small record between threads, 9x slower here.
    dataset = tf.data.TFRecordDataset(files, compression_type=compression)
    return dataset.batch(batch_size).map(parse, num_parallel_calls=2).prefetch(2).as_numpy_iterator()


def example_batches(file_patterns, feature_spec: dict, batch_size: int = READ_BATCH):
    """Streams (gzipped) TFRecords of tf.Examples as dicts of numpy arrays, batch by batch."""
    return _parsed_batches(file_patterns, dense_parser(feature_spec), batch_size)


def transformed_reader(tf_transform_output):
    """A function (file_patterns, columns) that streams raw (gzipped) TFRecords of
    tf.Examples through Transform's graph (its Keras layer, as TFX's Trainers apply it to
    raw examples): dicts of numpy arrays of the transformed `columns`, batch by batch.
    Transform materializes nothing: it analyzes, and the graph it exports is the one owner
    of every transformed feature. The graph is loaded once, for every split read."""
    raw_spec = tf_transform_output.raw_feature_spec()
    layer = tf_transform_output.transform_features_layer()

    def read(file_patterns, columns, batch_size: int = READ_BATCH):
        # Without AutoGraph: nothing here to convert, and converting the layer's call took 3.4 s a read.
        @tf.autograph.experimental.do_not_convert
        def transform(serialized: tf.Tensor) -> dict:
            transformed = layer(tf.io.parse_example(serialized, raw_spec))
            return _dense({name: transformed[name] for name in columns}, tf.shape(serialized, out_type=tf.int64)[0])

        return _parsed_batches(file_patterns, transform, batch_size)

    return read


def read_examples(file_patterns, feature_spec: dict) -> dict[str, np.ndarray]:
    """Reads (gzipped) TFRecords of tf.Examples into numpy columns (for small splits)."""
    return concatenate(example_batches(file_patterns, feature_spec), feature_spec)


def concatenate(batches, columns) -> dict[str, np.ndarray]:
    """Batches (dicts of numpy arrays) as one array per column."""
    parts: dict[str, list] = {name: [] for name in columns}
    for batch in batches:
        for name in columns:
            parts[name].append(batch[name])
    return {name: np.concatenate(p) if p else np.zeros((0,), dtype=np.int64) for name, p in parts.items()}


def _csr(rows: np.ndarray, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    splits = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=splits[1:])
    return splits, values[order].astype(np.int64)


CATALOG_COLUMNS = (f.ANIME_ID, f.ANIME_INDEX, f.NAME, f.GENRES, *f.TEXT_MAX_TOKENS, *f.RAW_CATALOG_FEATURES)
INTERACTION_COLUMNS = (f.USER_ID, f.USER_INDEX, f.ANIME_ID, f.ANIME_INDEX, f.LIKED, f.WEIGHT)


def catalog_from_columns(columns: dict[str, np.ndarray]) -> Catalog:
    """The transformed catalog split's rows, sorted by raw anime id."""
    flat = {k: v.reshape(len(v), -1) if k in f.TEXT_MAX_TOKENS else v.reshape(-1) for k, v in columns.items()}
    order = np.argsort(flat[f.ANIME_ID], kind="stable")
    return Catalog(
        anime_id=flat[f.ANIME_ID][order],
        anime_index=flat[f.ANIME_INDEX][order],
        titles=flat[f.NAME][order],
        genres=flat[f.GENRES][order],
        tokens={name: flat[name][order] for name in f.TEXT_MAX_TOKENS},
        mal_score=flat[f.MAL_SCORE][order].astype(np.float32),
        members=flat[f.MEMBERS][order].astype(np.int64),
    )


def load_training_data(
    train_patterns,
    catalog_patterns,
    read_batches,
    user_vocabulary,
    anime_vocab_size: int,
    text_vocab_sizes: dict,
    validation_percent: int = 0,
) -> TrainingData:
    """The catalog, the per-user tables and the training rows, from one streaming pass over
    the training split.

    `read_batches(file_patterns, columns)`: the transformed `columns` of the examples,
    as dicts of numpy arrays batch by batch (transformed_reader's, in the Trainer).
    `user_vocabulary`: Transform's user vocabulary (raw user ids, as bytes or numbers, by
    user index), the one record of which index stands for which user; every row's
    user_index must agree with it. Six narrow columns are read, kept as int32 while
    streaming: no text. With validation_percent, liked rows carved out per user
    (interactions.is_validation) are kept apart from the histories and the training rows.
    """
    catalog = catalog_from_columns(concatenate(read_batches(catalog_patterns, CATALOG_COLUMNS), CATALOG_COLUMNS))
    user_vocab_size = len(user_vocabulary)
    # + the empty row for unknown users (user_id -1)
    user_ids = np.append(np.asarray([int(u) for u in user_vocabulary], np.int64), -1)
    n_users = user_vocab_size + 1
    users, items, positions, liked, weights = [], [], [], [], []
    for batch in read_batches(train_patterns, INTERACTION_COLUMNS):
        user_index = batch[f.USER_INDEX].reshape(-1)
        user_id = batch[f.USER_ID].reshape(-1)
        wrong = (user_index < user_vocab_size) & (user_ids[np.minimum(user_index, user_vocab_size)] != user_id)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise ValueError(
                f"{f.USER_INDEX} {user_index[i]} of a training row with {f.USER_ID} {user_id[i]} disagrees with "
                f"Transform's user vocabulary ({user_ids[user_index[i]]}): the examples and the vocabulary come "
                "from different Transform runs"
            )
        keep = batch[f.LIKED].reshape(-1) == 1
        users.append(user_index.astype(np.int32))
        items.append(batch[f.ANIME_INDEX].reshape(-1).astype(np.int32))
        positions.append(catalog.positions(batch[f.ANIME_ID].reshape(-1)).astype(np.int32))
        liked.append(keep)
        weights.append(batch[f.WEIGHT].reshape(-1)[keep].astype(np.float32))
    users, liked, items, positions = (np.concatenate(c) for c in (users, liked, items, positions))
    weights = np.concatenate(weights)  # liked rows only
    validation = {}
    fit = liked
    if validation_percent > 0:
        user_id, anime_id = user_ids[users[liked]], catalog.anime_id[positions[liked]]
        held = np.zeros(len(users), dtype=bool)
        held[liked] = interactions.validation_rows(user_id, anime_id, validation_percent)
        fit = liked & ~held
        splits, values = _csr(users[held], items[held], n_users)
        validation = dict(
            validation_splits=splits,
            validation_values=values,
        )
    history_splits, history_values = _csr(users[fit], items[fit], n_users)
    seen_splits, seen_values = _csr(users, positions, n_users)
    return TrainingData(
        **validation,
        user_vocab_size=user_vocab_size,
        anime_vocab_size=anime_vocab_size,
        text_vocab_sizes=text_vocab_sizes,
        catalog=catalog,
        user_ids=user_ids,
        history_splits=history_splits,
        history_values=history_values,
        seen_splits=seen_splits,
        seen_values=seen_values,
        user_index=users[fit],
        anime_index=items[fit],
        weight=weights[fit[liked]],
    )
