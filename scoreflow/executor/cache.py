"""SQLite reply cache for temperature-0 executor calls.

Why: re-running a stage, or resuming one after a crash, must not pay for the same
deterministic calls twice. One SQLite file per epoch workspace holds the replies,
keyed by a hash of everything that decides a reply (backend, model, messages,
sampling parameters and a caller-chosen salt such as the scoring run index).

Durability and sharing: WAL journal with ``synchronous=NORMAL`` and one autocommitted
transaction per ``put``, so a SIGKILL loses nothing already put (power loss may lose
the last few); a busy timeout lets two processes share the file. Calls are short
(one indexed row), so they run directly on the asyncio thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreflow.executor.client import Message, SamplingParams, Usage

__all__ = ["CachedReply", "ReplyCache"]

_KEY_VERSION = 1  # bump when the key's canonical form changes (old entries are then never hit)
_BUSY_TIMEOUT_S = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    work_s REAL NOT NULL DEFAULT 0
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class CachedReply:
    text: str
    usage: Usage
    work_s: float = 0.0  # what the call counted on its run's clock (charged again when replayed)


class ReplyCache:
    """Replies by key in one SQLite file; a context manager that closes the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, shared under a lock so a worker thread may use it too.
        self._conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(replies)")}
        if "work_s" not in columns:  # a cache written before the column existed
            self._conn.execute("ALTER TABLE replies ADD COLUMN work_s REAL NOT NULL DEFAULT 0")

    @staticmethod
    def key(backend: str, model: str, messages: list[Message], params: SamplingParams, salt: str) -> str:
        """sha256 of a canonical JSON of everything that decides the reply."""
        canonical = {
            "v": _KEY_VERSION,
            "backend": backend,
            "model": model,
            "messages": messages,
            "params": {
                "temperature": float(params.temperature),
                "max_tokens": params.max_tokens,
                "top_p": None if params.top_p is None else float(params.top_p),
                "stop": list(params.stop),
            },
            "salt": salt,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT text, prompt_tokens, completion_tokens, work_s FROM replies WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return CachedReply(row[0], Usage(row[1], row[2]), row[3])

    def put(self, key: str, text: str, usage: Usage, work_s: float = 0.0) -> None:
        """Store (or overwrite) one reply; committed when this returns."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO replies (key, text, prompt_tokens, completion_tokens, created, work_s)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, text, usage.prompt_tokens, usage.completion_tokens, time.time(), work_s),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReplyCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReplyCache({str(self.path)!r})"
