"""Command-line plumbing of the FTTT commands: ScoreFlow's ``--config``/``--set``, one-line
errors and ``--force``/``--skip-finished``, with FTTT's config root and datasets."""

from __future__ import annotations

import argparse

from fttt.config import TASKS, FtttConfig, check_task, load_fttt_config
from scoreflow.cli import add_rerun_options, make_parser


def fttt_parser(description: str, *, dataset: bool = True) -> argparse.ArgumentParser:
    parser = make_parser(description, dataset=False)
    if dataset:
        parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(TASKS)}")
    add_rerun_options(parser)
    return parser


def load_args(args: argparse.Namespace) -> FtttConfig:
    config = load_fttt_config(args.config, args.overrides)
    if getattr(args, "dataset", None) is not None:
        check_task(args.dataset)
    return config
