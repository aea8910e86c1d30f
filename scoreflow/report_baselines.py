"""The report's baseline parts: our measured Table-1 baseline rows and the inference cost of
every method (solve rate against USD per test problem, the paper's figure 4 left panel).

Read from ``<workspace>/<D>/baselines/<name>/baseline_inference.manifest.json`` (written by
``evaluate.py --task inference --baseline NAME``) and, for ScoreFlow's own points, from the
inference stages of each epoch; nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreflow.baselines import AFLOW, BASELINE_NAMES, PAPER_LABELS, STAGE
from scoreflow.config import DATASETS
from scoreflow.jsonio import read_json

JUDGED_HEADLINE = ("MATH", "DROP", "HotpotQA")  # as scoreflow.report: the paper's numbers there are the judge's
# The paper's HumanEval inference costs (USD over the 131-problem test split) and those methods' rates.
PAPER_HUMANEVAL_POINTS = {"ScoreFlow": (0.228, 95.9), "CoT": (0.054, 91.6), "CoT SC": (0.316, 92.9)}
HUMANEVAL_TEST_PROBLEMS = 131


@dataclass(frozen=True)
class MethodPoint:
    """One method's inference on one dataset: its solve rate and what the executor cost."""

    dataset: str
    method: str  # the row label: "CoT", "ScoreFlow, epoch 2", ...
    counts: dict[str, Any]
    executor: dict[str, Any]  # usage.executor of the stage(s), summed

    @property
    def problems(self) -> int:
        return int(self.counts.get("test_problems") or 0)

    @property
    def judged_headline(self) -> bool:
        return self.dataset in JUDGED_HEADLINE and self.counts.get("judge_solve_rate") is not None

    @property
    def headline_rate(self) -> float:
        """The rate comparable with the paper's: the judge's where the paper's is."""
        return float(self.counts["judge_solve_rate"] if self.judged_headline else self.counts["solve_rate"])

    @property
    def usd_per_problem(self) -> float | None:
        cost = self.executor.get("cost_usd", 0.0)
        return None if cost is None or not self.problems else cost / self.problems

    @property
    def tokens_per_problem(self) -> float:
        return self.executor.get("total_tokens", 0) / self.problems if self.problems else 0.0

    def cell(self) -> str:
        """The Table-1 cell: headline rate (%), † on a subset, the exact rate beside a judged one."""
        text = f"{100 * self.headline_rate:.1f}{'†' if self.counts.get('subset') else ''}"
        return text + (f" (exact {100 * self.counts['solve_rate']:.1f})" if self.judged_headline else "")


def collect_baselines(workspace: Path) -> list[MethodPoint]:
    """Every finished baseline of every dataset, in Table 1's order."""
    points = []
    for dataset in DATASETS:
        for name in (*BASELINE_NAMES, AFLOW):
            path = workspace / dataset / "baselines" / name / f"{STAGE}.manifest.json"
            manifest = read_json(path) if path.is_file() else None
            if manifest and manifest.get("status") == "complete":
                executor = manifest.get("usage", {}).get("executor", {})
                points.append(MethodPoint(dataset, PAPER_LABELS[name], manifest["counts"], executor))
    return points


def scoreflow_point(dataset: str, label: str, counts: dict[str, Any], executors: list[dict[str, Any]]) -> MethodPoint:
    """Our generated workflows' inference (generate + evaluate at inference) as a point."""
    costs = [e.get("cost_usd", 0.0) for e in executors]
    summed = {"total_tokens": sum(e.get("total_tokens", 0) for e in executors),
              "calls": sum(e.get("calls", 0) for e in executors),
              "cost_usd": None if any(c is None for c in costs) else sum(costs)}
    return MethodPoint(dataset, label, counts, summed)


def table_rows(baselines: list[MethodPoint], subset_notes: list[str]) -> dict[str, dict[str, str]]:
    """Our measured baseline rows of Table 1 (label -> dataset -> cell), in the paper's order."""
    rows: dict[str, dict[str, str]] = {}
    for point in baselines:
        rows.setdefault(point.method, {})[point.dataset] = point.cell()
        if point.counts.get("subset"):
            subset_notes.append(f"{point.dataset} {point.method}: {point.problems} problems")
    return rows


def _usd(value: float | None, digits: int = 5) -> str:
    return "unpriced" if value is None else f"{value:.{digits}f}"


def cost_lines(points: list[MethodPoint]) -> list[str]:
    """Inference cost per method and dataset: solve rate, USD and tokens per test problem."""
    if not points:
        return []
    lines = [
        "## Inference cost per method (ours)",
        "",
        "| dataset | method | solve rate (%) | test problems | runs per problem | executor calls | tokens per problem "
        "| USD per problem | USD total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        runs = p.counts.get("runs_per_workflow", "—")
        total = p.executor.get("cost_usd", 0.0)
        lines.append(f"| {p.dataset} | {p.method} | {p.cell()} | {p.problems} | {runs} | {p.executor.get('calls', 0)} "
                     f"| {p.tokens_per_problem:,.0f} | {_usd(p.usd_per_problem)} | {_usd(total, 4)} |")
    paper = ", ".join(f"{m} {usd:.3f} USD ({usd / HUMANEVAL_TEST_PROBLEMS:.5f} per problem)"
                      for m, (usd, _) in PAPER_HUMANEVAL_POINTS.items())
    lines += ["", f"The paper (HumanEval test split, {HUMANEVAL_TEST_PROBLEMS} problems, GPT-4o-mini): {paper}. "
              "Per problem means all of its runs (`runs per problem`) with extraction and judge calls; "
              "ScoreFlow's rows include the inference generate stage's executor calls (trial runs)."]
    return lines


def plot_name(dataset: str) -> str:
    return f"inference_cost_{dataset}.png"


def plot_datasets(baselines: list[MethodPoint]) -> list[str]:
    """The datasets that get an inference-cost plot: those with a measured baseline."""
    return list(dict.fromkeys(p.dataset for p in baselines))


def plot_inference_cost(plt: Any, dataset: str, points: list[MethodPoint]) -> Any:
    """Solve rate against USD per test problem, one point per method; the paper's HumanEval
    points hollow. A local executor costs 0: its points sit on the axis, tokens in the labels."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    mine = [p for p in points if p.dataset == dataset]
    unpriced = [p.method for p in mine if p.usd_per_problem is None]
    markers = "osD^vP*Xh"
    for i, p in enumerate(mine):  # a legend, not labels: methods of similar cost sit close together
        if p.usd_per_problem is None:
            continue
        label = f"{p.method}: {100 * p.headline_rate:.1f}%, {p.tokens_per_problem:,.0f} tokens/problem"
        axis.plot([p.usd_per_problem], [100 * p.headline_rate], markers[i % len(markers)], markersize=8,
                  clip_on=False, label=label)
    if dataset == "HumanEval":
        for method, (usd, rate) in PAPER_HUMANEVAL_POINTS.items():
            x = usd / HUMANEVAL_TEST_PROBLEMS
            axis.plot([x], [rate], "o", markerfacecolor="none", markeredgecolor="gray", markersize=8)
            axis.annotate(f"{method} (paper)", (x, rate), textcoords="offset points", xytext=(6, -10), fontsize=7,
                          color="gray")
        axis.plot([], [], "o", markerfacecolor="none", markeredgecolor="gray", label="the paper's (GPT-4o-mini)")
    if unpriced:
        axis.text(0.5, 0.04, "unpriced (not shown): " + ", ".join(unpriced), ha="center", transform=axis.transAxes,
                  fontsize=7)
    if mine and all(p.usd_per_problem == 0 for p in mine):
        axis.text(0.5, 0.5, "every measured method cost 0 USD (a local executor): compare tokens per problem",
                  ha="center", transform=axis.transAxes, fontsize=8)
    kind = "judged " if any(p.judged_headline for p in mine) else ""
    axis.set_xlabel("executor USD per test problem (all its runs)")
    axis.set_ylabel(f"{kind}test solve rate (%)")
    axis.set_ylim(0, 100)
    xs = [p.usd_per_problem for p in mine if p.usd_per_problem is not None]
    if dataset == "HumanEval":
        xs += [usd / HUMANEVAL_TEST_PROBLEMS for usd, _ in PAPER_HUMANEVAL_POINTS.values()]
    axis.set_xlim(0, 1.25 * max(xs) if any(xs) else 1.0)  # room for the labels right of the points
    axis.set_title(f"{dataset}: inference cost and solve rate per method")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure
