"""The converter's records: what ExampleGen imports."""

import glob
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from animerec import features as f
from animerec.data import convert, interactions

SPEC = {
    **{name: tf.io.FixedLenFeature([], tf.int64) for name in f.RAW_INT_FEATURES},
    **{name: tf.io.FixedLenFeature([], tf.string) for name in f.RAW_TEXT_FEATURES},
}


def _read(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        for batch in tf.data.TFRecordDataset(path).batch(65536):
            parsed = {name: value.numpy().tolist() for name, value in tf.io.parse_example(batch, SPEC).items()}
            rows.extend(dict(zip(parsed, values)) for values in zip(*parsed.values()))
    return rows


def test_column_blocks_become_one_record_per_row_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "ROWS_PER_SHARD", 3)
    writer = convert._ExampleWriter(str(tmp_path / "train"), "interactions")
    users, anime = np.array([5, 5, 5, 6, 6, 7, 7, 7]), np.array([10, 11, 12, 10, 13, 14, 10, 11])
    for block in (slice(0, 5), slice(5, 8)):
        ints = {
            f.USER_ID: users[block],
            f.ANIME_ID: anime[block],
            f.RATING: anime[block] % 10,
            f.LIKED: users[block] % 2,
        }
        writer.write_columns(ints)
    writer.close()
    shards = sorted(glob.glob(str(tmp_path / "train" / "*")))
    assert [os.path.basename(p) for p in shards] == [f"interactions-0000{i}.tfrecord" for i in range(3)]
    assert [len(_read(p)) for p in shards] == [3, 3, 2]
    rows = _read(str(tmp_path / "train" / "*"))
    assert [(r[f.USER_ID], r[f.ANIME_ID], r[f.RATING], r[f.LIKED]) for r in rows] == [
        (u, a, a % 10, u % 2) for u, a in zip(users, anime)
    ]
    # Interaction rows carry the text features too, empty: one dense schema for every split.
    assert all(r[f.NAME] == r[f.GENRES] == r[f.SYNOPSIS] == b"" for r in rows)


def test_real_sample_converts_row_for_row(real_data_dir, tmp_path):
    report = convert.convert_kaggle(real_data_dir, str(tmp_path / "out"), progress=lambda _: None)
    train = _read(str(tmp_path / "out" / f.TRAIN_SPLIT / "*"))
    evaluation = _read(str(tmp_path / "out" / f.EVAL_SPLIT / "*"))
    catalog = _read(str(tmp_path / "out" / f.CATALOG_SPLIT / "*"))
    assert len(train) == report["interactions"]["train_rows"] and len(evaluation) == report["interactions"]["eval_rows"]
    # Every record is a row of animelist.csv, with the liked flag the filter gives it.
    csv = pd.read_csv(os.path.join(real_data_dir, "animelist.csv"))
    liked = interactions.LikedFilter().classify(csv["rating"].to_numpy(), csv["watching_status"].to_numpy())
    expected = {
        (u, a): (r, int(k == interactions.REASONS.index(interactions.LIKED)))
        for u, a, r, k in zip(csv["user_id"], csv["anime_id"], csv["rating"], liked)
    }
    for row in train + evaluation:
        assert expected[(row[f.USER_ID], row[f.ANIME_ID])] == (row[f.RATING], row[f.LIKED])
    assert all(row[f.LIKED] == 1 for row in evaluation)
    # The catalog keeps its text, UTF-8 encoded.
    assert len(catalog) == report["catalog_size"]
    assert all(row[f.USER_ID] == f.NO_USER for row in catalog)
    by_id = {row[f.ANIME_ID]: row for row in catalog}
    synopses = pd.read_csv(os.path.join(real_data_dir, "anime_with_synopsis.csv"))
    first = synopses.iloc[0]
    assert by_id[first["MAL_ID"]][f.NAME].decode("utf-8") == first["Name"]


def _pairs(rows: list[dict]) -> list[tuple]:
    return [(r[f.USER_ID], r[f.ANIME_ID], r[f.RATING], r[f.LIKED]) for r in rows]


def test_interactions_come_out_in_one_global_random_order(real_data_dir, tmp_path, monkeypatch):
    # ExampleGen writes records in the converter's order, the only shuffle they get before
    # the Trainer: rows must not stay grouped by user, in any shard.
    monkeypatch.setattr(convert, "ROWS_PER_SHARD", 10_000)
    buckets = convert.shuffle_buckets(os.path.join(real_data_dir, "animelist.csv"))
    assert buckets > 1
    report = convert.convert_kaggle(real_data_dir, str(tmp_path / "a"), progress=lambda _: None)
    shards = sorted(glob.glob(str(tmp_path / "a" / f.TRAIN_SPLIT / "*")))
    assert len(shards) == buckets
    assert not os.path.exists(tmp_path / "a" / f.TRAIN_SPLIT / "spill")
    rows = [_pairs(_read(path)) for path in shards]
    flat = [row for shard in rows for row in shard]
    assert len(flat) == report["interactions"]["train_rows"]
    assert len(set(flat)) == len(flat)  # each kept row exactly once
    for shard in rows:
        users = np.array([row[0] for row in shard])
        # Grouped by user, a shard changes user about once per user; shuffled, at almost every row.
        assert (users[1:] != users[:-1]).mean() > 0.8
        assert len(shard) < 2 * len(flat) / buckets
    # Read in many user-aligned ranges (in parallel on a multi-worker runner), the same
    # rows come out, with the same counts; and the same settings give the same order.
    monkeypatch.setattr(convert, "RANGE_BYTES", 100_000)
    ranged = [
        convert.convert_kaggle(real_data_dir, str(tmp_path / name), progress=lambda _: None) for name in ("b", "c")
    ]
    assert ranged[0]["ranges"] > 5
    assert ranged[0]["interactions"] == report["interactions"]
    assert ranged[0]["animelist"] == report["animelist"]
    outputs = [
        [_pairs(_read(p)) for p in sorted(glob.glob(str(tmp_path / name / f.TRAIN_SPLIT / "*")))] for name in "bc"
    ]
    assert sorted(row for shard in outputs[0] for row in shard) == sorted(flat)
    assert outputs[0] == outputs[1]


def test_rows_in_any_order_give_the_same_splits(real_data_dir, tmp_path, monkeypatch):
    with open(os.path.join(real_data_dir, "animelist.csv")) as fh:
        header, *lines = fh.readlines()
    # A duplicate (user, anime) row with another rating, after the original: the first
    # row in the file wins, in either order.
    user, anime, *_ = lines[100].split(",")
    duplicate = f"{user},{anime},1,2,0\n"
    grouped_lines = lines[:101] + [duplicate] + lines[101:]
    # The same rows in another order (a re-export in time order, say).
    shuffled_lines = [grouped_lines[i] for i in np.random.default_rng(4).permutation(len(grouped_lines))]
    first, second = shuffled_lines.index(lines[100]), shuffled_lines.index(duplicate)
    shuffled_lines[min(first, second)], shuffled_lines[max(first, second)] = lines[100], duplicate
    folders = {}
    for name, rows in (("grouped", grouped_lines), ("shuffled", shuffled_lines)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for other in os.listdir(real_data_dir):
            if other != "animelist.csv":
                os.symlink(os.path.join(real_data_dir, other), folders[name] / other)
        with open(folders[name] / "animelist.csv", "w") as fh:
            fh.writelines([header] + rows)
    # Several ranges and buckets, as a big file gets on a multi-worker runner.
    monkeypatch.setattr(convert, "RANGE_BYTES", 100_000)
    monkeypatch.setattr(convert, "ROWS_PER_SHARD", 10_000)
    grouped = convert.convert_kaggle(str(folders["grouped"]), str(tmp_path / "a"), progress=lambda _: None)
    messages = []
    regrouped = convert.convert_kaggle(str(folders["shuffled"]), str(tmp_path / "b"), progress=messages.append)
    assert not grouped["regrouped"] and regrouped["regrouped"] and regrouped["ranges"] > 5
    assert any("appears again" in m and "regrouping" in m for m in messages)
    assert regrouped["interactions"] == grouped["interactions"]
    assert regrouped["animelist"]["set_aside"] == grouped["animelist"]["set_aside"] == {interactions.DUPLICATE: 1}
    assert regrouped["animelist"]["rows_read"] == grouped["animelist"]["rows_read"] == len(grouped_lines)
    for split in (f.TRAIN_SPLIT, f.EVAL_SPLIT):
        rows = [sorted(_pairs(_read(str(tmp_path / name / split / "*")))) for name in "ab"]
        assert rows[0] == rows[1], f"the {split} split differs"
    kept = [row for row in _pairs(_read(str(tmp_path / "b" / "*" / "*"))) if row[:2] == (int(user), int(anime))]
    assert len(kept) == 1 and kept[0][2] != 1, "the first row of the duplicate pair is kept"
    assert not os.path.exists(tmp_path / "b" / "spill")
