"""The whole loop through scripts/loop.sh as a subprocess, on a smaller tiny setting:
SmolLM2-135M-Instruct as generator and local executor on CPU, two validation problems
with two workflows each, one epoch of Score-DPO training under `accelerate launch`,
inference on two test problems, and the report with its plots.

Everything is seeded and the executor is greedy, so the run is repeatable; the two
validation problems are ones on which the 135M executor solves some workflows and not
others (HumanEval/55 and /30), and the generation seed is one whose two workflows per
problem do not tie everywhere, so a preference pair exists to train on. (A change to the
prompt, grammar or sampler can move the draws: if this test then fails with "no
preference pairs", pick another seed; the no-pair error itself is tested in
test_optimize_cli.py.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from scoreflow.jsonio import read_json, read_jsonl
from scoreflow.report import PLOTS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tests"
STAGES = 5  # generate, evaluate, optimize (epoch 0); inference generate, evaluate (epoch 1)


def loop(workspace: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    sets = [
        f"workspace={workspace}", f"data_dir={data_dir}", f"cache_dir={CACHE}",
        "generation.k=2", "generation.chunk_problems=2",
        "generation.problem_ids=[HumanEval/55, HumanEval/30, HumanEval/2, HumanEval/45]",
        "datasets.HumanEval.n_pairs=2",
        "generation.seed=2",  # with k = 2, seeds 0 and 1 happen to give tied workflows (no pair); 2 does not
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(
        ["bash", "scripts/loop.sh", "HumanEval", "1", "config/tiny.yaml", *sets],
        cwd=ROOT, capture_output=True, text=True, timeout=2400, env=env,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(2400)  # the whole loop on 2 cores takes 10-15 min (the suite's default is 600 s)
def test_loop_trains_infers_reports_and_resumes(tmp_path, data_dir):
    workspace = tmp_path / "ws"
    done = loop(workspace, data_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    epoch0, epoch1 = workspace / "HumanEval" / "epoch_0", workspace / "HumanEval" / "epoch_1"
    for folder, stage in [(epoch0, "generate"), (epoch0, "evaluate"), (epoch1, "optimize"),
                          (epoch1, "inference_generate"), (epoch1, "inference_evaluate")]:
        assert read_json(folder / f"{stage}.manifest.json")["status"] == "complete", stage
    workflows = read_jsonl(epoch0 / "workflows.jsonl")
    assert sorted({w["problem_id"] for w in workflows}) == ["HumanEval/30", "HumanEval/55"] and len(workflows) == 4
    assert read_jsonl(epoch0 / "preferences.jsonl"), "the setting must yield pairs (see the module docstring)"
    training = read_json(epoch1 / "optimize.manifest.json")["training"]
    assert training["loss"] == "score_dpo" and training["steps"] == 2 and training["init_adapter"] is None
    assert (epoch1 / "adapter" / "adapter_config.json").is_file()
    inference = read_json(epoch1 / "inference_evaluate.manifest.json")["counts"]
    assert inference["test_problems"] == 2 and inference["subset"] is True

    # The report: the paper's table with our row, and three plots.
    report = workspace / "report"
    markdown = (report / "report.md").read_text()
    assert "| ScoreFlow (paper) | 86.0 |" in markdown
    rate = f"{100 * inference['solve_rate']:.1f}†"
    assert f"| **ScoreFlow, epoch 1 (ours)** | — | — | {rate} | — | — | — | — |" in markdown
    assert "| **ScoreFlow, epoch 1 (ours)** |" in done.stdout  # the loop ends with the table
    import matplotlib.image

    for name in PLOTS:
        image = matplotlib.image.imread(report / name)
        assert image.shape[1] > 300 and image[..., :3].std() > 0.01, name

    # Run again: every finished stage is skipped, nothing is rewritten.
    before = {p: digest(p) for p in (epoch0 / "scores.jsonl", epoch1 / "adapter" / "adapter_model.safetensors")}
    again = loop(workspace, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished") == STAGES
    assert {p: digest(p) for p in before} == before

    # A changed setting stops the loop at the first stage it would change, exit 2.
    changed = loop(workspace, data_dir, "generation.temperature=0.5")
    assert changed.returncode == 2
    assert "finished with a different config (generation.temperature changed)" in changed.stderr
    assert "loop.sh: HumanEval: generate, epoch 0 failed (exit 2)" in changed.stderr
    assert "== HumanEval: evaluate" not in changed.stdout


def test_loop_rejects_bad_arguments_before_running_anything(tmp_path):
    bad = [
        (["HumanEval", "two"], "EPOCHS must be a whole number"),
        (["HumanEval", "1", "missing.yaml"], "config file 'missing.yaml' not found"),
        (["HumanEval", "1", "config/tiny.yaml", "generation.k"], "expected KEY=VALUE"),
    ]
    for args, message in bad:
        done = subprocess.run(["bash", "scripts/loop.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "==" not in done.stdout
    wrong = subprocess.run(
        ["bash", "scripts/loop.sh", "HumanEval", "1", "config/tiny.yaml", f"workspace={tmp_path}", "generation.k=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert wrong.returncode == 2 and "generation.k: must be >= 1" in wrong.stderr
    assert "generate, epoch 0 failed" in wrong.stderr and not (tmp_path / "HumanEval").exists()
