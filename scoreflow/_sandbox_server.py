"""Fork server ("zygote") behind :mod:`scoreflow.sandbox`; also the child bootstrap.

Started once per ``Sandbox`` as ``python -I -S _sandbox_server.py CONFIG_JSON`` with a
scrubbed environment. It preloads the modules that generated solutions commonly use,
then serves JSON-line requests from stdin by forking one short-lived child per program
(a fork costs ~1 ms; a fresh interpreter 40-100 ms). This file is run as a script, never
imported by the project, and it is the ONLY place where program text is compiled and
executed (``_execute_program``), always inside a forked, confined child.

Protocol (one JSON object per line):
  in : {"op": "run", "id": N, "program": str, "time_limit": float} | {"op": "cancel", "id": N}
  out: {"op": "ready", ...} once, then {"op": "result", "id": N, "status", "message",
       "output", "duration"} per run; {"op": "fatal", "message"} if startup fails.
EOF on stdin stops the server (all children are killed, scratch space removed).
"""

from __future__ import annotations

import collections
import fcntl
import gc
import importlib
import json
import math
import os
import pwd
import resource
import selectors
import signal
import stat
import sys
import time
import traceback
import types

# Preloaded so that each child starts with them imported: imports after the fork are slow
# and need the pinned import paths. Kept lean: a smaller server forks faster.
COMMON_MODULES = (
    "array", "bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions",
    "functools", "hashlib", "heapq", "itertools", "json", "math", "operator", "random", "re",
    "pathlib", "statistics", "string", "typing", "unicodedata",
    "_posixsubprocess",  # loaded (and disarmed) here, so a later `import subprocess` is safe
)
_pidfd_open = os.pidfd_open  # the server keeps it; children get a stub

# Compiled and run once by the server before forking (trusted, constant text): CPython
# initialises the compiler (AST types, parser caches) and other machinery lazily, and
# doing that in every child would cost ~2 ms of copy-on-write page faults per program.
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

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
STATUS_FD = 3  # in the child: write end of the completion-marker pipe
SETUP_FAILED = 125  # child exit code when confinement could not be established
MAX_STATUS_BYTES = 8192
UID_SCAN_EVERY = 64  # runs of a slot between /proc scans for its uid when nothing was left
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGKILL)


# --------------------------------------------------------------------------- child side


def _format_exception(exc: BaseException) -> str:
    """The last line of the exception as Python prints it, kept short."""
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return line if len(line) <= 500 else line[:497] + "..."


def _visible_stack(tb) -> traceback.StackSummary:
    """Stack entries of a traceback without the server's own frames; the audit hook
    refuses to show its frames, which ends the walk."""
    entries = []
    while tb is not None:
        try:
            code = tb.tb_frame.f_code
        except PermissionError:
            break
        if code.co_filename != __file__:
            entries.append((code.co_filename, tb.tb_lineno, code.co_name, None))
        tb = tb.tb_next
    return traceback.StackSummary.from_list(entries)


def _traceback_text(exc: BaseException, depth: int = 0) -> str:
    """Like Python's own report, including chained exceptions (a few levels deep)."""
    text = ""
    if depth < 5 and exc.__cause__ is not None:
        text = _traceback_text(exc.__cause__, depth + 1) + (
            "\nThe above exception was the direct cause of the following exception:\n\n")
    elif depth < 5 and exc.__context__ is not None and not exc.__suppress_context__:
        text = _traceback_text(exc.__context__, depth + 1) + (
            "\nDuring handling of the above exception, another exception occurred:\n\n")
    stack = "".join(_visible_stack(exc.__traceback__).format())
    header = "Traceback (most recent call last):\n" if stack else ""
    return text + header + stack + "".join(traceback.format_exception_only(type(exc), exc))


def _report_failure(exc: BaseException, program: str) -> bytes:
    """Print the error to the captured stderr (as Python would) and build the status record."""
    import linecache

    linecache.cache["<program>"] = (len(program), None, program.splitlines(True), "<program>")
    try:
        if not isinstance(exc, SystemExit):
            sys.stderr.write(_traceback_text(exc))
        elif isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
    except BaseException:  # noqa: BLE001 - reporting must not fail
        pass
    kind = "memory" if isinstance(exc, MemoryError) else "fail"
    return f"{kind}\n{_format_exception(exc)}".encode("utf-8", "replace")


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a broken stream must not hide the result
            pass


def _run_user_code(program: str) -> bytes:
    """Compile and run the program as ``__main__``; return the status record."""
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    try:
        code = compile(program, "<program>", "exec")
        exec(code, module.__dict__)  # the sandboxed execution this whole module exists for
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # like interpreter exit: wait for non-daemon threads
        return b"ok"
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: it is a "fail"
        if isinstance(exc, MemoryError):
            module.__dict__.clear()  # give the memory back so that reporting can work
        try:
            return _report_failure(exc, program)
        except BaseException:  # noqa: BLE001 - e.g. MemoryError again while formatting
            return b"memory\nMemoryError" if isinstance(exc, MemoryError) else b"fail\n" + type(exc).__name__.encode()


def _execute_program(program: str) -> None:
    """Run the program, then write the completion marker and exit; never returns.

    Only reached in a confined child. "ok" is written only after the program ran to its
    end, so an early ``os._exit`` leaves no marker and is reported as an error.
    """
    try:
        record = _run_user_code(program)
        _flush_std_streams()
        os.write(STATUS_FD, record)
    finally:
        os._exit(0)


def _denied(what: str):
    def stub(*_args, **_kwargs):
        raise PermissionError(f"sandbox: {what} is not allowed")

    return stub


# Audit-hook policy of a child. Defence in depth: when the server runs as root, the slot
# uid, the rlimits and the network namespace are the kernel-enforced boundary; without
# root this hook is the main guard. Everything the hook consults is captured when it is
# built (C functions, builtins, immutable strings and sets), so a program that
# monkeypatches os, os.path, builtins or pathlib cannot change its decisions, and its own
# frames are hidden from tracebacks and sys._getframe.

DENIED_EVENTS = frozenset({
    "os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn",
    "os.startfile", "subprocess.Popen", "pty.spawn",
    # introspection that could reach the hook's state
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
    "sys.settrace", "sys.setprofile",
})
DENIED_FAMILIES = frozenset({"socket", "ctypes", "_ctypes"})
DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "posix", "_signal"})
# event -> ((index of the path argument, index of its dir_fd or None, follows symlinks), ...)
PATH_EVENTS = {
    "os.remove": ((0, 1, False),),
    "os.rmdir": ((0, 1, False),),
    "os.mkdir": ((0, 2, False),),
    "os.rename": ((0, 2, False), (1, 3, False)),
    "os.link": ((0, 2, True), (1, 3, False)),
    "os.chmod": ((0, 2, True),),
    "os.chown": ((0, 3, True),),
    "os.utime": ((0, 3, True),),
    "os.truncate": ((0, None, True),),
    "os.setxattr": ((0, None, True),),
    "os.removexattr": ((0, None, True),),
    "os.chflags": ((0, None, True),),
    "os.lchflags": ((0, None, False),),
    "shutil.rmtree": ((0, 1, False),),
}
S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000


def _scratch_path(base_dir: str, pid: int) -> str:
    """A child's scratch dir: named after its pid, so the policy can be built once."""
    return f"{base_dir}/run-{pid}"


def _make_audit_hook(base_dir: str):
    """The children's audit hook: deny process creation, sockets, ctypes, signals to other
    processes, changes outside the child's scratch dir and reads of other processes'
    /proc. Built once in the server; each child finds its own pid and scratch dir."""
    import pathlib

    lstat, stat_, readlink, getcwd, getpid = os.lstat, os.stat, os.readlink, os.getcwd, os.getpid
    fspath, str_, bytes_, int_, type_, frozenset_ = os.fspath, str, bytes, int, type, frozenset
    permission_error, os_error, write_flags = PermissionError, OSError, WRITE_FLAGS
    s_ifmt, s_ifdir, s_iflnk = S_IFMT, S_IFDIR, S_IFLNK
    path_types = (pathlib.PurePosixPath, pathlib.PosixPath)
    guarded_types = (pathlib.PurePath, pathlib.PurePosixPath, pathlib.Path, pathlib.PosixPath)
    path_events = types.MappingProxyType(dict(PATH_EVENTS))
    denied_events, denied_families, denied_imports = DENIED_EVENTS, DENIED_FAMILIES, DENIED_IMPORTS
    scratch_prefix = base_dir + "/run-"
    busy = [False]  # set while the hook itself reads a traceback's frame
    own_codes = frozenset_()

    def deny(what: str) -> None:
        raise permission_error(f"sandbox: {what} is not allowed")

    def text_of(path) -> str | None:
        """The path as text, without running code the program could have supplied."""
        kind = type_(path)
        if kind is str_:
            return path
        if kind is bytes_:
            return path.decode("utf-8", "surrogateescape")
        if kind is path_types[0] or kind is path_types[1]:  # identity: no metaclass __eq__ runs
            return fspath(path)
        return None

    def realpath(text: str) -> str:
        """Absolute path with symlinks resolved (missing parts taken literally). Links
        inside another process's /proc entry (fd/, cwd, root) are not followed: the
        result then stays there and is refused as a whole."""
        if not text.startswith("/"):
            text = getcwd() + "/" + text
        pending, resolved, links = text.split("/")[::-1], "", 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                resolved = resolved.rpartition("/")[0]
                continue
            candidate = resolved + "/" + name
            try:
                is_link = lstat(candidate).st_mode & s_ifmt == s_iflnk
            except os_error:
                is_link = False
            if not is_link or links >= 40 or other_process(resolved):
                resolved = candidate
                continue
            links += 1
            target = readlink(candidate)
            resolved = "" if target.startswith("/") else resolved
            pending.extend(target.split("/")[::-1])
        return resolved or "/"

    def resolve(path, dir_fd=None, follow: bool = True) -> str | None:
        """Absolute, symlink-resolved path; None for a descriptor that is not a file."""
        if type_(path) is int_:
            try:
                target = readlink(f"/proc/self/fd/{path}")
            except os_error:
                return None
            return target if target.startswith("/") else None
        text = text_of(path)
        if text is None:
            deny("a path of this type")
        if type_(dir_fd) is int_ and dir_fd >= 0 and not text.startswith("/"):
            base = resolve(dir_fd)
            if base is None:
                deny("a relative path under this descriptor")
            text = base + "/" + text
        if follow:
            return realpath(text)
        head, _, name = text.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            return realpath(text)
        base = realpath(head if head else ("/" if text.startswith("/") else "."))
        return base.rstrip("/") + "/" + name

    def inside(real: str, strict: bool) -> bool:
        scratch = scratch_prefix + str_(getpid())
        return real.startswith(scratch + "/") or (not strict and real == scratch)

    def other_process(real: str) -> bool:
        """/proc entries of other processes, and any environ file."""
        if not real.startswith("/proc/"):
            return False
        entry = real[6:].partition("/")[0]
        return "environ" in real or (entry.isdigit() and entry != str_(getpid()))

    def check_open(args) -> None:
        path, mode, flags = args
        if type_(path) is int_:
            return
        real = resolve(path)
        if other_process(real):
            deny(f"reading {real}")
        writing = flags & write_flags
        own_fds = "/proc/" + str_(getpid()) + "/fd/"
        if writing and not (inside(real, True) or real == "/dev/null" or real.startswith(own_fds)):
            deny(f"writing {real}")
        if mode is None:  # os.open: its event does not show dir_fd, so keep dir fds inside
            if writing and not text_of(path).startswith("/") and ".." in text_of(path).split("/"):
                deny("os.open for writing with '..' in a relative path")
            if not inside(real, False) and is_directory(real):
                deny(f"opening the directory {real}")

    def is_directory(real: str) -> bool:
        try:
            return stat_(real).st_mode & s_ifmt == s_ifdir
        except os_error:
            return False

    def check_listing(args) -> None:
        real = resolve(args[0])
        if real is not None and other_process(real):
            deny(f"listing {real}")

    def check_symlink(args) -> None:
        target, link, dir_fd = args
        real_link = resolve(link, dir_fd, False)
        if not inside(real_link, True):
            deny(f"creating the symlink {real_link}")
        text = text_of(target)
        if text is None or ".." in text.split("/"):
            deny("this symlink target")
        if not inside(realpath(text if text.startswith("/") else real_link.rpartition("/")[0] + "/" + text), False):
            deny("a symlink leading out of the scratch dir")

    def check_paths(specs, args) -> None:
        for path_index, fd_index, follow in specs:
            real = resolve(args[path_index], None if fd_index is None else args[fd_index], follow)
            if real is not None and not inside(real, not follow):  # entries: strictly inside
                deny(f"changing {real}")

    def check_frame(frame) -> None:
        """Hide the hook's own frames (their locals hold its helpers)."""
        busy[0] = True
        try:
            code = frame.f_code
        finally:
            busy[0] = False
        if code in own_codes:
            deny("inspecting the sandbox")

    def check_special(event: str, args) -> None:
        if event == "object.__getattr__":
            if args[1] == "tb_frame" and not busy[0]:
                busy[0] = True
                try:
                    frame = args[0].tb_frame
                finally:
                    busy[0] = False
                check_frame(frame)
        elif event == "sys._getframe":
            check_frame(args[0])
        elif event == "object.__setattr__":
            target = args[0]
            for guarded in own_functions + guarded_types:
                if target is guarded:
                    deny("changing the sandbox or pathlib")
        elif event in ("os.kill", "resource.prlimit") and args[0] not in (0, getpid(), -getpid()):
            deny(f"signalling process {args[0]}")
        elif event == "os.killpg" and args[0] not in (0, getpid()):
            deny(f"signalling process group {args[0]}")
        elif event == "import":
            name = str_.__str__(args[0])  # an exact str: no __eq__/__hash__ of a subclass runs
            if name in denied_imports or name.startswith("ctypes."):
                deny(f"importing {name}")

    def audit_hook(event: str, args: tuple) -> None:
        if event == "open":
            check_open(args)
        elif event in path_events:
            check_paths(path_events[event], args)
        elif event in denied_events or event.partition(".")[0] in denied_families:
            deny(event)
        elif event in ("os.listdir", "os.scandir"):
            check_listing(args)
        elif event == "os.symlink":
            check_symlink(args)
        else:
            check_special(event, args)

    own_functions = (audit_hook, deny, text_of, realpath, resolve, inside, other_process, check_open,
                     is_directory, check_listing, check_symlink, check_paths, check_frame, check_special)
    own_codes = frozenset_(function.__code__ for function in own_functions)
    return audit_hook


# --------------------------------------------------------------------------- server side


class Run:
    """One request, queued or running."""

    def __init__(self, request_id: int, program: str, time_limit: float) -> None:
        self.id = request_id
        self.program = program
        self.time_limit = time_limit
        self.slot: Slot | None = None
        self.pid = 0
        self.pidfd = -1
        self.out_fd = -1
        self.status_fd = -1
        self.scratch = ""
        self.output = bytearray()
        self.started = 0.0
        self.deadline = 0.0
        self.killed = False
        self.timed_out = False
        self.overflowed = False


class Slot:
    """A worker slot; when root, its own uid (so leftovers can be found and killed)."""

    def __init__(self, index: int, uid: int | None) -> None:
        self.index = index
        self.uid = uid
        self.run: Run | None = None
        self.runs_since_uid_scan = 0


class Zygote:
    """Single-threaded selector loop that forks, watches and cleans up children."""

    def __init__(self, config: dict, std_fds: tuple[int, int, int]) -> None:
        self.cfg = config
        self.pid = os.getpid()
        self.root = os.geteuid() == 0
        self.request_fd, self.reply_fd, self.devnull = std_fds
        self.prctl, self.network_isolated = _setup_kernel_features(self.root)
        self.base_dir = _make_base_dir(config["tmp_root"], self.root)
        self.lock_fds: list[int] = []
        self.slots = [Slot(i, uid) for i, uid in enumerate(self._slot_uids())]
        for name in COMMON_MODULES + tuple(config["preload"]):
            importlib.import_module(name)
        self.path_fds = _pin_import_paths() if self.root else []
        self.keep_fds = sorted({0, 1, 2, STATUS_FD, *self.path_fds})
        self.child_streams = _make_child_streams()
        self.audit_hook = _make_audit_hook(self.base_dir)
        _disarm_unaudited_functions()
        _warm_up()
        self.queue: collections.deque[Run] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.request_fd, selectors.EVENT_READ, None)
        self.request_buffer = b""
        self.nproc_cache = (0.0, 0)
        sys.dont_write_bytecode = True
        gc.freeze()  # keep preloaded objects out of the children's collections (fewer COW copies)

    # --- setup helpers
    def _slot_uids(self) -> list[int | None]:
        workers = self.cfg["workers"]
        if not self.root:
            return [None] * workers
        lock_dir = _lock_dir()
        uids: list[int | None] = []
        uid = self.cfg["uid_base"]
        while len(uids) < workers and uid < self.cfg["uid_base"] + 65536:
            if _uid_free(uid):
                fd = _try_lock(os.path.join(lock_dir, f"{uid}.lock"))
                if fd is not None and not _uid_processes(uid):
                    self.lock_fds.append(fd)
                    uids.append(uid)
                elif fd is not None:
                    os.close(fd)
            uid += 1
        if len(uids) < workers:
            raise RuntimeError("no free sandbox uids")
        return uids

    # --- main loop
    def serve(self) -> None:
        self._reply({"op": "ready", "pid": self.pid, "root": self.root,
                     "uids": [s.uid for s in self.slots], "network_isolated": self.network_isolated,
                     "scratch_root": self.base_dir})
        try:
            while self._step():
                pass
        finally:
            self._shutdown()

    def _step(self) -> bool:
        for key, _ in self.selector.select(self._select_timeout()):
            if key.data is None:
                if not self._read_requests():
                    return False
                continue
            kind, run = key.data
            if kind == "out":
                self._on_output(run)
            else:
                self._on_exit(run)
        self._enforce_deadlines()
        self._start_queued()
        return True

    def _select_timeout(self) -> float | None:
        deadlines = [s.run.deadline for s in self.slots if s.run and not s.run.killed]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _read_requests(self) -> bool:
        chunk = os.read(self.request_fd, 1 << 16)
        if not chunk:
            return False
        lines = (self.request_buffer + chunk).split(b"\n")
        self.request_buffer = lines.pop()
        for line in lines:
            if line.strip():
                self._handle_request(json.loads(line))
        return True

    def _handle_request(self, request: dict) -> None:
        if request["op"] == "run":
            self.queue.append(Run(request["id"], request["program"], float(request["time_limit"])))
        elif request["op"] == "cancel":
            self._cancel(request["id"])

    def _cancel(self, request_id: int) -> None:
        for run in list(self.queue):
            if run.id == request_id:
                self.queue.remove(run)
                self._reply(_result(run, "error", "cancelled", 0.0))
        for slot in self.slots:
            if slot.run is not None and slot.run.id == request_id:
                self._kill(slot.run)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            run = slot.run
            if run is not None and not run.killed and now >= run.deadline:
                run.timed_out = True
                self._kill(run)

    def _start_queued(self) -> None:
        for slot in self.slots:
            if not self.queue:
                return
            if slot.run is None:
                self._start(self.queue.popleft(), slot)

    # --- running a child
    def _start(self, run: Run, slot: Slot) -> None:
        run.slot = slot
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        nproc = self._nproc_limit(slot)
        run.started = time.monotonic()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (out_r, out_w, status_r, status_w):
                os.close(fd)
            self._reply(_result(run, "error", f"fork failed: {exc}", 0.0))
            return
        if pid == 0:
            try:
                self._child(run, out_w, status_w, nproc)  # never returns
            finally:
                os._exit(SETUP_FAILED)  # never unwind into the server loop in a child
        os.close(out_w)
        os.close(status_w)
        os.set_blocking(out_r, False)
        os.set_blocking(status_r, False)
        run.pid, run.out_fd, run.status_fd = pid, out_r, status_r
        run.scratch = _scratch_path(self.base_dir, pid)
        run.pidfd = _pidfd_open(pid)
        run.deadline = run.started + run.time_limit
        slot.run = run
        self.selector.register(out_r, selectors.EVENT_READ, ("out", run))
        self.selector.register(run.pidfd, selectors.EVENT_READ, ("exit", run))

    def _child(self, run: Run, out_w: int, status_w: int, nproc: int) -> None:
        """In the forked child: confine the process, then execute the program."""
        try:
            self._confine(run, out_w, status_w, nproc)
        except BaseException as exc:  # noqa: BLE001 - must never return into the server loop
            try:
                os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
            finally:
                os._exit(SETUP_FAILED)
        _execute_program(run.program)

    def _confine(self, run: Run, out_w: int, status_w: int, nproc: int) -> None:
        os.setsid()
        os.dup2(self.devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(status_w, STATUS_FD)
        _close_fds_except(self.keep_fds)
        uid = run.slot.uid
        scratch = _scratch_path(self.base_dir, os.getpid())
        os.mkdir(scratch, 0o700)
        if uid is not None:
            os.chown(scratch, uid, uid)
            os.fchown(1, uid, uid)  # the output pipe: lets the program reopen /dev/stdout
        os.chdir(scratch)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)  # every other process of this slot uid (none expected)
            self.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # keeps /proc/self/fd usable for imports
        self.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.pid:
            os._exit(SETUP_FAILED)
        self._set_limits(run, nproc)
        os.environ["HOME"] = os.environ["TMPDIR"] = scratch
        sys.argv = [""]
        sys.stdin, sys.stdout, sys.stderr = self.child_streams
        tempfile = sys.modules.get("tempfile")
        if tempfile is not None:
            tempfile.tempdir = None
        sys.addaudithook(self.audit_hook)

    def _set_limits(self, run: Run, nproc: int) -> None:
        cpu = math.ceil(run.time_limit) + 1
        memory = self.cfg["memory_mb"] << 20
        file_size = self.cfg["file_size_mb"] << 20
        for limit, value, hard in ((resource.RLIMIT_CORE, 0, 0),
                                   (resource.RLIMIT_CPU, cpu, cpu + 1),
                                   (resource.RLIMIT_FSIZE, file_size, file_size),
                                   (resource.RLIMIT_NPROC, nproc, nproc),
                                   (resource.RLIMIT_AS, memory, memory)):
            resource.setrlimit(limit, (value, hard))

    def _nproc_limit(self, slot: Slot) -> int:
        """Per-uid task limit; when not root, relative to the user's current task count."""
        if slot.uid is not None:
            return self.cfg["max_processes"]
        checked, count = self.nproc_cache
        if time.monotonic() - checked > 5.0:
            count = _count_user_tasks(os.getuid())
            self.nproc_cache = (time.monotonic(), count)
        return count + self.cfg["max_processes"]

    # --- events
    def _on_output(self, run: Run) -> None:
        if run.out_fd < 0:  # closed earlier in this same batch of events
            return
        try:
            chunk = os.read(run.out_fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._close_output(run)
            return
        room = self.cfg["max_output_bytes"] - len(run.output)
        run.output += chunk[:room]
        if len(chunk) > room:
            run.overflowed = True
            self._kill(run)
            self._close_output(run)

    def _close_output(self, run: Run) -> None:
        if run.out_fd >= 0:
            self.selector.unregister(run.out_fd)
            os.close(run.out_fd)
            run.out_fd = -1

    def _kill(self, run: Run) -> None:
        run.killed = True
        for target in (lambda: os.killpg(run.pid, signal.SIGKILL), lambda: os.kill(run.pid, signal.SIGKILL)):
            try:
                target()
            except ProcessLookupError:
                pass

    def _on_exit(self, run: Run) -> None:
        if run.pidfd < 0:
            return
        duration = time.monotonic() - run.started
        self.selector.unregister(run.pidfd)
        os.close(run.pidfd)
        run.pidfd = -1
        killed_by_us = run.killed
        self._kill(run)  # its process group, while the zombie still pins the pid and pgid
        run.killed = killed_by_us
        _, wait_status, usage = os.wait4(run.pid, 0)
        run.slot.run = None
        self._sweep(run.slot)
        while run.out_fd >= 0:
            self._drain_output(run)
        record = _read_all(run.status_fd, MAX_STATUS_BYTES)
        os.close(run.status_fd)
        if not _remove_tree(run.scratch):  # keep the pid-derived name free for later children
            try:
                os.rename(run.scratch, f"{self.base_dir}/stale-{run.pid}-{time.monotonic_ns()}")
            except OSError:
                pass
        status, message = self._classify(run, wait_status, usage, record)
        self._reply(_result(run, status, message, duration))

    def _drain_output(self, run: Run) -> None:
        before = len(run.output)
        self._on_output(run)
        if run.out_fd >= 0 and len(run.output) == before:
            self._close_output(run)  # nothing more without blocking: writers are dead

    def _classify(self, run: Run, wait_status: int, usage, record: bytes) -> tuple[str, str]:
        if run.overflowed:
            return "error", "output limit exceeded"
        if run.timed_out:
            return "timeout", f"exceeded {run.time_limit:g} s"
        if os.WIFEXITED(wait_status):
            return self._classify_exit(os.WEXITSTATUS(wait_status), record)
        sig = os.WTERMSIG(wait_status)
        cpu = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= math.ceil(run.time_limit) + 0.5):
            return "timeout", f"exceeded the CPU limit ({cpu:.1f} s CPU)"
        if sig in CRASH_SIGNALS and usage.ru_maxrss * 1024 >= (self.cfg["memory_mb"] << 20) // 2:
            return "memory", f"killed by signal {sig} at the memory limit"
        return "error", f"killed by signal {sig}"

    @staticmethod
    def _classify_exit(code: int, record: bytes) -> tuple[str, str]:
        kind, _, message = record.decode("utf-8", "replace").partition("\n")
        if code == 0 and kind == "ok" and not message:
            return "pass", ""
        if code == 0 and kind in ("fail", "memory"):
            return kind, message
        if code == SETUP_FAILED and not record:
            return "error", "sandbox setup failed"
        return "error", f"exited before finishing (code {code})"

    def _sweep(self, slot: Slot, *, full: bool = False) -> None:
        """Kill whatever a program left behind, even after setsid. This server is a child
        subreaper, so every surviving descendant is re-parented to it and listed in its
        /proc children file: kill and reap those until none is left. When there were any
        (and every UID_SCAN_EVERY runs, and on shutdown) also scan /proc for live
        processes of the slot uid and kill them. The next child of the slot kills all
        other processes of its uid before it starts, too."""
        strays = self._reap_all_strays()
        slot.runs_since_uid_scan += 1
        if slot.uid is None or not (full or strays or slot.runs_since_uid_scan >= UID_SCAN_EVERY):
            return
        slot.runs_since_uid_scan = 0
        for _ in range(100):
            if not _kill_uid(slot.uid) and not self._reap_all_strays():
                return

    def _reap_all_strays(self) -> int:
        total = 0
        for _ in range(100):
            found = self._reap_strays()
            if not found:
                break
            total += found
        return total

    def _reap_strays(self) -> int:
        running = {s.run.pid for s in self.slots if s.run is not None}
        strays = [pid for pid in _child_pids(self.pid) if pid not in running]
        for pid in strays:
            _kill_quietly(pid)
        for pid in strays:
            _reap_quietly(pid)
        return len(strays)

    # --- output to the parent
    def _reply(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.reply_fd, data):]

    def _shutdown(self) -> None:
        for slot in self.slots:
            if slot.run is not None:
                self._kill(slot.run)
                _reap_quietly(slot.run.pid)
                slot.run = None
            self._sweep(slot, full=True)
        _remove_tree(self.base_dir)


def _result(run: Run, status: str, message: str, duration: float) -> dict:
    output = bytes(run.output).decode("utf-8", "replace")
    return {"op": "result", "id": run.id, "status": status, "message": message,
            "output": output, "duration": duration}


# --------------------------------------------------------------------------- OS helpers


def _claim_std_fds() -> tuple[int, int, int]:
    """Move the request/reply pipes off 0/1 and keep 0..3 occupied, so that the pipes made
    for children never land on the descriptor numbers a child rewires."""
    request_fd = os.dup(0)
    reply_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for fd in range(STATUS_FD + 1):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            os.dup2(devnull, fd)
    return request_fd, reply_fd, devnull


def _setup_kernel_features(root: bool):
    """Become a child subreaper (orphans of programs come back to us to be killed) and,
    as root, enter a fresh network namespace (children get no network). Returns the
    prctl function the children need, and whether the network is isolated."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    network_isolated = root and libc.unshare(CLONE_NEWNET) == 0
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return libc.prctl, network_isolated


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


def _warm_up() -> None:
    """Run the compiler, the evaluator and the error-reporting path once (see
    WARM_UP_PROGRAM) so that children inherit them initialised."""
    exec(compile(WARM_UP_PROGRAM, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
    try:
        compile("def broken(:", "<warm-up>", "exec")
    except SyntaxError as exc:
        _format_exception(exc)
    try:
        raise ValueError("warm-up")
    except ValueError as exc:
        _traceback_text(exc)


def _disarm_unaudited_functions() -> None:
    """Replace the few functions that spawn or signal processes without raising an audit
    event (the server itself keeps its own reference to pidfd_open), and drop ctypes from
    sys.modules: children may not import it again (preloaded packages keep their own
    reference; calling C functions through it is denied by the audit hook anyway)."""
    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]
    sys.modules["_posixsubprocess"].fork_exec = _denied("_posixsubprocess.fork_exec")
    for module, name in ((os, "pidfd_open"), (os, "mkfifo"), (os, "mknod"),
                         (signal, "pidfd_send_signal")):
        stub = _denied(f"{module.__name__}.{name}")
        setattr(module, name, stub)
        setattr(sys.modules["posix" if module is os else "_signal"], name, stub)


def _close_fds_except(keep: list[int]) -> None:
    previous = -1
    for fd in keep:
        if fd > previous + 1:
            os.closerange(previous + 1, fd)
        previous = fd
    os.closerange(previous + 1, 1 << 30)


def _pin_import_paths() -> list[int]:
    """Open every import directory once and import through /proc/self/fd/N instead.

    After setuid a child cannot traverse e.g. /root (0700) by name, but a directory fd
    opened by root stays usable; the magic link skips the unreadable ancestors."""
    mapping: dict[str, str] = {}
    for entry in sys.path:
        if entry and entry not in mapping and os.path.isdir(entry):
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
            mapping[entry] = f"/proc/self/fd/{fd}"
    prefixes = sorted(mapping, key=len, reverse=True)

    def remap(path: str) -> str:
        for prefix in prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return mapping[prefix] + path[len(prefix):]
        return path

    sys.path[:] = [remap(p) for p in sys.path]
    for module in list(sys.modules.values()):
        package_path = getattr(module, "__path__", None)
        if isinstance(package_path, list):
            package_path[:] = [remap(p) for p in package_path]
    sys.path_importer_cache.clear()
    return [int(p.rsplit("/", 1)[1]) for p in mapping.values()]


def _make_base_dir(tmp_root: str, root: bool) -> str:
    """Parent of all scratch dirs; traversable (not listable) by the slot uids. A tmpfs
    (/dev/shm) is preferred: creating and removing a dir there is several times cheaper."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        tmp_root = "/dev/shm"
    if root and not _traversable(tmp_root):
        tmp_root = "/tmp"
    _remove_stale_base_dirs(tmp_root)
    base = os.path.join(os.path.realpath(tmp_root), f"scoreflow-sandbox-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(base, 0o711 if root else 0o700)
    os.chmod(base, 0o711 if root else 0o700)
    return base


def _remove_stale_base_dirs(tmp_root: str) -> None:
    """Scratch space left by servers that were killed (they could not clean up)."""
    for name in os.listdir(tmp_root):
        parts = name.split("-")
        if len(parts) == 4 and name.startswith("scoreflow-sandbox-") and parts[2].isdigit():
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                _remove_tree(os.path.join(tmp_root, name))
            except PermissionError:
                pass


def _traversable(path: str) -> bool:
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _lock_dir() -> str:
    """Root-only directory of per-uid lock files: concurrent servers never share a uid."""
    parent = "/run" if os.path.isdir("/run") and os.access("/run", os.W_OK) else "/tmp"
    path = os.path.join(parent, "scoreflow-sandbox-uids")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"unsafe lock directory {path}")
    return path


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def _uid_free(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        return True


def _proc_entries():
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                try:
                    yield int(entry.name), entry.stat(follow_symlinks=False).st_uid
                except OSError:
                    pass


def _uid_processes(uid: int) -> list[int]:
    return [pid for pid, owner in _proc_entries() if owner == uid]


def _kill_uid(uid: int) -> int:
    """SIGKILL every live process of ``uid``; the number signalled (zombies are skipped)."""
    pids = [pid for pid in _uid_processes(uid) if not _is_zombie(pid)]
    for pid in pids:
        _kill_quietly(pid)
    return len(pids)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _count_user_tasks(uid: int) -> int:
    count = 0
    for pid, owner in _proc_entries():
        if owner == uid:
            try:
                count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                count += 1
    return count


def _child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _read_all(fd: int, cap: int) -> bytes:
    data = b""
    while len(data) < cap:
        try:
            chunk = os.read(fd, cap - len(data))
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _remove_tree(path: str) -> bool:
    """Remove a scratch dir (cheap when empty, robust to modes a program changed); False
    if something could not be removed."""
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        pass
    import shutil

    def retry(_func, failed_path, _exc) -> None:
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            if os.path.isdir(failed_path) and not os.path.islink(failed_path):
                os.chmod(failed_path, 0o700)
                shutil.rmtree(failed_path, ignore_errors=True)
            else:
                os.unlink(failed_path)
        except OSError:
            pass

    try:
        shutil.rmtree(path, onerror=retry)
    except OSError:
        pass
    return not os.path.lexists(path)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on SIGTERM too
    std_fds = _claim_std_fds()
    try:
        zygote = Zygote(json.loads(argv[1]), std_fds)
    except BaseException as exc:  # noqa: BLE001 - tell the parent why, then exit
        line = json.dumps({"op": "fatal", "message": f"{type(exc).__name__}: {exc}"}) + "\n"
        os.write(std_fds[1], line.encode())
        raise SystemExit(1) from None
    zygote.serve()


if __name__ == "__main__":
    main(sys.argv)
