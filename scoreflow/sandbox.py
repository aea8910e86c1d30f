"""Run LLM-written Python in confined child processes, never in this process.

Why: executor-written code (Programmer, Test, HumanEval/MBPP checks) must not be able to
hang the evaluation, read the API key, delete files, use the network or fork without
limit (SPEC section 9). Each ``Sandbox`` owns one fork server ("zygote",
``_sandbox_server.py``, the only code that compiles and runs program text) started with
a scrubbed environment; it forks one child per program, which is ~1 ms instead of the
40-100 ms of a fresh interpreter. The child gets its own session, a fresh scratch dir as
cwd (removed afterwards), rlimits (CPU, address space, file size, processes), stdin from
/dev/null, captured and capped output and an audit-hook policy; when the server runs as
root also an unprivileged per-slot uid and no network. After each run the server kills
the process group, every process of the slot uid and any orphan re-parented to it. A
reader thread resolves ``concurrent.futures.Future``s, so threads and any asyncio event
loop can wait on results.

Without root there is no uid switch and no network namespace: the audit hook is then the
main guard (it is defence in depth, not a boundary against code written to subvert
CPython), with the rlimits (RLIMIT_NPROC relative to the user's current task count) and
the process sweep. Status "pass" means the program ran to its end; a program can still
fake its own result (e.g. by writing the completion marker itself), so the sandbox
protects the host, not the score, from deliberately cheating code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scoreflow.runclock import queued

SandboxStatus = Literal["pass", "fail", "timeout", "memory", "error"]

_SERVER_SCRIPT = Path(__file__).with_name("_sandbox_server.py")
_ENV_ALLOWED = ("PATH", "LANG", "LC_ALL")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_MAX_ATTEMPTS = 2  # a request whose server died is retried once on a fresh server


@dataclass(frozen=True)
class SandboxSettings:
    """Limits of the code sandbox (config section ``sandbox:``)."""

    workers: int = field(default=2, metadata={"min": 1, "max": 1024})
    memory_mb: int = field(default=1024, metadata={"min": 64, "max": 1 << 20})
    file_size_mb: int = field(default=16, metadata={"min": 1, "max": 1 << 20})
    max_processes: int = field(default=16, metadata={"min": 1, "max": 4096})
    max_output_bytes: int = field(default=65536, metadata={"min": 1024, "max": 1 << 30})
    default_time_limit_s: float = field(default=30.0, metadata={"min": 0.1, "max": 86400.0})
    uid_base: int = field(default=61000, metadata={"min": 1000, "max": 4_000_000_000})

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value, low, high = getattr(self, spec.name), spec.metadata.get("min"), spec.metadata.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"sandbox.{spec.name} must be in [{low}, {high}] (got {value})")


class SandboxUnavailable(RuntimeError):
    """The sandbox itself cannot run programs (its server fails to start): no program's fault."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: status, a one-line reason, captured output (capped)."""

    status: SandboxStatus
    message: str
    output: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class Sandbox:
    """Runs programs in confined children of one lazily started fork server.

    ``site_packages``: start the server with ``site`` so third-party packages import.
    ``preload``: extra modules the server imports once, so each child starts with them.
    """

    def __init__(self, settings: SandboxSettings = SandboxSettings(), *,
                 site_packages: bool = False, preload: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self._manager = _ServerManager(settings, site_packages, tuple(preload))
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self._gate_semaphore = asyncio.Semaphore(settings.workers)
        self._finalizer = weakref.finalize(self, self._manager.close)

    def submit(self, program: str, *, time_limit_s: float | None = None) -> concurrent.futures.Future[SandboxResult]:
        """Queue a program; the future resolves to its ``SandboxResult``."""
        limit = self.settings.default_time_limit_s if time_limit_s is None else float(time_limit_s)
        if not limit > 0:
            raise ValueError(f"time_limit_s must be positive (got {time_limit_s})")
        return self._manager.submit(program, limit)

    async def run(self, program: str, *, time_limit_s: float | None = None) -> SandboxResult:
        """Await a program from any event loop (waiting happens off the loop).

        At most ``workers`` programs of a loop are handed to the server at once, so a
        program starts when it gets a slot; the wait for the slot is queueing on the
        calling run's clock (``runclock``), the program's own time is its work."""
        gate = self._gate()
        with queued():
            await gate.acquire()
        try:
            return await asyncio.wrap_future(self.submit(program, time_limit_s=time_limit_s))
        finally:
            gate.release()

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._gate_loop is not loop:
            self._gate_loop, self._gate_semaphore = loop, asyncio.Semaphore(self.settings.workers)
        return self._gate_semaphore

    def run_sync(self, program: str, *, time_limit_s: float | None = None) -> SandboxResult:
        return self.submit(program, time_limit_s=time_limit_s).result()

    def server_info(self) -> dict[str, Any]:
        """Diagnostics of the running server (pid, root, slot uids, network isolation)."""
        return self._manager.info()

    def close(self) -> None:
        """Stop the server; queued and running programs end with status "error"."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class _Request:
    id: int
    program: str
    time_limit: float
    future: concurrent.futures.Future
    attempts: int = 0

    def line(self) -> bytes:
        payload = {"op": "run", "id": self.id, "program": self.program, "time_limit": self.time_limit}
        return (json.dumps(payload) + "\n").encode()


class _ServerManager:
    """Owns the current server process; restarts it when it died. Holds no reference to
    the ``Sandbox`` so that the sandbox can be garbage-collected (its finaliser stops us)."""

    def __init__(self, settings: SandboxSettings, site_packages: bool, preload: tuple[str, ...]) -> None:
        self.settings = settings
        self.site_packages = site_packages
        self.preload = preload
        self.lock = threading.Lock()
        self.server: _ServerProcess | None = None
        self.closed = False
        self.ids = itertools.count(1)

    def submit(self, program: str, time_limit: float) -> concurrent.futures.Future:
        request = _Request(next(self.ids), program, time_limit, concurrent.futures.Future())
        self._send(request)
        return request.future

    def _send(self, request: _Request) -> None:
        request.attempts += 1
        with self.lock:
            if self.closed:
                raise RuntimeError("Sandbox is closed")
            if self.server is None or not self.server.send(request):
                self.server = self._start_server()
                self.server.send(request)

    def _start_server(self) -> _ServerProcess:
        return _ServerProcess(self._command(), self._environment(), self._server_died)

    def _server_died(self, unfinished: list[_Request], reason: str, fatal: bool) -> None:
        reason = "sandbox closed" if self.closed else reason
        for request in unfinished:
            if request.future.done():
                continue
            if fatal:
                _resolve(request.future, exception=SandboxUnavailable(f"sandbox server failed to start: {reason}"))
            elif self.closed or request.attempts >= _MAX_ATTEMPTS:
                _resolve(request.future, SandboxResult("error", reason, "", 0.0))
            else:
                try:
                    self._send(request)
                except RuntimeError as exc:
                    _resolve(request.future, SandboxResult("error", str(exc), "", 0.0))

    def _command(self) -> list[str]:
        config = {
            "workers": self.settings.workers, "memory_mb": self.settings.memory_mb,
            "file_size_mb": self.settings.file_size_mb, "max_processes": self.settings.max_processes,
            "max_output_bytes": self.settings.max_output_bytes, "uid_base": self.settings.uid_base,
            "tmp_root": tempfile.gettempdir(), "preload": list(self.preload),
        }
        flags = ["-I"] if self.site_packages else ["-I", "-S"]
        return [sys.executable, *flags, str(_SERVER_SCRIPT), json.dumps(config)]

    @staticmethod
    def _environment() -> dict[str, str]:
        """Only an allow-list: no API keys, tokens or proxies reach the server."""
        env = {name: os.environ[name] for name in _ENV_ALLOWED if name in os.environ}
        env.setdefault("PATH", _DEFAULT_PATH)
        env["HOME"] = env["TMPDIR"] = tempfile.gettempdir()
        return env

    def info(self) -> dict[str, Any]:
        with self.lock:
            if self.closed:
                raise RuntimeError("Sandbox is closed")
            if self.server is None or not self.server.alive:
                self.server = self._start_server()
            server = self.server
        return server.wait_ready()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            server, self.server = self.server, None
        if server is not None:
            server.stop()


class _ServerProcess:
    """One running zygote: a writer thread feeds requests, a reader thread resolves
    futures from its JSON-line replies."""

    def __init__(self, command: list[str], env: dict[str, str], on_exit) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, close_fds=True, cwd="/", start_new_session=True)
        self.on_exit = on_exit
        self.alive = True
        self.lock = threading.Lock()
        self.pending: dict[int, _Request] = {}
        self.outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.ready_info: dict[str, Any] = {}
        self.fatal = ""
        self.reader = threading.Thread(target=self._read_loop, name="sandbox-reader", daemon=True)
        self.writer = threading.Thread(target=self._write_loop, name="sandbox-writer", daemon=True)
        self.reader.start()
        self.writer.start()

    def send(self, request: _Request) -> bool:
        """Queue a request; False when this server has already exited."""
        with self.lock:
            if not self.alive:
                return False
            self.pending[request.id] = request
        request.future.add_done_callback(lambda future: self._cancel_if_cancelled(future, request.id))
        self.outbox.put(request.line())
        return True

    def _cancel_if_cancelled(self, future: concurrent.futures.Future, request_id: int) -> None:
        if future.cancelled() and self.alive:
            self.outbox.put((json.dumps({"op": "cancel", "id": request_id}) + "\n").encode())

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        if not self.ready.wait(timeout) or self.fatal:
            raise RuntimeError(f"sandbox server not ready: {self.fatal or 'timed out'}")
        return dict(self.ready_info)

    def _write_loop(self) -> None:
        stream = self.process.stdin
        while (data := self.outbox.get()) is not None:
            try:
                stream.write(data)
                if self.outbox.empty():
                    stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                break
        try:
            stream.close()
        except (BrokenPipeError, OSError):
            pass

    def _read_loop(self) -> None:
        try:
            for line in self.process.stdout:
                self._dispatch(json.loads(line))
        finally:
            self._finish()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["op"] == "result":
            self._deliver(message)
        elif message["op"] == "ready":
            self.ready_info = message
            self.ready.set()
        elif message["op"] == "fatal":
            self.fatal = message["message"]

    def _deliver(self, message: dict[str, Any]) -> None:
        with self.lock:
            request = self.pending.pop(message["id"], None)
        if request is not None:
            _resolve(request.future, SandboxResult(message["status"], message["message"],
                                                   message["output"], message["duration"]))

    def _finish(self) -> None:
        self.process.stdout.close()
        code = self.process.wait()
        with self.lock:
            self.alive = False
            unfinished, self.pending = list(self.pending.values()), {}
        self.ready.set()
        self.outbox.put(None)
        reason = self.fatal or f"sandbox server exited (code {code})"
        self.on_exit(unfinished, reason, bool(self.fatal))

    def stop(self, timeout: float = 5.0) -> None:
        """EOF makes the server kill its children and remove its scratch space."""
        self.outbox.put(None)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if threading.current_thread() is not self.reader:
            self.reader.join(timeout)


def _resolve(future: concurrent.futures.Future, result: SandboxResult | None = None, *,
             exception: BaseException | None = None) -> None:
    """Set a future's outcome unless the caller already cancelled it."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
