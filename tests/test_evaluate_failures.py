"""evaluate.py when the executor, not the workflows, fails: nothing is scored for it.

A dead server, a base URL missing ``/v1`` (HTTP 404) and a rejected key (HTTP 401) each
stop the stage with exit status 2 and one line naming the URL, the status and the
server's own message; no run is recorded for them, the manifest stays resumable, and
after the fix the same command completes, equal to an uninterrupted run, without
paying for any reply twice.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from scoreflow.jsonio import read_json
from tests.fake_openai import Fault, FakeOpenAIServer, Reply
from tests.test_evaluate import code_reply, evaluate, make_generate_stage, overrides, scores_of

RUNS, CALLS_PER_RUN = 18, 2
FAST_FAIL = {"executor.max_retries": "1", "executor.backoff_initial_s": "0.01", "executor.backoff_max_s": "0.02"}


def manifest_of(workspace: Path) -> dict:
    return read_json(workspace / "HumanEval" / "epoch_0" / "evaluate.manifest.json")


def recorded(workspace: Path) -> list[dict]:
    """The scoring records written so far (none: no file yet)."""
    path = workspace / "HumanEval" / "epoch_0" / "scores.jsonl"
    return scores_of(workspace) if path.exists() else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reference(tmp_path: Path, data_dir: Path) -> list[dict]:
    """The records of an uninterrupted run on a healthy server."""
    with FakeOpenAIServer(code_reply) as server:
        sets = overrides(tmp_path / "ref", data_dir, server.url)
        make_generate_stage(tmp_path / "ref", data_dir, sets)
        assert evaluate(sets).returncode == 0
        assert server.answered == RUNS * CALLS_PER_RUN
    return scores_of(tmp_path / "ref")


def assert_stopped(done, workspace: Path, *needles: str) -> str:
    """Exit 2 with one line holding every needle; the stage is still resumable."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    manifest = manifest_of(workspace)
    assert manifest["status"] == "running"
    assert manifest["sessions"][-1]["stopped"] in lines[0]
    return lines[0]


def test_dead_server_stops_the_stage_and_the_rerun_completes(tmp_path, data_dir):
    expected = reference(tmp_path, data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    sets = overrides(tmp_path / "ws", data_dir, url, **FAST_FAIL)
    make_generate_stage(tmp_path / "ws", data_dir, sets)
    done = evaluate(sets)
    assert_stopped(done, tmp_path / "ws", "connection refused", url, "is the server running", "3 executor failures")
    assert recorded(tmp_path / "ws") == []  # nothing scored 0 for the server's fault
    with FakeOpenAIServer(code_reply, port=port) as server:
        again = evaluate(sets)
        assert again.returncode == 0, again.stderr
        assert server.answered == RUNS * CALLS_PER_RUN
    assert scores_of(tmp_path / "ws") == expected


def test_base_url_without_v1_is_a_404_that_is_never_resent(tmp_path, data_dir):
    expected = reference(tmp_path, data_dir)
    with FakeOpenAIServer(code_reply) as server:
        wrong = server.url.removesuffix("/v1")
        sets = overrides(tmp_path / "ws", data_dir, wrong)
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        done = evaluate(sets)
        line = assert_stopped(done, tmp_path / "ws", f"POST {wrong}/chat/completions", "HTTP 404", "Not Found",
                              "check executor.base_url")
        assert "after 1 attempt" in line
        admitted = 5 + 2  # the runs in flight at once: ceil(1.25 x concurrency 4) + 2 sandbox workers
        assert server.requests == [] and set(server.not_found) == {"/chat/completions"}
        # the admitted runs' requests, and a new run's for each of the first two failures;
        # a failed run is queued at the back, so none was sent twice before the stop
        assert 3 <= len(server.not_found) <= admitted + 2
        assert recorded(tmp_path / "ws") == []
        fixed = overrides(tmp_path / "ws", data_dir, server.url)  # the URL may change on resume
        server.reset_stats()
        again = evaluate(fixed)
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == RUNS * CALLS_PER_RUN
    assert scores_of(tmp_path / "ws") == expected


def test_key_revoked_mid_stage_then_fixed(tmp_path, data_dir, monkeypatch):
    """The server starts refusing the key part-way: finished runs are kept, the rest is not
    scored; with the key accepted again the rerun completes and no reply is paid twice."""
    expected = reference(tmp_path, data_dir)
    secret = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz"
    monkeypatch.setenv("SCOREFLOW_TEST_KEY", secret)
    state = {"served": 0, "revoked": False}
    lock = threading.Lock()

    def responder(body: dict) -> Reply | Fault:
        with lock:
            if not state["revoked"] and state["served"] >= 12:
                state["revoked"] = True
            if state["revoked"]:
                return Fault("status", 401, message=f"Incorrect API key provided: {secret}")
            state["served"] += 1
        return code_reply(body)

    with FakeOpenAIServer(responder) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{"executor.api_key_env": "SCOREFLOW_TEST_KEY"})
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        done = evaluate(sets)
        line = assert_stopped(done, tmp_path / "ws", "HTTP 401", "Incorrect API key provided", "SCOREFLOW_TEST_KEY")
        assert secret not in done.stderr + done.stdout and secret[10:30] not in line
        manifest_text = (tmp_path / "ws" / "HumanEval" / "epoch_0" / "evaluate.manifest.json").read_text()
        assert secret not in manifest_text
        kept = recorded(tmp_path / "ws")
        assert 0 < len(kept) < RUNS and all(r["detail"] != "failed" for r in kept)
        paid_before = server.answered
        state["revoked"] = False
        state["served"] = -10**9  # accepted from now on
        again = evaluate(sets)
        assert again.returncode == 0, again.stderr
        assert server.answered == RUNS * CALLS_PER_RUN  # replies paid before the stop were not asked again
        assert paid_before < server.answered
    assert scores_of(tmp_path / "ws") == expected
    usage = manifest_of(tmp_path / "ws")["usage"]["executor"]
    assert usage["calls"] == RUNS * CALLS_PER_RUN and usage["paid"]["sessions"] == 2
    assert usage["paid"]["cache_misses"] == RUNS * CALLS_PER_RUN  # every reply paid exactly once


def test_refused_request_fails_the_run_without_resending(tmp_path, data_dir):
    """HTTP 400 (a request the server rejects, e.g. too long) is the run's failure: scored 0,
    not retried, and the stage goes on — once some request has succeeded."""
    calls = {"n": 0}
    lock = threading.Lock()

    def responder(body: dict) -> Reply | Fault:
        prompt = body["messages"][-1]["content"]
        with lock:
            calls["n"] += 1
        if "Proposed solution:" in prompt and "return None" in prompt:  # the careless drafts
            return Fault("status", 400, message="This model's maximum context length is 128000 tokens")
        return code_reply(body)

    with FakeOpenAIServer(responder) as server:
        sets = overrides(tmp_path / "ws", data_dir, server.url, **{"executor.concurrency": "1"})
        make_generate_stage(tmp_path / "ws", data_dir, sets)
        done = evaluate(sets)
        assert done.returncode == 0, done.stderr
        records = scores_of(tmp_path / "ws")
        refused = [r for r in records if r["detail"] == "failed"]
        assert len(records) == RUNS and len(refused) == RUNS // 2
        assert all(r["attempts"] == 1 and r["errors"][0].startswith("refused: ") for r in refused)
        assert "maximum context length" in refused[0]["errors"][0]
        assert len(server.requests) == RUNS * CALLS_PER_RUN  # no refused request was sent twice
