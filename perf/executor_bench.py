"""Throughput and client CPU of the OpenAI executor backend against the fake server.

The fake OpenAI server (tests/fake_openai.py) runs in a separate process and answers
every request after a fixed delay L, so the client's CPU is measured alone. At
concurrency C the best possible rate is C / L calls/s; the script runs N calls through
``OpenAIChatClient.chat`` (no cache) and prints the achieved rate as a fraction of that
bound, and the client's CPU time per call. Then it measures cache hits/s through the
same ``chat`` path with a warm SQLite cache. The machine may be shared, so the
throughput is measured ``--repeat`` times and the best round counts (all are printed).

Usage: python perf/executor_bench.py [--concurrency 64] [--latency 0.1] [--calls 2000]
       [--hits 5000] [--repeat 3] [--transport auto|lean|httpx]
Last line: ``fraction_of_bound: X``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoreflow.executor.cache import ReplyCache  # noqa: E402
from scoreflow.executor.client import SamplingParams, Usage  # noqa: E402
from scoreflow.executor.openai_backend import OpenAIChatClient  # noqa: E402


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The fake server in its own process; returns it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--delay", str(latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"fake server did not start (got {url!r})")
    return proc, url


def stop_server(proc: subprocess.Popen[str]) -> dict:
    """Stop the server; its request count and CPU seconds."""
    out, _ = proc.communicate(input="", timeout=30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def prompt(i: int) -> list[dict[str, str]]:
    """A distinct, realistically sized operator prompt (about 1 KB)."""
    text = f"Problem {i}: " + "Solve the following step by step and give the final answer. " * 16
    return [{"role": "system", "content": "You are a careful solver."}, {"role": "user", "content": text}]


async def run_calls(client: OpenAIChatClient, start: int, count: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) for ``count`` concurrent calls."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client.chat(prompt(start + i)) for i in range(count)))
    return time.perf_counter() - wall0, time.process_time() - cpu0


async def bench_throughput(url: str, args: argparse.Namespace) -> list[tuple[float, float]]:
    """Per round: (calls/s, CPU seconds per call)."""
    client = OpenAIChatClient("bench-model", base_url=url, concurrency=args.concurrency, request_timeout_s=60,
                              max_retries=0, transport=args.transport)
    print(f"transport: {client.transport}")
    await run_calls(client, -args.concurrency * 2, args.concurrency * 2)  # warm-up: opens the connections
    rounds = []
    for r in range(args.repeat):
        wall, cpu = await run_calls(client, r * args.calls, args.calls)
        rounds.append((args.calls / wall, cpu / args.calls))
    await client.aclose()
    return rounds


async def bench_cache_hits(url: str, hits: int, workdir: Path) -> float:
    """Cache hits/s through ``chat`` with every reply already in the cache."""
    with ReplyCache(workdir / "replies.sqlite") as cache:
        client = OpenAIChatClient("bench-model", base_url=url, cache=cache)
        params = SamplingParams(temperature=0.0, max_tokens=None)
        for i in range(hits):
            cache.put(cache.key(client.backend, client.model, prompt(i), params, ""), f"answer {i}", Usage(300, 20))
        for i in range(min(hits, 200)):  # warm-up
            await client.chat(prompt(i))
        start = time.perf_counter()
        for i in range(hits):
            await client.chat(prompt(i))
        elapsed = time.perf_counter() - start
        assert client.meter.cache_misses == 0, "a warm-cache call reached the server"
        await client.aclose()
    return hits / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1, help="server delay per request, seconds")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--hits", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transport", choices=("auto", "lean", "httpx"), default="auto")
    args = parser.parse_args(argv)

    proc, url = start_server(args.latency)
    try:
        rounds = asyncio.run(bench_throughput(url, args))
        with tempfile.TemporaryDirectory() as tmp:
            hits_per_s = asyncio.run(bench_cache_hits(url, args.hits, Path(tmp)))
    finally:
        server = stop_server(proc)

    bound = args.concurrency / args.latency
    for i, (rate, cpu) in enumerate(rounds):
        print(f"round {i}: {rate:.0f} calls/s ({rate / bound:.3f} of {bound:.0f}), client CPU {cpu * 1e6:.0f} us/call")
    best_rate = max(rate for rate, _ in rounds)
    cpu_per_call = statistics.median(cpu for _, cpu in rounds)
    if server.get("requests"):
        per_request = server["cpu_s"] / server["requests"] * 1e6
        print(f"server CPU: {per_request:.0f} us/request ({server['requests']} requests)")
    print(f"concurrency {args.concurrency}, latency {args.latency} s, {args.calls} calls per round")
    print(f"calls_per_s: {best_rate:.1f}")
    print(f"client_cpu_us_per_call: {cpu_per_call * 1e6:.0f}")
    print(f"cache_hits_per_s: {hits_per_s:.0f}")
    print(f"fraction_of_bound: {best_rate / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
