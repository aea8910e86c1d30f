"""The workflow language: extraction, checking and interpretation through real operators.

Operators talk over real HTTP to the local OpenAI-compatible test server; replies are
scripted per test so that call order and results can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS, get_benchmark
from scoreflow.config import ExecutorConfig
from scoreflow.executor.client import ExecutorError
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.operators import OperatorContext
from scoreflow.workflow import (
    MAX_STR_CHARS,
    CheckedWorkflow,
    WorkflowRejected,
    WorkflowRuntimeError,
    body_similarity,
    check_workflow,
    extract_graph,
    run_with_limit,
)
from tests.fake_openai import Fault, FakeOpenAIServer, Reply


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server):
    server.requests.clear()
    yield


def workflow(body: str, init: str = "self.custom = operator.Custom(config, problem)") -> str:
    """A Workflow class with the given __init__ bindings and run_workflow body."""
    return (
        "class Workflow:\n    def __init__(self, config, problem) -> None:\n"
        + textwrap.indent(textwrap.dedent(init).strip(), " " * 8)
        + "\n\n    async def run_workflow(self):\n"
        + textwrap.indent(textwrap.dedent(body).strip(), " " * 8)
        + "\n"
    )


def run_workflow(server, dataset: str, source: str | CheckedWorkflow, replies=(), limit: float | None = None):
    """Check (when given text) and run a workflow on the trial problem; returns (output, context)."""
    bench = get_benchmark(dataset)
    checked = source if isinstance(source, CheckedWorkflow) else check_workflow(source, bench.operators)
    server.script(list(replies))

    async def go():
        config = ExecutorConfig(base_url=server.url, model="m", max_retries=0, request_timeout_s=20)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        ctx = OperatorContext(client, bench, bench.trial_problem)
        try:
            run = checked.run(ctx) if limit is None else run_with_limit(checked, ctx, limit)
            return await run, ctx
        finally:
            await client.aclose()

    try:
        return asyncio.run(go())
    finally:
        bench.close()


def prompts(server) -> list[str]:
    return [request["messages"][-1]["content"] for request in server.requests]


# ---------------------------------------------------------------- templates


CODE_REPLY = "```python\ndef add(a, b):\n    return a + b\n```"


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_every_template_is_accepted_and_runs(server, dataset):
    bench = get_benchmark(dataset)
    checked = check_workflow(bench.template_workflow, bench.operators)
    code = bench.family == "code"
    output, ctx = run_workflow(server, dataset, checked, [CODE_REPLY if code else "ok"])
    assert output.strip() == ("def add(a, b):\n    return a + b" if code else "ok")
    assert len(server.requests) == 1 and [c.operator for c in ctx.trace] == list(checked.operators_used.values())


def test_gsm8k_template_calls_custom_with_its_instruction(server):
    bench = get_benchmark("GSM8K")
    output, ctx = run_workflow(server, "GSM8K", bench.template_workflow)
    assert output == "ok"
    (prompt,) = prompts(server)
    assert prompt.startswith("Solve the problem step by step") and "A is 1, B is 2" in prompt
    assert [c.operator for c in ctx.trace] == ["Custom"]


# ---------------------------------------------------------------- a richer workflow


RICH = workflow(
    '''
    """Three attempts, a vote, a review, two checks."""
    solutions = []
    for i in range(3):
        solution = await self.custom(instruction=f"Attempt {i}: solve step by step.")
        solutions.append(solution)
    best = await self.sc_ensemble(solutions=solutions)
    if len(solutions) >= 3 and "s1" in solutions:
        best = await self.review(pre_solution=best)
    elif len(solutions) == 0:
        pass
    else:
        best = "unreachable"
    checks = [await self.custom(instruction=f"Check {k}: {best}") for k in range(2)]
    summary = "Best: "
    summary += best
    return summary + " | " + checks[0] + " | " + checks[-1] + " | " + str(len(checks))
    ''',
    """
    self.custom = operator.Custom(config, problem)
    self.sc_ensemble = operator.ScEnsemble(config, problem)
    self.review = operator.Review(config, problem)
    """,
)


def test_rich_workflow_calls_operators_in_order(server):
    checked = check_workflow(RICH, get_benchmark("GSM8K").operators)
    assert checked.operators_used == {"custom": "Custom", "sc_ensemble": "ScEnsemble", "review": "Review"}
    replies = ["s0", "s1", "s1", "<solution_letter>B</solution_letter>",
               "<review>fine</review><solution>s1 reviewed</solution>", "c0", "c1"]
    output, ctx = run_workflow(server, "GSM8K", checked, replies)
    assert output == "Best: s1 reviewed | c0 | c1 | 2"
    sent = prompts(server)
    assert len(sent) == 7
    assert [p.split(":")[0] for p in sent[:3]] == ["Attempt 0", "Attempt 1", "Attempt 2"]
    assert "Solution C:\ns1" in sent[3] and "Proposed solution:\ns1" in sent[4]
    assert sent[5].startswith("Check 0: s1 reviewed") and sent[6].startswith("Check 1: s1 reviewed")
    assert [c.operator for c in ctx.trace] == ["Custom"] * 3 + ["ScEnsemble", "Review"] + ["Custom"] * 2


def test_positional_arguments_map_to_keywords_and_are_coerced(server):
    source = workflow('n = 2\nx = await self.custom(n)\ny = await self.custom(["a", 1, None])\nreturn [x, y, n, True]')
    output, _ = run_workflow(server, "MATH", source, ["r1", "r2"])
    assert output == "r1\nr2\n2\nTrue"
    first, second = prompts(server)
    assert first.startswith("2\n\n") and second.startswith("['a', 1, None]\n\n")


def test_missing_return_and_none_give_empty_output(server):
    assert run_workflow(server, "GSM8K", workflow("x = 1"))[0] == ""
    assert run_workflow(server, "GSM8K", workflow("return None"))[0] == ""
    assert run_workflow(server, "GSM8K", workflow("return"))[0] == ""
    assert run_workflow(server, "GSM8K", workflow("return 1.5"))[0] == "1.5"
    assert server.requests == []


def test_return_inside_a_loop_stops_the_run(server):
    source = workflow("for i in range(3):\n    x = await self.custom(instruction=str(i))\n    if x == 'stop':\n"
                      "        return 'stopped at ' + str(i)\nreturn 'never'")
    output, _ = run_workflow(server, "GSM8K", source, ["go", "stop", "unused"])
    assert output == "stopped at 1" and len(server.requests) == 2
    server.script([])  # the third scripted reply was not consumed
    assert run_workflow(server, "GSM8K", workflow("return 'x'"), [])[0] == "x"


def test_definite_assignment():
    ops = get_benchmark("GSM8K").operators
    check_workflow(workflow("if 1 < 2:\n    x = 'a'\nelse:\n    x = 'b'\nreturn x"), ops)
    check_workflow(workflow("if 1 < 2:\n    return 'a'\nelse:\n    x = 'b'\nreturn x"), ops)
    check_workflow(workflow("for i in range(2):\n    x = i\nreturn x + i"), ops)
    with pytest.raises(WorkflowRejected, match=r"line 8: name 'x' used before assignment"):
        check_workflow(workflow("if 1 < 2:\n    x = 'a'\nreturn x"), ops)
    with pytest.raises(WorkflowRejected, match="name 'k' used before assignment"):
        check_workflow(workflow("a = [await self.custom() for k in range(2)]\nreturn k"), ops)
    with pytest.raises(WorkflowRejected, match="name 'y' used before assignment"):
        check_workflow(workflow("y = y + 1"), ops)


def test_comprehension_name_does_not_leak(server):
    source = workflow("k = 'outer'\nxs = [await self.custom(instruction=str(k)) for k in range(2)]\nreturn k")
    output, _ = run_workflow(server, "GSM8K", source)
    assert output == "outer" and [p[0] for p in prompts(server)] == ["0", "1"]


def test_operators_of_other_benchmarks_are_rejected():
    source = workflow("x = await self.programmer(analysis='a')\nreturn x",
                      "self.programmer = operator.Programmer(config, problem)")
    check_workflow(source, get_benchmark("GSM8K").operators)
    with pytest.raises(WorkflowRejected, match=r"line 3: operator 'Programmer' is not available"):
        check_workflow(source, get_benchmark("HumanEval").operators)


# ---------------------------------------------------------------- extraction and similarity


def test_extract_graph():
    body = get_benchmark("GSM8K").template_workflow
    assert extract_graph(f"Here it is:\n<graph>\n{body}</graph> trailing") == body
    assert extract_graph(f"<graph>\n{body}") == body  # the generator stops at </graph>
    assert extract_graph(f"<graph>\n```python\n{body}```\n</graph>") == body
    assert extract_graph(f"<graph>```\n{body}") == body
    assert extract_graph("no graph here") is None
    assert extract_graph("<graph></graph>") == ""
    indented = textwrap.indent(body, "    ")
    assert extract_graph(f"<GRAPH>\n{indented}\n</GRAPH>") == body


def test_the_documented_example_is_accepted(server):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "workflow_language.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    checked = check_workflow(example, get_benchmark("GSM8K").operators)
    assert checked.operators_used == {"custom": "Custom", "sc_ensemble": "ScEnsemble"}
    output, _ = run_workflow(server, "GSM8K", checked, ["a", "b", "b", "<solution_letter>C</solution_letter>"])
    assert output == "b" and len(server.requests) == 4


def test_body_source_and_similarity():
    bench = get_benchmark("GSM8K")
    template = check_workflow(bench.template_workflow, bench.operators)
    assert template.body_source == (
        'solution = await self.custom(instruction="Solve the problem step by step and state the final answer.")\n'
        "return solution"
    )
    assert body_similarity(template.body_source, template.body_source) == 1.0
    rich = check_workflow(RICH, bench.operators)
    assert rich.body_source.startswith('"""Three attempts') and rich.body_source.endswith("str(len(checks))")
    assert "\n    solution = await" in rich.body_source  # dedented to the body, inner indent kept
    assert body_similarity(template.body_source, rich.body_source) < 0.5
    one_line = check_workflow(workflow("x = 1").replace("run_workflow(self):\n        ", "run_workflow(self): "),
                              bench.operators)
    assert one_line.body_source == "x = 1"


# ---------------------------------------------------------------- limits and errors


def test_time_limit_stops_a_slow_operator(server):
    source = get_benchmark("GSM8K").template_workflow
    start = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        run_workflow(server, "GSM8K", source, [Reply("late", delay_s=3.0)], limit=0.3)
    assert time.perf_counter() - start < 2.5


def test_string_doubling_is_capped(server):
    source = workflow("s = 'ab'\nfor i in range(3):\n    for j in range(3):\n        s = s + s\n        s += s\n"
                      "        s = s + s\nreturn s")
    with pytest.raises(WorkflowRuntimeError, match=rf"line 10: a string exceeds {MAX_STR_CHARS} characters"):
        run_workflow(server, "GSM8K", source)
    assert server.requests == []


def test_runtime_type_errors(server):
    cases = {
        "x = 'a' + 1": "cannot add str and int",
        "x = 'a' < 1": "cannot compare str and int",
        "x = [][0]": "index 0 is out of range",
        "x = len(3)": "len() needs a string or a list",
        "x = 1 in 'abc'": "'in' needs a list",
        "x = 'ab'\nx.append(1)": ".append() needs a list",
        "x = []\nx += ['a']": "+= works on strings and numbers only",
        "x = await self.sc_ensemble(solutions='abc')": "solutions must be a list",
    }
    for body, reason in cases.items():
        source = workflow(body, "self.sc_ensemble = operator.ScEnsemble(config, problem)")
        with pytest.raises(WorkflowRuntimeError, match=re.escape(reason)):
            run_workflow(server, "GSM8K", source)
    assert server.requests == []


def test_operator_exceptions_propagate_unchanged(server):
    source = get_benchmark("GSM8K").template_workflow
    with pytest.raises(ExecutorError):
        run_workflow(server, "GSM8K", source, [Fault("status", status=400)])


def test_a_checked_workflow_runs_concurrently(server):
    checked = check_workflow(RICH, get_benchmark("GSM8K").operators)

    async def both():
        config = ExecutorConfig(base_url=server.url, model="m", max_retries=0, request_timeout_s=20)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        bench = get_benchmark("GSM8K")
        try:
            contexts = [OperatorContext(client, bench, bench.trial_problem) for _ in range(2)]
            return await asyncio.gather(*(checked.run(c) for c in contexts)), contexts
        finally:
            await client.aclose()
            bench.close()

    outputs, contexts = asyncio.run(both())
    assert outputs == ["Best: unreachable | ok | ok | 2"] * 2  # no "s1" among the answers: the else branch
    assert len(server.requests) == 12 and all(len(c.trace) == 6 for c in contexts)
