"""The real scripts chained as subprocesses on CPU with SmolLM2-135M-Instruct as generator
and local executor: generate -> evaluate on a few HumanEval problems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scoreflow.jsonio import read_json, read_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tests"


def script(name: str, workspace: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    sets = [
        f"workspace={workspace}", f"data_dir={data_dir}", f"cache_dir={CACHE}",
        "generator.model=smollm2-135m-instruct", "generator.backend=transformers", "generator.dtype=float32",
        "generation.k=2", "generation.inference_k=1", "generation.max_problems=2", "generation.max_new_tokens=256",
        "generation.grammar=true", "generation.max_resample_rounds=0",
        "executor.backend=local", "executor.model=smollm2-135m-instruct", "executor.max_tokens=64",
        "evaluation.vali_num=2", "datasets.HumanEval.test_max_rounds=1",  # the original's 10 repairs: tested in test_operators_original
    ]
    cmd = [sys.executable, name, "--dataset", "HumanEval", *args]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.mark.timeout(1800)  # two stages of a 135M model on 2 cores: 8-12 min (the suite's default is 600 s)
def test_generate_then_evaluate_with_the_local_executor(tmp_path, data_dir):
    generated = script("generate.py", tmp_path, data_dir, "--epoch", "0")
    assert generated.returncode == 0, generated.stderr[-2000:]
    evaluated = script("evaluate.py", tmp_path, data_dir, "--epoch", "0")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    epoch = tmp_path / "HumanEval" / "epoch_0"
    valid = [w for w in read_jsonl(epoch / "workflows.jsonl") if w["valid"]]
    scores = read_jsonl(epoch / "scores.jsonl")
    assert len(scores) == 2 * len(valid) and valid
    assert all(0.0 <= s["score"] <= 1.0 for s in scores)
    manifest = read_json(epoch / "evaluate.manifest.json")
    assert manifest["usage"]["executor"]["calls"] >= len(scores)
    assert "mean score" in evaluated.stdout and "executor" in evaluated.stdout
    print(evaluated.stdout)
