"""The OpenAI-compatible executor backend, over real HTTP against FakeOpenAIServer."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai import FakeOpenAIServer, Fault, Reply  # noqa: E402

from scoreflow.config import ExecutorConfig, ModelPrice  # noqa: E402
from scoreflow.executor.cache import CachedReply, ReplyCache  # noqa: E402
from scoreflow.executor.client import ExecutorError, SamplingParams, Usage, UsageMeter, cap_request  # noqa: E402
from scoreflow.executor.openai_backend import (  # noqa: E402
    LOCAL_DUMMY_KEY,
    OpenAIChatClient,
    _read_response,
    _retry_after,
    estimate_tokens,
)

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, request_timeout_s=5.0)
TRANSPORTS = ["lean", "httpx"]
USER = [{"role": "user", "content": "What is 1 + 2?"}]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def client_for(srv: FakeOpenAIServer, **kwargs: Any) -> OpenAIChatClient:
    options = {**FAST, **kwargs}
    return OpenAIChatClient(options.pop("model", "test-model"), base_url=srv.url, **options)


def run(client: OpenAIChatClient, coro_factory: Any) -> Any:
    """Run one coroutine on a fresh loop and close the client's connections after it."""

    async def main() -> Any:
        try:
            return await coro_factory()
        finally:
            await client.aclose()

    return asyncio.run(main())


def failure(client: OpenAIChatClient, messages: list[dict] = USER) -> ExecutorError:
    with pytest.raises(ExecutorError) as info:
        run(client, lambda: client.chat(messages))
    return info.value


# ---------------------------------------------------------------- replies and usage


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reply_text_usage_and_request_fields(server: FakeOpenAIServer, transport: str) -> None:
    server.script([Reply("three", prompt_tokens=11, completion_tokens=2)])
    client = client_for(server, transport=transport)
    reply = run(client, lambda: client.chat(USER))
    assert (reply.text, reply.usage, reply.cached) == ("three", Usage(11, 2), False)
    assert reply.latency_s > 0
    body = server.requests[0]
    assert body == {"model": "test-model", "messages": USER, "temperature": 0.0, "n": 1}
    assert client.meter.snapshot()["calls"] == 1 and client.meter.prompt_tokens == 11


def test_optional_sampling_fields_only_when_set(server: FakeOpenAIServer) -> None:
    client = client_for(server, max_tokens=64)
    run(client, lambda: client.chat(USER, temperature=0.3))
    params = SamplingParams(temperature=0.0, max_tokens=None, top_p=0.95, stop=("</graph>",))
    run(client, lambda: client._complete(USER, params))
    first, second = server.requests
    assert (first["max_tokens"], first["temperature"]) == (64, 0.3) and "top_p" not in first and "stop" not in first
    assert second["top_p"] == 0.95 and second["stop"] == ["</graph>"] and "max_tokens" not in second
    assert first["n"] == second["n"] == 1


def test_usage_counted_locally_when_the_server_omits_it(server: FakeOpenAIServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3 please."}]
    server.script([Reply("The answer is 5.", include_usage=False)])
    client = client_for(server)
    reply = run(client, lambda: client.chat(messages))
    prompt_chars = len("Be brief.") + len("Add 2 and 3 please.")
    assert reply.usage == Usage(-(-prompt_chars // 4), -(-len("The answer is 5.") // 4))
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2


def test_server_default_usage_matches_its_documented_rule(server: FakeOpenAIServer) -> None:
    client = client_for(server)
    reply = run(client, lambda: client.chat(USER))
    assert reply.text == "ok"
    assert reply.usage == Usage(len(USER[0]["content"]) // 4 + 1, len("ok") // 4 + 1)


# ---------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(server: FakeOpenAIServer) -> None:
    server.script([Fault("status", 429, retry_after="1"), "fine"])
    client = client_for(server, backoff_max_s=5.0)
    start = time.perf_counter()
    reply = run(client, lambda: client.chat(USER))
    assert reply.text == "fine" and len(server.requests) == 2
    assert time.perf_counter() - start >= 1.0


def test_retry_after_is_capped_at_backoff_max(server: FakeOpenAIServer) -> None:
    server.script([Fault("status", 503, retry_after="30"), "fine"])
    client = client_for(server, backoff_max_s=0.1)
    start = time.perf_counter()
    assert run(client, lambda: client.chat(USER)).text == "fine"
    assert time.perf_counter() - start < 3.0


def test_retry_after_header_forms() -> None:
    cap = 60.0
    assert _retry_after(httpx2.Headers({"retry-after": "2.5"}), cap) == 2.5
    assert _retry_after(httpx2.Headers({"retry-after-ms": "250", "retry-after": "9"}), cap) == 0.25
    assert _retry_after(httpx2.Headers({"retry-after": "120"}), cap) == cap
    assert _retry_after(httpx2.Headers({}), cap) is None
    assert _retry_after(httpx2.Headers({"retry-after": "soon"}), cap) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 7.0 <= _retry_after(httpx2.Headers({"retry-after": future}), cap) <= 10.0
    assert _retry_after(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), cap) == 0.0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [500, 502, 503, 408, 409, 429])
def test_retryable_status_then_success(server: FakeOpenAIServer, transport: str, status: int) -> None:
    server.script([Fault("status", status), "recovered"])
    client = client_for(server, transport=transport)
    assert run(client, lambda: client.chat(USER)).text == "recovered"
    assert len(server.requests) == 2 and client.meter.failures == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_slow_responses_time_out_then_fail_after_max_retries_plus_one(transport: str) -> None:
    with FakeOpenAIServer(lambda body: Fault("slow", delay_s=2.0)) as srv:
        client = client_for(srv, transport=transport, request_timeout_s=0.2, max_retries=2)
        start = time.perf_counter()
        error = failure(client, [{"role": "user", "content": "A slow question about\nnothing in particular"}])
        elapsed = time.perf_counter() - start
        assert len(srv.requests) == 3
    message = str(error)
    assert "timeout after 0.2 s" in message and "after 3 attempts" in message and "test-model" in message
    assert "'A slow question about nothing in particular'" in message and "\n" not in message
    assert elapsed < 2.0
    assert client.meter.failures == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", ["malformed", "empty", "reset"])
def test_bad_bodies_and_resets_are_retried(server: FakeOpenAIServer, transport: str, kind: str) -> None:
    server.script([Fault(kind), Fault(kind), "finally"])
    client = client_for(server, transport=transport)
    assert run(client, lambda: client.chat(USER)).text == "finally"
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("malformed", "malformed response (invalid JSON)"), ("empty", "empty response (no choices)"),
     ("reset", "connection reset")],
)
def test_persistent_bad_bodies_name_the_reason(kind: str, reason: str) -> None:
    with FakeOpenAIServer(lambda body: Fault(kind)) as srv:
        client = client_for(srv, max_retries=2)
        message = str(failure(client))
        assert len(srv.requests) == 3
    assert reason in message and "after 3 attempts" in message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(server: FakeOpenAIServer, transport: str, status: int) -> None:
    server.script([Fault("status", status), "never reached"])
    client = client_for(server, transport=transport, max_retries=5)
    message = str(failure(client))
    assert len(server.requests) == 1
    assert f"HTTP {status}" in message and "after 1 attempt" in message


@pytest.mark.parametrize("max_retries", [0, 3])
def test_retries_are_bounded(max_retries: int) -> None:
    with FakeOpenAIServer(lambda body: Fault("status", 503)) as srv:
        client = client_for(srv, max_retries=max_retries)
        message = str(failure(client))
        assert len(srv.requests) == max_retries + 1
    assert "HTTP 503" in message and f"after {max_retries + 1} attempt" in message


def test_connection_refused_is_retried_then_named() -> None:
    with FakeOpenAIServer() as srv:
        url = srv.url
    client = OpenAIChatClient("m", base_url=url, max_retries=1, **FAST)
    message = str(failure(client))
    assert "connection refused" in message and "after 2 attempts" in message


def test_random_faults_are_absorbed_by_retries() -> None:
    kinds = [Fault("status", 500), Fault("reset"), Fault("malformed"), Fault("empty"), Fault("status", 429)]
    with FakeOpenAIServer(fault_rate=0.3, fault_kinds=kinds, seed=7) as srv:
        client = client_for(srv, max_retries=8, concurrency=8)

        async def many() -> list[str]:
            replies = await asyncio.gather(*(client.ask(f"question {i}") for i in range(60)))
            return sorted(set(replies))

        assert run(client, many) == ["ok"]
        assert len(srv.requests) > 60


# ---------------------------------------------------------------- cache


def test_second_identical_run_makes_no_requests(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.responder = lambda body: f"answer to {body['messages'][-1]['content']}"
    prompts = [f"problem {i}" for i in range(5)]

    def one_run() -> tuple[list[str], UsageMeter]:
        with ReplyCache(tmp_path / "replies.sqlite") as cache:
            client = client_for(server, cache=cache)

            async def go() -> list[str]:
                return list(await asyncio.gather(*(client.ask(p) for p in prompts)))

            texts = run(client, go)
            return texts, client.meter

    first, meter1 = one_run()
    assert len(server.requests) == 5 and meter1.cache_hits == 0
    second, meter2 = one_run()
    assert second == first == [f"answer to {p}" for p in prompts]
    assert len(server.requests) == 5, "a re-run must not reach the server"
    assert meter2.cache_hits == 5 and meter2.cost_usd == 0.0 and meter2.prompt_tokens == 0


def test_cache_salt_and_temperature(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with ReplyCache(tmp_path / "replies.sqlite") as cache:
        client = client_for(server, cache=cache)

        async def go() -> None:
            await client.chat(USER, cache_salt="run-0")
            await client.chat(USER, cache_salt="run-0")
            await client.chat(USER, cache_salt="run-1")
            await client.chat(USER, temperature=0.7)
            await client.chat(USER, temperature=0.7)

        run(client, go)
        assert len(server.requests) == 4
        assert len(cache) == 2  # only the two temperature-0 replies
        assert client.meter.cache_hits == 1


def test_failed_calls_are_not_cached(tmp_path: Path) -> None:
    with FakeOpenAIServer(lambda body: Fault("status", 500)) as srv, ReplyCache(tmp_path / "c.sqlite") as cache:
        client = client_for(srv, cache=cache, max_retries=0)
        failure(client)
        assert len(cache) == 0 and client.meter.failures == 1


def test_cache_key_covers_everything_that_decides_a_reply() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=100)
    base = ReplyCache.key("openai", "m", USER, params, "")
    assert base == ReplyCache.key("openai", "m", [dict(USER[0])], SamplingParams(0, 100), "")
    assert len(base) == 64
    variants = [
        ReplyCache.key("local", "m", USER, params, ""),
        ReplyCache.key("openai", "m2", USER, params, ""),
        ReplyCache.key("openai", "m", [{"role": "user", "content": "What is 1 + 3?"}], params, ""),
        ReplyCache.key("openai", "m", USER, SamplingParams(0.0, 101), ""),
        ReplyCache.key("openai", "m", USER, SamplingParams(0.0, 100, top_p=0.9), ""),
        ReplyCache.key("openai", "m", USER, SamplingParams(0.0, 100, stop=("x",)), ""),
        ReplyCache.key("openai", "m", USER, params, "1"),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_cache_roundtrip_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "replies.sqlite"
    with ReplyCache(path) as cache:
        assert cache.get("k") is None
        cache.put("k", "héllo ✓", Usage(3, 4))
        cache.put("k", "second", Usage(5, 6))
        assert cache.get("k") == CachedReply("second", Usage(5, 6))
        mode = cache._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    with ReplyCache(path) as again:
        assert again.get("k") == CachedReply("second", Usage(5, 6)) and len(again) == 1


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from scoreflow.executor.cache import ReplyCache
    from scoreflow.executor.client import Usage
    cache = ReplyCache(sys.argv[1])
    for i in range(int(sys.argv[2])):
        cache.put(f"{sys.argv[3]}{i}", f"text {i}", Usage(i, 1))
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    cache.close()
    """
)


def _writer(path: Path, count: int, prefix: str, end: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(count), prefix, end], env=env)


def test_cache_entries_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "replies.sqlite"
    proc = _writer(path, 200, "k", "kill")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    with ReplyCache(path) as cache:
        assert len(cache) == 200
        assert cache.get("k199") == CachedReply("text 199", Usage(199, 1))


def test_two_processes_share_one_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "replies.sqlite"
    with ReplyCache(path) as cache:
        procs = [_writer(path, 300, f"p{n}-", "close") for n in range(2)]
        for i in range(300):
            cache.put(f"main-{i}", "x", Usage(1, 1))
        assert all(p.wait(timeout=60) == 0 for p in procs)
        assert len(cache) == 900
        assert cache.get("p1-299") == CachedReply("text 299", Usage(299, 1))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------- cost and concurrency


def test_cost_sums_from_the_price_table(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.responder = lambda body: Reply("x", prompt_tokens=1000, completion_tokens=250)
    meter = UsageMeter(prices={"priced-model": ModelPrice(input=0.5, output=2.0)})
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        client = client_for(server, model="priced-model", meter=meter, cache=cache)

        async def go() -> None:
            await client.ask("a")
            await client.ask("b")
            await client.ask("a")  # cached: costs nothing

        run(client, go)
    # (1000 * 0.5 + 250 * 2.0) / 1e6 = 0.001 USD a call, two paid calls
    assert meter.prompt_tokens == 2000 and meter.completion_tokens == 500
    assert meter.cost_usd == 0.002
    assert meter.snapshot()["cost_usd"] == 0.002 and meter.cache_hits == 1 and meter.calls == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_concurrency_limit_is_shared_by_all_calls(transport: str) -> None:
    with FakeOpenAIServer(delay_s=0.1) as srv:
        client = client_for(srv, transport=transport, concurrency=4)

        async def go() -> None:
            await asyncio.gather(*(client.ask(f"q{i}") for i in range(24)))

        run(client, go)
        assert len(srv.requests) == 24
        assert srv.max_in_flight == 4


def test_high_concurrency_is_not_throttled_by_the_pool() -> None:
    """All 80 calls reach the server together: the httpx2 pool does not queue them."""
    with FakeOpenAIServer(delay_s=1.0) as srv:
        client = client_for(srv, transport="httpx", concurrency=80)

        async def go() -> None:
            await asyncio.gather(*(client.ask(f"q{i}") for i in range(80)))

        run(client, go)
        assert srv.max_in_flight == 80


def test_one_client_serves_successive_event_loops(server: FakeOpenAIServer) -> None:
    client = client_for(server, concurrency=2)
    for _ in range(3):
        assert asyncio.run(client.ask("again?")) == "ok"  # no aclose in between
    assert run(client, lambda: client.ask("last")) == "ok"
    assert len(server.requests) == 4


# ---------------------------------------------------------------- API key


def test_api_key_comes_from_the_named_variable_and_never_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-RECOGNIZABLE-0123456789abcdef"
    monkeypatch.setenv("SCOREFLOW_TEST_EXECUTOR_KEY", secret)
    with FakeOpenAIServer(lambda body: Fault("status", 500)) as srv:
        srv.script(["fine", Fault("status", 401), Fault("status", 400)])
        client = client_for(srv, api_key_env="SCOREFLOW_TEST_EXECUTOR_KEY", max_retries=1)
        assert run(client, lambda: client.ask("hi")) == "fine"
        errors = [failure(client) for _ in range(3)]  # 401, 400, then 500 until retries run out
        assert [h["authorization"] for h in srv.request_headers] == [f"Bearer {secret}"] * 5
    for error in errors:
        assert secret not in str(error) and secret not in repr(error)
        assert error.__cause__ is None
    assert secret not in repr(client) and secret not in repr(vars(client))


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCOREFLOW_MISSING_KEY", raising=False)
    with pytest.raises(ExecutorError, match="SCOREFLOW_MISSING_KEY"):
        OpenAIChatClient("gpt-4o-mini", base_url="https://api.example.com/v1", api_key_env="SCOREFLOW_MISSING_KEY")
    with pytest.raises(ExecutorError, match="SCOREFLOW_MISSING_KEY"):
        OpenAIChatClient("gpt-4o-mini", api_key_env="SCOREFLOW_MISSING_KEY")


def test_local_server_needs_no_key(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCOREFLOW_MISSING_KEY", raising=False)
    client = client_for(server, api_key_env="SCOREFLOW_MISSING_KEY")
    assert run(client, lambda: client.ask("hi")) == "ok"
    assert server.request_headers[0]["authorization"] == f"Bearer {LOCAL_DUMMY_KEY}"


def test_from_config(server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREFLOW_TEST_EXECUTOR_KEY", "sk-config")
    config = ExecutorConfig(model="gpt-4o-mini", base_url=server.url, api_key_env="SCOREFLOW_TEST_EXECUTOR_KEY",
                            max_tokens=77, concurrency=3, max_retries=2, request_timeout_s=9.0)
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        client = OpenAIChatClient.from_config(config, cache=cache, meter=None)
        assert client.cache is cache and client.concurrency == 3 and client.max_retries == 2
        assert client.meter.prices["gpt-4o-mini"] == ModelPrice(0.15, 0.60)
        run(client, lambda: client.ask("hi"))
        assert server.requests[0]["max_tokens"] == 77 and server.requests[0]["model"] == "gpt-4o-mini"
        off = OpenAIChatClient.from_config(ExecutorConfig(base_url=server.url, cache=False), cache=cache, meter=None)
        assert off.cache is None
    assert client.transport == "lean"
    https = OpenAIChatClient.from_config(
        ExecutorConfig(base_url="https://example.invalid/v1", api_key_env="SCOREFLOW_TEST_EXECUTOR_KEY"),
        cache=None, meter=None)
    assert https.transport == "httpx"


# ---------------------------------------------------------------- MetaGPT's request settings (M12)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def test_config_defaults_are_metagpts(server: FakeOpenAIServer) -> None:
    """Every call starts with MetaGPT's system message and asks for at most 4096 tokens; 600 s timeout."""
    client = OpenAIChatClient.from_config(ExecutorConfig(base_url=server.url, model="m", cache=False))
    assert client.request_timeout_s == 600.0 and client.system_message == SYSTEM["content"]
    run(client, lambda: client.ask("What is 1 + 2?"))
    (body,) = server.requests
    assert body["messages"] == [SYSTEM, *USER] and body["max_tokens"] == 4096


def test_no_system_message_when_configured_off(server: FakeOpenAIServer) -> None:
    client = OpenAIChatClient.from_config(ExecutorConfig(base_url=server.url, system_message=None, cache=False))
    run(client, lambda: client.chat(USER))
    assert server.requests[0]["messages"] == USER


def test_a_callers_own_system_message_replaces_the_default(server: FakeOpenAIServer) -> None:
    client = client_for(server, system_message="Default.")
    own = [{"role": "system", "content": "Be brief."}, *USER]
    run(client, lambda: client.chat(own))
    run(client, lambda: client.chat(USER))
    assert server.requests[0]["messages"] == own
    assert server.requests[1]["messages"] == [{"role": "system", "content": "Default."}, *USER]


def test_the_system_message_is_part_of_the_cache_key(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        for system in ("One.", "Two.", "One."):
            client = client_for(server, cache=cache, system_message=system)
            run(client, lambda: client.chat(USER))
    assert [r["messages"][0]["content"] for r in server.requests] == ["One.", "Two."]  # the third came from the cache


def test_the_request_cap_never_cuts_the_system_message(server: FakeOpenAIServer) -> None:
    system = "S" * 3_000
    client = client_for(server, system_message=system)
    client.max_request_chars = 5_000
    reply = run(client, lambda: client.chat([{"role": "user", "content": "u" * 10_000}]))
    sent = server.requests[0]["messages"]
    assert sent[0] == {"role": "system", "content": system}
    assert sum(len(m["content"]) for m in sent) <= 5_000 and reply.truncated_chars > 0
    short = [{"role": "system", "content": system}, {"role": "user", "content": "u" * 10}]
    assert cap_request(short, 1_000) == (short, 0)  # nothing else worth cutting: the request stays whole


# ---------------------------------------------------------------- lean transport details


def _parse(raw: bytes, method: str = "POST") -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    async def go() -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await _read_response(reader, method)

    return asyncio.run(go())


def test_lean_response_parser_handles_chunked_close_and_interim() -> None:
    chunked = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n: 1\r\n1\r\n}\r\n0\r\nT: v\r\n\r\n")
    status, headers, body, keep = _parse(chunked)
    assert (status, body, keep) == (200, b'{"a": 1}', True)
    assert (b"Transfer-Encoding", b"chunked") not in headers
    assert _parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")[2:] == (b"ok", False)
    assert _parse(b"HTTP/1.0 200 OK\r\n\r\nuntil eof")[2:] == (b"until eof", False)
    assert _parse(b"HTTP/1.1 204 No Content\r\n\r\n")[2:] == (b"", True)


def test_lean_transport_replaces_connections_the_server_closed() -> None:
    """A server that closes every connection after answering (without saying so)."""
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        served.append(1)
        payload = b'{"choices": [{"message": {"role": "assistant", "content": "hi"}}]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        writer.close()

    async def go() -> list[str]:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        client = OpenAIChatClient("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, **FAST)
        try:
            texts = []
            for i in range(5):
                texts.append(await client.ask(f"q{i}"))
                if i == 2:
                    await asyncio.sleep(0.05)
            return texts
        finally:
            await client.aclose()
            srv.close()

    assert asyncio.run(go()) == ["hi"] * 5 and len(served) == 5
