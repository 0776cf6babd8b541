"""Commands that run the pipeline and use the pushed model."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from animerec import cli_args
from animerec import features as f


def _run(args) -> int:
    from animerec.config import TrainingConfig
    from animerec.pipeline import local_runner
    from animerec.pipeline.beam_args import default_beam_args

    training = TrainingConfig(
        embedding_dim=args.embedding_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    gate = _gate(args)
    liked_filter, split = cli_args.filter_and_split(args)
    beam_args = default_beam_args(args.data_dir, args.workers)
    result = local_runner.run_local(
        args.data_dir,
        args.output_dir,
        training=training,
        gate=gate,
        train_steps=args.train_steps,
        liked_filter=liked_filter,
        split=split,
        beam_pipeline_args=beam_args,
        infer_schema=args.infer_schema,
    )
    print()
    print("Per-stage wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    evaluation = result["evaluation"]
    if evaluation:
        print(f"Evaluation ({'BLESSED' if evaluation['blessed'] else 'NOT BLESSED'}), report: {evaluation['report']}")
        from animerec.report import summary_line

        for system, values in evaluation["metrics"].items():
            print(summary_line(system, values))
    if result.get("report"):
        print(f"Run report: {result['report']}")
    if result["pushed_model"]:
        print(f"Pushed model: {result['pushed_model']}")
    else:
        print("No model has been pushed (none blessed yet).")
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def _bench(name: str):
    """A command that imports animerec.bench.<name> (TensorFlow and all) only when it runs."""

    def run(args) -> int:
        import importlib

        return importlib.import_module(f"animerec.bench.{name}").main(args)

    return run


def _report(args) -> int:
    from animerec import report

    print(f"Report: {report.write_report(args.output_dir)}")
    return 0


def _kubeflow_compile(args) -> int:
    import sys

    from animerec.config import TrainingConfig
    from animerec.kubeflow import runner

    try:
        kind = runner.package_format(args.output)
    except ValueError as error:
        print(f"animerec: error: {error}", file=sys.stderr)
        return 2
    training = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size)
    from animerec.data import files

    # A job for run-local: its tasks run from other folders than this one, so local paths
    # are compiled absolute (remote ones, gs:// say, stay as they are).
    local = (lambda path: path and files.absolute(path)) if kind == "json" else (lambda path: path)
    runner.compile_pipeline(
        args.output,
        pipeline_root=local(args.pipeline_root),
        data_root=local(args.data_root),
        serving_dir=local(args.serving_dir),
        image=args.image,
        beam_pipeline_args=args.beam_arg,
        training=training,
        gate=_gate(args),
        **dict(zip(("liked_filter", "split"), cli_args.filter_and_split(args))),
        **({"schema_file": local(args.schema_file)} if args.schema_file else {}),
    )
    if kind == "yaml":
        print(f"Wrote the KFP v2 pipeline spec to {args.output} (for `animerec kubeflow submit` or kfp.Client)")
    else:
        print(f"Wrote the KFP v2 pipeline job to {args.output} (for `animerec kubeflow run-local`)")
    return 0


def _token(path: str | None) -> str | None:
    """The bearer token in the file at `path` (a service account's projected token, say)."""
    from animerec.kubeflow.submit import SubmitError

    if path is None:
        return None
    try:
        with open(path) as fh:
            token = fh.read().strip()
    except OSError as error:
        raise SubmitError(f"--token-file {path}: {error.strerror}") from None
    if not token:
        raise SubmitError(f"--token-file {path}: the file is empty")
    return token


def _kubeflow_submit(args) -> int:
    import sys

    from animerec.kubeflow import submit

    try:
        result = submit.submit(
            args.host,
            args.package,
            params=args.param,
            experiment=args.experiment,
            run_name=args.run_name,
            pipeline_name=args.pipeline_name,
            version_name=args.version_name,
            pipeline_root=args.pipeline_root,
            namespace=args.namespace,
            cache=not args.no_cache,
            token=_token(args.token_file),
            cookies=args.cookie,
        )
    except submit.SubmitError as error:
        print(f"animerec: error: {error}", file=sys.stderr)
        return 2
    print(f"Pipeline: {result.pipeline_id} (version {result.pipeline_version_id})")
    print(f"Experiment: {args.experiment} ({result.experiment_id})")
    print(f"Parameters: {json.dumps(result.parameters, sort_keys=True) if result.parameters else 'the defaults'}")
    print(f"Pipeline root: {result.pipeline_root or 'the cluster default'}")
    print(f"Run ID: {result.run_id}")
    print(f"Run URL: {result.run_url}")
    return 0


def _kubeflow_run_local(args) -> int:
    import sys

    from animerec.kubeflow import local_launcher

    if not args.job.lower().endswith(".json"):
        print(
            f"animerec: error: {args.job}: run-local runs the pipeline job (JSON); compile one with `--output NAME.json`",
            file=sys.stderr,
        )
        return 2
    parameters = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE")
        parameters[name] = value
    # The tasks inherit this process's environment, TF_USE_LEGACY_KERAS included (animerec sets it).
    outputs = local_launcher.run_compiled_pipeline(
        args.job, args.root, parameters, enable_caching=False if args.no_cache else None
    )
    print(
        f"Ran {len(outputs)} tasks; artifacts under {args.root}, ML Metadata in {args.root}/{local_launcher.METADATA_FILE}"
    )
    return 0


def _batch_recommend(args) -> int:
    import glob
    import os

    from animerec.batch import batch_recommend
    from animerec.pipeline.artifacts import newest_version_dir
    from animerec.pipeline.beam_args import local_beam_args

    model_dir = newest_version_dir(args.model_dir) or args.model_dir
    beam_args = args.beam_arg or local_beam_args(args.workers)
    n = batch_recommend(model_dir, args.output, k=args.k, beam_args=beam_args, index=args.index)
    files = sorted(glob.glob(args.output + "*.parquet"))
    print(
        f"Top {args.k} for {n:,} users from {model_dir} -> {len(files)} Parquet file(s): {', '.join(os.path.basename(p) for p in files)}"
    )
    return 0


def _serve(args) -> int:
    from animerec.serving import server

    server.serve_forever(
        args.model_dir,
        args.port,
        args.model_name,
        host=args.host,
        rest_port=args.rest_port or None,
        intra_op_threads=args.intra_op_threads,
        index=args.index,
    )
    return 0


def _note_short(result, k: int) -> None:
    """On stderr, why fewer than k titles came back: too few unseen titles, or the model's
    cap on k (its max_k: the signatures cap k rather than fail a batch)."""
    if len(result.items) >= k:
        return
    if len(result.items) < min(k, result.slots):
        why = "no more titles are left unseen"
    else:
        why = f"the model answers at most {result.slots} a request (k above that is capped)"
    print(f"animerec: {len(result.items)} titles, not {k}: {why}", file=sys.stderr)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _anime_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of anime ids") from None


def _read_own_animelist(path: str) -> tuple[list[int], list[int]]:
    """A user's own rows in animelist.csv's layout: (liked anime ids, every anime id listed).
    Liked as the pipeline's default filter says; bad rows are counted on stderr."""
    from animerec.data import interactions, kaggle

    report = kaggle.ReadReport(path)
    blocks = list(kaggle.iter_animelist(path, report))
    users = {int(u) for b in blocks for u in np.unique(b.user_id)}
    if len(users) > 1:
        raise kaggle.DataError(f"{path}: holds the rows of {len(users)} users; give one user's rows")
    liked, seen = [], []
    for block in blocks:
        liked += block.anime_id[interactions.LikedFilter().liked(block.rating, block.status)].tolist()
        seen += block.anime_id.tolist()
    if report.kept < report.rows_read:
        print("\n".join(report.lines()), file=sys.stderr)
    return liked, seen


def _recommend(args) -> int:
    import grpc

    from animerec.serving import client, server

    running = None
    target = args.server or args.rest
    if target is None:
        # The same gRPC client, against the stand-in server started here on a free port.
        try:
            running = server.start_server(args.model_dir, port=0, model_name=args.model_name)
        except FileNotFoundError as error:
            print(f"animerec: error: {error}", file=sys.stderr)
            return 2
        target = running.target
    if args.rest:
        recommender = client.RestClient(args.rest, model_name=args.model_name)
    else:
        recommender = client.RecommenderClient(target, model_name=args.model_name)
    try:
        exclude = [args.exclude] if args.exclude else None
        if args.user is None:
            liked, seen = (args.liked, []) if args.liked is not None else _read_own_animelist(args.animelist)
            results = recommender.recommend_from_liked(
                [liked], k=args.k, exclude_anime_ids=[seen + (args.exclude or [])]
            )
            print(client.format_recommendations(results[0]))
            _note_short(results[0], args.k)
            return 0
        result = recommender.recommend([args.user], k=args.k, exclude_anime_ids=exclude)[0]
        print(client.format_recommendations(result))
        _note_short(result, args.k)
    except grpc.RpcError as error:
        detail = (error.details() or "").splitlines()[0] if error.details() else ""
        print(f"animerec: error: {target}: {error.code().name}: {detail}", file=sys.stderr)
        return 2
    except (client.RestError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        print(f"animerec: error: {target}: {str(reason).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        recommender.close()
        if running:
            running.stop()
    return 0


def _add_gate_args(parser, gate, compiled: bool = False) -> None:
    """The blessing gate's thresholds (animerec.evaluation.GateConfig)."""
    where = " compiled in as the gate_config parameter's default" if compiled else ""
    parser.add_argument(
        "--min-recall",
        type=float,
        default=gate.min_value,
        help=f"blessing floor on recall@50 (default %(default)s){where}",
    )
    parser.add_argument(
        "--min-lift",
        type=float,
        default=gate.min_lift_over_popularity,
        help="required relative lift of recall@50 over popularity (default %(default)s)",
    )
    parser.add_argument(
        "--max-regression",
        type=float,
        default=gate.max_regression,
        help="how far recall@50 may trail the last blessed model's (default %(default)s)",
    )


def _gate(args):
    from animerec.evaluation import GateConfig

    return GateConfig(
        min_value=args.min_recall, min_lift_over_popularity=args.min_lift, max_regression=args.max_regression
    )


def _add_training_args(parser, what: str) -> None:
    """--epochs and --batch-size, defaulting to TrainingConfig's."""
    from animerec.config import TrainingConfig

    defaults = TrainingConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"{what} epochs (default %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=f"{what} batch size (default %(default)s)"
    )


def _add_run_commands(commands) -> None:
    """run and report."""
    from animerec.config import TrainingConfig
    from animerec.evaluation import GateConfig

    defaults = TrainingConfig()
    run = commands.add_parser("run", help="run the TFX pipeline locally on Beam, from the Kaggle CSV files")
    run.add_argument("--data-dir", required=True, help="folder with the Kaggle CSV files")
    run.add_argument("--output-dir", required=True, help="folder for artifacts, metadata and pushed models")
    _add_training_args(run, "training")
    run.add_argument(
        "--train-steps", type=int, default=None, help="cap on optimizer steps (default: epochs over the data)"
    )
    run.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim, help="default %(default)s")
    run.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="default %(default)s")
    run.add_argument("--seed", type=int, default=defaults.seed, help="training seed (default %(default)s)")
    _add_gate_args(run, GateConfig())
    cli_args.add_workers_arg(run)
    run.add_argument(
        "--infer-schema",
        action="store_true",
        help="infer the schema with SchemaGen instead of importing schema/schema.pbtxt",
    )
    run.add_argument("--json", action="store_true", help="also print the result as JSON")
    cli_args.add_filter_args(run)
    run.set_defaults(func=_run)

    report = commands.add_parser(
        "report", help="regenerate the run report (metrics.json, plots) under OUTPUT_DIR/report"
    )
    report.add_argument("--output-dir", required=True, help="the --output-dir of `animerec run`")
    report.set_defaults(func=_report)


def _add_kubeflow_commands(commands) -> None:
    """kubeflow compile, run-local and submit."""
    from animerec.evaluation import GateConfig

    kubeflow = commands.add_parser("kubeflow", help="Kubeflow Pipelines integration")
    kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", metavar="SUBCOMMAND", required=True)
    compile_ = kubeflow_commands.add_parser(
        "compile", help="compile the pipeline for KFP v2: a pipeline spec (.yaml) or a pipeline job (.json)"
    )
    compile_.add_argument(
        "--output",
        required=True,
        help="file to write: NAME.yaml (or .yml) is the pipeline spec that kfp.Client and `kubeflow submit` "
        "upload; NAME.json is the pipeline job that `kubeflow run-local` runs",
    )
    compile_.add_argument(
        "--pipeline-root",
        default="gs://YOUR_BUCKET/animerec/pipeline_root",
        help="default pipeline root (a run may override it)",
    )
    compile_.add_argument(
        "--data-root",
        default="gs://YOUR_BUCKET/animerec/kaggle",
        help="default of the data_root runtime parameter: the folder of Kaggle CSV files",
    )
    compile_.add_argument(
        "--serving-dir",
        required=True,
        help="where Pusher writes versions for TF Serving (compiled in: a run cannot change it), and where the "
        "Evaluator finds the model being served",
    )
    compile_.add_argument("--image", default=f.PIPELINE_IMAGE, help="the pipeline image built from kubeflow/Dockerfile")
    _add_gate_args(compile_, GateConfig(), compiled=True)
    cli_args.add_filter_args(compile_)
    compile_.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="a Beam pipeline argument, repeatable (e.g. --beam-arg=--runner=DataflowRunner)",
    )
    _add_training_args(compile_, "the training_config parameter's default")
    compile_.add_argument(
        "--schema-file",
        default=None,
        help="the schema as the tasks see it (default: its place in the pipeline image; "
        "schema/schema.pbtxt for `kubeflow run-local`)",
    )
    compile_.set_defaults(func=_kubeflow_compile)
    run_local = kubeflow_commands.add_parser(
        "run-local", help="run a compiled job's task containers as local processes, in dependency order"
    )
    run_local.add_argument("--job", required=True, help="the compiled pipeline job (JSON)")
    run_local.add_argument("--root", required=True, help="a local folder for the tasks' artifacts and logs")
    run_local.add_argument(
        "--param", action="append", default=[], help="a runtime parameter NAME=VALUE (e.g. data_root=out/x), repeatable"
    )
    run_local.add_argument(
        "--no-cache",
        action="store_true",
        help="run every task, even one whose inputs, parameters and code match an earlier run's "
        "(by default a task reuses such a run's outputs, as KFP's caching does)",
    )
    run_local.set_defaults(func=_kubeflow_run_local)
    submit = kubeflow_commands.add_parser(
        "submit", help="upload a compiled pipeline spec (.yaml) to Kubeflow Pipelines and start a run"
    )
    submit.add_argument(
        "--host", required=True, help="the KFP API endpoint, e.g. http://localhost:8080 (a port-forward of the UI)"
    )
    submit.add_argument("--package", required=True, help="the pipeline spec YAML from `kubeflow compile`")
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        help="a runtime parameter NAME=VALUE, typed as the pipeline declares it, repeatable "
        "(unset ones keep their compiled defaults)",
    )
    submit.add_argument(
        "--experiment", default="Default", help="experiment of the run, created if absent (default %(default)s)"
    )
    submit.add_argument("--run-name", default=None, help="the run's name (default: PIPELINE DATE TIME)")
    submit.add_argument(
        "--pipeline-name",
        default=None,
        help="the uploaded pipeline's name (default: the spec's, animerec); when it exists, a new version is added",
    )
    submit.add_argument("--version-name", default=None, help="name of a new version (default: PIPELINE DATE TIME)")
    submit.add_argument("--pipeline-root", default=None, help="this run's pipeline root (default: the one compiled in)")
    submit.add_argument(
        "--namespace", default=None, help="Kubernetes namespace of the pipeline and experiment (multi-user KFP)"
    )
    submit.add_argument(
        "--token-file",
        default=None,
        help="a file holding a bearer token for the API server (a service account token, or an identity "
        "provider's); read, not passed on the command line",
    )
    submit.add_argument(
        "--cookie",
        default=None,
        help="a Cookie header for the API server, e.g. a multi-user Kubeflow's authservice_session=VALUE",
    )
    submit.add_argument(
        "--no-cache",
        action="store_true",
        help="upload the version with every task's caching off, so every step runs (KFP's cache does not see "
        "new files under the same data_root)",
    )
    submit.set_defaults(func=_kubeflow_submit)


def _add_batch_command(commands) -> None:
    batch = commands.add_parser("batch-recommend", help="top k for every known user, as a Beam job, to Parquet")
    batch.add_argument(
        "--model-dir", required=True, help="a serving dir (its newest version is used) or one SavedModel"
    )
    batch.add_argument("--output", required=True, help="output prefix; files are PREFIX-SSSSS-of-NNNNN.parquet")
    batch.add_argument(
        "-k", type=_positive_int, default=50, help="titles per user, at most the model's max_k (default %(default)s)"
    )
    batch.add_argument("--workers", type=int, default=None, help="Beam worker processes (default: one per core)")
    batch.add_argument(
        "--index",
        choices=f.RETRIEVAL_INDEXES,
        default=f.BRUTE_FORCE_INDEX,
        help="known users' retrieval, as `serve --index` (default %(default)s)",
    )
    batch.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="Beam pipeline argument, repeatable (overrides the local runner's defaults)",
    )
    batch.set_defaults(func=_batch_recommend)


def _add_bench_commands(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    bench_serve = bench_commands.add_parser("serve", help="gRPC serving throughput and latency on a full-size model")
    bench_serve.add_argument("--users", type=int, default=325_000, help="default %(default)s")
    bench_serve.add_argument("--anime", type=int, default=17_500, help="default %(default)s")
    bench_serve.add_argument("--dim", type=int, default=64, help="embedding size (default %(default)s)")
    bench_serve.add_argument(
        "--seconds", type=float, default=10.0, help="duration of each concurrency level (default %(default)s)"
    )
    bench_serve.add_argument(
        "--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients (default 1 4 16)"
    )
    bench_serve.add_argument(
        "--scann-titles",
        type=int,
        default=1_000_000,
        help="generated titles for ScaNN against brute force at scale (default %(default)s; 0: none)",
    )
    bench_serve.add_argument("--json", action="store_true", help="print only the JSON summary line")
    bench_serve.set_defaults(func=_bench("serve"))

    bench_train = bench_commands.add_parser("train", help="training examples per second of the default model")
    bench_train.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="default 1024 4096 8192"
    )
    bench_train.add_argument("--steps", type=int, default=None, help="timed steps per batch size (default: one epoch)")
    bench_train.add_argument(
        "--rows", type=int, default=1_000_000, help="interaction rows generated (default %(default)s)"
    )
    bench_train.add_argument("--json", action="store_true", help="print only the JSON summary line")
    bench_train.set_defaults(func=_bench("train"))

    bench_pipeline = bench_commands.add_parser(
        "pipeline", help="pipeline wall time per stage, rows/s and peak memory at several sizes"
    )
    bench_pipeline.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1_000_000, 5_000_000, 20_000_000],
        help="interactions per run (default 1M 5M 20M)",
    )
    bench_pipeline.add_argument(
        "--workdir", default=None, help="where data and outputs go (default: a new temporary folder)"
    )
    bench_pipeline.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="stop a size whose process tree passes this much memory (default: 90%% of this machine's)",
    )
    bench_pipeline.add_argument("--json", action="store_true", help="print only the JSON summary line")
    bench_pipeline.set_defaults(func=_bench("pipeline"))


def _add_serving_commands(commands) -> None:
    """serve and recommend."""
    serve = commands.add_parser("serve", help="serve the newest pushed model over TF Serving's gRPC and REST APIs")
    serve.add_argument("--model-dir", required=True, help="the serving dir Pusher writes (numbered versions)")
    serve.add_argument("--port", type=int, default=f.GRPC_PORT, help="gRPC port (default %(default)s, as TF Serving)")
    serve.add_argument(
        "--rest-port", type=int, default=f.REST_PORT, help="REST port (default %(default)s, as TF Serving; 0: no REST)"
    )
    serve.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="threads one model call may use, as TF Serving's --tensorflow_intra_op_parallelism "
        "(0: one per core, TF Serving's default; default %(default)s)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default %(default)s: this machine only; 0.0.0.0 in a container)",
    )
    serve.add_argument("--model-name", default=f.MODEL_NAME, help="model name clients ask for (default %(default)s)")
    serve.add_argument(
        "--index",
        choices=f.RETRIEVAL_INDEXES,
        default=f.BRUTE_FORCE_INDEX,
        help="known users' retrieval: the SavedModel's brute-force product, as TF Serving runs it, or a "
        "ScaNN index over the same arrays (default %(default)s)",
    )
    serve.set_defaults(func=_serve)

    recommend = commands.add_parser(
        "recommend", help="ask a TF Serving endpoint (gRPC, or REST with --rest) for a user's top titles"
    )
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="MyAnimeList user_id the model knows")
    who.add_argument("--liked", type=_anime_ids, help="a new user: comma-separated anime ids they liked")
    who.add_argument("--animelist", help="a new user: a CSV of their own rows in animelist.csv's layout")
    recommend.add_argument("-k", type=_positive_int, default=f.DEFAULT_K, help="how many titles (default %(default)s)")
    recommend.add_argument(
        "--exclude", type=_anime_ids, default=None, help="comma-separated anime ids to leave out on this request"
    )
    where = recommend.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="HOST:PORT of tensorflow/serving or `animerec serve` (gRPC)")
    where.add_argument("--rest", help="URL of their REST API, e.g. http://localhost:8501")
    where.add_argument("--model-dir", help="a serving dir: starts the stand-in server in-process")
    recommend.add_argument("--model-name", default=f.MODEL_NAME, help="default %(default)s")
    recommend.set_defaults(func=_recommend)


def add_commands(commands) -> None:
    """The pipeline, Kubeflow, batch, benchmark and serving commands."""
    _add_run_commands(commands)
    _add_kubeflow_commands(commands)
    _add_batch_command(commands)
    _add_bench_commands(commands)
    _add_serving_commands(commands)
