"""perf/gpu_check.py: the tiny CPU run takes the GPU check's whole code path and prints every figure."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "perf" / "gpu_check.py"
FIGURES = (
    "model_params_b", "build_s", "pair_tokens",
    "score_dpo_trainer_build_s", "score_dpo_step_s", "score_dpo_peak_gib", "score_dpo_timed_steps",
    "score_dpo_precomputed_trainer_build_s", "score_dpo_precomputed_step_s", "score_dpo_precomputed_peak_gib",
    "score_dpo_precomputed_timed_steps",
    "sampler_tokens_per_s_k8", "sampler_completion_tokens", "sampler_s", "total_s",
)
LABELS = ("gpu", "torch", "transformers", "trl", "peft", "shape", "device", "dtype", "peak_memory_kind", "attention")


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env=env)


def printed_lines(stdout: str) -> dict[str, str]:
    """``name: value`` lines as a dict (each name printed once)."""
    pairs = [line.split(": ", 1) for line in stdout.splitlines() if ": " in line]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a figure printed twice: {names}"
    return dict(pairs)


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_figure() -> None:
    done = run_check("--tiny", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = printed_lines(done.stdout)
    for name in FIGURES:
        assert name in lines, f"{name} missing from:\n{done.stdout}"
        value = float(lines[name])
        assert math.isfinite(value) and value > 0, f"{name}: {lines[name]}"
    for name in LABELS:
        assert lines.get(name), f"{name} missing from:\n{done.stdout}"
    assert (lines["shape"], lines["device"], lines["dtype"]) == ("tiny", "cpu", "float32")
    assert lines["gpu"] == "none (cpu run)" and lines["peak_memory_kind"] == "process_max_rss"
    assert float(lines["pair_tokens"]) == 64  # prompt + <graph> + chosen words + </graph> + EOS
    assert float(lines["score_dpo_timed_steps"]) == float(lines["score_dpo_precomputed_timed_steps"]) == 3
    assert float(lines["sampler_completion_tokens"]) <= 8 * 16  # k = 8 samples of at most 16 new tokens


def test_no_cuda_device_fails_in_one_line() -> None:
    done = run_check("--device", "cuda", env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: no CUDA device is visible")
