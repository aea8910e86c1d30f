"""The code sandbox: ordinary programs, limits, and the API around it.

Hostile programs are in ``test_sandbox_hostile.py``, forged verdicts in
``test_sandbox_forging.py`` (the hostile ones also in the weak mode). Every test here
runs the same as root and as an unprivileged user (CI runs the sandbox suites both ways).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import signal
import threading
import time

import pytest
from test_sandbox_support import IS_ROOT, SETTINGS, alive, sandbox_processes, started_sandbox

from scoreflow.sandbox import CodeCheck, Sandbox, SandboxResult, SandboxSettings, SandboxUnavailable


@pytest.fixture(scope="module")
def sandbox():
    box = started_sandbox()
    yield box
    box.close()


# ------------------------------------------------------------------ ordinary programs


def test_a_normal_program_passes_with_its_output(sandbox):
    result = sandbox.run_sync("import math\nprint('hello', math.factorial(5))")
    assert result == SandboxResult("pass", "", "hello 120\n", result.duration_s)
    assert result.passed and 0 < result.duration_s < 5


def test_an_exception_fails_with_its_last_line_and_traceback(sandbox):
    result = sandbox.run_sync("def f(x):\n    raise ValueError(f'bad {x}')\nf(3)")
    assert (result.status, result.message) == ("fail", "ValueError: bad 3")
    assert 'File "<program>", line 2, in f' in result.output and "raise ValueError" in result.output
    assert "_sandbox_" not in result.output  # the sandbox's own frames stay hidden


def test_syntax_errors_and_failed_asserts_fail(sandbox):
    assert sandbox.run_sync("def broken(:\n").status == "fail"
    result = sandbox.run_sync("assert 1 + 1 == 3, 'arithmetic'")
    assert (result.status, result.message) == ("fail", "AssertionError: arithmetic")


def test_sys_exit_is_a_failure_and_os_exit_is_an_error(sandbox):
    assert sandbox.run_sync("import sys\nsys.exit(0)").status == "fail"
    early = sandbox.run_sync("import os\nprint('bye', flush=True)\nos._exit(0)\nprint('never')")
    assert (early.status, early.output) == ("error", "bye\n")
    assert "exited before finishing (code 0)" in early.message


def test_stdin_is_closed(sandbox):
    result = sandbox.run_sync("input()")
    assert (result.status, result.message) == ("fail", "EOFError: EOF when reading a line")


def test_modules_that_are_not_preloaded_still_import(sandbox):
    program = ("import sys\nassert not {'calendar', 'csv', '_csv', 'zoneinfo'} & set(sys.modules)\n"
               "import calendar, csv, zoneinfo\nprint(calendar.isleap(2024), csv.QUOTE_ALL)")
    result = sandbox.run_sync(program)
    assert (result.status, result.output) == ("pass", "True 1\n"), result


def test_threads_and_the_random_module_work(sandbox):
    program = (
        "import threading, random\n"
        "out = []\n"
        "threads = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(sorted(out), 0 <= random.random() < 1)\n"
    )
    result = sandbox.run_sync(program)
    assert (result.status, result.output) == ("pass", "[0, 1, 2, 3] True\n"), result


def test_each_program_has_its_own_fresh_writable_scratch_dir(sandbox):
    program = (
        "import os, tempfile\n"
        "before = sorted(os.listdir('.'))\n"
        "with open('notes.txt', 'w') as f: f.write('kept')\n"
        "os.mkdir('sub')\n"
        "fd, name = tempfile.mkstemp()\n"
        "os.close(fd)\n"
        "assert os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd()\n"
        "assert os.path.dirname(name) == os.getcwd(), name\n"
        "print(before, open('notes.txt').read(), sorted(os.listdir('.'))[:2])\n"
    )
    first, second = sandbox.run_sync(program), sandbox.run_sync(program)
    assert first.status == second.status == "pass", (first, second)
    assert first.output == second.output == "[] kept ['notes.txt', 'sub']\n"  # nothing carried over
    locked = "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a', 0)\nos.chmod('.', 0)"
    assert sandbox.run_sync(locked).status == "pass"
    assert sandbox.run_sync("import os\nprint(os.listdir('.'))").output == "[]\n"


def test_file_size_limit(sandbox):
    result = sandbox.run_sync("open('big', 'wb').write(b'x' * (20 << 20))")  # the limit is 16 MiB
    assert result.status == "fail" and "File too large" in result.message, result


def test_scratch_size_limit():
    settings = SandboxSettings(workers=1, file_size_mb=4)  # scratch: 16 MiB, files: 4 MiB each
    assert settings.scratch_mb == 16
    with Sandbox(settings) as box:
        program = "for i in range(8):\n    open(f'part{i}', 'wb').write(b'x' * ((4 << 20) - 4096))"
        result = box.run_sync(program)
        assert result.status == "fail" and "No space left on device" in result.message, result


# ------------------------------------------------------------------ limits


def test_an_endless_loop_times_out_on_time(sandbox):
    started = time.monotonic()
    result = sandbox.run_sync("while True:\n    pass", time_limit_s=1.0)
    assert (result.status, result.message) == ("timeout", "exceeded 1 s")
    assert time.monotonic() - started < 1.0 + 2.0


def test_a_memory_bomb_hits_the_memory_limit(sandbox):
    started = time.monotonic()
    result = sandbox.run_sync("blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))", time_limit_s=10)
    assert result.status == "memory", result
    assert time.monotonic() - started < 10
    assert sandbox.run_sync("print(sum(range(10)))").output == "45\n"  # the server is fine


def test_threads_are_limited_by_the_process_limit(sandbox):
    program = (
        "import threading, time\n"
        "threads = [threading.Thread(target=time.sleep, args=(2,), daemon=True) for _ in range(200)]\n"
        "for t in threads:\n"
        "    t.start()\n"
    )
    result = sandbox.run_sync(program, time_limit_s=5)
    assert result.status == "fail" and "can't start new thread" in result.message, result


UNLIMITED = "import sys\nsys.setrecursionlimit(10**7)\n"


def test_deep_recursion_fails_and_unlimited_recursion_does_not_hang(sandbox):
    result = sandbox.run_sync("def f(n):\n    return f(n + 1)\nf(0)")
    assert result.status == "fail" and result.message.startswith("RecursionError"), result
    started = time.monotonic()  # through C frames: the C stack overflows and the child crashes
    crash = sandbox.run_sync(UNLIMITED + "def f():\n    return list(map(lambda _: f(), [0]))\nf()", time_limit_s=3)
    assert crash.status in ("error", "memory") and "signal" in crash.message, crash
    slow = sandbox.run_sync(UNLIMITED + "def f(n):\n    return f(n + 1)\nf(0)", time_limit_s=2)
    assert slow.status in ("error", "memory", "timeout"), slow
    assert time.monotonic() - started < 3 + 2 + 2


def test_flooding_stdout_is_cut_off_quickly(sandbox):
    started = time.monotonic()
    result = sandbox.run_sync("while True:\n    print('spam' * 100)")
    assert (result.status, result.message) == ("error", "output limit exceeded")
    assert 0 < len(result.output.encode()) <= SETTINGS.max_output_bytes
    assert time.monotonic() - started < 2


def test_cancelling_a_future_stops_its_program(sandbox):
    futures = [sandbox.submit("while True:\n    pass", time_limit_s=30) for _ in range(SETTINGS.workers * 3)]
    time.sleep(0.3)
    for future in futures:
        assert future.cancel()
    started = time.monotonic()
    assert sandbox.run_sync("print('free')").output == "free\n"
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ isolation facts


def test_server_info_names_the_isolation_and_the_uid(sandbox):
    info = sandbox.server_info()
    assert info["isolation"] == "strict" and info["seccomp"] is True
    result = sandbox.run_sync("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    uid = info["sandbox_uid"]
    assert result.output == f"{uid} {uid} []\n", result
    if IS_ROOT:
        assert uid >= SETTINGS.uid_base  # never root


def test_this_process_is_not_dumpable_once_a_sandbox_started(sandbox):
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE


def test_a_program_sees_only_the_interpreter_and_its_scratch(sandbox):
    result = sandbox.run_sync("import os\nprint(sorted(os.listdir('/')))")
    assert result.status == "pass", result
    assert set(eval(result.output)) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root",
                                        "home", "opt", "sandbox", "sbin", "scratch", "usr", "work"}
    assert "tmp" not in result.output


# ------------------------------------------------------------------ the API around it


def test_concurrency_is_limited_by_the_worker_count(sandbox):
    started = time.monotonic()
    futures = [sandbox.submit("import time\ntime.sleep(0.5)") for _ in range(4)]
    results = [future.result() for future in futures]
    elapsed = time.monotonic() - started
    assert all(r.passed and r.duration_s >= 0.5 for r in results)
    assert 1.0 <= elapsed < 3.0


def test_asyncio_callers_on_different_event_loops(sandbox):
    async def square(n: int) -> int:
        result = await sandbox.run(f"print({n} * {n})")
        return int(result.output)

    async def several() -> list[int]:
        return list(await asyncio.gather(*(square(n) for n in range(5))))

    assert asyncio.run(several()) == [0, 1, 4, 9, 16]
    assert asyncio.run(several()) == [0, 1, 4, 9, 16]  # a second, new loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop in another thread
        assert pool.submit(asyncio.run, several()).result() == [0, 1, 4, 9, 16]


def test_check_api_sync_async_and_futures(sandbox):
    check = CodeCheck(solution="def add(a, b):\n    return a + b\n", tests="def check(c):\n    assert c(1, 2) == 3\n",
                      call="check(add)", entry_point="add")
    assert sandbox.check_sync(check).passed
    assert sandbox.submit_check(check).result().passed
    assert asyncio.run(sandbox.check(check)).passed
    wrong = CodeCheck(solution="def add(a, b):\n    return a - b\n", tests=check.tests, call=check.call,
                      entry_point="add")
    result = sandbox.check_sync(wrong)
    assert (result.status, result.message) == ("fail", "AssertionError"), result
    assert 'File "<tests>", line 2, in check' in result.output


def test_the_server_is_restarted_after_it_was_killed():
    with Sandbox(SETTINGS) as box:
        first = box.server_info()["pid"]
        slow = box.submit("import time\ntime.sleep(0.5)\nprint('done')")
        time.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        assert slow.result(timeout=20).output == "done\n"  # resubmitted to the new server
        assert box.run_sync("print('back')").output == "back\n"
        assert box.server_info()["pid"] != first


def test_close_stops_the_server_and_every_process_of_it():
    box = Sandbox(SETTINGS)
    info = box.server_info()
    processes = sandbox_processes(box)
    pending = box.submit("import time\ntime.sleep(30)")
    time.sleep(0.2)
    box.close()
    assert pending.result(timeout=10).status == "error"
    deadline = time.monotonic() + 5
    while any(alive(p) for p in [info["pid"], *processes]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(info["pid"]) and not any(alive(p) for p in processes)
    with pytest.raises(RuntimeError):
        box.submit("pass")


def test_settings_ranges_and_result_api():
    with pytest.raises(ValueError):
        SandboxSettings(workers=0)
    with pytest.raises(ValueError):
        SandboxSettings(default_time_limit_s=0.01)
    with pytest.raises(ValueError, match="sandbox.isolation"):
        SandboxSettings(isolation="none")
    fields = SandboxSettings.__dataclass_fields__
    assert fields["memory_mb"].metadata["min"] == 64 and fields["workers"].metadata["min"] == 1
    assert SandboxResult("pass", "", "", 0.1).passed and not SandboxResult("fail", "x", "", 0.1).passed
    assert issubclass(SandboxUnavailable, RuntimeError)


def test_submit_is_thread_safe(sandbox):
    outputs: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        out = sandbox.run_sync(f"print({n})").output
        with lock:
            outputs.append(out)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outputs) == sorted(f"{n}\n" for n in range(8))
