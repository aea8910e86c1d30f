"""The test-time methods without training (FTTT_SPEC 2.1-2.6); FTTT and FTTT+ are in
``fttt.ttt``. Each is ``run(ctx, question) -> QuestionResult``: it generates, checks
with the verifier, records every generation through ``ctx.record`` and stops by the
rules of the original's script, under the run's budget accounting (``fttt.attempts``).

Decoding as in the original: completions keep their special tokens in Revision and
Self-Refine (their text carries on into the next turn) and drop them in Beam Search,
Best-of-N and Self-Consistency.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fttt import chat
from fttt.attempts import Attempt, Counter, QuestionResult
from fttt.config import FtttConfig
from fttt.policy import Generation, Policy
from fttt.tasks import Question, Task

# The verifier's only words (FTTT_SPEC 2.2, 2.7): the answer was wrong, try again.
INCORRECT = "Your answer is incorrect."
RETRY = "Your answer is incorrect. Please try again."
# Self-Refine's fixed critique turn (2.5), in our words: the feedback never says whether
# the answer was right.
CRITIQUE = (
    "There may be an error in the solution above because of a misunderstanding of the question. "
    "Go through the solution step by step, find the mistake and write a corrected solution."
)


NOT_JUDGED = object()


@dataclass
class Context:
    """What a method needs for one run: config, task, model, verifier and the record sink."""

    config: FtttConfig
    task: Task
    policy: Policy
    judge: Any  # fttt.judging judge (code tasks), or None
    record: Callable[[Attempt], None]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    method: str = ""
    seed: int = 42  # set_seed(seed) before every question (the original reseeds per question)

    @property
    def budget(self) -> int:
        return self.config.methods.budget

    @property
    def accounting(self) -> str:
        return self.config.methods.accounting

    @property
    def greedy(self) -> bool:
        return self.method in self.config.methods.greedy_methods

    def prompt_ids(self, question: Question) -> list[int]:
        return chat.prompt_ids(self.policy.tokenizer, question.user_message)

    def verdict(self, question: Question, text: str) -> bool | None:
        return self.loop.run_until_complete(self.task.verdict(question, text, self.judge))

    def counter(self) -> Counter:
        return Counter(self.budget, self.accounting)

    def attempt(
        self, question: Question, counter: Counter, generation: Generation, *, kind: str = "attempt",
        check: bool = True, counted: bool | None = None, counted_strict: bool = True, reason: str | None = None,
        loss: float | None = None, extra: dict[str, Any] | None = None, verdict: Any = NOT_JUDGED,
    ) -> Attempt:
        """Check (unless ``check`` is False), record and count one generation.
        ``counted`` None: counted under the paper's policy (the baselines count all).
        ``verdict``: already judged (FTTT needs it before its training step, whose loss the
        record carries; judging code twice would run it twice)."""
        if verdict is NOT_JUDGED:
            verdict = self.verdict(question, generation.text) if check else None
        attempt = Attempt(
            question_id=question.id, index=counter.generations, kind=kind,  # type: ignore[arg-type]
            counted=True if counted is None else counted, counted_strict=counted_strict, reason=reason,
            verdict=verdict, checked=check, answer=self.task.extract(generation.text) if check else None,
            text=generation.text, new_tokens=generation.new_tokens, finished=generation.finished,
            seconds=round(generation.seconds, 3), loss=loss, extra=extra or {},
        )
        counter.add(attempt)
        self.record(attempt)
        return attempt

    def close(self) -> None:
        self.loop.close()


def greedy(ctx: Context, question: Question) -> QuestionResult:
    """One greedy answer (2.1): the hard-question filter, and the budget-1 baseline."""
    start, counter = time.perf_counter(), ctx.counter()
    generation = ctx.policy.generate(ctx.prompt_ids(question), greedy=True)
    attempt = ctx.attempt(question, counter, generation)
    return counter.result(question, paper_num_trials=1, final_verdict=attempt.verdict, seconds=time.perf_counter() - start)


def revision(ctx: Context, question: Question) -> QuestionResult:
    """Sequential revision (2.2): the whole conversation so far is the context; after a
    failed turn a user turn says the answer is incorrect. The KV cache carries over turns,
    so each turn encodes only its feedback (at budget 32 the conversation reaches ~65k
    tokens; re-encoding it every turn would cost a 32k-token prefill per turn on average)."""
    start, counter = time.perf_counter(), ctx.counter()
    tokenizer, header = ctx.policy.tokenizer, ctx.config.ttt.feedback_assistant_header == "always"
    sequence = ctx.prompt_ids(question)
    followup = chat.followup_ids(tokenizer, question.user_message, RETRY, assistant_header=header)
    verdict: bool | None = None
    cache = None  # one cache over the growing conversation (the original's SinkCache, L41-43, L66)
    while not counter.exhausted:
        generation = ctx.policy.generate(sequence, greedy=ctx.greedy, keep_cache=True, past_key_values=cache)
        cache, generation.cache = generation.cache, None
        verdict = ctx.attempt(question, counter, generation).verdict
        if verdict:
            break
        sequence = [*sequence, *generation.ids, *chat.continuation_after(generation.ids, followup)]
    return counter.result(question, paper_num_trials=counter.success_at or counter.paper,
                          final_verdict=verdict, seconds=time.perf_counter() - start)


def beam_search(ctx: Context, question: Question) -> QuestionResult:
    """One beam search of ``beam_width`` (default: the budget) beams, every beam checked
    in rank order (2.3); the width halves on GPU out-of-memory and is recorded."""
    start, counter = time.perf_counter(), ctx.counter()
    width = ctx.config.methods.beam_width or ctx.budget
    beams, used = ctx.policy.beams(ctx.prompt_ids(question), width)
    first: int | None = None
    verdict: bool | None = None
    for i, beam in enumerate(beams):
        verdict = ctx.attempt(question, counter, beam, kind="beam", extra={"beam_width": used}).verdict
        if verdict:
            first = i
            break
    # The original reports the 0-based index of the first passing beam, else the last index.
    paper_num_trials = first if first is not None else len(beams) - 1
    return counter.result(question, paper_num_trials=paper_num_trials, final_verdict=verdict,
                          seconds=time.perf_counter() - start, extra={"beam_width": used, "requested_width": width})


def best_of_n(ctx: Context, question: Question) -> QuestionResult:
    """Up to ``budget`` i.i.d. samples, stopping at the first that passes (2.4)."""
    start, counter = time.perf_counter(), ctx.counter()
    prompt = ctx.prompt_ids(question)
    verdict: bool | None = None
    while not counter.exhausted and not verdict:
        batch = min(ctx.config.methods.sample_batch, ctx.budget - counter.used)
        for generation in ctx.policy.samples(prompt, batch, skip_special_tokens=True):
            if verdict:  # drawn in the same batch as the success: never checked, never counted
                ctx.attempt(question, counter, generation, check=False, counted=False, counted_strict=False,
                            reason="sampled in the batch of the success")
                continue
            verdict = ctx.attempt(question, counter, generation).verdict
    return counter.result(question, paper_num_trials=counter.success_at or counter.paper, final_verdict=verdict,
                          seconds=time.perf_counter() - start)


def self_refine(ctx: Context, question: Question) -> QuestionResult:
    """An unchecked draft, then refinements of the previous response under a fixed
    critique turn (2.5); the context holds only the last response."""
    start, counter = time.perf_counter(), ctx.counter()
    tokenizer, header = ctx.policy.tokenizer, ctx.config.ttt.feedback_assistant_header == "always"
    prompt = ctx.prompt_ids(question)
    followup = chat.followup_ids(tokenizer, question.user_message, CRITIQUE, assistant_header=header)
    previous = ctx.policy.generate(prompt)
    ctx.attempt(question, counter, previous, kind="draft", check=False, counted=False, reason="draft is not checked")
    verdict: bool | None = None
    while not counter.exhausted:
        context = [*prompt, *previous.ids, *chat.continuation_after(previous.ids, followup)]
        previous = ctx.policy.generate(context)
        verdict = ctx.attempt(question, counter, previous).verdict
        if verdict:
            break
    return counter.result(question, paper_num_trials=counter.paper, final_verdict=verdict,
                          seconds=time.perf_counter() - start)


def self_consistency(ctx: Context, question: Question) -> QuestionResult:
    """``budget`` samples, no early stop; the majority answer (earlier answer on ties; the
    runner-up when the top "answer" is None) is judged once on the last completion that
    gave it (2.6). The report's curve votes over each prefix of the samples."""
    start, counter = time.perf_counter(), ctx.counter()
    prompt = ctx.prompt_ids(question)
    samples: list[tuple[str | None, Generation]] = []
    while len(samples) < ctx.budget:
        batch = min(ctx.config.methods.sample_batch, ctx.budget - len(samples))
        for generation in ctx.policy.samples(prompt, batch, skip_special_tokens=True):
            samples.append((vote_key(ctx, generation.text), generation))
    judged: dict[str | None, bool | None] = {}

    def judge(prefix: int) -> bool | None:
        answer = majority([key for key, _ in samples[:prefix]])
        if answer not in judged:
            last = next(g for key, g in reversed(samples[:prefix]) if key == answer)
            judged[answer] = ctx.verdict(question, last.text)
        return judged[answer]

    final = judge(len(samples))
    winner = majority([key for key, _ in samples])
    first_seen = next(i for i, (key, _) in enumerate(samples) if key == winner) + 1
    for key, generation in samples:
        ctx.attempt(question, counter, generation, check=False, extra={"vote": key})
    curve = [bool(judge(b)) for b in range(1, len(samples) + 1)]
    return counter.result(question, paper_num_trials=first_seen, final_verdict=final, curve=curve,
                          seconds=time.perf_counter() - start, extra={"voted": winner, "votes": Tally(k for k, _ in samples)[winner]})


def vote_key(ctx: Context, text: str) -> str | None:
    """The answer a sample votes for: the raw extracted string (the paper) or, with
    ``methods.self_consistency_votes: normalized``, the task's normalised form."""
    answer = ctx.task.extract(text)
    if answer is not None and ctx.config.methods.self_consistency_votes == "normalized":
        normalize = getattr(ctx.task, "normalize", None)
        answer = normalize(answer) if normalize else answer
    return answer


def majority(keys: list[str | None]) -> str | None:
    """``Counter.most_common(2)``: ties keep first appearance; a None winner yields to the runner-up."""
    top = Tally(keys).most_common(2)
    if top[0][0] is None and len(top) > 1:
        return top[1][0]
    return top[0][0]


BASELINES: dict[str, Callable[[Context, Question], QuestionResult]] = {
    "greedy": greedy,
    "revision": revision,
    "beam_search": beam_search,
    "best_of_n": best_of_n,
    "self_refine": self_refine,
    "self_consistency": self_consistency,
}


def method_function(name: str) -> Callable[[Context, Question], QuestionResult]:
    if name in BASELINES:
        return BASELINES[name]
    from fttt import ttt  # torch/PEFT training only where it is used

    return {"fttt": ttt.run_fttt, "fttt_plus": ttt.run_fttt_plus}[name]
