"""The run clock: a workflow's limit counts its own work, never the queue it waits in.

Unit tests on the clock itself, then the real pieces that mark their waits (the OpenAI
client's concurrency slots and backoff, the sandbox's workers, the local model's
batches, cached replies), then workflows through the interpreter under load.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.config import load_config
from scoreflow.executor.cache import ReplyCache
from scoreflow.executor.client import ExecutorUnavailable
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.operators import OperatorContext
from scoreflow.runclock import RunClock, WorkflowTimeout, current_clock, queued, run_timed
from scoreflow.sandbox import Sandbox, SandboxSettings
from scoreflow.workflow import check_workflow, run_with_limit
from tests.fake_openai import Fault, FakeOpenAIServer, Reply

TWO_CALLS = '''class Workflow:
    def __init__(self, config, problem) -> None:
        self.custom = operator.Custom(config, problem)

    async def run_workflow(self):
        first = await self.custom(instruction="Solve it.")
        second = await self.custom(instruction="Check it: " + first)
        return second
'''
PROBLEM = Problem(id="p", question="What is 2 + 2?", input="What is 2 + 2?", answer="4")


def stall(reason: str) -> BaseException:
    return ExecutorUnavailable(reason)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_queued_time_does_not_count_and_charges_do() -> None:
    now = FakeTime()
    clock = RunClock(10.0, clock=now)
    now.now += 2.0
    with clock.queued():
        now.now += 50.0
        assert clock.paused
    now.now += 1.0
    clock.charge(1.5)
    assert clock.used_s() == pytest.approx(4.5)
    with clock.branches(2):  # two concurrent parts: one waiting is not a pause
        with clock.queued():
            assert not clock.paused
            now.now += 1.0
        assert clock.used_s() == pytest.approx(5.5)


def test_limit_counts_work_only() -> None:
    async def work() -> str:
        for _ in range(6):
            with queued():
                await asyncio.sleep(0.1)  # waiting for a slot: free
        await asyncio.sleep(0.1)  # the run's own work
        return "done"

    start = time.perf_counter()
    assert asyncio.run(run_timed(work, 0.3, on_stall=stall)) == "done"
    assert time.perf_counter() - start >= 0.7


def test_the_wall_clock_switch_counts_queueing_as_the_original_does() -> None:
    async def work() -> str:
        with queued():
            await asyncio.sleep(0.5)
        return "done"

    assert asyncio.run(run_timed(work, 0.3, on_stall=stall)) == "done"
    with pytest.raises(WorkflowTimeout, match="of wall time"):
        asyncio.run(run_timed(work, 0.3, on_stall=stall, wall=True))


def test_over_the_limit_is_cancelled_at_the_limit() -> None:
    cancelled = []

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(current_clock() is not None)
            raise

    async def main() -> float:
        start = time.perf_counter()
        with pytest.raises(WorkflowTimeout):
            await run_timed(work, 0.2, on_stall=stall)
        return time.perf_counter() - start

    assert 0.19 <= asyncio.run(main()) < 1.0 and cancelled == [True]


def test_an_outer_cancel_is_not_a_timeout() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(run_timed(lambda: asyncio.sleep(10), 5.0, on_stall=stall))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def checked(source: str = TWO_CALLS):  # type: ignore[no-untyped-def]
    return check_workflow(source, get_benchmark("GSM8K").operators)


async def run_many(client: OpenAIChatClient, count: int, limit_s: float) -> list[str]:
    bench = get_benchmark("GSM8K")
    workflow = checked()

    async def one(index: int) -> str:
        context = OperatorContext(client, bench, PROBLEM, cache_salt=f"run{index}")
        try:
            return await run_with_limit(workflow, context, limit_s)
        except WorkflowTimeout:
            return "timeout"

    try:
        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await client.aclose()


def test_runs_queued_behind_a_small_concurrency_never_time_out() -> None:
    """40 two-call runs (0.2 s of work each) through 2 slots take ~4 s, all within a 0.5 s limit."""
    with FakeOpenAIServer(lambda body: Reply("4", delay_s=0.1)) as server:
        client = OpenAIChatClient("m", base_url=server.url, concurrency=2)
        start = time.perf_counter()
        outputs = asyncio.run(run_many(client, 40, 0.5))
        wall = time.perf_counter() - start
        assert server.max_in_flight <= 2
    assert outputs == ["4"] * 40 and wall >= 3.5


def test_backoff_after_a_429_does_not_count() -> None:
    with FakeOpenAIServer(lambda body: Reply("4")) as server:
        server.script([Fault("status", 429, retry_after="0.6")])
        client = OpenAIChatClient("m", base_url=server.url, concurrency=4, backoff_max_s=1.0)
        assert asyncio.run(run_many(client, 1, 0.4)) == ["4"]


def test_a_stalled_executor_is_not_the_workflows_timeout() -> None:
    """Nothing answers for the whole 3-s limit: the executor stalled (a short limit alone, or
    replies arriving meanwhile, would make it the workflow's timeout)."""
    with FakeOpenAIServer(lambda body: Reply("late", delay_s=6.0)) as server:
        client = OpenAIChatClient("m", base_url=server.url, request_timeout_s=30, max_retries=0)
        with pytest.raises(ExecutorUnavailable, match="no reply to any request for 3 s"):
            asyncio.run(run_many(client, 1, 3.0))


def test_a_slow_workflow_stops_at_its_limit_and_its_request_is_cancelled() -> None:
    """Its request takes 2 s, the limit is 0.5 s; other replies keep arriving meanwhile, so
    it is the workflow's timeout (not a stall), and the run ends at the limit."""
    slow_or_quick = lambda body: Reply("x", delay_s=2.0 if "Solve it." in str(body) else 0.01)  # noqa: E731
    with FakeOpenAIServer(slow_or_quick) as server:
        client = OpenAIChatClient("m", base_url=server.url)
        bench = get_benchmark("GSM8K")

        async def pings() -> None:
            for i in range(8):
                await client.ask(f"ping {i}")
                await asyncio.sleep(0.05)

        async def main() -> float:
            start = time.perf_counter()
            run = run_with_limit(checked(), OperatorContext(client, bench, PROBLEM), 0.5)
            results = await asyncio.gather(run, pings(), return_exceptions=True)
            assert isinstance(results[0], WorkflowTimeout), results
            elapsed = time.perf_counter() - start
            await client.aclose()
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
            return elapsed

        assert asyncio.run(main()) < 1.2  # not the 2 s the request would have taken


def test_a_cached_reply_spends_the_time_its_call_took(tmp_path) -> None:
    """A resumed run replays its cached replies and times out exactly where the first one did
    (without the charge the replayed first call would be free and the run would finish)."""
    with FakeOpenAIServer(lambda body: Reply("4", delay_s=0.3)) as server:
        cache = ReplyCache(tmp_path / "cache.sqlite")
        first = asyncio.run(run_many(OpenAIChatClient("m", base_url=server.url, cache=cache), 1, 0.45))
        sent = len(server.requests)
        replay = asyncio.run(run_many(OpenAIChatClient("m", base_url=server.url, cache=cache), 1, 0.45))
        assert first == replay == ["timeout"]
        assert len(server.requests) == sent + 1  # only the call cut off by the limit was asked again


def test_sandbox_queue_does_not_count() -> None:
    """Six 0.3-s programs through one worker: each waits up to 1.5 s, each run's limit is 0.6 s."""
    sandbox = Sandbox(SandboxSettings(workers=1))

    async def one() -> str:
        async def work() -> str:
            result = await sandbox.run("import time\ntime.sleep(0.3)\nprint('ok')", time_limit_s=5)
            return result.status

        return await run_timed(work, 0.6, on_stall=stall)

    async def main() -> list[str]:
        await sandbox.run("pass")  # start the server outside the measurement
        return await asyncio.gather(*(one() for _ in range(6)))

    try:
        assert asyncio.run(main()) == ["pass"] * 6
    finally:
        sandbox.close()


@pytest.mark.parametrize("limit", [0.0, -1.0])
def test_a_limit_must_be_positive(limit: float) -> None:
    with pytest.raises(ValueError):
        RunClock(limit)


def test_config_derives_the_admission_from_the_concurrency() -> None:
    from scoreflow.config import runs_admitted

    assert runs_admitted(load_config()) == 63 + 2
    assert runs_admitted(load_config(None, ["evaluation.runs_in_flight=7"])) == 7
