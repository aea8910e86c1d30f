"""Run LLM-written Python in confined child processes, never in this process.

Why: executor-written code (Programmer, Test, HumanEval/MBPP checks) must not be able to
hang the evaluation, read the API key, touch the host's files, use the network, fork,
or forge its score (SPEC section 9; threat model in ``docs/sandbox.md``). Each
``Sandbox`` owns one fork server ("zygote", ``_sandbox_server.py``) that starts inside
one bubblewrap sandbox and forks one confined child per program (~1 ms instead of the
40-100 ms of a fresh interpreter); the kernel enforces the boundary (namespaces,
seccomp, rlimits), the audit hook is defence in depth only.

Two ways to run code:

- ``run(program)``: one process; "pass" means the program ran to its end. The program
  writes that record itself, so it is the program's claim: fine for public tests and the
  Programmer, never for a score.
- ``check(CodeCheck(...))``: the solution runs in one process, the hidden tests in
  another that only talks to it through a pipe carrying plain data; the tests' process
  alone writes the verdict, to a pipe only this process reads. No program can forge a
  pass: early exits, patched output functions, objects with a permissive ``==`` and
  closed descriptors all fail.

``isolation: strict`` (default) refuses to run code where the kernel forbids user
namespaces; ``weak`` then accepts Landlock + seccomp + rlimits instead (and still uses
strict isolation wherever it works). ``server_info()["isolation"]`` says which ran.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import weakref
from dataclasses import dataclass, field
from typing import Any

from scoreflow import _sandbox_host as host
from scoreflow._sandbox_types import SandboxResult, SandboxStatus, SandboxUnavailable
from scoreflow.runclock import queued

__all__ = ["CodeCheck", "Sandbox", "SandboxResult", "SandboxSettings", "SandboxStatus", "SandboxUnavailable"]

ISOLATION_MODES = ("strict", "weak")


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
    isolation: str = "strict"

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value, low, high = getattr(self, spec.name), spec.metadata.get("min"), spec.metadata.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"sandbox.{spec.name} must be in [{low}, {high}] (got {value})")
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"sandbox.isolation must be one of {', '.join(ISOLATION_MODES)} (got {self.isolation!r})")


    @property
    def scratch_mb(self) -> int:
        """Size of a program's private scratch tmpfs (it is memory, so it is bounded too)."""
        return max(16, 4 * self.file_size_mb)


@dataclass(frozen=True)
class CodeCheck:
    """Hidden tests of one code problem, kept apart from the candidate solution.

    ``solution`` is untrusted and runs after ``prelude`` in the candidate's process.
    ``prelude``, ``tests`` and ``call`` are trusted: they run in the tests' process,
    where the names the tests use and no trusted code defines (the entry point, helpers)
    stand for the candidate's objects; a call crosses with its arguments and result as
    plain data. ``call`` (e.g. ``check(add)``) must return for the check to pass.
    """

    solution: str
    tests: str
    call: str
    entry_point: str
    prelude: str = ""

    def texts(self) -> tuple[str, str]:
        spec = {"prelude": self.prelude, "tests": self.tests, "call": self.call, "entry_point": self.entry_point}
        return self.prelude + "\n\n" + self.solution + "\n", json.dumps(spec)


class Sandbox:
    """Runs programs in confined children of one lazily started fork server.

    ``site_packages``: the server may import third-party packages; only the
    site-packages entries that ``preload`` loads are visible in strict isolation.
    ``preload``: extra modules the server imports once, so each child starts with them.
    ``_audit_hook=False`` (tests only): children run without the audit hook, to show
    that the kernel's boundary alone contains a program.
    """

    def __init__(self, settings: SandboxSettings = SandboxSettings(), *,
                 site_packages: bool = False, preload: tuple[str, ...] = (), _audit_hook: bool = True) -> None:
        self.settings = settings
        self._supervisor = host.Supervisor(settings, site_packages, tuple(preload), _audit_hook)
        self._ids = itertools.count(1)
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self._gate_semaphore = asyncio.Semaphore(settings.workers)
        self._finalizer = weakref.finalize(self, _close_supervisor, self._supervisor)

    # --- plain programs
    def submit(self, program: str, *, time_limit_s: float | None = None) -> concurrent.futures.Future[SandboxResult]:
        """Queue a program; the future resolves to its ``SandboxResult``."""
        return self._submit("run", (program,), time_limit_s)

    async def run(self, program: str, *, time_limit_s: float | None = None) -> SandboxResult:
        """Await a program from any event loop (waiting happens off the loop).

        At most ``workers`` programs of a loop are handed to the server at once, so a
        program starts when it gets a slot; the wait for the slot is queueing on the
        calling run's clock (``runclock``), the program's own time is its work."""
        return await self._gated(lambda: self.submit(program, time_limit_s=time_limit_s))

    def run_sync(self, program: str, *, time_limit_s: float | None = None) -> SandboxResult:
        return self.submit(program, time_limit_s=time_limit_s).result()

    # --- checks whose verdict the candidate cannot write
    def submit_check(self, check: CodeCheck, *, time_limit_s: float | None = None
                     ) -> concurrent.futures.Future[SandboxResult]:
        """Queue a check; "pass" only if the tests' call returned (see ``CodeCheck``)."""
        return self._submit("check", check.texts(), time_limit_s)

    async def check(self, check: CodeCheck, *, time_limit_s: float | None = None) -> SandboxResult:
        """``run``'s counterpart for ``CodeCheck``s (same slots and clock)."""
        return await self._gated(lambda: self.submit_check(check, time_limit_s=time_limit_s))

    def check_sync(self, check: CodeCheck, *, time_limit_s: float | None = None) -> SandboxResult:
        return self.submit_check(check, time_limit_s=time_limit_s).result()

    # --- plumbing
    def _submit(self, kind: str, texts: tuple[str, ...], time_limit_s: float | None) -> concurrent.futures.Future:
        limit = self.settings.default_time_limit_s if time_limit_s is None else float(time_limit_s)
        if not limit > 0:
            raise ValueError(f"time_limit_s must be positive (got {time_limit_s})")
        if self._supervisor.closed or not self._finalizer.alive:
            raise RuntimeError("Sandbox is closed")
        supervisor = self._supervisor
        request = host.Request(next(self._ids), kind, texts, limit, concurrent.futures.Future())
        request.future.add_done_callback(lambda f: f.cancelled() and supervisor.post("cancel", request.id))
        supervisor.post("submit", request)
        return request.future

    async def _gated(self, start) -> SandboxResult:
        gate = self._gate()
        with queued():
            await gate.acquire()
        try:
            return await asyncio.wrap_future(start())
        finally:
            gate.release()

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._gate_loop is not loop:
            self._gate_loop, self._gate_semaphore = loop, asyncio.Semaphore(self.settings.workers)
        return self._gate_semaphore

    def server_info(self) -> dict[str, Any]:
        """The running server: host pid (``pid``), ``isolation`` ("strict"/"weak"),
        ``sandbox_uid``, ``landlock``, ``scratch``; starts the server if needed."""
        if not self._finalizer.alive:
            raise RuntimeError("Sandbox is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._supervisor.post("info", future)
        return future.result(timeout=300)

    def close(self) -> None:
        """Stop the server; queued and running programs end with status "error"."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _close_supervisor(supervisor: host.Supervisor) -> None:
    future: concurrent.futures.Future = concurrent.futures.Future()
    supervisor.post("close", future)
    try:
        future.result(timeout=30)
    except concurrent.futures.TimeoutError:
        pass


def isolations_used() -> list[str]:
    """The isolation ("strict"/"weak") of every sandbox server this process has started, so
    that each stage manifest names the mode its code actually ran under."""
    from scoreflow._sandbox_host import ISOLATIONS_STARTED

    return sorted(ISOLATIONS_STARTED)
