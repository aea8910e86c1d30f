"""Score the workflows of one dataset and epoch with the executor.

    python evaluate.py --dataset HumanEval --task optimize --epoch 0   # scores + preference pairs
    python evaluate.py --dataset HumanEval --task inference --epoch 2  # test-split solve rate
    python evaluate.py --dataset HumanEval --task inference --baseline cot  # a Table-1 baseline (or: all)

Interrupted runs resume: finished runs are kept and cached executor replies reused.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from scoreflow.cli import config_from_args, make_stage_parser, run, skip_finished


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_stage_parser(__doc__.splitlines()[0], epoch_required=False)
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="score a Table-1 baseline's fixed workflow instead (io, cot, cot_sc, medprompt, "
                             "multipersona, self_refine, all; aflow for GSM8K and MATH); --task inference, no --epoch")
    args = parser.parse_args(argv)
    if args.baseline is not None:
        return baselines(parser, args)
    if args.epoch is None:
        parser.error("the following arguments are required: --epoch")
    config = config_from_args(args)
    stage = "evaluate" if args.task == "optimize" else "inference_evaluate"
    if skip_finished(args, config, stage, args.epoch):
        return 0

    from scoreflow.evaluation import EvaluateStage, summary_line

    manifest = EvaluateStage(config, args.dataset, args.task, args.epoch).run(force=args.force)
    print(summary_line(manifest))
    return 0


def baselines(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--baseline NAME``: ScoreFlow's inference evaluation of each named baseline in turn."""
    if args.task != "inference":
        parser.error("--baseline: baselines are scored at inference only; pass --task inference")
    if args.epoch is not None:
        parser.error("--baseline: a baseline has no epoch; drop --epoch")
    from scoreflow.baselines import BaselineStage, baseline_names, finished
    from scoreflow.evaluation import summary_line

    names = baseline_names(args.baseline)
    config = config_from_args(args)
    for name in names:
        if args.skip_finished and finished(config, args.dataset, name):
            print(f"{args.dataset} baseline {name}: already finished; skipped")
            continue
        manifest = BaselineStage(config, args.dataset, name).run(force=args.force)
        print(f"{args.dataset} baseline {name}: {summary_line(manifest)}")
    return 0


if __name__ == "__main__":
    run(main)
