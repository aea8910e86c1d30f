"""The code sandbox: hostile programs are contained and the host is left untouched.

Each hostile case checks the reported status AND that the host was not affected
(files, processes, secrets, network, the server itself). Root-only checks (slot uids,
network namespace) are skipped with a reason when the tests do not run as root.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from scoreflow.sandbox import Sandbox, SandboxResult, SandboxSettings

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="slot uids and the network namespace need root")
SECRETS = {"MY_SERVICE_API_KEY": "sekrit-service-value-4711", "OPENAI_API_KEY": "sk-sekrit-openai-value-0815"}
SETTINGS = SandboxSettings(workers=2, memory_mb=512, max_output_bytes=65536, default_time_limit_s=10.0)


@pytest.fixture(scope="module")
def sandbox():
    """One sandbox for the module, started while the test process holds secrets."""
    saved = {name: os.environ.get(name) for name in SECRETS}
    os.environ.update(SECRETS)
    box = Sandbox(SETTINGS)
    box.server_info()  # start the server now, with the secrets in our environment
    yield box
    box.close()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def outside_dir():
    """A world-writable directory outside the sandbox holding a sentinel file."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-victim-", dir="/tmp"))
    path.chmod(0o777)
    sentinel = path / "sentinel.txt"
    sentinel.write_text("original")
    sentinel.chmod(0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _processes_of(uids: list[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _server_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# ------------------------------------------------------------------ ordinary programs


def test_a_normal_program_passes_with_its_output(sandbox):
    result = sandbox.run_sync("import math\nprint('hello', math.factorial(5))")
    assert result == SandboxResult("pass", "", "hello 120\n", result.duration_s)
    assert result.passed and 0 < result.duration_s < 5


def test_an_exception_fails_with_its_last_line_and_traceback(sandbox):
    result = sandbox.run_sync("def f(x):\n    raise ValueError(f'bad {x}')\nf(3)")
    assert (result.status, result.message) == ("fail", "ValueError: bad 3")
    assert 'File "<program>", line 2, in f' in result.output and "raise ValueError" in result.output
    assert "_sandbox_server" not in result.output  # the sandbox's own frames stay hidden


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
    """As root the child cannot read the interpreter's directories by name (/root is 0700)."""
    program = ("import sys\nassert not {'calendar', 'csv', '_csv', 'zoneinfo'} & set(sys.modules)\n"
               "import calendar, csv, zoneinfo\nprint(calendar.isleap(2024), csv.QUOTE_ALL)")
    result = sandbox.run_sync(program)
    assert (result.status, result.output) == ("pass", "True 1\n"), result


def test_scratch_dir_is_the_cwd_is_writable_and_is_removed(sandbox):
    program = (
        "import os, tempfile\n"
        "with open('notes.txt', 'w') as f: f.write('kept')\n"
        "os.mkdir('sub')\n"
        "fd, name = tempfile.mkstemp()\n"
        "os.close(fd)\n"
        "assert os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd()\n"
        "assert os.path.dirname(name) == os.getcwd(), name\n"
        "print(os.getcwd())\n"
        "print(open('notes.txt').read(), sorted(os.listdir('.'))[:2])\n"
    )
    result = sandbox.run_sync(program)
    assert result.status == "pass", result
    scratch, listing = result.output.splitlines()
    assert listing == "kept ['notes.txt', 'sub']"
    assert scratch.startswith(sandbox.server_info()["scratch_root"])
    assert not os.path.exists(scratch)
    locked = "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a', 0)\nos.chmod('.', 0)\nprint(os.getcwd())"
    result = sandbox.run_sync(locked)
    assert result.status == "pass" and not os.path.exists(result.output.strip()), result


def test_file_size_limit(sandbox):
    result = sandbox.run_sync("open('big', 'wb').write(b'x' * (20 << 20))")  # the limit is 16 MiB
    assert result.status == "fail" and "File too large" in result.message, result


# ------------------------------------------------------------------ hostile programs


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


def test_a_fork_bomb_is_contained_and_leaves_no_process(sandbox):
    program = (
        "import os, subprocess, multiprocessing\n"
        "for attempt in (lambda: os.fork(), lambda: subprocess.run(['true']), lambda: os.system('true'),\n"
        "                lambda: multiprocessing.Process(target=print).start(), lambda: os.execv('/bin/true', ['x']),\n"
        "                lambda: os.posix_spawn('/bin/true', ['x'], {}),\n"
        "                lambda: __import__('_posixsubprocess').fork_exec()):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('SPAWNED')\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except Exception:\n"
        "        pass\n"
    )
    result = sandbox.run_sync(program, time_limit_s=1.0)
    assert result.status == "timeout" and "SPAWNED" not in result.output, result
    info = sandbox.server_info()
    assert _server_children(info["pid"]) == []
    if IS_ROOT:
        assert _processes_of(info["uids"]) == []


SWEEP_SCRIPT = """
import ctypes, os, signal, sys, time
from scoreflow import _sandbox_server as server

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # a child subreaper, like the server
program = os.fork()
if program == 0:  # a program that escaped: new session, double fork, then it exits
    os.setsid()
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(60)
        time.sleep(60)
    os._exit(0)
os.waitpid(program, 0)
time.sleep(0.2)
zygote = server.Zygote.__new__(server.Zygote)
zygote.pid, zygote.slots = os.getpid(), []
orphans = server._child_pids(os.getpid())
print(len(orphans), zygote._reap_all_strays(), len(server._child_pids(os.getpid())))
if os.geteuid() == 0:  # a process of a slot uid outside our tree is found via /proc
    other = os.fork()
    if other == 0:
        os.setsid()
        os.setresuid(61999, 61999, 61999)
        time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
    print(server._kill_uid(61999), os.waitpid(other, 0)[1] == signal.SIGKILL)
"""


def test_the_sweep_finds_escaped_processes():
    """White-box: the server's sweep, on processes that a program could only leave behind
    by getting around the audit hook (setsid, double fork)."""
    done = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "1 2 0", done
    assert not IS_ROOT or lines[1] == "1 True", done


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
    # through C frames: the C stack overflows and the child crashes
    started = time.monotonic()
    crash = sandbox.run_sync(UNLIMITED + "def f():\n    return list(map(lambda _: f(), [0]))\nf()", time_limit_s=3)
    assert crash.status in ("error", "memory") and "signal" in crash.message, crash
    # pure Python frames live on the heap in 3.11: it ends at the time or memory limit
    slow = sandbox.run_sync(UNLIMITED + "def f(n):\n    return f(n + 1)\nf(0)", time_limit_s=2)
    assert slow.status in ("error", "memory", "timeout"), slow
    assert time.monotonic() - started < 3 + 2 + 2


def test_writes_and_deletes_outside_the_scratch_dir_are_refused(sandbox, outside_dir):
    sentinel = outside_dir / "sentinel.txt"
    attempts = [
        f"open({str(sentinel)!r}, 'w').write('owned')",
        f"open({str(sentinel)!r}, 'a').write('owned')",
        f"open({str(outside_dir / 'new.txt')!r}, 'x').write('owned')",
        f"os.remove({str(sentinel)!r})",
        f"os.rename({str(sentinel)!r}, 'stolen.txt')",
        f"os.replace('here.txt', {str(sentinel)!r})",
        f"os.chmod({str(sentinel)!r}, 0o777)",
        f"os.truncate({str(sentinel)!r}, 0)",
        f"os.utime({str(sentinel)!r}, (0, 0))",
        f"os.mkdir({str(outside_dir / 'made')!r})",
        f"shutil.rmtree({str(outside_dir)!r})",
        f"pathlib.Path({str(sentinel)!r}).write_text('owned')",
        f"pathlib.Path({str(sentinel)!r}).unlink()",
        f"os.close(os.open({str(sentinel)!r}, os.O_WRONLY | os.O_TRUNC))",
        f"os.symlink({str(sentinel)!r}, 'link'); open('link', 'w').write('owned')",
        f"os.link({str(sentinel)!r}, 'hard'); open('hard', 'w').write('owned')",
        f"d = os.open({str(outside_dir)!r}, os.O_RDONLY); os.unlink('sentinel.txt', dir_fd=d)",
        f"os.chdir({str(outside_dir)!r}); open('sentinel.txt', 'w').write('owned')",
        # monkeypatching what a naive policy would consult does not help either
        f"os.path.realpath = lambda p, **k: os.getcwd() + '/x'; open({str(sentinel)!r}, 'w').write('owned')",
        f"import builtins; builtins.isinstance = lambda *a: True; os.remove({str(sentinel)!r})",
    ]
    program = "import os, shutil, pathlib\nopen('here.txt', 'w').write('mine')\n"
    for index, attempt in enumerate(attempts):
        program += f"try:\n    {attempt}\n    print('{index}: DONE')\n"
        program += f"except Exception as exc:\n    print('{index}:', type(exc).__name__)\n"
    result = sandbox.run_sync(program)
    assert result.status == "pass", result
    assert "DONE" not in result.output, result.output
    assert sentinel.read_text() == "original"
    assert sorted(p.name for p in outside_dir.iterdir()) == ["sentinel.txt"]
    assert oct(sentinel.stat().st_mode & 0o777) == oct(0o666)


def test_the_audit_hook_cannot_be_inspected_or_traced(sandbox):
    program = (
        "import sys\n"
        "try:\n"
        "    open('/etc/sandbox-probe', 'w')\n"
        "except PermissionError as exc:\n"
        "    tb = exc.__traceback__\n"
        "    while tb.tb_next is not None:\n"
        "        tb = tb.tb_next\n"
        "    try:\n"
        "        print('LOCALS', tb.tb_frame.f_locals)\n"
        "    except PermissionError as denied:\n"
        "        print('hidden:', denied)\n"
        "for probe in (lambda: sys.settrace(lambda *a: None), lambda: __import__('gc').get_objects(),\n"
        "              lambda: __import__('ctypes'), lambda: sys._current_frames()):\n"
        "    try:\n"
        "        probe()\n"
        "        print('ALLOWED')\n"
        "    except PermissionError:\n"
        "        pass\n"
    )
    result = sandbox.run_sync(program)
    assert result.status == "pass" and "hidden: sandbox: inspecting the sandbox" in result.output, result
    assert "LOCALS" not in result.output and "ALLOWED" not in result.output


def test_rewriting_the_servers_globals_does_not_weaken_the_policy(sandbox, outside_dir):
    sentinel = outside_dir / "sentinel.txt"
    program = (
        "import sys, socket\n"
        "frame, patched = sys._getframe(0), 0\n"
        "while frame is not None:\n"
        "    if 'WRITE_FLAGS' in frame.f_globals:\n"
        "        frame.f_globals.update(WRITE_FLAGS=0, DENIED_EVENTS=frozenset(), DENIED_FAMILIES=frozenset())\n"
        "        patched += 1\n"
        "    frame = frame.f_back\n"
        "print('patched', patched)\n"
        f"for attempt in (lambda: open({str(sentinel)!r}, 'w').write('owned'), lambda: socket.socket()):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('ALLOWED')\n"
        "    except PermissionError:\n"
        "        print('denied')\n"
    )
    result = sandbox.run_sync(program)
    patched, *outcomes = result.output.splitlines()
    assert patched != "patched 0" and outcomes == ["denied", "denied"], result
    assert sentinel.read_text() == "original"


def test_secrets_of_the_parent_never_reach_the_program(sandbox):
    assert os.environ["MY_SERVICE_API_KEY"] == SECRETS["MY_SERVICE_API_KEY"]
    server = sandbox.server_info()["pid"]
    program = (
        "import os\n"
        "print(dict(os.environ))\n"
        f"for path in ['/proc/{{}}/environ'.format(os.getppid()), '/proc/1/environ', '/proc/{os.getpid()}/environ',\n"
        f"             '/proc/{server}/environ', '/proc/{os.getpid()}/cmdline', '/proc/self/environ']:\n"
        "    try:\n"
        "        print(path, open(path, 'rb').read())\n"
        "    except Exception as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "for entry in os.listdir('/proc'):\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            print(open(f'/proc/{entry}/{name}', 'rb').read())\n"
        "        except Exception:\n"
        "            pass\n"
    )
    result = sandbox.run_sync(program)
    assert result.status == "pass", result
    for secret in SECRETS.values():
        assert secret not in result.output
    assert "API_KEY" not in result.output
    with open(f"/proc/{server}/environ", "rb") as handle:  # the server itself never had them
        assert all(secret.encode() not in handle.read() for secret in SECRETS.values())


def test_no_network_connection_is_possible(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    program = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hello')\n"
    )
    try:
        result = sandbox.run_sync(program)
        assert result.status == "fail" and "PermissionError" in result.message, result
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


@root_only
def test_children_run_as_slot_uids_without_network(sandbox):
    info = sandbox.server_info()
    assert info["root"] and info["network_isolated"]
    result = sandbox.run_sync("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    uid = int(result.output.split()[0])
    assert uid in info["uids"] and result.output == f"{uid} {uid} []\n"


def test_killing_the_parent_or_the_test_process_is_refused(sandbox):
    server = sandbox.server_info()["pid"]
    attempts = ["os.kill(os.getppid(), signal.SIGKILL)", f"os.kill({os.getpid()}, signal.SIGKILL)",
                f"os.killpg(os.getpgid({os.getpid()}), signal.SIGKILL)", "os.kill(-1, signal.SIGKILL)",
                f"signal.pidfd_send_signal(os.pidfd_open({os.getpid()}), signal.SIGKILL)",
                "os.kill(1, signal.SIGTERM)"]
    program = "import os, signal\n"
    for attempt in attempts:
        program += f"try:\n    {attempt}\n    print('SENT')\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
    result = sandbox.run_sync(program)
    assert result.status == "pass" and "SENT" not in result.output, result
    assert _alive(os.getpid()) and _alive(server)
    assert sandbox.server_info()["pid"] == server
    assert sandbox.run_sync("print('still serving')").output == "still serving\n"


def test_flooding_stdout_is_cut_off_quickly(sandbox):
    started = time.monotonic()
    result = sandbox.run_sync("while True:\n    print('spam' * 100)")
    assert (result.status, result.message) == ("error", "output limit exceeded")
    assert 0 < len(result.output.encode()) <= SETTINGS.max_output_bytes
    assert time.monotonic() - started < 2


def test_cancelling_a_future_stops_its_program(sandbox):
    futures = [sandbox.submit("while True:\n    pass", time_limit_s=30) for _ in range(SETTINGS.workers)]
    time.sleep(0.2)
    for future in futures:
        assert future.cancel()
    started = time.monotonic()
    assert sandbox.run_sync("print('free')").output == "free\n"
    assert time.monotonic() - started < 5


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


def test_the_server_is_restarted_after_it_was_killed():
    with Sandbox(SETTINGS) as box:
        first = box.server_info()["pid"]
        slow = box.submit("import time\ntime.sleep(0.5)\nprint('done')")
        time.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        assert slow.result(timeout=20).output == "done\n"  # resubmitted to the new server
        assert box.run_sync("print('back')").output == "back\n"
        assert box.server_info()["pid"] != first


def test_close_stops_the_server_and_removes_its_scratch_space():
    box = Sandbox(SETTINGS)
    info = box.server_info()
    pending = box.submit("import time\ntime.sleep(30)")
    time.sleep(0.2)
    box.close()
    assert pending.result(timeout=10).status == "error"
    deadline = time.monotonic() + 5
    while _alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(info["pid"]) and not os.path.exists(info["scratch_root"])
    with pytest.raises(RuntimeError):
        box.submit("pass")


def test_settings_ranges_and_result_api():
    with pytest.raises(ValueError):
        SandboxSettings(workers=0)
    with pytest.raises(ValueError):
        SandboxSettings(default_time_limit_s=0.01)
    fields = SandboxSettings.__dataclass_fields__
    assert fields["memory_mb"].metadata["min"] == 64 and fields["workers"].metadata["min"] == 1
    assert SandboxResult("pass", "", "", 0.1).passed and not SandboxResult("fail", "x", "", 0.1).passed


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
