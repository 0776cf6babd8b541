"""Command-line options shared by several commands: the liked filter, the eval split and Beam's workers."""

from __future__ import annotations

import argparse

from animerec.data import interactions


def add_filter_args(parser: argparse.ArgumentParser) -> None:
    defaults = interactions.LikedFilter()
    split = interactions.SplitConfig()
    parser.add_argument(
        "--min-score",
        type=int,
        default=defaults.min_score,
        help="lowest score that counts as liked (default %(default)s)",
    )
    parser.add_argument(
        "--eval-percent",
        type=int,
        default=split.eval_percent,
        help="share of each user's liked rows held out for eval (default %(default)s)",
    )
    parser.add_argument(
        "--min-history",
        type=int,
        default=split.min_history,
        help="liked rows a user needs to get eval rows (default %(default)s)",
    )


def add_workers_arg(parser: argparse.ArgumentParser) -> None:
    """--workers for commands that read the Kaggle files on this machine's Beam (animerec.pipeline.beam_args.default_beam_args)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Beam worker processes; 1 runs Beam in this process (default: in this process for an "
        "animelist.csv of at most 16 MB, else one worker per core)",
    )


def filter_and_split(args) -> tuple[interactions.LikedFilter, interactions.SplitConfig]:
    return (
        interactions.LikedFilter(min_score=args.min_score),
        interactions.SplitConfig(eval_percent=args.eval_percent, min_history=args.min_history),
    )
