"""Shared fixtures: the real MAL sample in ../shared and small generated datasets."""

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "mal")


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests first (in file order), the unit tests after: with `-n 2
    --dist loadfile --no-loadscope-reorder` (make test) the long pipeline runs start at
    once on both workers and the short tests fill in behind them."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


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
