"""The README's commands, run as a user would (subprocesses of the installed console script)."""

import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from animerec import features as f
from animerec.data import kaggle
from animerec.model import export, retrieval
from tests.model_fixtures import USER_IDS, small_training_data

ANIMEREC = [sys.executable, "-m", "animerec.cli"]
SUBCOMMANDS = [
    [],
    ["data"],
    ["data", "synth"],
    ["data", "summary"],
    ["data", "convert"],
    ["run"],
    ["report"],
    ["serve"],
    ["bench", "pipeline"],
    ["recommend"],
    ["batch-recommend"],
    ["kubeflow"],
    ["kubeflow", "submit"],
    ["kubeflow", "compile"],
    ["kubeflow", "run-local"],
    ["bench"],
    ["bench", "serve"],
    ["bench", "train"],
]


def animerec(*args, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    return subprocess.run(ANIMEREC + list(args), capture_output=True, text=True, env=env, timeout=300, check=check)


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "animerec")
def test_every_subcommand_has_help(words):
    out = animerec(*words, "--help")
    assert out.stdout.startswith("usage: animerec")


def test_console_script_is_installed():
    script = shutil.which("animerec", path=os.path.dirname(sys.executable))
    assert script, "setup.py installs the animerec console script"


def test_data_summary_of_the_real_sample(real_data_dir):
    out = animerec("data", "summary", "--data-dir", real_data_dir).stdout
    assert "Users: 180 in animelist.csv" in out
    assert "Rows: 55,336 read, 55,336 valid" in out
    assert "Catalog: 17,562 anime" in out


def test_synth_then_summary(tmp_path):
    animerec("data", "synth", "--out", str(tmp_path), "--users", "120", "--anime", "90", "--seed", "5")
    out = animerec("data", "summary", "--data-dir", str(tmp_path)).stdout
    assert "Users: 120 in animelist.csv" in out and "Catalog: 90 anime" in out


def test_a_reader_gone_away_is_no_traceback(tiny_synth_dir):
    """`animerec data summary ... | head`: head exits before the summary is written."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        ANIMEREC + ["data", "summary", "--data-dir", tiny_synth_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    proc.stdout.close()  # before the command has read anything, let alone printed
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path):
    out = animerec("data", "summary", "--data-dir", str(tmp_path), check=False)
    assert out.returncode == 2
    assert "animerec: error:" in out.stderr and "Traceback" not in out.stderr


def _bad_animelists(real_data_dir, tmp_path) -> tuple[str, str]:
    folders = []
    for name in ("no_status", "header_only"):
        folder = tmp_path / name
        folder.mkdir()
        for catalog in (kaggle.ANIME_CSV, kaggle.ANIME_WITH_SYNOPSIS_CSV):
            shutil.copy(os.path.join(real_data_dir, catalog), folder)
        folders.append(str(folder))
    frame = pd.read_csv(os.path.join(real_data_dir, kaggle.ANIMELIST_CSV))
    # A column missing: found where the rows are read, in the converter's Beam workers.
    frame.drop(columns=["watching_status"]).to_csv(os.path.join(folders[0], kaggle.ANIMELIST_CSV), index=False)
    frame.head(0).to_csv(os.path.join(folders[1], kaggle.ANIMELIST_CSV), index=False)
    return folders[0], folders[1]


def test_data_errors_inside_beam_workers_are_one_paragraph(real_data_dir, tmp_path):
    no_status, header_only = _bad_animelists(real_data_dir, tmp_path)
    # The converter's Beam stage on worker processes, where the error is raised: under
    # `data convert`, and under `run` inside the pipeline's KaggleExampleGen.
    convert = ("data", "convert", "--workers", "2", "--data-dir", no_status, "--out", str(tmp_path / "out"))
    run = ("run", "--workers", "2", "--data-dir", no_status, "--output-dir", str(tmp_path / "run"))
    for command in (convert, run):
        out = animerec(*command, check=False)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [out.stderr.strip()], "one line on stderr"
        assert re.match(
            r"animerec: error: .*animelist\.csv: header lacks column\(s\) \['watching_status'\]", out.stderr
        )
        assert "Traceback" not in out.stdout
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out.tmp"), "nothing half-written"
    for command in (
        ("data", "convert", "--out", str(tmp_path / "out2")),
        ("data", "summary"),
        ("run", "--output-dir", str(tmp_path / "run2")),
    ):
        out = animerec(*command, "--data-dir", header_only, check=False)
        assert out.returncode == 2
        assert out.stderr.strip() == (
            f"animerec: error: {header_only}/animelist.csv: no rows after the header line; there is nothing to train on."
        )


@pytest.fixture(scope="module")
def serving_dir(tmp_path_factory):
    data = small_training_data()
    model = retrieval.build_model(data, 8, 0.1, 0.05)
    path = tmp_path_factory.mktemp("cli") / "serving"
    export.export_serving_model(model, data, retrieval.catalog_embeddings(model, data), top_k=4, path=str(path / "1"))
    return str(path)


def test_recommend_with_model_dir(serving_dir, tmp_path):
    out = animerec("recommend", "--user", "100", "-k", "3", "--model-dir", serving_dir).stdout
    assert "Top 3 for user 100" in out
    assert "Title 10" not in out and "Title 20" not in out, "seen titles are not recommended"
    # Fewer unseen titles than asked (user 100 saw 3 of the 6): said so, not blamed on the cap.
    short = animerec("recommend", "--user", "100", "-k", "5", "--model-dir", serving_dir)
    assert "Top 3 for user 100" in short.stdout
    assert short.stderr.strip().splitlines()[-1] == "animerec: 3 titles, not 5: no more titles are left unseen"
    fallback = animerec("recommend", "--user", "424242", "--model-dir", serving_dir).stdout
    assert "most popular" in fallback
    # k above the model's max_k (the catalog's 6 titles here) is capped, and said so.
    capped = animerec("recommend", "--user", "424242", "-k", "500", "--model-dir", serving_dir)
    assert "Top 6 for user 424242" in capped.stdout
    assert capped.stderr.strip().splitlines()[-1] == (
        "animerec: 6 titles, not 500: the model answers at most 6 a request (k above that is capped)"
    )


def test_recommend_for_a_new_user(serving_dir, tmp_path):
    out = animerec("recommend", "--liked", "20,30", "-k", "6", "--model-dir", serving_dir)
    assert "Top 4 for a new user" in out.stdout and "Title 20" not in out.stdout and "Title 30" not in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "animerec: 4 titles, not 6: no more titles are left unseen"
    # Their own animelist rows: 10 liked (scored 9), 40 dropped (seen, not liked), one bad row counted.
    rows = tmp_path / "me.csv"
    rows.write_text("user_id,anime_id,rating,watching_status,watched_episodes\n1,10,9,2,12\n1,40,0,4,1\n1,x,9,2,1\n")
    out = animerec("recommend", "--animelist", str(rows), "-k", "6", "--model-dir", serving_dir)
    assert "Top 4 for a new user" in out.stdout and "Title 10" not in out.stdout and "Title 40" not in out.stdout
    assert "set aside 1" in out.stderr


def test_batch_recommend_on_worker_processes_is_quiet(serving_dir, tmp_path):
    """Two Beam worker processes, as on a machine's cores: the Parquet files come out and
    the console says so in one line, with no worker's traceback at exit or start-up
    warning (each worker loads the SavedModel; TensorFlow's functions fail to delete at
    interpreter exit there unless the workers start with worker_startup's hook)."""
    out = animerec(
        "batch-recommend", "--model-dir", serving_dir, "--output", str(tmp_path / "recs"), "-k", "3", "--workers", "2"
    )
    assert re.match(r"Top 3 for \d+ users from .* -> \d Parquet file", out.stdout)
    recs = pd.concat(pd.read_parquet(p) for p in tmp_path.glob("recs*.parquet"))
    # Every known user once, with the SavedModel's own top 3 in order: no row lost or
    # written twice by the worker processes.
    import tensorflow as tf

    users = USER_IDS.tolist()
    top = (
        tf.saved_model.load(os.path.join(serving_dir, "1"))
        .signatures[f.RECOMMEND_SIGNATURE](
            user_id=tf.constant(users, tf.int64),
            k=tf.fill([len(users)], 3),
            exclude_anime_ids=tf.fill([len(users), 1], tf.constant(-1, tf.int64)),
        )[f.OUTPUT_ANIME_IDS]
        .numpy()[:, :3]
    )
    got = sorted(zip(recs[f.USER_ID], recs["rank"], recs[f.ANIME_ID]))
    assert got == sorted((u, r + 1, int(top[b, r])) for b, u in enumerate(users) for r in range(3) if top[b, r] >= 0)
    assert len(got) == 9  # user 100 has 3 titles left unseen, the others more
    assert out.stderr.strip() == "", out.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user", "100", "-k", "0"], "'0' is not a positive integer"),
        (["--user", "100", "--exclude", "10,abc"], "is not a comma-separated list of anime ids"),
        (["--user", "100", "--server", "127.0.0.1:9"], "127.0.0.1:9: UNAVAILABLE"),
        (["--user", "100", "--model-dir", "/nonexistent"], "no loadable model version"),
    ],
    ids=["k zero", "non-numeric exclude", "unreachable server", "no model"],
)
def test_recommend_errors_are_one_line(args, message):
    out = animerec("recommend", *args, check=False)
    # One error line (argparse's usage lines may come before it), no traceback.
    assert out.returncode == 2 and message in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr


def test_serve_stops_cleanly_on_sigterm(serving_dir):
    """Kubernetes stops a pod with SIGTERM: the server drains and exits 0."""
    import signal
    import time

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        ANIMEREC + ["serve", "--model-dir", serving_dir, "--port", "0", "--rest-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "Serving model animerec version 1" in line and "gRPC on 127.0.0.1:" in line
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def test_a_broken_pipe_elsewhere_is_still_an_error(monkeypatch):
    """Only stdout's reader going away ends a command quietly; a BrokenPipeError from
    another pipe or socket (stdout fine) is raised as the error it is."""
    from animerec import cli

    def broken(args):
        raise BrokenPipeError("a socket, not stdout")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["data", "summary", "--data-dir", "x"])
    monkeypatch.setattr(parser, "parse_args", lambda argv: args.__class__(**{**vars(args), "func": broken}))
    with pytest.raises(BrokenPipeError, match="a socket"):
        cli.main(["data", "summary", "--data-dir", "x"])
