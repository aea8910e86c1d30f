"""GSM8K: grade-school word problems; the last number of the answer must match."""

from __future__ import annotations

from typing import Any

from benchmarks import scoring
from benchmarks.base import Problem, Score
from benchmarks.families import MathBenchmark


class GSM8K(MathBenchmark):
    name = "GSM8K"
    file_stem = "gsm8k"
    id_field = "id"
    split_sizes = {"validate": 264, "test": 1055}
    extraction_rule = "Reply with the number only: no units, no words, no thousands separators."

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("question", "answer")

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        return Problem(id=str(record["id"]), question=record["question"], input=record["question"], answer=str(record["answer"]))

    async def score(self, problem: Problem, output: str) -> Score:
        value, number = scoring.gsm8k_score(output, problem.answer)
        return Score(value, "" if number is None else repr(number), "last number")
