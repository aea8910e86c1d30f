"""The operator library through real HTTP to the local OpenAI-compatible test server.

Replies are scripted per test; executor-written code runs in the real sandbox.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.config import ExecutorConfig, OperatorConfig, load_config
from scoreflow.executor.cache import ReplyCache
from scoreflow.executor.client import UsageMeter
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.judging import extract_answer, judge_output
from scoreflow.operators import (
    ANSWER_MARKER,
    PROGRAMMER_OUTPUT,
    AnswerGenerate,
    Custom,
    CustomCodeGenerate,
    OperatorContext,
    Programmer,
    Review,
    ScEnsemble,
    Test,
    UnreadableChoice,
    make_operator_sandbox,
    operator_namespace,
    parse_fields,
    solution_letter,
)
from tests.fake_openai import FakeOpenAIServer, Reply


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server):
    server.requests.clear()
    yield


def client_for(server, cache: ReplyCache | None = None, meter: UsageMeter | None = None) -> OpenAIChatClient:
    config = ExecutorConfig(base_url=server.url, model="fake-model", max_retries=0, request_timeout_s=20)
    return OpenAIChatClient.from_config(config, cache=cache, meter=meter)


def run_with(
    server, dataset: str, replies: list, action, *, problem: Problem | None = None, sets: tuple[str, ...] = (), **settings
):
    """Run ``action(context)`` against scripted replies; returns (result, context).

    ``sets``: config overrides for the benchmark (``datasets.MBPP.test_max_rounds=2``);
    ``settings``: OperatorConfig fields (the Programmer's retry wait is 0 unless given)."""
    bench = get_benchmark(dataset, load_config(None, list(sets)))
    settings.setdefault("programmer_retry_wait_s", 0.0)
    server.script(replies)
    sandbox = make_operator_sandbox(bench, bench.sandbox_settings)

    async def go():
        client = client_for(server)
        ctx = OperatorContext(
            client, bench, problem or bench.trial_problem, sandbox=sandbox, settings=OperatorConfig(**settings)
        )
        try:
            return await action(ctx), ctx
        finally:
            await client.aclose()

    try:
        return asyncio.run(go())
    finally:
        if sandbox is not None:
            sandbox.close()
        bench.close()


def prompt_of(server, index: int = -1) -> str:
    return server.requests[index]["messages"][-1]["content"]


# ---------------------------------------------------------------- parsing


def test_parse_fields_is_lenient():
    text = "Sure!\n<Thought>add them</thought>\n<answer> 3 \n"
    assert parse_fields(text, ("thought", "answer")) == {"thought": "add them", "answer": "3"}
    assert parse_fields("<thought>a<answer>b</answer>", ("thought", "answer")) == {"thought": "a", "answer": "b"}
    assert parse_fields("no tags here", ("answer",)) == {}
    assert parse_fields("<answer>1</answer> then <answer>2</answer>", ("answer",)) == {"answer": "2"}


def test_solution_letter():
    """Only the field counts, and it must be exactly one of the letters (any case), as the original reads it."""
    assert solution_letter("<solution_letter>B</solution_letter>", 3) == 1
    assert solution_letter("I pick c.", 3) is None
    assert solution_letter("<solution_letter> c </solution_letter>", 3) == 2
    assert solution_letter("<solution_letter>Z</solution_letter>", 3) is None
    assert solution_letter("The best is Solution C.", 3) is None  # prose is not the field
    assert solution_letter("<solution_letter>B.</solution_letter>", 3) is None
    assert solution_letter("<solution_letter>Solution B</solution_letter>", 3) is None
    assert solution_letter("A good answer is hard to find", 3) is None


# ---------------------------------------------------------------- operators


def test_custom_sends_instruction_and_problem(server):
    result, ctx = run_with(server, "GSM8K", ["The answer is 3."], lambda c: Custom(c)(instruction="Solve it."))
    assert result == "The answer is 3."
    prompt = prompt_of(server)
    assert prompt.startswith("Solve it.") and "A is 1, B is 2" in prompt
    (call,) = ctx.trace
    assert call.operator == "Custom" and call.llm_calls == 1 and call.prompt_tokens > 0 and call.latency_s > 0


def test_answer_generate_returns_reasoning_marker_and_answer(server):
    result, _ = run_with(server, "HotpotQA", ["<thought>1+2</thought><answer>3</answer>"], lambda c: AnswerGenerate(c)())
    assert result == f"1+2\n{ANSWER_MARKER}3"
    assert prompt_of(server).index("<thought>") < prompt_of(server).index("A + B") < prompt_of(server).index("Reply in this form")
    untagged, _ = run_with(server, "DROP", ["It is three."], lambda c: AnswerGenerate(c)())
    assert untagged == f"\n{ANSWER_MARKER}"  # missing fields are empty, as the original's defaults


def test_code_generate_keeps_the_entry_point_and_what_it_needs(server):
    reply = (
        "Here is my plan.\n```python\nimport math\n\nSCALE = 1\n\ndef helper(x):\n    return x * SCALE\n\n"
        "def add(a, b):\n    return helper(a) + b\n\nprint(add(1, 2))\n```\nHope it helps!"
    )
    code, _ = run_with(server, "HumanEval", [reply], lambda c: CustomCodeGenerate(c)(instruction="Be careful."))
    assert "def add" in code and "def helper" in code and "SCALE = 1" in code and "print(" not in code
    assert "`add`" in prompt_of(server)


def test_programmer_retries_with_the_error_and_returns_output(server):
    replies = [
        "```python\ndef solve():\n    return 1 / 0\n```",
        "```python\ndef solve():\n    while True:\n        pass\n```",
        "```python\nimport sympy\ndef solve():\n    return sympy.Integer(1) + 2\n```",
    ]
    result, ctx = run_with(
        server, "MATH", replies, lambda c: Programmer(c)(analysis="add"), programmer_time_limit_s=1.0
    )
    assert result.endswith(f"{PROGRAMMER_OUTPUT}3")
    assert "ZeroDivisionError" in prompt_of(server, 1)
    assert "timeout" in prompt_of(server, 2)
    (call,) = ctx.trace
    assert call.llm_calls == 3 and call.sandbox_runs == 3


def test_programmer_gives_up_after_its_tries(server):
    bad = "```python\ndef solve():\n    raise ValueError('nope')\n```"
    result, _ = run_with(server, "GSM8K", [bad, bad], lambda c: Programmer(c)(analysis=""), programmer_max_tries=2)
    assert result.endswith(f"{PROGRAMMER_OUTPUT}fail: ValueError: nope")
    assert len(server.requests) == 2


def test_programmer_code_cannot_read_the_api_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    leak = "```python\nimport os\ndef solve():\n    return os.environ.get('OPENAI_API_KEY', 'absent')\n```"
    result, _ = run_with(server, "GSM8K", [leak], lambda c: Programmer(c)(analysis=""))
    assert "sk-test-secret-123" not in result and result.endswith(f"{PROGRAMMER_OUTPUT}absent")


def test_sc_ensemble_picks_the_named_solution(server):
    pick = lambda c: ScEnsemble(c)(solutions=["x = 2", "x = 3", "x = 3"])  # noqa: E731
    result, _ = run_with(server, "GSM8K", ["<thought>B and C agree</thought><solution_letter>B</solution_letter>"], pick)
    assert result == "x = 3"
    assert "Solution C:" in prompt_of(server) and "most accurate" in prompt_of(server)

    async def unreadable(ctx):
        with pytest.raises(UnreadableChoice):
            await pick(ctx)

    run_with(server, "GSM8K", ["no idea"], unreadable)
    single, ctx = run_with(server, "GSM8K", ["<solution_letter>A</solution_letter>"], lambda c: ScEnsemble(c)(solutions=["only"]))
    assert single == "only" and ctx.trace[0].llm_calls == 1


def test_review_returns_the_corrected_solution(server):
    result, _ = run_with(
        server, "MATH", ["<review>wrong sum</review><solution>A + B = 3</solution>"], lambda c: Review(c)(pre_solution="A + B = 4")
    )
    assert result == "A + B = 3"
    untagged, _ = run_with(server, "MATH", ["looks fine"], lambda c: Review(c)(pre_solution="A + B = 3"))
    assert untagged == ""  # the original's field default
    code, _ = run_with(
        server,
        "MBPP",
        ["<review>sign</review><solution>```python\ndef add(a, b):\n    return a + b\n```</solution>"],
        lambda c: Review(c)(pre_solution="def add(a, b):\n    return a - b\n"),
    )
    assert code.strip() == "def add(a, b):\n    return a + b"


def test_test_operator_repairs_until_public_tests_pass(server):
    wrong = "def add(a, b):\n    return a - b\n"
    fixed = "The sign was wrong.\n```python\ndef add(a, b):\n    return a + b\n```"
    result, ctx = run_with(server, "HumanEval", [fixed], lambda c: Test(c)(solution=wrong))
    assert "return a + b" in result
    assert "Failed: assert candidate(1, 2) == 3" in prompt_of(server)
    assert ctx.trace[0].sandbox_runs == 2 and ctx.trace[0].llm_calls == 1


def test_test_operator_falls_back_to_a_fresh_solution(server):
    wrong = "```python\ndef add(a, b):\n    return 0\n```"
    fresh = "```python\ndef add(a, b):\n    return b + a\n```"
    result, ctx = run_with(server, "MBPP", [wrong, wrong, fresh], lambda c: Test(c)(solution="def add(a, b): return 0"),
                           sets=("datasets.MBPP.test_max_rounds=2",))
    assert "return b + a" in result
    assert len(server.requests) == 3 and ctx.trace[0].sandbox_runs == 3  # the last repair is tested too


def test_test_operator_without_public_tests_changes_nothing(server):
    problem = Problem("p", "q", "q", "", entry_point="f", test="def check(c): pass")
    result, ctx = run_with(server, "HumanEval", [], lambda c: Test(c)(solution="def f(): return 1"), problem=problem)
    assert result == "def f(): return 1" and not server.requests and ctx.trace[0].sandbox_runs == 0


def test_operator_failure_is_recorded_in_the_trace(server):
    from tests.fake_openai import Fault

    async def action(ctx):
        with pytest.raises(Exception):
            await Custom(ctx)(instruction="x")
        return None

    _, ctx = run_with(server, "GSM8K", [Fault("status", status=400)], action)
    assert ctx.trace[0].error


# ---------------------------------------------------------------- a whole workflow and the cache


class ThreeStepWorkflow:
    """A hand-written workflow in the generated language: Custom x2, ScEnsemble, Review."""

    def __init__(self, config, problem, operator) -> None:
        self.custom = operator.Custom(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)
        self.review = operator.Review(config, problem)

    async def run_workflow(self):
        solutions = []
        for _ in range(2):
            solutions.append(await self.custom(instruction="Solve step by step."))
        best = await self.sc_ensemble(solutions=solutions)
        return await self.review(pre_solution=best)


def test_cached_rerun_of_a_workflow_makes_no_requests(server, tmp_path: Path):
    bench = get_benchmark("GSM8K")
    ops = operator_namespace(bench.operators)
    server.script(["3", "3", "<solution_letter>A</solution_letter>", "<solution>3</solution>"] * 2)

    async def run(salt: str, cache: ReplyCache, meter: UsageMeter) -> str:
        client = client_for(server, cache=cache, meter=meter)
        ctx = OperatorContext(client, bench, bench.trial_problem, cache_salt=salt)
        try:
            return await ThreeStepWorkflow(ctx, bench.trial_problem, ops).run_workflow()
        finally:
            await client.aclose()

    with ReplyCache(tmp_path / "cache.sqlite") as cache:
        meter = UsageMeter()
        assert asyncio.run(run("run-0", cache, meter)) == "3"
        assert len(server.requests) == 4  # the two identical Custom calls are two requests
        assert asyncio.run(run("run-0", cache, meter)) == "3"
        assert len(server.requests) == 4 and meter.cache_hits == 4
        assert asyncio.run(run("run-1", cache, meter)) == "3"  # another scoring run: its own replies
        assert len(server.requests) == 8
    assert not hasattr(ops, "Test")  # code-only operators are not offered to math


# ---------------------------------------------------------------- extraction and judge


def test_extraction_and_judge_calls(server):
    gsm = get_benchmark("GSM8K")
    problem = gsm.trial_problem

    async def go():
        client = client_for(server)
        try:
            server.script(["3"])
            answer = await extract_answer(client, gsm, problem, "A + B is 3, done.")
            code = get_benchmark("MBPP")
            same = await extract_answer(client, code, code.trial_problem, "def add(a, b): ...")
            hotpot = get_benchmark("HotpotQA")
            trial = hotpot.trial_problem
            skipped = await judge_output(client, hotpot, trial, "3" * 50)
            server.script(["1"])  # only a bare verdict counts (scoring.judge_verdict: exact)
            judged = await judge_output(client, hotpot, trial, "3")
            none = await judge_output(client, gsm, problem, "3")
            return answer, same, skipped, judged, none
        finally:
            await client.aclose()

    answer, same, skipped, judged, none = asyncio.run(go())
    assert answer == "3" and same == "def add(a, b): ..."
    assert skipped == 0.0 and judged == 1.0 and none is None
    assert len(server.requests) == 2
    assert "Reference answer:\n3" in prompt_of(server)
