"""Shared fixtures: the real MAL sample in ../shared and small generated datasets."""

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "mal")


# The longest end-to-end files, longest first (about 5, 3 and 2 minutes here).
LONGEST_FIRST = ("test_kubeflow_local.py", "test_e2e_real.py", "test_e2e.py")


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests first, the longest first, the unit tests after: with `-n 2
    --dist loadfile --no-loadscope-reorder` (make test) the two longest pipeline runs
    start at once on both workers and the shorter tests fill in behind them."""

    def order(item) -> tuple:
        name = item.path.name
        return item.get_closest_marker("e2e") is None, LONGEST_FIRST.index(name) if name in LONGEST_FIRST else 99

    items.sort(key=order)


@pytest.fixture(scope="session")
def real_data_dir():
    if not os.path.isdir(REAL_DATA_DIR):
        pytest.skip(
            f"real MAL sample not found at {REAL_DATA_DIR} (it lives in ../shared/data/mal beside the checkout)"
        )
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def tiny_synth_dir(tmp_path_factory):
    """A small generated dataset, shared by the tests that only read it."""
    from animerec.data import synth

    out = str(tmp_path_factory.mktemp("synth"))
    synth.synthesize(out, synth.SynthConfig(users=400, anime=300, seed=7), progress=lambda _: None)
    return out


def write_csv(folder, name, text, mode="w"):
    path = os.path.join(folder, name)
    with open(path, mode) as f:
        f.write(text)
    return path
