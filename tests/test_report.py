"""The report: the paper's table layout with our rows, per-epoch detail, cost, plots.

Workspaces here are written through the real Workspace API with the counts the
stages record; tests/test_loop.py reports on a workspace the real scripts wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scoreflow.config import Config, load_config
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import atomic_write_jsonl
from scoreflow.report import PAPER_COLUMNS, PLOTS, collect, render_markdown, write_report
from scoreflow.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent


def usage(tokens: int, cost: float) -> dict:
    return {"executor": {"calls": tokens // 100, "total_tokens": tokens, "cost_usd": cost}}


def finished_epoch(root: Path, dataset: str, epoch: int, *, scores: list[float], solve_rate: float | None = None,
                   subset: bool = False, judged: float | None = None, loss: str | None = None) -> None:
    """One epoch as the stages leave it: generate, evaluate (+ scores.jsonl), optionally
    the optimize manifest that trained this epoch's adapter, and inference."""
    ws = Workspace(root, dataset, epoch)
    config = Config()
    ws.start("generate", config).finish(counts={"workflows": len(scores), "valid": len(scores)}, usage=usage(1000, 0.01))
    run = ws.start("evaluate", config)
    atomic_write_jsonl(ws.path("scores.jsonl"), ({"problem_id": f"p{i // 2}", "sample": i % 2, "run": 0, "score": s} for i, s in enumerate(scores)))
    prefs = {"pairs_available": 1, "pairs_sampled": 4}
    run.finish(counts={"mean_score": sum(scores) / len(scores), "preferences": prefs}, usage=usage(3000, 0.03))
    if loss is not None:
        ws.start("optimize", config).finish(
            counts={"pairs": 4, "steps": 4},
            training={"loss": loss, "from_epoch": epoch - 1, "steps": 4, "final_loss": 0.6, "reward_accuracy": 0.75},
        )
    if solve_rate is not None:
        ws.start("inference_generate", config).finish(usage=usage(500, 0.005))
        counts = {"solve_rate": solve_rate, "test_problems": 3 if subset else 131, "subset": subset}
        if judged is not None:
            counts["judge_solve_rate"] = judged
        ws.start("inference_evaluate", config).finish(counts=counts, usage=usage(700, 0.007))


def test_our_rows_sit_beside_the_papers_in_its_layout(tmp_path):
    finished_epoch(tmp_path, "HumanEval", 0, scores=[0.0, 1.0, 1.0, 0.0], solve_rate=0.5)
    finished_epoch(tmp_path, "HumanEval", 1, scores=[1.0, 1.0, 0.5, 0.0], loss="score_dpo")
    finished_epoch(tmp_path, "HumanEval", 2, scores=[1.0, 1.0, 1.0, 0.0], solve_rate=0.9, loss="score_dpo")
    finished_epoch(tmp_path, "MATH", 0, scores=[0.0, 0.0], solve_rate=0.25, subset=True, judged=0.5)
    markdown = render_markdown(collect(tmp_path), tmp_path)
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert header == "| method | " + " | ".join(PAPER_COLUMNS) + " | avg |"
    assert "| ScoreFlow (paper) | 86.0 | 86.2 | 95.9 | 84.7 | 94.6 | 64.4 | 85.3 |" in lines
    assert "| MedPrompt (paper) | 74.4 | 83.0 | 92.1 | 69.2 | 88.1 | 53.7 | 76.8 |" in lines  # the paper's own average
    assert "| DPO (paper, ablation) | 84.1 | 84.2 | 95.9 | 82.9 | 91.7 | 60.4 | 83.2 |" in lines
    # The untrained generator (epoch 0) and the trained one (epoch 2) are separate rows;
    # a subset run is marked; MATH's headline is the judge's rate, the exact one beside it.
    assert "| **untrained generator, epoch 0 (ours)** | — | — | 50.0 | — | — | 50.0† (exact 25.0) | — |" in lines
    assert "MATH, DROP, HotpotQA: the judge's solve rate, as the paper reports them" in markdown
    assert "| **ScoreFlow, epoch 2 (ours)** | — | — | 90.0 | — | — | — | — |" in lines
    assert "† MATH epoch 0: 3 problems" in markdown
    epoch_rows = [line for line in lines if line.startswith("| HumanEval | ")]
    assert epoch_rows[0].startswith("| HumanEval | 0 | untrained generator | 4/4 | 0.500 | 1 / 4 | — | 50.0% |")
    assert "score_dpo from epoch 0: 4 steps, final loss 0.600, reward acc 0.75" in epoch_rows[1]
    # optimization cost = generate + evaluate of every epoch; inference separately
    assert "| HumanEval | 120 | 12,000 | 0.1200 | 24 | 2,400 | 0.0240 |" in lines


def test_average_needs_all_six_datasets_and_methods_follow_the_loss(tmp_path):
    for dataset in PAPER_COLUMNS:
        finished_epoch(tmp_path, dataset, 1, scores=[0.5, 0.5], solve_rate=0.5, loss="dpo")
    markdown = render_markdown(collect(tmp_path), tmp_path)
    assert "| **DPO, epoch 1 (ours)** | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |" in markdown


def test_judged_datasets_head_with_the_judge_and_code_and_gsm8k_stay_exact(tmp_path):
    for dataset in PAPER_COLUMNS:
        judged = 0.8 if dataset in {"MATH", "DROP", "HotpotQA", "GSM8K"} else None  # GSM8K: never headline
        finished_epoch(tmp_path, dataset, 0, scores=[0.5, 0.5], solve_rate=0.5, judged=judged)
    finished_epoch(tmp_path, "DROP", 1, scores=[0.5, 0.5], solve_rate=0.25, loss="score_dpo")  # no judge recorded
    markdown = render_markdown(collect(tmp_path), tmp_path)
    # columns: HotpotQA, DROP, HumanEval, MBPP, GSM8K, MATH; the average is over the headlines
    row = ("| **untrained generator, epoch 0 (ours)** | 80.0 (exact 50.0) | 80.0 (exact 50.0) | 50.0 | 50.0 | 50.0 "
           "| 80.0 (exact 50.0) | 65.0 |")
    assert row in markdown.splitlines()
    assert "| **ScoreFlow, epoch 1 (ours)** | — | 25.0 | — | — | — | — | — |" in markdown
    drop_epoch0 = next(line for line in markdown.splitlines() if line.startswith("| DROP | 0 |"))
    assert "| judged 80.0%, exact 50.0% |" in drop_epoch0
    gsm_epoch0 = next(line for line in markdown.splitlines() if line.startswith("| GSM8K | 0 |"))
    assert "| 50.0% |" in gsm_epoch0


def test_report_writes_markdown_and_three_pngs(tmp_path):
    import matplotlib.image

    finished_epoch(tmp_path, "HumanEval", 0, scores=[0.0, 1.0, 0.5, 0.0], solve_rate=0.5)
    finished_epoch(tmp_path, "HumanEval", 1, scores=[1.0, 1.0, 0.5, 0.0], solve_rate=0.75, loss="score_dpo")
    markdown, written = write_report(tmp_path)
    assert [p.name for p in written] == ["report.md", *PLOTS]
    assert (tmp_path / "report" / "report.md").read_text() == markdown
    for path in written[1:]:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.01  # not a blank canvas
    assert not list((tmp_path / "report").glob(".*tmp*"))


def test_empty_or_missing_workspace_is_a_one_line_error(tmp_path):
    with pytest.raises(ScoreFlowError, match="no such workspace folder"):
        collect(tmp_path / "nowhere")
    Workspace(tmp_path, "GSM8K", 0).start("generate", Config())  # running, not finished
    with pytest.raises(ScoreFlowError, match="no finished stage"):
        collect(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "scoreflow.report", "--workspace", str(tmp_path / "nowhere")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1


def test_report_finds_the_workspace_through_the_config(tmp_path):
    finished_epoch(tmp_path, "DROP", 0, scores=[0.2, 0.4], solve_rate=0.3)
    config = load_config(None, [f"workspace={tmp_path}"])
    done = subprocess.run(
        [sys.executable, "-m", "scoreflow.report", "--set", f"workspace={config.workspace}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| **untrained generator, epoch 0 (ours)** | — | 30.0 |" in done.stdout
    assert (tmp_path / "report" / "solve_rate_per_epoch.png").is_file()
