"""Admitting runs, and stopping a stage when the executor fails rather than the workflows.

Two rules shared by the evaluate and generate stages:

* **Admission.** A fixed number of runs is in flight at once (``config.runs_admitted``):
  a new run starts when one finishes. A run's time limit starts when it is admitted
  (``runclock``), and a stage's memory is bounded by what is in flight, not by its size.
* **Infrastructure failures are not scores.** A run that failed because the executor
  (or the sandbox) failed — unreachable, wrong URL or key, erroring or silent after the
  client's retries — is left unscored and queued again. When ``limit`` such failures
  come in a row, with no executor reply between them, no new run starts; the runs in
  flight finish (their replies are paid for, so they are kept and recorded), then the
  stage stops with :class:`StageStopped`: one line naming the cause, resumable.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from scoreflow.errors import ScoreFlowError
from scoreflow.executor.client import ExecutorUnavailable, UsageMeter
from scoreflow.sandbox import SandboxUnavailable

T = TypeVar("T")
INFRASTRUCTURE = (ExecutorUnavailable, SandboxUnavailable)


class StageStopped(ScoreFlowError):
    """The executor failed too often in a row; the stage stopped and can be resumed."""


class FailureStreak:
    """Counts infrastructure failures with no executor reply between them."""

    def __init__(self, limit: int, meter: UsageMeter, stage: str) -> None:
        self.limit = limit
        self.meter = meter
        self.stage = stage
        self.streak = 0
        self.total = 0
        self.stopped: StageStopped | None = None
        self._replies_at_last = -1

    def failed(self, error: BaseException) -> None:
        """Note one failure; the stage is to stop once the streak reaches the limit."""
        replies = self.meter.calls
        self.streak = self.streak + 1 if replies == self._replies_at_last else 1
        self._replies_at_last = replies
        self.total += 1
        if self.streak >= self.limit and self.stopped is None:
            self.stopped = StageStopped(
                f"{self.stage} stopped after {self.streak} executor failures in a row "
                f"(finished runs are kept; fix the cause and rerun the same command to resume): {error}"
            )

    def raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise self.stopped


async def run_admitted(
    items: Iterable[T], work: Callable[[T], Awaitable[None]], *, slots: int, streak: FailureStreak
) -> None:
    """Run ``work(item)`` for every item, at most ``slots`` at a time.

    An item whose work fails with an infrastructure error is queued again (and counts
    towards ``streak``). Once the streak stops the stage, no item starts and the ones in
    flight finish before StageStopped is raised; any other exception cancels the rest."""
    pending = collections.deque(items)

    async def worker() -> None:
        while pending and streak.stopped is None:
            item = pending.popleft()
            try:
                await work(item)
            except INFRASTRUCTURE as error:
                pending.append(item)
                streak.failed(error)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(slots, len(pending))):
                group.create_task(worker())
    except BaseExceptionGroup as errors:
        raise _first_cause(errors) from None
    streak.raise_if_stopped()


def run_session(stage: Any, main: Coroutine[Any, Any, None], meter: UsageMeter) -> None:
    """``asyncio.run(main)`` for a stage (a ``StageRun``); when it stops or is interrupted,
    the manifest keeps what this session used, and why it stopped."""
    try:
        asyncio.run(main)
    except StageStopped as stopped:
        stage.stop(str(stopped), meter.snapshot())
        raise
    except BaseException:
        stage.save_session(meter.snapshot())
        raise


async def gather_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Like ``asyncio.gather``, but the first exception cancels the others (and is raised as itself)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(c)) for c in coros]
    except BaseExceptionGroup as errors:
        raise _first_cause(errors) from None
    return [t.result() for t in tasks]


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _first_cause(errors: BaseExceptionGroup) -> BaseException:
    """The exception to report from a task group: a ScoreFlowError first, else the first one."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [errors]
    while stack:
        error = stack.pop(0)
        if isinstance(error, BaseExceptionGroup):
            stack[:0] = list(error.exceptions)
        else:
            flat.append(error)
    return next((e for e in flat if isinstance(e, ScoreFlowError)), flat[0])
