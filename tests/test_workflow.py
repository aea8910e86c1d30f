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
    """The original-style template binds all of the dataset's operators and calls one."""
    bench = get_benchmark(dataset)
    checked = check_workflow(bench.template_workflow, bench.operators, max_range=bench.max_range)
    assert sorted(checked.operators_used.values()) == sorted(bench.operators)
    code = bench.family == "code"
    reply = {"code": CODE_REPLY, "qa": "<thought>t</thought><answer>ok</answer>"}.get(bench.family, "ok")
    output, ctx = run_workflow(server, dataset, checked, [reply])
    if code:
        assert output.strip() == "def add(a, b):\n    return a + b"
    else:  # QA's AnswerGenerate may put its reasoning before the answer
        assert output.strip().endswith("ok")
    called = {"code": "CustomCodeGenerate", "qa": "AnswerGenerate"}.get(bench.family, "Custom")
    assert len(server.requests) == 1 and [c.operator for c in ctx.trace] == [called]


def test_gsm8k_template_calls_custom_with_its_instruction(server):
    bench = get_benchmark("GSM8K")
    output, ctx = run_workflow(server, "GSM8K", bench.template_workflow)
    assert output == "ok"
    (prompt,) = prompts(server)
    assert prompt.startswith("Solve the problem by breaking it into detailed steps") and "A is 1, B is 2" in prompt
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


def test_the_documented_original_style_example_is_accepted(server):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "workflow_language.md").read_text()
    example = doc.split("```python\n")[2].split("```", 1)[0]
    assert "self.config = create(config)" in example and "asyncio.gather" in example
    ops = get_benchmark("GSM8K").operators
    with pytest.raises(WorkflowRejected, match=r"range\(5\) exceeds 3"):
        check_workflow(example, ops)
    checked = check_workflow(example, ops, max_range=8)
    replies = ["a"] * 5 + ["<solution_letter>B</solution_letter>", "<review>ok</review><solution>a!</solution>"]
    output, _ = run_workflow(server, "GSM8K", checked, replies)
    assert output == "a!" and len(server.requests) == 7
    told = doc.split("## What the generator is told", 1)[1]
    assert "{max_range}" in told and "asyncio.gather" in told and "no imports" in told


def test_body_source_and_similarity():
    """The similarity check reads run_workflow as the original does: from after its signature
    to the first return statement, docstring included, stripped."""
    bench = get_benchmark("GSM8K")
    template = check_workflow(bench.template_workflow, bench.operators)
    assert template.body_source == (
        ':\n        """\n        This is a workflow graph.\n        """\n'
        '        solution = await self.custom(instruction="Solve the problem by breaking it into detailed steps and '
        'explaining the reasoning of each step.")'
    )
    assert body_similarity(template.body_source, template.body_source) == 1.0
    rich = check_workflow(RICH, bench.operators)
    assert rich.body_source.startswith(':\n        """Three attempts') and "\n            solution = await" in rich.body_source
    assert not rich.body_source.rstrip().endswith("return")
    assert body_similarity(template.body_source, rich.body_source) < 0.5
    one_line = check_workflow(workflow("x = 1").replace("run_workflow(self):\n        ", "run_workflow(self): "),
                              bench.operators)
    assert one_line.body_source == ": x = 1"  # no return: the whole body
    in_text = check_workflow(workflow('a = await self.custom(instruction="return the result")\nreturn a'),
                             bench.operators)
    assert in_text.body_source.endswith('instruction="return the result")')  # stops at the statement, not the word


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


def test_a_checked_workflow_runs_concurrently():
    checked = check_workflow(RICH, get_benchmark("GSM8K").operators)

    def respond(body: dict) -> str:  # ScEnsemble reads a letter; everything else gets "ok"
        return "<solution_letter>A</solution_letter>" if "solution_letter" in body["messages"][-1]["content"] else "ok"

    async def both(server):
        config = ExecutorConfig(base_url=server.url, model="m", max_retries=0, request_timeout_s=20)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        bench = get_benchmark("GSM8K")
        try:
            contexts = [OperatorContext(client, bench, bench.trial_problem) for _ in range(2)]
            return await asyncio.gather(*(checked.run(c) for c in contexts)), contexts
        finally:
            await client.aclose()
            bench.close()

    with FakeOpenAIServer(respond) as server:
        outputs, contexts = asyncio.run(both(server))
        assert len(server.requests) == 12 and all(len(c.trace) == 6 for c in contexts)
    assert outputs == ["Best: unreachable | ok | ok | 2"] * 2  # no "s1" among the answers: the else branch


# ---------------------------------------------------------------- the original's idioms


ORIGINAL_INIT = '''class Workflow:
    def __init__(
        self,
        config,
        problem
    ) -> None:
        self.problem = problem
        self.config = create(config)
        self.custom = operator.Custom(self.config, self.problem)
        self.sc_ensemble = operator.ScEnsemble(self.config, self.problem)
        self.programmer = operator.Programmer(self.config, self.problem)
        self.review = operator.Review(self.config, self.problem)

    async def run_workflow(self):
        """
        This is a workflow graph.
        """
'''


def original(body: str) -> str:
    """The original template's constructor and docstring, then ``body``."""
    return ORIGINAL_INIT + textwrap.indent(textwrap.dedent(body).strip(), " " * 8) + "\n"


def echo_server(delay_s: float = 0.0, fail_on: str = "") -> FakeOpenAIServer:
    """A server that answers each request with its instruction (the prompt's first line)
    after ``delay_s``; an instruction containing ``fail_on`` gets HTTP 400 at once."""

    def respond(body: dict) -> Reply | Fault:
        first = body["messages"][-1]["content"].split("\n", 1)[0]
        if fail_on and fail_on in first:
            return Fault("status", status=400)
        return Reply(first, delay_s=delay_s)

    return FakeOpenAIServer(respond)


def test_the_original_template_is_accepted_and_runs(server):
    source = original('solution = await self.custom(instruction="Solve it step by step.")\n\nreturn solution')
    checked = check_workflow(source, get_benchmark("GSM8K").operators)
    assert list(checked.operators_used.values()) == ["Custom", "ScEnsemble", "Programmer", "Review"]
    assert checked.body_source.startswith(':\n        """\n        This is a workflow graph.\n        """')
    output, ctx = run_workflow(server, "GSM8K", checked, ["three"])
    assert output == "three" and len(server.requests) == 1


@pytest.mark.parametrize("arguments", ["config, self.problem", "self.config, problem", "config, problem"])
def test_operator_bindings_mix_config_and_problem_spellings(arguments):
    init = f"self.problem = problem\nself.config = create(config)\nself.custom = operator.Custom({arguments})"
    check_workflow(workflow("return 1", init), get_benchmark("GSM8K").operators)


def test_return_await_returns_the_operators_result(server):
    output, _ = run_workflow(server, "GSM8K", original("x = 'unused'\nreturn await self.review(pre_solution=x)"),
                             ["<review>ok</review><solution>reviewed</solution>"])
    assert output == "reviewed" and "Proposed solution:\nunused" in prompts(server)[0]


def test_self_problem_is_the_problem_text_the_operators_get(server):
    bench = get_benchmark("MATH")
    text = bench.trial_problem.input
    source = original("""
        plan = await self.custom(instruction=self.problem)
        note = f"Problem: {self.problem} / plan: {plan}"
        return [self.problem, note, len(self.problem)]
    """)
    output, _ = run_workflow(server, "MATH", source, ["P"])
    assert output == f"{text}\nProblem: {text} / plan: P\n{len(text)}"
    assert prompts(server)[0].startswith(text)


def test_gather_runs_its_calls_concurrently():
    source = original("""
        answers = await asyncio.gather(*[self.custom(instruction=f"call {i}") for i in range(6)])
        pair = await asyncio.gather(self.custom(instruction="left"), self.custom(instruction="right"))
        return answers + pair
    """)
    with echo_server(delay_s=0.5) as slow:
        start = time.perf_counter()
        output, ctx = run_workflow(slow, "GSM8K", check_workflow(source, get_benchmark("GSM8K").operators,
                                                                  max_range=8))
        elapsed = time.perf_counter() - start
        assert slow.max_in_flight == 6
    assert output.splitlines() == [f"call {i}" for i in range(6)] + ["left", "right"]  # in call order
    assert elapsed < 2.0, elapsed  # two rounds of 0.5 s; one call after another would take 4 s
    assert len(ctx.trace) == 8


def test_gather_tells_the_run_clock_how_many_parts_run_at_once(server, monkeypatch):
    from scoreflow.runclock import RunClock

    counts: list[int] = []
    original_branches = RunClock.branches

    def spy(self, count):
        counts.append(count)
        return original_branches(self, count)

    monkeypatch.setattr(RunClock, "branches", spy)
    source = original("xs = await asyncio.gather(*[self.custom() for _ in range(3)])\n"
                      "ys = await asyncio.gather(self.custom(), self.review(pre_solution=xs[0]))\nreturn ys")
    run_workflow(server, "GSM8K", source, limit=10.0)
    assert counts == [3, 2]
    run_workflow(server, "GSM8K", source)  # without a run clock gather runs all the same
    assert counts == [3, 2]


def test_gathered_calls_waiting_on_one_slot_still_spend_the_time_limit():
    """With one executor slot, one call is out while the others queue: the run is working, so
    its clock must not stop (it would if it did not know the gather's parts)."""
    source = original("xs = await asyncio.gather(*[self.custom(instruction=f'c{i}') for i in range(4)])\nreturn xs")
    bench = get_benchmark("GSM8K")
    checked = check_workflow(source, bench.operators, max_range=8)

    async def go(url: str) -> str:
        config = ExecutorConfig(base_url=url, model="m", max_retries=0, request_timeout_s=20, concurrency=1)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        try:
            return await run_with_limit(checked, OperatorContext(client, bench, bench.trial_problem), 0.8)
        finally:
            await client.aclose()

    with echo_server(delay_s=0.3) as slow:
        with pytest.raises(asyncio.TimeoutError):  # 4 x 0.3 s of the run's own requests > 0.8 s
            asyncio.run(go(slow.url))
    bench.close()


def test_a_failed_gathered_call_cancels_the_others_and_can_be_caught():
    source = original("""
        try:
            xs = await asyncio.gather(self.custom(instruction="slow one"), self.custom(instruction="fail now"),
                                      self.custom(instruction="slow two"))
            result = "not reached"
        except Exception as e:
            result = "caught: " + str(e)
        return result
    """)
    with echo_server(delay_s=3.0, fail_on="fail") as srv:
        start = time.perf_counter()
        output, ctx = run_workflow(srv, "GSM8K", source)
        elapsed = time.perf_counter() - start
        assert len(srv.requests) == 3
    assert output.startswith("caught: ") and "400" in output
    assert elapsed < 2.0, elapsed  # the slow siblings were cancelled, not awaited


def test_try_catches_an_operators_error_and_python_errors(server):
    source = original("""
        try:
            answer = await self.custom(instruction="refused")
        except Exception as e:
            answer = f"fallback after {e}"
        xs = [answer]
        try:
            picked = xs[3]
        except:
            picked = "index fallback"
        try:
            return "from the try body"
        except Exception:
            return "never"
    """)
    output, _ = run_workflow(server, "GSM8K", source, [Fault("status", status=400)])
    assert output == "from the try body"
    short = original("""
        try:
            answer = await self.custom(instruction="refused")
        except Exception as e:
            answer = f"fallback after {e}"
        xs = [answer]
        try:
            picked = xs[3]
        except:
            picked = "index fallback"
        return [answer, picked]
    """)
    output, _ = run_workflow(server, "GSM8K", short, [Fault("status", status=400)])
    first, second = output.split("\n")
    assert first.startswith("fallback after ") and "400" in first and second == "index fallback"


def test_names_assigned_in_try_and_handler():
    ops = get_benchmark("GSM8K").operators
    check_workflow(workflow("try:\n    x = await self.custom()\nexcept Exception:\n    x = 'b'\nreturn x"), ops)
    check_workflow(workflow("try:\n    return await self.custom()\nexcept Exception:\n    x = 'b'\nreturn x"), ops)
    check_workflow(workflow("try:\n    x = await self.custom()\nexcept Exception:\n    return 'b'\nreturn x"), ops)
    with pytest.raises(WorkflowRejected, match="name 'x' used before assignment"):
        check_workflow(workflow("try:\n    x = await self.custom()\nexcept Exception:\n    pass\nreturn x"), ops)
    with pytest.raises(WorkflowRejected, match="name 'y' used before assignment"):  # the body may fail before y
        check_workflow(workflow("try:\n    y = 'a'\n    x = await self.custom()\nexcept Exception:\n    x = y"), ops)


def test_string_methods_and_builtins(server):
    source = workflow("""
        words = "b,a,ccc".split(",")
        joined = "-".join(sorted(words))
        return [joined, max(words, key=len), min(words), max(words), min(3, 7), max(2.5, 1), sum([1, 2, 3]),
                sum([0.5, 1]), len(words), "  x  ".strip(), "..x..".strip("."), " y".lstrip(), "z ".rstrip(),
                "Ab".lower(), "Ab".upper(), "aXa".replace("a", "b"), sorted(words, reverse=True)[0],
                sorted(words, key=len, reverse=True)[0], str(sorted([3, 1, 2])), "".join([])]
    """)
    output, _ = run_workflow(server, "GSM8K", source)
    assert output.split("\n") == ["a-b-ccc", "ccc", "a", "ccc", "3", "2.5", "6", "1.5", "3", "x", "x", "y", "z",
                                  "ab", "AB", "bXb", "ccc", "ccc", "[1, 2, 3]", ""]
    assert server.requests == []


def test_string_method_and_builtin_type_errors_are_catchable(server):
    cases = {
        "x = max([])": "max() of an empty list",
        "x = max(['a', 1])": "max() needs all strings or all numbers",
        "x = sorted('abc')": "sorted() of one argument needs a list",
        "x = sum(['a'])": "sum() needs a list of numbers",
        "x = ','.join([1])": ".join() needs a list of strings",
        "x = [1]\ny = x.strip()": ".strip() needs a string, not list",
        "x = min([1], key=len)": "min(..., key=len) needs a list of strings",
    }
    for body, reason in cases.items():
        with pytest.raises(WorkflowRuntimeError, match=re.escape(reason)) as caught:
            run_workflow(server, "GSM8K", workflow(body))
        assert type(caught.value) is WorkflowRuntimeError  # not a limit: an except may catch it
        caught_source = workflow("try:\n" + textwrap.indent(body, "    ") + "\nexcept Exception as e:\n"
                                 "    return 'caught ' + str(e)")
        assert run_workflow(server, "GSM8K", caught_source)[0].startswith("caught line ")
    assert server.requests == []


def test_fstring_fields_names_subscripts_and_problem(server):
    source = original("""
        xs = ["first", "second"]
        parts = []
        for i in range(2):
            parts.append(f"{i}:{xs[i]}:{xs[-1]}:{xs[0]!s}")
        return f"{parts[0]} {parts[1]} [{self.problem}]"
    """)
    output, _ = run_workflow(server, "GSM8K", source)
    problem = get_benchmark("GSM8K").trial_problem.input
    assert output == f"0:first:second:first 1:second:second:first [{problem}]"


def test_max_range_is_a_parameter():
    ops = get_benchmark("MATH").operators
    eight = workflow("for _ in range(8):\n    x = await self.custom()\nys = [await self.custom() for _ in range(8)]")
    check_workflow(eight, ops, max_range=8)
    with pytest.raises(WorkflowRejected, match=r"range\(8\) exceeds 3"):
        check_workflow(eight, ops)  # the default stays 3 (the original's code rule)
    with pytest.raises(WorkflowRejected, match=r"range\(9\) exceeds 8"):
        check_workflow(workflow("for _ in range(9):\n    pass"), ops, max_range=8)
    for bad in (0, 9, True, 3.0):
        with pytest.raises(ValueError, match="max_range"):
            check_workflow(eight, ops, max_range=bad)
