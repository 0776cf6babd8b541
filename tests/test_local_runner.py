"""Which Beam a local run uses: in this process for a small animelist.csv, worker processes otherwise."""

import os
import subprocess
import sys

from animerec.data import kaggle
from animerec.pipeline import beam_args, local_runner, worker_startup


def _animelist(folder, size: int) -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, kaggle.ANIMELIST_CSV), "wb") as f:
        f.truncate(size)  # sparse: only the size is read
    return str(folder)


def test_small_input_runs_beam_in_process_and_large_input_on_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    small = _animelist(tmp_path / "small", beam_args.IN_PROCESS_MAX_BYTES)
    large = _animelist(tmp_path / "large", beam_args.IN_PROCESS_MAX_BYTES + 1)
    in_process = ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    on_workers = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=4"]
    # The source checkout's setup.py names the package (TFX then builds no package of itself).
    setup = [f"--setup_file={os.path.join(os.path.dirname(os.path.dirname(beam_args.__file__)), 'setup.py')}"]
    assert os.path.exists(setup[0].split("=", 1)[1])
    assert beam_args.default_beam_args(small) == in_process + setup
    assert beam_args.default_beam_args(large) == on_workers + setup
    # Asked for, the workers win either way; one worker is this process.
    assert beam_args.default_beam_args(small, workers=3)[1:3] == [
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=3",
    ]
    assert beam_args.default_beam_args(large, workers=1) == in_process + setup


WORKER_EXIT_SCRIPT = """
class AtomicFunction:  # as TensorFlow's, collected after its module's globals are gone
    def __del__(self):
        None["key"]


class Other:
    def __del__(self):
        raise ValueError("a real problem")


AtomicFunction()
Other()
"""


def test_worker_startup_quiets_tensorflows_failures_at_exit_only(tmp_path):
    """Beam's workers start Python with the run's environment: worker_startup on
    PYTHONPATH, whose sitecustomize drops AtomicFunction.__del__'s TypeError alone."""
    with local_runner._logs_to_file(str(tmp_path / "log")):
        env = dict(os.environ)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == os.path.dirname(worker_startup.__file__)
    assert os.environ.get("PYTHONPATH") != env["PYTHONPATH"], "restored after the run"
    done = subprocess.run([sys.executable, "-c", WORKER_EXIT_SCRIPT], capture_output=True, text=True, env=env)
    assert "AtomicFunction.__del__" not in done.stderr
    assert "Exception ignored in: <function Other.__del__" in done.stderr and "a real problem" in done.stderr
    env.pop("PYTHONPATH")
    plain = subprocess.run([sys.executable, "-c", WORKER_EXIT_SCRIPT], capture_output=True, text=True, env=env)
    assert "Exception ignored in: <function AtomicFunction.__del__" in plain.stderr, "the test reproduces the noise"
