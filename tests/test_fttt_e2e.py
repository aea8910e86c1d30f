"""FTTT end to end on the tiny setting (config/fttt_tiny.yaml) through the real CLIs:
SmolLM2-135M-Instruct on CPU, three easy HumanEval questions judged in the sandbox, the
greedy hard-question filter, every method at budget 2, the report with its plots; and a
run killed mid-way that resumes without redoing its finished questions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scoreflow.jsonio import read_json, read_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tests"
METHODS = ("revision", "beam_search", "best_of_n", "self_refine", "self_consistency", "fttt", "fttt_plus")
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def sets(tmp_path: Path, *more: str) -> list[str]:
    return [f"workspace={tmp_path / 'ws'}", f"data_dir={tmp_path / 'data'}", f"cache_dir={CACHE}", *more]


def module(name: str, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", name, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def with_sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.timeout(2700)  # about 12-20 min on 2 cores
def test_every_method_runs_end_to_end_and_reports(tmp_path):
    overrides = sets(tmp_path, "methods.budget=2")
    done = subprocess.run(["bash", "scripts/fttt.sh", "HumanEval", "config/fttt_tiny.yaml", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=2700, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    model_dir = tmp_path / "ws" / "smollm2-135m-instruct" / "HumanEval"
    hard = read_json(model_dir / "hard" / "hard_ids.json")
    assert hard["questions"] == 3 and hard["model"] == "smollm2-135m-instruct" and hard["split_sha256"]
    assert set(hard["hard_ids"]) | set(hard["correct_ids"]) == {"HumanEval/42", "HumanEval/35", "HumanEval/2"}
    assert hard["hard_ids"], "the tiny questions must include ones greedy gets wrong (see config/fttt_tiny.yaml)"
    greedy = read_jsonl(model_dir / "hard" / "results.jsonl")
    assert [r["final_verdict"] is True for r in greedy] == [q in hard["correct_ids"] for q in
                                                            ("HumanEval/42", "HumanEval/35", "HumanEval/2")]

    n_hard = len(hard["hard_ids"])
    for method in METHODS:
        folder = model_dir / f"{method}_s42"
        manifest = read_json(folder / "run.manifest.json")
        assert manifest["status"] == "complete" and manifest["method"] == method, method
        assert manifest["sessions"][0].get("sandbox_isolation") == "strict", method  # code ran in the sandbox
        results = read_jsonl(folder / "results.jsonl")
        assert sorted(r["id"] for r in results) == sorted(hard["hard_ids"]), method
        attempts = read_jsonl(folder / "attempts.jsonl")
        for result in results:
            mine = [a for a in attempts if a["question_id"] == result["id"]]
            assert len(mine) == result["generations"], method
            assert sum(a["counted"] for a in mine) == result["counted_attempts"], method
            assert sum(a["new_tokens"] for a in mine) == result["generated_tokens"], method
            answers = [a for a in mine if a["kind"] != "reflection"]
            if method == "self_consistency":
                assert len(answers) == 2 and len(result["curve"]) == 2
            elif method == "beam_search":
                assert len(answers) <= 2 and result["extra"]["beam_width"] == 2
            elif result["success"]:
                assert answers[-1]["verdict"] is True and result["success_at"] <= 2
            elif method in ("revision", "best_of_n"):
                assert len(answers) == 2 and not any(a["verdict"] for a in answers)
            elif method == "self_refine":
                assert answers[0]["kind"] == "draft" and not answers[0]["checked"] and len(answers) == 3
        if method in ("fttt", "fttt_plus"):
            failures = [a for a in attempts if a["kind"] == "attempt" and a["counted"] and a["verdict"] is False]
            trained = [a for a in failures if a["loss"] is not None]
            assert trained, f"{method}: a counted failure takes a training step and records its loss"
        if method == "fttt_plus":
            assert any(a["kind"] == "reflection" for a in attempts)
        assert manifest["counts"]["questions"] == n_hard

    report = tmp_path / "ws" / "report"
    markdown = (report / "report.md").read_text()
    for name in ("Revision", "Beam Search", "Best-of-N", "Self-Refine", "Self-Consistency", "FTTT", "FTTT+"):
        assert f"| {name} |" in markdown
    import matplotlib.image

    for png in ("success_vs_budget_smollm2-135m-instruct_HumanEval.png", "attempts_smollm2-135m-instruct_HumanEval.png"):
        image = matplotlib.image.imread(report / png)
        assert image.shape[0] > 200 and image.shape[1] > 300

    # Re-running the loop redoes nothing.
    again = subprocess.run(["bash", "scripts/fttt.sh", "HumanEval", "config/fttt_tiny.yaml", *overrides],
                           cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already finished") == 1 + len(METHODS)


@pytest.mark.timeout(1500)
def test_a_killed_run_resumes_without_redoing_finished_questions(tmp_path):
    assert module("data.prepare", "--suite", "fttt", "--dataset", "HumanEval",
                  *with_sets(sets(tmp_path))).returncode == 0
    args = ["--method", "best_of_n", "--dataset", "HumanEval", "--seed", "42", "--config", "config/fttt_tiny.yaml",
            *with_sets(sets(tmp_path, "tasks.use_hard_filter=false", "methods.budget=2", "sampling.max_new_tokens=64"))]
    folder = tmp_path / "ws" / "smollm2-135m-instruct" / "HumanEval" / "best_of_n_s42"
    process = subprocess.Popen([sys.executable, "-m", "fttt.run", *args], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if (folder / "results.jsonl").exists() and read_jsonl(folder / "results.jsonl"):
            break
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = read_jsonl(folder / "results.jsonl")
    assert len(first) == 1 and read_json(folder / "run.manifest.json")["status"] == "running"

    done = module("fttt.run", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    results = read_jsonl(folder / "results.jsonl")
    assert results[0] == first[0] and [r["id"] for r in results] == ["HumanEval/42", "HumanEval/35", "HumanEval/2"]
    attempts = read_jsonl(folder / "attempts.jsonl")
    assert {a["question_id"] for a in attempts} == {r["id"] for r in results}
    assert all(sum(a["question_id"] == r["id"] for a in attempts) == r["generations"] for r in results)
    manifest = read_json(folder / "run.manifest.json")
    assert manifest["status"] == "complete" and len(manifest["sessions"]) == 2
    assert manifest["usage"]["generations"] == sum(r["generations"] for r in results)


@pytest.mark.timeout(900)
def test_an_unreachable_judge_stops_the_run_with_one_line_and_records_nothing(tmp_path):
    """The judge's failure is not a verdict: exit 2 naming the URL, no question recorded,
    the manifest still running with the reason, so re-running resumes."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: nothing listens there
    assert module("data.prepare", "--suite", "fttt", "--dataset", "HumanEval",
                  *with_sets(sets(tmp_path))).returncode == 0
    url = f"http://127.0.0.1:{port}"
    done = module("fttt.run", "--method", "best_of_n", "--dataset", "HumanEval", "--seed", "42",
                  "--config", "config/fttt_tiny.yaml",
                  *with_sets(sets(tmp_path, "tasks.use_hard_filter=false", "methods.budget=1",
                                  "sampling.max_new_tokens=48", f"judge.url={url}", "judge.attempts=2")))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0], done.stderr[-2000:]
    folder = tmp_path / "ws" / "smollm2-135m-instruct" / "HumanEval" / "best_of_n_s42"
    assert not (folder / "results.jsonl").exists() or read_jsonl(folder / "results.jsonl") == []
    manifest = read_json(folder / "run.manifest.json")
    assert manifest["status"] == "running" and url in manifest["sessions"][-1]["stopped"]
