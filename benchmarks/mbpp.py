"""MBPP: write a function from a one-line task; hidden tests are a ``check()`` of asserts."""

from __future__ import annotations

from typing import Any

from benchmarks.base import Problem
from benchmarks.families import CodeBenchmark, select_public_tests

TRIAL_PROMPT = "Write a function to add two numbers.\n\ndef add(a, b):"


class MBPP(CodeBenchmark):
    name = "MBPP"
    file_stem = "mbpp"
    id_field = "task_id"
    split_sizes = {"validate": 86, "test": 341}

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        return Problem(
            id=str(record["task_id"]),
            question=record["prompt"],
            input=record["prompt"],
            answer=record.get("code", ""),
            entry_point=record["entry_point"],
            test=record["test"],
            public_tests=select_public_tests(record["entry_point"], record["test"], public_tests),
        )

    def check_call(self, problem: Problem) -> str:
        return "check()"

    @property
    def trial_problem(self) -> Problem:
        return Problem(
            id="trial",
            question=TRIAL_PROMPT,
            input=TRIAL_PROMPT,
            answer="def add(a, b):\n    return a + b\n",
            entry_point="add",
            test="def check():\n    assert add(1, 2) == 3\n    assert add(-4, 4) == 0\n",
            public_tests=("assert candidate(1, 2) == 3",),
        )
