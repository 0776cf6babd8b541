"""The `animerec` command line."""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import warnings

from animerec import cli_args
from animerec.data import files, kaggle
from animerec.pipeline import shutdown, worker_startup


def _data_synth(args) -> int:
    from animerec.data import synth

    config = synth.SynthConfig(
        users=args.users, anime=args.anime, seed=args.seed, mean_rows_per_user=args.rows_per_user
    )
    synth.synthesize(args.out, config)
    return 0


def _data_summary(args) -> int:
    from animerec.data import summary

    liked_filter, split = cli_args.filter_and_split(args)
    result = summary.summarize(args.data_dir, liked_filter, split)
    if args.json:
        result.pop("_reports")
        print(json.dumps(result, indent=2, default=str))
    else:
        print(summary.format_summary(result, split))
    return 0


def _data_convert(args) -> int:
    from animerec.data import convert
    from animerec.pipeline.beam_args import default_beam_args

    liked_filter, split = cli_args.filter_and_split(args)
    if not files.is_local(args.out):
        # The pipeline's KaggleExampleGen is what writes records to a remote pipeline root.
        print(f"animerec: error: --out {args.out}: `data convert` writes to a local folder", file=sys.stderr)
        return 2
    with shutdown.stops_cleanly():
        convert.convert_kaggle(
            args.data_dir,
            args.out,
            liked_filter,
            split,
            beam_pipeline_args=default_beam_args(args.data_dir, args.workers),
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animerec", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="generate, validate and convert MyAnimeList data")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    from animerec.data.synth import SynthConfig  # the demo's defaults are its own

    defaults = SynthConfig()
    synth = data_commands.add_parser("synth", help="write a synthetic dataset with the Kaggle schema")
    synth.add_argument("--out", required=True, help="folder for the five CSV files")
    synth.add_argument("--users", type=int, default=defaults.users, help="number of users (default %(default)s)")
    synth.add_argument("--anime", type=int, default=defaults.anime, help="number of anime (default %(default)s)")
    synth.add_argument(
        "--rows-per-user",
        type=float,
        default=defaults.mean_rows_per_user,
        help="mean animelist rows per user before de-duplication (default %(default)s)",
    )
    synth.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="random seed; the same seed writes the same files (default %(default)s)",
    )
    synth.set_defaults(func=_data_synth)

    summary = data_commands.add_parser("summary", help="validate the Kaggle files and print what training will see")
    summary.add_argument("--data-dir", required=True, help="folder with the Kaggle CSV files")
    summary.add_argument("--json", action="store_true", help="print the counts as JSON")
    cli_args.add_filter_args(summary)
    summary.set_defaults(func=_data_summary)

    convert = data_commands.add_parser(
        "convert", help="convert the Kaggle files into TFRecords, as the pipeline's ExampleGen does"
    )
    convert.add_argument("--data-dir", required=True, help="folder with the Kaggle CSV files")
    convert.add_argument("--out", required=True, help="output folder (train/, eval/, catalog/)")
    cli_args.add_workers_arg(convert)
    cli_args.add_filter_args(convert)
    convert.set_defaults(func=_data_convert)

    from animerec import cli_pipeline

    cli_pipeline.add_commands(commands)
    return parser


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured), or no poll
        return False


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up lines (CUDA probing on a CPU machine) are noise here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The Google client libraries warn about Python 3.10 on every import; TFX 1.16 needs 3.10.
    warnings.filterwarnings("ignore", category=FutureWarning)
    # ... and in every Beam worker process a command starts (they inherit the environment).
    os.environ.setdefault("PYTHONWARNINGS", worker_startup.QUIET_WARNINGS)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe or socket broke: an error, not the end of the output
        # The reader went away (`animerec data summary ... | head`): as Python's signal
        # docs advise, the rest of the output goes nowhere, with no traceback; 128 + SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except kaggle.DataError as error:
        print(f"animerec: error: {error}", file=sys.stderr)
        return 2
    except shutdown.RunInterruptedError as error:
        print(f"animerec: {error}; its worker processes were stopped", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
