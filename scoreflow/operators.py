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

import asyncio
import json
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

from benchmarks.base import Benchmark, Problem
from benchmarks.families import CodeBenchmark
from scoreflow.codeutil import extract_code_blocks, import_statements
from scoreflow.config import OperatorConfig
from scoreflow.executor.client import ChatClient, ChatReply, RequestRefused
from scoreflow.offload import sanitize_async
from scoreflow.runclock import queued
from scoreflow.sandbox import Sandbox, SandboxResult, SandboxUnavailable

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
    def problem_text(self) -> str:
        """The problem as the operators state it: a code problem is led by a task sentence
        (the original's framing of code problems); others are the benchmark's input."""
        if self.context.benchmark.family == "code":
            return CODE_TASK_INTRO + self.problem.input
        return self.problem.input

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
    """Index of the chosen solution: the ``solution_letter`` field, stripped, must be exactly
    one of the letters A, B, ... (any case), as the original reads it; else None.

    Letters in prose ("The best is Solution C.") are not read: the original takes only
    the field. The field's tags are read leniently (:func:`parse_fields`)."""
    tagged = parse_fields(text, ("solution_letter",)).get("solution_letter")
    if tagged is None or len(tagged) != 1:
        return None
    index = string.ascii_uppercase.find(tagged.upper())
    return index if 0 <= index < count else None


def first_code(text: str) -> str:
    """The last fenced code block, else the whole text (for code without an entry point)."""
    blocks = extract_code_blocks(text)
    return blocks[-1] if blocks else text.strip()


# ---------------------------------------------------------------- fixed texts (our wording)

# Code problems reach the operators led by a task sentence, as the original's code operators
# state them ("You have the following task: " + prompt).
CODE_TASK_INTRO = "Here is the task to solve: "
# AnswerGenerate returns reasoning, this sentence and the answer (the original's structure).
ANSWER_MARKER = "This gives the final answer: "
# Programmer: what it returns (code, then its output), or that no code came back.
PROGRAMMER_RAN = "This code was written for the problem and run:\n"
PROGRAMMER_OUTPUT = "\nIts output: "
NO_CODE = "No code was written."
# Test: the instruction of the fresh attempt after the repair rounds (the original asks to
# analyse the problem step by step and generate the code).
FRESH_ATTEMPT = "Work through the problem step by step, then write the code."


class UnreadableChoice(ValueError):
    """ScEnsemble's reply names no solution: the run fails (and is retried), as the original's KeyError."""


# ---------------------------------------------------------------- operators


class Custom(Operator):
    name = "Custom"
    attribute = "custom"
    signature = "await self.custom(instruction=...)"
    description = "Asks the executor LLM to follow your instruction on the problem; returns its reply."
    keywords = ("instruction",)

    async def __call__(self, instruction: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            return await self._ask(call, f"{instruction}\n\n{self.problem_text}".strip())

        return await self._traced(go)


class AnswerGenerate(Operator):
    name = "AnswerGenerate"
    attribute = "answer_generate"
    signature = "await self.answer_generate()"
    description = "Reasons step by step about the question and returns its reasoning with a short final answer."
    keywords = ()

    async def __call__(self) -> str:
        async def go(call: OperatorCall) -> str:
            prompt = (
                "Solve the problem by reasoning step by step.\n"
                "1. In <thought>, set out your reasoning in full.\n"
                "2. In <answer>, give only the final answer, short and plain: it answers the question "
                "directly, with no explanation or reasoning.\n"
                f"The problem: {self.problem.input}\n\n"
                "Reply in this form:\n<thought>your reasoning</thought>\n<answer>the final answer</answer>"
            )
            fields = parse_fields(await self._ask(call, prompt), ("thought", "answer"))
            return answer_with_reasoning(fields.get("thought", ""), fields.get("answer", ""))

        return await self._traced(go)


def answer_with_reasoning(thought: str, answer: str) -> str:
    """What AnswerGenerate returns: the reasoning, a newline, the marker sentence, the answer
    (a missing field is empty, as the original's field defaults)."""
    return f"{thought}\n{ANSWER_MARKER}{answer}"


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
            f"{instruction}\n\n{self.problem_text}\n\n"
            "Check your code on four points: the logic is right, every case the problem allows is handled, "
            f"the problem is not misread, and the function is named `{entry}`.\n"
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
    _not_retried = (RequestCapExceeded, RequestRefused, SandboxUnavailable)

    async def __call__(self, analysis: str = "None") -> str:
        async def go(call: OperatorCall) -> str:
            return await self._with_retries(call, analysis)

        return await self._traced(go)

    async def _with_retries(self, call: OperatorCall, analysis: str) -> str:
        """The whole operator again when it raises, as the original's ``@retry(stop_after_attempt(3),
        wait_fixed(2))``: up to ``programmer_attempts`` attempts. A capped or refused request, or a
        sandbox that cannot start, would fail the same way again and is raised at once."""
        settings = self.context.settings
        for _ in range(settings.programmer_attempts - 1):
            try:
                return await self._attempt(call, analysis)
            except self._not_retried:
                raise
            except Exception:  # noqa: BLE001 - as the original, whatever it was
                with queued():  # a pause, not the run's work
                    await asyncio.sleep(settings.programmer_retry_wait_s)
        return await self._attempt(call, analysis)

    async def _attempt(self, call: OperatorCall, analysis: str) -> str:
        """Write ``solve()``, run it, feed the error back: ``programmer_max_tries`` rounds."""
        settings = self.context.settings
        feedback, code, output = "", "", ""
        for _ in range(settings.programmer_max_tries):
            code = programmer_code(await sanitize_async(await self._ask(call, self._prompt(analysis, feedback)), "solve"))
            if not code.strip():
                return NO_CODE
            marker = f"<<solve() returned {secrets.token_hex(8)}>>"
            result = await self._run_code(call, programmer_program(code, marker), settings.programmer_time_limit_s)
            if result.passed:
                return programmer_report(code, returned_value(result.output, marker))
            output = f"{result.status}: {result.message}"
            feedback = (
                "\nYour code from the previous round failed.\n"
                f"The code:\n{code}\n\nWhat happened: {output}"
            )
        return programmer_report(code, output)

    def _prompt(self, analysis: str, feedback: str) -> str:
        return (
            "You are an expert Python programmer. Write complete, self-contained code that solves the problem "
            "below and produces its answer, with every import it needs, ready to run as it is.\n\n"
            f"The problem: {self.problem.input}\nFurther analysis: {analysis}\n{feedback}\n\n"
            "The code must:\n"
            "1. carry out the calculation the problem describes;\n"
            "2. define a function `solve()` without parameters that does the calculation, taking every input "
            "from inside the function or from variables defined at the top of the code;\n"
            "3. return the final result from `solve()`.\n"
            "Keep it efficient and commented. The result must be a plain value (a string, integer or float); "
            "no images, files or plots: the output is read by a language model. "
            "Reply with one ```python code block."
        )


def programmer_code(sanitized: str) -> str:
    """The code the Programmer runs: the sanitized reply if it defines ``solve``; else only its
    imports (what MetaGPT's sanitizer keeps when the entry point is missing), which is "" when
    the reply holds no code at all."""
    return sanitized if _DEFINES_SOLVE.search(sanitized) else import_statements(sanitized)


_DEFINES_SOLVE = re.compile(r"^(?:async[ \t]+def|def|class)[ \t]+solve\b|^solve[ \t]*[:=]", re.MULTILINE)


def programmer_program(code: str, marker: str) -> str:
    """``code``, then ``solve()`` called with printing switched off, then the marker line and
    ``str`` of its value: only the value is the output, not what the code printed."""
    return (
        f"{code}\n\n"
        "import sys as _sys\n\n"
        "class _Discard:\n"
        "    def write(self, text):\n"
        "        return len(text)\n\n"
        "    def flush(self):\n"
        "        pass\n\n"
        "_shown, _sys.stdout = _sys.stdout, _Discard()\n"
        "try:\n"
        "    _value = solve()\n"
        "finally:\n"
        "    _sys.stdout = _shown\n"
        f"_sys.stdout.write('\\n' + {marker!r} + '\\n' + str(_value))\n"
    )


def returned_value(output: str, marker: str) -> str:
    """What ``programmer_program`` printed after its marker line (the value of ``solve()``)."""
    _, found, value = output.partition(f"{marker}\n")
    return value.strip() if found else output.strip()


def programmer_report(code: str, output: str) -> str:
    """The Programmer's result: a lead sentence, the code, then its output (or its error)."""
    return f"{PROGRAMMER_RAN}{code}{PROGRAMMER_OUTPUT}{output}"


class ScEnsemble(Operator):
    name = "ScEnsemble"
    attribute = "sc_ensemble"
    signature = "await self.sc_ensemble(solutions=[...])"
    description = "Given several solutions, picks the most accurate one."
    keywords = ("solutions",)

    async def __call__(self, solutions: list[str] | None = None) -> str:
        async def go(call: OperatorCall) -> str:
            options = [str(s) for s in (solutions or [])][: len(string.ascii_uppercase)]
            listed = "\n\n".join(f"Solution {string.ascii_uppercase[i]}:\n{s}" for i, s in enumerate(options))
            prompt = (
                f"Problem:\n{self.problem_text}\n\n"
                "Several solutions to this problem follow. Go through every one of them and decide which "
                f"gives the most accurate answer.\n\n{listed}\n\n"
                "In <thought>, explain your comparison in detail. In <solution_letter>, write only the "
                "letter (A, B, C, ...) of the most accurate solution, with nothing else. Reply in this form:\n"
                "<thought>your comparison</thought>\n<solution_letter>one letter</solution_letter>"
            )
            reply = await self._ask(call, prompt)
            index = solution_letter(reply, len(options))
            if index is None:
                raise UnreadableChoice(f"no solution letter among {len(options)} solutions in the reply {reply[:80]!r}")
            return options[index]

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
                "Review the solution step by step on four points: is its logic correct, are its calculations "
                "accurate, has it misunderstood the problem, and is it detailed enough. Unless it is perfect, "
                "write the solution again from your review and the proposed solution. Reply in this form:\n"
                f"<review>your critique, point by point</review>\n<solution>{form}</solution>"
            )
            revised = parse_fields(await self._ask(call, prompt), ("review", "solution")).get("solution", "")
            return await sanitize_async(revised, self.problem.entry_point) if code else revised

        return await self._traced(go)


class Test(Operator):
    name = "Test"
    attribute = "test"
    signature = "await self.test(solution=...)"
    description = (
        "Runs the problem's public tests on a code solution; on failure it reflects on the error and "
        "repairs the code (several rounds), falling back to a fresh solution; returns the code."
    )
    keywords = ("solution",)
    __test__ = False  # not a pytest test class

    async def __call__(self, solution: str = "") -> str:
        async def go(call: OperatorCall) -> str:
            bench, problem = self.code_benchmark, self.problem
            if not problem.public_tests:
                return solution
            current = await sanitize_async(solution, problem.entry_point)
            for _ in range(bench.settings.test_max_rounds):
                result = await self._public_tests(call, current)
                if result.passed:
                    return current
                current = await sanitize_async(await self._ask(call, self._repair_prompt(current, result)), problem.entry_point)
            if (await self._public_tests(call, current)).passed:  # the last repair, tested as the original does
                return current
            generator = CustomCodeGenerate(self.context, problem)
            return await generator._generate(call, FRESH_ATTEMPT)

        return await self._traced(go)

    async def _public_tests(self, call: OperatorCall, code: str) -> SandboxResult:
        bench = self.code_benchmark
        return await self._run_code(call, bench.public_test_program(self.problem, code), bench.settings.check_time_limit_s)

    def _repair_prompt(self, code: str, result: SandboxResult) -> str:
        return (
            "A solution to the code problem below failed its tests or did not run. Find out why, "
            "then write a better solution.\n\n"
            f"Problem:\n{self.problem_text}\n\nCode:\n```python\n{code}\n```\n\n"
            f"Running the public tests gave: {result.status}: {result.message}\n"
            f"{failure_details(result.output)}\n\n"
            "Reflect on the failures and the code, then reply with the complete improved code in one ```python "
            f"block, without other text or tests. Keep the function name `{self.problem.entry_point}`, "
            "and make sure the code cannot loop forever."
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
