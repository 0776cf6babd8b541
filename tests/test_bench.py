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
