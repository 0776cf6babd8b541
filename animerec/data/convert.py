"""Converts the Kaggle CSV files into tf.Example records, one folder per split.

write_examples is the work, shared by the pipeline's ExampleGen
(components/example_gen.py, which writes into its Examples artifact) and by
`animerec data convert` (convert_kaggle), whose output layout is:
    <out>/train/*.tfrecord    liked and set-aside rows outside eval (liked=0/1)
    <out>/eval/*.tfrecord     held-out liked rows
    <out>/catalog/*.tfrecord  one record per anime with name, genres, synopsis
    <out>/conversion_report.json

animelist.csv is read in user-aligned ranges, each labeled on its own, when it is
grouped by user as Kaggle ships it; otherwise its rows are first spilled to user
buckets (by user id) and each bucket is labeled whole: the same splits either way.
Interaction records are written in one global random order (spilled into
buckets at random, each bucket permuted), so ExampleGen need not reshuffle them
and no later stage depends on the file's order (any run of records is a random sample). Every record carries
every raw feature (features.RAW_FEATURES) so that the three splits share one
dense schema. Inputs, spill files and outputs may be on any filesystem that
TensorFlow reads (animerec.data.files), so that Beam workers on other machines share
them. convert_kaggle writes to a temporary folder, renames it into place, and skips
the work when the inputs and settings are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable

import numpy as np

from animerec import features
from animerec.data import files, interactions, kaggle
from animerec.pipeline import beam_args

REPORT_FILE = "conversion_report.json"
# Interaction records per output shard; shards let Beam read in parallel.
ROWS_PER_SHARD = 2_000_000
# About the fewest bytes an animelist.csv row takes with realistic ids (the Kaggle
# file averages 18): sizes the shuffle buckets so that few pass ROWS_PER_SHARD rows.
MIN_CSV_ROW_BYTES = 12
SHUFFLE_SEED = 0
# animelist.csv is read in user-aligned ranges of about this size, in parallel.
RANGE_BYTES = 32 << 20
INTERACTION_SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)
# Records compressed with GZIP (as TFX's ExampleGen writes them) take zlib's fastest level:
# they are read a few times and then kept, and the default level takes several times as
# long for a few percent less.
GZIP_LEVEL = 1


def _tf():
    import tensorflow as tf  # heavy import, only where records are written

    return tf


def encode_examples(columns: dict) -> list:
    """Serialized tf.Examples with one value per feature per row, from equal-length
    columns (numpy arrays, lists of bytes or Arrow arrays), by tfx_bsl's Arrow encoder:
    a block at a time instead of filling and serializing one proto per row."""
    import pyarrow as pa  # heavy imports, only where records are written
    from tfx_bsl.coders import example_coder

    rows = len(next(iter(columns.values())))
    offsets = pa.py_buffer(np.arange(rows + 1, dtype=np.int32))
    lists = []
    for values in columns.values():
        if isinstance(values, pa.ListArray):  # already a list per row (optional_values)
            lists.append(values)
            continue
        values = values if isinstance(values, pa.Array) else pa.array(values)
        lists.append(pa.ListArray.from_buffers(pa.list_(values.type), rows, [None, offsets], children=[values]))
    return example_coder.RecordBatchToExamplesEncoder().encode(pa.RecordBatch.from_arrays(lists, list(columns)))


def optional_values(values: np.ndarray, dtype) -> pa.ListArray:  # noqa: F821 - pyarrow is imported lazily
    """An Arrow list column of zero (NaN) or one value per row: a tf.Example feature that
    is absent where the value is unknown."""
    import pyarrow as pa

    known = ~np.isnan(values)
    offsets = np.concatenate([[0], np.cumsum(known)]).astype(np.int32)
    children = pa.array(values[known].astype(dtype))
    return pa.ListArray.from_buffers(
        pa.list_(children.type), len(values), [None, pa.py_buffer(offsets)], children=[children]
    )


def _empty_texts(rows: int):
    """`rows` empty byte strings as an Arrow array (every value offset is 0)."""
    import pyarrow as pa

    return pa.Array.from_buffers(
        pa.binary(), rows, [None, pa.py_buffer(np.zeros(rows + 1, np.int32)), pa.py_buffer(b"")]
    )


class _ExampleWriter:
    """Writes tf.Examples of the raw schema into numbered shards of one split (GZIP
    TFRecord files named *.gz when `compressed`, as TFX's ExampleGen writes them)."""

    def __init__(self, folder: str, prefix: str, compressed: bool = False):
        self._tf = _tf()
        self._folder = folder
        self._prefix = prefix
        self._compressed = compressed
        self._shard = 0
        self._rows_in_shard = 0
        self._writer = None
        files.makedirs(folder)

    def _open(self):
        name = f"{self._prefix}-{self._shard:05d}.tfrecord" + (".gz" if self._compressed else "")
        options = self._tf.io.TFRecordOptions("GZIP", compression_level=GZIP_LEVEL) if self._compressed else None
        self._writer = self._tf.io.TFRecordWriter(os.path.join(self._folder, name), options=options)

    def write_columns(self, ints: dict, texts: dict | None = None, optional: dict | None = None) -> None:
        """One record per row: `ints` maps every RAW_INT_FEATURES name to an array,
        `texts` every RAW_TEXT_FEATURES name to a list of bytes (empty when None),
        `optional` RAW_CATALOG_FEATURES names to optional_values columns."""
        rows = len(ints[features.RAW_INT_FEATURES[0]])
        start = 0
        while start < rows:
            if self._writer is None or self._rows_in_shard >= ROWS_PER_SHARD:
                self.close()
                self._open()
            stop = min(rows, start + ROWS_PER_SHARD - self._rows_in_shard)
            block = {name: np.asarray(ints[name][start:stop], dtype=np.int64) for name in features.RAW_INT_FEATURES}
            for name in features.RAW_TEXT_FEATURES:
                block[name] = _empty_texts(stop - start) if texts is None else texts[name][start:stop]
            for name, values in (optional or {}).items():
                block[name] = values.slice(start, stop - start)
            for record in encode_examples(block):
                self._writer.write(record)
            self._rows_in_shard += stop - start
            start = stop

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._shard += 1
            self._rows_in_shard = 0


@dataclasses.dataclass(frozen=True)
class _RegroupTask:
    """One Beam element of the regrouping stage (a file not grouped by user): a range of
    animelist.csv whose valid rows go to user buckets by user id."""

    index: int
    path: str
    byte_range: kaggle.ByteRange
    user_buckets: int
    spill_dir: str


@dataclasses.dataclass(frozen=True)
class _RangeTask:
    """One Beam element of the labeling stage: a user-aligned range of animelist.csv, or
    (regroup_ranges > 0) user bucket `index` of the regrouping stage."""

    index: int
    path: str
    byte_range: kaggle.ByteRange | None
    catalog_ids: np.ndarray
    liked_filter: interactions.LikedFilter
    split: interactions.SplitConfig
    buckets: int
    spill_dir: str
    regroup_ranges: int = 0


@dataclasses.dataclass(frozen=True)
class _BucketTask:
    """One Beam element of the second stage: a shuffle bucket of one split, written to `folder`."""

    split_name: str
    bucket: int
    ranges: int
    spill_dir: str
    folder: str
    compressed: bool


def _spill_path(spill_dir: str, split_name: str, bucket: int, range_index: int) -> str:
    return os.path.join(spill_dir, f"{split_name}-{bucket:05d}-{range_index:05d}.bin")


def _summary_path(spill_dir: str, range_index: int) -> str:
    return os.path.join(spill_dir, f"range-{range_index:05d}.pickle")


def _errors_dir(spill_dir: str) -> str:
    """Where failing tasks write their errors: a folder of its own, so that checking for
    one lists a handful of names, not every spill file (objects on a remote store)."""
    return os.path.join(spill_dir, "errors")


def _error_path(spill_dir: str, range_index: int, stage: str = "range") -> str:
    return os.path.join(_errors_dir(spill_dir), f"{stage}-{range_index:05d}.error")


def _user_bucket_path(spill_dir: str, bucket: int, range_index: int) -> str:
    return os.path.join(spill_dir, f"users-{bucket:05d}-{range_index:05d}.bin")


def _regroup_summary_path(spill_dir: str, range_index: int) -> str:
    return os.path.join(spill_dir, f"regroup-{range_index:05d}.pickle")


def _keeping_data_errors(stage: str, work: Callable):
    """`work(task)`, with a data error written to the task's error file (for
    _label_interactions to raise) instead of raised inside a Beam worker, which would print
    the worker's traceback and reach the caller wrapped in Beam's own error."""

    def run(task) -> int:
        try:
            return work(task)
        except kaggle.DataError as error:
            with files.open_write(_error_path(task.spill_dir, task.index, stage)) as f:
                error_record = {"message": str(error), "not_grouped": isinstance(error, interactions.NotGroupedError)}
                f.write(json.dumps(error_record).encode())
            return task.index

    return run


def _failed(spill_dir: str) -> bool:
    """Whether a task of an earlier stage wrote an error (later stages then do nothing)."""
    return bool(files.listdir(_errors_dir(spill_dir)))


def _first_error(spill_dir: str, tasks: int, stage: str = "range") -> dict | None:
    """The error of the first failing task of a stage (the earliest in the file), or None."""
    for i in range(tasks):
        if files.exists(_error_path(spill_dir, i, stage)):
            return json.loads(files.read_bytes(_error_path(spill_dir, i, stage)))
    return None


# Columns of a regrouped row, spilled as int64: the reader's InteractionBlock fields.
REGROUP_COLUMNS = ("user_id", "anime_id", "rating", "status", "episodes", "line")


def _regroup(task: _RegroupTask) -> int:
    """Reads one range of an animelist.csv not grouped by user and spills its valid rows,
    with their line numbers, into the user buckets (user_id modulo their number)."""
    report = kaggle.ReadReport(task.path)
    spills = [files.open_write(_user_bucket_path(task.spill_dir, b, task.index)) for b in range(task.user_buckets)]
    try:
        for block in kaggle.iter_animelist(task.path, report, byte_range=task.byte_range):
            columns = np.stack([getattr(block, name) for name in REGROUP_COLUMNS], axis=1).astype(np.int64)
            bucket = block.user_id % task.user_buckets
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(task.user_buckets + 1))
            for b in range(task.user_buckets):
                spills[b].write(columns[order[bounds[b] : bounds[b + 1]]].tobytes())
    finally:
        for f in spills:
            f.close()
    with files.open_write(_regroup_summary_path(task.spill_dir, task.index)) as f:
        pickle.dump(report, f)
    return task.index


def _read_spilled(paths: list[str], columns: int) -> np.ndarray:
    """The rows of spill files (int64 columns), which are removed once read."""
    rows = np.concatenate([np.frombuffer(files.read_bytes(p), np.int64).reshape(-1, columns) for p in paths])
    for p in paths:
        files.remove(p)
    return rows


def _regrouped_blocks(task: _RangeTask, block_rows: int = kaggle.DEFAULT_BLOCK_LINES):
    """User bucket `task.index` as blocks of rows grouped by user, each user's rows in file order."""
    paths = [_user_bucket_path(task.spill_dir, task.index, r) for r in range(task.regroup_ranges)]
    rows = _read_spilled(paths, len(REGROUP_COLUMNS))
    rows = rows[np.lexsort((rows[:, REGROUP_COLUMNS.index("line")], rows[:, 0]))]
    for start in range(0, len(rows), block_rows):
        yield kaggle.InteractionBlock(*rows[start : start + block_rows].T)


def _label_and_spill(task: _RangeTask) -> int:
    """Labels one range's rows (liked, train or eval) and spills them at random into
    the shuffle buckets of their split as raw int64 columns; the range's read report
    and counts go to a summary file."""
    start = time.time()
    report, stats = kaggle.ReadReport(task.path), interactions.ScanStats()
    if task.regroup_ranges and _failed(task.spill_dir):
        return task.index
    rng = np.random.default_rng([SHUFFLE_SEED, task.index])
    spills = {
        (split_name, b): files.open_write(_spill_path(task.spill_dir, split_name, b, task.index))
        for split_name in INTERACTION_SPLITS
        for b in range(task.buckets)
    }
    if task.regroup_ranges:
        source = _regrouped_blocks(task)
    else:
        source = kaggle.iter_animelist(task.path, report, byte_range=task.byte_range)
    try:
        for block in interactions.scan_blocks(
            task.path, source, task.catalog_ids, task.liked_filter, task.split, report, stats
        ):
            by_name = {
                features.USER_ID: block.user_id,
                features.ANIME_ID: block.anime_id,
                features.RATING: block.rating,
                features.LIKED: block.liked.astype(np.int64),
            }
            for split_name, rows in ((features.EVAL_SPLIT, block.is_eval), (features.TRAIN_SPLIT, ~block.is_eval)):
                # Spilled as int64 columns in RAW_INT_FEATURES' order (read back by _write_bucket).
                columns = np.stack([by_name[name][rows] for name in features.RAW_INT_FEATURES], axis=1)
                bucket = rng.integers(0, task.buckets, len(columns))
                order = np.argsort(bucket, kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(task.buckets + 1))
                for b in range(task.buckets):
                    spills[split_name, b].write(columns[order[bounds[b] : bounds[b + 1]]].tobytes())
    finally:
        for f in spills.values():
            f.close()
    with files.open_write(_summary_path(task.spill_dir, task.index)) as f:
        pickle.dump((report, stats), f)
    where = f"user bucket {task.index}" if task.regroup_ranges else f"lines {task.byte_range.first_line:,}+"
    count = sum(stats.rows_by_reason.values())
    print(f"  {os.path.basename(task.path)} {where}: {count:,} rows in {time.time() - start:.0f}s", flush=True)
    return task.index


def _write_bucket(task: _BucketTask) -> None:
    """Gathers one bucket of one split from every range, permutes it and writes its shard(s)
    (nothing when a range failed: the conversion stops with its error)."""
    if _failed(task.spill_dir):
        return
    paths = [_spill_path(task.spill_dir, task.split_name, task.bucket, r) for r in range(task.ranges)]
    rows = _read_spilled(paths, len(features.RAW_INT_FEATURES))
    if len(rows):
        rng = np.random.default_rng([SHUFFLE_SEED, INTERACTION_SPLITS.index(task.split_name), task.bucket])
        rows = rows[rng.permutation(len(rows))]
        writer = _ExampleWriter(task.folder, f"interactions-{task.bucket:05d}", task.compressed)
        writer.write_columns(dict(zip(features.RAW_INT_FEATURES, rows.T)))
        writer.close()


def beam_pipeline_factory(beam_pipeline_args: list[str] | None = None) -> Callable:
    """A function that makes a Beam pipeline with these arguments (beam_args.IN_PROCESS by default: in this process)."""

    def make_pipeline():
        import apache_beam as beam  # heavy import
        from apache_beam.options.pipeline_options import PipelineOptions

        return beam.Pipeline(options=PipelineOptions(beam_pipeline_args or list(beam_args.IN_PROCESS)))

    return make_pipeline


def _run_on_beam(
    range_tasks: list, bucket_tasks: list, make_pipeline: Callable, regroup_tasks: list | None = None
) -> None:
    """The stages in one Beam pipeline (one start of the workers); each waits for every
    task of the one before through a side input."""
    import apache_beam as beam  # heavy import

    from animerec.pipeline import worker_startup

    # A failing worker's traceback reaches the caller as Beam's own error.
    with worker_startup.quiet_job_service(), make_pipeline() as pipeline:
        label = _keeping_data_errors("range", _label_and_spill)
        ranges = pipeline | "Ranges" >> beam.Create(range_tasks)
        if regroup_tasks:
            regrouped = (
                pipeline
                | "RegroupRanges" >> beam.Create(regroup_tasks)
                | "Regroup" >> beam.Map(_keeping_data_errors("regroup", _regroup))
            )
            spilled = ranges | "LabelAndSpill" >> beam.Map(lambda task, _: label(task), beam.pvalue.AsList(regrouped))
        else:
            spilled = ranges | "LabelAndSpill" >> beam.Map(label)
        _ = (
            pipeline
            | "Buckets" >> beam.Create(bucket_tasks)
            | "ShuffleAndWrite" >> beam.Map(lambda task, _: _write_bucket(task), beam.pvalue.AsList(spilled))
        )


def shuffle_buckets(animelist_path: str) -> int:
    """How many buckets the converter's shuffle spills into (from the file's size)."""
    rows_at_most = files.size(animelist_path) // MIN_CSV_ROW_BYTES
    return max(1, -(-rows_at_most // ROWS_PER_SHARD))


# Bumped when the records' layout changes, so that older conversions are not reused.
RECORD_FORMAT = 2  # 2: catalog metadata (mal_score, members)


def input_fingerprint(data_dir: str, liked_filter, split) -> str:
    """Changes when an input file, a setting or the record format changes."""
    digest = hashlib.sha256(f"format {RECORD_FORMAT}".encode())
    for name in sorted(files.listdir(data_dir)):
        if name.endswith(".csv"):
            path = os.path.join(data_dir, name)
            digest.update(f"{name}:{files.size(path)}:{files.mtime_ns(path)}".encode())
    digest.update(json.dumps([dataclasses.asdict(liked_filter), dataclasses.asdict(split)]).encode())
    return digest.hexdigest()


def _label_interactions(
    path: str,
    ranges: list,
    anime_ids: np.ndarray,
    liked_filter: interactions.LikedFilter,
    split: interactions.SplitConfig,
    buckets: int,
    spill_dir: str,
    split_dirs: dict[str, str],
    compressed: bool,
    make_pipeline: Callable,
    regroup: bool = False,
) -> tuple[kaggle.ReadReport, interactions.ScanStats]:
    """Labels and shuffles animelist.csv's rows into the train and eval folders of `split_dirs`, on Beam.

    The file's user-aligned `ranges` are labeled one by one (the file grouped by user, as
    Kaggle ships it); a user met again in another place raises NotGroupedError. With
    `regroup`, the ranges' rows first go to `buckets` user buckets, each of which is then
    labeled whole: the same labels as for the grouped file, whatever the rows' order.
    Returns the merged read report and counts."""
    regroup_tasks = [_RegroupTask(i, path, r, buckets, spill_dir) for i, r in enumerate(ranges)] if regroup else None
    if regroup:
        tasks = [
            _RangeTask(b, path, None, anime_ids, liked_filter, split, buckets, spill_dir, len(ranges))
            for b in range(buckets)
        ]
    else:
        tasks = [
            _RangeTask(i, path, r, anime_ids, liked_filter, split, buckets, spill_dir) for i, r in enumerate(ranges)
        ]
    bucket_tasks = [
        _BucketTask(s, b, len(tasks), spill_dir, split_dirs[s], compressed)
        for s in INTERACTION_SPLITS
        for b in range(buckets)
    ]
    _run_on_beam(tasks, bucket_tasks, make_pipeline, regroup_tasks)
    for stage, count in (("regroup", len(ranges) if regroup else 0), ("range", len(tasks))):
        error = _first_error(spill_dir, count, stage)
        if error is not None:
            raise (interactions.NotGroupedError if error["not_grouped"] else kaggle.DataError)(error["message"])
    read_report, stats = kaggle.ReadReport(path), interactions.ScanStats()
    for i in range(len(ranges) if regroup else 0):
        read_report.merge(pickle.loads(files.read_bytes(_regroup_summary_path(spill_dir, i))))
    for i in range(len(tasks)):
        range_report, range_stats = pickle.loads(files.read_bytes(_summary_path(spill_dir, i)))
        read_report.merge(range_report)
        stats.merge(range_stats)
    interactions.check_ranges_grouped(path, stats)
    return read_report, stats


def write_examples(
    data_dir: str,
    split_dirs: dict[str, str],
    spill_dir: str,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
    progress: Callable[[str], None] = print,
    make_pipeline: Callable | None = None,
    compressed: bool = False,
) -> dict:
    """Reads and validates `data_dir`'s Kaggle files and writes each split's records into
    its folder of `split_dirs` (train, eval, catalog), GZIP-compressed when `compressed`.

    The interactions are converted on Beam (`make_pipeline`, in this process by default):
    user-aligned ranges of animelist.csv are labeled and spilled at random into shuffle
    buckets in `spill_dir` (created, and removed when done), then each bucket is permuted and written as a shard; memory
    stays at a block of rows per worker. A file not grouped by user is first regrouped
    (_label_interactions): its rows go to user buckets on disk, and each one is loaded
    whole (about ROWS_PER_SHARD rows) to be labeled. Every path may be on a remote
    filesystem (animerec.data.files); `spill_dir` must be one that every Beam worker sees.

    Returns the conversion report: what was read, set aside and written.
    """
    start = time.time()
    make_pipeline = make_pipeline or beam_pipeline_factory()
    catalog, catalog_reports = kaggle.read_catalog(data_dir)
    progress(f"Catalog: {len(catalog):,} anime from {', '.join(os.path.basename(r.path) for r in catalog_reports)}")

    catalog_writer = _ExampleWriter(split_dirs[features.CATALOG_SPLIT], "catalog", compressed)
    anime_ids = catalog["anime_id"].to_numpy()
    catalog_writer.write_columns(
        {
            features.USER_ID: np.full(len(catalog), features.NO_USER),
            features.ANIME_ID: anime_ids,
            features.RATING: np.zeros(len(catalog)),
            features.LIKED: np.zeros(len(catalog)),
        },
        {
            features.NAME: [text.encode("utf-8") for text in catalog["name"]],
            features.GENRES: [text.encode("utf-8") for text in catalog["genres"]],
            features.SYNOPSIS: [text.encode("utf-8") for text in catalog["synopsis"]],
        },
        {
            features.MAL_SCORE: optional_values(catalog["score"].to_numpy(np.float64), np.float32),
            features.MEMBERS: optional_values(catalog["members"].to_numpy(np.float64), np.int64),
        },
    )
    catalog_writer.close()

    animelist_path = os.path.join(data_dir, kaggle.ANIMELIST_CSV)
    ranges = kaggle.key_aligned_ranges(animelist_path, RANGE_BYTES)
    buckets = shuffle_buckets(animelist_path)
    progress(
        f"animelist.csv: {files.size(animelist_path) / 1e6:,.0f} MB in {len(ranges)} user-aligned range(s), "
        f"shuffled through {buckets} bucket(s) per split"
    )
    try:
        for regrouped in (False, True):
            files.rmtree(spill_dir)
            files.makedirs(_errors_dir(spill_dir))
            try:
                read_report, stats = _label_interactions(
                    animelist_path,
                    ranges,
                    anime_ids,
                    liked_filter,
                    split,
                    buckets,
                    spill_dir,
                    split_dirs,
                    compressed,
                    make_pipeline,
                    regrouped,
                )
                break
            except interactions.NotGroupedError as error:
                if regrouped:
                    raise
                progress(f"{error.args[0].split('. ')[0]}: regrouping animelist.csv by user_id, a pass more")
                for split_name in INTERACTION_SPLITS:
                    files.rmtree(split_dirs[split_name])
    finally:
        files.rmtree(spill_dir)
    # A split with no rows has nothing to train or evaluate on.
    for split_name in INTERACTION_SPLITS:
        folder = split_dirs[split_name]
        if not files.exists(folder) or not files.listdir(folder):
            raise kaggle.DataError(
                f"{animelist_path}: no {split_name} rows after filtering "
                f"({dict(stats.rows_by_reason)}); nothing to train or evaluate on."
            )
    report = {
        "data_dir": files.absolute(data_dir),
        "liked_filter": dataclasses.asdict(liked_filter),
        "split": dataclasses.asdict(split),
        "catalog_size": int(len(catalog)),
        "catalog_files": [r.to_dict() for r in catalog_reports],
        "animelist": read_report.to_dict(),
        "interactions": stats.to_dict(),
        "ranges": len(ranges),
        "shuffle_buckets": buckets,
        # True when animelist.csv was not grouped by user_id and the converter regrouped it.
        "regrouped": regrouped,
        "seconds": round(time.time() - start, 1),
    }
    progress(
        f"Converted {read_report.rows_read:,} rows in {report['seconds']}s: "
        f"{stats.train_rows:,} train, {stats.eval_rows:,} eval, {len(catalog):,} catalog records"
    )
    return report


def write_report(folder: str, report: dict) -> None:
    """The conversion report as folder/REPORT_FILE (any filesystem)."""
    with files.open_write(os.path.join(folder, REPORT_FILE)) as f:
        f.write(json.dumps(report, indent=2).encode())


def convert_kaggle(
    data_dir: str,
    out_dir: str,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
    progress: Callable[[str], None] = print,
    beam_pipeline_args: list[str] | None = None,
) -> dict:
    """`animerec data convert`: write_examples into out_dir/<split>/ (a local folder), on
    Beam with `beam_pipeline_args` (beam_args.IN_PROCESS by default: in this process).

    Returns the conversion report, also written to out_dir/conversion_report.json. The
    work is skipped when the report's fingerprint (input files, settings) is unchanged.
    """
    fingerprint = input_fingerprint(data_dir, liked_filter, split)
    report_path = os.path.join(out_dir, REPORT_FILE)
    if os.path.exists(report_path):
        with open(report_path) as f:
            previous = json.load(f)
        if previous.get("fingerprint") == fingerprint:
            progress(f"Conversion of {data_dir} is up to date in {out_dir}; reusing it.")
            return previous

    tmp_dir = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        report = write_examples(
            data_dir,
            {name: os.path.join(tmp_dir, name) for name in features.SPLITS},
            os.path.join(tmp_dir, "spill"),
            liked_filter,
            split,
            progress,
            beam_pipeline_factory(beam_pipeline_args),
        )
        report = {"fingerprint": fingerprint, **report}
        write_report(tmp_dir, report)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        # A data error, a stop: nothing half-written (spill files can take gigabytes) stays.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    progress(f"Wrote {out_dir}")
    return report
