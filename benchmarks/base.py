"""One benchmark interface for all six datasets.

A benchmark knows its published split files, how a record becomes a
:class:`Problem`, how an output is scored (AFlow's rules, SPEC section 2), the
executor prompts around scoring (answer extraction; the inference judge), and what
the workflow generator needs (operators, template workflow, trial problem,
banned substrings, similarity threshold and time limits; SPEC sections 3 and 4).

Shared behaviour lives in the three family classes (code, math, QA); a dataset
module only adds what is really its own.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from scoreflow.config import DatasetSettings, ScoringConfig
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_jsonl
from scoreflow.sandbox import Sandbox, SandboxSettings

Family = Literal["code", "math", "qa"]
Split = Literal["validate", "test"]
SPLITS: tuple[Split, ...] = ("validate", "test")

# Every generated workflow is rejected if it contains one of these (SPEC section 4).
BANNED_EVERYWHERE: tuple[str, ...] = (".split(' ')", "int(")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem as the pipeline sees it."""

    id: str
    question: str  # what the generator sees (QA: the question without its context)
    input: str  # what the workflow's operators receive as the problem
    answer: str  # the reference (code: the canonical solution)
    entry_point: str = ""  # code: the function the solution must define
    test: str = ""  # code: hidden tests defining check(...)
    public_tests: tuple[str, ...] = ()  # code: asserts on `candidate` the Test operator may run
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Score:
    """A scored output: the score in [0, 1], what was compared, and why."""

    value: float
    prediction: str
    detail: str = ""


class Benchmark(ABC):
    """A dataset: its splits, scorer, executor prompts and generation settings."""

    name: ClassVar[str]
    family: ClassVar[Family]
    file_stem: ClassVar[str]  # AFlow's file names: <stem>_<split>.jsonl
    id_field: ClassVar[str]  # the record field that names a problem ("" for a content hash)
    split_sizes: ClassVar[dict[str, int]]  # published record counts
    operators: ClassVar[tuple[str, ...]]
    template_bindings: ClassVar[tuple[tuple[str, str], ...]]  # (attribute, operator) as the template's __init__ binds them
    template_workflow: ClassVar[str]
    banned_substrings: ClassVar[tuple[str, ...]] = BANNED_EVERYWHERE
    public_test_key: ClassVar[str] = ""  # public-test file field that names the problem
    judged: ClassVar[bool] = False  # inference also asks the judge (MATH, DROP, HotpotQA; the paper reports it)

    def __init__(
        self,
        settings: DatasetSettings | None = None,
        sandbox_settings: SandboxSettings | None = None,
        sandbox: Sandbox | None = None,
        *,
        scoring: ScoringConfig | None = None,
    ) -> None:
        self.settings = settings or DatasetSettings()
        from scoreflow.operators import OPERATORS

        unknown = [name for name in self.settings.extra_operators if name not in OPERATORS]
        if unknown:
            raise ScoreFlowError(f"datasets.{self.name}.extra_operators: unknown operator {unknown[0]!r} "
                                 f"(expected some of: {', '.join(OPERATORS)})")
        extra = [name for name in self.settings.extra_operators if name not in type(self).operators]
        self.operators = (*type(self).operators, *extra)  # the original's set, plus what the config adds
        self.sandbox_settings = sandbox_settings or SandboxSettings()
        self.scoring = scoring or ScoringConfig()
        self._sandbox = sandbox

    # ------------------------------------------------------------ data

    @classmethod
    def record_id(cls, record: dict[str, Any]) -> str:
        """A problem's stable id: its id field, or a hash of its text where it has none."""
        if cls.id_field:
            return str(record[cls.id_field])
        return content_hash(cls.hashed_text(record))

    @classmethod
    def hashed_text(cls, record: dict[str, Any]) -> str:
        raise NotImplementedError(f"{cls.name} has an id field")

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        """Record fields a split file must have (checked when preparing data)."""
        return ()

    def load(self, split: Split, data_dir: str | Path) -> list[Problem]:
        """Problems of a prepared split (``python -m data.prepare`` writes them)."""
        path = split_path(data_dir, self.name, split)
        if not path.exists():
            raise ScoreFlowError(
                f"{path}: {self.name} {split} split is not prepared; "
                f"run: python -m data.prepare --dataset {self.name}"
            )
        public = self._public_tests(Path(data_dir))
        problems = []
        for number, record in enumerate(read_jsonl(path), start=1):
            missing = [f for f in self.required_fields() if f not in record]
            if missing:
                raise ScoreFlowError(f"{path}:{number}: record lacks field {missing[0]!r}")
            problems.append(self.to_problem(record, public))
        return problems

    def select(
        self, split: Split, data_dir: str | Path, problem_ids: Sequence[str] = (), max_problems: int | None = None
    ) -> list[Problem]:
        """The problems a run works on: those of ``problem_ids`` found in the split (split
        order; all when empty), then the first ``max_problems``. Generate and evaluate both
        call this, so a smoke run's solve rate is over the problems it was given."""
        problems = self.load(split, data_dir)
        if problem_ids:
            wanted = set(problem_ids)
            problems = [p for p in problems if p.id in wanted]
            if not problems:
                raise ScoreFlowError(
                    f"generation.problem_ids: none of {sorted(wanted)[:3]} is in the {self.name} {split} split"
                )
        return problems[:max_problems]

    @abstractmethod
    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        """Turn one published record into a Problem."""

    def _public_tests(self, data_dir: Path) -> dict[str, list[list[str]]]:
        """Public-test lists by key; a key can name several problems (MBPP reuses names)."""
        if not self.public_test_key:
            return {}
        path = public_tests_path(data_dir, self.name)
        if not path.exists():
            return {}
        tests: dict[str, list[list[str]]] = {}
        for record in read_jsonl(path):
            tests.setdefault(str(record[self.public_test_key]), []).append(list(record["test"]))
        return tests

    # ------------------------------------------------------------ scoring

    @abstractmethod
    async def score(self, problem: Problem, output: str) -> Score:
        """Score a workflow's (extracted) output against the reference, in [0, 1]."""

    def extraction_prompt(self, problem: Problem, output: str) -> str | None:
        """The executor call that pulls the final answer out of a workflow's output.

        None where outputs are scored as they are (code).
        """
        return None

    def judge_prompt(self, problem: Problem, output: str) -> str | None:
        """The inference-time judge call (MATH, DROP, HotpotQA); None elsewhere."""
        return None

    def judge_precheck(self, problem: Problem, output: str) -> float | None:
        """A score decided without asking the judge (HotpotQA's length rule)."""
        return None

    def verdict(self, reply: str) -> float:
        """The judge's reply as a score, read as ``scoring.judge_verdict`` says."""
        if self.scoring.judge_verdict == "exact":
            return self.exact_verdict(reply)
        return self.parse_judgement(reply)

    @staticmethod
    def exact_verdict(reply: str) -> float:
        """1.0 only if the stripped reply is exactly "1"; "0" and anything else is 0.0 (the original)."""
        return 1.0 if reply.strip() == "1" else 0.0

    @staticmethod
    def parse_judgement(reply: str) -> float:
        """The lenient reading (``judge_verdict: last_digit``): 1.0 if the reply's last
        standalone 0/1 is 1, else 0.0; for executors that explain before the verdict."""
        verdicts = re.findall(r"(?<![\d.])([01])(?![\d.])", reply)
        return 1.0 if verdicts and verdicts[-1] == "1" else 0.0

    # ------------------------------------------------------------ generation

    @property
    def max_range(self) -> int:
        """The largest ``range(N)`` a workflow of this dataset may use (``workflow.max_range_for``)."""
        from scoreflow.workflow import max_range_for

        return max_range_for(self.family)

    @property
    def binding_order(self) -> tuple[str, ...]:
        """The operators in the order the template's ``__init__`` binds them (the original's),
        then any the config adds; grammar-constrained decoding binds in this order."""
        bound = tuple(name for _, name in self.template_bindings)
        return (*bound, *(name for name in self.operators if name not in bound))

    @property
    def similarity_threshold(self) -> float:
        return self.settings.similarity_threshold

    @property
    def workflow_time_limit_s(self) -> float:
        return self.settings.workflow_time_limit_s

    @property
    def trial_time_limit_s(self) -> float:
        return self.settings.trial_time_limit_s

    @property
    @abstractmethod
    def trial_problem(self) -> Problem:
        """A tiny problem every generated workflow must solve in time before it is kept."""

    # ------------------------------------------------------------ helpers

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox scoring runs in, started on first use."""
        if self._sandbox is None:
            self._sandbox = self._make_sandbox()
        return self._sandbox

    def _make_sandbox(self) -> Sandbox:
        return Sandbox(self.sandbox_settings)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def split_path(data_dir: str | Path, dataset: str, split: str) -> Path:
    return Path(data_dir) / dataset / f"{split}.jsonl"


def public_tests_path(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / dataset / "public_tests.jsonl"


def content_hash(text: str) -> str:
    """Id of a record that has none (MATH): sha256 of its text, 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
