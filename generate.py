"""Generate candidate workflows for one dataset and epoch.

    python generate.py --dataset HumanEval --task optimize --epoch 0   # k per validation problem
    python generate.py --dataset HumanEval --task inference --epoch 2  # one per test problem

Epoch i > 0 samples from the base generator plus the LoRA adapter that
``optimize.py --epoch i-1`` wrote into epoch i's folder.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoreflow.cli import config_from_args, make_stage_parser, run, skip_finished


def main(argv: Sequence[str] | None = None) -> int:
    args = make_stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = config_from_args(args)
    stage = "generate" if args.task == "optimize" else "inference_generate"
    if skip_finished(args, config, stage, args.epoch):
        return 0

    from scoreflow.generation import GenerateStage, summary_line

    manifest = GenerateStage(config, args.dataset, args.task, args.epoch).run(force=args.force)
    print(summary_line(manifest))
    return 0


if __name__ == "__main__":
    run(main)
