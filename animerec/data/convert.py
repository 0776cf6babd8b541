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
        self._example = self._tf.train.Example()
        feature = self._example.features.feature
        for name in features.RAW_INT_FEATURES:
            feature[name].int64_list.value.append(0)
        for name in features.RAW_TEXT_FEATURES:
            feature[name].bytes_list.value.append(b"")
        self._ints = [feature[name].int64_list.value for name in features.RAW_INT_FEATURES]
        self._texts = [feature[name].bytes_list.value for name in features.RAW_TEXT_FEATURES]

    def _open(self):
        path = os.path.join(self._folder, f"{self._prefix}-{self._shard:05d}.tfrecord")
        self._writer = self._tf.io.TFRecordWriter(path)

    def write(self, ints: tuple, texts: tuple = (b"", b"", b"")) -> None:
        if self._writer is None or self._rows_in_shard >= ROWS_PER_SHARD:
            self.close()
            self._open()
        for values, value in zip(self._ints, ints):
            values[0] = value
        for values, value in zip(self._texts, texts):
            values[0] = value
        self._writer.write(self._example.SerializeToString())
        self._rows_in_shard += 1

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
    for anime_id, name, genres, synopsis in zip(
        catalog["anime_id"], catalog["name"], catalog["genres"], catalog["synopsis"]
    ):
        catalog_writer.write(
            (features.NO_USER, int(anime_id), 0, 0),
            (name.encode("utf-8"), genres.encode("utf-8"), synopsis.encode("utf-8")),
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
        for user_id, anime_id, rating, is_liked, is_eval in zip(
            block.user_id.tolist(),
            block.anime_id.tolist(),
            block.rating.tolist(),
            liked.tolist(),
            block.is_eval.tolist(),
        ):
            split_name = features.EVAL_SPLIT if is_eval else features.TRAIN_SPLIT
            writers[split_name].write((user_id, anime_id, rating, is_liked))
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
