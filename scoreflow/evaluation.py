"""The evaluate stage: run every valid workflow with the executor, score it, build pairs.

Each valid workflow runs ``vali_num`` times on its own problem (SPEC section 1;
temperature 0, but each run is its own set of executor calls: the run index is
part of the cache key, so a resumed run reuses exactly its own cached replies). A
run that raises or overruns its time limit is retried up to ``max_run_retries``
times and then scores 0 with the reasons recorded; a run whose request was refused by
the server, or that hit its request cap, is not retried (it would send the same again).
QA and math outputs go through the executor's extraction call before the benchmark's
scorer; at inference MATH, DROP and HotpotQA also get the judge's verdict (both scores
are reported; the paper's numbers for those three are the judge's). An extraction,
judge or scoring step that raises scores that run 0 (that score; extraction: both),
with the reason in the run's ``errors``, as the original scores any exception.

At inference each test workflow runs ``inference_runs`` times (default ``vali_num``,
as the original); the solve rate is the mean over test problems of each problem's
mean over its runs, a problem without a valid workflow counting 0.

Runs are admitted a bounded number at a time (``scheduling``); each run's time limit
starts at admission and counts only its own work (``runclock``). A run that failed
because the executor failed is never scored: it is queued again, and a few such
failures in a row stop the stage, resumable. Records are appended as runs finish, so a
killed stage resumes with the runs still missing; at the end they are rewritten in a
canonical order, so the final file equals an uninterrupted run's. Each record carries
its executor usage (all attempts, extraction and judge, cached or not), so the stage's
usage is the same whether it ran in one session or several.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.config import Config, runs_admitted
from scoreflow.errors import ScoreFlowError
from scoreflow.executor.client import ChatClient, ExecutorUnavailable, RequestRefused, RequestTally, tallied
from scoreflow.executor.factory import make_client
from scoreflow.jsonio import atomic_write_jsonl, read_jsonl
from scoreflow.judging import extract_answer, judge_output
from scoreflow.operators import OperatorContext, RequestCapExceeded, make_operator_sandbox
from scoreflow.preferences import ScoredWorkflow, TemplateFilter, build_preferences, mean_scores
from scoreflow.runclock import WorkflowTimeout
from scoreflow.sandbox import Sandbox
from scoreflow.scheduling import INFRASTRUCTURE, FailureStreak, run_admitted, run_session
from scoreflow.usage import SESSION_SAVE_S, stage_usage, usage_line, warn_if_unpriced
from scoreflow.workflow import CheckedWorkflow, WorkflowRejected, check_workflow, run_with_limit
from scoreflow.workspace import Workspace

TASKS = {
    "optimize": ("evaluate", "generate", "workflows.jsonl", "scores.jsonl", "validate"),
    "inference": ("inference_evaluate", "inference_generate", "inference/workflows.jsonl", "inference/scores.jsonl", "test"),
}
OUTPUT_LIMIT = 4000  # characters of a workflow's output kept in its record


@dataclass(frozen=True)
class RunKey:
    problem_id: str
    sample: int
    run: int

    @property
    def salt(self) -> str:
        return f"{self.problem_id}/{self.sample}/{self.run}"


class EvaluateStage:
    """Scores one dataset's workflows of one epoch and task."""

    def __init__(self, config: Config, dataset: str, task: str, epoch: int) -> None:
        self.config = config
        self.task = task
        self.stage, self.needs, self.workflows_file, self.scores_file, self.split = TASKS[task]
        self.workspace = Workspace.from_config(config, dataset, epoch)
        self.benchmark = get_benchmark(dataset, config)
        settings = config.evaluation
        self.runs = settings.vali_num if task == "optimize" else (settings.inference_runs or settings.vali_num)

    def run(self, *, force: bool = False) -> dict[str, Any]:
        if self.needs is not None:
            self.workspace.require(self.needs)
        gen = self.config.generation
        selected = self.benchmark.select(self.split, self.config.data_dir, gen.problem_ids, gen.max_problems)  # type: ignore[arg-type]
        problems = {p.id: p for p in selected}
        workflows = self._workflows(problems)
        checked = self._checked(workflows)
        stage = self.workspace.start(self.stage, self.config, force=force)
        log = stage.log(self.scores_file)
        done = log.keys(lambda r: RunKey(r["problem_id"], r["sample"], r["run"]))
        todo = [
            (RunKey(w["problem_id"], w["sample"], run), w, problems[w["problem_id"]])
            for w in workflows
            if w["valid"]
            for run in range(self.runs)
            if RunKey(w["problem_id"], w["sample"], run) not in done
        ]
        client = make_client(self.config, cache_path=self.workspace.path("cache.sqlite"))
        warn_if_unpriced(self.config)
        started = time.perf_counter()
        run_session(stage, self._score_all(todo, checked, client, log, stage), client.meter)
        order = {pid: i for i, pid in enumerate(problems)}
        records = sorted(log.read(), key=lambda r: (order[r["problem_id"]], r["sample"], r["run"]))
        log.rewrite(records)
        extra = self._finish_task(stage, workflows, records, problems)
        counts = {**score_counts(records), **extra, "runs_this_session": len(todo)}
        counts["wall_time_s"] = round(time.perf_counter() - started, 2)
        usage = stage_usage(self.config, (r.get("usage") for r in records), stage, client.meter)
        return stage.finish(counts=counts, usage=usage)

    # ------------------------------------------------------------ scoring runs

    def _workflows(self, problems: dict[str, Problem]) -> list[dict[str, Any]]:
        """The workflows to score: what the generate stage wrote, each of a selected problem
        (a baseline stage overrides this with its fixed workflow)."""
        workflows = read_jsonl(self.workspace.path(self.workflows_file))
        missing = sorted({w["problem_id"] for w in workflows} - set(problems))
        if missing:
            raise_missing(self.workspace.path(self.workflows_file), missing[0], self.split)
        return workflows

    def _checked(self, workflows: list[dict[str, Any]]) -> dict[tuple[str, int], CheckedWorkflow]:
        """Every valid workflow through the checker before anything runs: one that no longer
        passes (other operators or loop bound than the generate stage had) is a one-line error."""
        bench, checked = self.benchmark, {}
        for w in workflows:
            if not w["valid"]:
                continue
            try:
                checked[(w["problem_id"], w["sample"])] = check_workflow(
                    w["workflow"], bench.operators, max_range=bench.max_range,
                    returns_operator_output=bench.family == "code")
            except WorkflowRejected as exc:
                raise ScoreFlowError(
                    f"{self.workspace.path(self.workflows_file)}: problem {w['problem_id']!r} sample {w['sample']}: "
                    f"a workflow marked valid does not pass the checker with this config ({exc}); "
                    "use the generate stage's settings, or regenerate with --force"
                ) from None
        return checked

    async def _score_all(
        self, todo: list[tuple[RunKey, dict[str, Any], Problem]], checked: dict[tuple[str, int], CheckedWorkflow],
        client: ChatClient, log: Any, stage: Any,
    ) -> None:
        sandbox = make_operator_sandbox(self.benchmark, self.config.sandbox)
        where = f"{self.workspace.label} {self.stage}"
        streak = FailureStreak(self.config.evaluation.max_infra_failures, client.meter, where)
        try:
            with tqdm(total=len(todo), desc=f"evaluate {self.workspace.label}", unit="run") as bar:

                async def one(item: tuple[RunKey, dict[str, Any], Problem]) -> None:
                    key, _, problem = item
                    record = await self._score_run(key, checked[(key.problem_id, key.sample)], problem, client, sandbox)
                    log.append(record)
                    bar.update(1)
                    stage.save_session(client.meter.snapshot(), throttle_s=SESSION_SAVE_S)

                await run_admitted(todo, one, slots=runs_admitted(self.config), streak=streak)
        finally:
            await client.aclose()
            if sandbox is not None:
                sandbox.close()
            self.benchmark.close()

    async def _score_run(
        self, key: RunKey, checked: CheckedWorkflow, problem: Problem, client: ChatClient, sandbox: Sandbox | None
    ) -> dict[str, Any]:
        """All attempts of one scoring run, then extraction and scoring. Infrastructure
        failures (ExecutorUnavailable, SandboxUnavailable) propagate: the run stays unscored."""
        settings = self.config.evaluation
        errors: list[str] = []
        calls: list[dict[str, Any]] = []
        with tallied() as tally:
            for attempt in range(settings.max_run_retries + 1):
                budget = min(settings.max_requests_per_attempt, settings.max_requests_per_run - tally.requests)
                if budget <= 0:
                    errors.append(f"request budget: the run's {settings.max_requests_per_run} requests are spent")
                    break
                context = OperatorContext(
                    client, self.benchmark, problem, sandbox=sandbox, settings=self.config.operators,
                    cache_salt=f"{key.salt}/{attempt}", max_requests=budget,
                )
                output, error, final = await self._attempt(checked, context, client)
                calls = [deterministic_call(c.as_record()) for c in context.trace]
                if error is None:
                    return await self._scored(key, problem, output, client, attempt, errors, calls, tally)
                errors.append(error)
                if final:
                    break
        return self._failed(key, "", len(errors), errors, calls, tally)

    async def _attempt(
        self, checked: CheckedWorkflow, context: OperatorContext, client: ChatClient
    ) -> tuple[str, str | None, bool]:
        """(output, error, final): ``final`` when another attempt would only repeat this one."""
        limit = self.benchmark.workflow_time_limit_s
        try:
            return await run_with_limit(checked, context, limit, clock=self.config.evaluation.limit_clock), None, False
        except WorkflowTimeout as exc:
            return "", f"timeout: {exc}", False
        except INFRASTRUCTURE:
            raise
        except RequestRefused as exc:
            if client.meter.calls == 0:  # nothing was ever answered: the setup is refused, not this run
                raise ExecutorUnavailable(f"every request so far was refused: {exc}") from None
            return "", f"refused: {str(exc)[:300]}", True
        except RequestCapExceeded as exc:
            return "", f"request cap: {exc}", True
        except Exception as exc:  # a failed run is retried, then scores 0
            return "", f"{type(exc).__name__}: {str(exc)[:300]}", False

    async def _scored(
        self, key: RunKey, problem: Problem, output: str, client: ChatClient, attempt: int, errors: list[str],
        calls: list[dict[str, Any]], tally: RequestTally,
    ) -> dict[str, Any]:
        """Extraction, the judge (inference) and the score of a run whose workflow finished.

        A step that raises scores 0 with its reason recorded, as the original's
        ``evaluate_problem`` does; an infrastructure failure propagates (the run stays
        unscored), and so does a refused request when nothing was ever answered."""
        salt, attempts = f"{key.salt}/{attempt}", attempt + 1
        try:
            answer = await extract_answer(client, self.benchmark, problem, output, cache_salt=salt)
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            return self._failed(key, output, attempts, [*errors, step_error("extraction", exc, client)], calls, tally)
        errors = list(errors)
        judged = None
        if self.task == "inference":
            try:
                judged = await judge_output(client, self.benchmark, problem, answer, cache_salt=salt)
            except INFRASTRUCTURE:
                raise
            except Exception as exc:
                judged = 0.0
                errors.append(step_error("judge", exc, client))
        try:
            score = await self.benchmark.score(problem, answer)
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            record = self._failed(key, output, attempts, [*errors, step_error("scoring", exc, client)], calls, tally)
        else:
            record = run_record(
                key, score=score.value, output=output, answer=score.prediction, detail=score.detail,
                attempts=attempts, errors=errors, calls=calls, usage=tally.as_record(),
            )
        if self.task == "inference":
            record["judge_score"] = judged
        return record

    def _failed(
        self, key: RunKey, output: str, attempts: int, errors: list[str], calls: list[dict[str, Any]],
        tally: RequestTally,
    ) -> dict[str, Any]:
        """A run that scores 0; at inference a judged benchmark's verdict is 0 too."""
        record = run_record(key, score=0.0, output=output, answer="", detail="failed", attempts=attempts,
                            errors=errors, calls=calls, usage=tally.as_record())
        if self.task == "inference" and self.benchmark.judged:
            record["judge_score"] = 0.0
        return record

    # ------------------------------------------------------------ preferences and solve rates

    def _finish_task(
        self, stage: Any, workflows: list[dict[str, Any]], records: list[dict[str, Any]], problems: dict[str, Problem]
    ) -> dict[str, Any]:
        if self.task == "inference":
            gen = self.config.generation
            subset = bool(gen.problem_ids or gen.max_problems)
            with_valid = {w["problem_id"] for w in workflows if w["valid"]}
            return {**solve_rates(records, problems), "runs_per_workflow": self.runs, "subset": subset,
                    "problems_without_valid_workflow": len(set(problems) - with_valid)}
        bench = self.benchmark
        means = mean_scores(_runs_by_workflow(records))
        scored = [
            ScoredWorkflow(w["problem_id"], w["sample"], w["prompt"], w["text"], means[(w["problem_id"], w["sample"])])
            for w in workflows
            if (w["problem_id"], w["sample"]) in means
        ]
        data = build_preferences(
            scored,
            TemplateFilter.from_template(bench.template_workflow, bench.operators, bench.similarity_threshold,
                                         max_range=bench.max_range, returns_operator_output=bench.family == "code"),
            n=bench.settings.n_pairs,
            alpha=self.config.preference.alpha,
            seed=self.config.preference.seed,
        )
        atomic_write_jsonl(stage.output_path("preferences.jsonl"), (p.as_record() for p in data.sampled))
        return {"preferences": data.stats.as_record()}


def step_error(step: str, exc: Exception, client: ChatClient) -> str:
    """The recorded reason a scoring step failed. A refused request is the setup's fault,
    not the run's, when no request was ever answered: that propagates."""
    if isinstance(exc, RequestRefused):
        if client.meter.calls == 0:
            raise ExecutorUnavailable(f"every request so far was refused: {exc}") from None
        return f"refused: {str(exc)[:300]}"
    return f"{step}: {type(exc).__name__}: {str(exc)[:300]}"


def _runs_by_workflow(records: list[dict[str, Any]], field: str = "score") -> dict[tuple[str, int], list[float]]:
    runs: dict[tuple[str, int], list[float]] = {}
    for r in records:
        runs.setdefault((r["problem_id"], r["sample"]), []).append(r.get(field) or 0.0)
    return runs


def deterministic_call(call: dict[str, Any]) -> dict[str, Any]:
    """An operator call without what differs between a first run and a resumed one."""
    return {k: v for k, v in call.items() if k not in ("latency_s", "cached_calls")}


def run_record(key: RunKey, **fields: Any) -> dict[str, Any]:
    output = fields.pop("output")
    return {
        "problem_id": key.problem_id,
        "sample": key.sample,
        "run": key.run,
        **fields,
        "output": output[:OUTPUT_LIMIT],
    }


def score_counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean score, a 10-bin histogram and failures by reason."""
    scores = [r["score"] for r in records]
    histogram = [0] * 10
    for s in scores:
        histogram[min(int(s * 10), 9)] += 1
    failures = Counter(r["errors"][-1].split(":", 1)[0] for r in records if r["detail"] == "failed")
    return {
        "runs": len(records),
        "mean_score": round(sum(scores) / len(scores), 4) if scores else 0.0,
        "score_histogram": histogram,
        "failed_runs": sum(failures.values()),
        "failures_by_reason": dict(failures),
        "retried_runs": sum(1 for r in records if r["attempts"] > 1),
    }


def solve_rates(records: list[dict[str, Any]], problems: dict[str, Problem]) -> dict[str, Any]:
    """Test-split solve rates, exact and (where judged) the judge's: per problem the mean
    of its runs (of all its workflows' runs), then the mean over the selected problems,
    one without a scored workflow counting 0."""
    total = len(problems)
    rates: dict[str, Any] = {"test_problems": total, "solve_rate": _mean_over_problems(records, "score", total)}
    if any(r.get("judge_score") is not None for r in records):
        rates["judge_solve_rate"] = _mean_over_problems(records, "judge_score", total)
    return rates


def _mean_over_problems(records: list[dict[str, Any]], field: str, total: int) -> float:
    per_problem: dict[str, list[float]] = {}
    for (problem_id, _), runs in _runs_by_workflow(records, field).items():
        per_problem.setdefault(problem_id, []).extend(runs)
    solved = math.fsum(math.fsum(runs) / len(runs) for runs in per_problem.values())
    return round(solved / total, 4) if total else 0.0


def raise_missing(path: Any, problem_id: str, split: str) -> None:
    raise ScoreFlowError(
        f"{path}: problem {problem_id!r} is not among the selected problems of the prepared {split} split "
        "(generation.problem_ids / generation.max_problems must match the generate stage's)"
    )


def summary_line(manifest: dict[str, Any]) -> str:
    c, usage = manifest["counts"], manifest["usage"]["executor"]
    parts = [f"{c['runs']} runs, mean score {c['mean_score']:.3f}", f"histogram {c['score_histogram']}"]
    if "solve_rate" in c:
        runs = f", mean of {c['runs_per_workflow']} runs each" if "runs_per_workflow" in c else ""
        parts.append(f"solve rate {c['solve_rate']:.1%} of {c['test_problems']} test problems{runs}")
        if "judge_solve_rate" in c:
            parts.append(f"judged {c['judge_solve_rate']:.1%}")
        if c.get("problems_without_valid_workflow"):
            parts.append(f"{c['problems_without_valid_workflow']} test problems without a valid workflow (counted 0)")
    if "preferences" in c:
        p = c["preferences"]
        parts.append(f"{p['pairs_available']} pairs available, {p['pairs_sampled']} sampled, {p['problems_without_pairs']} problems without a pair, mean gap {p['mean_gap_available']}")
    parts.append(f"failures {c['failures_by_reason'] or 'none'}")
    parts.append(usage_line(usage))
    parts.append(f"{c['wall_time_s']} s")
    return "; ".join(parts)
