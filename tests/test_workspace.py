"""Epoch workspace: stage manifests, resumable record logs, refusals and atomic files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scoreflow.config import Config, load_config
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import JsonlLog, atomic_write_json, read_json, read_jsonl
from scoreflow.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent


def test_stage_lifecycle_writes_manifest_and_records(tmp_path):
    ws = Workspace(tmp_path, "HumanEval", 0)
    run = ws.start("generate", Config())
    assert ws.manifest("generate")["status"] == "running"
    run.log("workflows.jsonl").append_many([{"problem_id": "p1", "sample": 0}, {"problem_id": "p1", "sample": 1}])
    manifest = run.finish(counts={"workflows": 2}, usage={"prompt_tokens": 10, "cost_usd": 0.0})
    assert manifest["status"] == "complete" and ws.is_complete("generate")
    saved = ws.manifest("generate")
    assert saved["counts"] == {"workflows": 2} and saved["config"]["generation"]["k"] == 8
    assert saved["code_version"] and saved["started_at"] <= saved["finished_at"]
    assert read_jsonl(tmp_path / "HumanEval" / "epoch_0" / "workflows.jsonl")[1]["sample"] == 1


def test_finished_stage_needs_force(tmp_path):
    ws = Workspace(tmp_path, "MBPP", 1)
    run = ws.start("generate", Config())
    run.log("workflows.jsonl").append({"k": 1})
    run.finish()
    with pytest.raises(ScoreFlowError, match="already finished.*--force"):
        ws.start("generate", Config())
    assert read_jsonl(ws.path("workflows.jsonl")) == [{"k": 1}]
    rerun = ws.start("generate", Config(), force=True)
    assert not ws.path("workflows.jsonl").exists()
    assert rerun.log("workflows.jsonl").read() == []


def test_out_of_order_stage_says_what_is_missing(tmp_path):
    ws = Workspace(tmp_path, "GSM8K", 0)
    with pytest.raises(ScoreFlowError) as info:
        ws.require("generate")
    message = str(info.value)
    assert "generate stage is missing" in message
    assert "python generate.py --dataset GSM8K --task optimize --epoch 0" in message
    ws.start("generate", Config())
    with pytest.raises(ScoreFlowError, match="generate stage is unfinished"):
        ws.require("generate")
    with pytest.raises(ScoreFlowError, match="optimize.py --dataset GSM8K --epoch 1"):
        Workspace(tmp_path, "GSM8K", 2).require("optimize")


def test_resume_keeps_records_and_refuses_a_changed_config(tmp_path):
    ws = Workspace(tmp_path, "DROP", 0)
    run = ws.start("evaluate", Config())
    run.log("scores.jsonl").append({"key": "a"})
    # the process dies here; a new one resumes
    resumed = ws.start("evaluate", load_config(None, ["executor.concurrency=4"]))
    assert resumed.resumed and resumed.log("scores.jsonl").keys(lambda r: r["key"]) == {"a"}
    with pytest.raises(ScoreFlowError, match=r"different config \(evaluation.vali_num changed\)"):
        ws.start("evaluate", load_config(None, ["evaluation.vali_num=2"]))


def test_stray_outputs_are_never_overwritten(tmp_path):
    ws = Workspace(tmp_path, "MATH", 0)
    ws.dir.mkdir(parents=True)
    ws.path("workflows.jsonl").write_text('{"mine": true}\n')
    with pytest.raises(ScoreFlowError, match="exists but no generate manifest"):
        ws.start("generate", Config())
    assert ws.path("workflows.jsonl").read_text() == '{"mine": true}\n'


def test_negative_epoch_is_rejected(tmp_path):
    with pytest.raises(ScoreFlowError, match="--epoch"):
        Workspace(tmp_path, "MATH", -1)


def test_jsonl_log_drops_a_torn_tail_and_reports_corruption(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')  # a writer killed mid-line
    log = JsonlLog(path)
    assert [r["a"] for r in log.read()] == [1, 2]
    log.append({"a": 4})
    log.close()
    assert [r["a"] for r in read_jsonl(path)] == [1, 2, 4]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ScoreFlowError, match=r"log.jsonl:2: malformed JSON record"):
        JsonlLog(path).read()
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ScoreFlowError, match=r"log.jsonl:2: expected a JSON object"):
        read_jsonl(path)


def test_rewrite_is_atomic_and_sorted(tmp_path):
    log = JsonlLog(tmp_path / "s.jsonl")
    log.append_many([{"k": 2}, {"k": 1}])
    log.rewrite(sorted(log.read(), key=lambda r: r["k"]))
    assert [r["k"] for r in log.read()] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["s.jsonl"]


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """A group sharing a workspace can read its artifacts (mkstemp alone makes them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    target = tmp_path / "m.json"
    atomic_write_json(target, {"n": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask


def test_killed_writer_leaves_old_or_new_file(tmp_path):
    """SIGKILL in the middle of many atomic rewrites never leaves a partial JSON file."""
    target = tmp_path / "m.json"
    atomic_write_json(target, {"n": -1, "pad": "x" * 100_000})
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from scoreflow.jsonio import atomic_write_json
        n = 0
        while True:
            atomic_write_json({str(target)!r}, {{"n": n, "pad": "x" * 100_000}})
            n += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(20):
            data = read_json(target)  # always a whole file
            assert len(data["pad"]) == 100_000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(read_json(target)["pad"]) == 100_000
    leftovers = [p for p in tmp_path.iterdir() if p.name != "m.json"]
    assert all(p.name.endswith(".tmp") for p in leftovers)


def test_finished_with_skips_only_the_same_config(tmp_path):
    ws = Workspace(tmp_path, "HumanEval", 0)
    config = Config()
    assert not ws.finished_with("generate", config)  # missing
    run = ws.start("generate", config)
    assert not ws.finished_with("generate", config)  # running: resume, not skip
    run.finish()
    assert ws.finished_with("generate", config)
    speedier = load_config(None, ["executor.concurrency=8"])  # a speed knob is not a change
    assert ws.finished_with("generate", speedier)
    with pytest.raises(ScoreFlowError, match=r"finished with a different config \(generation.k changed\).*--force"):
        ws.finished_with("generate", load_config(None, ["generation.k=2"]))


def test_skip_finished_flag_on_the_scripts(tmp_path):
    config = load_config(None, [f"workspace={tmp_path}"])
    ws = Workspace(tmp_path, "HumanEval", 0)
    ws.start("generate", config).finish()
    Workspace(tmp_path, "HumanEval", 1).start("optimize", config).finish()

    def script(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, *args, "--dataset", "HumanEval", "--set", f"workspace={tmp_path}"]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    skipped = script("generate.py", "--epoch", "0", "--skip-finished")
    assert skipped.returncode == 0 and "generate already finished" in skipped.stdout and "skipped" in skipped.stdout
    trained = script("optimize.py", "--epoch", "0", "--skip-finished")  # its manifest lives in epoch 1
    assert trained.returncode == 0 and "optimize already finished" in trained.stdout
    changed = script("generate.py", "--epoch", "0", "--skip-finished", "--set", "generation.k=3")
    assert changed.returncode == 2 and "different config (generation.k changed)" in changed.stderr
    both = script("generate.py", "--epoch", "0", "--skip-finished", "--force")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_a_key_added_by_a_newer_version_reads_as_its_default(tmp_path):
    ws = Workspace(tmp_path, "HumanEval", 0)
    ws.start("generate", Config()).finish()
    manifest = ws.manifest("generate")
    del manifest["config"]["training"]["gradient_checkpointing"]  # as written before the key existed
    atomic_write_json(ws.manifest_path("generate"), manifest)
    assert ws.finished_with("generate", Config())
    with pytest.raises(ScoreFlowError, match="training.gradient_checkpointing changed"):
        ws.finished_with("generate", load_config(None, ["training.gradient_checkpointing=false"]))


def test_manifest_names_the_sandbox_isolation_code_ran_under(tmp_path):
    """Each session in a manifest names the isolation its sandboxed code ran under (issue 15:
    a weaker mode is named in every manifest); a session that ran no code names none."""
    script = textwrap.dedent(f"""
        from scoreflow.config import Config
        from scoreflow.sandbox import Sandbox, SandboxSettings
        from scoreflow.workspace import Workspace
        ws = Workspace({str(tmp_path)!r}, "HumanEval", 0)
        run = ws.start("generate", Config())
        assert "sandbox_isolation" not in ws.manifest("generate")["sessions"][0]
        with Sandbox(SandboxSettings(workers=1)) as box:
            result = box.run_sync("print(1)", time_limit_s=10)
            assert result.status == "pass", result
            expected = box.server_info()["isolation"]
        run.finish()
        assert ws.manifest("generate")["sessions"][0]["sandbox_isolation"] == expected == "strict"
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
