"""DROP: discrete reasoning over a passage; max token F1 over the reference alternatives."""

from __future__ import annotations

import re
from typing import Any

from benchmarks import scoring
from benchmarks.base import Problem, Score
from benchmarks.families import QABenchmark, f1_score

_QUESTION = re.compile(r"\nQuestion:(.*?)(?:\nAnswer:\s*)?$", re.DOTALL)


class DROP(QABenchmark):
    name = "DROP"
    file_stem = "drop"
    id_field = "id"
    split_sizes = {"validate": 200, "test": 800}

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("id", "context", "ref_text")

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        context = record["context"]
        return Problem(id=str(record["id"]), question=question_of(context), input=context, answer=record["ref_text"])

    async def score(self, problem: Problem, output: str) -> Score:
        return f1_score(scoring.drop_f1(output, problem.answer), output)

    def judge_reference(self, problem: Problem) -> str:
        alternatives = [a.strip() for a in problem.answer.split("|") if a.strip()]
        return " or ".join(alternatives)

    def trial_record(self) -> dict[str, Any]:
        return {
            "id": "trial",
            "context": "Passage: A is 1. B is 2.\nQuestion: What is A + B?\nAnswer:",
            "ref_text": "3",
        }


def question_of(context: str) -> str:
    """The question at the end of a DROP context (the generator sees only this)."""
    match = _QUESTION.search(context)
    return match.group(1).strip() if match else context.strip()
