"""Run one test-time method on a dataset's hard questions (FTTT_SPEC section 2).

    python -m fttt.run --method fttt --dataset GSM8K --seed 42 [--config F] [--set k=v]
                       [--force | --skip-finished]

Methods: greedy, revision, beam_search, best_of_n, self_refine, self_consistency, fttt,
fttt_plus. Each question gets up to ``methods.budget`` attempts with the verifier's
verdict after each; every generation is recorded (``attempts.jsonl``), every finished
question too (``results.jsonl``), in ``<workspace>/<model>/<dataset>/<method>_s<seed>/``.
A killed run resumes where it stopped. The questions are those ``python -m fttt.hard``
found hard for this model (``tasks.use_hard_filter: false`` runs the whole selection).
"""

from __future__ import annotations

from collections.abc import Sequence

from fttt.cli import fttt_parser, load_args
from fttt.config import METHODS, check_method
from fttt.runner import RunSpec, check_filter, run_method, select_questions, summary_line
from fttt.tasks import get_task
from fttt.workspace import RUN_STAGE, hard_folder, run_folder
from scoreflow.cli import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = fttt_parser(__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--seed", type=int, required=True, help="the paper's: 42, 85, 100")
    args = parser.parse_args(argv)
    config = load_args(args)
    check_method(args.method)
    folder = run_folder(config, args.dataset, args.method, args.seed)
    if args.skip_finished and folder.finished_with(RUN_STAGE, config):
        print(f"{folder.label}: already finished ({folder.manifest_path(RUN_STAGE)}); skipped")
        return 0
    task = get_task(args.dataset, config.tasks)
    questions = select_questions(config, task)
    if config.tasks.use_hard_filter:
        questions = check_filter(config, hard_folder(config, args.dataset), task, questions, args.config)
    spec = RunSpec(args.dataset, args.method, args.seed, RUN_STAGE)
    manifest = run_method(config, spec, folder, questions, force=args.force,
                          extra_manifest={"hard_filter": config.tasks.use_hard_filter})
    print(summary_line(manifest, folder.label))
    return 0


if __name__ == "__main__":
    run(main)
