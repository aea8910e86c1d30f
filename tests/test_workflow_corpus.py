"""The corpus of original-style workflows (``tests/data/original_style_workflows.py``): every
one is accepted with its benchmark's operators and loop bound, and runs through the
interpreter against the local OpenAI-compatible test server (code in the real sandbox).

One reply serves every operator (a thought, an answer, a review, a solution letter and a
code block defining both ``solve`` and the trial problem's ``add``), so what is asserted is
the interpreter's behaviour, not operator wording: outputs, and the number of requests.
"""

from __future__ import annotations

import ast
import asyncio
import re

import pytest

from benchmarks import get_benchmark
from scoreflow.config import ExecutorConfig, load_config
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.operators import OperatorContext, make_operator_sandbox
from scoreflow.workflow import CheckedWorkflow, WorkflowRejected, check_workflow
from tests.data.original_style_workflows import WORKFLOWS, CorpusWorkflow
from tests.fake_openai import FakeOpenAIServer

UNIVERSAL_REPLY = """<thought>A is 1 and B is 2, so A + B is 3.</thought>
<answer>3</answer>
<review>The solution is correct.</review>
<solution_letter>A</solution_letter>
<solution>
```python
def solve():
    return 3


def add(a, b):
    return a + b
```
</solution>"""

DATASETS = {"math": ("GSM8K", "MATH"), "qa": ("DROP", "HotpotQA"), "code": ("HumanEval", "MBPP")}
MAX_RANGE = {"math": 8, "qa": 8, "code": 3}  # the original's rules: graph size <= 8; code loops <= 3

# What the corpus must exercise (a regular expression over the workflow text, or a check of its tree).
IDIOMS: dict[str, str] = {
    "self.problem = problem": r"self\.problem = problem",
    "self.config = create(config)": r"self\.config = create\(config\)",
    "operator.X(self.config, self.problem)": r"operator\.\w+\(self\.config, self\.problem\)",
    "operator.X(config, problem)": r"operator\.\w+\(config, problem\)",
    "run_workflow docstring": r"async def run_workflow\(self\):\n\s+\"\"\"",
    "return await": r"return await self\.",
    "self.problem read": r"(=|\{)self\.problem\b",
    "gather of calls": r"asyncio\.gather\(\s*self\.",
    "gather of a comprehension": r"asyncio\.gather\(\*\[self\.",
    "join": r"\.join\(",
    "strip": r"\.strip\(\)",
    "lower": r"\.lower\(\)",
    "upper": r"\.upper\(\)",
    "replace": r"\.replace\(",
    "split": r"\.split\(\"",
    "max": r"\bmax\(",
    "min": r"\bmin\(",
    "sorted": r"\bsorted\(",
    "sum": r"\bsum\(",
    "len": r"\blen\(",
    "str": r"\bstr\(",
    "key=len": r"key=len",
    "f-string with a subscript or self.problem": r"f\"[^\"]*\{(self\.problem|\w+\[\w+\])\}",
    "try/except Exception": r"except Exception:",
    "bare except": r"except:",
    "except Exception as e": r"except Exception as e:",
    "range above 3": r"range\([4-8]\)",
    "if/else": r"\n\s+else:",
    "nested loops": r"for \w+ in range\(\d\):\n\s+for ",
}


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(lambda _body: UNIVERSAL_REPLY) as srv:
        yield srv


@pytest.fixture(scope="module")
def sandboxes():
    """One sandbox per family (Programmer's preloads sympy/numpy: slow to start, so shared)."""
    made = {family: make_operator_sandbox(get_benchmark(names[0]), get_benchmark(names[0]).sandbox_settings)
            for family, names in DATASETS.items()}
    yield made
    for sandbox in made.values():
        if sandbox is not None:
            sandbox.close()


def benchmark_for(entry: CorpusWorkflow, dataset: str):  # type: ignore[no-untyped-def]
    """The dataset's benchmark; code workflows that use Review get it as the configured extra operator
    (the original offers code datasets CustomCodeGenerate, ScEnsemble and Test only)."""
    if entry.family == "code" and "operator.Review(" in entry.source:
        return get_benchmark(dataset, load_config(None, [f"datasets.{dataset}.extra_operators=[Review]"]))
    return get_benchmark(dataset)


def checked(entry: CorpusWorkflow, dataset: str) -> CheckedWorkflow:
    return check_workflow(entry.source, benchmark_for(entry, dataset).operators, max_range=MAX_RANGE[entry.family])


def run_entry(server, sandbox, entry: CorpusWorkflow, dataset: str) -> tuple[str, OperatorContext, int]:
    """Run one workflow on the dataset's trial problem; returns (output, context, requests sent)."""
    bench = benchmark_for(entry, dataset)
    workflow = checked(entry, dataset)
    before = len(server.requests)

    async def go() -> tuple[str, OperatorContext]:
        config = ExecutorConfig(base_url=server.url, model="m", max_retries=0, request_timeout_s=20)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        context = OperatorContext(client, bench, bench.trial_problem, sandbox=sandbox)
        try:
            return await workflow.run(context), context
        finally:
            await client.aclose()

    try:
        output, context = asyncio.run(go())
    finally:
        bench.close()
    return output, context, len(server.requests) - before


ENTRY_IDS = [entry.name for entry in WORKFLOWS]


def test_the_corpus_is_large_distinct_and_covers_every_family():
    assert len(WORKFLOWS) >= 40
    assert len({e.name for e in WORKFLOWS}) == len(WORKFLOWS) == len({e.source for e in WORKFLOWS})
    per_family = {family: sum(e.family == family for e in WORKFLOWS) for family in DATASETS}
    assert min(per_family.values()) >= 10, per_family


def test_the_corpus_covers_every_idiom():
    missing = [idiom for idiom, pattern in IDIOMS.items() if not any(re.search(pattern, e.source) for e in WORKFLOWS)]
    assert not missing, missing


def test_every_operator_of_every_family_is_used():
    for family, names in DATASETS.items():
        offered = set(get_benchmark(names[0]).operators) | ({"Review"} if family == "code" else set())
        used = {name for e in WORKFLOWS if e.family == family for name in checked(e, names[0]).operators_used.values()}
        assert used == offered, (family, offered - used)


@pytest.mark.parametrize("entry", WORKFLOWS, ids=ENTRY_IDS)
def test_accepted_with_the_benchmarks_operators_and_loop_bound(entry: CorpusWorkflow):
    for dataset in DATASETS[entry.family]:
        bench = get_benchmark(dataset)
        assert not [b for b in bench.banned_substrings if b in entry.source]  # would fail generate's check
        checked(entry, dataset)
        bench.close()


def test_loops_above_three_need_the_math_and_qa_bound():
    wide = [e for e in WORKFLOWS if re.search(r"range\([4-8]\)", e.source)]
    assert wide and all(e.family in ("math", "qa") for e in wide)
    for entry in wide:
        with pytest.raises(WorkflowRejected, match=r"exceeds 3"):
            check_workflow(entry.source, get_benchmark(DATASETS[entry.family][0]).operators)


@pytest.mark.parametrize("entry", WORKFLOWS, ids=ENTRY_IDS)
def test_runs_through_the_interpreter(server, sandboxes, entry: CorpusWorkflow):
    dataset = DATASETS[entry.family][len(entry.name) % 2]  # alternate the family's two datasets
    output, context, sent = run_entry(server, sandboxes[entry.family], entry, dataset)
    assert output.strip()
    if entry.family == "code":
        assert "def add" in output
        compile(output, "<solution>", "exec")  # the returned code is Python (compiled, never run, here)
    if entry.requests is not None:
        assert sent == entry.requests, (entry.name, sent)
    calls = sum(c.llm_calls for c in context.trace)
    assert calls == sent and not any(c.error for c in context.trace)


def test_request_counts_are_asserted_for_most_entries():
    assert sum(e.requests is not None for e in WORKFLOWS) >= 40


def test_corpus_workflows_use_no_python_outside_the_language():
    """A guard on the corpus itself: plain Python that would run in the original (no exec here)."""
    for entry in WORKFLOWS:
        tree = ast.parse(entry.source)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom, ast.While))]
