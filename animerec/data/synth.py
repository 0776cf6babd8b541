"""`animerec data synth`: a MyAnimeList-shaped dataset with learnable structure.

The files have exactly the Kaggle headers and value conventions. The structure:
anime belong to latent franchises ("groups") whose genres and synopsis words
are shared; popularity is Zipf-like; each user follows one main genre and a
few groups within and around it, and rates and drops titles outside that taste.
A popularity ranking captures the head but not the tastes, so a retrieval model
has something to learn. Users are generated and written in chunks, so memory is
bounded by the chunk size at any scale.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from animerec.data import kaggle

ANIME_HEADER = (
    "MAL_ID,Name,Score,Genres,English name,Japanese name,Type,Episodes,Aired,Premiered,Producers,"
    "Licensors,Studios,Source,Duration,Rating,Ranked,Popularity,Members,Favorites,Watching,Completed,"
    "On-Hold,Dropped,Plan to Watch,Score-10,Score-9,Score-8,Score-7,Score-6,Score-5,Score-4,Score-3,"
    "Score-2,Score-1"
).split(",")
SYNOPSIS_HEADER = ["MAL_ID", "Name", "Score", "Genres", "sypnopsis"]
# The real file: a space after the comma in the header and no final newline.
WATCHING_STATUS_TEXT = "status, description\n" + "\n".join(
    f"{code},{name}" for code, name in kaggle.WATCHING_STATUS_NAMES.items()
)

GENRES = (
    "Action",
    "Adventure",
    "Cars",
    "Comedy",
    "Dementia",
    "Demons",
    "Drama",
    "Ecchi",
    "Fantasy",
    "Game",
    "Harem",
    "Historical",
    "Horror",
    "Josei",
    "Kids",
    "Magic",
    "Martial Arts",
    "Mecha",
    "Military",
    "Music",
    "Mystery",
    "Parody",
    "Police",
    "Psychological",
    "Romance",
    "Samurai",
    "School",
    "Sci-Fi",
    "Seinen",
    "Shoujo",
    "Shoujo Ai",
    "Shounen",
    "Shounen Ai",
    "Slice of Life",
    "Space",
    "Sports",
    "Super Power",
    "Supernatural",
    "Thriller",
    "Vampire",
)
SYNTH_MARKER = "synth_settings.json"
KAGGLE_FILES = (
    kaggle.ANIME_WITH_SYNOPSIS_CSV,
    kaggle.ANIME_CSV,
    kaggle.ANIMELIST_CSV,
    kaggle.RATING_COMPLETE_CSV,
    kaggle.WATCHING_STATUS_CSV,
)
HIDDEN_GENRE = "Hentai"  # titles of this genre are left out of the synopsis file, as in Kaggle's
TYPES = ("TV", "Movie", "OVA", "ONA", "Special", "Music")
SEASONS = ("Winter", "Spring", "Summer", "Fall")
SYLLABLES = (
    "ka ki ku ke ko sa shi su se so ta chi tsu te to na ni nu ne no ha hi fu he ho ma mi mu me mo "
    "ya yu yo ra ri ru re ro wa n ga gi gu ge go za ji zu ze zo ba bi bu be bo"
).split()


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    users: int = 8000
    anime: int = 2500
    mean_rows_per_user: float = 130.0
    seed: int = 42
    # Users written per chunk; bounds memory at any size.
    chunk_users: int = 5000


def _word(rng: np.random.Generator, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES, size=syllables))


class _World:
    """The latent structure shared by the catalog and the users."""

    def __init__(self, config: SynthConfig):
        rng = np.random.default_rng(config.seed)
        n = config.anime
        self.n_groups = max(4, n // 20)
        self.n_genres = len(GENRES)
        # Each group has a main genre and one or two others.
        self.group_main_genre = rng.integers(0, self.n_genres, self.n_groups)
        self.group_genres = [
            sorted({int(g), *rng.choice(self.n_genres, size=rng.integers(1, 3), replace=False).tolist()})
            for g in self.group_main_genre
        ]
        self.anime_group = rng.integers(0, self.n_groups, n)
        # MAL ids are sparse and sorted; ids run past the catalog size.
        self.anime_ids = np.sort(rng.choice(np.arange(1, n * 3 + 1), size=n, replace=False))
        # Zipf-like popularity over a random order of the titles.
        popularity_rank = rng.permutation(n)
        self.popularity = 1.0 / (popularity_rank + 10.0) ** 1.1
        self.popularity /= self.popularity.sum()
        self.popular_cdf = np.cumsum(self.popularity)
        # Within a group, picks follow a flatter popularity, so taste reaches the tail.
        within = self.popularity**0.5
        # Members of each group, concatenated, with cumulative pick probabilities
        # offset by the group number: one searchsorted samples every group at once.
        order = np.argsort(self.anime_group, kind="stable")
        self.members_concat = order
        counts = np.bincount(self.anime_group, minlength=self.n_groups)
        self.group_end = np.cumsum(counts)
        self.group_start = self.group_end - counts
        cdf = np.empty(n)
        for g in range(self.n_groups):
            members = order[self.group_start[g] : self.group_end[g]]
            if len(members):
                w = within[members]
                cdf[self.group_start[g] : self.group_end[g]] = g + np.cumsum(w / w.sum())
        self.cdf_concat = cdf
        self.groups_by_genre = [
            np.flatnonzero((self.group_main_genre == g) & (counts > 0)) for g in range(self.n_genres)
        ]
        self.nonempty_groups = np.flatnonzero(counts > 0)
        self.groups_by_genre_count = np.array([len(g) for g in self.groups_by_genre])
        self.groups_by_genre_padded = np.full((self.n_genres, max(1, self.groups_by_genre_count.max())), -1)
        for g, groups in enumerate(self.groups_by_genre):
            self.groups_by_genre_padded[g, : len(groups)] = groups
        # Words: genre words, franchise words, and filler.
        self.genre_words = [[_word(rng, 3) for _ in range(25)] for _ in range(self.n_genres)]
        self.group_words = [[_word(rng, 2).capitalize() for _ in range(6)] for _ in range(self.n_groups)]
        self.filler = [_word(rng, rng.integers(1, 4)) for _ in range(400)]
        self.anime_genres = []
        for i in range(n):
            genres = set(self.group_genres[self.anime_group[i]])
            if rng.random() < 0.3:
                genres.add(int(rng.integers(0, self.n_genres)))
            self.anime_genres.append(sorted(genres))
        # A few titles of the hidden genre: in anime.csv, not in the synopsis file.
        self.hidden = rng.random(n) < 0.02
        self.episodes = np.where(rng.random(n) < 0.6, rng.choice([12, 13, 24, 25, 26, 50], n), rng.integers(1, 6, n))
        self.unknown_score = rng.random(n) < 0.1
        self.placeholder_synopsis = rng.random(n) < 0.04
        self.empty_synopsis = rng.random(n) < 0.005
        self.rng = rng


def _catalog_rows(world: _World, config: SynthConfig):
    rng = world.rng
    for i, anime_id in enumerate(world.anime_ids):
        group = world.anime_group[i]
        franchise = " ".join(world.group_words[group][:2])
        suffix = ["", " Season 2", " Movie", " OVA", f" {_word(rng, 2).capitalize()}", " Final"][rng.integers(6)]
        name = f"{franchise}{suffix}"
        genre_names = [GENRES[g] for g in world.anime_genres[i]]
        if world.hidden[i]:
            genre_names.append(HIDDEN_GENRE)
        genres = ", ".join(sorted(genre_names))
        score = "Unknown" if world.unknown_score[i] else f"{rng.uniform(5.5, 9.1):.2f}"
        if world.placeholder_synopsis[i]:
            synopsis = f"{kaggle.SYNOPSIS_PLACEHOLDER} Help improve our database by adding a synopsis here ."
        elif world.empty_synopsis[i]:
            synopsis = ""
        else:
            length = int(rng.integers(40, 110))
            kind = rng.random(length)
            genre_of_word = np.asarray(world.anime_genres[i])[rng.integers(0, len(world.anime_genres[i]), length)]
            pick = rng.integers(0, 1 << 30, length)
            words = [
                world.genre_words[g][p % 25]
                if k < 0.3
                else world.group_words[group][p % 6]
                if k < 0.42
                else world.filler[p % 400]
                for k, g, p in zip(kind, genre_of_word, pick)
            ]
            synopsis = " ".join(words).capitalize() + "."
        yield int(anime_id), name, score, genres, synopsis, i


def write_catalog(world: _World, config: SynthConfig, out_dir: str) -> None:
    rng = world.rng
    members = (world.popularity * config.users * 40).astype(np.int64) + rng.integers(10, 500, config.anime)
    ranked = np.argsort(np.argsort(-members)) + 1
    with (
        open(os.path.join(out_dir, kaggle.ANIME_WITH_SYNOPSIS_CSV), "w", newline="", encoding="utf-8") as fs,
        open(os.path.join(out_dir, kaggle.ANIME_CSV), "w", newline="", encoding="utf-8") as fa,
    ):
        synopsis_writer = csv.writer(fs)
        anime_writer = csv.writer(fa)
        synopsis_writer.writerow(SYNOPSIS_HEADER)
        anime_writer.writerow(ANIME_HEADER)
        for anime_id, name, score, genres, synopsis, i in _catalog_rows(world, config):
            if not world.hidden[i]:
                synopsis_writer.writerow([anime_id, name, score, genres, synopsis])
            kind = rng.choice(TYPES, p=[0.45, 0.2, 0.15, 0.1, 0.08, 0.02])
            year = int(rng.integers(1970, 2021))
            m = int(members[i])
            status_counts = (m * np.array([0.06, 0.57, 0.04, 0.035, 0.29])).astype(int)
            score_counts = (m * 0.4 * rng.dirichlet(np.ones(10))).astype(int)
            anime_writer.writerow(
                [
                    anime_id,
                    name,
                    score,
                    genres,
                    name if rng.random() < 0.6 else "Unknown",
                    "Unknown",
                    kind,
                    world.episodes[i],
                    f"Apr 3, {year}",
                    f"{rng.choice(SEASONS)} {year}" if kind == "TV" else "Unknown",
                    "Unknown",
                    "Unknown",
                    "Unknown",
                    rng.choice(["Original", "Manga", "Light novel"]),
                    "24 min. per ep.",
                    "PG-13 - Teens 13 or older",
                    "Unknown" if score == "Unknown" else float(ranked[i]),
                    int(ranked[i]),
                    m,
                    m // 50,
                    *status_counts.tolist(),
                    *score_counts.tolist(),
                ]
            )


def _user_rows(world: _World, config: SynthConfig, user_ids: np.ndarray, rng: np.random.Generator):
    """All rows of a chunk of users, as parallel arrays grouped by user."""
    n_users = len(user_ids)
    sizes = np.clip(rng.lognormal(np.log(config.mean_rows_per_user) - 0.5, 1.0, n_users), 3, config.anime // 2).astype(
        np.int64
    )
    user_of_row = np.repeat(np.arange(n_users), sizes)
    total = len(user_of_row)

    # Taste: a main genre, two to four groups (mostly of that genre), a taste share.
    main_genre = rng.integers(0, world.n_genres, n_users)
    n_fav = 3
    fav_groups = np.empty((n_users, n_fav), dtype=np.int64)
    for j in range(n_fav):
        from_genre = rng.random(n_users) < 0.75
        any_group = world.nonempty_groups[rng.integers(0, len(world.nonempty_groups), n_users)]
        genre_pick = np.array(
            [
                world.groups_by_genre[g][rng.integers(len(world.groups_by_genre[g]))]
                if len(world.groups_by_genre[g])
                else a
                for g, a in zip(main_genre, any_group)
            ]
        )
        fav_groups[:, j] = np.where(from_genre, genre_pick, any_group)
    taste_share = rng.beta(6, 3, n_users)

    in_taste = rng.random(total) < taste_share[user_of_row]
    # Taste rows: a favourite group, then a title within it.
    group = fav_groups[user_of_row, rng.choice(n_fav, size=total, p=[0.5, 0.3, 0.2])]
    # A third of taste rows come from any group of the user's main genre, so
    # heavy users reach past their favourite franchises.
    genre_groups = world.groups_by_genre_padded[main_genre[user_of_row]]
    genre_pick = genre_groups[
        np.arange(total), rng.integers(0, world.groups_by_genre_count[main_genre[user_of_row]].clip(1))
    ]
    group = np.where((rng.random(total) < 0.33) & (genre_pick >= 0), genre_pick, group)
    position = np.searchsorted(world.cdf_concat, group + rng.random(total))
    position = np.clip(position, world.group_start[group], world.group_end[group] - 1)
    taste_anime = world.members_concat[position]
    popular_anime = np.minimum(np.searchsorted(world.popular_cdf, rng.random(total)), config.anime - 1)
    anime = np.where(in_taste, taste_anime, popular_anime)
    # A popular title can still match the taste by its group.
    matches = in_taste | (fav_groups[user_of_row] == world.anime_group[anime][:, None]).any(axis=1)

    # One row per (user, anime): keep the first.
    key = user_of_row * config.anime + anime
    _, first = np.unique(key, return_index=True)
    first.sort()
    user_of_row, anime, matches = user_of_row[first], anime[first], matches[first]
    n = len(first)

    statuses = [kaggle.WATCHING, kaggle.COMPLETED, kaggle.ON_HOLD, kaggle.DROPPED, kaggle.PLAN_TO_WATCH]
    status = np.where(
        matches,
        rng.choice(statuses, size=n, p=[0.08, 0.72, 0.03, 0.03, 0.14]),
        rng.choice(statuses, size=n, p=[0.05, 0.45, 0.06, 0.14, 0.30]),
    )
    score = np.where(matches, rng.normal(8.3, 1.0, n), rng.normal(6.0, 1.6, n))
    score = np.clip(np.rint(score), 1, 10).astype(np.int64)
    scored = (rng.random(n) < 0.55) & (status != kaggle.PLAN_TO_WATCH)
    rating = np.where(scored, score, 0)
    episodes_total = world.episodes[anime]
    watched = np.select(
        [status == kaggle.COMPLETED, status == kaggle.PLAN_TO_WATCH, status == kaggle.DROPPED],
        [episodes_total, 0, rng.integers(0, np.maximum(episodes_total, 1))],
        default=rng.integers(0, episodes_total + 1),
    )
    return user_ids[user_of_row], world.anime_ids[anime], rating, status, watched


def _write_rows(f, block: np.ndarray) -> None:
    pd.DataFrame(block).to_csv(f, header=False, index=False, lineterminator="\n")


def synthesize(out_dir: str, config: SynthConfig = SynthConfig(), progress: Callable[[str], None] = print) -> dict:
    """Writes the five Kaggle files to `out_dir`; returns row counts.

    When out_dir already holds files written with the same settings, they are
    kept as they are, so a pipeline run over them hits its caches.
    """
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, SYNTH_MARKER)
    settings = json.dumps(dataclasses.asdict(config), sort_keys=True)
    if os.path.exists(marker):
        with open(marker) as fh:
            previous = json.load(fh)
        if previous["settings"] == settings and all(os.path.exists(os.path.join(out_dir, n)) for n in KAGGLE_FILES):
            progress(
                f"{out_dir} already holds this dataset ({previous['summary']['animelist_rows']:,} rows); keeping it."
            )
            return previous["summary"]
        os.remove(marker)
    start = time.time()
    world = _World(config)
    write_catalog(world, config, out_dir)
    with open(os.path.join(out_dir, kaggle.WATCHING_STATUS_CSV), "w", encoding="utf-8") as f:
        f.write(WATCHING_STATUS_TEXT)

    id_rng = np.random.default_rng(config.seed + 1)
    rows = 0
    rated = 0
    last_progress = time.time()
    animelist_path = os.path.join(out_dir, kaggle.ANIMELIST_CSV)
    rating_path = os.path.join(out_dir, kaggle.RATING_COMPLETE_CSV)
    with open(animelist_path, "w") as fl, open(rating_path, "w") as fr:
        fl.write(",".join(kaggle.ANIMELIST_COLUMNS) + "\n")
        fr.write(",".join(kaggle.RATING_COMPLETE_COLUMNS) + "\n")
        next_user_id = 0
        for chunk_start in range(0, config.users, config.chunk_users):
            n = min(config.chunk_users, config.users - chunk_start)
            # User ids have gaps, as in the real file.
            gaps = id_rng.geometric(0.92, n) - 1
            if chunk_start == 0:
                gaps[0] = 0  # user 0 exists, as in the real file
            user_ids = next_user_id + np.cumsum(gaps + 1) - 1
            next_user_id = int(user_ids[-1]) + 1
            rng = np.random.default_rng([config.seed, chunk_start])
            user_id, anime_id, rating, status, watched = _user_rows(world, config, user_ids, rng)
            block = np.column_stack([user_id, anime_id, rating, status, watched])
            _write_rows(fl, block)
            complete = (status == kaggle.COMPLETED) & (rating > 0)
            _write_rows(fr, block[complete][:, :3])
            rows += len(block)
            rated += int(complete.sum())
            if time.time() - last_progress > 10:
                last_progress = time.time()
                progress(
                    f"  {chunk_start + n:,}/{config.users:,} users, {rows:,} rows ({rows / (time.time() - start):,.0f} rows/s)"
                )
    summary = {
        "users": config.users,
        "anime": config.anime,
        "animelist_rows": rows,
        "rating_complete_rows": rated,
        "seconds": round(time.time() - start, 1),
    }
    with open(marker, "w") as fh:
        json.dump({"settings": settings, "summary": summary}, fh)
    progress(
        f"Wrote {config.users:,} users, {config.anime:,} anime, {rows:,} animelist rows, "
        f"{rated:,} rating_complete rows to {out_dir} in {summary['seconds']}s"
    )
    return summary
