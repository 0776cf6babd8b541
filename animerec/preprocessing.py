"""The Transform step: id vocabularies and text vectorization (`preprocessing_fn`).

Vocabularies are analyzed on the rows they describe: user and anime ids on
training interactions (anime ids on liked rows only, so a title nobody liked
is out of vocabulary and is retrieved through its text), name, genre and
synopsis tokens on catalog rows. Token ids are shifted by one so that 0 is
padding and out-of-vocabulary; text outputs are variable-length lists of at
most TEXT_MAX_TOKENS ids, empty on interaction rows. MAL's score and member
count pass through (catalog rows only).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from animerec import features as f

# Weight of an unscored liked row, on the 0-10 rating scale.
UNSCORED_RATING = 8.0
WORD_PATTERN = r"[^a-z0-9]+"


def _squeeze(x: tf.Tensor) -> tf.Tensor:
    return tf.reshape(x, [-1])


def _rows_where(ragged: tf.RaggedTensor, keep: tf.Tensor) -> tf.Tensor:
    """The flat tokens of the rows where `keep` is true."""
    return tf.boolean_mask(ragged.flat_values, tf.repeat(keep, ragged.row_lengths()))


def _words(text: tf.Tensor) -> tf.RaggedTensor:
    text = tf.strings.regex_replace(tf.strings.lower(text), WORD_PATTERN, " ")
    tokens = tf.strings.split(tf.strings.strip(text))
    return tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 1)


def _genres(text: tf.Tensor) -> tf.RaggedTensor:
    tokens = tf.strings.strip(tf.strings.split(text, sep=","))
    return tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)


def _token_ids(tokens: tf.RaggedTensor, is_catalog: tf.Tensor, output: str) -> tf.SparseTensor:
    """Variable-length ids (at most max_tokens): vocabulary index + 1, 0 for OOV.

    Sparse, not padded: interaction rows have no text, and a dense output would
    give each of them max_tokens zeros to carry through Transform and the Trainer
    (most of the bytes at 100M rows). The Trainer pads catalog rows itself.
    """
    tokens = tokens[:, : f.TEXT_MAX_TOKENS[output]]
    vocab = tft.vocabulary(
        _rows_where(tokens, is_catalog),
        top_k=f.TEXT_VOCAB_SIZE[output],
        vocab_filename=f.TEXT_VOCAB[output],
    )
    ids = tft.apply_vocabulary(tokens.flat_values, vocab, default_value=-1) + 1
    return tokens.with_flat_values(ids).to_sparse()


def preprocessing_fn(inputs: dict) -> dict:
    """tf.Transform callback over all three splits (train, eval, catalog)."""
    user_id = _squeeze(inputs[f.USER_ID])
    anime_id = _squeeze(inputs[f.ANIME_ID])
    rating = _squeeze(inputs[f.RATING])
    liked = _squeeze(inputs[f.LIKED])
    is_catalog = tf.equal(user_id, f.NO_USER)
    is_positive = tf.logical_and(tf.logical_not(is_catalog), tf.equal(liked, 1))

    user_key = tf.strings.as_string(user_id)
    anime_key = tf.strings.as_string(anime_id)
    user_vocab = tft.vocabulary(tf.boolean_mask(user_key, tf.logical_not(is_catalog)), vocab_filename=f.USER_VOCAB)
    anime_vocab = tft.vocabulary(tf.boolean_mask(anime_key, is_positive), vocab_filename=f.ANIME_VOCAB)

    scale = tf.where(rating > 0, tf.cast(rating, tf.float32), UNSCORED_RATING)
    outputs = {
        # Raw ids pass through: serving looks users up by raw id, results name raw anime ids.
        f.USER_ID: user_id,
        f.ANIME_ID: anime_id,
        f.LIKED: liked,
        # Titles and genres as written, for the serving outputs.
        f.NAME: _squeeze(inputs[f.NAME]),
        f.GENRES: _squeeze(inputs[f.GENRES]),
        f.USER_INDEX: tft.apply_vocabulary(user_key, user_vocab, num_oov_buckets=1),
        f.ANIME_INDEX: tft.apply_vocabulary(anime_key, anime_vocab, num_oov_buckets=1),
        f.WEIGHT: scale / 10.0,
    }
    # Catalog metadata passes through as it came: zero or one value, on catalog rows only.
    for name in f.RAW_CATALOG_FEATURES:
        outputs[name] = inputs[name]
    for raw, output in f.TEXT_TOKEN_FEATURES.items():
        text = _squeeze(inputs[raw])
        tokens = _genres(text) if raw == f.GENRES else _words(text)
        outputs[output] = _token_ids(tokens, is_catalog, output)
    return outputs
