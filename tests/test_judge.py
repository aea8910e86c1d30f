"""The steps after a workflow finishes: extraction, the inference judge, scoring.

An extraction, judge or scoring step that raises scores that run 0 with the reason
recorded (the original's ``evaluate_problem`` catches everything); infrastructure
failures (executor or sandbox unavailable) propagate so that the run stays unscored
and the stage can stop, resumable. Solve rates at inference are per problem the mean
of its runs. (End to end through evaluate.py: tests/test_evaluate.py.)
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks.base import Problem, Score
from scoreflow import evaluation
from scoreflow.config import load_config
from scoreflow.evaluation import EvaluateStage, RunKey, solve_rates
from scoreflow.executor.client import ExecutorUnavailable, RequestRefused, RequestTally
from scoreflow.sandbox import SandboxUnavailable

KEY = RunKey("p1", 0, 0)


def stage_for(tmp_path, dataset: str = "DROP", task: str = "inference", *sets: str) -> EvaluateStage:
    return EvaluateStage(load_config(None, [f"workspace={tmp_path}", *sets]), dataset, task, 2)


def fake_client(calls: int = 5) -> Any:
    return SimpleNamespace(meter=SimpleNamespace(calls=calls))


def scored(stage: EvaluateStage, client: Any = None) -> dict[str, Any]:
    problem = Problem("p1", "What is P?", "framed", "4")
    return asyncio.run(stage._scored(KEY, problem, "P is 4", client or fake_client(), 0, [], [], RequestTally()))


def raising(error: BaseException):
    async def step(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    return step


def returning(value: Any):
    async def step(*_args: Any, **_kwargs: Any) -> Any:
        return value

    return step


@pytest.fixture
def steps(monkeypatch):
    """Extraction answers "4", the judge says 1, the scorer gives F1 1: each replaceable."""
    monkeypatch.setattr(evaluation, "extract_answer", returning("4"))
    monkeypatch.setattr(evaluation, "judge_output", returning(1.0))
    return monkeypatch


def test_a_run_whose_steps_succeed_has_both_scores(tmp_path, steps):
    record = scored(stage_for(tmp_path))
    assert record["score"] == 1.0 and record["judge_score"] == 1.0 and record["errors"] == []


def test_extraction_error_scores_the_run_0_with_the_reason(tmp_path, steps):
    steps.setattr(evaluation, "extract_answer", raising(ValueError("no answer in it")))
    record = scored(stage_for(tmp_path))
    assert record["score"] == 0.0 and record["judge_score"] == 0.0 and record["detail"] == "failed"
    assert record["errors"] == ["extraction: ValueError: no answer in it"]


def test_judge_error_scores_the_verdict_0_and_keeps_the_exact_score(tmp_path, steps):
    steps.setattr(evaluation, "judge_output", raising(KeyError("verdict")))
    record = scored(stage_for(tmp_path))
    assert record["judge_score"] == 0.0 and record["score"] == 1.0
    assert record["errors"] == ["judge: KeyError: 'verdict'"]


def test_scoring_error_scores_the_run_0_with_the_reason(tmp_path, steps):
    stage = stage_for(tmp_path)
    stage.benchmark.score = raising(RuntimeError("scorer broke"))
    record = scored(stage)
    assert record["score"] == 0.0 and record["detail"] == "failed" and record["judge_score"] == 1.0
    assert record["errors"] == ["scoring: RuntimeError: scorer broke"]


def test_optimize_runs_have_no_judge(tmp_path, steps):
    steps.setattr(evaluation, "judge_output", raising(AssertionError("the judge is inference only")))
    stage = stage_for(tmp_path, "DROP", "optimize")
    record = scored(stage)
    assert record["score"] == 1.0 and "judge_score" not in record
    steps.setattr(evaluation, "extract_answer", raising(ValueError("x")))
    assert "judge_score" not in scored(stage)


@pytest.mark.parametrize("where", ["extract_answer", "judge_output", "score"])
@pytest.mark.parametrize("error", [ExecutorUnavailable("server down"), SandboxUnavailable("no fork server")])
def test_infrastructure_failures_propagate_unscored(tmp_path, steps, where, error):
    stage = stage_for(tmp_path)
    if where == "score":
        stage.benchmark.score = raising(error)
    else:
        steps.setattr(evaluation, where, raising(error))
    with pytest.raises(type(error)):
        scored(stage)


def test_a_refused_request_fails_the_run_unless_nothing_was_ever_answered(tmp_path, steps):
    steps.setattr(evaluation, "extract_answer", raising(RequestRefused("HTTP 400: too long")))
    record = scored(stage_for(tmp_path), fake_client(calls=3))
    assert record["score"] == 0.0 and record["errors"] == ["refused: HTTP 400: too long"]
    with pytest.raises(ExecutorUnavailable, match="every request so far was refused"):
        scored(stage_for(tmp_path), fake_client(calls=0))


def test_a_real_scorer_that_raises_on_hostile_output_scores_0(tmp_path, steps):
    """Through the real MATH benchmark: a scorer exception (here forced in the sandbox
    call) is not the run's infrastructure failing."""
    stage = stage_for(tmp_path, "MATH")

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("unreadable sandbox reply")

    stage.benchmark.sandbox.run = broken  # the symbolic check's sandbox call
    steps.setattr(evaluation, "extract_answer", returning("\\boxed{x+1}"))
    try:
        record = scored(stage)
    finally:
        stage.benchmark.close()
    assert record["score"] == 0.0 and record["errors"][-1].startswith("scoring: ValueError")


# ---------------------------------------------------------------- runs and solve rates


def test_inference_runs_default_to_vali_num(tmp_path):
    assert stage_for(tmp_path).runs == 3
    assert stage_for(tmp_path, "DROP", "inference", "evaluation.vali_num=2").runs == 2
    assert stage_for(tmp_path, "DROP", "inference", "evaluation.inference_runs=1").runs == 1
    assert stage_for(tmp_path, "DROP", "optimize", "evaluation.inference_runs=1").runs == 3


def run(pid: str, number: int, score: float, judged: float | None = None, sample: int = 0) -> dict[str, Any]:
    record = {"problem_id": pid, "sample": sample, "run": number, "score": score}
    if judged is not None:
        record["judge_score"] = judged
    return record


def test_solve_rate_is_the_mean_over_problems_of_each_problems_run_mean():
    problems = {pid: Problem(pid, "q", "q", "a") for pid in ("a", "b", "c", "d")}  # d: no workflow
    records = [run("a", 0, 1.0, 1.0), run("a", 1, 0.5, 0.0), run("a", 2, 0.0, 1.0),
               run("b", 0, 1.0, 1.0), run("b", 1, 1.0, 1.0), run("b", 2, 1.0, 1.0),
               run("c", 0, 0.0, 0.0), run("c", 1, 0.0, 0.0), run("c", 2, 0.0, 1.0)]
    rates = solve_rates(records, problems)
    assert rates["test_problems"] == 4
    assert rates["solve_rate"] == round((0.5 + 1.0 + 0.0 + 0.0) / 4, 4)
    assert rates["judge_solve_rate"] == round((2 / 3 + 1.0 + 1 / 3 + 0.0) / 4, 4)


def test_solve_rates_without_a_judge_and_with_failed_runs():
    problems = {"a": Problem("a", "q", "q", "1"), "b": Problem("b", "q", "q", "1")}
    assert solve_rates([run("a", 0, 1.0), run("a", 1, 0.0), run("b", 0, 1.0)], problems) == {
        "test_problems": 2, "solve_rate": 0.75}
    # a failed run of a judged benchmark records a 0 verdict; a missing one would count 0 too
    assert solve_rates([run("a", 0, 0.0, 0.0), run("a", 1, 1.0, 1.0), run("b", 0, 1.0)], problems)[
        "judge_solve_rate"] == 0.25


def test_a_scored_record_keeps_the_score_detail(tmp_path, steps):
    stage = stage_for(tmp_path)
    stage.benchmark.score = returning(Score(0.5, "4 or so", "f1=0.500"))
    record = scored(stage)
    assert (record["score"], record["answer"], record["detail"]) == (0.5, "4 or so", "f1=0.500")
