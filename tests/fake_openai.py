"""A real HTTP server speaking the OpenAI chat-completions API on 127.0.0.1.

The project's only test double for the executor LLM: clients talk to it over real
sockets, so retries, timeouts, connection resets and pooling are exercised exactly as
against a remote endpoint. It runs an asyncio server with a minimal HTTP/1.1
keep-alive parser in a background thread (its own event loop), so delays never block
other requests and hundreds of concurrent calls cost little CPU.

Replies come, in order of precedence, from the ``script`` queue, from a seeded random
``Fault`` (``fault_rate``), or from the ``responder`` (default: "ok").

Run as a program (``python tests/fake_openai.py --delay 0.1``) it prints its URL on
stdout and serves until stdin closes; the benchmark uses this to keep the server's CPU
out of the client's measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

__all__ = ["Fault", "FakeOpenAIServer", "Reply"]


@dataclass
class Reply:
    """A scripted normal answer."""

    content: str
    prompt_tokens: int | None = None  # None: computed from the request (message text // 4 + 1)
    completion_tokens: int | None = None  # None: len(content) // 4 + 1
    include_usage: bool = True
    delay_s: float = 0.0


@dataclass
class Fault:
    """A scripted failure."""

    kind: Literal["status", "slow", "malformed", "reset", "empty"]
    status: int = 500
    retry_after: str | None = None  # Retry-After header value
    delay_s: float = 0.0  # "slow": sleep this long, then answer normally
    message: str | None = None  # "status": the error message in the body (default: a generic one)


Responder = Callable[[dict], "Reply | Fault | str"]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_MAX_HEADER = 1 << 16


def _default_responder(_body: dict) -> Reply:
    return Reply("ok")


def _message_chars(body: dict) -> int:
    """Characters of all message text (non-string content counted as its JSON)."""
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else message
        total += len(content) if isinstance(content, str) else len(json.dumps(content))
    return total


class _BadRequest(Exception):
    """The bytes on the wire are not an HTTP request this server understands."""


class FakeOpenAIServer:
    """OpenAI-compatible ``POST /v1/chat/completions`` on an ephemeral port."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        delay_s: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[Fault] = (),
        seed: int = 0,
        port: int = 0,
    ) -> None:
        if fault_rate > 0 and not fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one Fault in fault_kinds")
        self.responder: Responder = responder or _default_responder
        self.delay_s = delay_s
        self.fault_rate = fault_rate
        self.fault_kinds = list(fault_kinds)
        self.url = ""
        self.port = port  # 0: an ephemeral port (bind the same port again to "restart" a server)
        self.requests: list[dict] = []  # every request body, in arrival order
        self.request_headers: list[dict[str, str]] = []  # their headers (lower-case names)
        self.in_flight = 0  # requests received and not yet answered
        self.answered = 0  # requests answered with a completion (what a paid API would charge)
        self.not_found: list[str] = []  # paths of requests to a route this server does not serve
        self.max_in_flight = 0  # the most ever in flight at once
        self._rng = random.Random(seed)
        self._script: collections.deque[Reply | Fault | str] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._count = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeOpenAIServer:
        """Bind and serve in a background thread; returns once the port is open."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"fake OpenAI server failed to start: {self._error}")
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; join the thread."""
        if self._thread is None or self._loop is None:
            return
        loop, stopped = self._loop, self._stopped
        if stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(None))
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, items: Sequence[Reply | Fault | str]) -> None:
        """Queue answers consumed in order, before the responder is asked."""
        with self._lock:
            self._script.extend(items)

    def reset_stats(self) -> None:
        """Forget recorded requests and the in-flight peak."""
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()
            self.max_in_flight = self.in_flight

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.get_running_loop().create_future()
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=1024,
                                            limit=_MAX_HEADER, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._ready.set()
        try:
            await self._stopped
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one keep-alive connection until the peer closes it."""
        self._writers.add(writer)
        try:
            while True:
                try:
                    request = await self._read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                except asyncio.CancelledError:  # server shutting down
                    return
                except _BadRequest as exc:
                    await self._send(writer, 400, _error_body(str(exc), "invalid_request_error"), close=True)
                    return
                if request is None:
                    return
                try:
                    keep_open = await self._handle(writer, *request)
                except asyncio.CancelledError:  # server shutting down
                    return
                if not keep_open:
                    return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.transport.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
        """(method, path, headers, body), or None on a clean end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _BadRequest(f"bad request line {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(headers.get("content-length") or 0))
        return parts[0], parts[1], headers, body

    async def _handle(self, writer: asyncio.StreamWriter, method: str, path: str,
                      headers: dict[str, str], raw: bytes) -> bool:
        """Answer one request; False when the connection must be dropped."""
        close = headers.get("connection", "").lower() == "close"
        if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
            # as vLLM (FastAPI) answers a route it does not serve
            with self._lock:
                self.not_found.append(path)
            await self._send(writer, 404, json.dumps({"detail": "Not Found"}).encode(), close=close)
            return not close
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            await self._send(writer, 400, _error_body("request body is not a JSON object", "invalid_request_error"),
                             close=close)
            return not close
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(writer, body, self._choose(body), close=close)
        except ConnectionError:
            return False
        finally:
            with self._lock:
                self.in_flight -= 1

    def _choose(self, body: dict) -> Reply | Fault:
        """The scripted item, else a random fault, else the responder's answer."""
        with self._lock:
            item = self._script.popleft() if self._script else None
            if item is None and self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                item = self._rng.choice(self.fault_kinds)
        if item is None:
            item = self.responder(body)
        return Reply(item) if isinstance(item, str) else item

    async def _answer(self, writer: asyncio.StreamWriter, body: dict, item: Reply | Fault, *, close: bool) -> bool:
        if isinstance(item, Reply):
            await _sleep(self.delay_s + item.delay_s)
            await self._send(writer, 200, self._completion(body, item), close=close)
            return not close
        await _sleep(self.delay_s)
        if item.kind == "status":
            extra = {"Retry-After": item.retry_after} if item.retry_after is not None else {}
            message = item.message if item.message is not None else f"scripted failure (HTTP {item.status})"
            await self._send(writer, item.status, _error_body(message, "server_error"), close=close, extra=extra)
        elif item.kind == "slow":
            await _sleep(item.delay_s)
            normal = self.responder(body)
            normal = Reply(normal) if isinstance(normal, str) else normal
            if not isinstance(normal, Reply):
                normal = Reply("ok")
            await self._send(writer, 200, self._completion(body, normal), close=close)
        elif item.kind == "malformed":
            await self._send(writer, 200, b'{"id": "chatcmpl-fake", "choices": [{"message": ', close=close)
        elif item.kind == "empty":
            await self._send(writer, 200, self._completion(body, None), close=close)
        elif item.kind == "reset":
            _reset(writer)
            return False
        else:
            raise ValueError(f"unknown fault kind {item.kind!r}")
        return not close

    def _completion(self, body: dict, reply: Reply | None) -> bytes:
        """A chat.completion object; ``reply=None`` gives one with no choices."""
        with self._lock:
            self._count += 1
            number = self._count
            self.answered += reply is not None
        out: dict[str, Any] = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "")),
            "choices": [],
            "system_fingerprint": None,
        }
        if reply is not None:
            out["choices"] = [{"index": 0, "finish_reason": "stop", "logprobs": None,
                               "message": {"role": "assistant", "content": reply.content}}]
            if reply.include_usage:
                prompt = reply.prompt_tokens if reply.prompt_tokens is not None else _message_chars(body) // 4 + 1
                completion = (reply.completion_tokens if reply.completion_tokens is not None
                              else len(reply.content) // 4 + 1)
                out["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion}
        return json.dumps(out).encode()

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes, *, close: bool,
                    extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        head += [f"{name}: {value}" for name, value in (extra or {}).items()]
        if close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        if writer.transport.get_write_buffer_size() > 1 << 16:
            await writer.drain()
        if close:
            writer.transport.close()


def _error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), no response."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stdin closes (used by perf/executor_bench.py as a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    args = parser.parse_args(argv)
    with FakeOpenAIServer(delay_s=args.delay) as server:
        print(server.url, flush=True)
        sys.stdin.read()
        served = len(server.requests)
    print(json.dumps({"requests": served, "cpu_s": time.process_time()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
