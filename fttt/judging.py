"""The code judge of HumanEval and MBPP (FTTT_SPEC 1.2, 3): in process or over HTTP.

The original POSTs ``{problem, completion}`` to ``api/oj_api.py``, which ``exec``s
``prompt + completion + test + check(entry_point)`` in a forked copy of the server: the
program can read the server's environment, write its files, ignore the alarm and forge
its verdict (FTTT_SPEC 3.3). Here the same program semantics run as a
``scoreflow.sandbox.CodeCheck``: the completion alone in one confined process, the
hidden tests in another that alone writes the verdict, so neither a permissive ``==``
nor an early exit can make a wrong program pass.

A verdict (``Judgement``) is the program's outcome; ``JudgeUnavailable`` means the
judge itself could not judge (service down, sandbox cannot start): callers must stop
and leave the question unrecorded rather than score it as wrong.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import http.client
import json
import keyword
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from scoreflow.errors import ScoreFlowError
from scoreflow.sandbox import CodeCheck, Sandbox, SandboxResult, SandboxSettings, SandboxUnavailable

__all__ = [
    "RESULT_CODES", "CodeProblem", "HttpJudge", "JudgeUnavailable", "Judgement", "SandboxJudge",
    "code_check", "judgement_from", "make_judge", "mbpp_entry_point",
]

MESSAGE_CAP = 200
# The original's result codes: 1 passed, 2 timed out, 3 anything else.
RESULT_CODES: dict[str, int] = {"pass": 1, "timeout": 2}
FAILED = 3
# Sandbox results that are the sandbox's own state, not the program's outcome.
_NOT_VERDICTS = ("sandbox closed", "cancelled")


class JudgeUnavailable(ScoreFlowError):
    """The judge cannot judge (service down or refusing, sandbox cannot start): not a verdict."""


@dataclass(frozen=True)
class CodeProblem:
    """The ``problem`` the original POSTs (FTTT sends an empty prompt)."""

    prompt: str
    test: str  # HumanEval: def check(candidate); MBPP: def check() (zero-argument)
    entry_point: str  # HumanEval: the function's name; MBPP: "" (the tests end with check())


@dataclass(frozen=True)
class Judgement:
    """One program's verdict, in the original's codes plus the sandbox's status."""

    passed: bool
    result: int  # 1 passed, 2 timed out, 3 failed (fail, memory, error)
    status: str  # pass/fail/timeout/memory/error
    message: str  # one line, at most MESSAGE_CAP characters; never the program


def one_line(text: str, cap: int = MESSAGE_CAP) -> str:
    """Collapse whitespace so a message is one log- and JSON-friendly line."""
    line = " ".join(str(text).split())
    return line if len(line) <= cap else line[: cap - 3] + "..."


def check_problem(problem: CodeProblem) -> None:
    """Refuse a malformed problem (a caller's bug): the fields end up in trusted code."""
    for name in ("prompt", "test", "entry_point"):
        if not isinstance(getattr(problem, name), str):
            raise ValueError(f"problem.{name}: expected a string")
    entry = problem.entry_point
    if entry and (not entry.isidentifier() or keyword.iskeyword(entry)):
        raise ValueError(f"problem.entry_point: not a Python identifier: {one_line(entry, 60)!r}")


def mbpp_entry_point(test: str, completion: str = "") -> str:
    """The candidate name a zero-argument ``check()`` stands on, for ``CodeCheck``.

    ``CodeCheck`` needs an entry point the solution must define; MBPP's has none. The
    tests' process binds every free name the tests use to the candidate's object anyway,
    so the entry point only matters twice: it names what "does not define" and it is the
    one builtin name the candidate may shadow (MBPP task 126 defines ``sum``; in the
    original's single ``exec`` the tests then call the candidate's). So: the first name
    the tests call that they do not define and that is no builtin, or is a builtin the
    completion defines at top level (``def sum``); else the first free name they read;
    else ``__name__``, which every module has (the check then passes when the program
    runs, as the original's would). The completion is only scanned lexically, never
    parsed or run here."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return "__name__"  # the tests' process reports the syntax error itself
    own, builtin = _names_bound(tree), set(vars(builtins))
    shadowed = builtin & _top_level_names(completion)
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)),
                   key=lambda n: (n.lineno, n.col_offset))
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    for node in nodes:
        if id(node) in called and node.id not in own and (node.id not in builtin or node.id in shadowed):
            return node.id
    free = [n.id for n in nodes if n.id not in own and n.id not in builtin]
    return free[0] if free else "__name__"


_TOP_LEVEL = re.compile(r"^(?:async[ \t]+def|def|class)[ \t]+(\w+)|^(\w+)[ \t]*(?::[^=\n]*)?=(?!=)", re.MULTILINE)


def _top_level_names(completion: str) -> set[str]:
    """Names a program defines in column 0 (``def f``, ``class C``, ``f = ...``), by regex."""
    return {a or b for a, b in _TOP_LEVEL.findall(completion)}


def _names_bound(tree: ast.AST) -> set[str]:
    """Names the tests define themselves: functions, classes, arguments, assignments, imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def code_check(problem: CodeProblem, completion: str) -> CodeCheck:
    """The original's program ``prompt + completion + test + check(entry)`` as a check:
    prompt + completion untrusted, the tests and their call trusted."""
    check_problem(problem)
    if not isinstance(completion, str):
        raise ValueError("completion: expected a string")
    solution = problem.prompt + completion
    if problem.entry_point:
        call, entry = f"check({problem.entry_point})", problem.entry_point
    else:
        call, entry = "check()", mbpp_entry_point(problem.test, solution)
    return CodeCheck(solution=solution, tests=problem.test, call=call, entry_point=entry)


def judgement_from(result: SandboxResult) -> Judgement:
    """Map a sandbox outcome onto the original's codes (FTTT_SPEC 6.1)."""
    code = RESULT_CODES.get(result.status, FAILED)
    return Judgement(code == 1, code, result.status, one_line(result.message))


class SandboxJudge:
    """Judges in this process's sandbox (the default path; no service needed)."""

    def __init__(self, settings: SandboxSettings = SandboxSettings(), *, time_limit_s: float = 3.0,
                 sandbox: Sandbox | None = None) -> None:
        if not time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive (got {time_limit_s})")
        self.time_limit_s = float(time_limit_s)
        self._owned = sandbox is None
        self.sandbox = Sandbox(settings) if sandbox is None else sandbox

    async def judge(self, problem: CodeProblem, completion: str) -> Judgement:
        check = code_check(problem, completion)
        try:
            result = await self.sandbox.check(check, time_limit_s=self.time_limit_s)
        except SandboxUnavailable as exc:
            raise JudgeUnavailable(f"code judge: {one_line(exc, 400)}") from None
        except RuntimeError as exc:  # "Sandbox is closed"
            raise JudgeUnavailable(f"code judge: {one_line(exc)}") from None
        if result.status == "error" and result.message in _NOT_VERDICTS:
            raise JudgeUnavailable(f"code judge: the sandbox ended before judging ({result.message})")
        return judgement_from(result)

    def close(self) -> None:
        """Stop the sandbox this judge started (one passed in belongs to the caller)."""
        if self._owned:
            self.sandbox.close()


class _Retry(Exception):
    """A failure worth another attempt (connection, timeout, 5xx)."""


class HttpJudge:
    """A client of ``python -m fttt.judge`` or of the original's ``oj_api.py``.

    Retries as the original's client does (``attempts`` tries, ``sleeps`` between them),
    but only what can heal: connection errors, timeouts and 5xx (503 = queue full). A 4xx
    is a request the server refuses, a bug or misconfiguration: raised at once."""

    def __init__(self, url: str, *, attempts: int = 3, request_timeout_s: float = 60.0,
                 sleeps: tuple[float, ...] = (1.0, 3.0)) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1 (got {attempts})")
        self.url = url
        self.attempts = attempts
        self.request_timeout_s = request_timeout_s
        self.sleeps = tuple(sleeps)

    async def judge(self, problem: CodeProblem, completion: str) -> Judgement:
        check_problem(problem)
        body = json.dumps({"problem": {"prompt": problem.prompt, "test": problem.test,
                                       "entry_point": problem.entry_point}, "completion": completion}).encode()
        reason = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self._sleep(attempt - 1))
            try:
                return await asyncio.to_thread(self._post, body)
            except _Retry as exc:
                reason = str(exc)
        raise JudgeUnavailable(f"code judge at {self.url} unavailable after {self.attempts} attempts: {reason}")

    def _sleep(self, index: int) -> float:
        if not self.sleeps:
            return 0.0
        return self.sleeps[min(index, len(self.sleeps) - 1)]

    def _post(self, body: bytes) -> Judgement:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}: {_server_message(exc.read())}"
            if exc.code >= 500:
                raise _Retry(detail) from None
            raise JudgeUnavailable(f"code judge at {self.url} refused the request: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # refused, reset, timeouts
            raise _Retry(one_line(getattr(exc, "reason", exc))) from None
        return self._judgement(payload)

    def _judgement(self, payload: bytes) -> Judgement:
        """The service's answer; the original's ``{passed, result}`` is enough."""
        try:
            data = json.loads(payload)
            passed = data["passed"]
            if type(passed) is not bool:
                raise TypeError("passed is not a boolean")
        except (ValueError, KeyError, TypeError) as exc:
            raise JudgeUnavailable(f"code judge at {self.url}: malformed answer ({one_line(exc)})") from None
        result = data.get("result")
        if result not in (1, 2, 3):
            result = 1 if passed else FAILED
        status = data.get("status")
        if not isinstance(status, str):
            status = {1: "pass", 2: "timeout"}.get(result, "fail")
        return Judgement(passed, result, status, one_line(data.get("message", "")))

    def close(self) -> None:
        """Nothing is held between requests (each opens its own connection)."""


def _server_message(payload: bytes) -> str:
    """The server's one-line reason: our ``error``, FastAPI's ``detail``, else the text."""
    text = payload.decode("utf-8", "replace")
    try:
        data: Any = json.loads(text)
    except ValueError:
        return one_line(text) or "(no message)"
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data:
                return one_line(data[key] if isinstance(data[key], str) else json.dumps(data[key]))
    return one_line(text)


def make_judge(config: Any) -> SandboxJudge | HttpJudge:
    """``judge.url`` unset: judge in process; else use the service at that URL."""
    settings = config.judge
    if settings.url is None:
        return SandboxJudge(config.sandbox, time_limit_s=settings.time_limit_s)
    return HttpJudge(settings.url, attempts=settings.attempts, request_timeout_s=settings.request_timeout_s)
