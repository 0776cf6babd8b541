"""The benchmarks' commands, run as a user would (`animerec bench ...` in a subprocess).
A file of its own: a minute of subprocesses that a parallel test run can place apart
from the other command-line tests."""

import json
import math

from tests.test_cli import animerec


def test_benchmarks_run_and_report_their_figures():
    # Tiny sizes: that each benchmark still runs end to end and reports what the README
    # quotes, not how fast anything is.
    args = "--users 500 --anime 300 --seconds 0.5 --levels 1 --scann-titles 5000 --json".split()
    serve = json.loads(animerec("bench", "serve", *args).stdout.splitlines()[-1])
    for model in ("retrieval only", "two stages", "retrieval only, ScaNN", "two stages, ScaNN"):
        (level,) = serve[model]["levels"]
        assert level["clients"] == 1 and level["requests"] > 0 and level["errors"] == 0
    for model in ("retrieval only", "two stages"):
        # Figures, measured (a figure of no measurement is NaN); how fast is not asserted.
        for kind in ("in_process", "session", "handled_session"):
            assert math.isfinite(serve[model][f"{kind}_ms"]) and math.isfinite(serve[model][f"{kind}_p99_ms"])
        # One client alternating between both models' servers, both up.
        alternating = serve["one client, alternating"][model]
        assert alternating["requests"] > 0 and all(math.isfinite(alternating[q]) for q in ("p50_ms", "p99_ms"))
        # The transport's floor: the same client against a server that answers with canned bytes.
        assert serve[model]["grpc_floor"]["requests"] > 0 and serve[model]["grpc_floor"]["errors"] == 0
    low, high = serve["one client, alternating"]["two stages"]["rise_interval_ms"]["p99"]
    assert math.isfinite(low) and math.isfinite(high) and low <= high
    # The model's 300 titles: ScaNN scores every one, so it finds exactly what brute force finds.
    assert serve["scann"]["300"]["overlap@50"] == 1.0
    assert serve["scann"]["5000"]["overlap@50"] > 0.9 and math.isfinite(serve["scann"]["5000"]["scann_ms"])
    train = json.loads(
        animerec(
            "bench", "train", "--batch-sizes", "256", "--steps", "2", "--rows", "20000", "--json"
        ).stdout.splitlines()[-1]
    )
    assert [level["batch_size"] for level in train["levels"]] == [256]
    assert math.isfinite(train["levels"][0]["examples_per_second"]) and train["liked_rows"] > 0


def test_a_run_whose_requests_all_fail_reports_its_errors():
    from animerec.bench.serve import _free_port, drive

    # Nothing listens on the port: every request fails, and the figures say so.
    figures = drive(f"localhost:{_free_port()}", clients=1, seconds=0.3, users=10)
    assert figures["requests"] == 0 and figures["errors"] > 0
    assert all(figures[f"p{q}_ms"] != figures[f"p{q}_ms"] for q in (50, 95, 99))  # NaN


def test_the_rise_interval_resamples_whole_rounds():
    """The machine drifts within a run and moves both models' blocks of a round alike: a
    resample keeps each round's pair together, so a model exactly 1 ms slower than the
    other in every round has a rise of exactly 1 ms in every resample, however much the
    rounds differ from each other (resampling the models apart would spread it)."""
    import numpy as np

    from animerec.bench.serve import rise_interval

    rng = np.random.default_rng(0)
    base = [list((r + rng.random(200)) / 1000) for r in range(30)]  # seconds, drifting by round
    other = [[s + 0.001 for s in block] for block in base]
    for q in (50, 99):
        low, high = rise_interval(base, other, q, resamples=200)
        assert abs(low - 1.0) < 1e-6 and abs(high - 1.0) < 1e-6
    # Noise of its own: the interval widens, and still holds the rise it was built around.
    noisy = [[s + 0.001 + rng.normal(0, 0.0005) for s in block] for block in base]
    low, high = rise_interval(base, noisy, 50, resamples=200)
    assert low < 1.0 < high and high - low > 0.01
