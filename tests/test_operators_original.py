"""The operators behave as the original's (Gen-Verse/ScoreFlow with its vendored MetaGPT).

Each behaviour is checked through the local OpenAI-compatible test server, with the
number of requests the original would send; code runs in the real sandbox. See
``docs/fidelity.md`` for the behaviours and where we deliberately differ.
"""

from __future__ import annotations

import pytest

from benchmarks.base import Problem
from scoreflow.config import Config, load_config
from scoreflow.executor.client import ExecutorUnavailable, RequestRefused
from scoreflow.operators import (
    ANSWER_MARKER,
    CODE_TASK_INTRO,
    FRESH_ATTEMPT,
    NO_CODE,
    PROGRAMMER_OUTPUT,
    PROGRAMMER_RAN,
    AnswerGenerate,
    Custom,
    CustomCodeGenerate,
    Programmer,
    Review,
    ScEnsemble,
    Test,
    UnreadableChoice,
    programmer_report,
)
from tests.fake_openai import FakeOpenAIServer, Fault
from tests.test_operators import prompt_of, run_with


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server):
    server.requests.clear()
    yield


def fails_with(error: type[BaseException], operator_call):
    """An action for ``run_with`` that expects ``operator_call(ctx)`` to raise ``error``."""

    async def action(ctx):
        with pytest.raises(error) as info:
            await operator_call(ctx)
        return info.value

    return action


WRONG_ADD = "```python\ndef add(a, b):\n    return a - b\n```"
RIGHT_ADD = "```python\ndef add(a, b):\n    return a + b\n```"


# ---------------------------------------------------------------- AnswerGenerate (H5)


def test_answer_generate_returns_thought_marker_and_answer(server):
    reply = "<thought>A is 1 and B is 2, so the sum is 3.</thought>\n<answer>3</answer>"
    result, ctx = run_with(server, "DROP", [reply], lambda c: AnswerGenerate(c)())
    assert result == f"A is 1 and B is 2, so the sum is 3.\n{ANSWER_MARKER}3"
    assert len(server.requests) == 1 and ctx.trace[0].llm_calls == 1
    prompt = prompt_of(server)  # instructions, then the problem, then the reply format (the original's order)
    assert prompt.index("step by step") < prompt.index("A + B") < prompt.index("<thought>your reasoning</thought>")


def test_answer_generate_missing_fields_are_empty(server):
    only_answer, _ = run_with(server, "HotpotQA", ["<answer>3</answer>"], lambda c: AnswerGenerate(c)())
    assert only_answer == f"\n{ANSWER_MARKER}3"


# ---------------------------------------------------------------- Test (M1)


def test_rounds_per_dataset_are_the_originals():
    config = Config()
    assert config.datasets["HumanEval"].test_max_rounds == 10 and config.datasets["MBPP"].test_max_rounds == 6
    assert not hasattr(config.operators, "test_max_rounds")
    assert load_config("config/tiny.yaml").datasets["HumanEval"].test_max_rounds == 1


@pytest.mark.parametrize("dataset, rounds", [("HumanEval", 10), ("MBPP", 6)])
def test_test_repairs_its_rounds_then_retests_then_generates_afresh(server, dataset, rounds):
    """A solution that never passes: ``rounds`` repair requests, the last repair tested too
    (rounds + 1 sandbox runs), then one fresh generation."""
    replies = [WRONG_ADD] * rounds + [RIGHT_ADD]
    result, ctx = run_with(server, dataset, replies, lambda c: Test(c)(solution=WRONG_ADD))
    assert "return a + b" in result
    assert len(server.requests) == rounds + 1
    (call,) = ctx.trace
    assert call.llm_calls == rounds + 1 and call.sandbox_runs == rounds + 1
    fresh = prompt_of(server)
    assert fresh.startswith(f"{FRESH_ATTEMPT}\n\n{CODE_TASK_INTRO}") and "`add`" in fresh
    repair = prompt_of(server, 0)
    assert "Failed: assert candidate(1, 2) == 3" in repair and "Keep the function name `add`" in repair


def test_test_keeps_the_last_repair_when_it_passes(server):
    """The tenth repair is right: the re-test after the loop passes, so no fresh generation."""
    replies = [WRONG_ADD] * 9 + [RIGHT_ADD]
    result, ctx = run_with(server, "HumanEval", replies, lambda c: Test(c)(solution=WRONG_ADD))
    assert "return a + b" in result
    assert len(server.requests) == 10 and ctx.trace[0].sandbox_runs == 11


def test_test_returns_a_passing_solution_at_once(server):
    result, ctx = run_with(server, "MBPP", [], lambda c: Test(c)(solution=RIGHT_ADD))
    assert "return a + b" in result and not server.requests and ctx.trace[0].sandbox_runs == 1


def test_test_without_public_tests_returns_the_solution_unchanged(server):
    problem = Problem("p", "q", "q", "", entry_point="add", test="def check(c): pass")
    result, ctx = run_with(server, "MBPP", [], lambda c: Test(c)(solution=WRONG_ADD), problem=problem)
    assert result == WRONG_ADD and not server.requests and ctx.trace[0].sandbox_runs == 0


# ---------------------------------------------------------------- Programmer (M5)


def test_programmer_returns_the_value_of_solve_only(server):
    reply = (
        "```python\nimport math\n\nprint('top level')\n\ndef solve():\n    print('inside solve')\n"
        "    return math.floor(42.5)\n\nprint(solve())\n```"
    )
    result, ctx = run_with(server, "GSM8K", [reply], lambda c: Programmer(c)(analysis="floor it"))
    assert result.startswith(PROGRAMMER_RAN) and result.endswith(f"{PROGRAMMER_OUTPUT}42")
    assert "top level" not in result and "inside solve')\n" in result  # top-level calls sanitized away
    assert result == programmer_report("import math\n\ndef solve():\n    print('inside solve')\n    return math.floor(42.5)\n", "42")
    assert len(server.requests) == 1 and ctx.trace[0].sandbox_runs == 1
    prompt = prompt_of(server)
    assert "floor it" in prompt and "`solve()`" in prompt


def test_programmer_output_is_str_of_the_value(server):
    reply = "```python\ndef solve():\n    return [1, 'a', None]\n```"
    result, _ = run_with(server, "MATH", [reply], lambda c: Programmer(c)(analysis=""))
    assert result.endswith(f"{PROGRAMMER_OUTPUT}[1, 'a', None]")


def test_programmer_without_code_runs_nothing(server):
    result, ctx = run_with(server, "MATH", ["I would rather explain it in words."], lambda c: Programmer(c)(analysis=""))
    assert result == NO_CODE
    assert len(server.requests) == 1 and ctx.trace[0].sandbox_runs == 0


def test_programmer_without_solve_runs_only_the_imports(server):
    """MetaGPT's sanitizer keeps only the imports of code without the entry point: they run,
    ``solve`` is missing, and the error goes back to the model."""
    other_name = "```python\nimport math\n\ndef compute():\n    return math.pi\n```"
    good = "```python\ndef solve():\n    return 7\n```"
    result, ctx = run_with(server, "GSM8K", [other_name, good], lambda c: Programmer(c)(analysis=""))
    assert result.endswith(f"{PROGRAMMER_OUTPUT}7")
    feedback = prompt_of(server, 1)
    assert "The code:\nimport math\n" in feedback and "compute" not in feedback and "solve" in feedback.split("What happened")[1]
    assert len(server.requests) == 2 and ctx.trace[0].sandbox_runs == 2


def test_programmer_starts_over_when_it_raises(server):
    """The original's @retry(stop_after_attempt(3)): an exception (here the executor failing
    for good on the first call) runs the whole operator again."""
    good = "```python\ndef solve():\n    return 5\n```"
    result, ctx = run_with(server, "MATH", [Fault("status", status=500), good], lambda c: Programmer(c)(analysis=""))
    assert result.endswith(f"{PROGRAMMER_OUTPUT}5")
    assert len(server.requests) == 2 and ctx.trace[0].llm_calls == 1


def test_programmer_gives_up_after_three_attempts(server):
    faults = [Fault("status", status=500)] * 3
    error, ctx = run_with(server, "MATH", faults, fails_with(ExecutorUnavailable, lambda c: Programmer(c)(analysis="")))
    assert len(server.requests) == 3 and ctx.trace[0].error.startswith("ExecutorUnavailable")


def test_programmer_does_not_resend_a_refused_request(server):
    refused = [Fault("status", status=400)]
    run_with(server, "MATH", refused, fails_with(RequestRefused, lambda c: Programmer(c)(analysis="")))
    assert len(server.requests) == 1


# ---------------------------------------------------------------- ScEnsemble (M6)


def test_sc_ensemble_asks_for_the_most_accurate_solution(server):
    pick = lambda c: ScEnsemble(c)(solutions=["x = 2", "x = 3", "x = 4"])  # noqa: E731
    result, _ = run_with(server, "GSM8K", ["<thought>C is right</thought><solution_letter>c</solution_letter>"], pick)
    assert result == "x = 4"
    prompt = prompt_of(server)
    assert "most accurate" in prompt and "most of them agree" not in prompt
    assert prompt.index("A + B") < prompt.index("Solution A:\nx = 2") < prompt.index("Solution C:\nx = 4")


def test_sc_ensemble_asks_even_for_one_solution(server):
    result, ctx = run_with(server, "GSM8K", ["<solution_letter>A</solution_letter>"], lambda c: ScEnsemble(c)(solutions=["only"]))
    assert result == "only" and len(server.requests) == 1 and ctx.trace[0].llm_calls == 1


@pytest.mark.parametrize("reply", ["no letter here", "<solution_letter>D</solution_letter>", "<solution_letter>B.</solution_letter>",
                                   "The answer is Solution B.", ""])
def test_sc_ensemble_unreadable_letter_fails_the_run(server, reply):
    pick = lambda c: ScEnsemble(c)(solutions=["x = 2", "x = 3", "x = 4"])  # noqa: E731
    error, ctx = run_with(server, "GSM8K", [reply], fails_with(UnreadableChoice, pick))
    assert len(server.requests) == 1 and ctx.trace[0].error.startswith("UnreadableChoice")


def test_code_sc_ensemble_states_the_task(server):
    run_with(server, "HumanEval", ["<solution_letter>A</solution_letter>"], lambda c: ScEnsemble(c)(solutions=["a", "b"]))
    assert f"{CODE_TASK_INTRO}def add" in prompt_of(server)


# ---------------------------------------------------------------- Review


def test_review_without_its_solution_tag_returns_an_empty_solution(server):
    math, _ = run_with(server, "GSM8K", ["<review>It is fine.</review>"], lambda c: Review(c)(pre_solution="A + B = 3"))
    assert math == ""
    code, ctx = run_with(server, "MBPP", ["Looks right:\n" + RIGHT_ADD], lambda c: Review(c)(pre_solution=RIGHT_ADD))
    assert code == "" and len(server.requests) == 2 and ctx.trace[0].llm_calls == 1


def test_review_returns_the_revised_solution(server):
    reply = "<review>sign</review><solution>```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```</solution>"
    code, _ = run_with(server, "MBPP", [reply], lambda c: Review(c)(pre_solution=WRONG_ADD))
    assert code.strip() == "def add(a, b):\n    return a + b"
    assert "four points" in prompt_of(server)


# ---------------------------------------------------------------- code problems are stated as tasks (M4, code)


def test_code_operators_state_the_task(server):
    run_with(server, "HumanEval", ["x"], lambda c: Custom(c)(instruction="Solve it."))
    custom = prompt_of(server)
    assert custom.startswith("Solve it.\n\n" + CODE_TASK_INTRO + "def add(a: int, b: int)")
    run_with(server, "MBPP", [RIGHT_ADD], lambda c: CustomCodeGenerate(c)(instruction="Be brief."))
    generate = prompt_of(server)
    assert generate.startswith("Be brief.\n\n" + CODE_TASK_INTRO) and "function is named `add`" in generate


def test_other_problems_are_not_stated_as_code_tasks(server):
    run_with(server, "GSM8K", ["3"], lambda c: Custom(c)(instruction="Solve it."))
    assert CODE_TASK_INTRO not in prompt_of(server)


# ---------------------------------------------------------------- every call carries the system message (M12)


def test_operator_calls_carry_the_system_message(server):
    run_with(server, "GSM8K", ["3"], lambda c: Custom(c)(instruction="Solve it."))
    (body,) = server.requests
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert body["messages"][-1]["role"] == "user" and len(body["messages"]) == 2
