"""MBPP: write a function from a one-line task; hidden tests are a ``check()`` of asserts."""

from __future__ import annotations

from benchmarks.base import Problem
from benchmarks.families import CodeBenchmark

TRIAL_PROMPT = "Write a function to add two numbers.\n\ndef add(a, b):"


class MBPP(CodeBenchmark):
    name = "MBPP"
    file_stem = "mbpp"
    id_field = "task_id"
    answer_field = "code"
    split_sizes = {"validate": 86, "test": 341}
    no_public_tests = frozenset({  # the original's skip list (names that several problems share)
        "remove_odd", "replace_spaces", "snake_to_camel", "Split",
        "swap_List", "square_Sum", "sort_sublists", "unique_sublists",
    })

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
