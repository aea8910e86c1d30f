"""Parsing of long model output off the event loop.

Why: every run of a stage shares one event loop, so a synchronous step on it stalls
every other run (and the executor's connections). Code extraction is linear, but one
``ast.parse`` of 200,000 characters still holds the interpreter for about 0.2 s, and
the GIL means a thread would not help. Replies longer than ``INLINE_CHARS`` are
therefore cleaned in a separate process (``_parse_worker.py``, started on first use
with ``python -I``: nothing of this process — model threads, sockets, its main module —
is inherited, and it ends when its input pipe closes, so it never outlives the stage).
Short replies, the usual case, are cleaned inline, where they take a few milliseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

from scoreflow.codeutil import sanitize
from scoreflow.runclock import queued

INLINE_CHARS = 20_000  # at most a few ms of parsing inline
_WORKER = Path(__file__).with_name("_parse_worker.py")


class _ParseProcess:
    """One worker process; a reader thread resolves the futures of its replies."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        code = f"import sys; sys.path.insert(0, {root!r}); from scoreflow._parse_worker import main; sys.exit(main())"
        self.process = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, close_fds=True)
        self.pending: dict[int, concurrent.futures.Future[str]] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="parse-worker-reader", daemon=True)
        self.reader.start()

    def submit(self, text: str, entry_point: str) -> concurrent.futures.Future[str]:
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        with self.lock:
            number = next(self.ids)
            self.pending[number] = future
            line = json.dumps({"id": number, "text": text, "entry_point": entry_point}) + "\n"
            try:
                self.process.stdin.write(line)  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError, ValueError):
                self.pending.pop(number, None)
                future.set_exception(BrokenPipeError("the parsing process has exited"))
        return future

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            reply = json.loads(line)
            with self.lock:
                future = self.pending.pop(reply["id"], None)
            if future is None or future.done():  # its caller gave up (its run hit its limit)
                continue
            if "error" in reply:
                future.set_exception(RuntimeError(f"code extraction failed: {reply['error']}"))
            else:
                future.set_result(reply["result"])
        with self.lock:
            pending, self.pending = list(self.pending.values()), {}
        for future in pending:
            future.set_exception(BrokenPipeError("the parsing process has exited"))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_lock = threading.Lock()
_process: _ParseProcess | None = None


def _worker() -> _ParseProcess:
    global _process
    with _lock:
        if _process is None or not _process.alive:
            _process = _ParseProcess()
        return _process


def shutdown() -> None:
    """Stop the parsing process (a later call starts a new one)."""
    global _process
    with _lock:
        process, _process = _process, None
    if process is not None:
        process.close()


async def sanitize_async(text: str, entry_point: str) -> str:
    """``codeutil.sanitize`` without blocking the event loop on long replies."""
    if len(text) <= INLINE_CHARS:
        return sanitize(text, entry_point)
    with queued():  # our parsing, not the workflow's work
        try:
            return await asyncio.wrap_future(_worker().submit(text, entry_point))
        except BrokenPipeError:  # the process died (killed, out of memory): once more on a fresh one
            return await asyncio.wrap_future(_worker().submit(text, entry_point))
