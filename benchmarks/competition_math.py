"""MATH (Level 5): the boxed answer must be equal — as text, as a number, or symbolically.

The symbolic check parses model-written text with sympy, which evaluates
expressions and can run for ever; it therefore runs in the sandbox, with sympy
preloaded in the fork server so each check starts in milliseconds.
"""

from __future__ import annotations

from typing import Any

from benchmarks import scoring
from benchmarks.base import Problem, Score
from benchmarks.families import MathBenchmark, judge_prompt_text
from scoreflow.sandbox import Sandbox


class MATH(MathBenchmark):
    name = "MATH"
    file_stem = "math"
    id_field = ""  # records carry no id: a hash of the problem text names them
    split_sizes = {"validate": 119, "test": 486}
    extraction_rule = "Reply with the final answer only, written as \\boxed{answer}."
    judged = True

    @classmethod
    def hashed_text(cls, record: dict[str, Any]) -> str:
        return record["problem"]

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("problem", "solution")

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        return Problem(
            id=self.record_id(record),
            question=record["problem"],
            input=record["problem"],
            answer=record["solution"],
            extra={"type": record.get("type", ""), "level": record.get("level", "")},
        )

    def answer_of(self, text: str) -> str:
        """The boxed answer (else the last sentence), read as ``scoring.math_boxed`` says."""
        return scoring.math_answer(text, self.scoring.math_boxed)

    async def score(self, problem: Problem, output: str) -> Score:
        predicted = self.answer_of(output)
        reference = self.answer_of(problem.answer)
        equal = scoring.math_equal_fast(predicted, reference)
        if equal is not None:
            return Score(float(equal), predicted, "exact" if equal else "different")
        result = await self.sandbox.run(
            scoring.symbolic_check_program(predicted, reference), time_limit_s=self.settings.check_time_limit_s
        )
        equal = result.passed and scoring.parse_symbolic_output(result.output)
        detail = "symbolic" if result.passed else f"symbolic check {result.status}: {result.message}"
        return Score(float(equal), predicted, detail)

    def judge_prompt(self, problem: Problem, output: str) -> str | None:
        """The judge compares boxed contents, of the extracted output and of the reference
        solution, as the original's judge does."""
        return judge_prompt_text(problem.question, self.answer_of(problem.answer), self.answer_of(output))

    def _make_sandbox(self) -> Sandbox:
        return Sandbox(self.sandbox_settings, site_packages=True, preload=SYMPY_MODULES)


# Loaded in the fork server: children then start with them (the LaTeX parser pulls in
# numpy, which needs ctypes, which the sandbox refuses to import).
SYMPY_MODULES = (
    "sympy",
    "sympy.parsing.sympy_parser",
    "sympy.parsing.latex",
    "sympy.parsing.latex._parse_latex_antlr",
)
