"""The chat interface every operator, extraction and judge call goes through.

A backend implements ``_complete``; this base class adds what all backends share:
the reply cache for temperature-0 calls (keyed by backend, model, messages,
sampling parameters and a caller-chosen ``cache_salt`` such as the scoring run
index), token and cost accounting, and per-call latency.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scoreflow.errors import ScoreFlowError

if TYPE_CHECKING:
    from scoreflow.config import ModelPrice
    from scoreflow.executor.cache import ReplyCache

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


class ExecutorError(ScoreFlowError):
    """A call that failed for good (after its retries): names the call and the status."""


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


@dataclass(frozen=True)
class SamplingParams:
    """What, besides the messages, decides a reply (and so the cache key)."""

    temperature: float
    max_tokens: int | None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass
class UsageMeter:
    """Running totals of one stage: calls, cache hits, tokens and cost."""

    prices: dict[str, ModelPrice] = field(default_factory=dict)
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    failures: int = 0

    def record(self, model: str, usage: Usage, *, cached: bool) -> None:
        """Count a reply; a cached reply costs nothing and spends no new tokens."""
        self.calls += 1
        if cached:
            self.cache_hits += 1
            return
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost_usd += self.cost(model, usage)

    def cost(self, model: str, usage: Usage) -> float:
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6

    @property
    def cache_misses(self) -> int:
        return self.calls - self.cache_hits

    def snapshot(self) -> dict[str, Any]:
        """The numbers a stage manifest records."""
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }

    def summary(self) -> str:
        return (
            f"{self.calls} executor calls ({self.cache_hits} cached), "
            f"{self.prompt_tokens + self.completion_tokens} tokens, ${self.cost_usd:.4f}"
        )


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
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache = cache
        self.meter = meter or UsageMeter()

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache_salt: str = "",
    ) -> ChatReply:
        """One reply; temperature-0 replies come from (and go to) the cache."""
        params = SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
        )
        cacheable = self.cache is not None and params.temperature == 0.0
        key = self.cache.key(self.backend, self.model, messages, params, cache_salt) if cacheable else ""
        if cacheable:
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.record(self.model, hit.usage, cached=True)
                return ChatReply(hit.text, hit.usage, 0.0, cached=True)
        start = time.perf_counter()
        try:
            text, usage = await self._complete(messages, params)
        except ExecutorError:
            self.meter.failures += 1
            raise
        reply = ChatReply(text, usage, time.perf_counter() - start)
        if cacheable:
            self.cache.put(key, reply.text, reply.usage)
        self.meter.record(self.model, usage, cached=False)
        return reply

    async def ask(self, prompt: str, **kwargs: Any) -> str:
        """A single user message; the reply's text."""
        return (await self.chat([{"role": "user", "content": prompt}], **kwargs)).text

    @abstractmethod
    async def _complete(self, messages: list[Message], params: SamplingParams) -> tuple[str, Usage]:
        """Ask the backend once (with its own retries); raise ExecutorError for good failures."""

    async def aclose(self) -> None:
        """Release connections, threads or models."""
