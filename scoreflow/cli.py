"""Shared command-line plumbing: ``--config``, ``--set`` and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from scoreflow.config import DATASETS, Config, load_config
from scoreflow.errors import ScoreFlowError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2 like every other error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)



def make_parser(description: str, *, dataset: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every ScoreFlow command takes."""
    parser = _Parser(description=description)
    parser.add_argument("--config", default=None, help="YAML config file (defaults: the paper's setting)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set generation.k=4 (repeatable)",
    )
    if dataset:
        parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    return parser


def make_stage_parser(description: str) -> argparse.ArgumentParser:
    """The options of the epoch-indexed stage scripts (generate.py, evaluate.py)."""
    parser = make_parser(description)
    parser.add_argument("--task", choices=("optimize", "inference"), default="optimize")
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--force", action="store_true", help="redo a finished stage (its records are replaced)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config the options name and check the dataset name against it."""
    config = load_config(args.config, args.overrides)
    if getattr(args, "dataset", None) is not None:
        config.dataset(args.dataset)
    return config


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a command's ``main``; a ScoreFlowError becomes ``error: ...`` and exit 2."""
    try:
        code = main(argv)
    except ScoreFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted; finished records are kept, re-run the command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
