"""The code-judging service: the original's ``POST /`` contract, judged in the sandbox.

    python -m fttt.judge [--host 127.0.0.1] [--port 9999] [--queue Q] [--max-body B]
                         [--config F] [--set k=v ...]

``POST /`` with ``{"problem": {"prompt", "test", "entry_point", ...}, "completion"}``
answers ``{"passed", "result", "status", "message"}`` (result 1 passed, 2 timed out,
3 failed), like ``api/oj_api.py`` plus the sandbox's status and a one-line reason.
Unlike the original (FTTT_SPEC 3.3) it never runs a program in its own process (every
check is a ``SandboxJudge`` check), validates requests (4xx with a one-line JSON
``error``), bounds its work (``sandbox.workers`` checks at once, ``--queue`` waiting,
then 503 at once), never logs programs, and binds 127.0.0.1 unless told otherwise.
Standard library only: FastAPI and uvicorn are not project dependencies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

from fttt.config import load_fttt_config
from fttt.judging import CodeProblem, Judgement, JudgeUnavailable, SandboxJudge, check_problem, one_line
from scoreflow import cli
from scoreflow.errors import ScoreFlowError
from scoreflow.sandbox import SandboxUnavailable

DEFAULT_MAX_BODY = 1 << 20
READ_TIMEOUT_S = 30.0  # a client that stalls mid-request loses its connection, not a worker


class RequestError(Exception):
    """A request answered with ``status`` and a one-line reason, without judging."""

    def __init__(self, status: int, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


@dataclass(frozen=True)
class Limits:
    workers: int
    queue: int
    max_body: int


class JudgeService:
    """Admission (workers + queue slots, else 503) in front of one ``SandboxJudge``
    whose checks run on a private event loop thread."""

    def __init__(self, judge: SandboxJudge, limits: Limits) -> None:
        self.judge, self.limits = judge, limits
        self._lock = threading.Lock()
        self._active = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fttt-judge-loop", daemon=True)
        self._thread.start()

    def health(self) -> dict[str, Any]:
        with self._lock:
            active = self._active
        workers = self.limits.workers
        return {"status": "ok", "workers": workers, "queue": self.limits.queue,
                "running": min(active, workers), "queued": max(0, active - workers)}

    def judge_now(self, problem: CodeProblem, completion: str) -> Judgement:
        """Judge if a slot is free, else refuse at once (the caller retries later)."""
        with self._lock:
            if self._active >= self.limits.workers + self.limits.queue:
                raise RequestError(503, f"queue full ({self.limits.workers} running, {self.limits.queue} queued); "
                                        "retry later")
            self._active += 1
        try:
            future = asyncio.run_coroutine_threadsafe(self.judge.judge(problem, completion), self._loop)
            return future.result()
        except concurrent.futures.CancelledError:
            raise JudgeUnavailable("code judge: the service is shutting down") from None
        finally:
            with self._lock:
                self._active -= 1

    def close(self) -> None:
        """Close the sandbox (checks in flight end as unavailable), then the loop."""
        self.judge.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


def parse_request(body: bytes) -> tuple[CodeProblem, str]:
    """The original's body, validated: 400 for non-JSON, 422 naming the bad field."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"body is not JSON: {one_line(exc, 120)}") from None
    if not isinstance(data, dict):
        raise RequestError(422, "body: expected a JSON object with problem and completion")
    problem = data.get("problem")
    if not isinstance(problem, dict):
        raise RequestError(422, "problem: expected an object with prompt, test and entry_point")
    fields = {}
    for name in ("prompt", "test", "entry_point"):
        if not isinstance(problem.get(name), str):
            raise RequestError(422, f"problem.{name}: expected a string")
        fields[name] = problem[name]
    if not isinstance(data.get("completion"), str):
        raise RequestError(422, "completion: expected a string")
    parsed = CodeProblem(**fields)
    try:
        check_problem(parsed)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None
    return parsed, data["completion"]


class Handler(BaseHTTPRequestHandler):
    """One request: validate, judge, answer JSON; one log line, never the program."""

    server: Server
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S
    ROUTES: ClassVar[dict[str, str]] = {"/": "POST", "/health": "GET"}

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_OPTIONS(self) -> None:
        self._serve("OPTIONS")

    def _serve(self, method: str) -> None:
        with self.server.busy():
            self._handle(method)

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        outcome = ""
        try:
            allowed = self.ROUTES.get(path)
            if allowed is None:
                raise RequestError(404, f"no such path {one_line(path, 60)!r} (POST / judges, GET /health)", close=True)
            if method != allowed:
                raise RequestError(405, f"{method} not allowed on {path} (use {allowed})", close=True)
            if method == "GET":
                status, answer = 200, self.server.service.health()
            else:
                judgement = self.server.service.judge_now(*parse_request(self._body()))
                status, answer = 200, judgement.__dict__.copy()
                outcome = f" result {judgement.result} {judgement.status}"
        except RequestError as exc:
            status, answer = exc.status, {"error": exc.reason}
            self.close_connection = self.close_connection or exc.close
        except JudgeUnavailable as exc:
            status, answer = 503, {"error": one_line(exc, 400)}
        except Exception as exc:  # noqa: BLE001 - a bug of ours: a 500 with its type, the server stays up
            status, answer = 500, {"error": f"internal error: {type(exc).__name__}"}
        self._answer(status, answer, allowed=self.ROUTES.get(path))
        self.server.log(f"{method} {one_line(path, 60)} {status}{outcome} {time.monotonic() - started:.3f} s")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "chunked bodies are not accepted; send Content-Length", close=True)
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise RequestError(411, "Content-Length required", close=True)
        try:
            length = int(raw.strip())
        except ValueError:
            raise RequestError(400, "Content-Length is not an integer", close=True) from None
        if length < 0:
            raise RequestError(400, "Content-Length is negative", close=True)
        if length > self.server.limits.max_body:
            raise RequestError(413, f"body of {length} bytes is over the limit of {self.server.limits.max_body}",
                               close=True)
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestError(400, "body shorter than Content-Length", close=True)
        return body

    def _answer(self, status: int, answer: dict[str, Any], *, allowed: str | None) -> None:
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 405 and allowed:
                self.send_header("Allow", allowed)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client left; nothing to tell it
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method) as one-line JSON."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        if code == 501:  # a method http.server has no do_ handler for
            code, message = 405, f"method {one_line(self.command or '', 20)} not allowed (POST / or GET /health)"
        self._answer(code, {"error": one_line(message or self.responses.get(code, ("error",))[0])}, allowed=None)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: ``_serve`` logs one line per request itself."""


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: JudgeService, limits: Limits) -> None:
        self.service, self.limits = service, limits
        self._log_lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Condition()
        super().__init__(address, Handler)

    @contextlib.contextmanager
    def busy(self):
        """Counts requests being handled, so that a shutdown can let them answer."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def drain(self, timeout_s: float) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=timeout_s)

    def log(self, line: str) -> None:
        with self._log_lock:
            print(f"fttt.judge: {line}", file=sys.stderr, flush=True)


def build_parser():
    parser = cli.make_parser("Serve the FTTT code judge over HTTP (the original's POST / contract).",
                             dataset=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="port (0: any free port, printed at start)")
    parser.add_argument("--queue", type=int, default=None, help="requests waiting beyond the running ones "
                                                                "(default 4 x sandbox.workers); more get 503")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, help="largest request body in bytes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_fttt_config(args.config, args.overrides)
    workers = config.sandbox.workers
    limits = Limits(workers, 4 * workers if args.queue is None else args.queue, args.max_body)
    if limits.queue < 0 or limits.max_body < 1 or not 0 <= args.port <= 65535:
        raise ScoreFlowError("--queue must be >= 0, --max-body >= 1 and --port in [0, 65535]")
    service = JudgeService(SandboxJudge(config.sandbox, time_limit_s=config.judge.time_limit_s), limits)
    try:
        server = Server((args.host, args.port), service, limits)
    except OSError as exc:
        service.close()
        raise ScoreFlowError(f"--host/--port: cannot bind {args.host}:{args.port} ({exc.strerror or exc})") from None
    try:
        service.judge.sandbox.server_info()  # start the sandbox now: a judge that cannot judge must not serve
    except SandboxUnavailable as exc:
        server.server_close()
        service.close()
        raise ScoreFlowError(f"fttt.judge: {one_line(exc, 400)}") from None
    serve(server, service, config.judge.time_limit_s)
    return 0


def serve(server: Server, service: JudgeService, time_limit_s: float) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, close the sandbox and return."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    host, port = server.server_address[:2]
    limits = service.limits
    print(f"fttt.judge: serving on http://{host}:{port} (workers {limits.workers}, queue {limits.queue}, "
          f"time limit {time_limit_s:g} s)", flush=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    service.judge.close()  # checks in flight end now; their requests are answered 503
    server.drain(10.0)
    service.close()
    print("fttt.judge: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    cli.run(main)
