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


def make_parser(description: str, *, dataset: bool = True, dataset_required: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every ScoreFlow command takes (``dataset_required=False``:
    the command can infer the dataset, as optimize.py does from the workspace)."""
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
        parser.add_argument("--dataset", required=dataset_required, help=f"one of: {', '.join(DATASETS)}")
    return parser


def make_stage_parser(description: str, *, epoch_required: bool = True) -> argparse.ArgumentParser:
    """The options of the epoch-indexed stage scripts (generate.py, evaluate.py); evaluate.py
    checks ``--epoch`` itself (``epoch_required=False``): its ``--baseline`` runs have none."""
    parser = make_parser(description)
    parser.add_argument("--task", choices=("optimize", "inference"), default="optimize")
    parser.add_argument("--epoch", type=int, required=epoch_required)
    add_rerun_options(parser)
    return parser


def add_rerun_options(parser: argparse.ArgumentParser) -> None:
    """``--force`` redoes a finished stage; ``--skip-finished`` lets a shell loop pass over it."""
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument("--force", action="store_true", help="redo a finished stage (its outputs are replaced)")
    rerun.add_argument(
        "--skip-finished",
        action="store_true",
        help="exit 0 at once if the stage already finished with this config (for shell loops)",
    )


def skip_finished(args: argparse.Namespace, config: Config, stage: str, epoch: int) -> bool:
    """True (and a line on stdout) when ``--skip-finished`` applies to a finished stage."""
    from scoreflow.workspace import Workspace

    if not args.skip_finished:
        return False
    workspace = Workspace.from_config(config, args.dataset, epoch)
    if not workspace.finished_with(stage, config):
        return False
    print(f"{args.dataset} epoch {epoch}: {stage} already finished ({workspace.manifest_path(stage)}); skipped")
    return True


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
