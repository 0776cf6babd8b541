"""The real pipeline with LocalDagRunner on Beam, end to end (minutes: marked e2e).

Each pushed model is then loaded in a fresh process, as a server would, and
asked for recommendations for real users of the input data.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from animerec import features
from animerec.config import TrainingConfig
from animerec.data import kaggle, synth
from animerec.evaluation import GateConfig
from animerec.pipeline import beam_args as local_beam_args
from animerec.pipeline import local_runner

pytestmark = pytest.mark.e2e

PERMISSIVE_GATE = GateConfig(min_value=0.0, min_lift_over_popularity=-1.0, max_regression=1.0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The environment `make demo` runs the pipeline in (the Makefile's exports).
MAKE_ENV = dict(
    os.environ,
    TF_USE_LEGACY_KERAS="1",
    TF_CPP_MIN_LOG_LEVEL="3",
    PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning",
)
# What a clean run must not print: library log lines, warnings, tracebacks.
NOISE = re.compile(r"^(INFO|WARNING|ERROR|CRITICAL)[:\s]|Traceback|Exception ignored|\w+Warning:")
RECOMMEND_SCRIPT = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
users = json.loads(sys.argv[2])
out = model.signatures["serving_default"](user_id=tf.constant(users, tf.int64))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items() if k in ("anime_ids", "is_fallback")}))
"""


def recommend_in_fresh_process(model_dir: str, users: list[int]) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", RECOMMEND_SCRIPT, model_dir, json.dumps(users)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def seen_by_user(data_dir: str) -> dict[int, set]:
    rows = pd.read_csv(os.path.join(data_dir, kaggle.ANIMELIST_CSV))
    return {int(u): set(g["anime_id"].tolist()) for u, g in rows.groupby("user_id")}


def assert_never_recommends_seen(model_dir: str, data_dir: str, n_users: int = 25) -> dict:
    seen = seen_by_user(data_dir)
    users = sorted(seen)[:n_users]
    out = recommend_in_fresh_process(model_dir, users + [10**9])
    for user, ids in zip(users, out["anime_ids"]):
        assert len(ids) == 100 or min(ids) == -1
        overlap = set(ids) & seen[user]
        assert not overlap, f"user {user} was recommended titles already in animelist.csv: {sorted(overlap)[:5]}"
    assert out["is_fallback"][-1] is True, "an unknown user gets the popularity fallback"
    return out


def test_pipeline_on_synthetic_data_caches_and_gates(tmp_path):
    data_dir = str(tmp_path / "data")
    synth.synthesize(data_dir, synth.SynthConfig(users=300, anime=200, seed=11), progress=lambda _: None)
    out_dir = str(tmp_path / "out")
    training = TrainingConfig(epochs=1, batch_size=256)

    beam_args = local_beam_args.default_beam_args(data_dir)
    assert "--direct_running_mode=in_memory" in beam_args

    def run(gate: GateConfig = PERMISSIVE_GATE, train_steps: int = 20, config: TrainingConfig = training) -> dict:
        return local_runner.run_local(
            data_dir,
            out_dir,
            training=config,
            gate=gate,
            train_steps=train_steps,
            progress=print,
            # What the command line chose for the first run (the cache keys on it): Beam in
            # the process for this tiny file. Worker processes are what the real-sample run
            # and tests/test_shutdown.py exercise.
            beam_pipeline_args=beam_args,
        )

    # The first run as `make demo` runs it, through the command line (Beam in the process
    # for this small file, as there): progress lines only, nothing a library logs.
    command = [sys.executable, "-m", "animerec.cli", "run", "--data-dir", data_dir, "--output-dir", out_dir]
    command += ["--epochs", "1", "--batch-size", "256", "--train-steps", "20", "--json"]
    command += ["--min-recall", "0", "--min-lift", "-1", "--max-regression", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=MAKE_ENV, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    noise = [line for line in (done.stdout + done.stderr).splitlines() if NOISE.search(line)]
    assert not noise, noise[:10]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["pushed_model"], "a blessed model is pushed"
    assert first["evaluation"]["blessed"]
    metrics = first["evaluation"]["metrics"]
    assert set(metrics) == {"model", "retrieval only", "popularity", "ease"}
    assert 0.0 <= metrics["model"]["recall@50"] <= 1.0
    assert metrics["ease"]["l2"] in TrainingConfig().ease_l2_grid, "EASE's L2 is chosen on validation"
    # The pushed model says what trained it (the third run below checks that the
    # Evaluator tunes EASE on its carve).
    with open(os.path.join(first["pushed_model"], features.TRAINING_CONFIG_FILE)) as fh:
        shipped = json.load(fh)
    assert (shipped["epochs"], shipped["batch_size"]) == (1, 256)
    assert os.path.exists(os.path.join(os.path.dirname(first["evaluation"]["report"]), "recall_at_k.png"))
    assert_never_recommends_seen(first["pushed_model"], data_dir)
    # Transform analyzes each split on its own (a joint analysis held every row in memory),
    # which TFX does when it writes an analyzer cache, and materializes nothing.
    assert os.path.isdir(os.path.join(out_dir, "pipeline", "Transform", "transform_graph"))
    assert os.path.isdir(os.path.join(out_dir, "pipeline", "Transform", "updated_analyzer_cache"))
    assert not os.path.exists(os.path.join(out_dir, "pipeline", "Transform", "transformed_examples"))

    # The same data and training under another (still permissive) gate: data, Transform and
    # Trainer come from the cache, the Evaluator runs again and finds the model it evaluates
    # already served (the first run pushed it), so nothing new is pushed.
    second = run(dataclasses.replace(PERMISSIVE_GATE, max_regression=0.99))
    for component in ("KaggleExampleGen", "StatisticsGen", "Transform", "Trainer"):
        assert second["cached"][component], f"{component} should have been cached"
    assert not second["cached"]["RetrievalEvaluator"]
    assert not second["evaluation"]["blessed"]
    with open(second["evaluation"]["report"]) as fh:
        assert "NOT PUSHED AGAIN" in fh.read()
    assert os.listdir(second["paths"]["serving_dir"]) == [os.path.basename(first["pushed_model"])]

    # A new model (more steps) that cannot pass a strict gate: evaluated against the last
    # blessed model, not blessed, and Pusher pushes nothing.
    # Trained with another validation carve, which the Evaluator's EASE is tuned on too.
    strict = GateConfig(min_value=1.01)
    third = run(strict, train_steps=25, config=dataclasses.replace(training, validation_percent=30))
    assert third["cached"]["Transform"] and not third["cached"]["Trainer"]
    assert third["evaluation"]["metrics"]["ease"]["validation_percent"] == 30
    assert not third["evaluation"]["blessed"]
    assert "last_blessed" in third["evaluation"]["metrics"]
    assert os.listdir(third["paths"]["serving_dir"]) == [os.path.basename(first["pushed_model"])]
    with open(third["evaluation"]["report"]) as fh:
        report = fh.read()
    assert "NOT BLESSED" in report and "FAIL: recall@50" in report
