"""No step of one run stalls the event loop every other run shares.

A code reply of 200,000 characters of backslash-continued lines (quadratic for a naive
"longest parsable prefix" search) goes through the real operator and the real scorer
while a monitor task measures how late the loop wakes it. The figure is printed
(``pytest -s``); the assertion is only a generous bound, since the machine may be busy.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.operators import CustomCodeGenerate, OperatorContext
from tests.fake_openai import FakeOpenAIServer, Reply

CONTINUED = (
    "def add(a, b):\n    zeros = \\\n    [\\\n" + "        0, \\\n" * 18_000 + "    ]\n    return a + b + sum(zeros)\n"
    + "x = \\\n" * 4_000  # a broken tail of continued lines
)


async def worst_lag(work, interval_s: float = 0.005) -> tuple[object, float]:  # type: ignore[no-untyped-def]
    """Run ``work``; the longest the loop kept a 5 ms sleeper waiting beyond its time."""
    lags: list[float] = []
    done = asyncio.Event()

    async def monitor() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(interval_s)
            lags.append(time.perf_counter() - start - interval_s)

    watcher = asyncio.ensure_future(monitor())
    try:
        result = await work
    finally:
        done.set()
        await watcher
    return result, max(lags, default=0.0)


def test_a_200k_character_continued_reply_does_not_block_the_loop() -> None:
    assert len(CONTINUED) >= 200_000
    bench = get_benchmark("HumanEval")
    problem = Problem(id="p", question="add", input="def add(a, b):\n    '''Sum.'''\n", answer="", entry_point="add",
                      test="def check(candidate):\n    assert candidate(1, 2) == 3\n")
    with FakeOpenAIServer(lambda body: Reply(f"```python\n{CONTINUED}```")) as server:
        client = OpenAIChatClient("m", base_url=server.url)

        async def main() -> tuple[str, float, float]:
            context = OperatorContext(client, bench, problem)
            code, generate_lag = await worst_lag(CustomCodeGenerate(context)(instruction="Write it."))
            score, score_lag = await worst_lag(bench.score(problem, CONTINUED))
            await client.aclose()
            bench.close()
            return code, max(generate_lag, score_lag), score.value  # type: ignore[union-attr,return-value]

        start = time.perf_counter()
        code, lag, score = asyncio.run(main())
        wall = time.perf_counter() - start
    print(f"\n200k-character continued reply: loop blocked at most {lag * 1000:.1f} ms; operator + scorer {wall:.2f} s")
    assert "def add(a, b):" in code and score == 1.0
    assert lag < 1.0  # goal ~0.1 s; generous for a busy CI machine
