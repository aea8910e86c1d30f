"""Code that runs inside sandbox children: programs, candidates and the trusted test side.

Loaded by the fork server (``_sandbox_server.py``) from a read-only copy inside the
sandbox; standard library only. Three roles:

- ``run_program``: a plain program (``Sandbox.run``). Its status record ("ok" once the
  program ran to its end) is written by the program's own process, so a program can
  claim it: ``run`` verdicts are advisory (public tests, Programmer), never scores.
- ``serve_candidate``: runs an untrusted solution, then answers the test side's requests
  (calls, attribute reads, ...) over two pipes. It holds no verdict and no test.
- ``run_check``: the trusted side of ``Sandbox.check``. In its own process it runs the
  benchmark's prelude and hidden tests; names of the solution are bound to proxies whose
  results cross the pipe as plain data (``encode``/``decode``: builtin types only, so
  ``==`` is always the builtin one). It alone writes the verdict, to a pipe that only the
  host reads. Whatever the candidate does, it can only answer the calls it is asked.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import json
import os
import sys
import traceback
import types

MAX_DEPTH = 200  # nesting of a value crossing the pipe
MAX_MESSAGE = 64 << 20  # bytes of one message from the candidate
MAX_RECORD = 8192  # bytes of a status record
_LENGTH = 4

# The builtins as module globals: a solution that patches ``builtins`` (len, isinstance,
# ...) in its own process must not turn this module's protocol code into an endless
# loop that only the time limit ends (it could still break it deliberately: it then
# answers nothing and fails).
globals().update({name: value for name, value in vars(builtins).items() if not name.startswith("_")})


# --------------------------------------------------------------------------- reporting


def format_exception(exc: BaseException) -> str:
    """The last line of the exception as Python prints it, kept short."""
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return line if len(line) <= 500 else line[:497] + "..."


def _visible_stack(tb, hidden: frozenset) -> traceback.StackSummary:
    """Stack entries of a traceback without the sandbox's own frames; a frame the audit
    hook refuses to show ends the walk."""
    entries = []
    while tb is not None:
        try:
            code = tb.tb_frame.f_code
        except PermissionError:
            break
        if code.co_filename not in hidden:
            entries.append((code.co_filename, tb.tb_lineno, code.co_name, None))
        tb = tb.tb_next
    return traceback.StackSummary.from_list(entries)


def traceback_text(exc: BaseException, hidden: frozenset = frozenset(), depth: int = 0) -> str:
    """Like Python's own report, including chained exceptions (a few levels deep)."""
    text = ""
    if depth < 5 and exc.__cause__ is not None:
        text = traceback_text(exc.__cause__, hidden, depth + 1) + (
            "\nThe above exception was the direct cause of the following exception:\n\n")
    elif depth < 5 and exc.__context__ is not None and not exc.__suppress_context__:
        text = traceback_text(exc.__context__, hidden, depth + 1) + (
            "\nDuring handling of the above exception, another exception occurred:\n\n")
    stack = "".join(_visible_stack(exc.__traceback__, hidden).format())
    header = "Traceback (most recent call last):\n" if stack else ""
    return text + header + stack + "".join(traceback.format_exception_only(type(exc), exc))


HIDDEN_FILES = {__file__}  # the fork server adds its own file: neither shows in tracebacks


def _hidden_files() -> frozenset:
    return frozenset(HIDDEN_FILES)


def failure_record(exc: BaseException, sources: dict[str, str]) -> bytes:
    """Print the error to the captured stderr (as Python would) and build the record."""
    import linecache

    for name, text in sources.items():
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    try:
        if not isinstance(exc, SystemExit):
            sys.stderr.write(traceback_text(exc, _hidden_files()))
        elif isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
    except BaseException:  # noqa: BLE001 - reporting must not fail
        pass
    kind = "memory" if isinstance(exc, MemoryError) else "fail"
    return f"{kind}\n{format_exception(exc)}".encode("utf-8", "replace")


def _safe_failure_record(exc: BaseException, sources: dict[str, str]) -> bytes:
    try:
        return failure_record(exc, sources)
    except BaseException:  # noqa: BLE001 - e.g. MemoryError again while formatting
        return b"memory\nMemoryError" if isinstance(exc, MemoryError) else b"fail\n" + type(exc).__name__.encode()


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a broken stream must not hide the result
            pass


def read_text(fd: int) -> str:
    """The whole text behind a descriptor (a memfd written by the host), then close it."""
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def _internal_error(exc: BaseException) -> None:
    try:
        os.write(2, f"sandbox: {type(exc).__name__}: {exc}\n".encode("utf-8", "replace"))
    except BaseException:  # noqa: BLE001
        pass


def _wait_for_threads() -> None:
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()  # like interpreter exit: wait for non-daemon threads


def _new_main_module() -> dict:
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    return module.__dict__


# --------------------------------------------------------------------------- plain programs


def run_program(program_fd: int, status_fd: int) -> None:
    """Run a program as ``__main__``; write its status record; never returns."""
    try:
        program = read_text(program_fd)
        namespace = _new_main_module()
        try:
            exec(compile(program, "<program>", "exec"), namespace)  # the sandboxed execution
            _wait_for_threads()
            record = b"ok"
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: it is a "fail"
            if isinstance(exc, MemoryError):
                namespace.clear()  # give the memory back so that reporting can work
            record = _safe_failure_record(exc, {"<program>": program})
        flush_std_streams()
        os.write(status_fd, record)
    except BaseException as exc:  # noqa: BLE001 - the sandbox's own failure: say so
        _internal_error(exc)
    finally:
        os._exit(0)


# --------------------------------------------------------------------------- values on the pipe
#
# A value is a JSON list whose first item names its kind. Only builtin types (and a few
# stdlib containers) are data; anything else stays in the candidate and crosses as a
# reference ("r", number, type name) that the test side can only use through requests.

_SCALARS = {type(None): "n", bool: "b", int: "i", float: "f", complex: "c", str: "s", bytes: "y",
            bytearray: "Y"}
_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "F"}


class CodecError(ValueError):
    """A value could not be encoded or a message could not be decoded."""


def encode(value, refer, depth: int = 0) -> list:
    """The wire form of ``value``; ``refer(obj) -> list`` encodes what is not data."""
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    kind = type(value)
    if kind in _SCALARS:
        return _encode_scalar(value, _SCALARS[kind])
    if kind in _SEQUENCES:
        return [_SEQUENCES[kind], [encode(item, refer, depth + 1) for item in value]]
    if kind is dict:
        return ["d", [[encode(k, refer, depth + 1), encode(v, refer, depth + 1)] for k, v in value.items()]]
    if kind is range:
        return ["R", value.start, value.stop, value.step]
    return _encode_subclass(value, refer, depth)


def _encode_scalar(value, tag: str) -> list:
    if tag == "n":
        return ["n"]
    if tag == "b":
        return ["b", 1 if value else 0]
    if tag == "i":
        return ["i", hex(value)]
    if tag == "f":
        return ["f", float.hex(value)]
    if tag == "c":
        return ["c", float.hex(value.real), float.hex(value.imag)]
    if tag == "s":
        return ["s", value]
    return [tag, bytes(value).hex()]


def _encode_subclass(value, refer, depth: int) -> list:
    """Instances of subclasses of data types cross as their base type (a few stdlib
    containers keep their kind); everything else as a reference."""
    if isinstance(value, collections.Counter):
        return ["d", encode(dict(value), refer, depth)[1], "Counter"]
    if isinstance(value, collections.OrderedDict):
        return ["d", encode(dict(value), refer, depth)[1], "OrderedDict"]
    if isinstance(value, collections.deque):
        return ["Q", encode(list(value), refer, depth)[1], value.maxlen]
    for base in (bool, int, float, complex, str, bytes, bytearray, list, tuple, set, frozenset, dict):
        if isinstance(value, base):
            return encode(base(value), refer, depth)
    return refer(value)


def decode(tree, resolve, depth: int = 0):
    """Rebuild a value from its wire form with builtin types only; ``resolve(tree)``
    turns a reference into an object. Anything malformed raises ``CodecError``."""
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    if type(tree) is not list or not tree or type(tree[0]) is not str:
        raise CodecError("malformed value")
    tag = tree[0]
    try:
        if tag in _SCALAR_DECODERS:
            return _SCALAR_DECODERS[tag](tree)
        if tag in _SEQUENCE_DECODERS:
            return _SEQUENCE_DECODERS[tag](decode(item, resolve, depth + 1) for item in _items(tree))
        if tag == "d":
            return _decode_dict(tree, resolve, depth)
        if tag == "Q":
            return collections.deque((decode(i, resolve, depth + 1) for i in _items(tree)), _optional_int(tree[2]))
        if tag == "R":
            return range(*(_exact(item, int) for item in tree[1:4]))
        if tag == "r":
            return resolve(tree)
    except CodecError:
        raise
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise CodecError(f"malformed value: {exc}") from None
    raise CodecError(f"unknown value kind {tag!r}")


def _exact(value, kind):
    if type(value) is not kind:
        raise CodecError("malformed value")
    return value


def _items(tree) -> list:
    return _exact(tree[1], list)


def _optional_int(value):
    return None if value is None else _exact(value, int)


def _decode_dict(tree, resolve, depth: int) -> dict:
    result = {}
    for pair in _items(tree):
        key, value = _exact(pair, list)
        result[decode(key, resolve, depth + 1)] = decode(value, resolve, depth + 1)
    kind = tree[2] if len(tree) > 2 else None
    if kind == "Counter":
        return collections.Counter(result)
    if kind == "OrderedDict":
        return collections.OrderedDict(result)
    return result


_SCALAR_DECODERS = {
    "n": lambda t: None,
    "b": lambda t: bool(_exact(t[1], int)),
    "i": lambda t: int(_exact(t[1], str), 16),
    "f": lambda t: float.fromhex(_exact(t[1], str)),
    "c": lambda t: complex(float.fromhex(_exact(t[1], str)), float.fromhex(_exact(t[2], str))),
    "s": lambda t: _exact(t[1], str),
    "y": lambda t: bytes.fromhex(_exact(t[1], str)),
    "Y": lambda t: bytearray.fromhex(_exact(t[1], str)),
}
_SEQUENCE_DECODERS = {"l": list, "t": tuple, "S": set, "F": frozenset}


def send_message(fd: int, message) -> None:
    data = json.dumps(message, separators=(",", ":")).encode("ascii")
    data = len(data).to_bytes(_LENGTH, "big") + data
    while data:
        data = data[os.write(fd, data):]


class ChannelClosed(EOFError):
    """The other side of the pipe went away."""


def receive_message(fd: int, limit: int = MAX_MESSAGE):
    size = int.from_bytes(_read_exactly(fd, _LENGTH), "big")
    if size > limit:
        raise CodecError(f"message of {size} bytes is over the limit")
    try:
        return json.loads(_read_exactly(fd, size))
    except (ValueError, RecursionError) as exc:
        raise CodecError(f"malformed message: {type(exc).__name__}") from None


def _read_exactly(fd: int, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("the other side closed the pipe")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


# --------------------------------------------------------------------------- candidate side


class _Objects:
    """Objects of the candidate handed out by reference, kept alive while referenced."""

    def __init__(self) -> None:
        self.by_number: dict[int, object] = {}
        self.numbers: dict[int, int] = {}

    def refer(self, value) -> list:
        if isinstance(value, types.ModuleType) and value.__name__.partition(".")[0] in sys.stdlib_module_names:
            return ["M", value.__name__]
        number = self.numbers.get(id(value))
        if number is None:
            number = self.numbers[id(value)] = len(self.by_number) + 1
            self.by_number[number] = value
        return ["r", number, type(value).__name__[:100]]

    def resolve(self, tree) -> object:
        value = self.by_number.get(tree[1]) if len(tree) > 1 and type(tree[1]) is int else None
        if value is None:
            raise CodecError("unknown reference")
        return value


def serve_candidate(program_fd: int, requests_fd: int, replies_fd: int) -> None:
    """Run the solution, then answer the test side until it hangs up; never returns."""
    try:
        program = read_text(program_fd)
        namespace = _new_main_module()
        objects = _Objects()
        try:
            exec(compile(program, "<solution>", "exec"), namespace)  # the sandboxed execution
            load_error = None
        except BaseException as exc:  # noqa: BLE001 - reported to the test side
            load_error = exc
            _print_candidate_error(exc, program)
        _answer_requests(namespace, objects, load_error, requests_fd, replies_fd, program)
    finally:
        flush_std_streams()
        os._exit(0)


def _print_candidate_error(exc: BaseException, program: str) -> None:
    try:
        import linecache

        linecache.cache["<solution>"] = (len(program), None, program.splitlines(True), "<solution>")
        sys.stderr.write(traceback_text(exc, _hidden_files()))
    except BaseException:  # noqa: BLE001 - reporting must not fail
        pass


def _answer_requests(namespace: dict, objects: _Objects, load_error, requests_fd: int, replies_fd: int,
                     program: str) -> None:
    while True:
        try:
            request = receive_message(requests_fd)
        except (ChannelClosed, CodecError):
            return
        try:
            reply = _answer(request, namespace, objects, load_error)
        except BaseException as exc:  # noqa: BLE001 - the candidate's own exception
            if not isinstance(exc, (StopIteration, StopAsyncIteration)):
                _print_candidate_error(exc, program)
            reply = _exception_reply(exc, objects)
        send_message(replies_fd, reply)


def _answer(request, namespace: dict, objects: _Objects, load_error) -> list:
    op, args = request[0], request[1:]
    if op == "resolve":
        if load_error is not None:
            raise load_error
        return ["ok", [[name, encode(namespace[name], objects.refer) if name in namespace else None]
                       for name in args[0]]]
    value = _perform(op, args, objects)
    return ["ok", encode(value, objects.refer)]


def _perform(op: str, args: list, objects: _Objects):
    target = objects.resolve(args[0])
    value = lambda tree: decode(tree, objects.resolve)  # noqa: E731
    if op == "call":
        return target(*[value(a) for a in args[1]], **{k: value(v) for k, v in args[2]})
    if op == "getattr":
        return getattr(target, args[1])
    if op == "setattr":
        return setattr(target, args[1], value(args[2]))
    if op == "getitem":
        return target[value(args[1])]
    if op == "setitem":
        target[value(args[1])] = value(args[2])
        return None
    if op == "next":
        return next(target)
    unary = {"bool": bool, "len": len, "iter": iter, "repr": repr, "str": str}
    if op in unary:
        return unary[op](target)
    raise CodecError(f"unknown request {op!r}")


def _exception_reply(exc: BaseException, objects: _Objects) -> list:
    if isinstance(exc, StopIteration) and not exc.args:
        return ["stop"]
    try:
        args = [encode(a, lambda _v: ["n"]) for a in exc.args]
    except BaseException:  # noqa: BLE001 - odd arguments: the text is enough
        args = None
    try:
        text = format_exception(exc)
    except BaseException:  # noqa: BLE001
        text = type(exc).__name__
    return ["raise", type(exc).__name__[:100], args, text[:1000]]


# --------------------------------------------------------------------------- test side


class CandidateEnded(BaseException):
    """The candidate's process stopped answering (it exited, crashed or hung up). A
    BaseException, so that a test's ``except Exception`` cannot swallow it."""


class CandidateBroke(BaseException):
    """The candidate sent something that is not a valid answer."""


# Builtin exceptions a candidate's call may raise on the test side (by name); others
# become a plain Exception subclass of the same name.
_BUILTIN_EXCEPTIONS = {
    name: value for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
}


class _Channel:
    """The test side's end of the two pipes to the candidate."""

    def __init__(self, to_candidate: int, from_candidate: int) -> None:
        self.to_candidate = to_candidate
        self.from_candidate = from_candidate
        self.remotes: dict[int, Remote] = {}
        self.broken: BaseException | None = None

    def request(self, *message):
        """Send a request; return the decoded answer or raise what the candidate raised."""
        if self.broken is not None:
            raise CandidateEnded("the candidate stopped answering") from None
        try:
            send_message(self.to_candidate, list(message))
            reply = receive_message(self.from_candidate)
        except (ChannelClosed, BrokenPipeError) as exc:
            self.broken = exc
            raise CandidateEnded("the candidate stopped answering") from None
        except CodecError as exc:
            raise self._broke(str(exc)) from None
        return self._reply_value(reply)

    def _broke(self, why: str) -> CandidateBroke:
        self.broken = CandidateBroke(why)
        return self.broken

    def _reply_value(self, reply):
        if type(reply) is not list or not reply:
            raise self._broke("malformed reply")
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if reply[0] == "stop":
            raise _Exhausted()
        if reply[0] == "raise" and len(reply) == 4:
            raise self._exception(reply[1], reply[2], reply[3])
        raise self._broke("malformed reply")

    def _exception(self, name, args, text) -> Exception:
        name = name if type(name) is str and name.isidentifier() else "CandidateException"
        message = text.partition(": ")[2] if type(text) is str else ""
        cls = _BUILTIN_EXCEPTIONS.get(name)
        if cls is not None and type(args) is list:
            try:
                return cls(*[self.value(a) for a in args])
            except Exception:  # noqa: BLE001 - fall back to the text
                pass
        if cls is not None:
            return cls(message)
        return type(name, (Exception,), {"__module__": "candidate"})(message)

    def value(self, tree):
        try:
            return decode(tree, self._remote)
        except CodecError as exc:
            raise self._broke(str(exc)) from None

    def _remote(self, tree) -> Remote:
        if tree[0] == "M":
            raise CodecError("a module here")
        number = tree[1] if len(tree) == 3 and type(tree[1]) is int else None
        if number is None or type(tree[2]) is not str:
            raise CodecError("malformed reference")
        remote = self.remotes.get(number)
        if remote is None:
            remote = self.remotes[number] = Remote(self, number, tree[2])
        return remote

    def encode(self, value) -> list:
        return encode(value, self._refer)

    def _refer(self, value) -> list:
        if type(value) is Remote and value._channel is self:
            return ["r", value._number, value._kind]
        raise TypeError(f"a {type(value).__name__} cannot be passed to the candidate")


class _Exhausted(BaseException):
    """The candidate's iterator is exhausted."""


class Remote:
    """An object that lives in the candidate. It has identity equality and hashing of its
    own, so no candidate code decides a comparison; every other use is a request whose
    answer is plain data (or another ``Remote``)."""

    __slots__ = ("_channel", "_number", "_kind")

    def __init__(self, channel: _Channel, number: int, kind: str) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_number", number)
        object.__setattr__(self, "_kind", kind)

    def _ask(self, op: str, *args):
        channel = object.__getattribute__(self, "_channel")
        tree = channel.request(op, ["r", object.__getattribute__(self, "_number"), self._kind], *args)
        return channel.value(tree)

    def __call__(self, *args, **kwargs):
        channel = self._channel
        return self._ask("call", [channel.encode(a) for a in args], [[k, channel.encode(v)] for k, v in kwargs.items()])

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # protocols are looked up on the type, never forwarded
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value) -> None:
        self._ask("setattr", name, self._channel.encode(value))

    def __getitem__(self, key):
        return self._ask("getitem", self._channel.encode(key))

    def __setitem__(self, key, value) -> None:
        self._ask("setitem", self._channel.encode(key), self._channel.encode(value))

    def __bool__(self) -> bool:
        return _checked(self._ask("bool"), bool, self._channel)

    def __len__(self) -> int:
        return _checked(self._ask("len"), int, self._channel)

    def __iter__(self):
        iterator = self._ask("iter")
        if type(iterator) is not Remote:
            raise self._channel._broke("iter() did not give an iterator")
        while True:
            try:
                yield iterator._ask("next")
            except _Exhausted:
                return

    def __contains__(self, item) -> bool:
        return any(element is item or element == item for element in self)  # compared here

    def __repr__(self) -> str:
        return _checked(self._ask("repr"), str, self._channel)

    def __str__(self) -> str:
        return _checked(self._ask("str"), str, self._channel)

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__


def _checked(value, kind, channel: _Channel):
    if type(value) is not kind:
        raise channel._broke(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def names_used(code: types.CodeType) -> set[str]:
    """Every name a code object (and the code nested in it) may look up."""
    names = set(code.co_names) | set(code.co_freevars)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= names_used(constant)
    return names


def run_check(spec_fd: int, to_candidate: int, from_candidate: int, verdict_fd: int) -> bool:
    """The trusted side of one check: prelude, solution names, hidden tests, the call.
    Writes "ok" to ``verdict_fd`` only when the call returned. Returns False when this
    process should not serve another check (it ran out of memory)."""
    spec = json.loads(read_text(spec_fd))
    channel = _Channel(to_candidate, from_candidate)
    sources = {"<prelude>": spec["prelude"], "<tests>": spec["tests"], "<check>": spec["call"]}
    healthy = True
    try:
        _check(spec, channel)
        record = b"ok" if channel.broken is None else _broken_record(channel.broken)
    except (CandidateEnded, CandidateBroke) as exc:
        record = _broken_record(exc)
    except BaseException as exc:  # noqa: BLE001 - any failure of the tests is a "fail"
        healthy = not isinstance(exc, MemoryError)
        record = _broken_record(channel.broken) if channel.broken else _safe_failure_record(exc, sources)
    flush_std_streams()
    os.write(verdict_fd, record[:MAX_RECORD])
    return healthy


def serve_tests(control_fd: int, checks_per_process: int) -> None:
    """A tests worker: runs one check after another as the fork server hands them over
    (a message with the check's descriptors), answering each with the CPU it used.
    Only trusted code runs here; the candidate reaches it through data alone. Leaves
    after ``checks_per_process`` checks or a MemoryError, so memory stays fresh."""
    import resource
    import socket
    import time

    control = socket.socket(fileno=control_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for index in range(checks_per_process):
        data, fds, _, _ = socket.recv_fds(control, 4096, 8)
        if not data or len(fds) != 5:
            break
        spec, to_candidate, from_candidate, verdict, output = fds
        started = time.process_time()
        os.dup2(output, 1)
        os.dup2(output, 2)
        try:
            healthy = run_check(spec, to_candidate, from_candidate, verdict)
        finally:
            flush_std_streams()
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            for fd in (to_candidate, from_candidate, verdict, output):
                os.close(fd)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        last = index == checks_per_process - 1  # the server must not hand over another check
        report = {"cpu": time.process_time() - started, "maxrss_kb": usage.ru_maxrss, "retire": last or not healthy}
        control.send(json.dumps(report).encode())
        if not healthy:
            break
    os._exit(0)


def _broken_record(exc: BaseException) -> bytes:
    """Even if a test swallowed it, a candidate that stopped answering never passes."""
    if isinstance(exc, (CandidateEnded, ChannelClosed, BrokenPipeError)):
        return b"ended\nthe candidate stopped answering"
    return b"fail\nthe candidate broke the protocol: " + str(exc)[:300].encode("utf-8", "replace")


def _check(spec: dict, channel: _Channel) -> None:
    namespace = _new_main_module()
    exec(compile(spec["prelude"], "<prelude>", "exec"), namespace)
    tests = compile(spec["tests"], "<tests>", "exec")
    call = compile(spec["call"], "<check>", "exec")
    entry = spec["entry_point"]
    trusted = set(namespace) | set(vars(builtins))
    wanted = sorted(((names_used(tests) | names_used(call)) - trusted) | {entry})
    resolved = channel.request("resolve", wanted)
    if type(resolved) is not list:
        raise channel._broke("malformed names")
    bound = dict(_bind(channel, resolved, set(wanted), entry))
    if entry not in bound:
        raise NameError(f"the solution does not define {entry}")
    namespace.update(bound)
    exec(tests, namespace)
    exec(call, namespace)


def _bind(channel: _Channel, resolved: list, wanted: set, entry_point: str):
    """(name, value) for each name the solution defines; modules are imported here."""
    for item in resolved:
        if type(item) is not list or len(item) != 2 or item[0] not in wanted:
            raise channel._broke("malformed names")
        name, tree = item
        if tree is None:
            continue
        if type(tree) is list and len(tree) == 2 and tree[0] == "M" and type(tree[1]) is str:
            if name == entry_point:
                raise channel._broke("the entry point is a module")
            yield name, _stdlib_module(tree[1], channel)
        else:
            yield name, channel.value(tree)


# Standard modules whose import does something (opens a browser, prints, starts a GUI):
# the candidate may not make the tests' process import them.
_ACTIVE_MODULES = frozenset({"antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle",
                             "turtledemo", "webbrowser", "pydoc", "site", "ensurepip", "venv", "lib2to3"})


def _stdlib_module(name: str, channel: _Channel) -> types.ModuleType:
    """A module the solution imported and the tests use by the same name: the tests'
    process imports its own copy (only standard, inactive modules)."""
    top = name.partition(".")[0]
    if top not in sys.stdlib_module_names or top in _ACTIVE_MODULES:
        raise channel._broke(f"not a module the tests may import: {name[:100]}")
    return sys.modules.get(name) or importlib.import_module(name)
