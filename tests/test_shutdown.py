"""SIGTERM and Ctrl-C stop a run cleanly: Beam's workers stop, ML Metadata records no
execution as still running, the command prints one line."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from ml_metadata.proto import metadata_store_pb2

from animerec.data import synth
from animerec.pipeline import artifacts, shutdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")


def _store(path: str):
    return artifacts.open_store(path, "create")


def _states(path: str) -> dict:
    return {e.id: e.last_known_state for e in _store(path).get_executions()}


def test_unfinished_executions_are_cancelled_and_finished_ones_kept(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    store = _store(path)
    type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Transform"))
    ex = metadata_store_pb2.Execution
    ids = store.put_executions(
        [
            ex(type_id=type_id, last_known_state=state)
            for state in (ex.COMPLETE, ex.RUNNING, ex.CACHED, ex.NEW, ex.FAILED)
        ]
    )
    assert sorted(shutdown.cancel_running_executions(path)) == [ids[1], ids[3]]
    assert list(_states(path).values()) == [ex.COMPLETE, ex.CANCELED, ex.CACHED, ex.CANCELED, ex.FAILED]
    assert shutdown.cancel_running_executions(str(tmp_path / "none.sqlite")) == []


def test_the_error_names_the_signal_and_crosses_processes():
    error = pickle.loads(pickle.dumps(shutdown.RunInterruptedError(signal.SIGTERM)))
    assert str(error) == "stopped by SIGTERM" and error.exit_code == 143


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_children_and_raises_an_exception(tmp_path, signum):
    # In a process of its own: the signal is sent to it, and pytest's handlers stay untouched.
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        from animerec.pipeline import artifacts, shutdown
        try:
            with shutdown.stops_cleanly():
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
                print(child.pid, flush=True)
                os.kill(os.getpid(), {int(signum)})
                time.sleep(30)
        except Exception as error:  # what TFX's launcher catches to record a failed execution
            print(type(error).__name__, error.exit_code, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=ENV)
    child, outcome = done.stdout.split("\n", 1)
    assert outcome.split() == ["RunInterruptedError", str(128 + signum)], done.stderr
    assert not psutil.pid_exists(int(child)) or psutil.Process(int(child)).status() == psutil.STATUS_ZOMBIE


@pytest.mark.e2e
def test_sigterm_during_a_beam_stage_stops_the_workers_and_leaves_metadata_consistent(tmp_path):
    data_dir, out = str(tmp_path / "data"), str(tmp_path / "out")
    synth.synthesize(data_dir, synth.SynthConfig(users=300, anime=200, seed=3), progress=lambda _: None)
    run = subprocess.Popen(
        # Two worker processes: this small dataset would otherwise run Beam in the process.
        [sys.executable, "-m", "animerec.cli", "run", "--data-dir", data_dir, "--output-dir", out, "--epochs", "1"]
        + ["--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    try:
        for line in run.stdout:
            if "StatisticsGen ..." in line:
                break
        # Beam's SDK worker processes are up: the stage is running.
        deadline = time.time() + 60
        while not psutil.Process(run.pid).children(recursive=True) and time.time() < deadline:
            time.sleep(0.2)
        workers = psutil.Process(run.pid).children(recursive=True)
        assert workers, "StatisticsGen started no worker process"
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    stderr = run.stderr.read()
    assert code == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("animerec: stopped by SIGTERM")
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"worker processes left running: {[p.pid for p in alive]}"
    ex = metadata_store_pb2.Execution
    states = _states(os.path.join(out, "metadata.sqlite"))
    assert ex.RUNNING not in states.values() and ex.NEW not in states.values()
    assert ex.FAILED in states.values() or ex.CANCELED in states.values(), "the stopped step is recorded"
