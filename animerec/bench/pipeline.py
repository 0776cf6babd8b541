"""`animerec bench pipeline`: the whole pipeline on generated data at several sizes: wall
time per stage, rows per second and the peak memory of the process tree, extrapolated
to the full Kaggle file."""

import _thread
import json
import os
import tempfile
import threading
import time


class _TreeMemory:
    """Samples the resident memory of this process and its children (Beam workers),
    overall and per pipeline stage (`stage` is set from the runner's progress lines).

    Past `limit` bytes it stops the run instead of letting the kernel's OOM killer pick
    a process: the workers are killed, the main thread gets KeyboardInterrupt, and
    `exceeded` names the stage and the memory reached."""

    def __init__(self, interval: float = 0.5, limit: int | None = None):
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.limit = limit
        self.exceeded: tuple[str, int] | None = None
        self.peak = 0
        self.stage = "start"
        self.by_stage: dict[str, int] = {}
        # The main process alone: the runner, and the in-process Trainer and Evaluator.
        self.main_by_stage: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = self._psutil.Process()
        while not self._stop.wait(self.interval):
            try:
                main = me.memory_info().rss
                total = main + sum(c.memory_info().rss for c in me.children(recursive=True))
            except self._psutil.Error:
                continue
            self.main_by_stage[self.stage] = max(self.main_by_stage.get(self.stage, 0), main)
            self.peak = max(self.peak, total)
            self.by_stage[self.stage] = max(self.by_stage.get(self.stage, 0), total)
            if self.limit and total > self.limit and self.exceeded is None:
                self.exceeded = (self.stage, total)
                for child in me.children(recursive=True):
                    child.kill()
                _thread.interrupt_main()

    def follow(self, line: str) -> None:
        """A progress line "[HH:MM:SS] Stage ..." starts a stage."""
        if line.startswith("[") and line.endswith(" ..."):
            self.stage = line.split("] ", 1)[1][: -len(" ...")]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


FULL_ROWS = 109_000_000
ROWS_PER_USER = 313  # what --rows-per-user 750 yields at 17.5k anime, as at the full scale
PIPELINE_STAGES = ("KaggleExampleGen", "StatisticsGen", "Transform", "Trainer", "RetrievalEvaluator")


def bench_pipeline(
    sizes=(1_000_000, 5_000_000, 20_000_000),
    workdir: str | None = None,
    epochs: int = 1,
    memory_limit_gb: float | None = None,
    progress=print,
) -> dict:
    """Per-stage wall time, rows/s and peak memory of the whole pipeline at each size.

    A size whose process tree passes `memory_limit_gb` (default: 90% of this machine's
    memory) is stopped and reported with the stage it reached; larger sizes are skipped.
    """
    import psutil

    from animerec.config import TrainingConfig
    from animerec.data import synth
    from animerec.evaluation import GateConfig
    from animerec.pipeline import local_runner

    workdir = workdir or tempfile.mkdtemp(prefix="animerec-bench-")
    limit = int((memory_limit_gb or 0.9 * psutil.virtual_memory().total / 1e9) * 1e9)
    results, stopped = [], None
    for rows in sizes:
        users = max(100, rows // ROWS_PER_USER)
        data_dir = os.path.join(workdir, f"data-{rows}")
        start = time.time()
        summary = synth.synthesize(
            data_dir, synth.SynthConfig(users=users, anime=17_500, mean_rows_per_user=750.0), progress=lambda _: None
        )
        synth_seconds = time.time() - start
        out_dir = os.path.join(workdir, f"out-{rows}")
        with _TreeMemory(limit=limit) as memory:
            try:
                run = local_runner.run_local(
                    data_dir,
                    out_dir,
                    training=TrainingConfig(epochs=epochs, batch_size=4096),
                    gate=GateConfig(min_value=0.0, min_lift_over_popularity=-1.0, max_regression=1.0),
                    progress=memory.follow,
                )
            except KeyboardInterrupt:
                if memory.exceeded is None:
                    raise
        actual = summary["animelist_rows"]
        if memory.exceeded is not None:
            stage, reached = memory.exceeded
            stopped = {"rows": actual, "stage": stage, "memory_gb": round(reached / 1e9, 2), "limit_gb": limit / 1e9}
            progress(
                f"{actual:>11,} rows: stopped in {stage} at {stopped['memory_gb']} GB "
                f"(limit {limit / 1e9:.1f} GB); larger sizes skipped"
            )
            break
        stages = {s: round(run["seconds"].get(s, 0.0), 1) for s in PIPELINE_STAGES}
        result = {
            "rows": actual,
            "users": users,
            "synth_seconds": round(synth_seconds, 1),
            "stages_seconds": stages,
            "total_seconds": round(run["seconds"]["total"], 1),
            "rows_per_second": round(actual / run["seconds"]["total"]),
            "peak_memory_gb": round(memory.peak / 1e9, 2),
            "stage_peak_memory_gb": {s: round(memory.by_stage.get(s, 0) / 1e9, 2) for s in PIPELINE_STAGES},
            "stage_peak_main_memory_gb": {s: round(memory.main_by_stage.get(s, 0) / 1e9, 2) for s in PIPELINE_STAGES},
        }
        results.append(result)
        progress(
            f"{actual:>11,} rows: total {result['total_seconds']:>7.1f}s ({result['rows_per_second']:,} rows/s), peak {result['peak_memory_gb']} GB; "
            + ", ".join(
                f"{k} {v}s ({result['stage_peak_memory_gb'][k]} GB, main process "
                f"{result['stage_peak_main_memory_gb'][k]} GB)"
                for k, v in stages.items()
            )
        )
    if not results:
        return {"sizes": [], "stopped": stopped}
    largest = results[-1]
    extrapolated = {s: round(v * FULL_ROWS / largest["rows"]) for s, v in largest["stages_seconds"].items()}
    progress(
        f"Linear extrapolation to {FULL_ROWS:,} rows (from the largest size): "
        + ", ".join(f"{k} {v / 60:.0f} min" for k, v in extrapolated.items())
    )
    return {"sizes": results, "stopped": stopped, "extrapolated_full_seconds": extrapolated}


def main(args) -> int:
    result = bench_pipeline(
        tuple(args.rows),
        workdir=args.workdir,
        memory_limit_gb=args.memory_limit_gb,
        progress=(lambda _: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(result))
    return 0
