"""Which Beam a local run uses: in this process for a small animelist.csv, worker processes otherwise."""

import os

from animerec.data import kaggle
from animerec.pipeline import local_runner


def _animelist(folder, size: int) -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, kaggle.ANIMELIST_CSV), "wb") as f:
        f.truncate(size)  # sparse: only the size is read
    return str(folder)


def test_small_input_runs_beam_in_process_and_large_input_on_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    small = _animelist(tmp_path / "small", local_runner.IN_PROCESS_MAX_BYTES)
    large = _animelist(tmp_path / "large", local_runner.IN_PROCESS_MAX_BYTES + 1)
    in_process = ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    on_workers = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=4"]
    # The source checkout's setup.py names the package (TFX then builds no package of itself).
    setup = [f"--setup_file={os.path.join(os.path.dirname(os.path.dirname(local_runner.__file__)), 'setup.py')}"]
    assert os.path.exists(setup[0].split("=", 1)[1])
    assert local_runner.default_beam_args(small) == in_process + setup
    assert local_runner.default_beam_args(large) == on_workers + setup
    # Asked for, the workers win either way; one worker is this process.
    assert local_runner.default_beam_args(small, workers=3)[1:3] == [
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=3",
    ]
    assert local_runner.default_beam_args(large, workers=1) == in_process + setup
