"""Executor usage of a stage: what its results took, and what each session paid.

Two figures, because they answer different questions:

* ``usage.executor`` — the work: every request the stage's records needed (all
  attempts, extraction, judge), summed from the records themselves. Cached replies keep
  their token counts, so this is the same for a stage resumed after a crash, re-run with
  ``--force`` over a warm cache, or run in one go; the report's cost comes from here.
* ``usage.executor["paid"]`` — the money: the sum over the stage's sessions of what was
  sent and paid then, cached replies counted apart (a reply paid in session 1 and reused
  in session 2 is counted once). Each session's figures are saved into the manifest as
  it runs (every ``SESSION_SAVE_S``), so a killed session's spending is not forgotten.

A model without a price has an unknown cost: ``cost_usd`` is None ("unpriced"), never 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from scoreflow.config import Config
from scoreflow.executor.client import Usage, UsageMeter

SESSION_SAVE_S = 2.0
_SUMMED = ("calls", "cache_hits", "cache_misses", "failures", "prompt_tokens", "completion_tokens", "total_tokens",
           "cached_tokens", "truncated_requests")


def warn_if_unpriced(config: Config) -> None:
    """A warning on stderr when the executor's cost cannot be computed."""
    executor = config.executor
    if executor.backend != "local" and executor.model not in executor.prices:
        print(
            f"warning: executor.prices has no price for model {executor.model!r}; its cost is shown as unpriced "
            f"(add --set executor.prices.{executor.model}.input=USD_PER_M --set executor.prices.{executor.model}.output=...)",
            file=sys.stderr,
        )


def work_usage(tallies: Iterable[dict[str, Any] | None], meter: UsageMeter, model: str) -> dict[str, Any]:
    """Requests, tokens and cost summed over the records' tallies (``RequestTally``)."""
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "truncated_requests": 0}
    for tally in tallies:
        for name in totals:
            totals[name] += (tally or {}).get(name, 0)
    cost = meter.cost(model, Usage(totals["prompt_tokens"], totals["completion_tokens"]))
    return {
        "calls": totals["requests"],
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"],
        "cost_usd": None if cost is None else round(cost, 6),
        "unpriced_models": [] if meter.is_priced(model) else [model],
        "truncated_requests": totals["truncated_requests"],
    }


def paid_usage(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """What the sessions sent and paid, summed (cached replies apart)."""
    snapshots = [s["executor"] for s in sessions if s.get("executor")]
    paid: dict[str, Any] = {name: sum(s.get(name, 0) for s in snapshots) for name in _SUMMED}
    costs = [s.get("cost_usd") for s in snapshots]
    paid["cost_usd"] = None if any(c is None for c in costs) else round(sum(costs), 6)
    paid["sessions"] = len(sessions)
    return paid


def stage_usage(config: Config, tallies: Iterable[dict[str, Any] | None], stage: Any, meter: UsageMeter) -> dict[str, Any]:
    """The ``usage`` of a finished stage's manifest."""
    work = work_usage(tallies, meter, config.executor.model)
    work["paid"] = paid_usage(stage.close_session(meter.snapshot()))
    return {"executor": work}


def cost_text(cost: float | None) -> str:
    return "unpriced" if cost is None else f"${cost:.4f}"


def usage_line(executor: dict[str, Any]) -> str:
    """``N requests, T tokens, $C (paid over S sessions: ...)`` for the stage summaries."""
    line = f"executor {executor['calls']} requests, {executor['total_tokens']} tokens, {cost_text(executor.get('cost_usd'))}"
    paid = executor.get("paid")
    if paid:
        line += (f" (sent {paid['cache_misses']}, {paid['cache_hits']} from the cache, paid {cost_text(paid['cost_usd'])}"
                 f" over {paid['sessions']} session{'s' if paid['sessions'] != 1 else ''})")
    if executor.get("truncated_requests"):
        line += f", {executor['truncated_requests']} requests cut to executor.max_request_chars"
    return line
