"""The time limit of one workflow run, measured on the run's own work.

Why: a stage runs thousands of workflows through one executor concurrency limit and a
few sandbox workers. A limit that counted the wait for those shared resources would
kill multi-call workflows whenever the stage is busy (and spare one-call ones), so the
scores would reward short workflows for reasons that have nothing to do with them.

A :class:`RunClock` starts when a run is admitted and stops while the run waits for a
shared resource: an executor slot, a retry backoff, a sandbox worker, the local model's
queue. What the run itself causes counts: its requests while they are out, its sandbox
programs, the interpreter. The local model computes for many runs at once, so each
request is charged its share of the batch it was decoded in (``charge``). A workflow
that finishes within its limit on an idle system therefore finishes under any load.

A reply taken from the cache is charged the time the call counted when it was made
(the cache stores it), so a resumed run spends its limit exactly as the first one did.

The clock lives in a context variable: the run's task (and tasks it creates) see it,
so the executor and sandbox code mark their waits without being handed the clock.
When the limit is spent the run's task is cancelled, which cancels its in-flight
requests and sandbox programs. If a request had then been out for half the limit or
more and the executor had answered nothing at all since it was sent, the executor
stalled: that is reported as an executor failure, not as the workflow's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_CURRENT: ContextVar[RunClock | None] = ContextVar("scoreflow_run_clock", default=None)
STALL_FRACTION = 0.5  # a request out for this part of the limit, with no reply from anywhere, is a stall
STALL_MIN_S = 2.0  # ... and for at least this long (sub-second limits are for tests, not for stalls)


class WorkflowTimeout(TimeoutError):
    """The run's own work took longer than its limit."""


@dataclass
class _Outstanding:
    """A request of this run that is out on the wire."""

    sent_at: float
    endpoint: str
    last_reply_at: Callable[[], float]  # when the executor last answered anything


class RunClock:
    """Work time of one run: wall time since admission minus time spent queued."""

    def __init__(self, limit_s: float, *, clock: Callable[[], float] = time.monotonic, wall: bool = False) -> None:
        if not limit_s > 0:
            raise ValueError(f"a time limit must be positive (got {limit_s})")
        self.limit_s = float(limit_s)
        self.wall = wall  # count queueing too: wall time since admission (the original's wait_for)
        self._now = clock
        self._started = clock()
        self._queued_s = 0.0
        self._queued_since: float | None = None
        self._waiting = 0
        self._branches = 1
        self._charged_s = 0.0
        self._outstanding: dict[int, _Outstanding] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self.expired = False
        self.stall = ""  # set when the limit ran out during an unanswered request

    # ------------------------------------------------------------ reading

    @property
    def paused(self) -> bool:
        return not self.wall and self._waiting >= self._branches

    def used_s(self) -> float:
        """Seconds of the run's own work so far."""
        queued = self._queued_s + (self._now() - self._queued_since if self._queued_since is not None else 0.0)
        return self._now() - self._started - queued + self._charged_s

    def remaining_s(self) -> float:
        return self.limit_s - self.used_s()

    # ------------------------------------------------------------ marking

    @contextlib.contextmanager
    def queued(self) -> Iterator[None]:
        """The run waits for a shared resource: this time does not count."""
        self._waiting += 1
        if self.paused and self._queued_since is None:
            self._queued_since = self._now()
            self._disarm()
        try:
            yield
        finally:
            self._waiting -= 1
            if not self.paused and self._queued_since is not None:
                self._queued_s += self._now() - self._queued_since
                self._queued_since = None
                self._arm()

    @contextlib.contextmanager
    def branches(self, count: int) -> Iterator[None]:
        """``count`` concurrent parts of the run: the clock stops only when all of them wait."""
        extra = max(0, count - 1)
        self._branches += extra
        try:
            yield
        finally:
            self._branches -= extra

    def charge(self, seconds: float) -> None:
        """Count work done for this run while it was marked as queued (its share of a batch)."""
        if self.wall:
            return  # the wall clock counted that time already
        self._charged_s += max(0.0, seconds)
        if not self.paused:
            self._arm()

    @contextlib.contextmanager
    def request_out(self, endpoint: str, last_reply_at: Callable[[], float]) -> Iterator[None]:
        """A request of this run is on the wire (for telling a stalled executor from a slow run)."""
        key = id(object())
        self._outstanding[key] = _Outstanding(self._now(), endpoint, last_reply_at)
        try:
            yield
        finally:
            self._outstanding.pop(key, None)

    # ------------------------------------------------------------ enforcing

    def watch(self, task: asyncio.Task) -> None:
        """Cancel ``task`` once the run's work reaches the limit."""
        self._task = task
        if not self.paused:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self._task is None or self._task.done():
            return
        loop = self._task.get_loop()
        self._timer = loop.call_later(max(0.0, self.remaining_s()), self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self.paused or self._task is None or self._task.done():
            return
        if self.remaining_s() > 1e-3:
            self._arm()  # work was charged back or time queued meanwhile
            return
        self.expired = True
        self.stall = self._stalled_request()
        self._task.cancel()

    def _stalled_request(self) -> str:
        """Why the executor, not the run, is to blame: a request of the run has been out for
        half the limit or more and the executor answered nothing at all since it was sent.
        (A slow workflow has many shorter requests, and other runs' replies keep arriving.)"""
        now = self._now()
        for out in self._outstanding.values():
            waited = now - out.sent_at
            if waited >= max(STALL_MIN_S, STALL_FRACTION * self.limit_s) and out.last_reply_at() < out.sent_at:
                return f"{out.endpoint}: no reply to any request for {waited:.0f} s"
        return ""


def current_clock() -> RunClock | None:
    """The clock of the run this code is working for (None outside a timed run)."""
    return _CURRENT.get()


@contextlib.contextmanager
def queued() -> Iterator[None]:
    """Mark a wait for a shared resource on the current run's clock, if there is one."""
    clock = _CURRENT.get()
    if clock is None:
        yield
        return
    with clock.queued():
        yield


async def run_timed(
    work: Callable[[], Awaitable[T]], limit_s: float, *, on_stall: Callable[[str], BaseException], wall: bool = False
) -> T:
    """Await ``work()`` under a fresh clock with ``limit_s`` seconds of its own work
    (``wall``: of wall time since now, queueing included, as the original counts).

    Raises :class:`WorkflowTimeout` when the work runs out of time, or ``on_stall(reason)``
    when the limit ran out while a request had gone unanswered by a silent executor.
    """
    clock = RunClock(limit_s, wall=wall)
    token = _CURRENT.set(clock)
    try:
        task = asyncio.ensure_future(work())  # the task copies the context, clock included
    finally:
        _CURRENT.reset(token)
    clock.watch(task)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if clock.expired and (current is None or current.cancelling() == 0):
            if clock.stall:
                raise on_stall(clock.stall) from None
            kind = "wall time" if wall else "the workflow's own time"
            raise WorkflowTimeout(f"no result within {limit_s:g} s of {kind}") from None
        raise
    finally:
        clock._disarm()
