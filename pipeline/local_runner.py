"""Runs create_pipeline with LocalDagRunner on this machine's Beam (FnApiRunner).

Everything lives under one output folder (the Kaggle CSV files stay where they are:
KaggleExampleGen reads them):
    <out>/pipeline/         TFX artifacts (pipeline root)
    <out>/metadata.sqlite   ML Metadata
    <out>/serving/<version>/ pushed models, as TF Serving expects
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import time
from collections.abc import Callable

from animerec.config import TrainingConfig
from animerec.data import files, interactions
from animerec.evaluation import GateConfig
from animerec.features import PIPELINE_NAME
from animerec.pipeline import artifacts, shutdown, worker_startup
from animerec.pipeline import progress as progress_module
from animerec.pipeline.beam_args import default_beam_args
from animerec.pipeline.pipeline import SCHEMA_FILE, create_pipeline


def output_paths(output_dir: str) -> dict[str, str]:
    return {
        "pipeline_root": os.path.join(output_dir, "pipeline"),
        "metadata": os.path.join(output_dir, "metadata.sqlite"),
        "serving_dir": os.path.join(output_dir, "serving"),
    }


@contextlib.contextmanager
def _program_name_only():
    """TFX's Beam executors parse sys.argv with absl flags; the caller's own
    arguments (pytest's -v, say) must not be read as theirs."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _not_tfx_failure_note(record: std_logging.LogRecord) -> bool:
    """False for the note TFX's launcher logs when an executor raises ("Execution N
    failed."): the error itself reaches the command, which reports it in one paragraph."""
    return record.msg != "Execution %d failed."


@contextlib.contextmanager
def _logs_to_file(path: str):
    """Sends logs to a file; the console gets errors (those the command does not report
    itself) and the progress lines."""
    root = std_logging.getLogger()
    file_handler = std_logging.FileHandler(path)
    file_handler.setLevel(std_logging.INFO)
    file_handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_levels = [(h, h.level) for h in shutdown.console_handlers()]
    for h, _ in console_levels:
        h.setLevel(std_logging.ERROR)
        h.addFilter(_not_tfx_failure_note)
    previous_level = root.level
    root.setLevel(std_logging.INFO)
    root.addHandler(file_handler)
    try:
        # Beam's worker processes inherit its environment: quiet, with their start-up code.
        with worker_startup.quiet_workers():
            yield
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        root.setLevel(previous_level)
        for h, level in console_levels:
            h.setLevel(level)
            h.removeFilter(_not_tfx_failure_note)


def run_local(
    data_dir: str,
    output_dir: str,
    training: TrainingConfig = TrainingConfig(),
    gate: GateConfig = GateConfig(),
    train_steps: int | None = None,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
    beam_pipeline_args: list[str] | None = None,
    infer_schema: bool = False,
    progress: Callable[[str], None] = print,
) -> dict:
    """Runs the whole pipeline on data_dir's Kaggle files; returns where things are."""
    from tfx import v1 as tfx  # heavy import

    paths = output_paths(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    # SIGTERM or Ctrl-C: the running component is recorded as failed, Beam's workers stop.
    with shutdown.stops_cleanly(paths["metadata"]):
        log_path = os.path.join(output_dir, "pipeline.log")
        progress(f"[{time.strftime('%H:%M:%S')}] Running the pipeline on {data_dir}; full log: {log_path}")
        if beam_pipeline_args is None:
            beam_pipeline_args = default_beam_args(data_dir)
        pipeline = create_pipeline(
            pipeline_name=PIPELINE_NAME,
            pipeline_root=paths["pipeline_root"],
            data_root=files.absolute(data_dir),
            serving_dir=paths["serving_dir"],
            training=training,
            gate=gate,
            train_steps=train_steps,
            schema_file=None if infer_schema else SCHEMA_FILE,
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(paths["metadata"]),
            beam_pipeline_args=beam_pipeline_args,
            liked_filter=liked_filter,
            split=split,
        )
        tracker = progress_module.ComponentProgress(progress)
        with _logs_to_file(log_path), tracker.installed(), _program_name_only():
            tfx.orchestration.LocalDagRunner().run(pipeline)
        timings = dict(tracker.seconds)
    timings["total"] = time.time() - start
    from animerec import report

    report_path = report.write_report(output_dir)
    return {
        "report": report_path,
        "paths": paths,
        "pushed_model": artifacts.newest_version_dir(paths["serving_dir"]),
        "evaluation": artifacts.latest_evaluation(paths["metadata"]),
        "seconds": timings,
        "cached": tracker.cached,
    }
