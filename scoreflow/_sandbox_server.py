"""Fork server ("zygote") behind :mod:`scoreflow.sandbox`; runs inside the sandbox.

Started once per ``Sandbox`` as ``python -I [-S] _sandbox_server.py CONFIG_JSON``: in
strict isolation inside one bubblewrap sandbox (own user/mount/pid/net/ipc/uts
namespaces, a read-only view of only the interpreter and its allowed libraries), in weak
isolation directly. It preloads the modules solutions commonly use and then forks one
child per program (~1 ms instead of 40-100 ms for a fresh interpreter).

It never holds a program's text, output or verdict: the host sends, over a Unix
SOCK_SEQPACKET socket, a small JSON request with descriptors attached (a memfd with the
program, the write ends of the output and result pipes); a forked child reads its own
program after it is confined, and writes its output and result straight to the host. So
each child starts from a zygote that never held another program's text.

Each child, before it runs anything: leaves the server's session, gets only its own
descriptors, drops to the sandbox uid (when the server is root), enters a user and mount
namespace of its own with a fresh size-limited tmpfs as scratch (strict; weak: a private
directory and Landlock), drops every capability, becomes non-dumpable, gets rlimits
(CPU, address space, file size, tasks) and a seccomp filter (no execve, no fork, no
ptrace, no sockets, no signals, no new namespaces or mounts). A child's scratch
disappears with its mount namespace, so cleanup is constant-time whatever it built.

Protocol, host -> server: {"op": "run", "id", "time_limit"} + [program, output, status];
{"op": "check", "id", "time_limit"} + [solution, tests, output, verdict];
{"op": "kill", "id"}; EOF stops the server. Server -> host: {"op": "ready", ...} once
(or {"op": "fatal", "message"}), then {"op": "exit", "id", "duration", "timed_out",
"processes": {role: {"status", "cpu", "maxrss_kb"}}} per request.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import gc
import importlib
import importlib.util
import json
import math
import os
import resource
import selectors
import signal
import socket
import stat
import sys
import time

# Preloaded so that each child starts with them imported: imports after the fork are slow.
COMMON_MODULES = (
    "array", "bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions",
    "functools", "hashlib", "heapq", "itertools", "json", "math", "operator", "random", "re",
    "pathlib", "statistics", "string", "typing", "unicodedata",
    "_posixsubprocess",  # loaded (and disarmed) here, so a later `import subprocess` is safe
)
_pidfd_open = os.pidfd_open  # the server keeps it; children get a stub

# Compiled and run once by the server before forking (trusted, constant text): CPython
# initialises the compiler and other machinery lazily; doing that in every child would
# cost ~2 ms of copy-on-write page faults per program.
WARM_UP_PROGRAM = '''
from typing import Dict, List, Optional
def solve(values: List[int], k: int = 2, *rest, flag: Optional[bool] = None, **options) -> Dict[str, int]:
    """A docstring."""
    evens = {value: index for index, value in enumerate(values) if value % k == 0}
    pairs = [(a, b) for a in values for b in values if a < b and not (a == b or a > b)]
    total = sum(value * value for value in values) + len({*values}) - abs(-1)
    text = f"{total:>4}-{len(pairs)!r}" + "%d" % total + "{}".format(total)
    try:
        raise ValueError(text)
    except (ValueError, TypeError) as exc:
        message = str(exc)
    finally:
        total += 1
    increment = lambda y: y + 1
    class Point:
        def __init__(self, x):
            self.x = x
        def __repr__(self):
            return f"Point({self.x!r})"
    while total > 10 and not flag:
        total //= 2
    result = {"evens": len(evens), "message": len(message), "repr": len(repr(Point(increment(1))))}
    assert isinstance(result, dict), "never"
    return result
assert solve([1, 2, 3, 4])["evens"] == 2
'''

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 4, 38, 22
PR_SET_CHILD_SUBREAPER, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 47, 4
SECCOMP_MODE_FILTER = 2
CAPABILITY_VERSION_3 = 0x20080522
SCRATCH = "/scratch"  # strict: each child's own tmpfs
SETUP_FAILED = 125  # child exit code when confinement could not be established
LOW_FDS = 16  # kept occupied so that received descriptors never land where a child rewires
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGKILL)
REMOVE_BUDGET = 4000  # entries removed per loop turn from weak-mode scratch leftovers
REMOVE_SLICE_S = 0.02  # and at most this long (an rmdir can cost milliseconds on a journalled disk)

# What each role's descriptors become in the child: (name, fd) in order.
LAYOUTS = {
    "program": (("output", 1), ("status", 3), ("program", 4)),
    "candidate": (("output", 1), ("replies", 3), ("requests", 4), ("program", 5)),
    "tests": (("control", 3),),  # a tests worker: each check's descriptors arrive on its socket
}
CHECKS_PER_WORKER = 200  # a tests worker is replaced after this many checks


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


# --------------------------------------------------------------------------- kernel calls


class Kernel:
    """The few calls Python 3.11 has no wrapper for, prepared once in the server so a
    child only makes them (the seccomp program is built by libseccomp on the host)."""

    def __init__(self, seccomp_program: bytes) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.filter_buffer = ctypes.create_string_buffer(seccomp_program, len(seccomp_program))
        self.fprog = _SockFprog(len(seccomp_program) // 8, ctypes.addressof(self.filter_buffer))
        self.cap_header = _CapHeader(CAPABILITY_VERSION_3, 0)
        self.cap_data = (_CapData * 2)()

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")

    def prctl(self, option: int, value: int) -> None:
        self._check(self.libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")

    def unshare(self, flags: int) -> None:
        self._check(self.libc.unshare(flags), "unshare")

    def mount_tmpfs(self, target: str, options: str) -> None:
        self._check(self.libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                                    options.encode()), "mount")

    def drop_capabilities(self) -> None:
        self.libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        self._check(self.libc.capset(ctypes.byref(self.cap_header), self.cap_data), "capset")

    def load_seccomp(self) -> None:
        self._check(self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.fprog), 0, 0), "seccomp")


def _write_proc_self(name: str, text: str) -> None:
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- child side


def _denied(what: str):
    def stub(*_args, **_kwargs):
        raise PermissionError(f"sandbox: {what} is not allowed")

    return stub


class Child:
    """Confinement of one forked child, in the order that keeps every step possible."""

    def __init__(self, server: Zygote, role: str, fds: dict[str, int]) -> None:
        self.server, self.role, self.fds = server, role, fds

    def confine(self) -> None:
        server = self.server
        os.setsid()
        self._rewire_descriptors()
        if server.drop_to_uid is not None:
            self._become_sandbox_user(server.drop_to_uid)
        scratch = self._enter_scratch() if self.role != "tests" else self._no_scratch()
        server.kernel.prctl(PR_SET_DUMPABLE, 0)
        server.kernel.drop_capabilities()
        server.kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server.pid:
            os._exit(SETUP_FAILED)  # the server died meanwhile
        self._set_limits()
        server.kernel.prctl(PR_SET_NO_NEW_PRIVS, 1)
        if server.landlock is not None:
            server.landlock(scratch)
        server.kernel.load_seccomp()
        self._python_state(scratch)

    def _rewire_descriptors(self) -> None:
        """Put the child's own descriptors at their numbers and close every other one
        (the control socket, other requests' pipes): sources are first moved above
        every target so that no dup2 overwrites one still needed."""
        layout = LAYOUTS[self.role]
        high = {name: _above_targets(self.fds[name]) for name, _ in layout}
        for fd in (0, 1, 2):
            os.dup2(self.server.devnull, fd)
        for name, target in layout:
            os.dup2(high[name], target)
            if name == "output":
                os.dup2(high[name], 2)
        os.closerange(max(target for _, target in layout) + 1, 1 << 20)

    @staticmethod
    def _become_sandbox_user(uid: int) -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # clears every capability the server had

    def _enter_scratch(self) -> str:
        server = self.server
        if server.mode == "weak":
            scratch = _weak_scratch(server.base_dir, os.getpid())
            os.mkdir(scratch, 0o700)
            os.chdir(scratch)
            return scratch
        uid, gid = os.geteuid(), os.getegid()
        server.kernel.prctl(PR_SET_DUMPABLE, 1)  # /proc/self/*_map belong to us only then
        server.kernel.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        _write_proc_self("setgroups", "deny")
        _write_proc_self("uid_map", f"{uid} {uid} 1")
        _write_proc_self("gid_map", f"{gid} {gid} 1")
        server.kernel.mount_tmpfs(SCRATCH, server.scratch_options)
        os.chdir(SCRATCH)
        return SCRATCH

    def _no_scratch(self) -> str:
        os.chdir("/")
        return ""

    def _set_limits(self) -> None:
        cfg = self.server.cfg
        cpu = math.ceil(self.server.time_limit) + 1 if self.role != "tests" else resource.RLIM_INFINITY
        memory, file_size = cfg["memory_mb"] << 20, cfg["file_size_mb"] << 20
        tasks = self.server.task_limit(self.role)
        for limit, value, hard in ((resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_CPU, cpu, cpu if cpu == resource.RLIM_INFINITY else cpu + 1),
                                   (resource.RLIMIT_FSIZE, file_size, file_size),
                                   (resource.RLIMIT_NPROC, tasks, tasks), (resource.RLIMIT_AS, memory, memory)):
            resource.setrlimit(limit, (value, hard))

    def _python_state(self, scratch: str) -> None:
        if scratch and os.environ.get("HOME") != scratch:  # strict: the server set it already
            os.environ["HOME"] = os.environ["TMPDIR"] = scratch
        sys.argv = [""]
        sys.stdin, sys.stdout, sys.stderr = self.server.child_streams
        tempfile = sys.modules.get("tempfile")
        if tempfile is not None:
            tempfile.tempdir = None
        if self.role != "tests" and self.server.cfg["audit_hook"]:  # tests workers run trusted code only
            sys.addaudithook(self.server.audit_hook)

    def run(self) -> None:
        """Confine, then hand over to the role's code; never returns."""
        try:
            self.confine()
        except BaseException as exc:  # noqa: BLE001 - must never return into the server loop
            try:
                os.write(2, f"sandbox setup failed: {_describe(exc)}\n".encode("utf-8", "replace"))
            finally:
                os._exit(SETUP_FAILED)
        checker = self.server.checker
        layout = dict(LAYOUTS[self.role])
        if self.role == "program":
            checker.run_program(layout["program"], layout["status"])
        elif self.role == "candidate":
            checker.serve_candidate(layout["program"], layout["requests"], layout["replies"])
        else:
            checker.serve_tests(layout["control"], CHECKS_PER_WORKER)
        os._exit(SETUP_FAILED)


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        return type(exc).__name__


def _above_targets(fd: int) -> int:
    """``fd`` if no child descriptor number can collide with it (the server keeps the low
    numbers occupied, so this is the rule), else a copy above them."""
    return fd if fd >= LOW_FDS else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, LOW_FDS)


def _weak_scratch(base_dir: str, pid: int) -> str:
    return f"{base_dir}/run-{pid}"


# --------------------------------------------------------------------------- server side


class Process:
    """One child of a job."""

    def __init__(self, role: str, pid: int) -> None:
        self.role, self.pid = role, pid
        self.pidfd = _pidfd_open(pid)
        self.result: dict | None = None


class TestsWorker:
    """A confined process that runs the trusted side of checks, one after another. It is
    forked from the server like every child, never runs candidate code, and gets each
    check's descriptors over its own socket; reusing it saves a process per check."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.pidfd = _pidfd_open(pid)
        self.control = control
        self.job: Job | None = None
        self.retiring = False


class Job:
    """One request: a program, or a check (a candidate process and a tests worker)."""

    def __init__(self, request_id: int, time_limit: float) -> None:
        self.id = request_id
        self.time_limit = time_limit
        self.started = time.monotonic()
        self.deadline = self.started + time_limit
        self.processes: dict[str, Process] = {}
        self.worker: TestsWorker | None = None
        self.tests_result: dict | None = None
        self.timed_out = False

    def alive(self) -> list[Process]:
        return [p for p in self.processes.values() if p.result is None]

    def finished(self) -> bool:
        return not self.alive() and (self.worker is None or self.tests_result is not None)


class Zygote:
    """Single-threaded selector loop that forks, watches and reports children."""

    def __init__(self, config: dict) -> None:
        self.cfg = config
        self.mode = config["mode"]
        self.pid = os.getpid()
        self.control = socket.socket(fileno=config["control_fd"])
        self.kernel = Kernel(_read_fd(config["seccomp_fd"]))
        self.devnull = _occupy_low_fds()
        self.kernel.prctl(PR_SET_DUMPABLE, 0)  # nothing of ours is readable through /proc
        self.kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
        # As root (strict) children drop to an unprivileged uid; in weak mode they keep the
        # server's uid (without any capability) since only it can read the interpreter.
        self.drop_to_uid = config["uid"] if os.geteuid() == 0 and self.mode == "strict" else None
        self.scratch_options = f"size={config['scratch_mb']}m,nr_inodes={config['scratch_inodes']},mode=0700"
        self.base_dir = _make_weak_base(config["tmp_root"]) if self.mode == "weak" else ""
        self.landlock = _landlock_policy(config) if self.mode == "weak" else None
        sys.path.extend(config["site_dirs"])
        self.checker = _load_module("_sandbox_checker", config["checker"])
        self.checker.HIDDEN_FILES.update({__file__, config["hook"]})
        hook = _load_module("_sandbox_hook", config["hook"])
        self.audit_hook = (hook.make_audit_hook(self.base_dir + "/run-", True) if self.mode == "weak"
                           else hook.make_audit_hook(SCRATCH, False))
        _set_environment(SCRATCH if self.mode == "strict" else "/nonexistent")
        for name in COMMON_MODULES + tuple(config["preload"]):
            importlib.import_module(name)
        self.child_streams = _make_child_streams()
        self.time_limit = 1.0
        self.nproc_cache = (0.0, 0)
        self.jobs: dict[int, Job] = {}
        self.idle_workers: list[TestsWorker] = []
        self.trash: collections.deque[TreeRemover] = collections.deque()
        self.queue: collections.deque[tuple[dict, list[int]]] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.control, selectors.EVENT_READ, None)
        _disarm_unaudited_functions()
        _warm_up(self.checker)
        sys.dont_write_bytecode = True
        gc.freeze()  # keep preloaded objects out of the children's collections (fewer COW copies)

    # --- the loop
    def announce(self) -> None:
        """Check that children can be confined, then tell the host we are ready."""
        self._self_test()
        self._send({"op": "ready", "pid": self.pid, "isolation": self.mode, "uid": os.geteuid(),
                    "sandbox_uid": self.drop_to_uid if self.drop_to_uid is not None else os.geteuid(),
                    "landlock": self.landlock is not None, "scratch": SCRATCH if self.mode == "strict" else self.base_dir})

    def serve(self) -> None:
        try:
            while self._step():
                pass
        finally:
            self._shutdown()

    def _step(self) -> bool:
        for key, _ in self.selector.select(self._select_timeout()):
            if key.data is None:
                if not self._read_request():
                    return False
            elif key.data[0] == "exit":
                self._on_exit(*key.data[1:])
            elif key.data[0] == "worker-done":
                self._on_worker_done(key.data[1])
            else:
                self._on_worker_exit(key.data[1])
        self._enforce_deadlines()
        self._start_queued()
        self._remove_some_trash()
        return True

    def _select_timeout(self) -> float | None:
        deadlines = [job.deadline for job in self.jobs.values() if not job.timed_out]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        return 0.0 if self.trash else timeout

    def _read_request(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.control, 65536, 8)
        if not data:
            _close_all(fds)
            return False
        request = json.loads(data)
        if request["op"] == "kill":
            _close_all(fds)
            self._kill_request(request["id"])
        else:
            self.queue.append((request, fds))
        return True

    def _kill_request(self, request_id: int) -> None:
        for entry in list(self.queue):
            if entry[0]["id"] == request_id:
                self.queue.remove(entry)
                _close_all(entry[1])
                self._send({"op": "exit", "id": request_id, "duration": 0.0, "timed_out": False,
                            "processes": {}, "error": "cancelled"})
        job = self.jobs.get(request_id)
        if job is not None:
            self._kill(job)

    def _start_queued(self) -> None:
        """The host keeps a few more requests here than there are workers (descriptors
        only, never their text), so a worker starts the next one without a round trip."""
        while self.queue and len(self.jobs) < self.cfg["workers"]:
            request, fds = self.queue.popleft()
            try:
                self._handle(request, fds)
            finally:
                _close_all(fds)

    def _handle(self, request: dict, fds: list[int]) -> None:
        job = Job(request["id"], float(request["time_limit"]))
        self.jobs[job.id] = job
        if request["op"] == "run":
            program, output, status = fds
            self._fork(job, "program", {"program": program, "output": output, "status": status})
        else:
            solution, tests, output, verdict = fds
            self._start_check(job, solution, tests, output, verdict)
        if not job.processes:
            self._kill(job)
            del self.jobs[job.id]
            self._send({"op": "exit", "id": job.id, "duration": 0.0, "timed_out": False, "processes": {},
                        "error": "fork failed"})

    def _start_check(self, job: Job, solution: int, tests: int, output: int, verdict: int) -> None:
        """Fork the candidate; hand the tests worker its ends of the two pipes."""
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            self._fork(job, "candidate", {"program": solution, "output": output, "requests": requests_r,
                                          "replies": replies_w})
            worker = self._worker() if job.processes else None
            if worker is not None:
                sent = _send_quietly(worker.control, {"id": job.id}, [tests, requests_w, replies_r, verdict, output])
                job.worker, worker.job = worker, job
                if not sent:
                    self._kill_worker(worker)
        finally:
            _close_all([requests_r, requests_w, replies_r, replies_w])
        if job.processes and job.worker is None:
            job.tests_result = {"status": SETUP_FAILED << 8, "cpu": 0.0, "maxrss_kb": 0}
            self._kill(job)

    def _worker(self) -> TestsWorker | None:
        while self.idle_workers:
            worker = self.idle_workers.pop()
            if not worker.retiring:
                return worker
        server_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = self._fork_child("tests", {"control": worker_end.fileno()})
        finally:
            worker_end.close()
        if pid is None:
            server_end.close()
            return None
        worker = TestsWorker(pid, server_end)
        self.selector.register(worker.pidfd, selectors.EVENT_READ, ("worker-exit", worker))
        self.selector.register(worker.control, selectors.EVENT_READ, ("worker-done", worker))
        return worker

    def _fork(self, job: Job, role: str, fds: dict[str, int]) -> None:
        self.time_limit = job.time_limit
        pid = self._fork_child(role, fds)
        if pid is not None:
            process = Process(role, pid)
            job.processes[role] = process
            self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", job, process))

    def _fork_child(self, role: str, fds: dict[str, int]) -> int | None:
        try:
            pid = os.fork()
        except OSError:
            return None
        if pid == 0:
            try:
                Child(self, role, fds).run()
            finally:
                os._exit(SETUP_FAILED)  # never unwind into the server loop in a child
        return pid

    def _on_exit(self, job: Job, process: Process) -> None:
        self.selector.unregister(process.pidfd)
        os.close(process.pidfd)
        _, status, usage = os.wait4(process.pid, 0)
        process.result = {"status": status, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}
        if self.mode == "weak":
            self._discard_scratch(process.pid)
        self._report_if_finished(job)

    def _on_worker_done(self, worker: TestsWorker) -> None:
        """The tests worker wrote a verdict: the candidate is not needed any more."""
        try:
            data = worker.control.recv(4096)
            report = json.loads(data) if data else None
        except (OSError, ValueError):
            report = None
        if report is None:  # it is exiting; its exit event reports the check
            self.selector.unregister(worker.control)
            return
        job, worker.job = worker.job, None
        worker.retiring = bool(report.get("retire"))
        if job is not None:
            job.tests_result = {"status": 0, "cpu": float(report.get("cpu", 0.0)),
                                "maxrss_kb": int(report.get("maxrss_kb", 0))}
            self._kill(job)
            self._report_if_finished(job)
        if not worker.retiring and not (job is not None and job.timed_out):
            self.idle_workers.append(worker)

    def _on_worker_exit(self, worker: TestsWorker) -> None:
        self.selector.unregister(worker.pidfd)
        os.close(worker.pidfd)
        try:
            self.selector.unregister(worker.control)
        except (KeyError, ValueError):
            pass
        worker.control.close()
        _, status, usage = os.wait4(worker.pid, 0)
        if worker in self.idle_workers:
            self.idle_workers.remove(worker)
        job, worker.job = worker.job, None
        if job is not None and job.tests_result is None:
            job.tests_result = {"status": status, "cpu": usage.ru_utime + usage.ru_stime,
                                "maxrss_kb": usage.ru_maxrss}
            self._kill(job)
            self._report_if_finished(job)

    def _report_if_finished(self, job: Job) -> None:
        if job.id not in self.jobs or not job.finished():
            return
        del self.jobs[job.id]
        processes = {p.role: p.result for p in job.processes.values()}
        if job.tests_result is not None:
            processes["tests"] = job.tests_result
        self._send({"op": "exit", "id": job.id, "duration": time.monotonic() - job.started,
                    "timed_out": job.timed_out, "processes": processes})

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if not job.timed_out and now >= job.deadline:
                job.timed_out = True
                self._kill(job)
                if job.worker is not None and job.tests_result is None:
                    self._kill_worker(job.worker)  # it may be stuck in a test

    def _kill(self, job: Job) -> None:
        for process in job.alive():
            _kill_quietly(process.pid)

    def _kill_worker(self, worker: TestsWorker) -> None:
        worker.retiring = True
        _kill_quietly(worker.pid)

    def task_limit(self, role: str) -> int:
        """RLIMIT_NPROC of a child. Strict candidates and programs count only their own
        user namespace; otherwise the limit is relative to the uid's current tasks."""
        if role != "tests" and self.mode == "strict":
            return self.cfg["max_processes"]
        if role == "tests":
            return 1
        checked, count = self.nproc_cache
        if time.monotonic() - checked > 5.0:
            count = _count_user_tasks(os.geteuid())
            self.nproc_cache = (time.monotonic(), count)
        return count + self.cfg["max_processes"]

    # --- weak mode: scratch directories
    def _discard_scratch(self, pid: int) -> None:
        """Move a finished child's scratch dir aside in O(1); it is removed a bounded
        number of entries per loop turn, so a huge tree never stalls the server."""
        path = _weak_scratch(self.base_dir, pid)
        trash = f"{self.base_dir}/trash-{pid}-{time.monotonic_ns()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = path
        self.trash.append(TreeRemover(trash))

    def _remove_some_trash(self) -> None:
        budget = REMOVE_BUDGET
        started = time.monotonic()
        while self.trash and budget > 0:
            left = REMOVE_SLICE_S - (time.monotonic() - started)
            if left <= 0:
                break
            budget = self.trash[0].step(budget, left)
            if self.trash[0].done:
                self.trash.popleft()

    # --- setup checks and messages
    def _self_test(self) -> None:
        """Confine one child exactly like a program's and run ``pass``: a kernel that
        refuses a step is found now, not as an error on every program."""
        program = os.memfd_create("self-test")
        os.write(program, b"pass\n")
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        job = Job(0, 10.0)
        self._fork(job, "program", {"program": program, "output": out_w, "status": status_w})
        for fd in (program, out_w, status_w):
            os.close(fd)
        process = job.processes.get("program")
        if process is None:
            raise RuntimeError("fork failed")
        self.selector.unregister(process.pidfd)
        os.close(process.pidfd)
        _, status, _ = os.wait4(process.pid, 0)
        if self.mode == "weak":
            remove_tree(_weak_scratch(self.base_dir, process.pid), 1000)
        output, record = _read_all(out_r, 4096), _read_all(status_r, 64)
        if status != 0 or record != b"ok":
            raise RuntimeError(output.decode("utf-8", "replace").strip() or f"self-test child status {status}")

    def _send(self, message: dict) -> None:
        self.control.send(json.dumps(message).encode())

    def _shutdown(self) -> None:
        for _, fds in self.queue:
            _close_all(fds)
        for job in list(self.jobs.values()):
            self._kill(job)
        workers = self.idle_workers + [job.worker for job in self.jobs.values() if job.worker is not None]
        for worker in workers:
            _kill_quietly(worker.pid)
        for pid in [p.pid for job in self.jobs.values() for p in job.alive()] + [w.pid for w in workers]:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if self.mode == "weak":
            for remover in self.trash:
                remover.step(1 << 20)
                remover._finish()
            remove_tree(self.base_dir, 1 << 20)


# --------------------------------------------------------------------------- setup helpers


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _send_quietly(sock: socket.socket, message: dict, fds: list[int]) -> bool:
    try:
        socket.send_fds(sock, [json.dumps(message).encode()], fds)
        return True
    except OSError:
        return False


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _read_fd(fd: int) -> bytes:
    return _read_all(fd, 1 << 20)


def _read_all(fd: int, cap: int) -> bytes:
    data = b""
    while len(data) < cap:
        chunk = os.read(fd, cap - len(data))
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data


def _occupy_low_fds() -> int:
    """Keep descriptors 0..LOW_FDS-1 taken (by /dev/null), so that received descriptors
    and pipes never land on the numbers a child rewires."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in range(LOW_FDS):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(devnull, fd, inheritable=False)
    return devnull


def _set_environment(home: str) -> None:
    """The environment every child starts with (the server's has no secrets either)."""
    os.environ.clear()
    os.environ.update({"HOME": home, "TMPDIR": home, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def _load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _make_child_streams():
    """stdin/stdout/stderr objects for the children, built once over fds 0/1/2 while
    those are pipe-like, so that children only need to dup2 their own pipes in."""
    read_end, write_end = os.pipe()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    for fd in (1, 2):
        os.dup2(write_end, fd)
    os.dup2(read_end, 0)
    streams = (open(0, "r", closefd=False),
               open(1, "w", errors="backslashreplace", closefd=False, buffering=1),
               open(2, "w", errors="backslashreplace", closefd=False, buffering=1))
    for fd, original in zip((0, 1, 2), saved):
        os.dup2(original, fd)
        os.close(original)
    os.close(read_end)
    os.close(write_end)
    return streams


def _warm_up(checker) -> None:
    """Run the compiler, the evaluator and the error-reporting path once (see
    WARM_UP_PROGRAM) so that children inherit them initialised."""
    exec(compile(WARM_UP_PROGRAM, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
    try:
        compile("def broken(:", "<warm-up>", "exec")
    except SyntaxError as exc:
        checker.format_exception(exc)
    try:
        raise ValueError("warm-up")
    except ValueError as exc:
        checker.traceback_text(exc)
    tree = checker.encode({"a": [1, 2.5, (None, True)], "b": "text"}, lambda v: ["n"])
    checker.decode(json.loads(json.dumps(tree)), lambda t: None)


def _disarm_unaudited_functions() -> None:
    """Defence in depth (seccomp refuses these anyway): replace the functions that spawn
    or signal without an audit event, and drop ctypes from sys.modules."""
    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]
    sys.modules["_posixsubprocess"].fork_exec = _denied("_posixsubprocess.fork_exec")
    for module, name in ((os, "pidfd_open"), (os, "mkfifo"), (os, "mknod"), (signal, "pidfd_send_signal")):
        stub = _denied(f"{module.__name__}.{name}")
        setattr(module, name, stub)
        setattr(sys.modules["posix" if module is os else "_signal"], name, stub)


def _count_user_tasks(uid: int) -> int:
    count = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return count


# --------------------------------------------------------------------------- weak mode


def _make_weak_base(tmp_root: str) -> str:
    """A private (0700) parent of this server's scratch dirs; leftovers of dead servers
    that are ours are removed first (never anything else)."""
    _remove_dead_bases(tmp_root)
    base = os.path.join(os.path.realpath(tmp_root), f"scoreflow-sandbox-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(base, 0o700)
    return base


def _remove_dead_bases(tmp_root: str) -> None:
    for name in os.listdir(tmp_root):
        parts = name.split("-")
        if len(parts) != 4 or not name.startswith("scoreflow-sandbox-") or not parts[2].isdigit():
            continue
        path = os.path.join(tmp_root, name)
        try:
            info = os.lstat(path)
            os.kill(int(parts[2]), 0)
            continue  # its server is alive
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            remove_tree(path, 50_000)


class TreeRemover:
    """Removes one directory tree in bounded steps: no recursion, at most two open
    descriptors, never following a link and never touching anything outside the tree
    (it may reset the mode of the tree's own directories so that they can be emptied)."""

    def __init__(self, path: str) -> None:
        parent, self.name = os.path.split(path)
        self.top = _open_dir(None, parent, chmod=False)
        self.here: int | None = None
        self.names: list[str] = []
        self.done = self.top is None
        self.deadline: float | None = None

    def _late(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def step(self, budget: int, seconds: float | None = None) -> int:
        """Remove up to ``budget`` entries, for at most about ``seconds``; the budget left
        (``done`` says if finished)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds
        while not self.done and budget > 0 and not self._late():
            budget -= 1
            if self.here is None and not self._enter_top():
                continue
            finished, subdir, budget = self._clear_files(budget)
            if not finished:
                break
            if subdir is not None:
                self._descend(subdir)
            else:
                self._ascend()
        return budget

    def _enter_top(self) -> bool:
        self.here = _open_dir(self.top, self.name)
        if self.here is None:
            _unlink_quietly(self.top, self.name)
            self._finish()
            return False
        self.names = [self.name]
        return True

    def _clear_files(self, budget: int) -> tuple[bool, str | None, int]:
        """Unlink the non-directories of the current directory; its first subdirectory."""
        subdir = None
        with os.scandir(self.here) as entries:
            for entry in entries:
                if budget <= 0 or (budget % 256 == 0 and self._late()):
                    return False, None, budget
                budget -= 1
                if entry.is_dir(follow_symlinks=False):
                    subdir = subdir or entry.name
                elif not _unlink_quietly(self.here, entry.name):
                    _chmod_quietly(self.here)
                    _unlink_quietly(self.here, entry.name)
        return True, subdir, budget

    def _descend(self, subdir: str) -> None:
        child = _open_dir(self.here, subdir)
        if child is None and not _rmdir_quietly(self.here, subdir):
            self._finish()  # cannot be opened nor removed: leave it rather than loop
            return
        if child is not None:
            os.close(self.here)
            self.here = child
            self.names.append(subdir)

    def _ascend(self) -> None:
        if len(self.names) == 1:
            os.close(self.here)
            self.here = None
            _rmdir_quietly(self.top, self.name)
            self._finish()
            return
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.here)
        os.close(self.here)
        self.here = parent
        child = self.names.pop()
        if not _rmdir_quietly(parent, child):
            _chmod_quietly(parent)
            if not _rmdir_quietly(parent, child):
                self._finish()  # it would be found again and again: leave it

    def _finish(self) -> None:
        for fd in (self.here, self.top):
            if fd is not None:
                os.close(fd)
        self.here = self.top = None
        self.done = True


def remove_tree(path: str, budget: int) -> tuple[bool, int]:
    """Remove a tree within ``budget`` entries: (finished, budget left)."""
    remover = TreeRemover(path)
    left = remover.step(budget)
    done = remover.done
    remover._finish()
    return done, left


def _open_dir(parent: int | None, name: str, chmod: bool = True) -> int | None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except PermissionError:
        if not chmod:
            return None
        try:
            os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
            return os.open(name, flags, dir_fd=parent)
        except OSError:
            return None
    except OSError:
        return None


def _chmod_quietly(fd: int) -> None:
    try:
        os.chmod(fd, 0o700)
    except OSError:
        pass


def _unlink_quietly(parent: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=parent)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _rmdir_quietly(parent: int, name: str) -> bool:
    try:
        os.rmdir(name, dir_fd=parent)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _landlock_policy(config: dict):
    """Weak mode's filesystem boundary: read-only beneath the interpreter's paths,
    everything beneath the child's own scratch dir, nothing else. None when the kernel
    has no Landlock (then only seccomp, rlimits and the audit hook remain)."""
    if not config.get("landlock"):
        return None
    landlock = _load_module("landlock", config["landlock"])
    try:
        landlock.landlock_abi_version()
    except OSError:
        return None
    access = landlock.FSAccess
    read_file = access.READ_FILE | access.EXECUTE
    read_dirs = [p for p in config["read_paths"] if os.path.isdir(p)]
    read_files = [p for p in config["read_paths"] if os.path.isfile(p)]

    def restrict(scratch: str) -> None:
        ctypes.set_errno(0)  # the package reads errno even after a successful call
        ruleset = landlock.Ruleset()
        ruleset.allow(*read_dirs, rules=read_file | access.READ_DIR)
        ruleset.allow(*read_files, rules=read_file)
        ruleset.allow("/dev/null", rules=access.READ_FILE | access.WRITE_FILE)
        if scratch:
            ruleset.allow(scratch)
        ruleset.apply()

    return restrict


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on SIGTERM too
    config = json.loads(argv[1])
    control = socket.socket(fileno=os.dup(config["control_fd"]))
    try:
        zygote = Zygote(config)
        zygote.announce()
    except BaseException as exc:  # noqa: BLE001 - tell the host why, then exit
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:{where.lineno})"
        control.send(json.dumps({"op": "fatal", "message": message}).encode())
        raise SystemExit(1) from None
    control.close()
    zygote.serve()


if __name__ == "__main__":
    main(sys.argv)
