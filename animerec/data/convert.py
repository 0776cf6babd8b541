"""Converts the Kaggle CSV files into the TFRecords that ExampleGen imports.

Output layout (one ImportExampleGen input split per folder):
    <out>/train/*.tfrecord    liked and set-aside rows outside eval (liked=0/1)
    <out>/eval/*.tfrecord     held-out liked rows
    <out>/catalog/*.tfrecord  one record per anime with name, genres, synopsis
    <out>/conversion_report.json

Every record carries every raw feature (features.RAW_FEATURES) so that the
three splits share one dense schema. Output is written to a temporary folder
and renamed into place, and skipped when the inputs and settings are
unchanged, so ExampleGen's cache stays valid across runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable

import numpy as np

from animerec import features
from animerec.data import interactions, kaggle

REPORT_FILE = "conversion_report.json"
# Interaction records per output shard; shards let Beam read in parallel.
ROWS_PER_SHARD = 2_000_000


def _tf():
    import tensorflow as tf  # noqa: PLC0415 - heavy import, only where records are written

    return tf


def encode_examples(columns: dict) -> list:
    """Serialized tf.Examples with one value per feature per row, from equal-length
    columns (numpy arrays, lists of bytes or Arrow arrays), by tfx_bsl's Arrow encoder:
    a block at a time instead of filling and serializing one proto per row."""
    import pyarrow as pa  # noqa: PLC0415 - heavy imports, only where records are written
    from tfx_bsl.coders import example_coder  # noqa: PLC0415

    rows = len(next(iter(columns.values())))
    offsets = pa.py_buffer(np.arange(rows + 1, dtype=np.int32))
    lists = []
    for values in columns.values():
        values = values if isinstance(values, pa.Array) else pa.array(values)
        lists.append(pa.ListArray.from_buffers(pa.list_(values.type), rows, [None, offsets], children=[values]))
    return example_coder.RecordBatchToExamplesEncoder().encode(pa.RecordBatch.from_arrays(lists, list(columns)))


def _empty_texts(rows: int):
    """`rows` empty byte strings as an Arrow array (every value offset is 0)."""
    import pyarrow as pa  # noqa: PLC0415

    return pa.Array.from_buffers(
        pa.binary(), rows, [None, pa.py_buffer(np.zeros(rows + 1, np.int32)), pa.py_buffer(b"")]
    )


class _ExampleWriter:
    """Writes tf.Examples of the raw schema into numbered shards of one split."""

    def __init__(self, folder: str, prefix: str):
        self._tf = _tf()
        self._folder = folder
        self._prefix = prefix
        self._shard = 0
        self._rows_in_shard = 0
        self._writer = None
        os.makedirs(folder, exist_ok=True)

    def _open(self):
        path = os.path.join(self._folder, f"{self._prefix}-{self._shard:05d}.tfrecord")
        self._writer = self._tf.io.TFRecordWriter(path)

    def write_columns(self, ints: dict, texts: dict | None = None) -> None:
        """One record per row: `ints` maps every RAW_INT_FEATURES name to an array,
        `texts` every RAW_TEXT_FEATURES name to a list of bytes (empty when None)."""
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


def input_fingerprint(data_dir: str, liked_filter, split) -> str:
    """Changes when an input file or a setting changes."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(data_dir)):
        if name.endswith(".csv"):
            stat = os.stat(os.path.join(data_dir, name))
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps([dataclasses.asdict(liked_filter), dataclasses.asdict(split)]).encode())
    return digest.hexdigest()


def convert_kaggle(
    data_dir: str,
    out_dir: str,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
    progress: Callable[[str], None] = print,
) -> dict:
    """Converts `data_dir`'s Kaggle files into ExampleGen input under `out_dir`.

    Returns the conversion report (also written to out_dir/conversion_report.json).
    """
    fingerprint = input_fingerprint(data_dir, liked_filter, split)
    report_path = os.path.join(out_dir, REPORT_FILE)
    if os.path.exists(report_path):
        with open(report_path) as f:
            previous = json.load(f)
        if previous.get("fingerprint") == fingerprint:
            progress(f"Conversion of {data_dir} is up to date in {out_dir}; reusing it.")
            return previous

    start = time.time()
    tmp_dir = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    catalog, catalog_reports = kaggle.read_catalog(data_dir)
    progress(f"Catalog: {len(catalog):,} anime from {', '.join(os.path.basename(r.path) for r in catalog_reports)}")

    catalog_writer = _ExampleWriter(os.path.join(tmp_dir, features.CATALOG_SPLIT), "catalog")
    anime_ids = catalog["anime_id"].to_numpy()
    catalog_writer.write_columns(
        dict(
            zip(
                features.RAW_INT_FEATURES,
                (np.full(len(catalog), features.NO_USER), anime_ids, np.zeros(len(catalog)), np.zeros(len(catalog))),
            )
        ),
        {
            name: [text.encode("utf-8") for text in catalog[column]]
            for name, column in zip(features.RAW_TEXT_FEATURES, ("name", "genres", "synopsis"))
        },
    )
    catalog_writer.close()

    animelist_path = os.path.join(data_dir, kaggle.ANIMELIST_CSV)
    read_report = kaggle.ReadReport(animelist_path)
    stats = interactions.ScanStats()
    writers = {
        features.TRAIN_SPLIT: _ExampleWriter(os.path.join(tmp_dir, features.TRAIN_SPLIT), "interactions"),
        features.EVAL_SPLIT: _ExampleWriter(os.path.join(tmp_dir, features.EVAL_SPLIT), "interactions"),
    }
    liked_index = interactions.REASONS.index(interactions.LIKED)
    last_report = time.time()
    for block in interactions.scan_animelist(
        animelist_path, catalog["anime_id"].to_numpy(), liked_filter, split, read_report, stats
    ):
        liked = (block.reason == liked_index).astype(np.int64)
        for split_name, rows in ((features.EVAL_SPLIT, block.is_eval), (features.TRAIN_SPLIT, ~block.is_eval)):
            columns = (block.user_id[rows], block.anime_id[rows], block.rating[rows], liked[rows])
            writers[split_name].write_columns(dict(zip(features.RAW_INT_FEATURES, columns)))
        if time.time() - last_report > 10:
            last_report = time.time()
            progress(
                f"  animelist.csv: {read_report.rows_read:,} rows read, {stats.users:,} users "
                f"({read_report.rows_read / (time.time() - start):,.0f} rows/s)"
            )
    for writer in writers.values():
        writer.close()
    # A split with no rows still needs a file for ExampleGen's input pattern.
    for split_name in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        folder = os.path.join(tmp_dir, split_name)
        if not os.listdir(folder):
            raise kaggle.DataError(
                f"{animelist_path}: no {split_name} rows after filtering "
                f"({dict(stats.rows_by_reason)}); nothing to train or evaluate on."
            )

    report = {
        "fingerprint": fingerprint,
        "data_dir": os.path.abspath(data_dir),
        "liked_filter": dataclasses.asdict(liked_filter),
        "split": dataclasses.asdict(split),
        "catalog_size": int(len(catalog)),
        "catalog_files": [r.to_dict() for r in catalog_reports],
        "animelist": read_report.to_dict(),
        "interactions": stats.to_dict(),
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(tmp_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
    progress(
        f"Converted {read_report.rows_read:,} rows in {report['seconds']}s: "
        f"{stats.train_rows:,} train, {stats.eval_rows:,} eval, {len(catalog):,} catalog records -> {out_dir}"
    )
    return report
