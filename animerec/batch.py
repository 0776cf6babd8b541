"""`animerec batch-recommend`: top k for every user the model knows, as a Beam job, to Parquet.

The seed article's "streaming" recommendations, done offline: each worker process loads
the SavedModel once and scores users in chunks through its `recommend`
signature (seen titles excluded, as online), or searches a ScaNN index over the
same arrays (`--index scann`). Runs on any Beam runner.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from animerec import features as f
from animerec.pipeline import beam_args as beam_arguments
from animerec.pipeline import worker_startup

CHUNK = 512
PARQUET_SCHEMA = pa.schema(
    [
        (f.USER_ID, pa.int64()),
        ("rank", pa.int32()),
        ("anime_id", pa.int64()),
        ("score", pa.float32()),
        ("title", pa.string()),
        ("is_fallback", pa.bool_()),
    ]
)


def known_users(model_dir: str) -> np.ndarray:
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    if not hasattr(model, "known_user_ids"):
        raise ValueError(
            f"{model_dir}: this model does not list its users (exported before animerec 0.1.0); retrain it"
        )
    return model.known_user_ids.numpy()


class _SavedModelRecommender:
    """The SavedModel's `recommend` signature (brute force), as numpy arrays."""

    def __init__(self, model_dir: str):
        import tensorflow as tf  # after animerec's TF_USE_LEGACY_KERAS

        self._tf = tf
        self._model = tf.saved_model.load(model_dir)  # the signature needs its model alive
        self._signature = self._model.signatures[f.RECOMMEND_SIGNATURE]

    def top(self, users: list, k: int) -> dict:
        tf = self._tf
        out = self._signature(
            user_id=tf.constant(users, tf.int64),
            k=tf.fill([len(users)], k),
            exclude_anime_ids=tf.fill([len(users), 1], tf.constant(-1, tf.int64)),
        )
        return {name: value.numpy() for name, value in out.items()}


class _ScannRecommender:
    """Known users' top k from a ScaNN index over the model's arrays (serving/scann_index.py)."""

    def __init__(self, model_dir: str):
        from animerec.serving.scann_index import ScannRetrieval

        self._index = ScannRetrieval(model_dir)

    def top(self, users: list, k: int) -> dict:
        # In recommend's width (k capped to it), as the SavedModel answers: a two-stage model
        # ranks max(width, N) titles whatever k is.
        width = self._index.recommend_width
        return self._index.top(np.asarray(users, np.int64), np.full(len(users), k), width, None)


RECOMMENDERS = {f.BRUTE_FORCE_INDEX: _SavedModelRecommender, f.SCANN_INDEX: _ScannRecommender}


class RecommendChunk(beam.DoFn):
    """One chunk of user ids in, one row per (user, rank) out. The model (or index) is
    loaded once per worker process and shared by its DoFn instances (Beam's Shared)."""

    def __init__(self, model_dir: str, k: int, index: str = f.BRUTE_FORCE_INDEX):
        from apache_beam.utils import shared

        if index not in RECOMMENDERS:
            raise ValueError(f"unknown index {index!r}; one of {', '.join(RECOMMENDERS)}")
        self.model_dir = model_dir
        self.k = k
        self.index = index
        self._shared = shared.Shared()
        self._model = None

    def setup(self):
        self._model = self._shared.acquire(lambda: RECOMMENDERS[self.index](self.model_dir), tag=self.index)

    def process(self, users):
        out = self._model.top(users, self.k)
        ids = out[f.OUTPUT_ANIME_IDS]
        scores = out[f.OUTPUT_SCORES]
        titles = out[f.OUTPUT_TITLES]
        fallback = out[f.OUTPUT_IS_FALLBACK]
        for row, user in enumerate(users):
            for rank in range(ids.shape[1]):
                if ids[row, rank] < 0:
                    break
                yield {
                    f.USER_ID: int(user),
                    "rank": rank + 1,
                    "anime_id": int(ids[row, rank]),
                    "score": float(scores[row, rank]),
                    "title": titles[row, rank].decode("utf-8"),
                    "is_fallback": bool(fallback[row]),
                }


def batch_recommend(
    model_dir: str,
    output_prefix: str,
    k: int = 50,
    beam_args: list[str] | None = None,
    users=None,
    index: str = f.BRUTE_FORCE_INDEX,
) -> int:
    """Writes <output_prefix>-SSSSS-of-NNNNN.parquet; returns the number of users. `index`:
    one of features.RETRIEVAL_INDEXES."""
    users = known_users(model_dir) if users is None else np.asarray(users, np.int64)
    chunks = [users[i : i + CHUNK].tolist() for i in range(0, len(users), CHUNK)]
    options = beam.options.pipeline_options.PipelineOptions(beam_args or list(beam_arguments.IN_PROCESS))
    # Local worker processes start quiet; a failing one's error reaches the caller from Beam.
    with worker_startup.quiet_workers(), worker_startup.quiet_job_service(), beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "UserChunks" >> beam.Create(chunks)
            | "Reshuffle" >> beam.Reshuffle()
            | "Recommend" >> beam.ParDo(RecommendChunk(model_dir, k, index))
            | "Write" >> beam.io.WriteToParquet(output_prefix, PARQUET_SCHEMA, file_name_suffix=".parquet")
        )
    return len(users)
