"""Batch recommendations: a real Beam job over a small exported model, read back from Parquet."""

import glob

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from animerec import batch
from animerec.model import export, retrieval
from tests.model_fixtures import small_training_data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    data = small_training_data()
    tf.keras.utils.set_random_seed(0)
    model = retrieval.build_model(data, 8, temperature=0.1, learning_rate=0.05)
    path = str(tmp_path_factory.mktemp("model"))
    export.export_serving_model(model, data, retrieval.catalog_embeddings(model, data), top_k=3, path=path)
    return path


def test_every_known_user_gets_unseen_titles(model_dir, tmp_path):
    n = batch.batch_recommend(model_dir, str(tmp_path / "recs"), k=4, beam_args=["--runner=DirectRunner"])
    assert n == 3
    files = glob.glob(str(tmp_path / "recs*.parquet"))
    assert files
    table = pq.ParquetDataset(files).read().to_pandas()
    assert set(table["user_id"]) == {100, 101, 102}
    seen = {100: {10, 20, 30}, 101: {20, 30, 40}, 102: {10}}
    for user, rows in table.groupby("user_id"):
        assert not set(rows["anime_id"]) & seen[user]
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert rows["score"].is_monotonic_decreasing
        assert len(rows) == min(4, 6 - len(seen[user])), "padding slots are not written"
    assert not table["is_fallback"].any()


def _table(prefix: str):
    return pq.ParquetDataset(glob.glob(prefix + "*.parquet")).read().to_pandas().sort_values(["user_id", "rank"])


@pytest.fixture(scope="module")
def two_stage_model_dir(tmp_path_factory):
    """A two-stage model of the default shape (random second stage), 400 titles."""
    from animerec.bench.serve import build_serving_model

    serving_dir = str(tmp_path_factory.mktemp("two_stage"))
    return build_serving_model(serving_dir, users=30, anime=400, dim=8, history=12, seen=30, second_stage=True)


@pytest.mark.parametrize("model", ["retrieval only", "two stages"])
def test_scann_index_writes_what_brute_force_writes(model, model_dir, two_stage_model_dir, tmp_path):
    path, k = (model_dir, 4) if model == "retrieval only" else (two_stage_model_dir, 50)
    batch.batch_recommend(path, str(tmp_path / "brute"), k=k, beam_args=["--runner=DirectRunner"])
    batch.batch_recommend(path, str(tmp_path / "scann"), k=k, beam_args=["--runner=DirectRunner"], index="scann")
    brute, scann = _table(str(tmp_path / "brute")), _table(str(tmp_path / "scann"))
    assert len(brute) == len(scann) > 0
    for column in ("user_id", "rank", "anime_id", "title", "is_fallback"):
        assert brute[column].tolist() == scann[column].tolist(), column
    np.testing.assert_allclose(scann["score"], brute["score"], rtol=1e-5)


def test_one_model_per_worker_process(model_dir, tmp_path, monkeypatch):
    """DoFn instances of one process share the loaded model (Beam's Shared), as RunInference does."""
    loads = []

    class Counted(batch._SavedModelRecommender):
        def __init__(self, path):
            loads.append(path)
            super().__init__(path)

    monkeypatch.setitem(batch.RECOMMENDERS, "brute_force", Counted)
    users = list(range(100, 103)) * 400  # several chunks, so several bundles and DoFn instances
    n = batch.batch_recommend(
        model_dir,
        str(tmp_path / "recs"),
        k=2,
        beam_args=["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"],
        users=users,
    )
    assert n == len(users)
    assert len(_table(str(tmp_path / "recs"))) == 2 * len(users)
    assert loads == [model_dir]
