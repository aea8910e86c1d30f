"""Table 1's baseline methods as fixed workflows, scored by the inference path of ScoreFlow.

The baselines (IO, CoT, CoT-SC, MedPrompt, MultiPersona, Self-Refine; definitions in
``docs/baselines.md``) are written in the workflow language and live as text in
``benchmarks/baselines/``: ``<name>.<Dataset>.workflow`` where one dataset has its own
version (``aflow``), else ``<name>.<family>.workflow`` where a family needs its own, else
``<name>.workflow``. They pass the same checker and run through the same
interpreter and operators as generated workflows, so a baseline's row differs from
ScoreFlow's only in the workflow, never in the executor, scorer, judge or accounting.

``BaselineStage`` is the evaluate stage at inference with the generated workflows
replaced by the baseline's, one per test problem, in ``<workspace>/<D>/baselines/<name>/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.base import Benchmark, Problem
from scoreflow.config import Config
from scoreflow.errors import ScoreFlowError
from scoreflow.evaluation import EvaluateStage
from scoreflow.workflow import CheckedWorkflow, WorkflowRejected, check_workflow
from scoreflow.workspace import Workspace

BASELINE_NAMES: tuple[str, ...] = ("io", "cot", "cot_sc", "medprompt", "multipersona", "self_refine")
# AFlow's published graphs (MetaGPT's AFlow workspace), for the datasets that publish one; not in ``all``.
AFLOW = "aflow"
AFLOW_DATASETS: tuple[str, ...] = ("GSM8K", "MATH")
BASELINE_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "baselines"
STAGE = "baseline_inference"
# Operators a baseline binds beyond its dataset's generator-facing set, per (baseline,
# family): the code datasets offer no Review, which Self-Refine's feedback rounds need.
EXTRA_OPERATORS: dict[tuple[str, str], tuple[str, ...]] = {("self_refine", "code"): ("Review",)}
# The paper's row label of each baseline (scoreflow.report.PAPER_RESULTS).
PAPER_LABELS = {"io": "IO", "cot": "CoT", "cot_sc": "CoT SC", "medprompt": "MedPrompt",
                "multipersona": "MultiPersona", "self_refine": "Self Refine", AFLOW: "AFlow (published round-2 graph)"}


@dataclass(frozen=True)
class Baseline:
    """One baseline's workflow for one dataset family, checked."""

    name: str
    family: str
    path: Path
    source: str
    operators: tuple[str, ...]  # what the checker allowed: the dataset's, plus EXTRA_OPERATORS
    checked: CheckedWorkflow

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def as_record(self) -> dict[str, Any]:
        """What the stage manifest says about the workflow that ran."""
        extra = [n for n in self.operators if n in EXTRA_OPERATORS.get((self.name, self.family), ())]
        return {"name": self.name, "file": str(self.path.relative_to(BASELINE_DIR.parent.parent)),
                "sha256": self.sha256, "operators_used": sorted(set(self.checked.operators_used.values())),
                "extra_operators": extra}


def baseline_names(name: str) -> tuple[str, ...]:
    """The baselines ``--baseline NAME`` asks for (``all``: every one, in Table 1's order)."""
    if name == "all":
        return BASELINE_NAMES
    if name not in (*BASELINE_NAMES, AFLOW):
        raise ScoreFlowError(
            f"--baseline: unknown baseline {name!r} (expected one of: {', '.join(BASELINE_NAMES)}, all, {AFLOW})"
        )
    return (name,)


def baseline_path(name: str, dataset: str, family: str) -> Path:
    """The dataset's own version of the baseline if it has one, else its family's, else the shared one."""
    for candidate in (f"{name}.{dataset}.workflow", f"{name}.{family}.workflow"):
        if (BASELINE_DIR / candidate).is_file():
            return BASELINE_DIR / candidate
    return BASELINE_DIR / f"{name}.workflow"


def load_baseline(name: str, benchmark: Benchmark) -> Baseline:
    """The baseline's workflow for ``benchmark``'s family, through the checker with the
    dataset's operators (plus the baseline's declared extras), the dataset's loop bound and,
    for code, the rule that only an operator's output is returned: as the evaluate stage checks."""
    baseline_names(name)
    if name == AFLOW and benchmark.name not in AFLOW_DATASETS:
        raise ScoreFlowError(f"--baseline: AFlow publishes no workflow for {benchmark.name} that we carry "
                             f"(only {', '.join(AFLOW_DATASETS)}; docs/baselines.md)")
    path = baseline_path(name, benchmark.name, benchmark.family)
    if not path.is_file():
        raise ScoreFlowError(f"{path}: the {name} baseline has no workflow for {benchmark.name}")
    source = path.read_text(encoding="utf-8")
    operators = tuple(dict.fromkeys((*benchmark.operators, *EXTRA_OPERATORS.get((name, benchmark.family), ()))))
    try:
        checked = check_workflow(source, operators, max_range=benchmark.max_range,
                                 returns_operator_output=benchmark.family == "code")  # the evaluate stage's rule
    except WorkflowRejected as exc:
        raise ScoreFlowError(f"{path}: the {name} baseline does not pass the checker for {benchmark.name} ({exc})") from None
    return Baseline(name, benchmark.family, path, source, operators, checked)


class BaselineWorkspace(Workspace):
    """``<workspace>/<dataset>/baselines/<name>/``: a baseline's records, cache and manifest."""

    def __init__(self, root: str | Path, dataset: str, name: str) -> None:
        super().__init__(root, dataset, 0)
        self.epoch = None  # type: ignore[assignment]  # a baseline has no epoch (its manifest says null)
        self.baseline = name
        self.dir = self.root / dataset / "baselines" / name

    @property
    def label(self) -> str:
        return f"{self.dataset} baseline {self.baseline}"


class BaselineStage(EvaluateStage):
    """ScoreFlow's inference evaluation (``EvaluateStage``, task inference) of one baseline:
    the same runs per problem, scoring, judge, resume, cache and manifest; only the
    workflows differ (the baseline's, the same for every test problem)."""

    def __init__(self, config: Config, dataset: str, name: str) -> None:
        super().__init__(config, dataset, "inference", 0)
        self.stage, self.needs, self.workflows_file, self.scores_file = STAGE, None, None, "scores.jsonl"
        self.workspace = BaselineWorkspace(config.workspace, dataset, name)
        self.baseline = load_baseline(name, self.benchmark)

    def _workflows(self, problems: dict[str, Problem]) -> list[dict[str, Any]]:
        """The baseline's workflow as the one valid workflow (sample 0) of every selected problem."""
        return [{"problem_id": pid, "sample": 0, "valid": True, "workflow": self.baseline.source} for pid in problems]

    def _checked(self, workflows: list[dict[str, Any]]) -> dict[tuple[str, int], CheckedWorkflow]:
        return {(w["problem_id"], w["sample"]): self.baseline.checked for w in workflows}

    def _finish_task(
        self, stage: Any, workflows: list[dict[str, Any]], records: list[dict[str, Any]], problems: dict[str, Problem]
    ) -> dict[str, Any]:
        return {**super()._finish_task(stage, workflows, records, problems), "baseline": self.baseline.as_record()}


def finished(config: Config, dataset: str, name: str) -> bool:
    """Whether the baseline already finished with this config (``--skip-finished``)."""
    return BaselineWorkspace(config.workspace, dataset, name).finished_with(STAGE, config)
