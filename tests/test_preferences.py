"""Preference data (SPEC section 6): pairing, the template filter and gap-weighted resampling.

The sampling tests are statistical but seeded, so they are deterministic; the bounds
(chi-square below the 99.9% critical value, every frequency within 4 standard errors)
are ones a correct sampler fails with probability ~1e-3 per seed, not flaky thresholds.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from benchmarks.families import MathBenchmark
from scoreflow.preferences import (
    PreferencePair,
    ScoredWorkflow,
    TemplateFilter,
    build_preferences,
    candidate_pairs,
    mean_scores,
    pair_probabilities,
    pair_stats,
    sample_pairs,
    split_near_template,
)

TEMPLATE = MathBenchmark.template_workflow
OPERATORS = MathBenchmark.operators
NEAR = TEMPLATE.replace("step by step", "carefully")  # similarity ~0.93 to the template
FAR = """<graph>
class Workflow:
    def __init__(self, config, problem) -> None:
        self.custom = operator.Custom(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)

    async def run_workflow(self):
        solutions = [await self.custom(instruction="Solve it, variant " + str(i)) for i in range(3)]
        best = await self.sc_ensemble(solutions=solutions)
        return best
</graph>"""  # similarity ~0.54

# chi-square 99.9% quantiles (scipy.stats.chi2.ppf(0.999, df)), hard-coded: scipy is optional.
CHI2_999 = {3: 16.266}
GAPS = (0.1, 0.3, 0.6, 1.0)
N_DRAWS = 200_000


def wf(problem: str, sample: int, score: float, workflow: str | None = None) -> ScoredWorkflow:
    return ScoredWorkflow(problem, sample, f"prompt {problem}", workflow or f"{problem}-w{sample}", score)


def gap_pairs() -> list[PreferencePair]:
    """One pair per gap of GAPS (rejected score 0, so the gaps are exact)."""
    return [PreferencePair("p", "prompt", f"c{i}", f"r{i}", gap, 0.0, i, 100 + i) for i, gap in enumerate(GAPS)]


def chi_square(counts: list[int], probabilities: list[float], n: int) -> float:
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probabilities))


# ------------------------------------------------------------------ pairing


def test_mean_scores_average_runs_order_independently() -> None:
    means = mean_scores({("a", 0): [1.0, 0.0, 0.0], ("a", 1): [0.1, 0.2, 0.3], ("a", 2): [0.3, 0.2, 0.1]})
    assert means[("a", 0)] == pytest.approx(1 / 3)
    assert means[("a", 1)] == means[("a", 2)]  # fsum: no last-bit difference from run order
    with pytest.raises(ValueError):
        mean_scores({("a", 0): []})


def test_identical_scores_give_no_pair() -> None:
    assert candidate_pairs([wf("a", 0, 0.5), wf("a", 1, 0.5), wf("a", 2, 0.5)]) == []
    tied = (0.1 + 0.2 + 0.3) / 3, (0.3 + 0.2 + 0.1) / 3  # differ in the last bit only
    assert tied[0] != tied[1]
    assert candidate_pairs([wf("a", 0, tied[0]), wf("a", 1, tied[1])]) == []


def test_pairs_are_every_distinct_scored_pair_with_chosen_higher() -> None:
    workflows = [wf("a", 0, 0.2), wf("a", 1, 0.9), wf("a", 2, 0.2), wf("a", 3, 0.5), wf("b", 0, 1.0), wf("b", 1, 0.0)]
    pairs = candidate_pairs(workflows)
    # a: 4 workflows -> 6 pairs minus the (0, 2) tie; b: 1 pair; never across problems.
    assert len(pairs) == 6
    assert all(p.chosen_score > p.rejected_score and p.gap > 0 for p in pairs)
    assert {(p.problem_id, p.chosen_sample, p.rejected_sample) for p in pairs} == {
        ("a", 1, 0), ("a", 3, 0), ("a", 1, 2), ("a", 1, 3), ("a", 3, 2), ("b", 0, 1)
    }
    first = pairs[0]
    assert first.as_record() == {
        "problem_id": "a", "prompt": "prompt a", "chosen": "a-w1", "rejected": "a-w0",
        "chosen_score": 0.9, "rejected_score": 0.2, "chosen_sample": 1, "rejected_sample": 0,
    }


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        wf("a", 0, 1.5)
    with pytest.raises(ValueError):
        wf("a", 0, float("nan"))
    with pytest.raises(ValueError):
        PreferencePair("a", "p", "c", "r", 0.2, 0.5, 0, 1)
    with pytest.raises(ValueError):
        candidate_pairs([wf("a", 0, 0.1), wf("a", 0, 0.2)])  # duplicate sample
    with pytest.raises(ValueError):
        candidate_pairs([wf("a", 0, 0.1), ScoredWorkflow("a", 1, "other prompt", "w", 0.2)])
    with pytest.raises(ValueError):
        sample_pairs(gap_pairs(), -1, 1.0, 0)
    with pytest.raises(ValueError):
        sample_pairs(gap_pairs(), 5, -1.0, 0)


# ------------------------------------------------------------------ template filter


def test_template_filter_measures_body_similarity() -> None:
    math_filter = TemplateFilter.from_template(TEMPLATE, OPERATORS, 0.75)
    assert math_filter.similarity(TEMPLATE) == 1.0
    assert math_filter.similarity(NEAR) >= 0.75
    assert math_filter.similarity(FAR) < 0.75
    assert math_filter.similarity("no workflow here") is None
    assert not math_filter.keeps(NEAR) and math_filter.keeps(FAR) and not math_filter.keeps("junk")
    code_filter = TemplateFilter.from_template(TEMPLATE, OPERATORS, 1.1)  # code datasets: no check
    assert code_filter.keeps(TEMPLATE) and code_filter.keeps(NEAR)


def test_near_template_workflows_are_dropped_before_pairing() -> None:
    math_filter = TemplateFilter.from_template(TEMPLATE, OPERATORS, 0.75)
    workflows = [
        wf("a", 0, 1.0, NEAR),  # would be the best of a; dropped, so it never becomes "chosen"
        wf("a", 1, 0.5, FAR),
        wf("a", 2, 0.0, FAR.replace("variant", "version")),
        wf("b", 0, 1.0, TEMPLATE),  # b keeps one workflow only -> no pair
        wf("b", 1, 0.0, FAR),
    ]
    kept, dropped = split_near_template(workflows, math_filter)
    assert [(w.problem_id, w.sample) for w in dropped] == [("a", 0), ("b", 0)]
    data = build_preferences(workflows, math_filter, n=10, alpha=3.0, seed=0)
    assert data.kept == kept
    assert [(p.chosen_sample, p.rejected_sample) for p in data.pairs] == [(1, 2)]
    assert all(NEAR not in (p.chosen, p.rejected) for p in data.sampled)
    assert data.stats.workflows_dropped == 2 and data.stats.problems_without_pairs == 1
    unfiltered = build_preferences(workflows, None, n=10, alpha=3.0, seed=0)
    assert len(unfiltered.pairs) == 4


def test_problems_without_pairs_are_counted() -> None:
    workflows = [
        wf("ties", 0, 0.5), wf("ties", 1, 0.5),
        wf("single", 0, 1.0),
        wf("ok", 0, 1.0), wf("ok", 1, 0.0), wf("ok", 2, 0.5),
    ]
    pairs = candidate_pairs(workflows)
    sampled = sample_pairs(pairs, 1000, 1.0, seed=3)
    stats = pair_stats(workflows, pairs, sampled)
    assert (stats.problems, stats.workflows, stats.problems_without_pairs) == (3, 6, 2)
    assert (stats.pairs_available, stats.pairs_sampled, stats.distinct_pairs_sampled) == (3, 1000, 3)
    assert stats.mean_gap_available == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    # gap-weighted sampling favours the big gap: E[gap] = sum d^2 / sum d = 1.5 / 2 = 0.75
    assert stats.mean_gap_sampled == pytest.approx(0.75, abs=0.03)
    empty = pair_stats([wf("ties", 0, 0.5)], [], [])
    assert empty.mean_gap_available is None and empty.mean_gap_sampled is None
    assert set(empty.as_record()) >= {"problems_without_pairs", "mean_gap_sampled"}


# ------------------------------------------------------------------ resampling


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_pair_frequencies_follow_gap_to_the_alpha(alpha: float) -> None:
    pairs = gap_pairs()
    expected_weights = [1.0 if alpha == 0 else gap**alpha for gap in GAPS]
    expected = [w / sum(expected_weights) for w in expected_weights]
    assert pair_probabilities(pairs, alpha) == pytest.approx(expected, rel=1e-12)
    sampled = sample_pairs(pairs, N_DRAWS, alpha, seed=1234)
    assert len(sampled) == N_DRAWS
    by_sample = Counter(p.chosen_sample for p in sampled)
    counts = [by_sample[i] for i in range(len(GAPS))]
    statistic = chi_square(counts, expected, N_DRAWS)
    assert statistic < CHI2_999[len(GAPS) - 1], f"chi-square {statistic:.2f}, counts {counts}"
    for count, p in zip(counts, expected):
        standard_error = math.sqrt(p * (1 - p) / N_DRAWS)
        assert abs(count / N_DRAWS - p) < 4 * standard_error, (count, p)


def test_alpha_100_concentrates_on_the_largest_gap_without_underflow() -> None:
    sampled = sample_pairs(gap_pairs(), 10_000, 100.0, seed=5)
    assert {p.gap for p in sampled} == {1.0}
    # Tiny gaps: raw d ** 100 would be 0.0 for every pair (1e-400); normalised it is fine.
    tiny = [PreferencePair("p", "x", "c", "r", 0.5 + gap, 0.5, i, 9) for i, gap in enumerate((1e-4, 2e-4, 2e-4))]
    assert (1e-4) ** 100 == 0.0
    probabilities = pair_probabilities(tiny, 100.0)
    assert all(math.isfinite(p) for p in probabilities) and sum(probabilities) == pytest.approx(1.0)
    counts = Counter(p.chosen_sample for p in sample_pairs(tiny, 10_000, 100.0, seed=5))
    assert counts[0] == 0 and counts[1] + counts[2] == 10_000
    # the two largest gaps tie: counts[1] - counts[2] = 2 Bin(10000, 1/2) - 10000, sd 100; 4 sd
    assert abs(counts[1] - counts[2]) < 400


def test_sampling_is_seeded_exact_and_handles_empty_input() -> None:
    pairs = gap_pairs()
    first = sample_pairs(pairs, 500, 3.0, seed=7)
    assert first == sample_pairs(pairs, 500, 3.0, seed=7)
    assert first != sample_pairs(pairs, 500, 3.0, seed=8)
    for n in (1, 7, 2000):
        assert len(sample_pairs(pairs[:1], n, 3.0, seed=0)) == n  # one pair: repeated n times
    assert sample_pairs([], 2000, 3.0, seed=0) == []
    assert sample_pairs(pairs, 0, 3.0, seed=0) == []
    assert pair_probabilities([], 3.0) == []
