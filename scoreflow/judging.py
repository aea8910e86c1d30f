"""The executor calls around scoring (SPEC section 2): answer extraction and the inference judge."""

from __future__ import annotations

from benchmarks.base import Benchmark, Problem
from scoreflow.executor.client import ChatClient


async def extract_answer(
    client: ChatClient, benchmark: Benchmark, problem: Problem, output: str, *, cache_salt: str = ""
) -> str:
    """The final answer pulled out of a workflow's output; code outputs pass unchanged."""
    prompt = benchmark.extraction_prompt(problem, output)
    if prompt is None:
        return output
    return (await client.ask(prompt, cache_salt=f"{cache_salt}#extract")).strip()


async def judge_output(
    client: ChatClient, benchmark: Benchmark, problem: Problem, output: str, *, cache_salt: str = ""
) -> float | None:
    """The judge's 1/0 verdict at inference; None for benchmarks scored exactly only."""
    decided = benchmark.judge_precheck(problem, output)
    if decided is not None:
        return decided
    prompt = benchmark.judge_prompt(problem, output)
    if prompt is None:
        return None
    return benchmark.verdict(await client.ask(prompt, cache_salt=f"{cache_salt}#judge"))
