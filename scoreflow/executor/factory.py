"""Building the configured executor client (backends are imported only when chosen)."""

from __future__ import annotations

from pathlib import Path

from scoreflow.config import Config
from scoreflow.executor.cache import ReplyCache
from scoreflow.executor.client import ChatClient, UsageMeter


def make_client(config: Config, *, cache_path: str | Path | None = None, meter: UsageMeter | None = None) -> ChatClient:
    """The executor of ``config``; its reply cache lives at ``cache_path`` (None: no cache)."""
    executor = config.executor
    cache = ReplyCache(cache_path) if executor.cache and cache_path is not None else None
    meter = meter or UsageMeter(prices=dict(executor.prices), free=executor.backend == "local")
    if executor.backend == "local":
        from scoreflow.executor.local_backend import LocalChatClient

        client: ChatClient = LocalChatClient.from_config(executor, cache_dir=config.cache_dir, cache=cache, meter=meter)
    else:
        from scoreflow.executor.openai_backend import OpenAIChatClient

        client = OpenAIChatClient.from_config(executor, cache=cache, meter=meter)
    client.max_request_chars = executor.max_request_chars
    return client
