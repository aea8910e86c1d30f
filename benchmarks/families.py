"""The three benchmark families: code, math and question answering.

Each family holds the behaviour its datasets share: the operator set and template
workflow of SPEC section 3, the trial problem of section 4, the executor prompts
around scoring (section 2) and the scoring path itself. Prompt wording is ours.
"""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from benchmarks import scoring
from benchmarks.base import Benchmark, Problem, Score
from scoreflow.offload import sanitize_async


def template(operator_attr: str, operator_class: str, call: str) -> str:
    """A one-operator template workflow in the language the generator writes."""
    return (
        "class Workflow:\n"
        "    def __init__(self, config, problem) -> None:\n"
        f"        self.{operator_attr} = operator.{operator_class}(config, problem)\n"
        "\n"
        "    async def run_workflow(self):\n"
        f"        solution = await self.{operator_attr}({call})\n"
        "        return solution\n"
    )


JUDGE_PROMPT = """You are grading an answer against a reference.

Question:
{question}

Reference answer:
{reference}

Candidate answer:
{candidate}

Decide whether the candidate answer means the same as the reference answer; ignore \
formatting, wording and units that do not change the value. Reply with a single digit: \
1 if it is correct, 0 if it is not."""


# ---------------------------------------------------------------- code


class CodeBenchmark(Benchmark):
    """HumanEval and MBPP: a function is written, then checked by hidden tests in the sandbox."""

    family = "code"
    operators = ("CustomCodeGenerate", "ScEnsemble", "Review", "Test")
    template_workflow = template(
        "code_generate",
        "CustomCodeGenerate",
        'instruction="Write a correct, complete Python function for the problem."',
    )
    public_test_key = "entry_point"
    # Names AFlow's checker puts in scope before the solution runs.
    prelude: ClassVar[str] = "import math\nimport hashlib\nimport re\nfrom typing import Any, Dict, List, Optional, Tuple\n"

    answer_field: ClassVar[str]  # the record field holding the reference solution

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("prompt", "entry_point", "test")

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        return Problem(
            id=str(record[self.id_field]),
            question=record["prompt"],
            input=record["prompt"],
            answer=record.get(self.answer_field, ""),
            entry_point=record["entry_point"],
            test=record["test"],
            public_tests=select_public_tests(record["entry_point"], record["test"], public_tests),
        )

    def check_call(self, problem: Problem) -> str:
        """The statement that runs the hidden tests (``check(...)``)."""
        raise NotImplementedError

    def helper_prelude(self, problem: Problem) -> str:
        """Code placed before the solution so helpers the prompt refers to exist."""
        return ""

    def check_program(self, problem: Problem, solution: str) -> str:
        """The whole program the sandbox runs: prelude, solution, hidden tests, call."""
        defined = (
            f"if {problem.entry_point!r} not in globals():\n"
            f"    raise NameError('the solution does not define {problem.entry_point}')\n"
        )
        return "\n\n".join(
            [self.prelude + self.helper_prelude(problem), solution, defined, problem.test, self.check_call(problem)]
        ) + "\n"

    def public_test_program(self, problem: Problem, solution: str) -> str:
        """A program running each public assert on ``candidate``, printing the failures as JSON."""
        checks = "\n".join(
            f"try:\n    {test}\nexcept Exception as _error:\n    _failures.append(({test!r}, repr(_error)))"
            for test in problem.public_tests
        )
        report = (
            "if _failures:\n"
            "    print('PUBLIC_TEST_FAILURES:' + _json.dumps(_failures))\n"
            "    raise AssertionError(f'{len(_failures)} of "
            f"{len(problem.public_tests)}"
            " public tests failed')\n"
        )
        head = self.prelude + "import json as _json\n" + self.helper_prelude(problem)
        return "\n\n".join([head, solution, f"candidate = {problem.entry_point}\n_failures = []", checks, report])

    async def score(self, problem: Problem, output: str) -> Score:
        solution = await sanitize_async(output, problem.entry_point)
        result = await self.sandbox.run(
            self.check_program(problem, solution), time_limit_s=self.settings.check_time_limit_s
        )
        return Score(1.0 if result.passed else 0.0, solution, f"{result.status}: {result.message}")


def select_public_tests(entry_point: str, hidden_test: str, public: dict[str, list[list[str]]]) -> tuple[str, ...]:
    """The public asserts of this problem: those for its entry point that its hidden tests also make.

    Several MBPP problems share an entry-point name, so the name alone can pick
    another problem's tests; where no candidate matches the hidden tests, a lone
    candidate is still trusted and several are dropped.
    """
    candidates = public.get(entry_point, [])
    matching = [t for t in candidates if all(a.replace("candidate", entry_point, 1) in hidden_test for a in t)]
    chosen = matching or (candidates if len(candidates) == 1 else [])
    return tuple(chosen[0]) if chosen else ()


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """Top-level functions a code prompt defines besides the entry point, as source."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    helpers = [
        ast.get_source_segment(prompt, node) or ""
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != entry_point
    ]
    return "\n\n".join(h for h in helpers if h) + ("\n" if helpers else "")


# ---------------------------------------------------------------- math


class MathBenchmark(Benchmark):
    """GSM8K and MATH: one answer, extracted by the executor, compared exactly."""

    family = "math"
    operators = ("Custom", "Programmer", "ScEnsemble", "Review")
    template_workflow = template(
        "custom", "Custom", 'instruction="Solve the problem step by step and state the final answer."'
    )
    banned_substrings = (*Benchmark.banned_substrings, "self.loop.append")
    extraction_rule: ClassVar[str]

    def extraction_prompt(self, problem: Problem, output: str) -> str | None:
        return (
            "Below is a solution to a math problem.\n\n"
            f"Problem:\n{problem.question}\n\nSolution:\n{output}\n\n"
            f"Extract the final answer of the solution. {self.extraction_rule}"
        )

    @property
    def trial_problem(self) -> Problem:
        return Problem(id="trial", question=TRIAL_QUESTION, input=TRIAL_QUESTION, answer="3")


# ---------------------------------------------------------------- QA


class QABenchmark(Benchmark):
    """DROP and HotpotQA: an answer phrase scored by token F1 against the reference."""

    family = "qa"
    operators = ("Custom", "AnswerGenerate", "ScEnsemble", "Review")
    template_workflow = template("answer_generate", "AnswerGenerate", "")

    def extraction_prompt(self, problem: Problem, output: str) -> str | None:
        return (
            "Below is a response to a question about a text.\n\n"
            f"Question:\n{problem.question}\n\nResponse:\n{output}\n\n"
            "Extract the final answer the response gives. Reply with the answer only — a name, "
            "phrase, date or number as short as possible — without explanation."
        )

    def judge_prompt(self, problem: Problem, output: str) -> str | None:
        return JUDGE_PROMPT.format(question=problem.question, reference=self.judge_reference(problem), candidate=output)

    def judge_reference(self, problem: Problem) -> str:
        return problem.answer

    def trial_record(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def trial_problem(self) -> Problem:
        return self.to_problem(self.trial_record(), {})


TRIAL_QUESTION = "A is 1, B is 2, what is A + B?"


def f1_score(value: float, prediction: str) -> Score:
    return Score(value, prediction, f"f1={value:.3f}")

