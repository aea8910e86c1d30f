"""Parsing of long model output off the event loop.

Why: every run of a stage shares one event loop, so a synchronous step on it stalls
every other run (and the executor's connections). Code extraction is linear, but one
``ast.parse`` of 200,000 characters still holds the interpreter for about 0.2 s, and
the GIL means a thread would not help. Replies longer than ``INLINE_CHARS`` are
therefore cleaned in a separate process (one, started on first use with ``spawn``, so
nothing of this process — model threads, sockets — is inherited); short ones, the
usual case, are cleaned inline, where they take a few milliseconds.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import multiprocessing
import threading

from scoreflow.codeutil import sanitize
from scoreflow.runclock import queued

INLINE_CHARS = 20_000  # at most a few ms of parsing inline

_lock = threading.Lock()
_pool: concurrent.futures.ProcessPoolExecutor | None = None


def _executor() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(shutdown)
        return _pool


def shutdown() -> None:
    """Stop the parsing process (a later call starts a new one)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def sanitize_async(text: str, entry_point: str) -> str:
    """``codeutil.sanitize`` without blocking the event loop on long replies."""
    if len(text) <= INLINE_CHARS:
        return sanitize(text, entry_point)
    loop = asyncio.get_running_loop()
    with queued():  # our parsing, not the workflow's work
        try:
            return await loop.run_in_executor(_executor(), sanitize, text, entry_point)
        except concurrent.futures.BrokenExecutor:
            shutdown()  # the process died (killed, out of memory): start afresh once
            return await loop.run_in_executor(_executor(), sanitize, text, entry_point)
