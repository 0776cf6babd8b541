"""Beam arguments for runs on this machine: which runner, and whether the Beam stages run
in this process or on worker processes. The pipeline's components, `data convert` and
`batch-recommend` all take theirs from here (on a cluster, the pipeline's own Beam
arguments replace them)."""

from __future__ import annotations

import os

from animerec.data import files, kaggle

# Every Beam stage in this process (Beam's FnApiRunner in memory; see local_beam_args).
IN_PROCESS = ("--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1")

# A local run's Beam stages run in this process when animelist.csv is at most this
# big (about a million rows), and on one worker process per core above it. Worker
# processes pay TensorFlow's import and the records' trip between processes in every
# Beam stage, then run two to three times as many rows a second. Measured here (2 cores)
# on generated data, ExampleGen + StatisticsGen + Transform: 0.5M rows (8 MB) took 95 s in
# this process against 140 s on two workers; 2.1M rows (36 MB) 322 s against 208 s.
IN_PROCESS_MAX_BYTES = 16 << 20


# The package's setup.py, in a source checkout (absent from an installed package).
SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def local_beam_args(workers: int | None = None) -> list[str]:
    """Beam arguments for this machine: `workers` 1 runs every Beam stage in this process,
    more run it on that many worker processes (default: one per core).

    The runner is Beam's FnApiRunner, the one the DirectRunner picks for a batch pipeline,
    named directly: the DirectRunner first tries the Prism runner, whose binary it
    downloads from GitHub, which costs 2 to 3 s a Beam stage where there is no network
    and runs another runner where there is.
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        args = list(IN_PROCESS)
    else:
        args = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    # This package, as Beam's workers would install it: the local runner's workers already
    # have it, and without such a flag TFX builds and attaches a source package of itself
    # for every Beam component (2 s each, for nothing here).
    if os.path.exists(SETUP_FILE):
        args.append(f"--setup_file={SETUP_FILE}")
    return args


def default_beam_args(data_dir: str, workers: int | None = None) -> list[str]:
    """local_beam_args(workers); without `workers`, in this process for a small animelist.csv
    (IN_PROCESS_MAX_BYTES) and one worker per core otherwise."""
    if workers is None:
        path = os.path.join(data_dir, kaggle.ANIMELIST_CSV)
        if files.exists(path) and files.size(path) <= IN_PROCESS_MAX_BYTES:
            workers = 1
    return local_beam_args(workers)
