"""generate.py: validity checks (against the local test server) and end-to-end generation
with SmolLM2-135M-Instruct on CPU, with and without the grammar, and with an adapter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import get_benchmark
from scoreflow.config import ExecutorConfig, load_config
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.generation import WorkflowValidator
from scoreflow.jsonio import read_json, read_jsonl
from scoreflow.workspace import Workspace
from tests.fake_openai import FakeOpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tests"

GOOD_MATH = """<graph>
class Workflow:
    def __init__(self, config, problem) -> None:
        self.custom = operator.Custom(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)

    async def run_workflow(self):
        solutions = []
        for _ in range(2):
            solution = await self.custom(instruction="Think step by step.")
            solutions.append(solution)
        final = await self.sc_ensemble(solutions=solutions)
        return final
"""


def letter_or(reply):  # type: ignore[no-untyped-def]
    """A responder: ScEnsemble gets a letter (an unreadable one fails the run, as the original),
    everything else ``reply`` (a string or a function of the request body)."""

    def respond(body: dict):  # type: ignore[no-untyped-def]
        if "<solution_letter>" in body["messages"][-1]["content"]:
            return Reply("<solution_letter>A</solution_letter>")
        return reply(body) if callable(reply) else Reply(reply)

    return respond


def verdicts(texts: list[str], dataset: str = "GSM8K", responder=None, **limits) -> list:
    bench = get_benchmark(dataset, load_config(None, [f"datasets.{dataset}.{k}={v}" for k, v in limits.items()]))
    with FakeOpenAIServer(letter_or(responder or "ok")) as server:

        async def go():
            client = OpenAIChatClient.from_config(
                ExecutorConfig(base_url=server.url, model="m", max_retries=0), cache=None, meter=None
            )
            try:
                validator = WorkflowValidator(bench, client, None, load_config())
                return await asyncio.gather(*(validator.check(t) for t in texts))
            finally:
                await client.aclose()

        return asyncio.run(go())


def test_validity_checks_in_order():
    template = "<graph>\n" + get_benchmark("GSM8K").template_workflow
    results = verdicts(
        [
            GOOD_MATH,
            "no graph at all",
            GOOD_MATH.replace("Think step by step.", "Give int(x) please."),
            GOOD_MATH.replace("for _ in range(2):", "for _ in range(9):"),
            template,
            GOOD_MATH + "</graph> trailing prose",
        ]
    )
    assert results[0].valid and results[5].valid
    assert results[1].reason.startswith("format:")
    assert results[2].reason == "banned: contains 'int('"
    assert results[3].reason.startswith("rejected:") and "range(9)" in results[3].reason
    assert results[4].reason.startswith("template: similarity 1.00 >= 0.8")


def test_trial_run_must_finish_in_time():
    """The slow workflow's calls take 1 s, its limit is 0.5 s; the quick one's replies show
    the executor is alive, so this is the workflow's timeout (alone, it would be a stall)."""
    slow = lambda body: Reply("3", delay_s=1.0 if "Think step by step" in str(body) else 0.0)  # noqa: E731
    quick = GOOD_MATH.replace("Think step by step.", "Answer at once.")
    late, fine = verdicts([GOOD_MATH, quick], responder=slow, trial_time_limit_s=0.5)
    assert late.reason == "trial: no result within 0.5 s of the workflow's own time" and fine.valid


def test_code_template_is_allowed_by_threshold():
    template = "<graph>\n" + get_benchmark("HumanEval").template_workflow
    reply = lambda body: Reply("```python\ndef add(a, b):\n    return a + b\n```")  # noqa: E731
    (verdict,) = verdicts([template], dataset="HumanEval", responder=reply)
    assert verdict.valid  # similarity threshold 1.1: no template check for code


# ---------------------------------------------------------------- end to end on CPU


def tiny(workspace: Path, data_dir: Path, *extra: str) -> list[str]:
    sets = [
        f"workspace={workspace}", f"data_dir={data_dir}", f"cache_dir={CACHE}",
        "generator.model=smollm2-135m-instruct", "generator.backend=transformers", "generator.dtype=float32",
        "generation.k=2", "generation.max_problems=2", "generation.max_new_tokens=256",
        "generation.max_resample_rounds=0", "executor.backend=local", "executor.model=smollm2-135m-instruct",
        "executor.max_tokens=48", *extra,
    ]
    return [arg for item in sets for arg in ("--set", item)]


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "generate.py", "--dataset", "HumanEval", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("grammar", [True, False])
def test_generation_end_to_end_on_cpu(tmp_path, data_dir, grammar):
    done = generate("--epoch", "0", *tiny(tmp_path, data_dir, f"generation.grammar={str(grammar).lower()}"))
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"grammar={grammar}: {done.stdout.strip()}")  # the valid rate, shown with -s
    records = read_jsonl(tmp_path / "HumanEval" / "epoch_0" / "workflows.jsonl")
    assert len(records) == 4 and [r["sample"] for r in records] == [0, 1, 0, 1]
    assert all(r["prompt"] == records[0]["prompt"] for r in records[:2])
    manifest = read_json(tmp_path / "HumanEval" / "epoch_0" / "generate.manifest.json")
    assert manifest["status"] == "complete" and manifest["counts"]["workflows"] == 4
    if grammar:
        assert all(r["valid"] for r in records), [r["reasons"] for r in records]
    else:
        assert all(r["valid"] or r["reasons"] for r in records)
    assert "workflows valid" in done.stdout
    again = generate("--epoch", "0", *tiny(tmp_path, data_dir))
    assert again.returncode == 2 and "already finished" in again.stderr


@pytest.mark.slow
def test_epoch_one_samples_with_the_previous_adapter(tmp_path, data_dir):
    sets = tiny(tmp_path, data_dir, "generation.grammar=true")
    missing = generate("--epoch", "1", *sets)
    assert missing.returncode == 2 and "optimize stage is missing" in missing.stderr

    from peft import LoraConfig, get_peft_model

    from scoreflow.models import load_causal_lm

    ws = Workspace(tmp_path, "HumanEval", 1)
    stage = ws.start("optimize", load_config())
    model, _ = load_causal_lm("smollm2-135m-instruct", CACHE)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(stage.output_path("adapter"))
    stage.finish(counts={"pairs": 0})

    done = generate("--epoch", "1", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_jsonl(tmp_path / "HumanEval" / "epoch_1" / "workflows.jsonl")
    assert len(records) == 4 and all(r["valid"] for r in records)


def test_a_trial_the_executor_failed_is_not_a_rejected_workflow():
    """A dead executor raises out of the trial (it says nothing about the workflow); checks
    repeat while it fails, and the failure streak ends them with a verdict never recorded."""
    from scoreflow.executor.client import ExecutorUnavailable, UsageMeter
    from scoreflow.scheduling import FailureStreak

    bench = get_benchmark("GSM8K")
    with FakeOpenAIServer() as server:
        url = server.url  # closed once the block ends: connections are refused

    async def go():
        client = OpenAIChatClient("m", base_url=url, max_retries=0)
        validator = WorkflowValidator(bench, client, None, load_config())
        try:
            with pytest.raises(ExecutorUnavailable, match="connection refused"):
                await validator.check(GOOD_MATH)
            streak = FailureStreak(2, UsageMeter(), "GSM8K epoch 0 generate")
            verdict = await validator.check_until_answered(GOOD_MATH, streak)
            return verdict, streak
        finally:
            await client.aclose()

    verdict, streak = asyncio.run(go())
    assert not verdict.valid and verdict.reason == "executor: stopped"
    assert streak.total == 2 and "connection refused" in str(streak.stopped)


@pytest.mark.slow
def test_generate_stops_when_the_executor_is_down_and_records_nothing(tmp_path, data_dir):
    with FakeOpenAIServer() as server:
        url = server.url  # nothing listens there any more
    sets = tiny(tmp_path, data_dir, "generation.grammar=true", "executor.backend=openai", "executor.model=m",
                f"executor.base_url={url}", "executor.max_retries=0", "generation.max_problems=1")
    done = generate("--epoch", "0", *sets)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "connection refused" in errors[0] and url in errors[0]
    workflows = tmp_path / "HumanEval" / "epoch_0" / "workflows.jsonl"
    assert not workflows.exists() or workflows.read_text() == ""  # no workflow "rejected" for the server's fault
    manifest = read_json(tmp_path / "HumanEval" / "epoch_0" / "generate.manifest.json")
    assert manifest["status"] == "running" and "connection refused" in manifest["sessions"][-1]["stopped"]


@pytest.mark.slow
def test_invalid_places_are_resampled_until_the_round_limit_or_the_time_cap(tmp_path, data_dir, tiny_dir):
    """A random 2-layer model never writes a valid workflow: every place is re-sampled for
    max_resample_rounds rounds (the original: 500), or until the per-chunk time cap."""
    base = [f"workspace={tmp_path}", f"data_dir={data_dir}", f"generator.model={tiny_dir}",
            "generator.backend=transformers", "generator.dtype=float32", "generation.k=2",
            "generation.max_problems=1", "generation.max_new_tokens=4", "executor.model=m",
            "executor.base_url=http://127.0.0.1:9/v1"]  # never reached: nothing gets to a trial
    done = generate("--epoch", "0", *[a for s in [*base, "generation.max_resample_rounds=3"] for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-2000:]
    counts = read_json(tmp_path / "HumanEval" / "epoch_0" / "generate.manifest.json")["counts"]
    assert counts["resample_rounds"] == 4 and counts["samples_this_run"] == 8 and counts["problems_without_valid"] == 1
    assert "(1 without one)" in done.stdout
    capped = [*base, f"workspace={tmp_path / 'capped'}", "generation.resample_time_limit_s=1"]
    done = generate("--epoch", "0", *[a for s in capped for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-2000:]
    counts = read_json(tmp_path / "capped" / "HumanEval" / "epoch_0" / "generate.manifest.json")["counts"]
    assert counts["chunks_stopped_by_resample_time_limit"] == 1 and 1 < counts["resample_rounds"] < 500
