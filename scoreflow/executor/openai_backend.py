"""The executor LLM behind any OpenAI-compatible chat-completions endpoint.

OpenAI, DeepSeek, or a local vLLM / llama.cpp server, through ``openai.AsyncOpenAI``.
Why the SDK's own retries are off: the evaluation stage must control exactly how often
a call is tried, how long it waits (honouring ``Retry-After``) and what a final failure
says, so this module retries itself: 408, 409, 429, 5xx, timeouts, connection errors and
malformed or empty bodies are retried with capped exponential backoff and full jitter;
other 4xx fail at once. Every failure ends in one ``ExecutorError`` line naming the call.

Requests go through the SDK's generic ``post`` (its auth, headers, base URL and error
types) with ``cast_to=httpx2.Response``, and the JSON is read here: that skips the
SDK's parameter transforms and pydantic models (about 1 ms CPU a call) and lets a
malformed body be retried instead of crashing the parser.

Transport: for https endpoints the stock httpx2 pool (sized to the concurrency). For
plain-http endpoints (local servers, where call rates are high) a lean HTTP/1.1
keep-alive transport on asyncio streams, because httpcore2 over anyio costs about 1 ms
CPU a call, which caps a single client at a few hundred calls/s.

Event loops: connections, the pool and the semaphore belong to one event loop; they are
created lazily for the running loop, so one client serves successive ``asyncio.run``
calls (await ``aclose()`` before each loop ends to close its connections promptly).

Token usage comes from the response; when the server omits it, tokens are estimated as
ceil(characters / 4) (no tokenizer is installed; the approximation is deterministic).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import hashlib
import ipaddress
import json
import math
import os
import random
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx2
import openai

from scoreflow.executor.client import (
    ChatClient,
    Completion,
    ExecutorError,
    ExecutorUnavailable,
    Message,
    RequestRefused,
    SamplingParams,
    Usage,
    UsageMeter,
)
from scoreflow.runclock import current_clock, queued

if TYPE_CHECKING:
    from scoreflow.config import ExecutorConfig
    from scoreflow.executor.cache import ReplyCache

__all__ = ["OpenAIChatClient", "estimate_tokens"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
LOCAL_DUMMY_KEY = "EMPTY"  # what vLLM / llama.cpp accept when started without a key
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_RETRY_STATUSES = {408, 409, 429}
_REFUSED_STATUSES = {400, 413, 422}  # about this request; other 4xx are about the setup
_KEEPALIVE_S = 4.0  # below the common 5 s server keep-alive (uvicorn), so idle reuse is safe
Transport = Literal["auto", "lean", "httpx"]
_KEY_PIECE = 10  # characters of the key that identify it
_KEYLIKE = re.compile(rf"[A-Za-z0-9_\-]{{{_KEY_PIECE},}}")


def estimate_tokens(text: str) -> int:
    """ceil(len / 4): a deterministic stand-in for a tokenizer when usage is missing."""
    return -(-len(text) // 4)


class _Secret:
    """Holds the API key so that no repr, log or traceback of the client shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    def redact(self, text: str) -> str:
        """The text without the key, or any long piece of it (servers echo keys in auth errors)."""
        if not self.value or self.value == LOCAL_DUMMY_KEY:
            return text
        text = text.replace(self.value, "***")
        return _KEYLIKE.sub(lambda m: "***" if self._shares_piece(m.group()) else m.group(), text)

    def _shares_piece(self, token: str) -> bool:
        width = _KEY_PIECE
        return any(token[i : i + width] in self.value for i in range(len(token) - width + 1))


class _Retry(Exception):
    """An attempt failed in a way worth another try."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Fatal(Exception):
    """An attempt failed in a way another try cannot fix (400, 401, 403, 404, 422...).

    ``refused``: the server rejected this request (400/413/422), not the client's setup."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


@dataclass
class _LoopState:
    """What belongs to one event loop: the shared limit and the HTTP client."""

    loop: asyncio.AbstractEventLoop
    semaphore: asyncio.Semaphore
    sdk: openai.AsyncOpenAI


class OpenAIChatClient(ChatClient):
    """Chat completions from an OpenAI-compatible server, with bounded retries."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int | None = None,
        concurrency: int = 50,
        request_timeout_s: float = 600.0,
        max_retries: int = 6,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        cache: ReplyCache | None = None,
        meter: UsageMeter | None = None,
        transport: Transport = "auto",
        system_message: str | None = None,
    ) -> None:
        super().__init__(
            model, temperature=temperature, max_tokens=max_tokens, cache=cache, meter=meter, system_message=system_message
        )
        if concurrency < 1 or max_retries < 0 or request_timeout_s <= 0:
            raise ExecutorError("executor: concurrency >= 1, max_retries >= 0 and request_timeout_s > 0 required")
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.transport = _choose_transport(self.base_url, transport)
        self._key = _Secret(_read_api_key(api_key_env, self.base_url))
        self._state: _LoopState | None = None
        self._rng = random.Random()
        self.endpoint = f"POST {self.base_url}/chat/completions"
        self.last_response_at = float("-inf")  # monotonic time of the last HTTP response of any status

    @classmethod
    def from_config(
        cls, config: ExecutorConfig, *, cache: ReplyCache | None = None, meter: UsageMeter | None = None
    ) -> OpenAIChatClient:
        """A client as the run's configuration describes it (prices feed a new meter)."""
        return cls(
            config.model,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            concurrency=config.concurrency,
            request_timeout_s=config.request_timeout_s,
            max_retries=config.max_retries,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            cache=cache if config.cache else None,
            meter=meter if meter is not None else UsageMeter(prices=dict(config.prices)),
            system_message=config.system_message,
        )

    def __repr__(self) -> str:
        return f"OpenAIChatClient(model={self.model!r}, base_url={self.base_url!r}, transport={self.transport!r})"

    # ------------------------------------------------------------ the call

    async def _complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        """Up to ``max_retries + 1`` attempts; the shared slot is held only while a request is out.

        Waiting for a slot and backing off are queueing, not the run's work (``runclock``)."""
        state = self._loop_state()
        body = _request_body(self.model, messages, params)
        reason, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with queued():
                    await asyncio.sleep(self._backoff(attempt - 1, retry_after))
            try:
                with queued():
                    await state.semaphore.acquire()
                try:
                    return await self._attempt(state.sdk, body, messages)
                finally:
                    state.semaphore.release()
            except _Retry as exc:
                reason, retry_after = exc.reason, exc.retry_after
            except _Fatal as exc:
                error = RequestRefused if exc.refused else ExecutorUnavailable
                raise error(self._failure(messages, exc.reason, attempt + 1)) from None
        raise ExecutorUnavailable(self._failure(messages, reason, self.max_retries + 1)) from None

    async def _attempt(self, sdk: openai.AsyncOpenAI, body: dict[str, Any], messages: list[Message]) -> Completion:
        """One request; raises _Retry or _Fatal, which say why."""
        clock = current_clock()
        out = clock.request_out(self.endpoint, lambda: self.last_response_at) if clock else contextlib.nullcontext()
        try:
            with out:
                async with asyncio.timeout(self.request_timeout_s):
                    response = await sdk.post("/chat/completions", body=body, cast_to=httpx2.Response)
        except openai.APIStatusError as exc:
            self.last_response_at = time.monotonic()
            raise _status_failure(exc, self.backoff_max_s, self._key) from None
        except (openai.APITimeoutError, TimeoutError):
            raise _Retry(f"timeout after {self.request_timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise _Retry(_connection_reason(exc)) from None
        self.last_response_at = time.monotonic()
        text, usage = _parse_reply(response.content, messages)
        return Completion(text, usage)

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        """The server's Retry-After (capped), else full-jitter capped exponential backoff."""
        if retry_after is not None:
            return min(self.backoff_max_s, retry_after)
        return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(retry, 60)))

    def _failure(self, messages: list[Message], reason: str, attempts: int) -> str:
        """One line: where (URL), which call (model, hash, start of the last user message),
        why (status and the server's own message), how often tried, and what to check."""
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        snippet = " ".join(str(last_user).split())
        snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8]
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        line = f"executor {self.endpoint}: call {self.model} #{digest} ({snippet!r}) failed: {reason} after {tries}"
        hint = _hint(reason, self.base_url, self.api_key_env)
        return self._key.redact(line + (f"; {hint}" if hint else ""))

    # ------------------------------------------------------------ per-loop resources

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop, asyncio.Semaphore(self.concurrency), self._new_sdk())
        return self._state

    def _new_sdk(self) -> openai.AsyncOpenAI:
        """The SDK client over one HTTP client whose pool never throttles ``concurrency``."""
        timeout = httpx2.Timeout(self.request_timeout_s)
        if self.transport == "lean":
            http = httpx2.AsyncClient(transport=_LeanTransport(), timeout=timeout, trust_env=False)
        else:
            limits = httpx2.Limits(
                max_connections=self.concurrency + 8,
                max_keepalive_connections=self.concurrency,
                keepalive_expiry=_KEEPALIVE_S,
            )
            http = httpx2.AsyncClient(limits=limits, timeout=timeout, follow_redirects=True)
        return openai.AsyncOpenAI(
            api_key=self._key.value, base_url=self.base_url, max_retries=0, timeout=timeout, http_client=http
        )

    async def aclose(self) -> None:
        """Close the running loop's connections (a later call opens new ones)."""
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.sdk.close()


# ---------------------------------------------------------------- helpers


def _read_api_key(variable: str, base_url: str) -> str:
    """The key from the named variable; a local server may go without one."""
    value = os.environ.get(variable, "")
    if value:
        return value
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if host in _LOCAL_HOSTS or _is_loopback(host):
        return LOCAL_DUMMY_KEY
    raise ExecutorError(
        f"executor: the environment variable {variable} (executor.api_key_env) is not set; "
        f"it must hold the API key for {base_url}"
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _choose_transport(base_url: str, transport: Transport) -> Literal["lean", "httpx"]:
    """Lean for plain http with no proxy in the way; httpx2's own pool otherwise."""
    if transport != "auto":
        if transport == "lean" and not base_url.startswith("http://"):
            raise ExecutorError(f"executor: the lean transport speaks plain http only, not {base_url}")
        return transport
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme != "http":
        return "httpx"
    proxies = urllib.request.getproxies()
    if ("http" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(parts.hostname or ""):
        return "httpx"
    return "lean"


def _request_body(model: str, messages: list[Message], params: SamplingParams) -> dict[str, Any]:
    """The chat.completions request: optional fields only when set; always one choice."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": params.temperature, "n": 1}
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def _parse_reply(raw: bytes, messages: list[Message]) -> tuple[str, Usage]:
    """Text and usage of a 200 body; a body without a usable reply is worth a retry."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise _Retry("malformed response (invalid JSON)") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise _Retry("empty response (no choices)")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise _Retry("malformed response (no message content)")
    return text, _usage(data.get("usage"), messages, text)


def _usage(reported: Any, messages: list[Message], text: str) -> Usage:
    """The server's counts; a count it omits is estimated (see ``estimate_tokens``)."""
    reported = reported if isinstance(reported, dict) else {}
    prompt = reported.get("prompt_tokens")
    completion = reported.get("completion_tokens")
    if not isinstance(prompt, int):
        prompt = estimate_tokens("".join(str(m.get("content") or "") for m in messages))
    if not isinstance(completion, int):
        completion = estimate_tokens(text)
    return Usage(prompt, completion)


def _status_failure(exc: openai.APIStatusError, backoff_max_s: float, key: _Secret) -> _Retry | _Fatal:
    status = exc.status_code
    detail = _server_message(exc)
    detail = f": {key.redact(detail)}" if detail else ""
    if status in _RETRY_STATUSES or status >= 500:
        return _Retry(f"HTTP {status}{detail}", _retry_after(exc.response.headers, backoff_max_s))
    return _Fatal(f"HTTP {status}{detail} (not retried)", refused=status in _REFUSED_STATUSES)


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words: OpenAI's error.message, FastAPI's detail, a message field, or the body text."""
    body = exc.body
    found: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        found = error.get("message") if isinstance(error, dict) else error
        found = found or body.get("detail") or body.get("message")
    if found is None:
        try:
            found = exc.response.text
        except Exception:  # a streamed or undecodable body: the status says enough
            found = ""
    if not isinstance(found, str):
        found = json.dumps(found)
    return " ".join(found.split())[:200]


def _hint(reason: str, base_url: str, api_key_env: str) -> str:
    """What to check for the failures a setup causes."""
    if reason.startswith("HTTP 404"):
        return f"check executor.base_url ({base_url}) and executor.model: OpenAI-compatible servers serve /v1/chat/completions"
    if reason.startswith(("HTTP 401", "HTTP 403")):
        return f"check the API key in ${api_key_env} (executor.api_key_env) and its access to the model"
    if "connection refused" in reason:
        return f"is the server running at {base_url}?"
    return ""


def _retry_after(headers: httpx2.Headers, cap: float) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, or Retry-After in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return min(cap, max(0.0, float(millis) / 1000.0))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return min(cap, max(0.0, seconds))


def _connection_reason(exc: openai.APIConnectionError) -> str:
    """A short cause: 'connection reset', 'connection refused', ..."""
    cause = exc.__cause__ or exc
    text = str(cause).lower()
    for needle, reason in (
        ("reset", "connection reset"),
        ("refused", "connection refused"),
        ("without sending", "connection closed without a response"),
        ("disconnected", "connection closed without a response"),
        ("closed", "connection closed without a response"),
    ):
        if needle in text:
            return reason
    return f"connection error ({type(cause).__name__}: {' '.join(str(cause).split())[:80]})"


# ---------------------------------------------------------------- lean HTTP/1.1 transport


class _NoResponse(Exception):
    """The peer closed or reset the connection before any byte of a response."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float) -> bool:
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and now - self.idle_since < _KEEPALIVE_S)

    def close(self) -> None:
        self.writer.transport.abort()


class _LeanTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive over asyncio streams, plain http only.

    One request per connection at a time; idle connections are reused LIFO and dropped
    after ``_KEEPALIVE_S``. A reused connection that the server had already closed is
    replaced once, transparently (nothing was answered on it). Content decoding
    (gzip) is left to httpx2.Response; chunked bodies are de-chunked here.
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], collections.deque[_Conn]] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx2.UnsupportedProtocol(f"lean transport: plain http only, not {url.scheme}", request=request)
        origin = (url.host, url.port or 80)
        payload = _serialize(request, await request.aread())
        timeouts = request.extensions.get("timeout") or {}
        conn = self._take(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, origin, request, payload, timeouts, reused=True)
            except _NoResponse:
                pass  # a stale keep-alive connection: try once on a fresh one
        conn = await _connect(origin, timeouts.get("connect"), request)
        try:
            return await self._exchange(conn, origin, request, payload, timeouts, reused=False)
        except _NoResponse as exc:
            raise httpx2.RemoteProtocolError(str(exc), request=request) from None

    async def _exchange(self, conn: _Conn, origin: tuple[str, int], request: httpx2.Request, payload: bytes,
                        timeouts: dict[str, float | None], *, reused: bool) -> httpx2.Response:
        keep = False
        try:
            conn.writer.write(payload)
            async with asyncio.timeout(timeouts.get("read")):
                status, headers, body, keep = await _read_response(conn.reader, request.method)
        except TimeoutError:
            raise httpx2.ReadTimeout("timed out waiting for the response", request=request) from None
        except _NoResponse:
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise httpx2.ReadError(_io_reason(exc), request=request) from None
        finally:
            if keep:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(origin, collections.deque()).append(conn)
            else:
                conn.close()
        return httpx2.Response(status, headers=headers, content=body, request=request)

    def _take(self, origin: tuple[str, int]) -> _Conn | None:
        """The most recently used idle connection that is still open, if any."""
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


async def _connect(origin: tuple[str, int], timeout: float | None, request: httpx2.Request) -> _Conn:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(origin[0], origin[1], limit=1 << 20)
    except TimeoutError:
        raise httpx2.ConnectTimeout(f"connect to {origin[0]}:{origin[1]} timed out", request=request) from None
    except OSError as exc:
        raise httpx2.ConnectError(_io_reason(exc), request=request) from None
    return _Conn(reader, writer)


def _serialize(request: httpx2.Request, body: bytes) -> bytes:
    """Request line, httpx2's headers (Host and Content-Length included) and the body, in one buffer."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines.extend(b"%s: %s" % (name, value) for name, value in request.headers.raw)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_Head = list[tuple[bytes, bytes]]


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, _Head, bytes, bool]:
    """(status, headers, de-chunked body, connection reusable)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _NoResponse("server closed the connection without sending a response") from None
            raise
        except ConnectionResetError:
            raise _NoResponse("connection reset by peer") from None
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status = int(rest[:3])
        if status >= 200 or status == 101:
            break  # 1xx interim responses are skipped
    headers: _Head = []
    length, chunked, close = None, False, version != b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip(), value.strip()
        lower = name.lower()
        if lower == b"content-length":
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
            continue  # the body handed on is de-chunked
        elif lower == b"connection":
            close = b"close" in value.lower() if version == b"HTTP/1.1" else b"keep-alive" not in value.lower()
        headers.append((name, value))
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif chunked:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, close = await reader.read(), True
    return status, headers, body, not close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _io_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "server closed the connection mid-response"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
