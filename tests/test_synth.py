"""The generator writes the Kaggle schema, deterministically, with learnable structure."""

import filecmp
import os

import numpy as np
import pandas as pd

from animerec.data import kaggle, synth
from animerec.data.summary import summarize


def test_files_have_the_kaggle_headers(tiny_synth_dir, real_data_dir):
    for name in (kaggle.ANIMELIST_CSV, kaggle.RATING_COMPLETE_CSV, kaggle.WATCHING_STATUS_CSV):
        with (
            open(os.path.join(tiny_synth_dir, name), "rb") as ours,
            open(os.path.join(real_data_dir, name), "rb") as real,
        ):
            assert ours.readline() == real.readline(), name
    # The real watching_status.csv byte for byte (no final newline).
    assert filecmp.cmp(
        os.path.join(tiny_synth_dir, kaggle.WATCHING_STATUS_CSV),
        os.path.join(real_data_dir, kaggle.WATCHING_STATUS_CSV),
        shallow=False,
    )
    # The catalog files: the current Kaggle header (Genres instead of the legacy Genders).
    for name in (kaggle.ANIME_CSV, kaggle.ANIME_WITH_SYNOPSIS_CSV):
        ours = pd.read_csv(os.path.join(tiny_synth_dir, name), nrows=1).columns.tolist()
        real = pd.read_csv(os.path.join(real_data_dir, name), nrows=1).columns.tolist()
        assert ours == [c.replace("Genders", "Genres") for c in real], name


def test_value_conventions(tiny_synth_dir):
    animelist = pd.read_csv(os.path.join(tiny_synth_dir, kaggle.ANIMELIST_CSV))
    assert set(animelist["watching_status"]) == {1, 2, 3, 4, 6}
    assert animelist["rating"].between(0, 10).all() and (animelist["rating"] == 0).mean() > 0.3
    assert not animelist.duplicated(["user_id", "anime_id"]).any()
    assert animelist["user_id"].is_monotonic_increasing, "grouped by user, as Kaggle ships it"
    assert animelist["user_id"].max() + 1 > animelist["user_id"].nunique(), "user ids have gaps"
    assert animelist["user_id"].iloc[0] == 0
    synopses = pd.read_csv(os.path.join(tiny_synth_dir, kaggle.ANIME_WITH_SYNOPSIS_CSV), keep_default_na=False)
    anime = pd.read_csv(os.path.join(tiny_synth_dir, kaggle.ANIME_CSV), keep_default_na=False)
    assert (synopses["Score"] == "Unknown").any()
    assert synopses["sypnopsis"].str.startswith(kaggle.SYNOPSIS_PLACEHOLDER).any()
    # Some watched anime are missing from the synopsis file (and flagged Hentai, as in Kaggle's data).
    missing = set(animelist["anime_id"]) - set(synopses["MAL_ID"])
    assert missing and missing <= set(anime["MAL_ID"])
    assert anime.set_index("MAL_ID").loc[sorted(missing), "Genres"].str.contains(synth.HIDDEN_GENRE).all()
    ratings = pd.read_csv(os.path.join(tiny_synth_dir, kaggle.RATING_COMPLETE_CSV))
    assert ratings["rating"].between(1, 10).all()


def test_same_seed_same_files(tmp_path):
    config = synth.SynthConfig(users=150, anime=120, seed=3, chunk_users=40)
    synth.synthesize(str(tmp_path / "a"), config, progress=lambda _: None)
    synth.synthesize(str(tmp_path / "b"), config, progress=lambda _: None)
    synth.synthesize(
        str(tmp_path / "c"), synth.SynthConfig(users=150, anime=120, seed=4, chunk_users=40), progress=lambda _: None
    )
    # Asked again with the same settings, the files are kept, not rewritten.
    mtime = os.stat(tmp_path / "a" / kaggle.ANIMELIST_CSV).st_mtime_ns
    synth.synthesize(str(tmp_path / "a"), config, progress=lambda _: None)
    assert os.stat(tmp_path / "a" / kaggle.ANIMELIST_CSV).st_mtime_ns == mtime
    for name in synth.KAGGLE_FILES:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    assert not filecmp.cmp(tmp_path / "a" / kaggle.ANIMELIST_CSV, tmp_path / "c" / kaggle.ANIMELIST_CSV, shallow=False)


def test_tastes_are_learnable_beyond_popularity(tiny_synth_dir):
    """Users' liked titles share genres far more than popularity alone would give."""
    animelist = pd.read_csv(os.path.join(tiny_synth_dir, kaggle.ANIMELIST_CSV))
    catalog, _ = kaggle.read_catalog(tiny_synth_dir)
    genres = dict(zip(catalog["anime_id"], catalog["genres"].str.split(", ")))
    liked = animelist[(animelist["rating"] >= 7) & (animelist["watching_status"] == 2)]
    rng = np.random.default_rng(0)

    def mean_overlap(pairs):
        return np.mean([len(set(genres[a]) & set(genres[b])) > 0 for a, b in pairs])

    same_user = []
    for _, rows in liked.groupby("user_id"):
        ids = rows["anime_id"].to_numpy()
        if len(ids) >= 2:
            a, b = rng.choice(ids, 2, replace=False)
            same_user.append((a, b))
    shuffled = liked["anime_id"].to_numpy()
    random_pairs = list(zip(rng.choice(shuffled, len(same_user)), rng.choice(shuffled, len(same_user))))
    assert mean_overlap(same_user) > mean_overlap(random_pairs) + 0.15
    # Dropped titles sit outside the taste: lower average score when scored.
    scored = animelist[animelist["rating"] > 0]
    assert (
        scored[scored["watching_status"] == 4]["rating"].mean()
        < scored[scored["watching_status"] == 2]["rating"].mean()
    )


def test_summary_of_generated_data(tiny_synth_dir):
    result = summarize(tiny_synth_dir)
    assert result["interactions"]["users"] == 400
    assert result["catalog"]["anime"] == 300
    assert result["animelist"]["set_aside"] == {}
    assert result["interactions"]["eval_rows"] > 0
