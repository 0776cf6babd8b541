"""preprocessing_fn through tft_beam.AnalyzeAndTransformDataset on a few rows."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from animerec import features as f
from animerec.preprocessing import preprocessing_fn


def _row(user_id, anime_id, rating=0, liked=0, name="", genres="", synopsis="", mal_score=(), members=()):
    return {
        f.MAL_SCORE: list(mal_score),
        f.MEMBERS: list(members),
        f.USER_ID: [user_id],
        f.ANIME_ID: [anime_id],
        f.RATING: [rating],
        f.LIKED: [liked],
        f.NAME: [name.encode()],
        f.GENRES: [genres.encode()],
        f.SYNOPSIS: [synopsis.encode()],
    }


ROWS = [
    # Catalog: anime 1 and 2 are liked below, anime 3 never (cold start).
    _row(
        f.NO_USER,
        1,
        name="Cowboy Bebop",
        genres="Action, Sci-Fi",
        synopsis="A bounty hunter crew in space.",
        mal_score=[8.78],
        members=[1251960],
    ),
    _row(
        f.NO_USER,
        2,
        name="Bebop Movie",
        genres="Action, Drama",
        synopsis="Another bounty in space, a movie.",
        mal_score=[8.39],
    ),
    _row(f.NO_USER, 3, name="Quiet Days", genres="Slice of Life", synopsis="Tea and school."),
    # Interactions.
    _row(7, 1, rating=9, liked=1),
    _row(7, 2, rating=0, liked=1),
    _row(8, 1, rating=8, liked=1),
    _row(8, 3, rating=3, liked=0),  # a low score: seen, not liked
    _row(8, 2, rating=0, liked=0),  # plan to watch: seen, not liked
]


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    spec = {name: tf.io.FixedLenFeature([1], tf.int64) for name in f.RAW_INT_FEATURES}
    spec.update({name: tf.io.FixedLenFeature([1], tf.string) for name in f.RAW_TEXT_FEATURES})
    spec[f.MAL_SCORE] = tf.io.VarLenFeature(tf.float32)
    spec[f.MEMBERS] = tf.io.VarLenFeature(tf.int64)
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    temp = str(tmp_path_factory.mktemp("tft"))
    with tft_beam.Context(temp_dir=temp, force_tf_compat_v1=False):
        (data, _), transform_fn = (ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
    out_dir = str(tmp_path_factory.mktemp("tft_out"))
    _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    # The raw metadata too, as TFX's Transform writes it: the Trainer parses raw examples by it.
    metadata_io.write_metadata(metadata, os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return data, tft.TFTransformOutput(out_dir)


def test_id_vocabularies(transformed):
    rows, output = transformed
    # Users come from interactions only: the catalog's -1 is out of vocabulary.
    assert output.vocabulary_by_name(f.USER_VOCAB) == [b"8", b"7"]  # by row count
    assert [r[f.USER_INDEX] for r in rows] == [2, 2, 2, 1, 1, 0, 0, 0]
    # Anime come from liked rows only, most liked first: 1 (twice), then 2. Anime 3 is OOV.
    assert output.vocabulary_by_name(f.ANIME_VOCAB) == [b"1", b"2"]
    assert [r[f.ANIME_INDEX] for r in rows] == [0, 1, 2, 0, 1, 0, 2, 1]
    assert [r[f.ANIME_ID] for r in rows] == [1, 2, 3, 1, 2, 1, 3, 2]


def test_weights_from_scores(transformed):
    rows, _ = transformed
    assert [round(float(r[f.WEIGHT]), 2) for r in rows[3:]] == [0.9, 0.8, 0.8, 0.3, 0.8]


def test_text_tokens_from_the_catalog(transformed):
    rows, output = transformed
    genre_vocab = output.vocabulary_by_name(f.TEXT_VOCAB[f.GENRE_TOKENS])
    assert set(genre_vocab) == {b"Action", b"Sci-Fi", b"Drama", b"Slice of Life"}
    assert genre_vocab[0] == b"Action"  # the most frequent first
    synopsis_vocab = output.vocabulary_by_name(f.TEXT_VOCAB[f.SYNOPSIS_TOKENS])
    assert b"bounty" in synopsis_vocab and b"a" not in synopsis_vocab  # one-letter words dropped
    for r in rows[:3]:
        for name, length in f.TEXT_MAX_TOKENS.items():
            assert 0 < len(r[name]) <= length
    bebop = rows[0]
    genres = [genre_vocab[i - 1] for i in bebop[f.GENRE_TOKENS] if i != f.PAD_TOKEN]
    assert genres == [b"Action", b"Sci-Fi"]
    name_vocab = output.vocabulary_by_name(f.TEXT_VOCAB[f.NAME_TOKENS])
    assert [name_vocab[i - 1] for i in bebop[f.NAME_TOKENS] if i] == [b"cowboy", b"bebop"]
    # Interaction rows carry no text: empty lists, so they cost nothing at 100M rows.
    assert all(len(r[name]) == 0 for r in rows[3:] for name in f.TEXT_MAX_TOKENS)


def test_catalog_metadata_passes_through_on_catalog_rows_only(transformed):
    rows, output = transformed
    assert [[round(float(v), 2) for v in r[f.MAL_SCORE]] for r in rows[:3]] == [[8.78], [8.39], []]
    assert [list(r[f.MEMBERS]) for r in rows[:3]] == [[1251960], [], []]
    assert all(len(r[f.MAL_SCORE]) == 0 and len(r[f.MEMBERS]) == 0 for r in rows[3:])
    spec = output.transformed_feature_spec()
    assert isinstance(spec[f.MAL_SCORE], tf.io.VarLenFeature) and spec[f.MAL_SCORE].dtype == tf.float32


def _raw_example(row: dict) -> bytes:
    feature = {}
    for name, values in row.items():
        if name == f.MAL_SCORE:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif values and isinstance(values[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_trainer_reads_raw_examples_through_the_transform_graph(transformed, tmp_path):
    """Transform materializes nothing: the Trainer applies its graph to the raw examples.
    Every column equals what tf.Transform's own transform gives, token lists padded to
    TEXT_MAX_TOKENS and catalog metadata as one value, 0 where absent."""
    from animerec.model.data import CATALOG_COLUMNS, INTERACTION_COLUMNS, concatenate, transformed_reader

    rows, output = transformed
    path = str(tmp_path / "part-0.gz")
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for row in ROWS:
            writer.write(_raw_example(row))
    columns = sorted(set(CATALOG_COLUMNS) | set(INTERACTION_COLUMNS))
    read = concatenate(transformed_reader(output)(path, columns, batch_size=3), columns)
    for name in columns:
        assert len(read[name]) == len(rows), name
        # One value a row; TEXT_MAX_TOKENS ids a token list; a [rows, 1] column for catalog metadata.
        width = f.TEXT_MAX_TOKENS.get(name, 1 if name in f.RAW_CATALOG_FEATURES else None)
        assert read[name].shape[1:] == (() if width is None else (width,)), (name, read[name].shape)
        for r, value in zip(rows, read[name]):
            expected = np.atleast_1d(r[name])
            if name in f.TEXT_MAX_TOKENS:
                assert value.shape == (f.TEXT_MAX_TOKENS[name],)
                n = len(expected)
                assert list(value[:n]) == list(expected) and np.all(value[n:] == f.PAD_TOKEN), name
            elif name in f.RAW_CATALOG_FEATURES:
                assert np.allclose(value, expected if len(expected) else [0]), name
            else:
                assert np.array_equal(np.atleast_1d(value), expected) or np.allclose(value, expected), name
