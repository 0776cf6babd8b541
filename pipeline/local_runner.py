"""Runs create_pipeline with LocalDagRunner on Beam's DirectRunner.

Everything lives under one output folder:
    <out>/examples_input/   the converted Kaggle files (ExampleGen's input)
    <out>/pipeline/         TFX artifacts (pipeline root)
    <out>/metadata.sqlite   ML Metadata
    <out>/serving/<version>/ pushed models, as TF Serving expects
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging as std_logging
import os
import sys
import time
from collections.abc import Callable

from animerec.config import TrainingConfig
from animerec.data import convert, interactions
from animerec.evaluation import GateConfig
from animerec.pipeline.pipeline import SCHEMA_FILE, create_pipeline

PIPELINE_NAME = "animerec"


def direct_runner_args(workers: int | None = None) -> list[str]:
    """DirectRunner in multi-processing mode, one worker per core."""
    workers = workers or os.cpu_count() or 1
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def output_paths(output_dir: str) -> dict[str, str]:
    return {
        "examples_input": os.path.join(output_dir, "examples_input"),
        "pipeline_root": os.path.join(output_dir, "pipeline"),
        "metadata": os.path.join(output_dir, "metadata.sqlite"),
        "serving_dir": os.path.join(output_dir, "serving"),
    }


class _ComponentProgress:
    """Prints a line as each component starts and ends, and whether it ran or came from cache.

    LocalDagRunner reports progress only through absl INFO logs, which the
    Trainer's libraries silence; wrapping the launcher does not depend on log levels.
    """

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.cached: dict[str, bool] = {}

    @contextlib.contextmanager
    def installed(self):
        from tfx.orchestration.portable import launcher  # noqa: PLC0415

        original_launch = launcher.Launcher.launch
        original_run_executor = launcher.Launcher._run_executor
        tracker = self

        def launch(self_, *args, **kwargs):
            name = self_._pipeline_node.node_info.id
            tracker.cached[name] = True
            tracker.progress(f"[{time.strftime('%H:%M:%S')}] {name} ...")
            start = time.time()
            result = original_launch(self_, *args, **kwargs)
            tracker.seconds[name] = time.time() - start
            system_node = getattr(self_, "_system_node_handler", None) is not None
            how = "cached" if tracker.cached[name] and not system_node else "done"
            tracker.progress(f"[{time.strftime('%H:%M:%S')}] {name} {how} in {tracker.seconds[name]:.1f}s")
            return result

        def run_executor(self_, *args, **kwargs):
            tracker.cached[self_._pipeline_node.node_info.id] = False
            return original_run_executor(self_, *args, **kwargs)

        launcher.Launcher.launch = launch
        launcher.Launcher._run_executor = run_executor
        try:
            yield self
        finally:
            launcher.Launcher.launch = original_launch
            launcher.Launcher._run_executor = original_run_executor


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


@contextlib.contextmanager
def _logs_to_file(path: str):
    """Sends logs to a file; the console gets errors and the progress lines."""
    root = std_logging.getLogger()
    file_handler = std_logging.FileHandler(path)
    file_handler.setLevel(std_logging.INFO)
    file_handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_levels = [(h, h.level) for h in root.handlers]
    for h, _ in console_levels:
        h.setLevel(std_logging.ERROR)
    previous_level = root.level
    root.setLevel(std_logging.INFO)
    root.addHandler(file_handler)
    # Beam's worker processes inherit these: no per-worker TensorFlow banners.
    previous_env = {k: os.environ.get(k) for k in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["PYTHONWARNINGS"] = "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning"
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        root.setLevel(previous_level)
        for h, level in console_levels:
            h.setLevel(level)
        for k, v in previous_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def newest_pushed_model(serving_dir: str) -> str | None:
    """The newest complete version (Pusher copies saved_model.pb last)."""
    versions = [
        d
        for d in glob.glob(os.path.join(serving_dir, "*"))
        if os.path.basename(d).isdigit() and os.path.exists(os.path.join(d, "saved_model.pb"))
    ]
    return max(versions, key=lambda d: int(os.path.basename(d))) if versions else None


def latest_evaluation(pipeline_root: str) -> dict | None:
    """metrics.json, report path and verdict of the newest RetrievalEvaluator execution."""
    runs = glob.glob(os.path.join(pipeline_root, "RetrievalEvaluator", "evaluation", "*", "metrics.json"))
    if not runs:
        return None
    newest = max(runs, key=lambda p: int(os.path.basename(os.path.dirname(p))))
    execution = os.path.basename(os.path.dirname(newest))
    with open(newest) as fh:
        metrics = json.load(fh)
    blessed = os.path.exists(os.path.join(pipeline_root, "RetrievalEvaluator", "blessing", execution, "BLESSED"))
    return {"metrics": metrics, "report": os.path.join(os.path.dirname(newest), "report.md"), "blessed": blessed}


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
    """Converts data_dir's Kaggle files and runs the whole pipeline; returns where things are."""
    from tfx import v1 as tfx  # noqa: PLC0415 - heavy import

    paths = output_paths(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    progress(f"[{time.strftime('%H:%M:%S')}] Converting {data_dir}")
    log_path = os.path.join(output_dir, "pipeline.log")
    progress(f"Full log: {log_path}")
    # The converter runs on this machine's DirectRunner even when the pipeline's Beam
    # arguments name a distributed runner: its input and output are local files.
    local_args = beam_pipeline_args if beam_pipeline_args and "--runner=DirectRunner" in beam_pipeline_args else None
    with _logs_to_file(log_path):
        convert.convert_kaggle(
            data_dir,
            paths["examples_input"],
            liked_filter,
            split,
            progress=progress,
            beam_pipeline_args=local_args or direct_runner_args(),
        )
    timings = {"convert": time.time() - start}

    pipeline = create_pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=paths["pipeline_root"],
        data_root=paths["examples_input"],
        serving_dir=paths["serving_dir"],
        training=training,
        gate=gate,
        train_steps=train_steps,
        schema_file=None if infer_schema else SCHEMA_FILE,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(paths["metadata"]),
        beam_pipeline_args=beam_pipeline_args if beam_pipeline_args is not None else direct_runner_args(),
    )
    tracker = _ComponentProgress(progress)
    with _logs_to_file(log_path), tracker.installed(), _program_name_only():
        tfx.orchestration.LocalDagRunner().run(pipeline)
    timings.update(tracker.seconds)
    timings["total"] = time.time() - start
    from animerec import report  # noqa: PLC0415

    report_path = report.write_report(output_dir)
    return {
        "report": report_path,
        "paths": paths,
        "pushed_model": newest_pushed_model(paths["serving_dir"]),
        "evaluation": latest_evaluation(paths["pipeline_root"]),
        "seconds": timings,
        "cached": tracker.cached,
    }
