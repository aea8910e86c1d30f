"""The benchmark registry: one interface (:class:`Benchmark`), six datasets."""

from __future__ import annotations

from benchmarks.base import SPLITS, Benchmark, Problem, Score, Split
from benchmarks.competition_math import MATH
from benchmarks.drop import DROP
from benchmarks.gsm8k import GSM8K
from benchmarks.hotpotqa import HotpotQA
from benchmarks.humaneval import HumanEval
from benchmarks.mbpp import MBPP
from scoreflow.config import DATASETS, Config
from scoreflow.errors import ScoreFlowError

BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (HumanEval, MBPP, GSM8K, MATH, DROP, HotpotQA)}
assert tuple(BENCHMARKS) == DATASETS, "the registry and the config must list the same datasets"


def benchmark_class(name: str) -> type[Benchmark]:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ScoreFlowError(f"unknown dataset {name!r} (expected one of: {', '.join(BENCHMARKS)})") from None


def get_benchmark(name: str, config: Config | None = None) -> Benchmark:
    """A ready benchmark with the dataset's settings and the sandbox and scoring settings of ``config``."""
    cls = benchmark_class(name)
    config = config or Config()
    return cls(config.dataset(name), config.sandbox, scoring=config.scoring)


__all__ = ["BENCHMARKS", "SPLITS", "Benchmark", "Problem", "Score", "Split", "benchmark_class", "get_benchmark"]
