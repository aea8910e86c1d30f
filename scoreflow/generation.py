"""The generate stage: k candidate workflows per problem, each checked before it is kept.

A sample is valid when (SPEC section 4) it has a ``<graph>`` block with
``async def run_workflow(self)``, contains no banned substring, passes the
workflow allow-list, is not (almost) the template (difflib ratio of the
``run_workflow`` bodies below the dataset's threshold), and runs on the
benchmark's trial problem within the trial time limit. Invalid samples are
re-sampled for a bounded number of rounds; then the problem keeps what it has and
every failure reason is recorded.

Problems are processed in chunks; a finished chunk's records are on disk, so a
killed run resumes with the next chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from benchmarks import get_benchmark
from benchmarks.base import Benchmark, Problem
from scoreflow.config import Config, runs_admitted
from scoreflow.executor.client import ChatClient, ExecutorUnavailable, RequestRefused, tallied
from scoreflow.executor.factory import make_client
from scoreflow.grammar import workflow_grammar
from scoreflow.operators import OperatorContext, make_operator_sandbox
from scoreflow.prompts import generator_prompt
from scoreflow.sampling import SampleRequest, Sampler, make_sampler
from scoreflow.runclock import WorkflowTimeout
from scoreflow.sandbox import Sandbox
from scoreflow.scheduling import INFRASTRUCTURE, FailureStreak, gather_all, run_session
from scoreflow.usage import stage_usage, usage_line, warn_if_unpriced
from scoreflow.workflow import WorkflowRejected, body_similarity, check_workflow, extract_graph, run_with_limit
from scoreflow.workspace import StageRun, Workspace

TASK_STAGES = {"optimize": ("generate", "workflows.jsonl"), "inference": ("inference_generate", "inference/workflows.jsonl")}
TASK_SPLITS = {"optimize": "validate", "inference": "test"}


@dataclass
class Verdict:
    """The outcome of checking one sample."""

    workflow: str | None
    reason: str = ""  # "" when valid; else "<category>: <detail>"
    trial_usage: dict[str, int] | None = None  # executor requests of its trial run

    @property
    def valid(self) -> bool:
        return not self.reason


@dataclass
class Slot:
    """One of a problem's k workflow places, filled by its latest sample."""

    text: str = ""
    workflow: str | None = None
    valid: bool = False
    reasons: list[str] = field(default_factory=list)
    rounds: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trial_usage: dict[str, int] = field(default_factory=dict)


class WorkflowValidator:
    """SPEC section 4's checks, cheapest first; the trial run goes through the real executor."""

    def __init__(self, benchmark: Benchmark, client: ChatClient, sandbox: Sandbox | None, config: Config) -> None:
        self.benchmark = benchmark
        self.client = client
        self.sandbox = sandbox
        self.config = config
        self.template_body = check_workflow(benchmark.template_workflow, benchmark.operators,
                                            max_range=benchmark.max_range,
                                            returns_operator_output=benchmark.family == "code").body_source
        self.admission = asyncio.Semaphore(runs_admitted(config))

    async def check(self, text: str) -> Verdict:
        graph = extract_graph(text)
        if graph is None or "async def run_workflow(self)" not in graph:
            return Verdict(graph, "format: no <graph> block with async def run_workflow(self)")
        banned = [b for b in self.benchmark.banned_substrings if b in graph]
        if banned:
            return Verdict(graph, f"banned: contains {banned[0]!r}")
        try:
            checked = check_workflow(graph, self.benchmark.operators, max_range=self.benchmark.max_range,
                                     returns_operator_output=self.benchmark.family == "code")
        except WorkflowRejected as exc:
            return Verdict(graph, f"rejected: {exc.reason}")
        similarity = body_similarity(checked.body_source, self.template_body)
        if similarity >= self.benchmark.similarity_threshold:
            return Verdict(graph, f"template: similarity {similarity:.2f} >= {self.benchmark.similarity_threshold}")
        async with self.admission:  # the trial's time limit starts once it is admitted
            with tallied() as tally:
                reason = await self._trial(checked)
        return Verdict(graph, reason, tally.as_record())

    async def _trial(self, checked: Any) -> str:
        """'' when the workflow ran on the trial problem in time; else why not. Executor and
        sandbox failures propagate: they say nothing about the workflow."""
        bench = self.benchmark
        context = OperatorContext(
            self.client, bench, bench.trial_problem, sandbox=self.sandbox, settings=self.config.operators,
            cache_salt="trial", max_requests=self.config.evaluation.max_requests_per_attempt,
        )
        try:
            await run_with_limit(checked, context, bench.trial_time_limit_s, clock=self.config.evaluation.limit_clock)
        except WorkflowTimeout as exc:
            return f"trial: {exc}"
        except INFRASTRUCTURE:
            raise
        except RequestRefused as exc:
            if self.client.meter.calls == 0:
                raise ExecutorUnavailable(f"every request so far was refused: {exc}") from None
            return f"trial: refused: {str(exc)[:200]}"
        except Exception as exc:  # the trial is exactly where broken workflows should fail
            return f"trial: {type(exc).__name__}: {str(exc)[:200]}"
        return ""

    async def check_until_answered(self, text: str, streak: FailureStreak) -> Verdict:
        """``check``, repeated while the executor fails; once the streak stops the stage,
        a verdict that is never recorded (the chunk is not written)."""
        while streak.stopped is None:
            try:
                return await self.check(text)
            except INFRASTRUCTURE as error:
                streak.failed(error)
        return Verdict(None, "executor: stopped")


class GenerateStage:
    """Samples, checks and records the workflows of one dataset, task and epoch."""

    def __init__(self, config: Config, dataset: str, task: str, epoch: int) -> None:
        self.config = config
        self.task = task
        self.workspace = Workspace.from_config(config, dataset, epoch)
        self.stage, self.output = TASK_STAGES[task]
        self.benchmark = get_benchmark(dataset, config)
        self.k = config.generation.k if task == "optimize" else config.generation.inference_k
        self.stats: Counter[str] = Counter()
        self.sampling_s = 0.0

    def problems(self) -> list[Problem]:
        gen = self.config.generation
        return self.benchmark.select(TASK_SPLITS[self.task], self.config.data_dir, gen.problem_ids, gen.max_problems)  # type: ignore[arg-type]

    def adapter(self) -> Any:
        """Epoch i > 0 samples from the base model plus the adapter trained in epoch i-1."""
        if self.workspace.epoch == 0:
            return None
        self.workspace.require("optimize")
        return self.workspace.path("adapter")

    def run(self, *, force: bool = False) -> dict[str, Any]:
        problems = self.problems()
        adapter = self.adapter()
        run = self.workspace.start(self.stage, self.config, force=force)
        log = run.log(self.output)
        done = log.keys(lambda r: r["problem_id"])
        pending = [(i, p) for i, p in enumerate(problems) if p.id not in done]
        client = make_client(self.config, cache_path=self.workspace.path("cache.sqlite"))
        warn_if_unpriced(self.config)
        started = time.perf_counter()
        if pending:
            run_session(run, self._generate(pending, run, client, adapter), client.meter)
        order = {p.id: i for i, p in enumerate(problems)}
        records = sorted(log.read(), key=lambda r: (order.get(r["problem_id"], len(order)), r["sample"]))
        log.rewrite(records)
        usage = stage_usage(self.config, (r.get("trial_usage") for r in records), run, client.meter)
        usage["generator"] = self._generator_usage(records)
        return run.finish(counts=self._counts(records, len(problems), time.perf_counter() - started), usage=usage)

    async def _generate(self, pending: list[tuple[int, Problem]], run: StageRun, client: ChatClient, adapter: Any) -> None:
        """Sample chunk by chunk; a chunk's seed follows its first problem's index in the split,
        so a resumed run draws what an uninterrupted one would have."""
        gen = self.config.generation
        # Where the template check applies, the grammar asks for more than the template's
        # single call: a small model otherwise copies the template and every sample is rejected.
        min_calls = gen.grammar_min_calls or (2 if self.benchmark.similarity_threshold < 1 else 1)
        grammar = workflow_grammar(self.benchmark.binding_order, min_calls=min_calls) if gen.grammar else None
        sandbox = make_operator_sandbox(self.benchmark, self.config.sandbox)
        sampler = make_sampler(self.config.generator, gen, cache_dir=self.config.cache_dir, adapter=adapter, grammar=grammar)
        validator = WorkflowValidator(self.benchmark, client, sandbox, self.config)
        streak = FailureStreak(self.config.evaluation.max_infra_failures, client.meter,
                               f"{self.workspace.dataset} epoch {self.workspace.epoch} {self.stage}")
        log = run.log(self.output)
        try:
            with tqdm(total=len(pending), desc=f"generate {self.workspace.dataset}", unit="problem") as bar:
                for start in range(0, len(pending), gen.chunk_problems):
                    indexed = pending[start : start + gen.chunk_problems]
                    chunk = [p for _, p in indexed]
                    prompts = {p.id: self._prompt(sampler, p) for p in chunk}
                    seed = gen.seed * 1_000_003 + indexed[0][0]
                    slots = await self._fill(chunk, prompts, sampler, validator, streak, seed=seed)
                    log.append_many(r for p in chunk for r in self._records(p, prompts[p.id], slots[p.id]))
                    bar.update(len(chunk))
                    run.save_session(client.meter.snapshot())
        finally:
            sampler.close()
            await client.aclose()
            if sandbox is not None:
                sandbox.close()
            self.benchmark.close()

    async def _fill(
        self, chunk: list[Problem], prompts: dict[str, str], sampler: Sampler, validator: WorkflowValidator,
        streak: FailureStreak, seed: int,
    ) -> dict[str, list[Slot]]:
        """Sample k per problem, then re-sample the invalid places until every problem has k
        valid ones: at most ``max_resample_rounds`` more rounds (the original: 500), and no new
        round once the chunk has spent ``resample_time_limit_s`` (when set)."""
        gen = self.config.generation
        slots = {p.id: [Slot() for _ in range(self.k)] for p in chunk}
        started = time.monotonic()
        for round_index in range(gen.max_resample_rounds + 1):
            todo = {p.id: [s for s in slots[p.id] if not s.valid] for p in chunk}
            todo = {pid: places for pid, places in todo.items() if places}
            if not todo:
                break
            if round_index and gen.resample_time_limit_s is not None and time.monotonic() - started > gen.resample_time_limit_s:
                self.stats["stopped by resample_time_limit_s"] += 1
                break
            self.stats["rounds"] = max(self.stats["rounds"], round_index + 1)
            round_seed = seed + 7919 * round_index
            requests = [SampleRequest(prompts[pid], len(places), seed=round_seed) for pid, places in todo.items()]
            clock = time.perf_counter()
            batches = await asyncio.to_thread(sampler.sample, requests)
            self.sampling_s += time.perf_counter() - clock
            samples = [(place, sample) for places, batch in zip(todo.values(), batches) for place, sample in zip(places, batch)]
            verdicts = await gather_all(validator.check_until_answered(sample.text, streak) for _, sample in samples)
            streak.raise_if_stopped()  # trials in flight finished (their replies are cached); nothing is recorded
            for (place, sample), verdict in zip(samples, verdicts):
                self._place(place, sample, verdict)
        return slots

    def _place(self, slot: Slot, sample: Any, verdict: Verdict) -> None:
        slot.text, slot.workflow, slot.valid = sample.text, verdict.workflow, verdict.valid
        slot.rounds += 1
        slot.prompt_tokens += sample.prompt_tokens
        slot.completion_tokens += sample.completion_tokens
        for name, value in (verdict.trial_usage or {}).items():
            slot.trial_usage[name] = slot.trial_usage.get(name, 0) + value
        self.stats["sampled"] += 1
        if not verdict.valid:
            slot.reasons.append(verdict.reason)
            self.stats[f"rejected {verdict.reason.split(':', 1)[0]}"] += 1

    def _prompt(self, sampler: Sampler, problem: Problem) -> str:
        """The stored prompt: raw text as the original sends it, or chat-formatted (a switch);
        the trainer later sees exactly these tokens."""
        text = generator_prompt(self.benchmark, problem)
        if self.config.generation.chat_template:
            return sampler.format_prompt([{"role": "user", "content": text}])
        return sampler.format_raw(text)

    def _records(self, problem: Problem, prompt: str, slots: list[Slot]) -> list[dict[str, Any]]:
        return [
            {
                "problem_id": problem.id,
                "sample": index,
                "prompt": prompt,
                "text": slot.text,
                "workflow": slot.workflow,
                "valid": slot.valid,
                "reasons": slot.reasons,
                "rounds": slot.rounds,
                "prompt_tokens": slot.prompt_tokens,
                "completion_tokens": slot.completion_tokens,
                "trial_usage": slot.trial_usage,
            }
            for index, slot in enumerate(slots)
        ]

    def _counts(self, records: list[dict[str, Any]], problems: int, wall_s: float) -> dict[str, Any]:
        valid = sum(r["valid"] for r in records)
        rejections = {k.split(" ", 1)[1]: v for k, v in sorted(self.stats.items()) if k.startswith("rejected ")}
        completion = sum(r["completion_tokens"] for r in records)
        return {
            "problems": problems,
            "workflows": len(records),
            "valid": valid,
            "valid_rate": round(valid / len(records), 4) if records else 0.0,
            "problems_without_valid": len({r["problem_id"] for r in records} - {r["problem_id"] for r in records if r["valid"]}),
            "samples_this_run": self.stats["sampled"],
            "resample_rounds": self.stats["rounds"],
            "chunks_stopped_by_resample_time_limit": self.stats["stopped by resample_time_limit_s"],
            "rejections": rejections,
            "generation_tokens_per_s": round(completion / self.sampling_s, 2) if self.sampling_s else None,
            "wall_time_s": round(wall_s, 2),
        }

    @staticmethod
    def _generator_usage(records: list[dict[str, Any]]) -> dict[str, int]:
        return {
            "prompt_tokens": sum(r["prompt_tokens"] for r in records),
            "completion_tokens": sum(r["completion_tokens"] for r in records),
        }


def summary_line(manifest: dict[str, Any]) -> str:
    """The short summary printed when the stage ends."""
    c = manifest["counts"]
    rejections = ", ".join(f"{k} {v}" for k, v in c["rejections"].items()) or "none"
    speed = f"{c['generation_tokens_per_s']} tok/s" if c["generation_tokens_per_s"] else "no sampling needed"
    return (
        f"{c['valid']}/{c['workflows']} workflows valid ({c['valid_rate']:.0%}) for {c['problems']} problems "
        f"({c['problems_without_valid']} without one); "
        f"rejections: {rejections}; resample rounds {c['resample_rounds']}; {speed}; "
        f"{usage_line(manifest['usage']['executor'])}; "
        f"{c['wall_time_s']} s"
    )
