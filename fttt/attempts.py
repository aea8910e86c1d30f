"""What a method records per attempt and per question, and how attempts are counted.

Budget accounting (FTTT_SPEC 1.5 and 5 item 9). ``paper``: as published — FTTT does not
count an attempt with no extractable answer, FTTT+ neither, nor a truncated attempt or
a truncated reflection, and Self-Refine's unchecked draft is free. ``strict``: every
answer generation counts (a reflection is not an answer; its tokens are recorded).

The rules only decide what is *counted*, never what a method *does* next (a paper
FTTT run still skips training on an unanswered attempt under ``strict``). So a run's
first ``b`` generations are the same under both policies, and every run records the
index of its first success under both (``success_at`` and ``success_at_strict``):
``methods.accounting`` only sets where a run stops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Accounting = Literal["paper", "strict"]
Kind = Literal["attempt", "draft", "beam", "reflection"]


@dataclass
class Attempt:
    """One generation of a method on one question (a line of ``attempts.jsonl``)."""

    question_id: str
    index: int  # 0-based, in generation order over the question (reflections included)
    kind: Kind
    counted: bool  # counted against the paper budget
    counted_strict: bool  # counted against the strict budget
    reason: str | None  # why not counted (paper), e.g. "no answer", "truncated", "draft is not checked"
    verdict: bool | None  # None: no answer could be extracted, or not checked
    checked: bool
    answer: str | None  # the extracted answer (Self-Consistency's vote key)
    text: str
    new_tokens: int
    finished: bool  # ended with an end-of-turn token
    seconds: float
    loss: float | None = None  # FTTT(+): the training loss of the step this attempt triggered
    extra: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuestionResult:
    """A question's outcome (a line of ``results.jsonl``)."""

    id: str
    original_id: int | str
    success: bool  # within the paper budget (the paper's metric)
    success_strict: bool  # within the strict budget
    success_at: int | None  # paper-counted attempts used up to and including the first success (1-based)
    success_at_strict: int | None  # answer generations up to and including the first success (1-based)
    paper_num_trials: int  # what the original prints as the question's num_trials (FTTT_SPEC 1.5 table)
    counted_attempts: int  # paper-counted attempts made
    generations: int  # every generation (reflections and drafts included)
    answer_generations: int  # generations that are answers (strict-counted)
    generated_tokens: int
    final_verdict: bool | None
    seconds: float
    curve: list[bool] | None = None  # success at budgets 1..B when not monotone in the first success (Self-Consistency)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


class Counter:
    """Counts a question's attempts under both policies and knows when to stop."""

    def __init__(self, budget: int, accounting: Accounting) -> None:
        self.budget = budget
        self.accounting = accounting
        self.paper = 0  # counted attempts (paper)
        self.strict = 0  # answer generations
        self.generations = 0
        self.tokens = 0
        self.success_at: int | None = None
        self.success_at_strict: int | None = None

    def add(self, attempt: Attempt) -> None:
        self.generations += 1
        self.tokens += attempt.new_tokens
        self.paper += attempt.counted
        self.strict += attempt.counted_strict
        if attempt.verdict is True and self.success_at is None:
            self.success_at_strict = self.strict
            # A success is an attempt the paper always counts (it ends the question).
            self.success_at = self.paper if attempt.counted else self.paper + 1

    @property
    def used(self) -> int:
        """Attempts charged under this run's own policy."""
        return self.paper if self.accounting == "paper" else self.strict

    @property
    def exhausted(self) -> bool:
        return self.used >= self.budget

    @property
    def solved(self) -> bool:
        return self.success_at is not None

    def result(self, question: Any, *, paper_num_trials: int, final_verdict: bool | None, seconds: float,
               curve: list[bool] | None = None, extra: dict[str, Any] | None = None) -> QuestionResult:
        within = self.success_at is not None and self.success_at <= self.budget
        within_strict = self.success_at_strict is not None and self.success_at_strict <= self.budget
        return QuestionResult(
            id=question.id, original_id=question.original_id,
            success=within if curve is None else bool(curve[-1]),
            success_strict=within_strict if curve is None else bool(curve[-1]),
            success_at=self.success_at, success_at_strict=self.success_at_strict,
            paper_num_trials=paper_num_trials, counted_attempts=self.paper, generations=self.generations,
            answer_generations=self.strict, generated_tokens=self.tokens, final_verdict=final_verdict,
            seconds=round(seconds, 3), curve=curve, extra=extra or {},
        )
