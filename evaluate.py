"""Score the workflows of one dataset and epoch with the executor.

    python evaluate.py --dataset HumanEval --task optimize --epoch 0   # scores + preference pairs
    python evaluate.py --dataset HumanEval --task inference --epoch 2  # test-split solve rate

Interrupted runs resume: finished runs are kept and cached executor replies reused.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoreflow.cli import config_from_args, make_stage_parser, run, skip_finished


def main(argv: Sequence[str] | None = None) -> int:
    args = make_stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = config_from_args(args)
    stage = "evaluate" if args.task == "optimize" else "inference_evaluate"
    if skip_finished(args, config, stage, args.epoch):
        return 0

    from scoreflow.evaluation import EvaluateStage, summary_line

    manifest = EvaluateStage(config, args.dataset, args.task, args.epoch).run(force=args.force)
    print(summary_line(manifest))
    return 0


if __name__ == "__main__":
    run(main)
