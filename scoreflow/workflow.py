"""Generated workflows: extraction, checking against the language, and interpretation.

The generator's workflows are untrusted text (SPEC section 9: the original imported
them). Here a workflow is parsed with ``ast`` and every node is checked against the
allow-list of ``docs/workflow_language.md``: a node type the checker does not know is
rejected, never let through. The accepted tree is then *interpreted* by a tiny
evaluator — nothing is imported, ``exec``-ed, ``eval``-ed or compiled, and no file is
written — so the only effects a workflow can have are awaited calls to the operators
of its benchmark. Loops are bounded by constants and every value is size-capped, so a
run is bounded; ``run_with_limit`` bounds the time slow operators may take.

The language follows what the original's generator writes (its ``__init__`` idiom,
``return await``, ``self.problem``, ``asyncio.gather`` of operator calls, a few string
methods and builtins, ``try``/``except Exception``), so that validity rates are not
decided by the checker. The interpreter's own limits are never catchable by a
workflow's ``except``: they, cancellation and executor outages always stop the run.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import difflib
import re
import textwrap
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, Union

from scoreflow.executor.client import ExecutorUnavailable
from scoreflow.operators import OPERATORS, Operator, OperatorContext, RequestCapExceeded
from scoreflow.runclock import current_clock, run_timed
from scoreflow.sandbox import SandboxUnavailable

__all__ = [
    "CheckedWorkflow",
    "WorkflowLimitExceeded",
    "WorkflowRejected",
    "WorkflowRuntimeError",
    "body_similarity",
    "check_workflow",
    "extract_graph",
    "run_with_limit",
]

T = TypeVar("T")

# ------------------------------------------------------------------ limits

MAX_SOURCE_CHARS = 20_000  # longer workflows are rejected before parsing
MAX_AST_DEPTH = 50  # deeper syntax trees are rejected before the recursive check
MAX_BLOCK_DEPTH = 3  # nested for/if/try blocks in run_workflow
MAX_LOOP_DEPTH = 2  # nested for loops and list comprehensions
DEFAULT_MAX_RANGE = 3  # range(N): 1 <= N <= max_range (the original's code rule; math/QA use 8)
MAX_RANGE = DEFAULT_MAX_RANGE  # the old name of the default
MAX_RANGE_CEILING = 8  # the largest max_range a caller may ask for (the original's graph-size rule)
MAX_STR_CHARS = 200_000  # any one string a workflow builds or receives
MAX_LIST_ITEMS = 1_000  # any one list
MAX_WORK = 20_000_000  # one run: characters built, received or compared, plus list items built
MAX_OPERATOR_CALLS = 50  # operator calls in one run
MAX_INT = 10**18  # integers beyond this magnitude stop the run
MAX_ERROR_CHARS = 2_000  # str(e) of a caught exception is cut to this length

BUILTINS = ("len", "str", "max", "min", "sorted", "sum")  # the callable builtins; range only heads loops
_BUILTIN_KEYWORDS: dict[str, frozenset[str]] = {
    "max": frozenset({"key"}), "min": frozenset({"key"}), "sorted": frozenset({"key", "reverse"}),
}
_ONE_ARGUMENT = frozenset({"len", "str", "sorted", "sum"})
# str methods: how many arguments, and whether they must be string constants (non-empty: "nonempty")
STRING_METHODS: dict[str, tuple[tuple[int, ...], str]] = {
    "strip": ((0, 1), "constant"), "lstrip": ((0, 1), "constant"), "rstrip": ((0, 1), "constant"),
    "lower": ((0,), "constant"), "upper": ((0,), "constant"), "replace": ((2,), "constant"),
    "split": ((1,), "nonempty"), "join": ((1,), "any"),
}
_TEXT_METHODS: dict[str, Callable[..., str]] = {
    "strip": str.strip, "lstrip": str.lstrip, "rstrip": str.rstrip, "lower": str.lower, "upper": str.upper,
}
RESERVED_NAMES = frozenset({"self", "range", "asyncio", "create", "operator", *BUILTINS})  # never assignable
RESERVED_ATTRS = frozenset({"config", "problem", "run_workflow"})  # never operator attributes

Value = Union[str, int, float, bool, None, list]

_COMPARE_OPS: dict[type, str] = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.In: "in", ast.NotIn: "not in",
}
_OP_SYMBOLS: dict[type, str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
    ast.Pow: "**", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
    ast.BitXor: "^", ast.BitAnd: "&", ast.Is: "is", ast.IsNot: "is not", ast.Invert: "~",
    ast.UAdd: "+", ast.USub: "-",
}
_KINDS: dict[type, str] = {
    ast.Import: "import", ast.ImportFrom: "import", ast.While: "while loop",
    ast.Try: "try statement", ast.TryStar: "try ... except* statement", ast.With: "with statement",
    ast.AsyncWith: "with statement", ast.AsyncFor: "async for loop", ast.Global: "global statement",
    ast.Nonlocal: "nonlocal statement", ast.Delete: "del statement", ast.Raise: "raise statement",
    ast.Assert: "assert statement", ast.FunctionDef: "function definition",
    ast.AsyncFunctionDef: "function definition", ast.ClassDef: "class definition",
    ast.Lambda: "lambda", ast.NamedExpr: "assignment expression (:=)", ast.Yield: "yield",
    ast.YieldFrom: "yield", ast.Starred: "starred expression", ast.IfExp: "conditional expression",
    ast.Dict: "dict", ast.Set: "set", ast.Tuple: "tuple", ast.DictComp: "dict comprehension",
    ast.SetComp: "set comprehension", ast.GeneratorExp: "generator expression", ast.Slice: "slicing",
    ast.Break: "break statement", ast.Continue: "continue statement",
    ast.AnnAssign: "annotated assignment", ast.Match: "match statement",
}


# ------------------------------------------------------------------ errors


def _with_line(reason: str, line: int | None) -> str:
    return f"line {line}: {reason}" if line else reason


class WorkflowRejected(Exception):
    """A workflow outside the language; ``reason`` says where and why (one line)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.line = line
        self.reason = _with_line(reason, line)
        super().__init__(self.reason)


class WorkflowRuntimeError(Exception):
    """An accepted workflow failed while running where Python would raise too (a type
    error, an index out of range, ...): a workflow's ``except`` may catch it."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.line = line
        self.reason = _with_line(reason, line)
        super().__init__(self.reason)


class WorkflowLimitExceeded(WorkflowRuntimeError):
    """A run hit one of the interpreter's limits (a size cap, the work budget, the
    operator-call cap, a value the language does not have): it always stops the run,
    whatever ``except`` the workflow wrote."""


# Exceptions a workflow's ``except`` never sees: the interpreter's limits, the run's caps,
# executor and sandbox outages (those are not the workflow's failures: the stage retries
# or stops on them), time limits; cancellation is a BaseException and passes anyway.
_UNCATCHABLE: tuple[type[BaseException], ...] = (
    WorkflowLimitExceeded, RequestCapExceeded, ExecutorUnavailable, SandboxUnavailable,
    TimeoutError, RecursionError, MemoryError,
)


def _catchable(error: BaseException) -> bool:
    """Whether ``except Exception:`` in a workflow may handle ``error`` (what an operator raised)."""
    return isinstance(error, Exception) and not isinstance(error, _UNCATCHABLE)


def _line(node: ast.AST | None) -> int | None:
    return getattr(node, "lineno", None)


def _kind(node: ast.AST) -> str:
    return _KINDS.get(type(node), f"{type(node).__name__} node")


def _dotted(node: ast.AST) -> str:
    """A readable callee or attribute path (``os.system``, ``.format``) for reasons."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(node: ast.AST | None, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_self_attr(node: ast.AST, attr: str | None = None) -> bool:
    return (isinstance(node, ast.Attribute) and _is_name(node.value, "self")
            and (attr is None or node.attr == attr))


def _is_gather(node: ast.AST) -> bool:
    """``asyncio.gather(...)`` (the call, not yet awaited)."""
    func = getattr(node, "func", None)
    return (isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "gather"
            and _is_name(func.value, "asyncio"))


def _is_string_constant(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


# ------------------------------------------------------------------ extraction


_GRAPH_OPEN = re.compile(r"<graph>", re.IGNORECASE)
_GRAPH_CLOSE = re.compile(r"</graph>", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:(?:python|py)[ \t]*)?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)  # no nested optional blanks: linear


def extract_graph(text: str) -> str | None:
    """The workflow between ``<graph>`` and ``</graph>`` (to the end when unclosed: the
    generator stops at the closing tag); a fenced block inside is unwrapped. None: no graph."""
    opening = _GRAPH_OPEN.search(text)
    if opening is None:
        return None
    body = text[opening.end():]
    closing = _GRAPH_CLOSE.search(body)
    if closing is not None:
        body = body[: closing.start()]
    fenced = _FENCE.search(body)
    if fenced is not None:
        body = fenced.group(1)
    body = textwrap.dedent(body.strip("\r\n")).strip()
    return body + "\n" if body else ""


def body_similarity(body_a: str, body_b: str) -> float:
    """SequenceMatcher ratio of two run_workflow bodies (SPEC section 4's template check)."""
    return difflib.SequenceMatcher(None, body_a, body_b).ratio()


# ------------------------------------------------------------------ checking


@dataclass(frozen=True)
class _Scope:
    """What a run_workflow statement may see: names surely assigned, enclosing loop names,
    and the exception names of enclosing ``except ... as e`` handlers (readable as str(e))."""

    assigned: frozenset[str]
    loops: frozenset[str] = frozenset()
    depth: int = 0  # enclosing for/if/try blocks
    loop_depth: int = 0  # enclosing for loops and comprehensions
    errors: frozenset[str] = frozenset()

    def inner(self, loop_name: str | None = None) -> _Scope:
        if loop_name is None:
            return replace(self, depth=self.depth + 1)
        return replace(self, assigned=self.assigned | {loop_name}, loops=self.loops | {loop_name},
                       depth=self.depth + 1, loop_depth=self.loop_depth + 1)


_Flow = tuple[frozenset[str] | None, bool]  # (names surely assigned after a statement, it always returns)


def _merge(before: frozenset[str], first: tuple[frozenset[str], bool], second: tuple[frozenset[str], bool]) -> _Flow:
    """Names surely assigned after two alternative branches (if/else, try/except)."""
    (one, one_returns), (two, two_returns) = first, second
    if one_returns and two_returns:
        return before, True
    if one_returns or two_returns:  # only the branch that falls through counts
        return (two if one_returns else one), False
    return (one & two) | before, False


class _Checker:
    """Validates a parsed workflow node by node against the language's allow-list."""

    def __init__(self, operators: Sequence[str], max_range: int) -> None:
        unknown = [name for name in operators if name not in OPERATORS]
        if unknown:
            raise ValueError(f"unknown operator names in the allow-list: {unknown}")
        if not (_is_int(max_range) and 1 <= max_range <= MAX_RANGE_CEILING):
            raise ValueError(f"max_range must be an integer from 1 to {MAX_RANGE_CEILING} (got {max_range!r})")
        self.allowed = tuple(operators)
        self.max_range = max_range
        self.bound: dict[str, str] = {}  # attribute -> operator name
        self.init_attrs: set[str] = set()  # self.problem / self.config once bound in __init__
        self.seen: set[int] = set()

    def see(self, *nodes: ast.AST) -> None:
        self.seen.update(id(node) for node in nodes)

    def reject(self, node: ast.AST | None, reason: str) -> WorkflowRejected:
        return WorkflowRejected(reason, _line(node))

    def unseen_check(self, tree: ast.AST) -> None:
        """Every node of the tree must have been accepted explicitly (contexts aside)."""
        for node in ast.walk(tree):
            if id(node) not in self.seen and not isinstance(node, ast.expr_context):
                raise self.reject(node, f"unexpected {_kind(node)}")

    # -------------------------------------------------------------- class

    def module(self, tree: ast.Module) -> ast.AsyncFunctionDef:
        self.see(tree)
        if not tree.body:
            raise self.reject(None, "no class Workflow")
        for index, node in enumerate(tree.body):
            if index > 0 or not isinstance(node, ast.ClassDef):
                where = "a second class is not allowed" if isinstance(node, ast.ClassDef) else (
                    f"{_kind(node)} outside class Workflow is not allowed")
                raise self.reject(node, f"{where} (the workflow is one class Workflow)")
        return self.class_def(tree.body[0])

    def class_def(self, node: ast.ClassDef) -> ast.AsyncFunctionDef:
        self.see(node)
        if node.name != "Workflow":
            raise self.reject(node, f"the class must be named Workflow, not {node.name!r}")
        if node.decorator_list:
            raise self.reject(node, "decorators are not allowed")
        if node.bases:
            raise self.reject(node, "class Workflow may not have base classes")
        if node.keywords:
            raise self.reject(node, "class Workflow may not have keywords (metaclass=...)")
        members = list(node.body)
        if members and _is_docstring(members[0]):
            self.see(members[0], members[0].value)
            members = members[1:]
        for index, member in enumerate(members):
            self.member(index, member)
        if len(members) < 2:
            raise self.reject(node, "class Workflow needs def __init__ and async def run_workflow(self)")
        return members[1]

    def member(self, index: int, node: ast.stmt) -> None:
        if index == 0 and isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return self.init(node)
        if index == 1 and isinstance(node, ast.AsyncFunctionDef) and node.name == "run_workflow":
            return self.run_workflow(node)
        if isinstance(node, ast.FunctionDef) and node.name == "run_workflow":
            raise self.reject(node, "run_workflow must be async def")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("__init__", "run_workflow"):
            raise self.reject(node, "class Workflow defines __init__, then async run_workflow, once each")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            raise self.reject(node, f"method {node.name!r} is not allowed (only __init__ and run_workflow)")
        raise self.reject(node, f"{_kind(node)} is not allowed in class Workflow")

    def signature(self, node: ast.FunctionDef | ast.AsyncFunctionDef, names: list[str]) -> None:
        self.see(node, node.args)
        args = node.args
        if node.decorator_list:
            raise self.reject(node, "decorators are not allowed")
        extra = args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg or args.defaults or args.kw_defaults
        if extra or [a.arg for a in args.args] != names or node.type_comment:
            raise self.reject(node, f"the signature must be {node.name}({', '.join(names)})")
        for arg in args.args:
            if arg.annotation is not None or arg.type_comment:
                raise self.reject(arg, "argument annotations are not allowed")
            self.see(arg)

    def init(self, node: ast.FunctionDef) -> None:
        self.signature(node, ["self", "config", "problem"])
        returns = node.returns
        if returns is not None:
            if not (isinstance(returns, ast.Constant) and returns.value is None):
                raise self.reject(node, "__init__ may only be annotated -> None")
            self.see(returns)
        body = list(node.body)
        if _is_docstring(body[0]):
            self.see(body[0], body[0].value)
            body = body[1:]
        for stmt in body:
            self.binding(stmt)
        if not self.bound:
            raise self.reject(node, "__init__ binds no operator")

    def binding(self, stmt: ast.stmt) -> None:
        """``self.<attr> = operator.<Name>(config, problem)``, ``self.problem = problem`` or
        ``self.config = create(config)`` (the original's idiom; the last two at most once each)."""
        shape = "__init__ may only contain self.<attr> = operator.<Name>(config, problem)"
        if not isinstance(stmt, ast.Assign):
            raise self.reject(stmt, f"{_kind(stmt)} is not allowed in __init__ ({shape})")
        target = stmt.targets[0]
        if len(stmt.targets) != 1 or stmt.type_comment or not _is_self_attr(target):
            raise self.reject(stmt, shape)
        self.see(stmt, target, target.value)
        value = stmt.value
        if target.attr == "problem" and _is_name(value, "problem"):
            return self.init_attr(stmt, "problem", value)
        if target.attr == "config" and self.is_create(value):
            return self.init_attr(stmt, "config", value, value.func, value.args[0])
        if self.mentions_create(value):
            raise self.reject(stmt, "create may only be used as self.config = create(config)")
        self.operator_binding(stmt, target.attr, value, shape)

    @staticmethod
    def is_create(node: ast.expr) -> bool:
        return (isinstance(node, ast.Call) and _is_name(node.func, "create") and not node.keywords
                and len(node.args) == 1 and _is_name(node.args[0], "config"))

    @staticmethod
    def mentions_create(node: ast.expr) -> bool:
        return any(_is_name(n, "create") for n in ast.walk(node))

    def init_attr(self, stmt: ast.stmt, attr: str, *nodes: ast.AST) -> None:
        if attr in self.init_attrs:
            raise self.reject(stmt, f"self.{attr} is bound twice")
        self.see(*nodes)
        self.init_attrs.add(attr)

    def operator_binding(self, stmt: ast.stmt, attr: str, value: ast.expr, shape: str) -> None:
        func = getattr(value, "func", None)
        if not (isinstance(value, ast.Call) and isinstance(func, ast.Attribute) and _is_name(func.value, "operator")):
            raise self.reject(stmt, shape)
        name, args = func.attr, value.args
        if value.keywords or len(args) != 2 or not (self.init_argument(args[0], "config")
                                                    and self.init_argument(args[1], "problem")):
            raise self.reject(stmt, f"operator.{name} must be constructed as operator.{name}(config, problem) "
                                    "(or with self.config and self.problem once bound)")
        if attr.startswith("_") or attr in RESERVED_ATTRS:
            hint = " (self.config = create(config) only)" if attr == "config" else ""
            raise self.reject(stmt, f"attribute name self.{attr} is not allowed{hint}")
        if attr in self.bound:
            raise self.reject(stmt, f"self.{attr} is bound twice")
        if name not in OPERATORS:
            raise self.reject(stmt, f"unknown operator {name!r}")
        if name not in self.allowed:
            allowed = ", ".join(self.allowed)
            raise self.reject(stmt, f"operator {name!r} is not available here (allowed: {allowed})")
        self.see(value, func, func.value, *args, *(a.value for a in args if isinstance(a, ast.Attribute)))
        self.bound[attr] = name

    def init_argument(self, node: ast.expr, name: str) -> bool:
        """``config`` / ``problem``, or ``self.config`` / ``self.problem`` bound above."""
        return _is_name(node, name) or (_is_self_attr(node, name) and name in self.init_attrs)

    def run_workflow(self, node: ast.AsyncFunctionDef) -> None:
        self.signature(node, ["self"])
        if node.returns is not None:
            raise self.reject(node, "run_workflow may not have a return annotation")
        body = list(node.body)
        if _is_docstring(body[0]):
            self.see(body[0], body[0].value)
            body = body[1:]
        self.block(body, _Scope(frozenset()))

    # -------------------------------------------------------------- statements

    def block(self, stmts: list[ast.stmt], scope: _Scope) -> tuple[frozenset[str], bool]:
        """Check statements in order; returns (names surely assigned after, always returns)."""
        assigned: frozenset[str] = scope.assigned
        returned = False
        for stmt in stmts:
            handler = self.STATEMENTS.get(type(stmt))
            if handler is None:
                raise self.reject(stmt, f"{_kind(stmt)} is not allowed")
            self.see(stmt)
            after, always = handler(self, stmt, replace(scope, assigned=assigned))
            assigned = after if after is not None else assigned
            returned = returned or always
        return assigned, returned

    def assign(self, node: ast.Assign, scope: _Scope) -> _Flow:
        if len(node.targets) != 1:
            raise self.reject(node, "chained assignment is not allowed")
        if node.type_comment:
            raise self.reject(node, "type comments are not allowed")
        name = self.target(node.targets[0], scope)
        self.value_or_await(node.value, scope, "assign")
        return scope.assigned | {name}, False

    def aug_assign(self, node: ast.AugAssign, scope: _Scope) -> _Flow:
        if not isinstance(node.op, ast.Add):
            raise self.reject(node, f"operator {_OP_SYMBOLS.get(type(node.op), '?')}= is not allowed")
        self.see(node.op)
        name = self.target(node.target, scope)
        if name not in scope.assigned:
            raise self.reject(node, f"name {name!r} used before assignment")
        if isinstance(node.value, ast.Await):
            raise self.reject(node, "+= await ... is not allowed; assign the operator's result to a name first")
        self.expr(node.value, scope)
        return scope.assigned, False

    def expr_stmt(self, node: ast.Expr, scope: _Scope) -> _Flow:
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "append":
            self.append(value, scope)
            return None, False
        if isinstance(value, ast.Await):
            raise self.reject(node, "an operator's result must be assigned to a name or appended to a list "
                                    "(or returned: return await ...)")
        if _is_docstring(node):
            raise self.reject(node, "a string statement is allowed only as the docstring")
        self.expr(value, scope)  # rejects with the specific reason (a call, a yield, ...)
        raise self.reject(node, "expression statements are not allowed")

    def append(self, call: ast.Call, scope: _Scope) -> None:
        func = call.func
        if not isinstance(func.value, ast.Name) or func.value.id in RESERVED_NAMES:
            raise self.reject(call, f"call to {_dotted(func) or '.append'}() is not allowed")
        if len(call.args) != 1 or call.keywords or isinstance(call.args[0], ast.Starred):
            raise self.reject(call, ".append() takes exactly one positional argument")
        if func.value.id in scope.errors:
            raise self.reject(call, f"the exception name {func.value.id!r} may be used only as str({func.value.id})")
        if func.value.id not in scope.assigned:
            raise self.reject(call, f"name {func.value.id!r} used before assignment")
        self.see(call, func, func.value)
        self.value_or_await(call.args[0], scope, "append")

    def for_loop(self, node: ast.For, scope: _Scope) -> _Flow:
        if node.orelse:
            raise self.reject(node, "for ... else is not allowed")
        if node.type_comment:
            raise self.reject(node, "type comments are not allowed")
        self.range_call(node.iter)
        name = self.target(node.target, scope)
        inner = self.nested(node, scope, name)
        return self.block(node.body, inner)  # N >= 1: the body always runs, the loop name stays bound

    def nested(self, node: ast.AST, scope: _Scope, loop_name: str | None) -> _Scope:
        inner = scope.inner(loop_name)
        if inner.depth > MAX_BLOCK_DEPTH:
            raise self.reject(node, f"blocks nest more than {MAX_BLOCK_DEPTH} deep")
        if inner.loop_depth > MAX_LOOP_DEPTH:
            raise self.reject(node, f"loops nest more than {MAX_LOOP_DEPTH} deep")
        return inner

    def if_stmt(self, node: ast.If, scope: _Scope) -> _Flow:
        self.expr(node.test, scope)
        then = self.block(node.body, self.nested(node, scope, None))
        if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):  # elif: same depth
            self.see(node.orelse[0])
            other = self.if_stmt(node.orelse[0], scope)
        elif node.orelse:
            other = self.block(node.orelse, self.nested(node, scope, None))
        else:
            other = scope.assigned, False
        return _merge(scope.assigned, then, other)

    def try_stmt(self, node: ast.Try, scope: _Scope) -> _Flow:
        """``try:`` with one ``except Exception[ as e]:`` (or bare ``except:``) handler; the
        handler sees only names assigned before the try (the body may fail anywhere)."""
        if node.finalbody:
            raise self.reject(node, "try ... finally is not allowed")
        if node.orelse:
            raise self.reject(node, "try ... else is not allowed")
        if len(node.handlers) != 1:
            raise self.reject(node, "a try has exactly one handler: except Exception: (or a bare except:)")
        handler = node.handlers[0]
        self.exception_type(handler)
        inner = self.nested(node, scope, None)
        body = self.block(node.body, inner)
        if handler.name is not None:
            self.exception_name(handler, scope)
            inner = replace(inner, errors=inner.errors | {handler.name})
        self.see(handler)
        caught = self.block(handler.body, inner)
        return _merge(scope.assigned, body, caught)

    def exception_type(self, handler: ast.ExceptHandler) -> None:
        kind = handler.type
        if kind is None:
            return
        if not _is_name(kind, "Exception"):
            written = _dotted(kind) or _kind(kind)
            raise self.reject(handler, f"only except Exception: (or a bare except:) is allowed, not except {written}")
        self.see(kind)

    def exception_name(self, handler: ast.ExceptHandler, scope: _Scope) -> None:
        name = handler.name
        if name in RESERVED_NAMES or name.startswith("__"):
            raise self.reject(handler, f"name {name!r} cannot be assigned")
        if name in scope.assigned or name in scope.errors:
            raise self.reject(handler, f"except ... as {name}: {name!r} is already a name (choose another)")

    def return_stmt(self, node: ast.Return, scope: _Scope) -> _Flow:
        if node.value is not None:
            self.value_or_await(node.value, scope, "return")
        return None, True

    def pass_stmt(self, node: ast.Pass, scope: _Scope) -> _Flow:
        return None, False

    STATEMENTS: dict[type, Callable[..., _Flow]] = {
        ast.Assign: assign, ast.AugAssign: aug_assign, ast.Expr: expr_stmt, ast.For: for_loop,
        ast.If: if_stmt, ast.Try: try_stmt, ast.Return: return_stmt, ast.Pass: pass_stmt,
    }

    def target(self, node: ast.expr, scope: _Scope) -> str:
        """An assignment or loop target: a plain, non-reserved, non-dunder name."""
        if not isinstance(node, ast.Name):
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                path = _dotted(node) or _kind(node)
                raise self.reject(node, f"assignment to {path} is not allowed (assign plain names only)")
            raise self.reject(node, f"{_kind(node)} as an assignment target is not allowed")
        if node.id in RESERVED_NAMES or node.id.startswith("__"):
            raise self.reject(node, f"name {node.id!r} cannot be assigned")
        if node.id in scope.errors:
            raise self.reject(node, f"the exception name {node.id!r} cannot be assigned")
        self.see(node)
        return node.id

    def range_call(self, node: ast.expr) -> int:
        """``range(N)`` with an integer constant 1 <= N <= max_range."""
        if not (isinstance(node, ast.Call) and _is_name(node.func, "range")):
            raise self.reject(node, "loops must iterate over range(N) with N an integer constant")
        if len(node.args) != 1 or node.keywords:
            raise self.reject(node, "range() takes exactly one argument here")
        bound = node.args[0]
        if not (isinstance(bound, ast.Constant) and _is_int(bound.value)):
            raise self.reject(node, f"range() bound must be an integer constant from 1 to {self.max_range}")
        if bound.value > self.max_range:
            raise self.reject(node, f"range({bound.value}) exceeds {self.max_range}")
        if bound.value < 1:
            raise self.reject(node, f"range({bound.value}) must be at least 1")
        self.see(node, node.func, bound)
        return bound.value

    # -------------------------------------------------------------- awaits

    def value_or_await(self, node: ast.expr, scope: _Scope, where: str) -> None:
        """The right side of ``name = ...``, the argument of ``.append(...)``, a returned value."""
        if not isinstance(node, ast.Await):
            return self.expr(node, scope)
        if _is_gather(node.value):
            if where == "append":
                raise self.reject(node, "append(await asyncio.gather(...)) would nest lists; "
                                        "assign the gathered list to a name")
            return self.gather(node, scope)
        self.await_call(node, scope)

    def await_call(self, node: ast.Await, scope: _Scope) -> None:
        """``await self.<attr>(...)`` for a bound operator with its keyword arguments."""
        call = node.value
        if _is_gather(call):
            raise self.reject(node, "await asyncio.gather(...) is allowed only as name = await ... "
                                    "or return await ...")
        if not (isinstance(call, ast.Call) and _is_self_attr(call.func)):
            raise self.reject(node, "await may only be applied to self.<operator>(...) or asyncio.gather(...)")
        self.see(node)
        self.bound_call(call, scope)

    def bound_call(self, call: ast.expr, scope: _Scope) -> None:
        """``self.<attr>(...)``: a bound operator called with its keyword arguments."""
        func = getattr(call, "func", None)
        if not (isinstance(call, ast.Call) and _is_self_attr(func)):
            raise self.reject(call, "asyncio.gather() takes operator calls self.<operator>(...) only")
        if func.attr == "run_workflow":
            raise self.reject(call, "recursive call to self.run_workflow() is not allowed")
        if func.attr not in self.bound:
            raise self.reject(call, f"self.{func.attr} is not a bound operator")
        self.see(call, func, func.value)
        self.operator_arguments(call, OPERATORS[self.bound[func.attr]], scope)

    def gather(self, node: ast.Await, scope: _Scope) -> None:
        """``await asyncio.gather(self.a(...), self.b(...))`` or
        ``await asyncio.gather(*[self.a(...) for _ in range(N)])`` (or ``*[self.a(...), ...]``)."""
        call = node.value
        self.see(node, call, call.func, call.func.value)
        if call.keywords:
            raise self.reject(node, "asyncio.gather() takes operator calls only (no keyword arguments "
                                    "such as return_exceptions=)")
        if not call.args:
            raise self.reject(node, "asyncio.gather() needs at least one operator call")
        if len(call.args) == 1 and isinstance(call.args[0], ast.Starred):
            return self.gather_unpacked(call.args[0], scope)
        for arg in call.args:
            if isinstance(arg, ast.Starred):
                raise self.reject(node, "asyncio.gather(*...) takes one starred list and nothing else")
            self.gathered_call(arg, scope)

    def gather_unpacked(self, starred: ast.Starred, scope: _Scope) -> None:
        self.see(starred)
        inner = starred.value
        if isinstance(inner, ast.ListComp):
            self.see(inner)
            return self.gathered_call(inner.elt, self.comprehension(inner, scope))
        if isinstance(inner, ast.List) and inner.elts:
            self.see(inner)
            for element in inner.elts:
                self.gathered_call(element, scope)
            return None
        raise self.reject(starred, "asyncio.gather(*...) needs [self.<operator>(...) for _ in range(N)] "
                                   "or a list of operator calls")

    def gathered_call(self, node: ast.expr, scope: _Scope) -> None:
        if isinstance(node, ast.Await):
            raise self.reject(node, "inside asyncio.gather(...) call self.<operator>(...) without await")
        self.bound_call(node, scope)

    def operator_arguments(self, call: ast.Call, op: type[Operator], scope: _Scope) -> None:
        if any(isinstance(a, ast.Starred) for a in call.args):
            raise self.reject(call, "starred arguments are not allowed")
        if len(call.args) > len(op.keywords):
            raise self.reject(call, f"{op.name} takes at most {len(op.keywords)} positional argument(s)")
        given = set(op.keywords[: len(call.args)])
        for keyword in call.keywords:
            if keyword.arg is None:
                raise self.reject(call, "**keyword unpacking is not allowed")
            if keyword.arg not in op.keywords:
                allowed = ", ".join(op.keywords) or "none"
                raise self.reject(call, f"unknown keyword argument {keyword.arg!r} for {op.name} (allowed: {allowed})")
            if keyword.arg in given:
                raise self.reject(call, f"argument {keyword.arg!r} given twice")
            given.add(keyword.arg)
            self.see(keyword)
        for value in [*call.args, *(k.value for k in call.keywords)]:
            self.expr(value, scope)

    def comprehension(self, node: ast.ListComp, scope: _Scope) -> _Scope:
        """``[<element> for <name or _> in range(N)]``: the scope its element sees."""
        if len(node.generators) != 1:
            raise self.reject(node, "a list comprehension has exactly one for clause")
        gen = node.generators[0]
        if gen.is_async or gen.ifs:
            raise self.reject(node, "list comprehensions may not have if clauses or async for")
        self.range_call(gen.iter)
        loop_name = self.target(gen.target, scope)
        inner = replace(scope, assigned=scope.assigned | {loop_name}, loops=scope.loops | {loop_name},
                        loop_depth=scope.loop_depth + 1)
        if inner.loop_depth > MAX_LOOP_DEPTH:
            raise self.reject(node, f"loops nest more than {MAX_LOOP_DEPTH} deep")
        self.see(gen)
        return inner

    # -------------------------------------------------------------- expressions

    def expr(self, node: ast.expr, scope: _Scope) -> None:
        handler = self.EXPRESSIONS.get(type(node))
        if handler is None:
            raise self.reject(node, f"{_kind(node)} is not allowed")
        self.see(node)
        handler(self, node, scope)

    def constant(self, node: ast.Constant, scope: _Scope) -> None:
        value = node.value
        if not (value is None or isinstance(value, (str, int, float))) or isinstance(value, complex):
            raise self.reject(node, f"{type(value).__name__} constants are not allowed")
        if _is_int(value) and abs(value) > MAX_INT:
            raise self.reject(node, f"integer constant exceeds {MAX_INT}")

    def name(self, node: ast.Name, scope: _Scope) -> None:
        if node.id.startswith("__"):
            raise self.reject(node, f"name {node.id!r} is not allowed")
        if node.id in scope.errors:
            raise self.reject(node, f"the exception name {node.id!r} may be used only as str({node.id}) "
                                    "or in an f-string")
        if node.id == "self":
            raise self.reject(node, "self may only be used as await self.<operator>(...) or self.problem")
        if node.id == "asyncio":
            raise self.reject(node, "asyncio may only be used as await asyncio.gather(...) of operator calls")
        if node.id in BUILTINS or node.id == "range":
            raise self.reject(node, f"{node.id} may only be called")
        if node.id in RESERVED_NAMES:
            raise self.reject(node, f"{node.id} may only be used in __init__")
        if node.id not in scope.assigned:
            raise self.reject(node, f"name {node.id!r} used before assignment")

    def error_name(self, node: ast.expr, scope: _Scope) -> bool:
        """An ``except ... as e`` name where it may be read (``str(e)``, an f-string field)."""
        if isinstance(node, ast.Name) and node.id in scope.errors:
            self.see(node)
            return True
        return False

    def list_display(self, node: ast.List, scope: _Scope) -> None:
        for element in node.elts:
            self.expr(element, scope)

    def unary(self, node: ast.UnaryOp, scope: _Scope) -> None:
        if isinstance(node.op, ast.Not):
            self.see(node.op)
            return self.expr(node.operand, scope)
        operand = node.operand
        negative_literal = isinstance(node.op, ast.USub) and isinstance(operand, ast.Constant) and (
            _is_int(operand.value) or isinstance(operand.value, float))
        if not negative_literal:
            raise self.reject(node, f"unary operator {_OP_SYMBOLS.get(type(node.op), '?')} is not allowed "
                                    "(only on number literals: -1)")
        self.see(node.op)
        self.expr(operand, scope)

    def binary(self, node: ast.BinOp, scope: _Scope) -> None:
        if not isinstance(node.op, ast.Add):
            raise self.reject(node, f"operator {_OP_SYMBOLS.get(type(node.op), '?')} is not allowed")
        self.see(node.op)
        self.expr(node.left, scope)
        self.expr(node.right, scope)

    def subscript(self, node: ast.Subscript, scope: _Scope) -> None:
        self.expr(node.value, scope)
        index = node.slice
        literal = isinstance(index, ast.Constant) and _is_int(index.value)
        negative = (isinstance(index, ast.UnaryOp) and isinstance(index.op, ast.USub)
                    and isinstance(index.operand, ast.Constant) and _is_int(index.operand.value))
        loop_name = isinstance(index, ast.Name) and index.id in scope.loops
        if isinstance(index, ast.Slice):
            raise self.reject(node, "slicing is not allowed")
        if not (literal or negative or loop_name):
            raise self.reject(node, "an index must be an integer constant or an enclosing loop's name")
        self.expr(index, scope)

    def call(self, node: ast.Call, scope: _Scope) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in BUILTINS:
            return self.builtin_call(node, scope)
        if _is_name(func, "range"):
            raise self.reject(node, "range() may only head a for loop or a list comprehension")
        if _is_self_attr(func) and func.attr in self.bound:
            raise self.reject(node, f"operator call self.{func.attr}(...) must be awaited")
        if _is_self_attr(func) and func.attr == "run_workflow":
            raise self.reject(node, "recursive call to self.run_workflow() is not allowed")
        if _is_self_attr(func) and func.attr not in ("problem", "config"):
            raise self.reject(node, f"self.{func.attr} is not a bound operator")
        if _is_gather(node):
            raise self.reject(node, "asyncio.gather(...) must be awaited: name = await asyncio.gather(...)")
        if isinstance(func, ast.Attribute) and _is_name(func.value, "asyncio"):
            raise self.reject(node, f"call to asyncio.{func.attr}() is not allowed "
                                    "(only await asyncio.gather(...) of operator calls)")
        if isinstance(func, ast.Attribute) and func.attr in STRING_METHODS:
            return self.method_call(node, scope)
        if isinstance(func, (ast.Name, ast.Attribute)):
            raise self.reject(node, f"call to {_dotted(func)}() is not allowed")
        raise self.reject(node, "calling an expression is not allowed")

    def builtin_call(self, node: ast.Call, scope: _Scope) -> None:
        """``len``/``str``/``sum``/``sorted`` of one argument, ``max``/``min`` of one list or
        several values; ``key=len`` (max, min, sorted) and ``reverse=True|False`` (sorted)."""
        name = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.reject(node, f"starred arguments to {name}() are not allowed")
        if name in _ONE_ARGUMENT and (len(node.args) != 1 or (node.keywords and name in ("len", "str", "sum"))):
            raise self.reject(node, f"{name}() takes exactly one positional argument")
        if not node.args:
            raise self.reject(node, f"{name}() needs at least one argument")
        for keyword in node.keywords:
            self.builtin_keyword(name, keyword, node)
        self.see(node.func)
        for arg in node.args:
            if not (name == "str" and self.error_name(arg, scope)):
                self.expr(arg, scope)

    def builtin_keyword(self, name: str, keyword: ast.keyword, node: ast.Call) -> None:
        allowed = _BUILTIN_KEYWORDS.get(name, frozenset())
        if keyword.arg not in allowed:
            written = "**" if keyword.arg is None else f"{keyword.arg}="
            raise self.reject(node, f"{name}() does not take {written} here (allowed: "
                                    f"{', '.join(sorted(allowed)) or 'none'})")
        value = keyword.value
        if keyword.arg == "key" and not _is_name(value, "len"):
            raise self.reject(node, f"{name}(..., key=...) allows only key=len")
        if keyword.arg == "reverse" and not (isinstance(value, ast.Constant) and isinstance(value.value, bool)):
            raise self.reject(node, "sorted(..., reverse=...) needs True or False")
        self.see(keyword, value)

    def method_call(self, node: ast.Call, scope: _Scope) -> None:
        """A string method with constant arguments (``join`` takes any list expression)."""
        method = node.func.attr
        counts, kind = STRING_METHODS[method]
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.reject(node, f".{method}() takes positional arguments only")
        if len(node.args) not in counts:
            wanted = " or ".join(str(c) for c in counts)
            raise self.reject(node, f".{method}() takes {wanted} argument(s)")
        if kind != "any" and not all(_is_string_constant(a) for a in node.args):
            raise self.reject(node, f".{method}() arguments must be string constants")
        if kind == "nonempty" and not all(a.value for a in node.args):
            raise self.reject(node, f".{method}() needs a non-empty separator")
        self.see(node.func)
        self.expr(node.func.value, scope)
        for arg in node.args:
            self.expr(arg, scope)

    def compare(self, node: ast.Compare, scope: _Scope) -> None:
        for op in node.ops:
            if type(op) not in _COMPARE_OPS:
                raise self.reject(node, f"comparison {_OP_SYMBOLS.get(type(op), '?')!r} is not allowed")
            self.see(op)
        for operand in [node.left, *node.comparators]:
            self.expr(operand, scope)

    def bool_op(self, node: ast.BoolOp, scope: _Scope) -> None:
        self.see(node.op)
        for value in node.values:
            self.expr(value, scope)

    def fstring(self, node: ast.JoinedStr, scope: _Scope) -> None:
        for part in node.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                self.see(part)
                continue
            if not isinstance(part, ast.FormattedValue):
                raise self.reject(node, f"{_kind(part)} in an f-string is not allowed")
            if part.conversion not in (-1, ord("s")):
                raise self.reject(node, f"f-string conversion !{chr(part.conversion)} is not allowed")
            if part.format_spec is not None:
                raise self.reject(node, "f-string format specs are not allowed")
            self.see(part)
            self.fstring_field(part.value, node, scope)

    def fstring_field(self, value: ast.expr, node: ast.JoinedStr, scope: _Scope) -> None:
        """A name, ``self.problem``, or a subscript of either (``a[0]``, ``a[i]``)."""
        if self.error_name(value, scope):
            return None
        readable = isinstance(value, ast.Name) or _is_self_attr(value, "problem")
        if isinstance(value, ast.Subscript):
            readable = isinstance(value.value, ast.Name) or _is_self_attr(value.value, "problem")
        if not readable:
            raise self.reject(node, "f-string fields must be names, subscripts (a[0], a[i]) or self.problem")
        self.expr(value, scope)

    def list_comp(self, node: ast.ListComp, scope: _Scope) -> None:
        inner = self.comprehension(node, scope)
        if not isinstance(node.elt, ast.Await):
            raise self.reject(node, "a list comprehension's element must be await self.<operator>(...)")
        self.await_call(node.elt, inner)

    def bare_await(self, node: ast.Await, scope: _Scope) -> None:
        raise self.reject(node, "await is allowed only in name = await ..., name.append(await ...), "
                                "return await ... and list comprehensions")

    def attribute(self, node: ast.Attribute, scope: _Scope) -> None:
        if node.attr.startswith("__"):
            raise self.reject(node, f"attribute {node.attr!r} is not allowed")
        if _is_self_attr(node, "problem"):
            if "problem" not in self.init_attrs:
                raise self.reject(node, "self.problem is not bound (add self.problem = problem to __init__)")
            return self.see(node.value)
        if _is_self_attr(node, "config"):
            raise self.reject(node, "self.config cannot be used in run_workflow (it only configures operators)")
        if _is_self_attr(node) and node.attr in self.bound:
            raise self.reject(node, f"operator self.{node.attr} must be called with await")
        if _is_self_attr(node):
            raise self.reject(node, f"self.{node.attr} is not a bound operator")
        if _is_name(node.value, "asyncio"):
            raise self.reject(node, f"asyncio.{node.attr} is not allowed (only await asyncio.gather(...))")
        raise self.reject(node, f"attribute access {_dotted(node)} is not allowed")

    EXPRESSIONS: dict[type, Callable[..., None]] = {
        ast.Constant: constant, ast.Name: name, ast.List: list_display, ast.UnaryOp: unary,
        ast.BinOp: binary, ast.Subscript: subscript, ast.Call: call, ast.Compare: compare,
        ast.BoolOp: bool_op, ast.JoinedStr: fstring, ast.ListComp: list_comp, ast.Await: bare_await,
        ast.Attribute: attribute,
    }


def _tree_depth(tree: ast.AST) -> tuple[int, ast.AST]:
    """The syntax tree's depth and its deepest node, computed without recursion."""
    deepest, node_at = 0, tree
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest, node_at = depth, node
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest, node_at


def _parse(source: str) -> ast.Module:
    if not isinstance(source, str):
        raise WorkflowRejected("the workflow must be text")
    if len(source) > MAX_SOURCE_CHARS:
        raise WorkflowRejected(f"the workflow is {len(source)} characters (limit {MAX_SOURCE_CHARS})")
    try:
        with warnings.catch_warnings():  # model text is not ours to warn about
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except SyntaxError as exc:
        raise WorkflowRejected(f"syntax error: {exc.msg}", exc.lineno) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise WorkflowRejected(f"the workflow cannot be parsed (nested too deeply?): {type(exc).__name__}") from None
    depth, node = _tree_depth(tree)
    if depth > MAX_AST_DEPTH:
        raise WorkflowRejected(f"the workflow nests too deeply ({depth} levels, limit {MAX_AST_DEPTH})", _line(node))
    return tree


def _body_source(source: str, node: ast.AsyncFunctionDef) -> str:
    """What the template-similarity check compares, as the original measures it: the text
    after ``async def run_workflow(self)`` up to the first ``return`` statement (the whole
    body if there is none), docstring and comments included, stripped. (The original's
    regex stops at the first *substring* "return", even inside an instruction; we stop at
    the statement.)"""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    offset = lambda lineno, col: starts[lineno - 1] + col  # noqa: E731 (ast columns count characters of the line)
    header = lines[node.lineno - 1]
    begin = offset(node.lineno, header.index("run_workflow") + len("run_workflow(self)"))
    returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)]
    first = min(returns, key=lambda n: (n.lineno, n.col_offset), default=None)
    end = offset(first.lineno, first.col_offset) if first is not None else starts[node.end_lineno]
    return source[begin:end].strip()


def max_range_for(family: str) -> int:
    """The loop bound of a benchmark family: the original's code rule (3 iterations), and
    its graph-size rule for math and QA (at most 8 operator calls)."""
    return DEFAULT_MAX_RANGE if family == "code" else MAX_RANGE_CEILING


def check_workflow(source: str, operators: Sequence[str], *, max_range: int = DEFAULT_MAX_RANGE,
                   returns_operator_output: bool = False) -> CheckedWorkflow:
    """Parse and validate a workflow against the language and the benchmark's operators.

    ``max_range`` bounds every ``range(N)`` (1 <= N <= max_range <= MAX_RANGE_CEILING): the
    original allows 8 for math and QA (its graph-size rule) and 3 for code.
    ``returns_operator_output`` (code benchmarks): every value run_workflow can return must
    be an operator's output (``_OutputFlow``), so no workflow returns constant or hand-built
    code whatever the problem.
    Raises WorkflowRejected (with a line and a reason) for anything outside the language.
    """
    tree = _parse(source)
    checker = _Checker(operators, max_range)
    run_node = checker.module(tree)
    checker.unseen_check(tree)
    if returns_operator_output:
        _OutputFlow(run_node, checker.bound).check()
    return CheckedWorkflow(
        source=source,
        operators_used=dict(checker.bound),
        body_source=_body_source(source, run_node),
        _body=tuple(run_node.body),
    )



# ------------------------------------------------------------------ code workflows return operator output

# Operators that may return (a part of) what they were given: what they are given must be
# an operator's output too. The others' results are written by the executor.
PASS_THROUGH_ARGUMENTS: dict[str, str] = {"Test": "solution", "ScEnsemble": "solutions"}
_TRIMMING_METHODS = frozenset({"strip", "lstrip", "rstrip", "lower", "upper"})  # add nothing to the text


class _OutputFlow:
    """Which names of an accepted run_workflow surely hold an operator's output (or a list of
    them), as a greatest fixed point over every assignment, append and loop target; then
    every ``return`` (and every argument an operator passes through) must be such a value.

    Why: a code workflow returning a constant program would score on every problem without
    an executor call; with this rule the code scored is always the executor's."""

    def __init__(self, run_node: ast.AsyncFunctionDef, bound: dict[str, str]) -> None:
        self.run_node = run_node
        self.bound = bound
        self.assigned: dict[str, list[ast.expr]] = {}
        self.appended: dict[str, list[ast.expr]] = {}
        self.poisoned: set[str] = set()  # loop targets, except names, += targets
        self._collect()
        self.texts = set(self.assigned) - self.poisoned  # names holding an operator's output
        self.lists = set(self.assigned) - self.poisoned  # names holding a list of them
        self._settle()

    def _collect(self) -> None:
        for node in ast.walk(self.run_node):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                self.assigned.setdefault(node.targets[0].id, []).append(node.value)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                self.poisoned.add(node.target.id)
            elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
                self.poisoned.add(node.target.id)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.poisoned.add(node.name)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
                  and isinstance(node.func.value, ast.Name)):
                self.appended.setdefault(node.func.value.id, []).extend(node.args)

    def _settle(self) -> None:
        changed = True
        while changed:
            texts = {n for n in self.texts if all(self.is_output(v) for v in self.assigned[n])}
            lists = {n for n in self.lists if all(self.is_output_list(v) for v in self.assigned[n])
                     and all(self.is_output(v) for v in self.appended.get(n, ()))}
            changed = (texts, lists) != (self.texts, self.lists)
            self.texts, self.lists = texts, lists

    # -------------------------------------------------------------- values

    def is_output(self, node: ast.expr) -> bool:
        """An operator's output: a call's result, a name or list item holding one, the longest
        or shortest of such a list, or one trimmed (strip, lower, ...)."""
        if isinstance(node, ast.Await):
            return self.is_operator_call(node.value)
        if isinstance(node, ast.Name):
            return node.id in self.texts
        if isinstance(node, ast.Subscript):
            return self.is_output_list(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("max", "min"):
            return len(node.args) == 1 and self.is_output_list(node.args[0])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr in _TRIMMING_METHODS and self.is_output(node.func.value)
        return False

    def is_output_list(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Await) and _is_gather(node.value):
            return all(self.is_operator_call(call) for call in self.gathered(node.value))
        if isinstance(node, ast.Name):
            return node.id in self.lists
        if isinstance(node, ast.List):
            return all(self.is_output(element) for element in node.elts)
        if isinstance(node, ast.ListComp):
            return self.is_output(node.elt)
        if isinstance(node, ast.Call) and _is_name(node.func, "sorted"):
            return len(node.args) == 1 and self.is_output_list(node.args[0])
        return False

    @staticmethod
    def gathered(gather: ast.Call) -> list[ast.expr]:
        if len(gather.args) == 1 and isinstance(gather.args[0], ast.Starred):
            inner = gather.args[0].value
            return [inner.elt] if isinstance(inner, ast.ListComp) else list(inner.elts)
        return list(gather.args)

    def is_operator_call(self, call: ast.expr) -> bool:
        """``self.<operator>(...)`` whose result is the executor's (see ``passed_through``)."""
        return (isinstance(call, ast.Call) and _is_self_attr(call.func) and call.func.attr in self.bound
                and self.passed_through(call) is None)

    def passed_through(self, call: ast.Call) -> ast.expr | None:
        """The argument of a pass-through operator that is not an operator's output (the call
        itself when it is missing); None when the call's result is an operator's output."""
        name = self.bound.get(getattr(call.func, "attr", ""))
        keyword = PASS_THROUGH_ARGUMENTS.get(name or "")
        if keyword is None:
            return None
        values = [k.value for k in call.keywords if k.arg == keyword] + call.args[:1]
        if not values:
            return call
        check = self.is_output_list if keyword == "solutions" else self.is_output
        return None if check(values[0]) else values[0]

    # -------------------------------------------------------------- the rule

    def check(self) -> None:
        if not _always_returns(self.run_node.body):
            raise WorkflowRejected("a code workflow must end by returning an operator's output "
                                   "(run_workflow can end without a return)", _line(self.run_node))
        for node in ast.walk(self.run_node):
            if isinstance(node, ast.Return) and (node.value is None or not self.is_output(node.value)):
                raise self._rejected(node, node.value)

    def _rejected(self, node: ast.Return, value: ast.expr | None) -> WorkflowRejected:
        if isinstance(value, ast.Await) and isinstance(value.value, ast.Call):
            argument = self.passed_through(value.value)
            if argument is not None:
                operator = self.bound.get(getattr(value.value.func, "attr", ""), "?")
                given = "nothing" if argument is value.value else _describe_value(argument)
                return WorkflowRejected(f"a code workflow must return an operator's output: {operator} may return "
                                        f"its {PASS_THROUGH_ARGUMENTS[operator]}, which is {given}", _line(node))
        return WorkflowRejected(f"a code workflow must return an operator's output, not {_describe_value(value)}",
                                _line(node))


def _describe_value(node: ast.expr | None) -> str:
    if node is None:
        return "None"
    if isinstance(node, ast.Constant):
        return "a constant"
    if isinstance(node, ast.JoinedStr):
        return "an f-string"
    if isinstance(node, ast.BinOp):
        return "a value computed with " + _OP_SYMBOLS.get(type(node.op), "an operator")
    if isinstance(node, ast.Name):
        return f"{node.id!r}, which may hold something other than an operator's output"
    if isinstance(node, ast.Subscript):
        return f"{ast.unparse(node)[:60]}, an item of a list that may hold something else"
    return f"the value of {ast.unparse(node)[:60]}"


def _always_returns(stmts: list[ast.stmt]) -> bool:
    """Whether a block surely ends in a return (for loops run at least once)."""
    for stmt in stmts:
        if isinstance(stmt, ast.Return):
            return True
        if isinstance(stmt, ast.If) and _always_returns(stmt.body) and _always_returns(stmt.orelse):
            return True
        if isinstance(stmt, ast.For) and _always_returns(stmt.body):
            return True
        if isinstance(stmt, ast.Try) and _always_returns(stmt.body) and all(
                _always_returns(h.body) for h in stmt.handlers):
            return True
    return False


# ------------------------------------------------------------------ interpretation


class _Returned(BaseException):
    """Unwinds the interpreter from a ``return`` statement (a BaseException: no handler sees it)."""

    def __init__(self, value: Value) -> None:
        self.value = value


class _Interpreter:
    """Walks an accepted run_workflow body; every value is capped, every effect is an operator call."""

    def __init__(self, operators: dict[str, Operator], problem_text: str) -> None:
        self.operators = operators
        self.problem_text = problem_text
        self.env: dict[str, Value] = {}
        self.work = 0
        self.calls = 0

    # -------------------------------------------------------------- values

    def fail(self, node: ast.AST | None, reason: str) -> WorkflowRuntimeError:
        """An error Python would raise too: a workflow's except may catch it."""
        return WorkflowRuntimeError(reason, _line(node))

    def limit(self, node: ast.AST | None, reason: str) -> WorkflowLimitExceeded:
        """A cap or a value outside the language: always stops the run."""
        return WorkflowLimitExceeded(reason, _line(node))

    def too_long(self, node: ast.AST | None) -> WorkflowLimitExceeded:
        return self.limit(node, f"a string exceeds {MAX_STR_CHARS} characters")

    def new_str(self, node: ast.AST, value: str) -> str:
        if len(value) > MAX_STR_CHARS:
            raise self.too_long(node)
        self.charge(node, len(value))
        return value

    def charge(self, node: ast.AST, amount: int) -> None:
        """Count work, so that a run's CPU and memory stay bounded whatever its statements do."""
        self.work += amount
        if self.work > MAX_WORK:
            raise self.limit(node, f"the run exceeded its work budget ({MAX_WORK} characters and items)")

    def new_list(self, node: ast.AST, value: list) -> list:
        if len(value) > MAX_LIST_ITEMS:
            raise self.limit(node, f"a list exceeds {MAX_LIST_ITEMS} items")
        if any(isinstance(item, list) for item in value):
            raise self.limit(node, "lists of lists are not supported")
        self.charge(node, len(value))
        return value

    def number(self, node: ast.AST, value: int | float) -> int | float:
        if _is_int(value) and abs(value) > MAX_INT:
            raise self.limit(node, f"an integer exceeds {MAX_INT}")
        return value

    def text(self, node: ast.AST, value: Value) -> str:
        """``str(value)`` with the caps checked before a long list is rendered."""
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            return str(value)
        parts, size = [], 2
        for item in value:
            part = repr(item)
            size += len(part) + 2
            if size > MAX_STR_CHARS:
                raise self.too_long(node)
            parts.append(part)
        return self.new_str(node, "[" + ", ".join(parts) + "]")

    def result(self, node: ast.AST | None, value: Value) -> str:
        """The workflow's output as text: lists one item a line, None as empty."""
        if value is None:
            return ""
        if isinstance(value, list):
            parts = [self.text(node, item) for item in value]
            if sum(len(p) + 1 for p in parts) > MAX_STR_CHARS:
                raise self.too_long(node)
            return "\n".join(parts)
        return self.text(node, value)

    # -------------------------------------------------------------- statements

    async def block(self, stmts: Sequence[ast.stmt]) -> None:
        for stmt in stmts:
            await asyncio.sleep(0)  # a statement at a time: the time limit can always interrupt
            handler = self.STATEMENTS.get(type(stmt))
            if handler is None:
                raise self.limit(stmt, f"unexpected {_kind(stmt)}")
            await handler(self, stmt)

    async def assign(self, node: ast.Assign) -> None:
        self.env[node.targets[0].id] = await self.value_or_await(node.value)

    async def aug_assign(self, node: ast.AugAssign) -> None:
        current = self.lookup(node.target, node.target.id)
        if isinstance(current, list):
            raise self.limit(node, "+= works on strings and numbers only")
        self.env[node.target.id] = self.add(node, current, await self.evaluate(node.value))

    async def expr_stmt(self, node: ast.Expr) -> None:
        if _is_docstring(node):
            return
        call = node.value
        target = self.lookup(call, call.func.value.id)
        if not isinstance(target, list):
            raise self.fail(node, f".append() needs a list, not {type(target).__name__}")
        item = await self.value_or_await(call.args[0])
        if len(target) >= MAX_LIST_ITEMS:
            raise self.limit(node, f"a list exceeds {MAX_LIST_ITEMS} items")
        if isinstance(item, list):
            raise self.limit(node, "lists of lists are not supported")
        self.charge(node, 1)
        target.append(item)

    async def for_loop(self, node: ast.For) -> None:
        for index in range(node.iter.args[0].value):
            self.env[node.target.id] = index
            await self.block(node.body)

    async def if_stmt(self, node: ast.If) -> None:
        await self.block(node.body if await self.evaluate(node.test) else node.orelse)

    async def try_stmt(self, node: ast.Try) -> None:
        """An operator's exception (or a Python-level error) runs the handler; the
        interpreter's limits, caps, outages, time limits and cancellation pass through."""
        try:
            await self.block(node.body)
        except Exception as error:
            if not _catchable(error):
                raise
            await self.handle(node.handlers[0], error)

    async def handle(self, handler: ast.ExceptHandler, error: Exception) -> None:
        name = handler.name
        if name is None:
            return await self.block(handler.body)
        self.env[name] = self.new_str(handler, _error_text(error))
        try:
            await self.block(handler.body)
        finally:
            self.env.pop(name, None)  # as Python does: the name is gone after the handler

    async def return_stmt(self, node: ast.Return) -> None:
        raise _Returned(None if node.value is None else await self.value_or_await(node.value))

    async def pass_stmt(self, node: ast.Pass) -> None:
        return None

    STATEMENTS: dict[type, Callable[..., Any]] = {
        ast.Assign: assign, ast.AugAssign: aug_assign, ast.Expr: expr_stmt, ast.For: for_loop,
        ast.If: if_stmt, ast.Try: try_stmt, ast.Return: return_stmt, ast.Pass: pass_stmt,
    }

    # -------------------------------------------------------------- expressions

    def lookup(self, node: ast.AST, name: str) -> Value:
        if name not in self.env:
            raise self.fail(node, f"name {name!r} is not assigned")
        return self.env[name]

    async def value_or_await(self, node: ast.expr) -> Value:
        if not isinstance(node, ast.Await):
            return await self.evaluate(node)
        return await (self.gather(node) if _is_gather(node.value) else self.operator_call(node))

    async def evaluate(self, node: ast.expr) -> Value:
        handler = self.EXPRESSIONS.get(type(node))
        if handler is None:
            raise self.limit(node, f"unexpected {_kind(node)}")
        return await handler(self, node)

    async def constant(self, node: ast.Constant) -> Value:
        return node.value

    async def name(self, node: ast.Name) -> Value:
        return self.lookup(node, node.id)

    async def self_problem(self, node: ast.Attribute) -> Value:
        return self.problem_text

    async def list_display(self, node: ast.List) -> Value:
        return self.new_list(node, [await self.evaluate(e) for e in node.elts])

    async def unary(self, node: ast.UnaryOp) -> Value:
        operand = await self.evaluate(node.operand)
        return (not operand) if isinstance(node.op, ast.Not) else -operand

    async def binary(self, node: ast.BinOp) -> Value:
        return self.add(node, await self.evaluate(node.left), await self.evaluate(node.right))

    def add(self, node: ast.AST, left: Value, right: Value) -> Value:
        if isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_STR_CHARS:
                raise self.too_long(node)
            return self.new_str(node, left + right)
        if isinstance(left, list) and isinstance(right, list):
            if len(left) + len(right) > MAX_LIST_ITEMS:
                raise self.limit(node, f"a list exceeds {MAX_LIST_ITEMS} items")
            return self.new_list(node, left + right)
        numbers = (int, float)  # bool is an int
        if isinstance(left, numbers) and isinstance(right, numbers):
            return self.number(node, left + right)
        raise self.fail(node, f"cannot add {type(left).__name__} and {type(right).__name__}")

    async def subscript(self, node: ast.Subscript) -> Value:
        container, index = await self.evaluate(node.value), await self.evaluate(node.slice)
        if not isinstance(container, (str, list)):
            raise self.fail(node, f"cannot index {type(container).__name__}")
        if not _is_int(index):
            raise self.fail(node, f"an index must be an integer, not {type(index).__name__}")
        if not -len(container) <= index < len(container):
            raise self.fail(node, f"index {index} is out of range (length {len(container)})")
        return container[index]

    async def call(self, node: ast.Call) -> Value:
        if isinstance(node.func, ast.Name):
            return await self.builtin(node, node.func.id)
        return await self.string_method(node, node.func.attr)

    async def compare(self, node: ast.Compare) -> Value:
        left = await self.evaluate(node.left)
        for op, operand in zip(node.ops, node.comparators):
            right = await self.evaluate(operand)
            if not self.compare_one(node, op, left, right):
                return False
            left = right
        return True

    def compare_one(self, node: ast.AST, op: ast.cmpop, left: Value, right: Value) -> bool:
        scanned = _size(left) * (len(right) if isinstance(right, list) else 1) + _size(right)
        self.charge(node, scanned)
        if isinstance(op, (ast.In, ast.NotIn)):
            if not (isinstance(right, list) or (isinstance(right, str) and isinstance(left, str))):
                raise self.fail(node, f"'in' needs a list, or strings on both sides, not {type(right).__name__}")
            return (left in right) == isinstance(op, ast.In)
        if isinstance(op, (ast.Eq, ast.NotEq)):
            return (left == right) == isinstance(op, ast.Eq)
        try:
            return _ordered(op, left, right)
        except TypeError:
            raise self.fail(node, f"cannot compare {type(left).__name__} and {type(right).__name__}") from None

    async def bool_op(self, node: ast.BoolOp) -> Value:
        is_and = isinstance(node.op, ast.And)
        value: Value = None
        for operand in node.values:
            value = await self.evaluate(operand)
            if bool(value) != is_and:
                return value
        return value

    async def fstring(self, node: ast.JoinedStr) -> Value:
        parts = []
        for part in node.values:
            piece = part.value if isinstance(part, ast.Constant) else self.text(part, await self.evaluate(part.value))
            parts.append(piece)
            if sum(len(p) for p in parts) > MAX_STR_CHARS:
                raise self.too_long(node)
        return self.new_str(node, "".join(parts))

    async def list_comp(self, node: ast.ListComp) -> Value:
        return self.new_list(node, await self.comprehension(node, self.operator_call))

    async def comprehension(self, node: ast.ListComp, each: Callable[[Any], Awaitable[T]]) -> list[T]:
        """``each(element)`` once per ``range(N)`` step, the loop name bound only meanwhile."""
        gen = node.generators[0]
        name, missing = gen.target.id, object()
        saved = self.env.get(name, missing)
        items: list[T] = []
        try:
            for index in range(gen.iter.args[0].value):
                self.env[name] = index
                items.append(await each(node.elt))
        finally:
            if saved is missing:
                self.env.pop(name, None)
            else:
                self.env[name] = saved
        return items

    EXPRESSIONS: dict[type, Callable[..., Any]] = {
        ast.Constant: constant, ast.Name: name, ast.List: list_display, ast.UnaryOp: unary,
        ast.BinOp: binary, ast.Subscript: subscript, ast.Call: call, ast.Compare: compare,
        ast.BoolOp: bool_op, ast.JoinedStr: fstring, ast.ListComp: list_comp, ast.Attribute: self_problem,
    }

    # -------------------------------------------------------------- builtins and string methods

    async def builtin(self, node: ast.Call, name: str) -> Value:
        args = [await self.evaluate(a) for a in node.args]
        options = {k.arg: k.value for k in node.keywords}
        if name == "str":
            return self.text(node, args[0])
        if name == "len":
            return self.length(node, args[0])
        if name == "sum":
            return self.total(node, args[0])
        keyed = "key" in options
        if name == "sorted":
            reverse = "reverse" in options and options["reverse"].value
            return self.sort(node, args[0], keyed, reverse)
        return self.extreme(node, name, args[0] if len(args) == 1 else args, keyed)

    def length(self, node: ast.AST, value: Value) -> int:
        if not isinstance(value, (str, list)):
            raise self.fail(node, f"len() needs a string or a list, not {type(value).__name__}")
        return len(value)

    def total(self, node: ast.AST, items: Value) -> int | float:
        if not (isinstance(items, list) and all(isinstance(i, (int, float)) for i in items)):
            raise self.fail(node, "sum() needs a list of numbers")
        self.charge(node, len(items))
        return self.number(node, sum(items))

    def comparable(self, node: ast.AST, name: str, items: Value, keyed: bool) -> list:
        """``items`` as a list Python could order: all strings, or all numbers (key=len: strings)."""
        if not isinstance(items, list):
            raise self.fail(node, f"{name}() of one argument needs a list, not {type(items).__name__}")
        texts = all(isinstance(i, str) for i in items)
        numbers = all(isinstance(i, (int, float)) for i in items)
        if keyed and not texts:
            raise self.fail(node, f"{name}(..., key=len) needs a list of strings")
        if not (texts or numbers):
            raise self.fail(node, f"{name}() needs all strings or all numbers")
        return items

    def extreme(self, node: ast.AST, name: str, items: Value, keyed: bool) -> Value:
        items = self.comparable(node, name, items, keyed)
        if not items:
            raise self.fail(node, f"{name}() of an empty list")
        self.charge(node, len(items) if keyed else _size(items))  # n - 1 comparisons, each within its items
        pick = max if name == "max" else min
        return pick(items, key=len) if keyed else pick(items)

    def sort(self, node: ast.AST, items: Value, keyed: bool, reverse: bool) -> list:
        items = self.comparable(node, "sorted", items, keyed)
        rounds = len(items).bit_length() + 1  # a merge sort touches each item about log2(n) times
        self.charge(node, rounds * (len(items) if keyed else _size(items)))
        ordered = sorted(items, key=len, reverse=reverse) if keyed else sorted(items, reverse=reverse)
        return self.new_list(node, ordered)

    async def string_method(self, node: ast.Call, method: str) -> Value:
        receiver = await self.evaluate(node.func.value)
        if not isinstance(receiver, str):
            raise self.fail(node, f".{method}() needs a string, not {type(receiver).__name__}")
        args = [await self.evaluate(a) for a in node.args]
        self.charge(node, len(receiver))
        if method == "join":
            return self.join(node, receiver, args[0])
        if method == "split":
            return self.split(node, receiver, args[0])
        if method == "replace":
            return self.replace_text(node, receiver, args[0], args[1])
        return self.new_str(node, _TEXT_METHODS[method](receiver, *args))  # upper() may grow: capped after

    def join(self, node: ast.AST, separator: str, items: Value) -> str:
        if not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
            raise self.fail(node, ".join() needs a list of strings")
        size = sum(len(i) for i in items) + len(separator) * max(0, len(items) - 1)
        if size > MAX_STR_CHARS:
            raise self.too_long(node)
        return self.new_str(node, separator.join(items))

    def split(self, node: ast.AST, text: str, separator: str) -> list:
        if text.count(separator) + 1 > MAX_LIST_ITEMS:
            raise self.limit(node, f"a list exceeds {MAX_LIST_ITEMS} items")
        return self.new_list(node, text.split(separator))

    def replace_text(self, node: ast.AST, text: str, old: str, new: str) -> str:
        size = len(text) + text.count(old) * (len(new) - len(old))  # known before anything is built
        if size > MAX_STR_CHARS:
            raise self.too_long(node)
        return self.new_str(node, text.replace(old, new))

    # -------------------------------------------------------------- operator calls

    async def operator_call(self, node: ast.Await) -> Value:
        """Await a bound operator with checked, coerced arguments; its exceptions propagate."""
        instance, kwargs = await self.prepare(node.value)
        return await self.invoke(node, instance, kwargs)

    async def prepare(self, call: ast.Call) -> tuple[Operator, dict[str, Value]]:
        """Count the call against the cap and evaluate its arguments (nothing is sent yet)."""
        instance = self.operators[call.func.attr]
        self.calls += 1
        if self.calls > MAX_OPERATOR_CALLS:
            raise self.limit(call, f"more than {MAX_OPERATOR_CALLS} operator calls in one run")
        named = [*zip(instance.keywords, call.args), *((k.arg, k.value) for k in call.keywords)]
        return instance, {key: self.argument(call, key, await self.evaluate(value)) for key, value in named}

    async def invoke(self, node: ast.AST, instance: Operator, kwargs: dict[str, Value]) -> str:
        result = await instance(**kwargs)
        if not isinstance(result, str):
            raise self.limit(node, f"operator {instance.name} returned {type(result).__name__}, not text")
        return self.new_str(node, result)

    def argument(self, node: ast.AST, key: str, value: Value) -> Value:
        if key != "solutions":
            return self.text(node, value)
        if not isinstance(value, list):
            raise self.fail(node, f"solutions must be a list, not {type(value).__name__}")
        return [self.text(node, item) for item in value]

    async def gather(self, node: ast.Await) -> list:
        """``await asyncio.gather(...)``: every call is counted and its arguments evaluated in
        order (as Python builds the coroutines), then all run at once; the run clock is told
        how many concurrent parts the run has meanwhile."""
        prepared = await self.gathered_calls(node.value)
        clock = current_clock()
        with clock.branches(len(prepared)) if clock is not None else contextlib.nullcontext():
            results = await _concurrently([self.invoke(node, op, kwargs) for op, kwargs in prepared])
        return self.new_list(node, results)

    async def gathered_calls(self, call: ast.Call) -> list[tuple[Operator, dict[str, Value]]]:
        first = call.args[0]
        if len(call.args) == 1 and isinstance(first, ast.Starred):
            if isinstance(first.value, ast.ListComp):
                return await self.comprehension(first.value, self.prepare)
            return [await self.prepare(element) for element in first.value.elts]
        return [await self.prepare(arg) for arg in call.args]


async def _concurrently(coros: list[Awaitable[T]]) -> list[T]:
    """Run ``coros`` as tasks; when one fails the rest are cancelled (nothing is left running
    or paying), and an uncatchable failure among them wins over a catchable first one."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException as error:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        stop = next((o for o in outcomes if isinstance(o, Exception) and not _catchable(o)), None)
        if stop is not None and isinstance(error, Exception) and _catchable(error):
            raise stop from None
        raise


def _error_text(error: BaseException) -> str:
    """``str(e)`` for a caught exception, cut to MAX_ERROR_CHARS."""
    try:
        text = str(error)
    except Exception:  # an exception whose __str__ fails still has a name
        text = type(error).__name__
    return text[:MAX_ERROR_CHARS]


def _size(value: Value) -> int:
    """Characters (or items) a comparison may have to look at."""
    if isinstance(value, str):
        return len(value) + 1
    if isinstance(value, list):
        return sum(_size(item) for item in value) + 1
    return 1


def _ordered(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.Lt):
        return left < right
    if isinstance(op, ast.LtE):
        return left <= right
    if isinstance(op, ast.Gt):
        return left > right
    return left >= right


@dataclass(frozen=True)
class CheckedWorkflow:
    """An accepted workflow: which operators it binds, its body text, and its interpreter."""

    source: str
    operators_used: dict[str, str]  # attribute -> operator name, in binding order
    body_source: str  # run_workflow up to its first return, as the original's similarity check reads it
    _body: tuple[ast.stmt, ...] = field(repr=False)

    async def run(self, context: OperatorContext) -> str:
        """Bind the operators to ``context`` and interpret run_workflow; returns its output as text."""
        operators = {attr: OPERATORS[name](context, context.problem) for attr, name in self.operators_used.items()}
        interpreter = _Interpreter(operators, context.problem.input)
        try:
            await interpreter.block(self._body)
        except _Returned as returned:
            return interpreter.result(None, returned.value)
        except RecursionError:
            raise WorkflowLimitExceeded("values nest too deeply") from None
        return ""


async def run_with_limit(
    workflow: CheckedWorkflow, context: OperatorContext, time_limit_s: float, *, clock: str = "work"
) -> str:
    """Run a workflow with ``time_limit_s`` seconds of its own work (``runclock``: waits for
    executor slots and sandbox workers do not count; ``clock="wall"``: they do). Raises
    ``WorkflowTimeout`` (a TimeoutError) when the limit is spent, ``ExecutorUnavailable``
    when it was spent waiting on an executor that answered nothing meanwhile."""
    return await run_timed(lambda: workflow.run(context), time_limit_s, on_stall=ExecutorUnavailable,
                           wall=clock == "wall")
