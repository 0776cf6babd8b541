"""Shared fixtures: the real MAL sample in ../shared and small generated datasets."""

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "mal")


# The files that start first, in this order. pytest-xdist's loadfile scheduler gives each
# of its two workers one file, then a second one before the first finishes (files 1 and 3
# to one worker, 2 and 4 to the other), then the next file to a worker as it starts its
# last one. So the longest pipeline run (about 4 minutes here) pairs with a short file
# and the next two pipeline runs (about 2 minutes each) go together on the other worker;
# the two one-minute command-line files come next, one to each worker as they free up,
# and the unit tests fill in behind.
FIRST = (
    "test_kubeflow_local.py",
    "test_e2e_real.py",
    "test_shutdown.py",
    "test_e2e.py",
    "test_bench.py",
    "test_cli.py",
    "test_example_gen.py",
)


def pytest_collection_modifyitems(config, items):
    """FIRST's files first, the rest after in collection order (`make test`: `-n 2 --dist
    loadfile --no-loadscope-reorder`)."""
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


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
