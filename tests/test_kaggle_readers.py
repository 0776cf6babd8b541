"""The readers on the real Kaggle sample and on hand-made rows."""

import os

import numpy as np
import pandas as pd

from animerec.data import kaggle
from tests.conftest import write_csv


def test_anime_with_synopsis_real_file(real_data_dir):
    frame, report = kaggle.read_anime_with_synopsis(os.path.join(real_data_dir, kaggle.ANIME_WITH_SYNOPSIS_CSV))
    assert len(frame) == 16214
    assert report.kept == 16214
    # The legacy "Genders" header is read as genres.
    bebop = frame[frame.anime_id == 1].iloc[0]
    assert bebop["name"] == "Cowboy Bebop"
    assert bebop["genres"].startswith("Action, Adventure")
    assert bebop["synopsis"].startswith("In the year 2071")
    # 745 placeholders and 8 empty synopses become missing text.
    assert report.repaired["synopsis placeholder treated as missing"] == 745
    assert (frame["synopsis"] == "").sum() == 745 + 8
    assert not frame["synopsis"].str.contains("No synopsis").any()
    # "Unknown" scores are NaN, not strings.
    assert frame["score"].isna().sum() == 5123
    assert frame["score"].dtype == np.float64


def test_anime_csv_real_file(real_data_dir):
    frame, report = kaggle.read_anime(os.path.join(real_data_dir, kaggle.ANIME_CSV))
    assert len(frame) == 17562 == report.kept
    assert frame["anime_id"].is_unique
    assert (frame["name"] != "").all()


def test_catalog_joins_both_files(real_data_dir):
    catalog, reports = kaggle.read_catalog(real_data_dir)
    # anime.csv has every title; the synopsis file adds text for 16,214 of them.
    assert len(catalog) == 17562
    assert catalog["anime_id"].is_monotonic_increasing
    assert (catalog["synopsis"] != "").sum() == 16214 - 745 - 8
    assert len(reports) == 2


def test_animelist_real_file_streams_in_blocks(real_data_dir):
    path = os.path.join(real_data_dir, kaggle.ANIMELIST_CSV)
    report = kaggle.ReadReport(path)
    blocks = list(kaggle.iter_animelist(path, report, block_lines=10_000))
    assert len(blocks) > 3, "the file is streamed, not read whole"
    rows = sum(len(b.user_id) for b in blocks)
    assert rows == report.rows_read == 55336
    assert report.kept == rows
    users = np.unique(np.concatenate([b.user_id for b in blocks]))
    assert len(users) == 180 and users.max() < 200
    # Every row keeps its real line number (the header is line 1).
    assert np.array_equal(np.concatenate([b.line for b in blocks]), np.arange(2, 55336 + 2))


def test_rating_complete_and_watching_status(real_data_dir):
    report = kaggle.ReadReport("rating_complete.csv")
    ratings = kaggle.read_rating_complete(os.path.join(real_data_dir, kaggle.RATING_COMPLETE_CSV), report)
    assert len(ratings) == 26177 and ratings["rating"].between(1, 10).all()
    statuses = kaggle.read_watching_status(os.path.join(real_data_dir, kaggle.WATCHING_STATUS_CSV))
    assert statuses == {
        1: "Currently Watching",
        2: "Completed",
        3: "On Hold",
        4: "Dropped",
        6: "Plan to Watch",
    }


def test_current_genres_header_is_accepted(tmp_path):
    path = tmp_path / kaggle.ANIME_WITH_SYNOPSIS_CSV
    pd.DataFrame(
        {
            "MAL_ID": [5, 1],
            "Name": ["B", "A"],
            "Score": ["Unknown", "8.1"],
            "Genres": ["Drama", "Unknown"],
            "sypnopsis": ["x", ""],
        }
    ).to_csv(path, index=False)
    frame, _ = kaggle.read_anime_with_synopsis(str(path))
    assert frame["genres"].tolist() == ["Drama", ""]
    assert np.isnan(frame["score"][0]) and frame["score"][1] == 8.1


def test_key_aligned_ranges_cut_between_users_and_read_back_every_row(tmp_path):
    rng = np.random.default_rng(3)
    lines = [f"{u},{a},{rng.integers(0, 11)},2,1\n" for u in range(40) for a in range(rng.integers(1, 30))]
    path = write_csv(
        tmp_path, kaggle.ANIMELIST_CSV, "user_id,anime_id,rating,watching_status,watched_episodes\n" + "".join(lines)
    )
    whole = list(kaggle.iter_animelist(path, kaggle.ReadReport(path)))
    ranges = kaggle.key_aligned_ranges(path, 200)
    assert len(ranges) > 5
    with open(path, "rb") as f:
        raw = f.read()
    assert ranges[0].start == raw.index(b"\n") + 1 and ranges[-1].stop == len(raw)
    for before, after in zip(ranges, ranges[1:]):
        assert before.stop == after.start
        previous_line = raw[: after.start - 1].rsplit(b"\n", 1)[-1]
        assert previous_line.split(b",")[0] != raw[after.start :].split(b",")[0]  # a cut between two users
        assert after.first_line == raw[: after.start].count(b"\n") + 1
    parts = [b for r in ranges for b in kaggle.iter_animelist(path, kaggle.ReadReport(path), byte_range=r)]
    for field in ("user_id", "anime_id", "rating", "line"):
        assert np.array_equal(
            np.concatenate([getattr(b, field) for b in parts]), np.concatenate([getattr(b, field) for b in whole])
        )
