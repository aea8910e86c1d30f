"""DROP: discrete reasoning over a passage; max token F1 over the reference alternatives."""

from __future__ import annotations

import re
from typing import Any

from benchmarks import scoring
from benchmarks.base import Problem, Score
from benchmarks.families import QABenchmark, f1_score, qa_input

_QUESTION = re.compile(r"\nQuestion:(.*?)(?:\nAnswer:\s*)?$", re.DOTALL)
_PASSAGE = re.compile(r"Passage:(.*?)Question:", re.DOTALL)


class DROP(QABenchmark):
    name = "DROP"
    file_stem = "drop"
    id_field = "id"
    split_sizes = {"validate": 200, "test": 800}
    source_label = "passage"
    reference_label = "Reference answer (alternatives, any one of them is right)"

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("id", "context", "ref_text")

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        context = record["context"]
        question, passage = question_of(context), passage_of(context)
        return Problem(
            id=str(record["id"]), question=question, input=qa_input(question, "passage", passage),
            answer=record["ref_text"], extra={"source": passage},
        )

    async def score(self, problem: Problem, output: str) -> Score:
        return f1_score(scoring.drop_f1(output, problem.answer), output)

    def judge_reference(self, problem: Problem) -> str:
        return joined_alternatives(problem.answer)

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


def passage_of(context: str) -> str:
    """The passage of a DROP context: the text between "Passage:" and "Question:", as the
    original cuts it (the whole context where there is no such pair)."""
    match = _PASSAGE.search(context)
    return match.group(1).strip() if match else context.strip()


def joined_alternatives(ref_text: str) -> str:
    """The ``|``-separated gold alternatives as the original hands them to its judge.

    Each non-blank alternative is followed by ", or " unless the first occurrence of its
    text is the last field, so "a|b" gives "a, or b", and a blank or repeated last field
    leaves a trailing ", or " (the original's output, kept)."""
    fields = ref_text.split("|")
    last = len(fields) - 1
    return "".join(f if fields.index(f) == last else f + ", or " for f in fields if f.strip())
