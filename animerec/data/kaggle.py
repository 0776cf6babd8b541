"""Readers for the Kaggle "Anime Recommendation Database 2020" files.

The catalog files are small and read whole; `animelist.csv` (2 GB, 109M rows)
is read in blocks of lines. Every malformed row is either rejected with an
error naming the file, line and field, or counted and set aside in a
`ReadReport` that the caller prints.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
from collections.abc import Iterator

import numpy as np
import pandas as pd

from animerec.data import files

ANIME_WITH_SYNOPSIS_CSV = "anime_with_synopsis.csv"
ANIME_CSV = "anime.csv"
ANIMELIST_CSV = "animelist.csv"
RATING_COMPLETE_CSV = "rating_complete.csv"
WATCHING_STATUS_CSV = "watching_status.csv"

SYNOPSIS_PLACEHOLDER = "No synopsis information has been added to this title."
# Both wordings of the placeholder found in the real file (745 rows in all).
SYNOPSIS_PLACEHOLDER_PREFIXES = (SYNOPSIS_PLACEHOLDER, "No synopsis has been added for this series yet.")
# The current Kaggle files name the genre column Genres; the first release
# called it Genders. The synopsis column is misspelled in both.
GENRE_COLUMNS = ("Genres", "Genders")
SYNOPSIS_COLUMNS = ("sypnopsis", "synopsis")
MISSING_TEXT = ("Unknown", "")

ANIMELIST_COLUMNS = ("user_id", "anime_id", "rating", "watching_status", "watched_episodes")
RATING_COMPLETE_COLUMNS = ("user_id", "anime_id", "rating")

WATCHING = 1
COMPLETED = 2
ON_HOLD = 3
DROPPED = 4
PLAN_TO_WATCH = 6
WATCHING_STATUS_NAMES = {
    WATCHING: "Currently Watching",
    COMPLETED: "Completed",
    ON_HOLD: "On Hold",
    DROPPED: "Dropped",
    PLAN_TO_WATCH: "Plan to Watch",
}

# Approximate lines per block when streaming animelist.csv (~40 MB of text).
DEFAULT_BLOCK_LINES = 2_000_000
MAX_EXAMPLES_PER_REASON = 5
# The numeric files' fields are read as int64.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class DataError(ValueError):
    """Input that cannot be used: the message names the file, line and field."""


@dataclasses.dataclass
class ReadReport:
    """What one file held: rows read, kept, and set aside by reason."""

    path: str
    rows_read: int = 0
    set_aside: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # reason -> the first few "line N: detail" strings, so a person can look.
    examples: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    repaired: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def kept(self) -> int:
        return self.rows_read - sum(self.set_aside.values())

    def add(self, reason: str, where: str, count: int = 1) -> None:
        self.set_aside[reason] += count
        if len(self.examples[reason]) < MAX_EXAMPLES_PER_REASON:
            self.examples[reason].append(where)

    def merge(self, other: ReadReport) -> None:
        """Adds the report of a later part of the same file."""
        self.rows_read += other.rows_read
        self.set_aside.update(other.set_aside)
        self.repaired.update(other.repaired)
        for reason, where in other.examples.items():
            self.examples[reason].extend(where[: MAX_EXAMPLES_PER_REASON - len(self.examples[reason])])

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "set_aside": dict(self.set_aside),
            "repaired": dict(self.repaired),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    def lines(self) -> list[str]:
        """Human-readable lines for the summary."""
        name = os.path.basename(self.path)
        out = [f"{name}: {self.rows_read:,} rows read, {self.kept:,} kept"]
        for reason, n in sorted(self.set_aside.items()):
            if n:
                out.append(f"  set aside {n:,} ({reason}), e.g. {'; '.join(self.examples[reason][:2])}")
        for reason, n in sorted(self.repaired.items()):
            if n:
                out.append(f"  repaired {n:,} ({reason})")
        return out


def _require_file(path: str) -> None:
    if not files.exists(path):
        raise DataError(
            f"{path}: file is missing. Expected the Kaggle 'Anime Recommendation Database 2020' "
            f"file of that name in {os.path.dirname(path) or '.'}."
        )
    if files.size(path) == 0:
        raise DataError(f"{path}: file is empty; expected a CSV header and rows.")


def _check_header(path: str, header: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {missing}; found {header}.")


# --------------------------------------------------------------------------
# Catalog files


def read_anime_with_synopsis(path: str) -> tuple[pd.DataFrame, ReadReport]:
    """Reads anime_with_synopsis.csv into anime_id, name, genres, synopsis, score.

    Missing text ("Unknown", empty, the synopsis placeholder) becomes "" and a
    missing score NaN.
    """
    frame, report = _read_catalog_csv(path, required=("MAL_ID", "Name", "Score"))
    genre_col = _first_present(path, frame.columns, GENRE_COLUMNS)
    synopsis_col = _first_present(path, frame.columns, SYNOPSIS_COLUMNS)
    synopsis = frame[synopsis_col].str.strip()
    placeholder = synopsis.str.startswith(SYNOPSIS_PLACEHOLDER_PREFIXES)
    if placeholder.any():
        report.repaired["synopsis placeholder treated as missing"] += int(placeholder.sum())
    synopsis = synopsis.where(~placeholder, "")
    out = pd.DataFrame(
        {
            "anime_id": frame["MAL_ID"].astype(np.int64),
            "name": _clean_text(frame["Name"]),
            "genres": _clean_text(frame[genre_col]),
            "synopsis": _clean_text(synopsis.str.replace(r"\s+", " ", regex=True)),
            "score": pd.to_numeric(frame["Score"], errors="coerce"),
        }
    )
    return out.reset_index(drop=True), report


def read_anime(path: str) -> tuple[pd.DataFrame, ReadReport]:
    """Reads the 35-column anime.csv into anime_id, name, genres, score, type, members."""
    frame, report = _read_catalog_csv(path, required=("MAL_ID", "Name", "Score", "Type", "Members"))
    genre_col = _first_present(path, frame.columns, GENRE_COLUMNS)
    out = pd.DataFrame(
        {
            "anime_id": frame["MAL_ID"].astype(np.int64),
            "name": _clean_text(frame["Name"]),
            "genres": _clean_text(frame[genre_col]),
            "score": pd.to_numeric(frame["Score"], errors="coerce"),
            "type": _clean_text(frame["Type"]),
            "members": pd.to_numeric(frame["Members"], errors="coerce").fillna(0).astype(np.int64),
        }
    )
    return out.reset_index(drop=True), report


def read_catalog(data_dir: str) -> tuple[pd.DataFrame, list[ReadReport]]:
    """The candidate catalog: anime.csv joined with the synopses, with MAL's score and
    member count (NaN where unknown).

    anime.csv lists every anime (titles left out of the synopsis file by its
    author included); the synopsis file adds the text. Either file alone is
    enough; at least one must exist.
    """
    synopsis_path = os.path.join(data_dir, ANIME_WITH_SYNOPSIS_CSV)
    anime_path = os.path.join(data_dir, ANIME_CSV)
    if not files.exists(synopsis_path) and not files.exists(anime_path):
        raise DataError(
            f"{data_dir}: neither {ANIME_WITH_SYNOPSIS_CSV} nor {ANIME_CSV} is there; "
            "the catalog needs at least one of them."
        )
    reports = []
    frames = []
    if files.exists(synopsis_path):
        synopses, report = read_anime_with_synopsis(synopsis_path)
        reports.append(report)
        frames.append(synopses)
    if files.exists(anime_path):
        anime, report = read_anime(anime_path)
        reports.append(report)
        frames.append(anime[["anime_id", "name", "genres", "score", "members"]])
    if len(frames) == 1:
        catalog = frames[0]
    else:
        synopses, anime = frames
        catalog = anime.merge(synopses[["anime_id", "synopsis"]], on="anime_id", how="outer")
        # Titles only in the synopsis file keep their own name and genres.
        only_synopsis = catalog["name"].isna()
        by_id = synopses.set_index("anime_id")
        for column in ("name", "genres", "score"):
            catalog.loc[only_synopsis, column] = by_id.loc[catalog.loc[only_synopsis, "anime_id"], column].values
    catalog["synopsis"] = catalog.get("synopsis", pd.Series("", index=catalog.index)).fillna("")
    # Members are in anime.csv only: NaN for titles it lacks (or without that file).
    catalog["members"] = catalog.get("members", pd.Series(np.nan, index=catalog.index)).astype(np.float64)
    catalog = catalog.sort_values("anime_id").reset_index(drop=True)
    return catalog[["anime_id", "name", "genres", "synopsis", "score", "members"]], reports


def _first_present(path: str, columns, candidates: tuple[str, ...]) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"{path}: header lacks column {' or '.join(candidates)}; found {list(columns)}.")


def _clean_text(values: pd.Series) -> pd.Series:
    values = values.fillna("").astype(str).str.strip()
    return values.where(~values.isin(MISSING_TEXT), "")


def _read_catalog_csv(path: str, required: tuple[str, ...]) -> tuple[pd.DataFrame, ReadReport]:
    _require_file(path)
    report = ReadReport(path)
    try:
        with files.open_read(path) as f:
            frame = pd.read_csv(f, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace")
    except pd.errors.ParserError as error:
        # The C parser names the line ("Expected 5 fields in line 7, saw 6").
        raise DataError(f"{path}: malformed CSV: {error}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; expected a CSV header and rows.") from None
    _check_header(path, list(frame.columns), required)
    report.rows_read = len(frame)
    # Records are numbered from 1 after the header; synopses may span lines.
    record = pd.Series(np.arange(1, len(frame) + 1), index=frame.index)

    replaced = frame.apply(lambda col: col.str.contains("\ufffd", regex=False)).any(axis=1)
    if replaced.any():
        report.repaired["non-UTF-8 bytes replaced"] += int(replaced.sum())

    ids = pd.to_numeric(frame["MAL_ID"], errors="coerce")
    bad_id = ids.isna() | (ids < 0) | (ids != ids.round())
    for i in frame.index[bad_id]:
        report.add("non-numeric MAL_ID", f"record {record[i]}: MAL_ID={frame.at[i, 'MAL_ID']!r}")
    frame = frame[~bad_id].copy()
    frame["MAL_ID"] = ids[~bad_id].astype(np.int64)

    duplicate = frame["MAL_ID"].duplicated(keep="first")
    for i in frame.index[duplicate]:
        report.add("duplicate MAL_ID", f"record {record[i]}: MAL_ID={frame.at[i, 'MAL_ID']}")
    return frame[~duplicate], report


def read_watching_status(path: str) -> dict[int, str]:
    """Reads watching_status.csv ("status, description"; no final newline)."""
    _require_file(path)
    with io.TextIOWrapper(files.open_read(path), encoding="utf-8", errors="strict", newline="") as f:
        rows = list(csv.reader(f))
    header = [c.strip() for c in rows[0]]
    _check_header(path, header, ("status", "description"))
    statuses = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise DataError(f"{path} line {line}: expected 2 fields (status, description), got {row!r}.")
        try:
            statuses[int(row[0])] = row[1].strip()
        except ValueError:
            raise DataError(f"{path} line {line}, field status: {row[0]!r} is not an integer.") from None
    return statuses


# --------------------------------------------------------------------------
# Interaction files, streamed


@dataclasses.dataclass
class InteractionBlock:
    """One block of valid interaction rows, as parallel arrays."""

    user_id: np.ndarray
    anime_id: np.ndarray
    rating: np.ndarray
    status: np.ndarray
    episodes: np.ndarray
    line: np.ndarray  # 1-based line number of each row in the file


@dataclasses.dataclass(frozen=True)
class ByteRange:
    """Whole lines [start, stop) of a CSV file; the first one is line `first_line` (1-based)."""

    start: int
    stop: int
    first_line: int


def key_aligned_ranges(path: str, range_bytes: int) -> list[ByteRange]:
    """Splits a CSV file's rows into ranges of about `range_bytes` that never split a
    run of rows sharing their first field (animelist.csv's user_id), so each range can
    be read on its own. Line numbers come from one pass counting newlines."""
    _require_file(path)
    size = files.size(path)
    with files.open_read(path) as f:
        data_start = len(f.readline())
        if size <= data_start:
            raise _no_rows(path)
        cuts = [data_start]
        for target in range(data_start + range_bytes, size, range_bytes):
            if target <= cuts[-1]:
                continue
            f.seek(target - 1)
            f.readline()  # to the start of the next whole line
            key = None
            while True:
                position = f.tell()
                line = f.readline()
                if not line:
                    break
                line_key = line.split(b",", 1)[0]
                if key is not None and line_key != key:
                    cuts.append(position)
                    break
                key = line_key
        cuts.append(size)
        ranges, line, f_position = [], 2, data_start
        f.seek(data_start)
        for start, stop in zip(cuts, cuts[1:]):
            if stop <= start:
                continue
            ranges.append(ByteRange(start, stop, line))
            while f_position < stop:
                chunk = f.read(min(1 << 24, stop - f_position))
                line += chunk.count(b"\n")
                f_position += len(chunk)
    return ranges


def iter_animelist(
    path: str, report: ReadReport, block_lines: int = DEFAULT_BLOCK_LINES, byte_range: ByteRange | None = None
) -> Iterator[InteractionBlock]:
    """Streams animelist.csv (or one ByteRange of it) in blocks of valid rows.

    Malformed rows (wrong field count, non-numeric field, number beyond int64,
    rating outside 0-10, unknown status, negative ids or episodes, non-UTF-8 bytes, blank lines) are
    counted in `report` with their line numbers; memory stays at one block.
    """
    for line_start, values in _iter_int_blocks(path, ANIMELIST_COLUMNS, report, block_lines, byte_range):
        user_id, anime_id, rating, status, episodes = values.T
        line = np.arange(line_start, line_start + len(values))
        ok = np.ones(len(values), dtype=bool)
        checks = (
            ("user_id", user_id < 0, "negative user_id"),
            ("anime_id", anime_id < 0, "negative anime_id"),
            ("rating", (rating < 0) | (rating > 10), "rating outside 0-10"),
            ("watching_status", ~np.isin(status, list(WATCHING_STATUS_NAMES)), "unknown watching_status"),
            ("watched_episodes", episodes < 0, "negative watched_episodes"),
        )
        for field, bad, reason in checks:
            bad &= ok
            _report_rows(report, reason, field, bad, line, values[:, ANIMELIST_COLUMNS.index(field)])
            ok &= ~bad
        if not ok.all():
            user_id, anime_id, rating, status, episodes, line = (
                a[ok] for a in (user_id, anime_id, rating, status, episodes, line)
            )
        yield InteractionBlock(user_id, anime_id, rating, status, episodes, line)
    if byte_range is None and report.rows_read == 0:
        raise _no_rows(path)


def _no_rows(path: str) -> DataError:
    return DataError(f"{path}: no rows after the header line; there is nothing to train on.")


def read_rating_complete(path: str, report: ReadReport) -> pd.DataFrame:
    """Reads rating_complete.csv (user_id, anime_id, rating 1-10), streamed in blocks."""
    frames = []
    for line_start, values in _iter_int_blocks(path, RATING_COMPLETE_COLUMNS, report, DEFAULT_BLOCK_LINES):
        line = np.arange(line_start, line_start + len(values))
        bad = (values[:, 2] < 1) | (values[:, 2] > 10)
        _report_rows(report, "rating outside 1-10", "rating", bad, line, values[:, 2])
        frames.append(pd.DataFrame(values[~bad], columns=list(RATING_COMPLETE_COLUMNS)))
    if not frames:
        return pd.DataFrame(columns=list(RATING_COMPLETE_COLUMNS), dtype=np.int64)
    return pd.concat(frames, ignore_index=True)


def _report_rows(report, reason, field, bad, line, values) -> None:
    count = int(bad.sum())
    if count:
        for i in np.flatnonzero(bad)[:MAX_EXAMPLES_PER_REASON]:
            report.add(reason, f"line {line[i]}: {field}={values[i]}", count=0)
        report.set_aside[reason] += count


def _iter_int_blocks(
    path: str, columns: tuple[str, ...], report: ReadReport, block_lines: int, byte_range: ByteRange | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first line number, int64 array [rows, len(columns)]) per block.

    The fast path hands a block of complete lines to pandas' C parser; a block
    it rejects (or whose row count disagrees with its line count) is parsed
    line by line so that each bad line is named and set aside.
    """
    _require_file(path)
    with files.open_read(path) as f:
        header_bytes = f.readline()
        try:
            header = [c.strip() for c in header_bytes.decode("utf-8").strip().split(",")]
        except UnicodeDecodeError:
            raise DataError(f"{path} line 1: header is not UTF-8 text.") from None
        if not header or header == [""]:
            raise DataError(f"{path}: file is empty; expected the header {','.join(columns)}.")
        _check_header(path, header, columns)
        if header != list(columns):
            raise DataError(f"{path} line 1: expected columns {','.join(columns)} in that order, found {header}.")
        line_no, stop = 2, None
        if byte_range is not None:
            f.seek(byte_range.start)
            line_no, stop = byte_range.first_line, byte_range.stop
        while True:
            lines = f.readlines(block_lines * 20)
            last = False
            if stop is not None:
                end = f.tell()
                while lines and end > stop:  # the range ends at the start of a line
                    end -= len(lines.pop())
                last = end >= stop
            if not lines:
                break
            if lines[-1] and not lines[-1].endswith(b"\n"):
                lines[-1] += b"\n"
            report.rows_read += len(lines)
            values = _parse_fast(lines, len(columns))
            if values is None:
                # A bad line somewhere in the block: parse it line by line.
                kept_lines, values = _parse_slow(lines, line_no, columns, report)
                yield from _split_contiguous(kept_lines, values)
            else:
                yield line_no, values
            line_no += len(lines)
            if last:
                break


def _parse_fast(lines: list[bytes], n_columns: int) -> np.ndarray | None:
    data = b"".join(lines)
    # Every line must hold exactly n_columns fields. pandas refuses a line with more than
    # its neighbours, but when every line has one more it reads the first field as an
    # index and shifts the others silently: the commas are counted first.
    if data.count(b",") != len(lines) * (n_columns - 1):
        return None
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            header=None,
            names=list(range(n_columns)),
            dtype=np.int64,
            engine="c",
            skip_blank_lines=False,
        )
    except (ValueError, pd.errors.ParserError, OverflowError):
        return None
    if len(frame) != len(lines):
        return None
    values = frame.to_numpy(dtype=np.int64)
    # pandas reads a field in [2^63, 2^64) as uint64 and the int64 dtype wraps it negative:
    # a block with a negative value is parsed line by line, which names that number (no
    # valid field is negative, so clean blocks stay here).
    if (values < 0).any():
        return None
    return values


def _parse_slow(lines, line_no, columns, report) -> tuple[np.ndarray, np.ndarray]:
    kept_lines = []
    rows = []
    for offset, raw in enumerate(lines):
        n = line_no + offset
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            report.add("non-UTF-8 bytes", f"line {n}")
            continue
        if not text.strip():
            report.add("blank line", f"line {n}")
            continue
        fields = text.split(",")
        if len(fields) != len(columns):
            report.add("wrong field count", f"line {n}: expected {len(columns)} fields, got {len(fields)}")
            continue
        try:
            row = [int(v) for v in fields]
        except ValueError:
            bad = next(c for c, v in zip(columns, fields) if not _is_int(v))
            report.add("non-numeric field", f"line {n}: {bad}={fields[columns.index(bad)]!r}")
            continue
        beyond = [c for c, v in zip(columns, row) if not INT64_MIN <= v <= INT64_MAX]
        if beyond:
            report.add("number beyond int64", f"line {n}: {beyond[0]}={fields[columns.index(beyond[0])]!r}")
            continue
        kept_lines.append(n)
        rows.append(row)
    values = np.array(rows, dtype=np.int64).reshape(-1, len(columns))
    return np.array(kept_lines, dtype=np.int64), values


def _split_contiguous(line_numbers: np.ndarray, values: np.ndarray):
    """Splits rows into runs of consecutive line numbers (each a block of its own)."""
    if len(line_numbers) == 0:
        return []
    breaks = np.flatnonzero(np.diff(line_numbers) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(line_numbers)]])
    return [(int(line_numbers[s]), values[s:e]) for s, e in zip(starts, ends)]


def _is_int(value: str) -> bool:
    try:
        int(value)
        return True
    except ValueError:
        return False
