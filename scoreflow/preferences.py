"""Preference data (SPEC section 6): scored workflows -> pairs -> resampled pairs.

Per problem the scores of a workflow's runs are averaged; workflows whose
``run_workflow`` body is (almost) the template's are dropped (SPEC section 4's ratio,
so the optimiser is never rewarded for copying the template); every two kept workflows
with different scores give a pair (chosen = higher). The pairs are then resampled with
replacement to exactly N with probability proportional to ``(s_w - s_l) ** alpha``.

Everything here is pure and deterministic: the only randomness is a seeded
``random.Random``. The evaluate stage calls :func:`build_preferences` (or the pieces).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import Any, Iterable, Mapping, Sequence

from scoreflow.workflow import WorkflowRejected, body_similarity, check_workflow, extract_graph

__all__ = [
    "PairStats",
    "PreferenceData",
    "PreferencePair",
    "ScoredWorkflow",
    "TIE_TOLERANCE",
    "TemplateFilter",
    "build_preferences",
    "candidate_pairs",
    "mean_scores",
    "pair_probabilities",
    "pair_stats",
    "sample_pairs",
    "split_near_template",
]

# Two mean scores closer than this are a tie: means of partial scores (F1) summed in a
# different order may differ in the last bit, which is not a preference.
TIE_TOLERANCE = 1e-9


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class ScoredWorkflow:
    """One generated workflow of a problem with its mean score over the scoring runs.

    ``workflow`` is what the generator wrote (the DPO completion); it may be the raw
    text with a ``<graph>`` block or the bare graph. ``prompt`` is the generator prompt.
    """

    problem_id: str
    sample: int
    prompt: str
    workflow: str
    score: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"score of {self.problem_id}#{self.sample} must be in [0, 1], not {self.score!r}")


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example: the same prompt, a better (chosen) and a worse (rejected) workflow."""

    problem_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    chosen_sample: int
    rejected_sample: int

    def __post_init__(self) -> None:
        if not self.chosen_score - self.rejected_score > TIE_TOLERANCE:
            raise ValueError(
                f"pair of {self.problem_id}: chosen score {self.chosen_score!r} must exceed "
                f"rejected score {self.rejected_score!r}"
            )

    @property
    def gap(self) -> float:
        """s_w - s_l, the margin the sampling weight and Score-DPO use."""
        return self.chosen_score - self.rejected_score

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of the pairs file)."""
        return asdict(self)


def mean_scores(run_scores: Mapping[tuple[str, int], Sequence[float]]) -> dict[tuple[str, int], float]:
    """Mean score per (problem_id, sample); ``fsum`` makes it independent of run order."""
    means: dict[tuple[str, int], float] = {}
    for key, runs in run_scores.items():
        if not runs:
            raise ValueError(f"workflow {key} has no scoring runs")
        means[key] = math.fsum(runs) / len(runs)
    return means


# ------------------------------------------------------------------ template filter


@dataclass(frozen=True)
class TemplateFilter:
    """Drops workflows whose run_workflow body is (almost) the template's.

    A workflow is dropped when ``body_similarity(body, template body) >= threshold``,
    exactly the generate stage's test; a threshold above 1 (code datasets: 1.1) keeps
    everything without parsing. A workflow the checker rejects is dropped too: it is
    not a valid generated workflow, so it has no place in the preference data.
    """

    template_body: str
    operators: tuple[str, ...]
    threshold: float
    max_range: int = 3  # the dataset's loop bound (``workflow.max_range_for``)
    returns_operator_output: bool = False  # code datasets: the checker's rule (a) (``check_workflow``)

    @classmethod
    def from_template(cls, template_workflow: str, operators: Sequence[str], threshold: float, *,
                      max_range: int = 3, returns_operator_output: bool = False) -> TemplateFilter:
        """Build from the benchmark's template workflow, operator allow-list and loop bound."""
        body = check_workflow(template_workflow, operators, max_range=max_range,
                              returns_operator_output=returns_operator_output).body_source
        return cls(body, tuple(operators), threshold, max_range, returns_operator_output)

    def similarity(self, workflow: str) -> float | None:
        """Ratio of the workflow's body to the template's; None when the checker rejects it."""
        graph = extract_graph(workflow)
        try:
            checked = check_workflow(workflow if graph is None else graph, self.operators, max_range=self.max_range,
                                     returns_operator_output=self.returns_operator_output)
        except WorkflowRejected:
            return None
        return body_similarity(checked.body_source, self.template_body)

    def keeps(self, workflow: str) -> bool:
        """True when the workflow is far enough from the template to be paired."""
        if self.threshold > 1.0:
            return True
        similarity = self.similarity(workflow)
        return similarity is not None and similarity < self.threshold


def split_near_template(
    workflows: Iterable[ScoredWorkflow], template_filter: TemplateFilter | None
) -> tuple[list[ScoredWorkflow], list[ScoredWorkflow]]:
    """(kept, dropped) in input order; no filter keeps everything."""
    kept: list[ScoredWorkflow] = []
    dropped: list[ScoredWorkflow] = []
    for workflow in workflows:
        keep = template_filter is None or template_filter.keeps(workflow.workflow)
        (kept if keep else dropped).append(workflow)
    return kept, dropped


# ------------------------------------------------------------------ pairs


def _by_problem(workflows: Iterable[ScoredWorkflow]) -> dict[str, list[ScoredWorkflow]]:
    """Workflows grouped per problem (first-seen order), sorted by sample; checks consistency."""
    groups: dict[str, list[ScoredWorkflow]] = {}
    for workflow in workflows:
        groups.setdefault(workflow.problem_id, []).append(workflow)
    for problem_id, group in groups.items():
        group.sort(key=lambda w: w.sample)
        samples = [w.sample for w in group]
        if len(set(samples)) != len(samples):
            raise ValueError(f"problem {problem_id} has duplicate samples: {samples}")
        if len({w.prompt for w in group}) > 1:
            raise ValueError(f"problem {problem_id} has workflows with different prompts")
    return groups


def _pair(a: ScoredWorkflow, b: ScoredWorkflow) -> PreferencePair | None:
    """The pair of two workflows of one problem, higher score chosen; None on a tie."""
    if abs(a.score - b.score) <= TIE_TOLERANCE:
        return None
    win, lose = (a, b) if a.score > b.score else (b, a)
    return PreferencePair(
        problem_id=win.problem_id,
        prompt=win.prompt,
        chosen=win.workflow,
        rejected=lose.workflow,
        chosen_score=win.score,
        rejected_score=lose.score,
        chosen_sample=win.sample,
        rejected_sample=lose.sample,
    )


def candidate_pairs(workflows: Iterable[ScoredWorkflow]) -> list[PreferencePair]:
    """Every pair of (already filtered) workflows of a problem with different scores.

    Order is deterministic: problems in first-seen order, then (i, j) over samples, i < j.
    """
    pairs: list[PreferencePair] = []
    for group in _by_problem(workflows).values():
        for i, first in enumerate(group):
            for second in group[i + 1:]:
                pair = _pair(first, second)
                if pair is not None:
                    pairs.append(pair)
    return pairs


# ------------------------------------------------------------------ resampling


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha >= 0.0):
        raise ValueError(f"alpha must be a finite number >= 0, not {alpha!r}")


def _weights(pairs: Sequence[PreferencePair], alpha: float) -> list[float]:
    """Unnormalised weights ``(d / max d) ** alpha``: same distribution as ``d ** alpha``,
    but the largest weight is 1, so a large alpha (100) cannot underflow to all zeros.
    alpha = 0 is uniform explicitly (no ``0 ** 0`` questions)."""
    if alpha == 0.0:
        return [1.0] * len(pairs)
    largest = max(pair.gap for pair in pairs)
    return [(pair.gap / largest) ** alpha for pair in pairs]


def pair_probabilities(pairs: Sequence[PreferencePair], alpha: float) -> list[float]:
    """Each pair's probability of being drawn, proportional to ``(s_w - s_l) ** alpha``."""
    _check_alpha(alpha)
    if not pairs:
        return []
    weights = _weights(pairs, alpha)
    total = math.fsum(weights)
    return [weight / total for weight in weights]


def sample_pairs(pairs: Sequence[PreferencePair], n: int, alpha: float, seed: int) -> list[PreferencePair]:
    """Exactly ``n`` pairs drawn with replacement, P(pair) proportional to gap ** alpha.

    Seeded and deterministic (draw order is the output order); no pairs -> [].
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    _check_alpha(alpha)
    if not pairs or n == 0:
        return []
    cumulative = list(accumulate(_weights(pairs, alpha)))
    return random.Random(seed).choices(list(pairs), cum_weights=cumulative, k=n)


# ------------------------------------------------------------------ summary


@dataclass(frozen=True)
class PairStats:
    """What the preference data looks like, for the evaluate stage's summary."""

    problems: int
    workflows: int
    workflows_dropped: int  # near the template (or rejected by the checker)
    problems_without_pairs: int  # all kept workflows tie, or fewer than 2 kept
    pairs_available: int
    pairs_sampled: int
    distinct_pairs_sampled: int
    mean_gap_available: float | None  # None when there is no pair
    mean_gap_sampled: float | None

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def _mean_gap(pairs: Sequence[PreferencePair]) -> float | None:
    return math.fsum(p.gap for p in pairs) / len(pairs) if pairs else None


def pair_stats(
    workflows: Sequence[ScoredWorkflow],
    pairs: Sequence[PreferencePair],
    sampled: Sequence[PreferencePair],
    dropped: int = 0,
) -> PairStats:
    """Summary of one dataset's pairs; ``workflows`` is every scored workflow (before the
    filter) so that problems whose workflows were all dropped count as having no pair."""
    problems = {w.problem_id for w in workflows}
    with_pairs = {p.problem_id for p in pairs}
    distinct = Counter((p.problem_id, p.chosen_sample, p.rejected_sample) for p in sampled)
    return PairStats(
        problems=len(problems),
        workflows=len(workflows),
        workflows_dropped=dropped,
        problems_without_pairs=len(problems - with_pairs),
        pairs_available=len(pairs),
        pairs_sampled=len(sampled),
        distinct_pairs_sampled=len(distinct),
        mean_gap_available=_mean_gap(pairs),
        mean_gap_sampled=_mean_gap(sampled),
    )


@dataclass(frozen=True)
class PreferenceData:
    """The whole of section 6 for one dataset: kept workflows, all pairs, the sample, stats."""

    kept: list[ScoredWorkflow]
    dropped: list[ScoredWorkflow]
    pairs: list[PreferencePair]
    sampled: list[PreferencePair]
    stats: PairStats


def build_preferences(
    workflows: Sequence[ScoredWorkflow],
    template_filter: TemplateFilter | None,
    n: int,
    alpha: float,
    seed: int,
) -> PreferenceData:
    """Filter near-template workflows, pair the rest, resample n pairs, summarise."""
    kept, dropped = split_near_template(workflows, template_filter)
    pairs = candidate_pairs(kept)
    sampled = sample_pairs(pairs, n, alpha, seed)
    stats = pair_stats(workflows, pairs, sampled, dropped=len(dropped))
    return PreferenceData(kept, dropped, pairs, sampled, stats)
