"""Which interactions count as "liked", and the deterministic per-user split.

`scan_animelist` streams animelist.csv user by user (the Kaggle file is grouped
by user_id) and labels every valid row: liked or set aside by reason, train or
eval. Memory stays at one block of rows plus one bit per user id.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator

import numpy as np

from animerec.data import kaggle
from animerec.ids import positions_in

LIKED = "liked"
LOW_SCORE = "low score"
DROPPED = "dropped"
PLAN_TO_WATCH = "plan to watch"
ON_HOLD = "on hold"
UNSCORED = "unscored, not completed"
DUPLICATE = "duplicate user-anime row"
NOT_IN_CATALOG = "anime not in catalog"
REASONS = (LIKED, LOW_SCORE, DROPPED, PLAN_TO_WATCH, ON_HOLD, UNSCORED, DUPLICATE, NOT_IN_CATALOG)


@dataclasses.dataclass(frozen=True)
class LikedFilter:
    """Keeps completed and watching rows scored at or above `min_score`.

    Unscored (rating 0) completed rows are kept when `keep_unscored_completed`,
    unscored watching rows when `keep_unscored_watching`. Dropped, plan-to-watch,
    on-hold and low-scored rows are set aside (they still count as seen).
    """

    min_score: int = 7
    keep_unscored_completed: bool = True
    keep_unscored_watching: bool = True

    def classify(self, rating: np.ndarray, status: np.ndarray) -> np.ndarray:
        """Index into REASONS for each row (0 = liked)."""
        reason = np.full(len(rating), REASONS.index(LIKED), dtype=np.int8)
        scored = rating > 0
        reason[scored & (rating < self.min_score)] = REASONS.index(LOW_SCORE)
        unscored_ok = np.where(status == kaggle.COMPLETED, self.keep_unscored_completed, self.keep_unscored_watching)
        reason[~scored & ~unscored_ok] = REASONS.index(UNSCORED)
        reason[status == kaggle.DROPPED] = REASONS.index(DROPPED)
        reason[status == kaggle.PLAN_TO_WATCH] = REASONS.index(PLAN_TO_WATCH)
        reason[status == kaggle.ON_HOLD] = REASONS.index(ON_HOLD)
        return reason

    def liked(self, rating: np.ndarray, status: np.ndarray) -> np.ndarray:
        """True for the rows this filter keeps as liked."""
        return is_liked(self.classify(rating, status))


def is_liked(reason: np.ndarray) -> np.ndarray:
    """True where a row's reason (an index into REASONS, LikedFilter.classify's) is liked."""
    return reason == REASONS.index(LIKED)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Per-user split: ~eval_percent of each user's liked rows go to eval.

    Users with fewer than `min_history` liked rows stay in train only, and a
    user whose liked rows would all land in eval keeps them all in train, so
    every eval user has training history.
    """

    eval_percent: int = 20
    min_history: int = 5
    seed: int = 0


def split_hash(user_id: np.ndarray, anime_id: np.ndarray, seed: int = 0) -> np.ndarray:
    """A stable 0-99 bucket per (user, anime): splitmix64 of the pair."""
    with np.errstate(over="ignore"):
        x = (user_id.astype(np.uint64) << np.uint64(32)) ^ anime_id.astype(np.uint64)
        x ^= np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(100)).astype(np.int64)


def assign_eval(user_id: np.ndarray, anime_id: np.ndarray, liked: np.ndarray, config: SplitConfig) -> np.ndarray:
    """True for the liked rows held out for eval. Rows must be grouped by user."""
    if len(user_id) == 0:
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.concatenate([[True], user_id[1:] != user_id[:-1]]))
    run = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(user_id))))
    liked_count = np.add.reduceat(liked.astype(np.int64), starts)
    candidate = liked & (split_hash(user_id, anime_id, config.seed) < config.eval_percent)
    candidate &= (liked_count >= config.min_history)[run]
    eval_count = np.add.reduceat(candidate.astype(np.int64), starts)
    candidate &= (eval_count < liked_count)[run]
    return candidate


# The validation split is carved out of train with the same hash under another seed,
# so it is independent of the eval split.
VALIDATION_SEED = 1
# Share of an eligible user's liked training rows held out for validation, and the
# liked rows a user needs to get any (as the eval split's defaults).
VALIDATION_PERCENT = 20
VALIDATION_MIN_HISTORY = 5


def validation_users(
    user_id: np.ndarray,
    anime_id: np.ndarray,
    percent: int = VALIDATION_PERCENT,
    min_history: int = VALIDATION_MIN_HISTORY,
    seed: int = VALIDATION_SEED,
) -> np.ndarray:
    """The sorted raw ids of the users who get validation rows.

    `user_id` and `anime_id` are the liked training rows, in any order. As with the
    eval split, users below `min_history` liked rows, and users whose rows would all
    go to validation, keep every row for fitting.
    """
    users, user = np.unique(user_id, return_inverse=True)
    candidate = split_hash(user_id, anime_id, seed) < percent
    liked = np.bincount(user, minlength=len(users))
    held = np.bincount(user, weights=candidate, minlength=len(users))
    return users[(liked >= min_history) & (held > 0) & (held < liked)]


def validation_rows(
    user_id: np.ndarray,
    anime_id: np.ndarray,
    percent: int = VALIDATION_PERCENT,
    min_history: int = VALIDATION_MIN_HISTORY,
) -> np.ndarray:
    """The validation carve: True for the liked training rows (raw ids, in any order) held
    out for validation. The Trainer's choices and the Evaluator's EASE tuning both use it."""
    return is_validation(user_id, anime_id, validation_users(user_id, anime_id, percent, min_history), percent)


def is_validation(
    user_id: np.ndarray,
    anime_id: np.ndarray,
    eligible_users: np.ndarray,
    percent: int = VALIDATION_PERCENT,
    seed: int = VALIDATION_SEED,
) -> np.ndarray:
    """True for the liked training rows held out for validation (`eligible_users` from validation_users)."""
    return (positions_in(eligible_users, user_id) >= 0) & (split_hash(user_id, anime_id, seed) < percent)


@dataclasses.dataclass
class LabeledBlock:
    """Valid rows of whole users, labeled."""

    user_id: np.ndarray
    anime_id: np.ndarray
    rating: np.ndarray
    reason: np.ndarray  # index into REASONS
    is_eval: np.ndarray

    @property
    def liked(self) -> np.ndarray:
        return is_liked(self.reason)


@dataclasses.dataclass
class ScanStats:
    """Counts a person reads before training."""

    rows_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    users: int = 0
    users_with_eval: int = 0
    users_below_min_history: int = 0
    users_without_liked: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    anime_in_interactions: set = dataclasses.field(default_factory=set)
    anime_without_metadata: set = dataclasses.field(default_factory=set)
    # Each user of the scan and the line of its first row, in file order (arrays per
    # block): scans of separate ranges of a file are checked for shared users with them.
    user_first_lines: list = dataclasses.field(default_factory=list)

    def merge(self, other: ScanStats) -> None:
        """Adds another scan's counts (of a later part of the file)."""
        self.rows_by_reason.update(other.rows_by_reason)
        for name in ("users", "users_with_eval", "users_below_min_history", "users_without_liked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.train_rows += other.train_rows
        self.eval_rows += other.eval_rows
        self.anime_in_interactions |= other.anime_in_interactions
        self.anime_without_metadata |= other.anime_without_metadata
        self.user_first_lines.extend(other.user_first_lines)

    def to_dict(self) -> dict:
        return {
            "rows_by_reason": dict(self.rows_by_reason),
            "users": self.users,
            "users_with_eval": self.users_with_eval,
            "users_below_min_history": self.users_below_min_history,
            "users_without_liked": self.users_without_liked,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "anime_in_interactions": len(self.anime_in_interactions),
            "anime_without_metadata": len(self.anime_without_metadata),
        }


def scan_animelist(
    path: str,
    catalog_ids: np.ndarray,
    liked_filter: LikedFilter,
    split: SplitConfig,
    report: kaggle.ReadReport,
    stats: ScanStats,
    block_lines: int = kaggle.DEFAULT_BLOCK_LINES,
    byte_range: kaggle.ByteRange | None = None,
) -> Iterator[LabeledBlock]:
    """Streams animelist.csv (or a ByteRange of it) as labeled blocks of whole users.

    The rows of the last user of a block are carried into the next block, so
    per-user decisions (duplicates, the split) see all of a user's rows. A user
    id that reappears after other users is an error: the converter relies on
    the Kaggle file being grouped by user_id.
    """
    yield from scan_blocks(
        path,
        kaggle.iter_animelist(path, report, block_lines, byte_range),
        catalog_ids,
        liked_filter,
        split,
        report,
        stats,
    )


def scan_blocks(
    path: str,
    blocks: Iterator[kaggle.InteractionBlock],
    catalog_ids: np.ndarray,
    liked_filter: LikedFilter,
    split: SplitConfig,
    report: kaggle.ReadReport,
    stats: ScanStats,
) -> Iterator[LabeledBlock]:
    """scan_animelist over blocks of rows of `path` grouped by user (from the file, or
    regrouped by the converter), cut anywhere."""
    catalog_ids = np.sort(catalog_ids)
    finished_users = np.zeros(0, dtype=np.int64)  # sorted ids of the users whose rows ended
    carry = None
    for block in blocks:
        if carry is not None:
            block = kaggle.InteractionBlock(*(np.concatenate([c, b]) for c, b in zip(carry, _fields(block))))
        if len(block.user_id) == 0:
            continue
        last_user = block.user_id[-1]
        tail = block.user_id == last_user
        tail_start = len(tail) - np.argmin(tail[::-1]) if not tail.all() else 0
        carry = tuple(a[tail_start:] for a in _fields(block))
        whole = kaggle.InteractionBlock(*(a[:tail_start] for a in _fields(block)))
        if len(whole.user_id):
            finished_users = _check_grouped(path, whole, finished_users, stats)
            yield _label(whole, catalog_ids, liked_filter, split, report, stats)
    if carry is not None and len(carry[0]):
        whole = kaggle.InteractionBlock(*carry)
        _check_grouped(path, whole, finished_users, stats)
        yield _label(whole, catalog_ids, liked_filter, split, report, stats)


def _fields(block: kaggle.InteractionBlock) -> tuple:
    return (block.user_id, block.anime_id, block.rating, block.status, block.episodes, block.line)


def _check_grouped(path: str, block: kaggle.InteractionBlock, finished: np.ndarray, stats: ScanStats) -> np.ndarray:
    change = np.concatenate([[True], block.user_id[1:] != block.user_id[:-1]])
    users = block.user_id[change]
    stats.user_first_lines.append((users, block.line[change]))
    # `finished` holds the ids themselves, sorted, not a bitmap indexed by them: a valid
    # but huge user_id (any int64) must not cost memory in proportion to its value.
    seen_before = np.isin(users, finished)
    _, counts = np.unique(users, return_counts=True)
    if seen_before.any() or (counts > 1).any():
        user = users[seen_before][0] if seen_before.any() else _first_repeated(users)
        line = block.line[change][np.flatnonzero(users == user)[-1]]
        raise_not_grouped(path, user, line)
    return np.union1d(finished, users)


class NotGroupedError(kaggle.DataError):
    """animelist.csv is not grouped by user_id (the converter then regroups it)."""


def raise_not_grouped(path: str, user: int, line: int) -> None:
    raise NotGroupedError(
        f"{path} line {line}, field user_id: user {user} appears again after rows of other users. "
        "`data summary` streams the file grouped by user_id, as Kaggle ships it (`data convert` and `run` "
        "regroup any other order themselves); to summarize this one, sort it first "
        "(for example: (head -1 animelist.csv; tail -n +2 animelist.csv | sort -t, -k1,1n -s) > sorted.csv)."
    )


def check_ranges_grouped(path: str, stats: ScanStats) -> None:
    """After scanning ranges separately (each checked on its own): no user spans two of
    them. `stats.user_first_lines` must be in file order."""
    if not stats.user_first_lines:
        return
    users = np.concatenate([u for u, _ in stats.user_first_lines])
    lines = np.concatenate([n for _, n in stats.user_first_lines])
    _, first, counts = np.unique(users, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeated = np.ones(len(users), dtype=bool)
        repeated[first] = False
        at = np.flatnonzero(repeated)[np.argmin(lines[repeated])]
        raise_not_grouped(path, int(users[at]), int(lines[at]))


def _first_repeated(users: np.ndarray):
    seen = set()
    for u in users:
        if u in seen:
            return u
        seen.add(u)
    return users[0]


def _label(block, catalog_ids, liked_filter, split, report, stats) -> LabeledBlock:
    reason = liked_filter.classify(block.rating, block.status)

    # Duplicate (user, anime) rows: the first one wins, the rest are set aside.
    order = np.lexsort((block.line, block.anime_id, block.user_id))
    key_user, key_anime = block.user_id[order], block.anime_id[order]
    dup_sorted = np.concatenate([[False], (key_user[1:] == key_user[:-1]) & (key_anime[1:] == key_anime[:-1])])
    duplicate = np.zeros(len(order), dtype=bool)
    duplicate[order[dup_sorted]] = True
    for i in np.flatnonzero(duplicate)[: kaggle.MAX_EXAMPLES_PER_REASON]:
        report.add(DUPLICATE, f"line {block.line[i]}: user {block.user_id[i]}, anime {block.anime_id[i]}", count=0)
    reason[duplicate] = REASONS.index(DUPLICATE)
    if duplicate.any():
        report.set_aside[DUPLICATE] += int(duplicate.sum())

    in_catalog = positions_in(catalog_ids, block.anime_id) >= 0
    missing = ~in_catalog & ~duplicate
    reason[missing] = REASONS.index(NOT_IN_CATALOG)
    stats.anime_without_metadata.update(np.unique(block.anime_id[missing]).tolist())
    stats.anime_in_interactions.update(np.unique(block.anime_id).tolist())

    keep = ~duplicate & in_catalog
    liked = is_liked(reason)
    is_eval = np.zeros(len(reason), dtype=bool)
    is_eval[keep] = assign_eval(block.user_id[keep], block.anime_id[keep], liked[keep], split)

    counts = np.bincount(reason, minlength=len(REASONS))
    for i, n in enumerate(counts):
        if n:
            stats.rows_by_reason[REASONS[i]] += int(n)
    starts = np.flatnonzero(np.concatenate([[True], block.user_id[1:] != block.user_id[:-1]]))
    liked_per_user = np.add.reduceat(liked.astype(np.int64), starts)
    eval_per_user = np.add.reduceat(is_eval.astype(np.int64), starts)
    stats.users += len(starts)
    stats.users_with_eval += int((eval_per_user > 0).sum())
    stats.users_without_liked += int((liked_per_user == 0).sum())
    stats.users_below_min_history += int(((liked_per_user > 0) & (liked_per_user < split.min_history)).sum())
    stats.eval_rows += int(is_eval.sum())
    stats.train_rows += int((keep & ~is_eval).sum())

    return LabeledBlock(
        user_id=block.user_id[keep],
        anime_id=block.anime_id[keep],
        rating=block.rating[keep],
        reason=reason[keep],
        is_eval=is_eval[keep],
    )
