"""Find the hard questions: greedy decoding on the whole test split (FTTT_SPEC 1.4).

    python -m fttt.hard --dataset GSM8K [--config F] [--set k=v] [--force | --skip-finished]

Writes ``<workspace>/<model>/<dataset>/hard/hard_ids.json``: the questions greedy got
wrong or left unanswered, with what the filter depends on (model, dtype, weights
fingerprint, split hash, each question's prompt hash, the judge's time limit), so a
method run refuses a filter made for another model, split or prompt. It also writes the
original's ``correct_cases.json`` (the solved ids as a JSON list) beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fttt.cli import fttt_parser, load_args
from fttt.runner import RunSpec, filter_identity, prompt_hash, run_method, select_questions, summary_line
from fttt.tasks import get_task
from fttt.workspace import HARD_STAGE, hard_folder
from scoreflow.cli import run
from scoreflow.jsonio import atomic_write_json, read_jsonl


def main(argv: Sequence[str] | None = None) -> int:
    parser = fttt_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    config = load_args(args)
    folder = hard_folder(config, args.dataset)
    if args.skip_finished and folder.finished_with(HARD_STAGE, config):
        print(f"{folder.label}: already finished ({folder.manifest_path(HARD_STAGE)}); skipped")
        return 0
    task = get_task(args.dataset, config.tasks)
    questions = select_questions(config, task)
    identity = filter_identity(config, task)
    spec = RunSpec(args.dataset, "greedy", config.methods.revision_seed, HARD_STAGE)
    manifest = run_method(config, spec, folder, questions, force=args.force, extra_manifest={"filter": identity})
    results = {r["id"]: r for r in read_jsonl(folder.path("results.jsonl"))}
    hard = [q for q in questions if results[q.id]["final_verdict"] is not True]
    correct = [q for q in questions if results[q.id]["final_verdict"] is True]
    atomic_write_json(folder.path("hard_ids.json"), {
        **identity,
        "model_fingerprint": manifest["model_fingerprint"],
        "questions": len(questions),
        "hard_ids": [q.id for q in hard],
        "correct_ids": [q.id for q in correct],
        "prompts": {q.id: prompt_hash(q) for q in questions},
    })
    atomic_write_json(folder.path("correct_cases.json"), [q.original_id for q in correct])
    print(summary_line(manifest, f"{folder.label} (greedy)"))
    print(f"{folder.label}: {len(hard)} hard questions of {len(questions)} -> {folder.path('hard_ids.json')}")
    return 0


if __name__ == "__main__":
    run(main)
