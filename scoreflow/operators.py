"""The operator library (SPEC section 3): one set of operators for all six datasets.

A workflow binds operators in ``__init__`` (``operator.Custom(config, problem)``,
where ``config`` is the :class:`OperatorContext` of the run) and awaits them in
``run_workflow``. Every operator asks the executor LLM; replies are structured in
the MetaGPT "fill" style — named fields in XML-like tags, or a fenced code block —
and parsed leniently. Code written by the executor (Programmer, Test) runs only in
the sandbox. Every call lands in the run's trace (operator, tokens, latency).

Operators return plain strings so that the workflow language stays small.
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

from benchmarks.base import Benchmark, Problem
from benchmarks.families import CodeBenchmark
from scoreflow.codeutil import extract_code_blocks
from scoreflow.config import OperatorConfig
from scoreflow.executor.client import ChatClient, ChatReply
from scoreflow.offload import sanitize_async
from scoreflow.sandbox import Sandbox, SandboxResult

# Modules the Programmer's fork server loads up front: model-written solvers use them.
PROGRAMMER_PRELOAD = ("math", "fractions", "itertools", "sympy", "numpy")


@dataclass
class OperatorCall:
    """One operator invocation in a workflow run's trace."""

    operator: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    cached_calls: int = 0
    sandbox_runs: int = 0
    truncated_chars: int = 0  # request text cut to fit executor.max_request_chars
    latency_s: float = 0.0
    error: str = ""

    def as_record(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class OperatorContext:
    """What the operators of one workflow run share (passed to the workflow as ``config``).

    ``cache_salt`` separates scoring runs: with it, each run and each call in the
    run gets its own cached reply, so a resumed run reuses exactly its own replies.
    ``max_requests`` caps the executor requests of the run, operator-internal ones
    (Test repairs, Programmer retries) included: what one run can cost is bounded.
    """

    client: ChatClient
    benchmark: Benchmark
    problem: Problem
    sandbox: Sandbox | None = None
    settings: OperatorConfig = field(default_factory=OperatorConfig)
    cache_salt: str = ""
    max_requests: int | None = None
    trace: list[OperatorCall] = field(default_factory=list)
    _calls: int = 0

    def next_salt(self) -> str:
        """A distinct cache salt per LLM call of the run, in call order; refuses a request
        beyond ``max_requests``."""
        if self.max_requests is not None and self._calls >= self.max_requests:
            raise RequestCapExceeded(f"the run reached its cap of {self.max_requests} executor requests")
        self._calls += 1
        return f"{self.cache_salt}#{self._calls}"

    @property
    def requests(self) -> int:
        """Executor requests this run has sent (or taken from the cache)."""
        return self._calls


class RequestCapExceeded(RuntimeError):
    """A run asked for more executor requests than its cap allows (not retried: it would again)."""


class Operator:
    """Base class: an awaitable bound to a run's context and its problem."""

    name: ClassVar[str]  # the class name a workflow uses: operator.<name>
    attribute: ClassVar[str]  # the conventional attribute name in a workflow
    signature: ClassVar[str]  # how a workflow calls it
    description: ClassVar[str]  # for the generator prompt
    keywords: ClassVar[tuple[str, ...]]  # keyword arguments a call may pass

    def __init__(self, context: OperatorContext, problem: Problem | None = None) -> None:
        self.context = context
        self.problem = problem or context.problem

    async def _ask(self, call: OperatorCall, prompt: str) -> str:
        reply: ChatReply = await self.context.client.chat(
            [{"role": "user", "content": prompt}], cache_salt=self.context.next_salt()
        )
        call.llm_calls += 1
        call.cached_calls += int(reply.cached)
        call.truncated_chars += reply.truncated_chars
        call.prompt_tokens += reply.usage.prompt_tokens
        call.completion_tokens += reply.usage.completion_tokens
        return reply.text

    async def _run_code(self, call: OperatorCall, program: str, time_limit_s: float) -> SandboxResult:
        if self.context.sandbox is None:
            raise RuntimeError(f"{self.name} needs a sandbox in its context")
        call.sandbox_runs += 1
        return await self.context.sandbox.run(program, time_limit_s=time_limit_s)

    async def _traced(self, coro_factory: Any) -> str:
        call = OperatorCall(self.name)
        start = time.perf_counter()
        try:
            return await coro_factory(call)
        except Exception as exc:
            call.error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            call.latency_s = time.perf_counter() - start
            self.context.trace.append(call)

    @property
    def code_benchmark(self) -> CodeBenchmark:
        bench = self.context.benchmark
        if not isinstance(bench, CodeBenchmark):
            raise TypeError(f"{self.name} works on code benchmarks only")
        return bench


# ---------------------------------------------------------------- parsing


def parse_fields(text: str, names: tuple[str, ...]) -> dict[str, str]:
    """Fields written as ``<name>...</name>``; tolerant of a missing closing tag.

    A field whose closing tag is missing runs to the next known opening tag or to
    the end of the text. Tag names match case-insensitively. Absent fields are absent.
    """
    found: dict[str, str] = {}
    opening = {n: re.compile(rf"<\s*{re.escape(n)}\s*>", re.IGNORECASE) for n in names}
    for name in names:
        starts = list(opening[name].finditer(text))
        if not starts:
            continue
        body = text[starts[-1].end() :]
        close = re.search(rf"<\s*/\s*{re.escape(name)}\s*>", body, re.IGNORECASE)
        if close:
            body = body[: close.start()]
        else:
            later = [m.start() for other in names if other != name for m in [opening[other].search(body)] if m]
            body = body[: min(later)] if later else body
        found[name] = body.strip()
    return found


def solution_letter(text: str, count: int) -> int | None:
    """Index of the chosen solution (A, B, ...): the tagged field, else an explicit verdict.

    Capital letters in prose ("A good answer...") are not taken for a verdict; only the
    ``solution_letter`` field, a bare letter, or "solution/letter/answer X" count.
    """
    letters = string.ascii_uppercase[:count]
    tagged = parse_fields(text, ("solution_letter",)).get("solution_letter")
    patterns = [rf"^\W*([{letters}])\W*$"] if tagged is not None else [
        rf"^\W*([{letters}])\W*$",
        rf"(?i:solution|letter|answer)\s*(?:(?:is|:)\s*)?\(?([{letters}])\b",  # one blank run: linear
    ]
    for pattern in patterns:
        match = re.search(pattern, (tagged if tagged is not None else text).strip(), re.IGNORECASE if tagged else 0)
        if match:
            return letters.index(match.group(1).upper())
    return None


def first_code(text: str) -> str:
    """The last fenced code block, else the whole text (for code without an entry point)."""
    blocks = extract_code_blocks(text)
    return blocks[-1] if blocks else text.strip()


# ---------------------------------------------------------------- operators


class Custom(Operator):
    name = "Custom"
    attribute = "custom"
    signature = "await self.custom(instruction=...)"
    description = "Asks the executor LLM to follow your instruction on the problem; returns its reply."
    keywords = ("instruction",)

    async def __call__(self, instruction: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            return await self._ask(call, f"{instruction}\n\n{self.problem.input}".strip())

        return await self._traced(go)


class AnswerGenerate(Operator):
    name = "AnswerGenerate"
    attribute = "answer_generate"
    signature = "await self.answer_generate()"
    description = "Reasons step by step about the question and returns a short final answer."
    keywords = ()

    async def __call__(self) -> str:
        async def go(call: OperatorCall) -> str:
            prompt = (
                f"{self.problem.input}\n\n"
                "Think through the question step by step, then give the answer. Reply in this form:\n"
                "<thought>your step-by-step reasoning</thought>\n"
                "<answer>the final answer only: a name, phrase, date or number, as short as possible</answer>"
            )
            reply = await self._ask(call, prompt)
            return parse_fields(reply, ("thought", "answer")).get("answer") or reply.strip()

        return await self._traced(go)


class CustomCodeGenerate(Operator):
    name = "CustomCodeGenerate"
    attribute = "code_generate"
    signature = "await self.code_generate(instruction=...)"
    description = "Writes the complete Python function the problem asks for, following your instruction; returns the code."
    keywords = ("instruction",)

    async def __call__(self, instruction: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            return await self._generate(call, instruction)

        return await self._traced(go)

    async def _generate(self, call: OperatorCall, instruction: str) -> str:
        entry = self.problem.entry_point
        prompt = (
            f"{instruction}\n\n{self.problem.input}\n\n"
            f"Write the Python function `{entry}` with any imports and helper functions it needs. "
            "Reply with one ```python code block holding the complete code, without tests or example usage."
        ).strip()
        return await sanitize_async(await self._ask(call, prompt), entry)


class Programmer(Operator):
    name = "Programmer"
    attribute = "programmer"
    signature = "await self.programmer(analysis=...)"
    description = (
        "Writes a Python program that computes the answer (using your analysis), runs it, "
        "and returns the code with its output; it retries with the error when the program fails."
    )
    keywords = ("analysis",)

    async def __call__(self, analysis: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            feedback, code, outcome = "", "", "no program was written"
            for _ in range(self.context.settings.programmer_max_tries):
                code = first_code(await self._ask(call, self._prompt(analysis, feedback)))
                result = await self._run_code(call, program_with_call(code), self.context.settings.programmer_time_limit_s)
                if result.passed:
                    return f"Code:\n```python\n{code}\n```\nOutput: {result.output.strip()}"
                outcome = f"{result.status}: {result.message}"
                feedback = f"\n\nYour previous program:\n```python\n{code}\n```\nfailed with: {outcome}\nFix it."
            return f"Code:\n```python\n{code}\n```\nOutput: error ({outcome})"

        return await self._traced(go)

    def _prompt(self, analysis: str, feedback: str) -> str:
        return (
            f"Problem:\n{self.problem.input}\n\nAnalysis:\n{analysis}\n\n"
            "Write a Python function `solve()` that computes the problem's final answer and returns it. "
            "You may use the standard library, sympy and numpy; do not read input or print. "
            "Reply with one ```python code block." + feedback
        )


def program_with_call(code: str) -> str:
    """The Programmer's code followed by the call whose printed value is the output."""
    return f"{code}\n\nprint(solve())\n"


class ScEnsemble(Operator):
    name = "ScEnsemble"
    attribute = "sc_ensemble"
    signature = "await self.sc_ensemble(solutions=[...])"
    description = "Given several solutions, picks the one whose answer most of them agree on (self-consistency)."
    keywords = ("solutions",)

    async def __call__(self, solutions: list[str] | None = None) -> str:
        async def go(call: OperatorCall) -> str:
            options = [str(s) for s in (solutions or [])][: len(string.ascii_uppercase)]
            if len(options) <= 1:
                return options[0] if options else ""
            listed = "\n\n".join(f"Solution {string.ascii_uppercase[i]}:\n{s}" for i, s in enumerate(options))
            prompt = (
                f"Problem:\n{self.problem.input}\n\n{listed}\n\n"
                "Compare the final answers of these solutions and find the answer that most of them agree on. "
                "Reply in this form:\n<thought>which answers agree</thought>\n"
                "<solution_letter>the letter of one solution with that answer</solution_letter>"
            )
            index = solution_letter(await self._ask(call, prompt), len(options))
            return options[index if index is not None else 0]

        return await self._traced(go)


class Review(Operator):
    name = "Review"
    attribute = "review"
    signature = "await self.review(pre_solution=...)"
    description = "Critiques a solution and returns a corrected, complete version of it."
    keywords = ("pre_solution",)

    async def __call__(self, pre_solution: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            code = self.context.benchmark.family == "code"
            form = "the complete corrected code in a ```python block" if code else "the complete corrected solution"
            prompt = (
                f"Problem:\n{self.problem.input}\n\nProposed solution:\n{pre_solution}\n\n"
                "Review the solution step by step and look for mistakes. Then write the solution again, "
                "correcting every mistake you found (or unchanged if it is right). Reply in this form:\n"
                f"<review>your critique</review>\n<solution>{form}</solution>"
            )
            reply = await self._ask(call, prompt)
            revised = parse_fields(reply, ("review", "solution")).get("solution", "")
            if code:
                text = revised or reply
                return await sanitize_async(text, self.problem.entry_point) if text.strip() else pre_solution
            return revised or pre_solution

        return await self._traced(go)


class Test(Operator):
    name = "Test"
    attribute = "test"
    signature = "await self.test(solution=...)"
    description = (
        "Runs the problem's public tests on a code solution; on failure it reflects on the error and "
        "repairs the code (a few rounds), falling back to a fresh solution; returns the code."
    )
    keywords = ("solution",)
    __test__ = False  # not a pytest test class

    async def __call__(self, solution: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            bench, problem = self.code_benchmark, self.problem
            if not problem.public_tests:
                return solution
            current = await sanitize_async(solution, problem.entry_point)
            for _ in range(self.context.settings.test_max_rounds):
                program = bench.public_test_program(problem, current)
                result = await self._run_code(call, program, bench.settings.check_time_limit_s)
                if result.passed:
                    return current
                current = await sanitize_async(await self._ask(call, self._repair_prompt(current, result)), problem.entry_point)
            generator = CustomCodeGenerate(self.context, problem)
            return await generator._generate(call, "Write a correct solution; a previous attempt failed its tests.")

        return await self._traced(go)

    def _repair_prompt(self, code: str, result: SandboxResult) -> str:
        return (
            f"Problem:\n{self.problem.input}\n\nCode:\n```python\n{code}\n```\n\n"
            f"Running the public tests gave: {result.status}: {result.message}\n"
            f"{failure_details(result.output)}\n"
            "Explain briefly what is wrong, then reply with the complete corrected code in one ```python block."
        )


def failure_details(output: str) -> str:
    """The failing asserts a public-test program printed, as readable lines."""
    marker = "PUBLIC_TEST_FAILURES:"
    for line in output.splitlines():
        if line.startswith(marker):
            try:
                failures = json.loads(line[len(marker) :])
                return "\n".join(f"Failed: {test} -> {error}" for test, error in failures)
            except (ValueError, TypeError, RecursionError):  # the program printed something else there
                break
    return output.strip()[-1000:]


OPERATORS: dict[str, type[Operator]] = {
    cls.name: cls for cls in (Custom, AnswerGenerate, CustomCodeGenerate, Programmer, ScEnsemble, Review, Test)
}


def operator_namespace(names: tuple[str, ...]) -> SimpleNamespace:
    """The ``operator`` module a workflow sees: only its benchmark's operators."""
    return SimpleNamespace(**{name: OPERATORS[name] for name in names})


def make_operator_sandbox(benchmark: Benchmark, settings: Any) -> Sandbox | None:
    """The sandbox the code-running operators of a benchmark need (None: they have none)."""
    if benchmark.family == "code":
        return Sandbox(settings)
    if "Programmer" in benchmark.operators:
        return Sandbox(settings, site_packages=True, preload=PROGRAMMER_PRELOAD)
    return None
