"""FTTT results in the paper's layout, with budget curves, attempt counts and deviations.

    python -m fttt.report [--config F] [--set k=v] [--out DIR]

Reads every run folder ``<workspace>/<model>/<Dataset>/<method>_s<seed>/`` that
``python -m fttt.run`` wrote (``run.manifest.json`` and ``results.jsonl``) and the hard
filters (``hard/hard_ids.json``); nothing is re-judged. Only runs whose manifest says
``complete`` enter the tables; unfinished ones are listed in a note. Writes, atomically,
``<out>/report.md`` (default ``<workspace>/report/``), ``report.json`` (the numbers behind
the tables) and per model and dataset ``success_vs_budget_<model>_<Dataset>.png`` and
``attempts_<model>_<Dataset>.png``.

Two accountings are reported (FTTT_SPEC 1.5, 5 item 9): the paper's (``success``, where
FTTT and FTTT+ do not pay for some generations) and the strict one (``success_strict``,
every answer generation counts), and beside them the compute a question really cost.
"""

from __future__ import annotations

import io
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fttt.config import METHODS, TASKS, FtttConfig
from scoreflow.config import to_dict
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import atomic_write_bytes, atomic_write_text, iter_jsonl, read_json, read_jsonl
from scoreflow.workspace import RESUMABLE_CHANGES

PRETTY: dict[str, str] = {
    "greedy": "Greedy", "revision": "Revision", "beam_search": "Beam Search", "best_of_n": "Best-of-N",
    "self_refine": "Self-Refine", "self_consistency": "Self-Consistency", "fttt": "FTTT", "fttt_plus": "FTTT+",
}
RUN_MANIFEST = "run.manifest.json"
HARD_MANIFEST = "hard.manifest.json"
FOLDER = re.compile(r"(?P<method>[a-z_]+)_s(?P<seed>\d+)")
# Config keys that cannot change a run's numbers (paths, devices, where the judge is
# reached, the sandbox's resource plumbing), or that the table already shows (the model
# is the column; the seed list is what a loop runs, a run's own seed is in its name).
NOT_RESULT_CHANGING: tuple[str, ...] = (
    *RESUMABLE_CHANGES, "workspace", "data_dir", "cache_dir", "seeds", "model.name", "model.arch", "model.device",
    "sandbox.",
)
DASH = "—"


# ---------------------------------------------------------------- reading


@dataclass
class Run:
    """One ``<method>_s<seed>`` folder: its manifest and its finished questions."""

    model: str  # the folder's model slug
    dataset: str
    method: str
    seed: int
    folder: Path
    manifest: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def label(self) -> str:
        return f"{self.method}_s{self.seed} {self.dataset} ({self.model})"

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def budget(self) -> int:
        """The run's budget B (its config's ``methods.budget``; the paper's 32 when unrecorded)."""
        budget = (self.config.get("methods") or {}).get("budget")
        return int(budget) if budget else FtttConfig().methods.budget


@dataclass
class HardSet:
    """What a dataset's hard filter kept: N hard of M questions."""

    model: str
    dataset: str
    hard: int
    questions: int
    complete: bool


def collect_runs(workspace: Path) -> list[Run]:
    """Every method run folder under the workspace, in model, dataset and method order."""
    runs = []
    for model_dir in _model_dirs(workspace):
        for dataset in TASKS:
            for folder in sorted((model_dir / dataset).glob("*_s*")):
                run = _read_run(model_dir.name, dataset, folder)
                if run is not None:
                    runs.append(run)
    return sorted(runs, key=lambda r: (r.model, TASKS.index(r.dataset), METHODS.index(r.method), r.seed))


def _model_dirs(workspace: Path) -> list[Path]:
    """Folders that hold at least one dataset folder (the report's own folder does not)."""
    return sorted(p for p in workspace.iterdir() if p.is_dir() and any((p / d).is_dir() for d in TASKS))


def _read_run(model: str, dataset: str, folder: Path) -> Run | None:
    """A run folder, or None for anything that is not one (no manifest and no results)."""
    match = FOLDER.fullmatch(folder.name)
    if not folder.is_dir() or match is None or match["method"] not in METHODS:
        return None
    manifest_path, results_path = folder / RUN_MANIFEST, folder / "results.jsonl"
    if not manifest_path.exists() and not results_path.exists():
        return None
    manifest = read_json(manifest_path) if manifest_path.exists() else {"status": "no manifest"}
    run = Run(model, dataset, match["method"], int(match["seed"]), folder, manifest)
    if run.complete:
        run.results = read_jsonl(results_path)
    elif results_path.exists():  # being written: a torn last line is expected
        run.results = list(iter_jsonl(results_path, allow_torn_tail=True))
    return run


def collect_hard(workspace: Path) -> list[HardSet]:
    """The hard filters' sizes, per model and dataset."""
    found = []
    for model_dir in _model_dirs(workspace):
        for dataset in TASKS:
            path = model_dir / dataset / "hard" / "hard_ids.json"
            if not path.exists():
                continue
            data = read_json(path)
            manifest_path = path.parent / HARD_MANIFEST
            complete = manifest_path.exists() and read_json(manifest_path).get("status") == "complete"
            found.append(HardSet(model_dir.name, dataset, len(data.get("hard_ids", [])),
                                 int(data.get("questions", 0)), complete))
    return found


# ---------------------------------------------------------------- numbers


def solved_within(record: dict[str, Any], budget: int, *, strict: bool) -> bool:
    """Whether a question was solved within ``budget`` attempts: the recorded curve where a
    method has one (Self-Consistency: a vote is not monotone in a first-success index),
    else the first success's index under the chosen accounting."""
    curve = record.get("curve")
    if curve:
        return bool(curve[min(budget, len(curve)) - 1])
    first = record.get("success_at_strict" if strict else "success_at")
    return first is not None and first <= budget


def success_curve(records: Sequence[dict[str, Any]], budget: int, *, strict: bool) -> list[float | None]:
    """Success % at budgets 1..B (None when there is no question)."""
    if not records:
        return [None] * budget
    return [100 * sum(solved_within(r, b, strict=strict) for r in records) / len(records) for b in range(1, budget + 1)]


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def run_summary(run: Run) -> dict[str, Any]:
    """The per-run numbers the tables and plots are made of."""
    r = run.results
    return {
        "model": run.model, "model_name": run.manifest.get("model"), "dataset": run.dataset, "method": run.method,
        "seed": run.seed, "status": run.manifest.get("status"), "folder": str(run.folder),
        "questions": len(r), "budget": run.budget,
        "accounting": (run.config.get("methods") or {}).get("accounting"),
        "success": _pct(_mean(float(q["success"]) for q in r)),
        "success_strict": _pct(_mean(float(q["success_strict"]) for q in r)),
        "avg_trials": _mean(q["paper_num_trials"] for q in r),
        "avg_counted_attempts": _mean(q["counted_attempts"] for q in r),
        "avg_generations": _mean(q["generations"] for q in r),
        "avg_answer_generations": _mean(q["answer_generations"] for q in r),
        "avg_generated_tokens": _mean(q["generated_tokens"] for q in r),
        "unsolved_no_answer": sum(q.get("final_verdict") is None for q in r),
        "trial_distribution": dict(sorted(Counter(q["paper_num_trials"] for q in r).items())),
        "curve": success_curve(r, run.budget, strict=False),
        "curve_strict": success_curve(r, run.budget, strict=True),
        "wall_time_s": run.manifest.get("wall_time_s"),
        "deviations": deviations(run.config),
    }


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def seed_stats(values: Sequence[float | None], seeds: Sequence[int]) -> dict[str, Any] | None:
    """Mean, sample standard deviation and count over the seeds that have a value."""
    pairs = [(s, v) for s, v in zip(seeds, values) if v is not None]
    if not pairs:
        return None
    numbers = [v for _, v in pairs]
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return {"mean": statistics.fmean(numbers), "std": std, "n": len(numbers),
            "seeds": [s for s, _ in pairs], "values": numbers}


def mean_curve(curves: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Mean over seeds at each budget, over the seeds whose budget reaches it."""
    length = max((len(c) for c in curves), default=0)
    out = []
    for b in range(length):
        out.append(_mean(c[b] for c in curves if b < len(c) and c[b] is not None))
    return out


def deviations(config: dict[str, Any]) -> list[str]:
    """``key=value`` for each result-changing setting that differs from the paper's
    (``FtttConfig()``'s defaults; a key this version does not know is listed too)."""
    paper = _flatten(to_dict(FtttConfig()))
    found = []
    for key, value in _flatten(config).items():
        if key.startswith(NOT_RESULT_CHANGING) or paper.get(key, _MISSING) == value:
            continue
        found.append(f"{key}={_value_text(value)}")
    return found


_MISSING = object()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Column:
    """One model × dataset column of the tables."""

    model: str
    dataset: str

    @property
    def title(self) -> str:
        return f"{self.model} {self.dataset}"

    @property
    def key(self) -> str:
        return f"{self.model}/{self.dataset}"


def build_tables(summaries: list[dict[str, Any]], hard: list[HardSet]) -> dict[str, Any]:
    """Per column and method, the seed statistics of every headline number."""
    complete = [s for s in summaries if s["status"] == "complete"]
    columns = _columns(complete)
    metrics = ("success", "success_strict", "avg_trials", "avg_generations", "avg_generated_tokens")
    cells: dict[str, dict[str, Any]] = {}
    for column in columns:
        cells[column.key] = {}
        hard_here = any(h.model == column.model and h.dataset == column.dataset and h.complete for h in hard)
        for method in METHODS:
            wanted = (column.model, column.dataset, method)
            mine = [s for s in complete if (s["model"], s["dataset"], s["method"]) == wanted]
            if not mine:
                if method == "greedy" and hard_here:  # the hard set is what greedy got wrong
                    cells[column.key][method] = {"by_construction": True}
                continue
            seeds = [s["seed"] for s in mine]
            cell = {m: seed_stats([s[m] for s in mine], seeds) for m in metrics}
            cell["curve"] = mean_curve([s["curve"] for s in mine])
            cell["curve_strict"] = mean_curve([s["curve_strict"] for s in mine])
            cell["questions"] = sorted({s["questions"] for s in mine})
            cells[column.key][method] = cell
    return {"columns": [{"model": c.model, "dataset": c.dataset, "key": c.key} for c in columns], "cells": cells}


def _columns(complete: list[dict[str, Any]]) -> list[Column]:
    pairs = sorted({(s["model"], s["dataset"]) for s in complete}, key=lambda p: (p[0], TASKS.index(p[1])))
    return [Column(m, d) for m, d in pairs]


# ---------------------------------------------------------------- markdown


def _cell(stats: dict[str, Any] | None, spec: str = ".1f") -> str:
    if not stats:
        return DASH
    if stats.get("by_construction"):
        return "0 (by construction)"
    spread = f" ± {stats['std']:{spec}}" if stats["std"] is not None else ""
    return f"{stats['mean']:{spec}}{spread} ({stats['n']})"


def _table(tables: dict[str, Any], metric: str, spec: str = ".1f", greedy_zero: bool = False) -> list[str]:
    columns = [Column(c["model"], c["dataset"]) for c in tables["columns"]]
    lines = ["| method | " + " | ".join(c.title for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method in METHODS:
        row = []
        for column in columns:
            cell = tables["cells"][column.key].get(method)
            if cell and cell.get("by_construction"):
                row.append(_cell(cell) if greedy_zero else DASH)
            else:
                row.append(_cell(cell[metric] if cell else None, spec))
        lines.append(f"| {PRETTY[method]} | " + " | ".join(row) + " |")
    return lines


def render_markdown(workspace: Path, summaries: list[dict[str, Any]], tables: dict[str, Any],
                    hard: list[HardSet], plots: dict[str, list[str]]) -> str:
    """The whole report.md."""
    complete = [s for s in summaries if s["status"] == "complete"]
    lines = [
        "# FTTT results", "",
        (f"Workspace `{workspace}`: {len(summaries)} runs found, {len(complete)} complete. "
         "Cells: mean over seeds ± sample standard deviation (number of seeds); "
         f"{DASH}: no complete run. Questions: the hard set of each model and dataset."), "",
        "## Success within the budget, paper accounting (%)", "",
        ("The paper's metric (FTTT_SPEC 1.5, 7): the share of hard questions answered correctly "
         "within the run's budget, counted as the original counts (FTTT does not pay for an attempt "
         "with no answer; FTTT+ neither, nor for truncated attempts and reflections; Self-Refine's "
         "draft is free). On the hard set greedy is 0 % by construction."), "",
        *_table(tables, "success", greedy_zero=True), "",
        "## Success within the budget, strict accounting (%)", "",
        "Every answer generation counts against the budget (FTTT_SPEC 5 item 9).", "",
        *_table(tables, "success_strict", greedy_zero=True), "",
        "## Attempts and compute per question", "",
        ("Average attempts is the original's `num_trials`: it is **not comparable across methods** "
         "(FTTT_SPEC 5 item 10: Beam Search reports a 0-based beam index, FTTT counts failures "
         "rather than attempts, Self-Consistency the first appearance of the voted answer). "
         "Generations (every generation: drafts and reflections too) and generated tokens are "
         "what a question really cost."), "",
        "Average attempts (`num_trials`):", "", *_table(tables, "avg_trials", ".2f"), "",
        "Average generations per question:", "", *_table(tables, "avg_generations", ".2f"), "",
        "Average generated tokens per question:", "", *_table(tables, "avg_generated_tokens", ".0f"), "",
    ]
    lines += _hard_lines(hard) + _deviation_lines(complete) + _unfinished_lines(summaries)
    lines += _curve_lines(tables, plots) + _trial_lines(complete)
    return "\n".join(lines).rstrip() + "\n"


def _hard_lines(hard: list[HardSet]) -> list[str]:
    if not hard:
        return []
    lines = ["## Hard sets", "", "| model | dataset | hard questions | of |", "|---|---|---|---|"]
    for h in hard:
        note = "" if h.complete else " (filter unfinished)"
        lines.append(f"| {h.model} | {h.dataset} | {h.hard}{note} | {h.questions} |")
    return lines + [""]


def _deviation_lines(complete: list[dict[str, Any]]) -> list[str]:
    """Settings that differ from the paper's, factored when every run shares them."""
    if not complete:
        return []
    common = set(complete[0]["deviations"]).intersection(*(s["deviations"] for s in complete[1:]))
    lines = ["## Deviations from the paper's setting", ""]
    if not any(s["deviations"] for s in complete):
        return lines + ["None: every complete run used the paper's result-changing settings.", ""]
    if common and len(complete) > 1:
        ordered = [d for d in complete[0]["deviations"] if d in common]
        lines.append(f"- every complete run: {', '.join(ordered)}")
    for s in complete:
        own = [d for d in s["deviations"] if d not in common or len(complete) == 1]
        if own:
            lines.append(f"- {s['method']}_s{s['seed']} {s['dataset']} ({s['model']}): {', '.join(own)}")
    return lines + [""]


def _unfinished_lines(summaries: list[dict[str, Any]]) -> list[str]:
    unfinished = [s for s in summaries if s["status"] != "complete"]
    if not unfinished:
        return []
    lines = ["## Unfinished runs (not in the tables)", ""]
    for s in unfinished:
        lines.append(f"- {s['method']}_s{s['seed']} {s['dataset']} ({s['model']}), status {s['status']}: "
                     f"(unfinished: {s['questions']} questions so far)")
    return lines + [""]


def _curve_lines(tables: dict[str, Any], plots: dict[str, list[str]]) -> list[str]:
    lines = [
        "## Success against the budget", "",
        ("Success at budget b: solved within the first b attempts (solid: paper accounting, from "
         "`success_at`; dashed where it differs: strict, from `success_at_strict`), mean over seeds. "
         "Self-Consistency's point at b is its recorded vote over the first b samples (`curve`). "
         "Beam Search's curve means a passing beam among the first b beams of one full-width beam "
         "search, not b searches. Under strict accounting a run stops earlier, so its paper-accounted "
         "points past the attempts it made are lower bounds."), "",
    ]
    for column in tables["columns"]:
        for name in plots.get(column["key"], []):
            lines.append(f"![{name}]({name})")
        lines.append("")
        lines += _curve_table(tables["cells"][column["key"]], column["key"])
    return lines


def _curve_table(cells: dict[str, Any], title: str) -> list[str]:
    """Paper-accounted success at a few budgets (1, 2, 4, ... and each method's own B)."""
    curves = {m: c["curve"] for m, c in cells.items() if c.get("curve")}
    if not curves:
        return []
    length = max(len(c) for c in curves.values())
    budgets = sorted({2 ** k for k in range(int(math.log2(length)) + 1)} | {len(c) for c in curves.values()})
    lines = [f"{title}, success (%) at budget:", "", "| method | " + " | ".join(map(str, budgets)) + " |",
             "|---|" + "---|" * len(budgets)]
    for method, curve in curves.items():
        row = [DASH if b > len(curve) or curve[b - 1] is None else f"{curve[b - 1]:.1f}" for b in budgets]
        lines.append(f"| {PRETTY[method]} | " + " | ".join(row) + " |")
    return lines + [""]


def _trial_lines(complete: list[dict[str, Any]]) -> list[str]:
    if not complete:
        return []
    lines = ["## Trial Dist.", "", ("The original's `Counter` of `num_trials` per run, and Num. Unsolved "
                                    "(questions whose final verdict was None)."), ""]
    for s in complete:
        dist = ", ".join(f"{k}: {v}" for k, v in s["trial_distribution"].items())
        lines.append(f"- {s['dataset']} ({s['model']}) {PRETTY[s['method']]} s{s['seed']}: "
                     f"{{{dist}}}; unsolved {s['unsolved_no_answer']}")
    return lines + [""]


# ---------------------------------------------------------------- plots


def curve_plot_name(model: str, dataset: str) -> str:
    return f"success_vs_budget_{model}_{dataset}.png"


def attempts_plot_name(model: str, dataset: str) -> str:
    return f"attempts_{model}_{dataset}.png"


def write_plots(tables: dict[str, Any], complete: list[dict[str, Any]], out: Path) -> dict[str, list[str]]:
    """Two PNGs per column, written atomically; returns the file names per column key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: dict[str, list[str]] = {}
    for column in tables["columns"]:
        model, dataset, key = column["model"], column["dataset"], column["key"]
        mine = [s for s in complete if (s["model"], s["dataset"]) == (model, dataset)]
        figures = {
            curve_plot_name(model, dataset): _plot_curves(plt, tables["cells"][key], f"{model} {dataset}"),
            attempts_plot_name(model, dataset): _plot_attempts(plt, mine, f"{model} {dataset}"),
        }
        for name, figure in figures.items():
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            atomic_write_bytes(out / name, buffer.getvalue())
        names[key] = list(figures)
    return names


def _plot_curves(plt: Any, cells: dict[str, Any], title: str) -> Any:
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh"
    longest = 1
    for i, method in enumerate(METHODS):
        cell = cells.get(method)
        if not cell or not cell.get("curve"):
            continue
        color = colors[i % len(colors)]
        paper, strict = cell["curve"], cell["curve_strict"]
        longest = max(longest, len(paper))
        xs = list(range(1, len(paper) + 1))
        n = cell["success"]["n"] if cell.get("success") else 0
        # Distinct markers, shrinking in draw order, so methods on the same values stay visible.
        axis.plot(xs, paper, "-", marker=markers[i % len(markers)] if len(xs) <= 12 else None, color=color,
                  markersize=max(4.0, 11.0 - i), markerfacecolor="none" if i % 2 else color, linewidth=1.6,
                  label=f"{PRETTY[method]} ({n} seed{'s' if n != 1 else ''})")
        if strict != paper:
            axis.plot(xs, strict, "--", color=color, label=f"{PRETTY[method]}, strict")
    axis.set_xlim(0.8, longest + 0.2)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(-2, 102)
    axis.set_xlabel("budget b (attempts)")
    axis.set_ylabel("success on hard questions (%)")
    axis.set_title(f"{title}: success within budget (solid paper, dashed strict accounting)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _plot_attempts(plt: Any, mine: list[dict[str, Any]], title: str) -> Any:
    from matplotlib.ticker import MaxNLocator

    methods = [m for m in METHODS if any(s["method"] == m for s in mine)]
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for axis, method in zip(axes.flat, methods):
        runs = [s for s in mine if s["method"] == method]
        pooled: Counter[int] = Counter()
        for s in runs:
            pooled.update({int(k): v for k, v in s["trial_distribution"].items()})
        axis.bar(list(pooled), list(pooled.values()), width=0.8)
        axis.set_xlim(-0.7, max(s["budget"] for s in runs) + 0.7)  # the whole range 0..B, as printed
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"{PRETTY[method]} ({len(runs)} seed{'s' if len(runs) != 1 else ''})", fontsize=9)
        axis.set_xlabel("num_trials", fontsize=8)
        axis.set_ylabel("questions", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    for axis in list(axes.flat)[len(methods):]:
        axis.set_visible(False)
    figure.suptitle(f"{title}: the original's num_trials per question (pooled over seeds)", fontsize=10)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- command


def write_report(workspace: Path, out: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Collect, compute, plot and write; returns report.md's path and report.json's data."""
    if not workspace.is_dir():
        raise _no_runs(workspace)
    runs = collect_runs(workspace)
    summaries = [run_summary(r) for r in runs]
    complete = [s for s in summaries if s["status"] == "complete"]
    if not complete:
        raise _no_runs(workspace)
    hard = collect_hard(workspace)
    tables = build_tables(summaries, hard)
    out = out or workspace / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(tables, complete, out)
    markdown = render_markdown(workspace, summaries, tables, hard, plots)
    data = {"workspace": str(workspace), "runs": summaries, **tables,
            "hard": [vars(h) for h in hard], "plots": plots}
    atomic_write_text(out / "report.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    report_path = out / "report.md"
    atomic_write_text(report_path, markdown)
    return report_path, data


def _no_runs(workspace: Path) -> ScoreFlowError:
    return ScoreFlowError(f"no finished FTTT run under {workspace}; run scripts/fttt.sh DATASET CONFIG first")


def main(argv: Sequence[str] | None = None) -> int:
    from fttt.config import load_fttt_config
    from scoreflow.cli import make_parser

    parser = make_parser(__doc__.splitlines()[0], dataset=False)
    parser.add_argument("--out", default=None, help="output folder (default: <workspace>/report)")
    args = parser.parse_args(argv)
    workspace = Path(load_fttt_config(args.config, args.overrides).workspace)
    report_path, data = write_report(workspace, Path(args.out) if args.out else None)
    runs = data["runs"]
    complete = [r for r in runs if r["status"] == "complete"]
    datasets = list(dict.fromkeys(r["dataset"] for r in complete))
    pngs = sum(len(v) for v in data["plots"].values())
    print(f"fttt report: {len(runs)} runs found, {len(complete)} complete, datasets {', '.join(datasets)}; "
          f"{pngs} plots -> {report_path}")
    return 0


if __name__ == "__main__":
    from scoreflow.cli import run

    run(main)
