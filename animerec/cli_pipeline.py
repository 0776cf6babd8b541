"""Commands that run or inspect the pipeline and the pushed model."""

from __future__ import annotations


def add_commands(commands, add_filter_args, filter_and_split) -> None:
    """Registers the pipeline commands; the pipeline issue fills these in."""
