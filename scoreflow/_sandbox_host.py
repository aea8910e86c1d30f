"""The host side of a sandbox: one thread that owns the fork server and every descriptor.

The queue of programs lives here, never in the server: a request is handed to the
server only when a worker is free, as a small JSON message with descriptors attached
(a memfd holding the program, the write ends of an output pipe and a result pipe).
Programs write their output and result to those pipes; this thread reads them, caps the
output, and decides the status from the result and the exit report of the server. For a
check the result pipe belongs to the tests' process alone, so the candidate cannot write
the verdict.

All state changes happen on this one thread (callers post commands and are woken by
futures), so no locks guard the queue, the server or the pipes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import json
import math
import os
import queue
import selectors
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from scoreflow import _sandbox_launch as launch
from scoreflow._sandbox_types import SandboxResult, SandboxUnavailable, error_result

MAX_ATTEMPTS = 2  # a request whose server died is tried once more on a fresh server
IN_FLIGHT_PER_WORKER = 2  # requests handed to the server per worker (it starts the next at once)
MAX_RECORD = 8192
SETUP_FAILED = 125
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGKILL)
_STRICT_REFUSED: dict[str, str] = {}  # why strict isolation failed in this process, once known
ISOLATIONS_STARTED: set[str] = set()  # the isolation of every server this process started (for manifests)


@dataclass
class Request:
    """One program (kind "run") or check (kind "check") and the future of its result."""

    id: int
    kind: str
    texts: tuple[str, ...]
    time_limit: float
    future: concurrent.futures.Future
    attempts: int = 0


@dataclass
class Running:
    """A request handed to the server, with the host's ends of its pipes."""

    request: Request
    output_fd: int
    result_fd: int
    output: bytearray = field(default_factory=bytearray)
    overflowed: bool = False


def make_undumpable() -> None:
    """Make this process's /proc/<pid>/environ and memory unreadable by its own uid, so
    a program that got around everything else still cannot read the API key there."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


class Server:
    """A started fork server: the process and the host's end of the control socket."""

    def __init__(self, settings, isolation: str, site_packages: bool, preload: tuple[str, ...],
                 audit_hook: bool = True) -> None:
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.isolation = isolation
        self.control = host_end
        self.ready: dict[str, Any] | None = None
        self.stderr = bytearray()
        try:
            plan = launch.plan(settings, isolation=isolation, control_fd=server_end.fileno(),
                               preload=preload, site_packages=site_packages, audit_hook=audit_hook)
            try:
                self.process = subprocess.Popen(plan.argv, pass_fds=plan.pass_fds, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/",
                                                env=dict(launch.ENV), start_new_session=True)
            finally:
                for fd in plan.pass_fds:
                    if fd != server_end.fileno():
                        os.close(fd)
        finally:
            server_end.close()
        os.set_blocking(self.process.stderr.fileno(), False)

    def send(self, message: dict, fds: list[int] = ()) -> bool:
        try:
            socket.send_fds(self.control, [json.dumps(message).encode()], list(fds))
            return True
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """EOF on the control socket makes the server kill its children and exit."""
        try:
            self.control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.control.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()


class Supervisor:
    """Owns the server and every request of one ``Sandbox``; holds no reference to it."""

    def __init__(self, settings, site_packages: bool, preload: tuple[str, ...], audit_hook: bool = True) -> None:
        self.settings = settings
        self.audit_hook = audit_hook
        self.site_packages = site_packages
        self.preload = preload
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_read, selectors.EVENT_READ, ("wake", None))
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict[int, Running] = {}
        self.info_waiters: list[concurrent.futures.Future] = []
        self.server: Server | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="sandbox-host", daemon=True)
        self.thread.start()

    # --- called from any thread
    def post(self, *command) -> None:
        self.commands.put(command)
        try:
            os.write(self.wake_write, b"x")
        except (BlockingIOError, OSError):
            pass

    # --- the loop (this thread only)
    def _loop(self) -> None:
        while not (self.closed and not self.running and self.server is None):
            for key, _ in self.selector.select():
                self._handle_event(*key.data)
            self._dispatch()
        self.selector.close()
        os.close(self.wake_read)
        os.close(self.wake_write)

    def _handle_event(self, kind: str, payload) -> None:
        """One ready descriptor. Events of a server or request that an earlier event of
        the same batch already finished are skipped."""
        if kind == "wake":
            self._drain_wake()
        elif kind in ("control", "stderr") and payload is not self.server:
            return
        elif kind == "control":
            self._on_control(payload)
        elif kind == "stderr":
            self._on_stderr(payload)
        elif kind == "output" and self.running.get(payload.request.id) is payload:
            self._on_output(payload)

    def _drain_wake(self) -> None:
        try:
            os.read(self.wake_read, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            getattr(self, "_cmd_" + command[0])(*command[1:])

    def _cmd_submit(self, request: Request) -> None:
        if self.closed:
            _resolve(request.future, exception=RuntimeError("Sandbox is closed"))
            return
        self.waiting.append(request)
        self._ensure_server()

    def _cmd_cancel(self, request_id: int) -> None:
        for request in list(self.waiting):
            if request.id == request_id:
                self.waiting.remove(request)
                _resolve(request.future, error_result("cancelled"))
        if request_id in self.running and self.server is not None:
            self.server.send({"op": "kill", "id": request_id})

    def _cmd_info(self, future: concurrent.futures.Future) -> None:
        if self.closed:
            _resolve(future, exception=RuntimeError("Sandbox is closed"))
            return
        if self.server is not None and self.server.ready is not None:
            _resolve(future, self._info())
            return
        self.info_waiters.append(future)
        self._ensure_server()

    def _cmd_close(self, future: concurrent.futures.Future) -> None:
        self.closed = True
        for request in self.waiting:
            _resolve(request.future, error_result("sandbox closed"))
        self.waiting.clear()
        for running in list(self.running.values()):
            self._finish(running, ("error", "sandbox closed", 0.0))
        for waiter in self.info_waiters:
            _resolve(waiter, exception=RuntimeError("Sandbox is closed"))
        self.info_waiters.clear()
        self._drop_server()
        _resolve(future, True)

    # --- the server
    def _ensure_server(self) -> None:
        if self.server is not None or self.closed:
            return
        isolation = "weak" if self._weak_only() else "strict"
        try:
            make_undumpable()
            server = Server(self.settings, isolation, self.site_packages, self.preload, self.audit_hook)
        except (launch.LaunchError, OSError) as exc:
            self._startup_failed(isolation, str(exc))
            return
        self.server = server
        ISOLATIONS_STARTED.add(isolation)
        self.selector.register(server.control, selectors.EVENT_READ, ("control", server))
        self.selector.register(server.process.stderr, selectors.EVENT_READ, ("stderr", server))

    def _weak_only(self) -> bool:
        return self.settings.isolation == "weak" and "reason" in _STRICT_REFUSED

    def _on_stderr(self, server: Server) -> None:
        try:
            chunk = os.read(server.process.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(server.process.stderr)
            return
        if len(server.stderr) < 65536:
            server.stderr += chunk

    def _on_control(self, server: Server) -> None:
        try:
            data = server.control.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._server_ended(server)
            return
        message = json.loads(data)
        if message["op"] == "ready":
            server.ready = message
            for waiter in self.info_waiters:
                _resolve(waiter, self._info())
            self.info_waiters.clear()
        elif message["op"] == "fatal":
            server.stderr += ("\n" + message["message"]).encode()
        elif message["op"] == "exit":
            running = self.running.get(message["id"])
            if running is not None:
                self._finish(running, self._classify(running, message))

    def _server_ended(self, server: Server) -> None:
        started = server.ready is not None
        self._drop_server()
        if not started:
            self._startup_failed(server.isolation, _reason(server))
            return
        for running in list(self.running.values()):
            del self.running[running.request.id]
            self._close_pipes(running)
            request = running.request
            if request.attempts >= MAX_ATTEMPTS or self.closed:
                _resolve(request.future, error_result(f"sandbox server exited (code {server.process.returncode})"))
            else:
                self.waiting.appendleft(request)
        if self.waiting and not self.closed:
            self._ensure_server()

    def _startup_failed(self, isolation: str, reason: str) -> None:
        if isolation == "strict":
            _STRICT_REFUSED.setdefault("reason", reason)
            if self.settings.isolation == "weak":
                self._ensure_server()  # the settings accept the weaker mode
                return
            reason = (f"strict isolation is not available here ({reason}); the sandbox refuses to run code. "
                      "Set `sandbox.isolation: weak` to accept the weaker mode (Landlock, seccomp, rlimits)")
        error = SandboxUnavailable(f"sandbox server failed to start: {reason}")
        for request in self.waiting:
            _resolve(request.future, exception=error)
        self.waiting.clear()
        for waiter in self.info_waiters:
            _resolve(waiter, exception=error)
        self.info_waiters.clear()

    def _drop_server(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        for stream in (server.control, server.process.stderr):
            try:
                self.selector.unregister(stream)
            except (KeyError, ValueError):
                pass
        server.stop()

    def _info(self) -> dict[str, Any]:
        server = self.server
        info = dict(server.ready)
        info.update(pid=server.process.pid, zygote_pid=server.ready["pid"], seccomp=True,
                    strict_refused=_STRICT_REFUSED.get("reason") if server.isolation == "weak" else None)
        return info

    # --- requests
    def _dispatch(self) -> None:
        server = self.server
        while (server is not None and server.ready is not None and self.waiting
               and len(self.running) < self.settings.workers * IN_FLIGHT_PER_WORKER):
            request = self.waiting.popleft()
            if request.future.cancelled():
                continue
            request.attempts += 1
            running = self._start(server, request)
            if running is None:
                self.waiting.appendleft(request)
                return

    def _start(self, server: Server, request: Request) -> Running | None:
        texts = [_memfd(text) for text in request.texts]
        output_r, output_w = os.pipe()
        result_r, result_w = os.pipe()
        os.set_blocking(output_r, False)
        os.set_blocking(result_r, False)
        message = {"op": request.kind, "id": request.id, "time_limit": request.time_limit}
        sent = server.send(message, [*texts, output_w, result_w])
        for fd in (*texts, output_w, result_w):
            os.close(fd)
        if not sent:
            os.close(output_r)
            os.close(result_r)
            return None
        running = Running(request, output_r, result_r)
        self.running[request.id] = running
        self.selector.register(output_r, selectors.EVENT_READ, ("output", running))
        return running

    def _on_output(self, running: Running) -> None:
        if running.output_fd < 0:
            return
        try:
            chunk = os.read(running.output_fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._close_output(running)
            return
        room = self.settings.max_output_bytes - len(running.output)
        running.output += chunk[:room]
        if len(chunk) > room and not running.overflowed:
            running.overflowed = True
            self._close_output(running)
            if self.server is not None:
                self.server.send({"op": "kill", "id": running.request.id})

    def _close_output(self, running: Running) -> None:
        if running.output_fd >= 0:
            self.selector.unregister(running.output_fd)
            os.close(running.output_fd)
            running.output_fd = -1

    def _finish(self, running: Running, outcome: tuple[str, str, float]) -> None:
        """Drain what is left of the output (every writer has exited), close, resolve."""
        while running.output_fd >= 0:
            before = len(running.output)
            self._on_output(running)
            if running.output_fd >= 0 and len(running.output) == before:
                self._close_output(running)
        self.running.pop(running.request.id, None)
        self._close_pipes(running)
        status, message, duration = outcome
        output = bytes(running.output).decode("utf-8", "replace")
        _resolve(running.request.future, SandboxResult(status, message, output, duration))

    def _close_pipes(self, running: Running) -> None:
        self._close_output(running)
        if running.result_fd >= 0:
            os.close(running.result_fd)
            running.result_fd = -1

    def _classify(self, running: Running, report: dict) -> tuple[str, str, float]:
        record = _read_record(running.result_fd)
        duration = float(report["duration"])
        if running.overflowed:
            return "error", "output limit exceeded", duration
        if report.get("timed_out"):
            return "timeout", f"exceeded {running.request.time_limit:g} s", duration
        if report.get("error"):
            return "error", report["error"], duration
        processes = report["processes"]
        if running.request.kind == "run":
            return (*self._classify_process(processes["program"], record, running.request.time_limit), duration)
        return (*self._classify_check(processes, record, running.request.time_limit), duration)

    def _classify_check(self, processes: dict, verdict: bytes, time_limit: float) -> tuple[str, str]:
        """Only the tests' process decides; the candidate's exit explains a candidate
        that stopped answering."""
        tests = processes.get("tests")
        if tests is None:
            return "error", "the tests could not start"
        kind, _, message = verdict.decode("utf-8", "replace").partition("\n")
        if os.WIFEXITED(tests["status"]) and os.WEXITSTATUS(tests["status"]) == 0:
            if kind == "ok" and not message:
                return "pass", ""
            if kind in ("fail", "memory"):
                return kind, message
            if kind == "ended" and "candidate" in processes:
                status, why = self._classify_process(processes["candidate"], b"", time_limit)
                return (status, why) if status != "pass" else ("error", "the candidate stopped answering")
        return self._classify_process(tests, verdict, time_limit, role="tests")

    def _classify_process(self, process: dict, record: bytes, time_limit: float,
                          role: str = "") -> tuple[str, str]:
        status = process["status"]
        if os.WIFEXITED(status):
            return _classify_exit(os.WEXITSTATUS(status), record, role)
        sig = os.WTERMSIG(status)
        cpu = process["cpu"]
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= math.ceil(time_limit) + 0.5):
            return "timeout", f"exceeded the CPU limit ({cpu:.1f} s CPU)"
        if sig in CRASH_SIGNALS and process["maxrss_kb"] * 1024 >= (self.settings.memory_mb << 20) // 2:
            return "memory", f"killed by signal {sig} at the memory limit"
        return "error", f"killed by signal {sig}"

    def _finish_all_closed(self) -> None:
        for running in list(self.running.values()):
            self._finish(running, ("error", "sandbox closed", 0.0))


def _classify_exit(code: int, record: bytes, role: str = "") -> tuple[str, str]:
    kind, _, message = record.decode("utf-8", "replace").partition("\n")
    if code == 0 and kind == "ok" and not message:
        return "pass", ""
    if code == 0 and kind in ("fail", "memory"):
        return kind, message
    if code == SETUP_FAILED and not record:
        return "error", "sandbox setup failed"
    who = "the tests" if role == "tests" else ""
    return "error", f"{who + ' ' if who else ''}exited before finishing (code {code})"


def _reason(server: Server) -> str:
    try:
        server.process.wait(5)
    except subprocess.TimeoutExpired:
        pass
    try:
        rest = server.process.stderr.read() or b""
    except (OSError, ValueError):
        rest = b""
    text = (bytes(server.stderr) + rest).decode("utf-8", "replace").strip()
    return text.splitlines()[-1][:500] if text else f"exited with code {server.process.returncode}"


def _memfd(text: str) -> int:
    fd = os.memfd_create("program", os.MFD_CLOEXEC)
    data = text.encode("utf-8", "surrogateescape")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


def _read_record(fd: int) -> bytes:
    if fd < 0:
        return b""
    data = b""
    while len(data) < MAX_RECORD:
        try:
            chunk = os.read(fd, MAX_RECORD - len(data))
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _resolve(future: concurrent.futures.Future, result: Any = None, *, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless the caller already cancelled it."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
