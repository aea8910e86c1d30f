"""Running a method over a dataset's questions: resumable per question, recorded per attempt.

Shared by ``python -m fttt.hard`` (greedy on the whole split, then the filter) and
``python -m fttt.run`` (one method and seed on the hard questions). Every generation
goes to ``attempts.jsonl`` as it happens; a question's line in ``results.jsonl`` is
written only when the question is done, so a killed run redoes at most the question it
was in (its stray attempts are dropped on resume) and never a finished one.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fttt.config import FtttConfig
from fttt.tasks import Question, Task, get_task
from fttt.workspace import RunFolder
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_json

SESSION_SAVE_S = 2.0


@dataclass(frozen=True)
class RunSpec:
    """What one command runs."""

    dataset: str
    method: str
    seed: int
    stage: str  # "hard" or "run"


def select_questions(config: FtttConfig, task: Task) -> list[Question]:
    """The configured questions of the test split (all, the listed ids, or the first N)."""
    questions = task.load(config.data_dir)
    wanted = config.tasks.problem_ids
    if wanted:
        by_id = {q.id: q for q in questions}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise ScoreFlowError(f"tasks.problem_ids: {missing[0]!r} is not a {task.name} test question id")
        questions = [by_id[i] for i in wanted]
    if config.tasks.max_problems is not None:
        questions = questions[: config.tasks.max_problems]
    return questions


def prompt_hash(question: Question) -> str:
    """Identifies how a question was posed (the filter is only valid for the same prompts)."""
    return hashlib.sha256(question.user_message.encode()).hexdigest()[:16]


def run_method(config: FtttConfig, spec: RunSpec, folder: RunFolder, questions: list[Question], *,
               force: bool = False, extra_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``spec.method`` on ``questions`` in ``folder`` and return the finished manifest."""
    import transformers
    from tqdm import tqdm

    from fttt.methods import Context, method_function
    from fttt.policy import fingerprint, load_policy

    task = get_task(spec.dataset, config.tasks)
    stage = folder.start(spec.stage, config, force=force)
    results, attempts = stage.log("results.jsonl"), stage.log("attempts.jsonl")
    done = {r["id"]: r for r in results.read()}
    dropped = _drop_stray_attempts(attempts, set(done))
    if dropped["generations"]:  # work a killed session did on an unfinished question: redone, still counted
        lost = stage.manifest.setdefault("discarded", {"generations": 0, "generated_tokens": 0})
        for key in lost:
            lost[key] += dropped[key]
    todo = [q for q in questions if q.id not in done]
    stage.manifest.update(method=spec.method, seed=spec.seed, model=config.model.name, questions=len(questions),
                          **(extra_manifest or {}))
    policy = load_policy(config)
    stage.manifest["model_fingerprint"] = fingerprint(policy.model)
    judge = _judge(config, task)
    ctx = Context(config, task, policy, judge, record=lambda a: attempts.append(a.as_record()),
                  method=spec.method, seed=spec.seed)
    run = method_function(spec.method)
    session: list[dict[str, Any]] = []  # this session's questions (sessions[i] holds their usage)
    stage.save_session(_usage(session))
    try:
        with tqdm(total=len(questions), initial=len(done), desc=f"{spec.method} {folder.label}", unit="q",
                  file=sys.stderr) as bar:
            for question in todo:
                transformers.set_seed(spec.seed)  # per question, as the original: order does not matter
                record = run(ctx, question).as_record()
                results.append(record)
                done[question.id] = record
                session.append(record)
                stage.save_session(_usage(session), throttle_s=SESSION_SAVE_S)
                bar.update(1)
                bar.set_postfix(solved=sum(r["success"] for r in done.values()))
    except ScoreFlowError as exc:
        stage.stop(str(exc), _usage(session))
        raise
    finally:
        ctx.close()
        if judge is not None:
            judge.close()
    records = [done[q.id] for q in questions]
    stage.close_session(_usage(session))
    # The stage's usage is the sum over its records, so a resumed run reports what an
    # uninterrupted one would; work a kill threw away is in the manifest's "discarded".
    return stage.finish(counts=summarize(records, config.methods.budget), usage=_usage(records))


def _judge(config: FtttConfig, task: Task) -> Any:
    if task.kind != "code":
        return None
    from fttt.judging import make_judge

    return make_judge(config)


def _drop_stray_attempts(attempts: Any, finished: set[str]) -> dict[str, int]:
    """Attempts of a question a killed session did not finish are redone, so dropped;
    returns how much generation that was."""
    records = attempts.read()
    kept = [a for a in records if a["question_id"] in finished]
    stray = [a for a in records if a["question_id"] not in finished]
    if stray:
        attempts.rewrite(kept)
    return {"generations": len(stray), "generated_tokens": sum(a["new_tokens"] for a in stray)}


def _usage(records: Any) -> dict[str, Any]:
    records = list(records)
    return {
        "questions": len(records),
        "generations": sum(r["generations"] for r in records),
        "generated_tokens": sum(r["generated_tokens"] for r in records),
        "seconds": round(sum(r["seconds"] for r in records), 3),
    }


def summarize(records: Sequence[dict[str, Any]], budget: int) -> dict[str, Any]:
    """The original's printout (Num. Correct, Precision, Avg. Trials, Num. Unsolved,
    Trial Dist.) plus the strict-budget success and the compute actually spent."""
    n = len(records)
    solved = sum(r["success"] for r in records)
    return {
        "questions": n,
        "budget": budget,
        "correct": solved,
        "success_rate": solved / n if n else None,
        "success_rate_strict": sum(r["success_strict"] for r in records) / n if n else None,
        "avg_trials": sum(r["paper_num_trials"] for r in records) / n if n else None,
        "unsolved_no_answer": sum(r["final_verdict"] is None for r in records),
        "trial_distribution": dict(sorted(Tally(r["paper_num_trials"] for r in records).items())),
        "generations": sum(r["generations"] for r in records),
        "generated_tokens": sum(r["generated_tokens"] for r in records),
    }


def summary_line(manifest: dict[str, Any], label: str) -> str:
    c = manifest["counts"]
    rate = "n/a" if c["success_rate"] is None else f"{100 * c['success_rate']:.1f} %"
    strict = "n/a" if c["success_rate_strict"] is None else f"{100 * c['success_rate_strict']:.1f} %"
    trials = "n/a" if c["avg_trials"] is None else f"{c['avg_trials']:.2f}"
    return (f"{label}: {c['questions']} questions, {c['correct']} solved within {c['budget']} "
            f"({rate}; strict budget {strict}), avg trials {trials}, {c['generations']} generations, "
            f"{c['generated_tokens']} tokens, {manifest.get('wall_time_s', 0):.0f} s")


def check_filter(config: FtttConfig, folder: RunFolder, task: Task, questions: list[Question],
                 config_file: str | None = None) -> list[Question]:
    """The hard questions among ``questions``, from a filter made for this model, split and
    prompts (a filter made for anything else is refused with the command that makes one)."""
    path = folder.path("hard_ids.json")
    manifest = folder.manifest("hard")
    command = f"python -m fttt.hard --dataset {task.name}" + (f" --config {config_file}" if config_file else "")
    if manifest is None or manifest.get("status") != "complete" or not path.exists():
        raise ScoreFlowError(f"{path}: no finished hard-question filter for {task.name}; run first: {command}")
    hard = read_json(path)
    expected = filter_identity(config, task)
    for key, value in expected.items():
        if hard.get(key) != value:
            raise ScoreFlowError(
                f"{path}: the hard-question filter was made with {key} = {hard.get(key)!r}, this run has {value!r}; "
                f"make one for this setting: {command} --force"
            )
    prompts = hard.get("prompts", {})
    for question in questions:
        if question.id not in prompts:
            raise ScoreFlowError(f"{path}: question {question.id} was not filtered (the filter covers "
                                 f"{len(prompts)} questions); run {command} on the same selection")
        if prompts[question.id] != prompt_hash(question):
            raise ScoreFlowError(f"{path}: question {question.id} is posed differently than when the filter was made; "
                                 f"run {command} --force")
    hard_ids = set(hard["hard_ids"])
    return [q for q in questions if q.id in hard_ids]


def filter_identity(config: FtttConfig, task: Task) -> dict[str, Any]:
    """What a hard-question filter depends on (FTTT_SPEC 1.4, 5 item 13)."""
    from fttt.tasks import split_hash

    return {
        "dataset": task.name,
        "model": config.model.name,
        "dtype": config.model.dtype,
        "split_sha256": split_hash(config.data_dir, task.name),
        "judge_time_limit_s": config.judge.time_limit_s,
        "max_new_tokens": config.sampling.max_new_tokens,
        "mbpp_separator": config.tasks.mbpp_separator,
    }
