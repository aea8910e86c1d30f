"""The three benchmark families: code, math and question answering.

Each family holds the behaviour its datasets share: the operator set and template
workflow of SPEC section 3, the trial problem of section 4, the executor prompts
around scoring (section 2) and the scoring path itself. Prompt wording is ours.
"""

from __future__ import annotations

import ast
from typing import Any, ClassVar, Literal

from benchmarks import scoring
from benchmarks.base import Benchmark, Problem, Score
from scoreflow.offload import sanitize_async
from scoreflow.sandbox import CodeCheck


def template(bindings: tuple[tuple[str, str], ...], call: str) -> str:
    """The template workflow in the original's idiom: ``__init__`` keeps the problem, builds
    the config and binds every operator of the dataset (attribute, class), in the original's
    order; ``run_workflow`` has a docstring and one operator call (our instruction)."""
    bound = "".join(f"        self.{attr} = operator.{name}(self.config, self.problem)\n" for attr, name in bindings)
    return (
        "class Workflow:\n"
        "    def __init__(\n        self,\n        config,\n        problem\n    ) -> None:\n"
        "        self.problem = problem\n"
        "        self.config = create(config)\n"
        f"{bound}"
        "\n"
        "    async def run_workflow(self):\n"
        '        """\n        This is a workflow graph.\n        """\n'
        f"        solution = await self.{call}\n"
        "\n"
        "        return solution\n"
    )


JUDGE_RULE = (
    "Decide whether the candidate answer means the same as the reference answer; ignore formatting, "
    "wording and units that do not change the value. Reply with one character and nothing else: "
    "1 if it is correct, 0 if it is not."
)


def judge_prompt_text(
    question: str, reference: str, candidate: str, *, source: tuple[str, str] | None = None,
    reference_label: str = "Reference answer",
) -> str:
    """The judge's request in the original's order: question, reference, candidate, then
    (QA) the text the question is about, with the rule not to answer it oneself; a bare
    1/0 is asked for, since only a reply of exactly "1" counts (``scoring.judge_verdict``).

    ``source``: (label, text) of the passage or context a QA question is about."""
    parts = [
        "You are grading an answer against a reference.", f"Question:\n{question}", f"{reference_label}:\n{reference}",
    ]
    if source is None:
        parts.append(f"Candidate answer:\n{candidate}")
    else:
        label, text = source
        parts.append(f"Candidate answer (grade it only; do not answer the question yourself):\n{candidate}")
        parts.append(f"The {label} the question is about, for reference:\n{text.strip()}")
    return "\n\n".join([*parts, JUDGE_RULE])


# ---------------------------------------------------------------- code


class CodeBenchmark(Benchmark):
    """HumanEval and MBPP: a function is written, then checked by hidden tests in the sandbox."""

    family = "code"
    operators = ("CustomCodeGenerate", "ScEnsemble", "Test")  # the original's; Review: datasets.<D>.extra_operators
    template_bindings = (("code_generate", "CustomCodeGenerate"), ("sc_ensemble", "ScEnsemble"), ("test", "Test"))
    template_workflow = template(
        template_bindings,
        'code_generate(instruction="Think through the task step by step, then write the code.")',
    )
    public_test_key = "entry_point"
    # Names AFlow's checker puts in scope before the solution runs.
    prelude: ClassVar[str] = "import math\nimport hashlib\nimport re\nfrom typing import Any, Dict, List, Optional, Tuple\n"

    answer_field: ClassVar[str]  # the record field holding the reference solution

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("prompt", "entry_point", "test")

    # Entry points whose public tests the original's Test operator skips (it returns the
    # solution unchanged): its hard-coded list of names shared by several problems.
    no_public_tests: ClassVar[frozenset[str]] = frozenset()

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        return Problem(
            id=str(record[self.id_field]),
            question=record["prompt"],
            input=record["prompt"],
            answer=record.get(self.answer_field, ""),
            entry_point=record["entry_point"],
            test=record["test"],
            public_tests=select_public_tests(
                record["entry_point"], record["test"], public_tests,
                choice=self.scoring.public_tests, skipped=self.no_public_tests,
            ),
        )

    def check_call(self, problem: Problem) -> str:
        """The statement that runs the hidden tests (``check(...)``)."""
        raise NotImplementedError

    def helper_prelude(self, problem: Problem) -> str:
        """Code placed before the solution so helpers the prompt refers to exist."""
        return ""

    def code_check(self, problem: Problem, solution: str) -> CodeCheck:
        """The check a score runs: the prelude and the prompt's helpers (trusted, in both
        processes), the solution (untrusted, alone in its process), the hidden tests and
        their call (in the tests' process, which alone writes the verdict)."""
        return CodeCheck(solution=solution, tests=problem.test, call=self.check_call(problem),
                         entry_point=problem.entry_point, prelude=self.prelude + self.helper_prelude(problem))

    def check_program(self, problem: Problem, solution: str) -> str:
        """Prelude, solution, hidden tests and call as one program, for ``Sandbox.run``:
        the program's own claim of a pass, so never used for a score (``code_check``)."""
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
        result = await self.sandbox.check(self.code_check(problem, solution), time_limit_s=self.settings.check_time_limit_s)
        return Score(1.0 if result.passed else 0.0, solution, f"{result.status}: {result.message}")


def select_public_tests(
    entry_point: str, hidden_test: str, public: dict[str, list[list[str]]], *,
    choice: Literal["original", "matched"] = "original", skipped: frozenset[str] = frozenset(),
) -> tuple[str, ...]:
    """The public asserts the Test operator runs for a problem (``scoring.public_tests``).

    ``original``: as the original's lookup, none for an entry point on its skip list
    (``skipped``), else the first public-test record with this entry point, else none
    (where the original finds none its Test operator raises, failing the run; here it
    returns the solution unchanged). ``matched``: ours, :func:`matching_public_tests`.
    """
    if choice == "matched":
        return matching_public_tests(entry_point, hidden_test, public)
    candidates = [] if entry_point in skipped else public.get(entry_point, [])
    return tuple(candidates[0]) if candidates else ()


def matching_public_tests(entry_point: str, hidden_test: str, public: dict[str, list[list[str]]]) -> tuple[str, ...]:
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
    template_bindings = (("custom", "Custom"), ("sc_ensemble", "ScEnsemble"), ("programmer", "Programmer"),
                         ("review", "Review"))
    template_workflow = template(
        template_bindings,
        'custom(instruction="Solve the problem by breaking it into detailed steps and explaining the reasoning '
        'of each step.")',
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
    """DROP and HotpotQA: an answer phrase scored by token F1 against the reference.

    Operators get the question framed as the original frames it (:func:`qa_input`);
    the generator and the extraction call see the question only; the judge also
    sees the passage or context."""

    family = "qa"
    judged = True
    source_label: ClassVar[str]  # what the question is about: "passage" (DROP) or "context"
    reference_label: ClassVar[str] = "Reference answer"
    operators = ("Custom", "AnswerGenerate", "ScEnsemble", "Review")
    template_bindings = (("custom", "Custom"), ("sc_ensemble", "ScEnsemble"), ("answer_generate", "AnswerGenerate"),
                         ("review", "Review"))
    template_workflow = template(
        template_bindings,
        "answer_generate()",
    )

    def extraction_prompt(self, problem: Problem, output: str) -> str | None:
        return (
            "Below is a response to a question about a text.\n\n"
            f"Question:\n{problem.question}\n\nResponse:\n{output}\n\n"
            "Extract the final answer the response gives. Reply with the answer only — a name, "
            "phrase, date or number as short as possible — without explanation."
        )

    def judge_prompt(self, problem: Problem, output: str) -> str | None:
        return judge_prompt_text(
            problem.question, self.judge_reference(problem), output,
            source=(self.source_label, problem.extra.get("source", "")), reference_label=self.reference_label,
        )

    def judge_reference(self, problem: Problem) -> str:
        return problem.answer

    def trial_record(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def trial_problem(self) -> Problem:
        return self.to_problem(self.trial_record(), {})


TRIAL_QUESTION = "A is 1, B is 2, what is A + B?"


def qa_input(question: str, label: str, text: str) -> str:
    """A QA problem as operators receive it, in the original's structure and order: a
    sentence asking for a step-by-step solution, the question, a sentence introducing
    the passage or context, then that text (our wording; the original's blank lines)."""
    return (
        f"\nSolve this question-answering problem step by step. Question: {question}"
        f"\nAnswer it from the {label} below. {label.capitalize()}:\n{text}\n\n"
    )


def f1_score(value: float, prediction: str) -> Score:
    return Score(value, prediction, f"f1={value:.3f}")

