"""The FTTT report on run folders written by hand in the layout ``python -m fttt.run``
writes, with numbers small enough to compute here; and ``scripts/fttt.sh``'s argument
handling and loop order (with a stand-in interpreter, no model is run)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fttt.config import load_fttt_config
from fttt.report import attempts_plot_name, curve_plot_name, main, solved_within
from scoreflow.config import to_dict
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import atomic_write_json, atomic_write_jsonl

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
DATASET = "GSM8K"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(i: int, success_at: int | None, strict_at: int | None = None, *, budget: int = 32,
           trials: int | None = None, generations: int = 1, tokens: int = 10,
           curve: list[bool] | None = None) -> dict[str, Any]:
    """A results.jsonl line as fttt.attempts.Counter.result builds it."""
    strict_at = success_at if strict_at is None else strict_at
    ok = success_at is not None and success_at <= budget
    ok_strict = strict_at is not None and strict_at <= budget
    if curve is not None:
        ok = ok_strict = curve[-1]
    return {
        "id": f"q{i}", "original_id": i, "success": ok, "success_strict": ok_strict,
        "success_at": success_at, "success_at_strict": strict_at,
        "paper_num_trials": trials if trials is not None else (success_at or budget),
        "counted_attempts": success_at or budget, "generations": generations, "answer_generations": generations,
        "generated_tokens": tokens, "final_verdict": ok, "seconds": 0.1, "curve": curve, "extra": {},
    }


def write_run(ws: Path, method: str, seed: int, results: list[dict[str, Any]], *, status: str = "complete",
              overrides: tuple[str, ...] = ()) -> Path:
    folder = ws / MODEL / DATASET / f"{method}_s{seed}"
    config = to_dict(load_fttt_config(None, (f"workspace={ws}", "model.name=HuggingFaceTB/SmolLM2-135M-Instruct",
                                             "model.device=cpu", *overrides)))
    atomic_write_json(folder / "run.manifest.json", {
        "stage": "run", "status": status, "dataset": DATASET, "method": method, "seed": seed,
        "model": config["model"]["name"], "config": config, "counts": {}, "wall_time_s": 1.5,
    })
    atomic_write_jsonl(folder / "results.jsonl", results)
    atomic_write_jsonl(folder / "attempts.jsonl", [])
    return folder


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """Best-of-N and FTTT × seeds 42, 85; Self-Consistency at budget 3 (a deviation);
    an unfinished FTTT+; and the hard filter (4 hard of 10)."""
    ws = tmp_path / "ws"
    write_run(ws, "best_of_n", 42, [record(0, 1, tokens=10), record(1, 3, generations=3, tokens=30),
                                    record(2, None, generations=32, tokens=320),
                                    record(3, None, generations=32, tokens=320)])
    write_run(ws, "best_of_n", 85, [record(0, 2, generations=2), record(1, None, generations=32),
                                    record(2, None, generations=32), record(3, None, generations=32)])
    # FTTT: free unanswered attempts make the strict index later than the paper's.
    write_run(ws, "fttt", 42, [record(0, 1, 1, trials=0), record(1, 5, 6, trials=4),
                               record(2, 31, 40, trials=30, generations=40), record(3, None, None, generations=50)])
    write_run(ws, "fttt", 85, [record(0, 2, 3, trials=1), record(1, None), record(2, None), record(3, None)])
    # Self-Consistency: success_at says 1 but the vote (curve) is what counts.
    write_run(ws, "self_consistency", 42,
              [record(0, 1, budget=3, curve=[False, True, False], generations=3),
               record(1, 1, budget=3, curve=[True, True, True], generations=3)],
              overrides=("methods.budget=3", "sampling.max_new_tokens=128"))
    write_run(ws, "fttt_plus", 42, [record(0, 1), record(1, None)], status="running")
    hard = ws / MODEL / DATASET / "hard"
    atomic_write_json(hard / "hard_ids.json", {"dataset": DATASET, "model": "x", "hard_ids": ["q0", "q1", "q2", "q3"],
                                               "correct_ids": [f"c{i}" for i in range(6)], "questions": 10})
    atomic_write_json(hard / "hard.manifest.json", {"stage": "hard", "status": "complete"})
    return ws


def report(ws: Path, *extra: str) -> tuple[dict[str, Any], str, Path]:
    assert main(["--set", f"workspace={ws}", *extra]) == 0
    out = ws / "report"
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), out


def test_success_is_the_mean_over_seeds_under_both_accountings(workspace: Path) -> None:
    data, markdown, _ = report(workspace)
    cells = data["cells"][f"{MODEL}/{DATASET}"]
    assert cells["best_of_n"]["success"]["values"] == [50.0, 25.0]
    assert cells["best_of_n"]["success"]["mean"] == pytest.approx(37.5)
    assert cells["best_of_n"]["success"]["std"] == pytest.approx(17.6777, abs=1e-3)
    assert cells["fttt"]["success"]["mean"] == pytest.approx(50.0)  # (75 + 25) / 2
    assert cells["fttt"]["success_strict"]["mean"] == pytest.approx(37.5)  # 40 > 32 fails strictly: (50 + 25) / 2
    assert cells["fttt"]["avg_trials"]["values"] == [pytest.approx(66 / 4), pytest.approx(97 / 4)]
    assert cells["best_of_n"]["avg_generated_tokens"]["values"][0] == pytest.approx(170.0)
    assert cells["self_consistency"]["success"] == {"mean": 50.0, "std": None, "n": 1, "seeds": [42], "values": [50.0]}
    assert cells["greedy"] == {"by_construction": True}
    assert "fttt_plus" not in cells  # unfinished
    lines = markdown.splitlines()
    header = lines.index("## Success within the budget, paper accounting (%)")
    table = lines[header:header + 16]
    assert f"| method | {MODEL} {DATASET} |" in table
    assert "| Best-of-N | 37.5 ± 17.7 (2) |" in table
    assert "| FTTT | 50.0 ± 35.4 (2) |" in table
    assert "| Self-Consistency | 50.0 (1) |" in table
    assert "| Revision | — |" in table
    assert "| Greedy | 0 (by construction) |" in table
    assert "| FTTT | 37.5 ± 17.7 (2) |" in markdown.split("strict accounting (%)")[1]
    assert "not comparable across methods" in markdown
    assert f"| {MODEL} | {DATASET} | 4 | 10 |" in markdown


def test_budget_curves_follow_first_success_and_the_recorded_vote(workspace: Path) -> None:
    data, markdown, _ = report(workspace)
    cells = data["cells"][f"{MODEL}/{DATASET}"]
    bon, fttt, sc = cells["best_of_n"], cells["fttt"], cells["self_consistency"]
    assert len(bon["curve"]) == 32 and len(sc["curve"]) == 3
    # Best-of-N s42 solves at 1 and 3, s85 at 2: b=1 (25+0)/2, b=2 (25+25)/2, b=3 (50+25)/2.
    assert bon["curve"][:3] == [12.5, 25.0, 37.5]
    # FTTT s42 paper indices 1, 5, 31; strict 1, 6, 40. s85: paper 2, strict 3.
    assert fttt["curve"][4] == pytest.approx((50 + 25) / 2)  # b = 5
    assert fttt["curve_strict"][4] == pytest.approx((25 + 25) / 2)
    assert fttt["curve_strict"][1] == pytest.approx(12.5)  # b = 2: s85's strict success is at 3
    assert fttt["curve"][31] == pytest.approx(50.0) and fttt["curve_strict"][31] == pytest.approx(37.5)
    assert sc["curve"] == [50.0, 100.0, 50.0] and sc["curve_strict"] == sc["curve"]
    assert solved_within({"curve": [False, True], "success_at": 1}, 1, strict=False) is False
    assert "first b beams of one full-width beam search" in markdown
    assert "| method | 1 | 2 | 3 | 4 | 8 | 16 | 32 |" in markdown
    assert "| Self-Consistency | 50.0 | 100.0 | 50.0 | — | — | — | — |" in markdown


def test_pngs_trial_dist_deviations_and_unfinished_runs(workspace: Path) -> None:
    data, markdown, out = report(workspace)
    for name in (curve_plot_name(MODEL, DATASET), attempts_plot_name(MODEL, DATASET)):
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
        assert f"![{name}]({name})" in markdown
    assert not list(out.glob(".*.tmp"))  # written atomically
    assert f"- {DATASET} ({MODEL}) FTTT s42: {{0: 1, 4: 1, 30: 1, 32: 1}}; unsolved 0" in markdown
    deviation_lines = [line for line in markdown.splitlines() if line.startswith("- ") and "=" in line]
    expected = f"- self_consistency_s42 {DATASET} ({MODEL}): sampling.max_new_tokens=128, methods.budget=3"
    assert deviation_lines == [expected]
    assert f"fttt_plus_s42 {DATASET} ({MODEL}), status running: (unfinished: 2 questions so far)" in markdown
    runs = {(r["method"], r["seed"]): r for r in data["runs"]}
    assert runs[("fttt_plus", 42)]["status"] == "running"
    assert runs[("self_consistency", 42)]["deviations"] == ["sampling.max_new_tokens=128", "methods.budget=3"]


def test_a_deviation_every_run_shares_is_listed_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for method in ("best_of_n", "fttt"):
        write_run(ws, method, 42, [record(0, 1, budget=2)], overrides=("methods.budget=2", "model.dtype=bfloat16"))
    assert main(["--set", f"workspace={ws}", "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").exists() and not (ws / "report").exists()
    markdown = (tmp_path / "elsewhere" / "report.md").read_text()
    assert "- every complete run: model.dtype=bfloat16, methods.budget=2" in markdown
    assert "- fttt_s42" not in markdown


def test_the_command_line(workspace: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fttt.report", "--set", f"workspace={workspace}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last == (f"fttt report: 6 runs found, 5 complete, datasets {DATASET}; 2 plots -> "
                    f"{workspace / 'report' / 'report.md'}")
    assert json.loads((workspace / "report" / "report.json").read_text())["runs"]


def test_no_finished_run_is_an_error(tmp_path: Path) -> None:
    expected = f"no finished FTTT run under {tmp_path / 'ws'}; run scripts/fttt.sh DATASET CONFIG first"
    with pytest.raises(ScoreFlowError, match="no finished FTTT run"):
        main(["--set", f"workspace={tmp_path / 'ws'}"])  # no folder at all
    write_run(tmp_path / "ws", "fttt", 42, [record(0, 1)], status="running")
    done = subprocess.run([sys.executable, "-m", "fttt.report", "--set", f"workspace={tmp_path / 'ws'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {expected}"


# ---------------------------------------------------------------- scripts/fttt.sh


def script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / "fttt.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_fttt_sh_rejects_bad_arguments(tmp_path: Path) -> None:
    none = script()
    assert none.returncode != 0 and "scripts/fttt.sh DATASET [CONFIG]" in none.stderr
    unknown = script("NoSuchSet")
    assert unknown.returncode != 0 and "unknown dataset 'NoSuchSet'" in unknown.stderr
    missing = script("GSM8K", str(tmp_path / "missing.yaml"))
    assert missing.returncode != 0 and "not found" in missing.stderr
    config = tmp_path / "c.yaml"
    config.write_text("seeds: [1]\n")
    assert script("GSM8K", str(config), "notakeyvalue").returncode != 0
    assert script("--help").returncode == 0


def test_fttt_sh_runs_each_method_for_each_seed_in_order(tmp_path: Path) -> None:
    """A stand-in interpreter logs the commands (the config is read by the real one)."""
    log = tmp_path / "log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\necho "$*" >> {log}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "c.yaml"
    config.write_text(f"seeds: [7, 8]\ndata_dir: {tmp_path / 'data'}\nworkspace: {tmp_path / 'ws'}\n")
    done = script("GSM8K", str(config), "methods.budget=2", env={"PYTHON": str(fake)})
    assert done.returncode == 0, done.stderr
    common = f"--config {config} --set methods.budget=2"
    lines = log.read_text().splitlines()
    assert lines[0] == f"-m data.prepare --suite fttt --dataset GSM8K {common}"
    assert lines[1] == f"-m fttt.hard --dataset GSM8K {common} --skip-finished"
    runs = [(line.split()[3], line.split()[7]) for line in lines[2:-1]]
    assert runs == [("revision", "7"), ("beam_search", "7"), ("best_of_n", "7"), ("best_of_n", "8"),
                    ("self_refine", "7"), ("self_refine", "8"), ("self_consistency", "7"), ("self_consistency", "8"),
                    ("fttt", "7"), ("fttt", "8"), ("fttt_plus", "7"), ("fttt_plus", "8")]
    assert all(line.endswith("--skip-finished") for line in lines[2:-1])
    assert lines[-1] == f"-m fttt.report {common}"
    (tmp_path / "data" / "GSM8K").mkdir(parents=True)
    (tmp_path / "data" / "GSM8K" / "manifest.json").write_text("{}")
    log.unlink()
    assert script("GSM8K", str(config), env={"PYTHON": str(fake)}).returncode == 0
    assert "data.prepare" not in log.read_text()  # prepared already
