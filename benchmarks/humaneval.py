"""HumanEval: complete a documented Python function; hidden tests call ``check(candidate)``."""

from __future__ import annotations

from benchmarks.base import Problem
from benchmarks.families import CodeBenchmark, prompt_helpers

# AFlow adds the helper a prompt refers to for exactly these three problems.
HELPER_PRELUDE_ENTRY_POINTS = frozenset({"decode_cyclic", "decode_shift", "find_zero"})

TRIAL_PROMPT = '''def add(a: int, b: int) -> int:
    """Return the sum of a and b.
    >>> add(1, 2)
    3
    """
'''


class HumanEval(CodeBenchmark):
    name = "HumanEval"
    file_stem = "humaneval"
    id_field = "task_id"
    answer_field = "canonical_solution"
    split_sizes = {"validate": 33, "test": 131}
    no_public_tests = frozenset({  # the original's skip list (names that several problems share)
        "find_zero", "decode_cyclic", "decode_shift", "by_length", "add",
        "triangle_area", "correct_bracketing", "solve", "sum_squares", "starts_one_ends",
    })

    def check_call(self, problem: Problem) -> str:
        return f"check({problem.entry_point})"

    def helper_prelude(self, problem: Problem) -> str:
        if problem.entry_point not in HELPER_PRELUDE_ENTRY_POINTS:
            return ""
        return prompt_helpers(problem.input, problem.entry_point)

    @property
    def trial_problem(self) -> Problem:
        return Problem(
            id="trial",
            question=TRIAL_PROMPT,
            input=TRIAL_PROMPT,
            answer="    return a + b\n",
            entry_point="add",
            test="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n",
            public_tests=("assert candidate(1, 2) == 3",),
        )
