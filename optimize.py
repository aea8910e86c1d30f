"""Fine-tune the generator's LoRA on one epoch's preference pairs (Score-DPO by default).

    accelerate launch --num_processes=1 optimize.py --dataset HumanEval --epoch 0   # writes epoch_1/adapter
    accelerate launch --num_processes=1 optimize.py --epoch=0   # the one dataset with epoch 0's pairs
    python optimize.py --dataset HumanEval --epoch 1 --set training.loss=dpo          # plain python works too

Epoch 0 creates the LoRA; epoch i > 0 continues epoch i's adapter. The reference is
always the base model. More processes under ``accelerate launch`` train data parallel;
only the main process writes the adapter and the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoreflow.cli import add_rerun_options, config_from_args, make_parser, run, skip_finished
from scoreflow.workspace import infer_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__.splitlines()[0], dataset_required=False)
    parser.add_argument("--epoch", type=int, required=True, help="train on its pairs; writes epoch+1's adapter")
    add_rerun_options(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    if args.dataset is None:  # the seed README's form: the dataset whose evaluate stage made the pairs
        args.dataset = infer_dataset(config.workspace, "evaluate", args.epoch, "optimize.py")
    if skip_finished(args, config, "optimize", args.epoch + 1):  # the adapter lives in epoch+1
        return 0

    from scoreflow.training import OptimizeStage, summary_line

    manifest = OptimizeStage(config, args.dataset, args.epoch).run(force=args.force)
    if manifest is not None:  # the main process
        print(summary_line(manifest))
    return 0


if __name__ == "__main__":
    run(main)
