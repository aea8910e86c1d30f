"""The chat interface every operator, extraction and judge call goes through.

A backend implements ``_complete``; this base class adds what all backends share:
the system message every call starts with (MetaGPT's "You are a helpful
assistant." by default, ``executor.system_message``), the reply cache for
temperature-0 calls (keyed by backend, model, messages — the system message
included —, sampling parameters and a caller-chosen ``cache_salt`` such as the
scoring run index), token and cost accounting, and per-call latency.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from scoreflow.errors import ScoreFlowError
from scoreflow.runclock import current_clock

if TYPE_CHECKING:
    from scoreflow.config import ModelPrice
    from scoreflow.executor.cache import ReplyCache

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


class ExecutorError(ScoreFlowError):
    """A call that failed for good (after its retries): names the call and the status."""


class ExecutorUnavailable(ExecutorError):
    """The executor itself failed: unreachable, refusing the credentials or the route,
    erroring or timing out after the client's retries, stalled, or a local model that does
    not load. Says nothing about the workflow: such a run is left unscored, and a stage
    that sees a few of them in a row stops (resumable) instead of scoring them 0."""


class RequestRefused(ExecutorError):
    """The server rejected this one request (HTTP 400/413/422: too long, malformed, ...).

    The same workflow would send the same request again, so it is never re-sent; the
    attempt fails like any error of the workflow's own making."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatReply:
    text: str
    usage: Usage
    latency_s: float
    cached: bool = False
    truncated_chars: int = 0  # characters cut from the request to fit executor.max_request_chars


class Completion(NamedTuple):
    """What a backend returns for one request."""

    text: str
    usage: Usage
    truncated_tokens: int = 0  # prompt tokens a local model cut to fit its context


@dataclass(frozen=True)
class SamplingParams:
    """What, besides the messages, decides a reply (and so the cache key)."""

    temperature: float
    max_tokens: int | None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass
class UsageMeter:
    """Running totals of one session of a stage: replies, cache hits, tokens and cost.

    Fresh replies (sent and paid now) and cached ones (paid in an earlier session or
    run) are counted apart, so summing sessions never counts a reply twice. A model
    without a price is listed in ``unpriced`` (its cost is unknown, not zero) unless the
    executor is ``free`` (a model in this process).
    """

    prices: dict[str, ModelPrice] = field(default_factory=dict)
    free: bool = False
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    cost_usd: float = 0.0
    failures: int = 0
    truncated_requests: int = 0
    unpriced: set[str] = field(default_factory=set)

    def record(self, model: str, usage: Usage, *, cached: bool) -> None:
        """Count a reply; a cached reply costs nothing now and spends no new tokens."""
        self.calls += 1
        if cached:
            self.cache_hits += 1
            self.cached_prompt_tokens += usage.prompt_tokens
            self.cached_completion_tokens += usage.completion_tokens
            return
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost_usd += self.cost(model, usage) or 0.0
        if not self.is_priced(model):
            self.unpriced.add(model)

    def is_priced(self, model: str) -> bool:
        return self.free or model in self.prices

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD of ``usage``; None when the model has no price (and is not free)."""
        if self.free:
            return 0.0
        price = self.prices.get(model)
        if price is None:
            return None
        return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6

    @property
    def cache_misses(self) -> int:
        return self.calls - self.cache_hits

    def snapshot(self) -> dict[str, Any]:
        """The numbers a stage manifest records for this session."""
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": self.cached_prompt_tokens + self.cached_completion_tokens,
            "cost_usd": None if self.unpriced else round(self.cost_usd, 6),
            "unpriced_models": sorted(self.unpriced),
            "truncated_requests": self.truncated_requests,
        }

    def summary(self) -> str:
        cost = f"${self.cost_usd:.4f}" if not self.unpriced else "cost unpriced"
        return (
            f"{self.calls} executor calls ({self.cache_hits} cached), "
            f"{self.prompt_tokens + self.completion_tokens} tokens, {cost}"
        )


@dataclass
class RequestTally:
    """Executor requests of one unit of work (a scoring run, a trial), cached or not.

    Records carry it, so a stage's usage can be summed from its records: the same for a
    resumed stage (cached replies keep their usage) as for an uninterrupted one."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_requests: int = 0

    def add(self, usage: Usage, truncated: bool) -> None:
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.truncated_requests += int(truncated)

    def as_record(self) -> dict[str, int]:
        return dict(self.__dict__)


_TALLY: ContextVar[RequestTally | None] = ContextVar("scoreflow_request_tally", default=None)


@contextlib.contextmanager
def tallied() -> Iterator[RequestTally]:
    """Count every reply ``chat`` returns within the block (and tasks started in it)."""
    tally = RequestTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def with_system_message(messages: list[Message], system: str | None) -> list[Message]:
    """``messages`` led by the system message, unless there is none or the caller set its own
    (as MetaGPT's ``aask``: its default system message, replaced by explicit ones)."""
    if system is None or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def cap_request(messages: list[Message], max_chars: int | None) -> tuple[list[Message], int]:
    """Messages whose text fits ``max_chars``: the middle of the longest contents is cut
    (the start states the task, the end usually says how to answer). System messages are
    never cut: they count towards the size, the other messages make room. Returns the
    messages and how many characters were cut (0: unchanged)."""
    total = _chars(messages)
    if max_chars is None or total <= max_chars:
        return messages, 0
    capped = [dict(m) for m in messages]
    cuttable = [m for m in capped if m.get("role") != "system"]
    for message in sorted(cuttable, key=lambda m: len(m.get("content") or ""), reverse=True):
        excess = _chars(capped) - max_chars
        if excess <= 0:
            break
        text = message.get("content") or ""
        if len(text) <= len(TRUNCATION_MARK.format(n=len(text))):
            continue  # the mark would be longer than what it replaces
        keep = max(0, len(text) - excess - len(TRUNCATION_MARK.format(n=len(text))))
        head = keep // 2
        message["content"] = text[:head] + TRUNCATION_MARK.format(n=len(text) - keep) + text[len(text) - (keep - head):]
    return capped, total - _chars(capped)


def _chars(messages: list[Message]) -> int:
    return sum(len(m.get("content") or "") for m in messages)


TRUNCATION_MARK = "\n[... {n} characters cut to fit the executor's request limit ...]\n"


def _tally(usage: Usage, cut: int) -> None:
    tally = _TALLY.get()
    if tally is not None:
        tally.add(usage, bool(cut))


class ChatClient(ABC):
    """An executor LLM behind one ``chat`` coroutine."""

    backend: str = ""

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        cache: ReplyCache | None = None,
        meter: UsageMeter | None = None,
        max_request_chars: int | None = None,
        system_message: str | None = None,
    ) -> None:
        self.model = model
        self.system_message = system_message  # what every call starts with; None: nothing
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache = cache
        self.meter = meter or UsageMeter()
        self.max_request_chars = max_request_chars

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache_salt: str = "",
    ) -> ChatReply:
        """One reply; temperature-0 replies come from (and go to) the cache.

        The client's system message leads the messages (unless they bring their own). A
        request longer than ``max_request_chars`` is cut to fit before anything else (the
        cut request is what is cached and sent); the reply says how much was cut."""
        messages, cut = cap_request(with_system_message(messages, self.system_message), self.max_request_chars)
        params = SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
        )
        if cut:
            self.meter.truncated_requests += 1
        clock = current_clock()
        cacheable = self.cache is not None and params.temperature == 0.0
        key = self.cache.key(self.backend, self.model, messages, params, cache_salt) if cacheable else ""
        if cacheable:
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.record(self.model, hit.usage, cached=True)
                _tally(hit.usage, cut)
                if clock is not None:  # a replayed run spends the time the call took, as before
                    clock.charge(hit.work_s)
                return ChatReply(hit.text, hit.usage, 0.0, cached=True, truncated_chars=cut)
        start = time.perf_counter()
        worked = clock.used_s() if clock is not None else 0.0
        try:
            done = await self._complete(messages, params)
        except ExecutorError:
            self.meter.failures += 1
            raise
        if done.truncated_tokens:
            self.meter.truncated_requests += int(not cut)
        reply = ChatReply(done.text, done.usage, time.perf_counter() - start, truncated_chars=cut)
        if cacheable:
            worked = clock.used_s() - worked if clock is not None else 0.0
            self.cache.put(key, reply.text, reply.usage, work_s=worked)
        self.meter.record(self.model, done.usage, cached=False)
        _tally(done.usage, cut)
        return reply

    async def ask(self, prompt: str, **kwargs: Any) -> str:
        """A single user message; the reply's text."""
        return (await self.chat([{"role": "user", "content": prompt}], **kwargs)).text

    @abstractmethod
    async def _complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        """Ask the backend once (with its own retries); raise ExecutorError for good failures."""

    async def aclose(self) -> None:
        """Release connections, threads or models."""
