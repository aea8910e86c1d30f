"""Generated workflows: extraction, checking against the language, and interpretation.

The generator's workflows are untrusted text (SPEC section 9: the original imported
them). Here a workflow is parsed with ``ast`` and every node is checked against the
allow-list of ``docs/workflow_language.md``: a node type the checker does not know is
rejected, never let through. The accepted tree is then *interpreted* by a tiny
evaluator — nothing is imported, ``exec``-ed, ``eval``-ed or compiled, and no file is
written — so the only effects a workflow can have are awaited calls to the operators
of its benchmark. Loops are bounded by constants and every value is size-capped, so a
run is bounded; ``run_with_limit`` bounds the time slow operators may take.
"""

from __future__ import annotations

import ast
import asyncio
import difflib
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from scoreflow.executor.client import ExecutorUnavailable
from scoreflow.operators import OPERATORS, Operator, OperatorContext
from scoreflow.runclock import run_timed

__all__ = [
    "CheckedWorkflow",
    "WorkflowRejected",
    "WorkflowRuntimeError",
    "body_similarity",
    "check_workflow",
    "extract_graph",
    "run_with_limit",
]

# ------------------------------------------------------------------ limits

MAX_SOURCE_CHARS = 20_000  # longer workflows are rejected before parsing
MAX_AST_DEPTH = 50  # deeper syntax trees are rejected before the recursive check
MAX_BLOCK_DEPTH = 3  # nested for/if blocks in run_workflow
MAX_LOOP_DEPTH = 2  # nested for loops and list comprehensions
MAX_RANGE = 3  # range(N): 1 <= N <= MAX_RANGE
MAX_STR_CHARS = 200_000  # any one string a workflow builds or receives
MAX_LIST_ITEMS = 1_000  # any one list
MAX_WORK = 20_000_000  # one run: characters built, received or compared, plus list items built
MAX_OPERATOR_CALLS = 50  # operator calls in one run
MAX_INT = 10**18  # integers beyond this magnitude stop the run

BUILTINS = ("len", "str")  # the callable builtins; range only heads loops
RESERVED_NAMES = frozenset({"self", "len", "str", "range"})  # never assignable
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
    ast.Try: "try statement", ast.TryStar: "try statement", ast.With: "with statement",
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
    """An accepted workflow failed while running (a type error, a size cap, ...)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.line = line
        self.reason = _with_line(reason, line)
        super().__init__(self.reason)


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


def _is_self_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


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
    """What a run_workflow statement may see: names surely assigned, enclosing loop names."""

    assigned: frozenset[str]
    loops: frozenset[str] = frozenset()
    depth: int = 0  # enclosing for/if blocks
    loop_depth: int = 0  # enclosing for loops and comprehensions

    def inner(self, loop_name: str | None = None) -> _Scope:
        if loop_name is None:
            return _Scope(self.assigned, self.loops, self.depth + 1, self.loop_depth)
        return _Scope(self.assigned | {loop_name}, self.loops | {loop_name}, self.depth + 1, self.loop_depth + 1)


class _Checker:
    """Validates a parsed workflow node by node against the language's allow-list."""

    def __init__(self, operators: Sequence[str]) -> None:
        unknown = [name for name in operators if name not in OPERATORS]
        if unknown:
            raise ValueError(f"unknown operator names in the allow-list: {unknown}")
        self.allowed = tuple(operators)
        self.bound: dict[str, str] = {}  # attribute -> operator name
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
        problem_bound = False
        for stmt in body:
            problem_bound = self.binding(stmt, problem_bound)
        if not self.bound:
            raise self.reject(node, "__init__ binds no operator")

    def binding(self, stmt: ast.stmt, problem_bound: bool) -> bool:
        """One ``self.<attr> = operator.<Name>(config, problem)`` (or ``self.problem = problem``)."""
        shape = "__init__ may only contain self.<attr> = operator.<Name>(config, problem)"
        if not isinstance(stmt, ast.Assign):
            raise self.reject(stmt, f"{_kind(stmt)} is not allowed in __init__ ({shape})")
        target = stmt.targets[0]
        if len(stmt.targets) != 1 or stmt.type_comment or not _is_self_attr(target):
            raise self.reject(stmt, shape)
        self.see(stmt, target, target.value)
        value = stmt.value
        if target.attr == "problem" and isinstance(value, ast.Name) and value.id == "problem":
            if problem_bound:
                raise self.reject(stmt, "self.problem is bound twice")
            self.see(value)
            return True
        self.operator_binding(stmt, target.attr, value, shape)
        return problem_bound

    def operator_binding(self, stmt: ast.stmt, attr: str, value: ast.expr, shape: str) -> None:
        func = getattr(value, "func", None)
        if not (isinstance(value, ast.Call) and isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name) and func.value.id == "operator"):
            raise self.reject(stmt, shape)
        args = value.args
        if value.keywords or [getattr(a, "id", None) for a in args] != ["config", "problem"]:
            name = func.attr
            raise self.reject(stmt, f"operator.{name} must be constructed as operator.{name}(config, problem)")
        if attr.startswith("_") or attr in RESERVED_ATTRS:
            raise self.reject(stmt, f"attribute name self.{attr} is not allowed")
        if attr in self.bound:
            raise self.reject(stmt, f"self.{attr} is bound twice")
        if func.attr not in OPERATORS:
            raise self.reject(stmt, f"unknown operator {func.attr!r}")
        if func.attr not in self.allowed:
            allowed = ", ".join(self.allowed)
            raise self.reject(stmt, f"operator {func.attr!r} is not available here (allowed: {allowed})")
        self.see(value, func, func.value, *args)
        self.bound[attr] = func.attr

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

    def block(self, stmts: list[ast.stmt], scope: _Scope) -> tuple[frozenset[str] | None, bool]:
        """Check statements in order; returns (names surely assigned after, always returns)."""
        assigned: frozenset[str] = scope.assigned
        returned = False
        for stmt in stmts:
            handler = self.STATEMENTS.get(type(stmt))
            if handler is None:
                raise self.reject(stmt, f"{_kind(stmt)} is not allowed")
            self.see(stmt)
            after, always = handler(self, stmt, _Scope(assigned, scope.loops, scope.depth, scope.loop_depth))
            assigned = after if after is not None else assigned
            returned = returned or always
        return assigned, returned

    def assign(self, node: ast.Assign, scope: _Scope) -> tuple[frozenset[str], bool]:
        if len(node.targets) != 1:
            raise self.reject(node, "chained assignment is not allowed")
        if node.type_comment:
            raise self.reject(node, "type comments are not allowed")
        name = self.target(node.targets[0])
        self.value_or_await(node.value, scope)
        return scope.assigned | {name}, False

    def aug_assign(self, node: ast.AugAssign, scope: _Scope) -> tuple[frozenset[str], bool]:
        if not isinstance(node.op, ast.Add):
            raise self.reject(node, f"operator {_OP_SYMBOLS.get(type(node.op), '?')}= is not allowed")
        self.see(node.op)
        name = self.target(node.target)
        if name not in scope.assigned:
            raise self.reject(node, f"name {name!r} used before assignment")
        if isinstance(node.value, ast.Await):
            raise self.reject(node, "+= await ... is not allowed; assign the operator's result to a name first")
        self.expr(node.value, scope)
        return scope.assigned, False

    def expr_stmt(self, node: ast.Expr, scope: _Scope) -> tuple[None, bool]:
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "append":
            self.append(value, scope)
            return None, False
        if isinstance(value, ast.Await):
            raise self.reject(node, "an operator's result must be assigned to a name or appended to a list")
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
        if func.value.id not in scope.assigned:
            raise self.reject(call, f"name {func.value.id!r} used before assignment")
        self.see(call, func, func.value)
        self.value_or_await(call.args[0], scope)

    def for_loop(self, node: ast.For, scope: _Scope) -> tuple[frozenset[str] | None, bool]:
        if node.orelse:
            raise self.reject(node, "for ... else is not allowed")
        if node.type_comment:
            raise self.reject(node, "type comments are not allowed")
        self.range_call(node.iter)
        name = self.target(node.target)
        inner = self.nested(node, scope, name)
        return self.block(node.body, inner)  # N >= 1: the body always runs, the loop name stays bound

    def nested(self, node: ast.AST, scope: _Scope, loop_name: str | None) -> _Scope:
        inner = scope.inner(loop_name)
        if inner.depth > MAX_BLOCK_DEPTH:
            raise self.reject(node, f"blocks nest more than {MAX_BLOCK_DEPTH} deep")
        if inner.loop_depth > MAX_LOOP_DEPTH:
            raise self.reject(node, f"loops nest more than {MAX_LOOP_DEPTH} deep")
        return inner

    def if_stmt(self, node: ast.If, scope: _Scope) -> tuple[frozenset[str], bool]:
        self.expr(node.test, scope)
        then, then_returns = self.block(node.body, self.nested(node, scope, None))
        if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):  # elif: same depth
            self.see(node.orelse[0])
            other, other_returns = self.if_stmt(node.orelse[0], scope)
        elif node.orelse:
            other, other_returns = self.block(node.orelse, self.nested(node, scope, None))
        else:
            other, other_returns = scope.assigned, False
        if then_returns and other_returns:
            return scope.assigned, True
        if then_returns or other_returns:  # only the branch that falls through counts
            return (other if then_returns else then), False
        return (then & other) | scope.assigned, False

    def return_stmt(self, node: ast.Return, scope: _Scope) -> tuple[None, bool]:
        if node.value is not None:
            if isinstance(node.value, ast.Await):
                raise self.reject(node, "return await ... is not allowed; assign the operator's result to a name first")
            self.expr(node.value, scope)
        return None, True

    def pass_stmt(self, node: ast.Pass, scope: _Scope) -> tuple[None, bool]:
        return None, False

    STATEMENTS: dict[type, Callable[..., tuple[frozenset[str] | None, bool]]] = {
        ast.Assign: assign, ast.AugAssign: aug_assign, ast.Expr: expr_stmt, ast.For: for_loop,
        ast.If: if_stmt, ast.Return: return_stmt, ast.Pass: pass_stmt,
    }

    def target(self, node: ast.expr) -> str:
        """An assignment or loop target: a plain, non-reserved, non-dunder name."""
        if not isinstance(node, ast.Name):
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                path = _dotted(node) or _kind(node)
                raise self.reject(node, f"assignment to {path} is not allowed (assign plain names only)")
            raise self.reject(node, f"{_kind(node)} as an assignment target is not allowed")
        if node.id in RESERVED_NAMES or node.id.startswith("__"):
            raise self.reject(node, f"name {node.id!r} cannot be assigned")
        self.see(node)
        return node.id

    def range_call(self, node: ast.expr) -> int:
        """``range(N)`` with an integer constant 1 <= N <= MAX_RANGE."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"):
            raise self.reject(node, "loops must iterate over range(N) with N an integer constant")
        if len(node.args) != 1 or node.keywords:
            raise self.reject(node, "range() takes exactly one argument here")
        bound = node.args[0]
        if not (isinstance(bound, ast.Constant) and _is_int(bound.value)):
            raise self.reject(node, f"range() bound must be an integer constant from 1 to {MAX_RANGE}")
        if bound.value > MAX_RANGE:
            raise self.reject(node, f"range({bound.value}) exceeds {MAX_RANGE}")
        if bound.value < 1:
            raise self.reject(node, f"range({bound.value}) must be at least 1")
        self.see(node, node.func, bound)
        return bound.value

    # -------------------------------------------------------------- expressions

    def value_or_await(self, node: ast.expr, scope: _Scope) -> None:
        """The right side of ``name = ...`` or the argument of ``.append(...)``."""
        if isinstance(node, ast.Await):
            self.await_call(node, scope)
        else:
            self.expr(node, scope)

    def await_call(self, node: ast.Await, scope: _Scope) -> None:
        """``await self.<attr>(...)`` for a bound operator with its keyword arguments."""
        call = node.value
        func = getattr(call, "func", None)
        if not (isinstance(call, ast.Call) and _is_self_attr(func)):
            raise self.reject(node, "await may only be applied to self.<operator>(...)")
        if func.attr == "run_workflow":
            raise self.reject(node, "recursive call to self.run_workflow() is not allowed")
        if func.attr not in self.bound:
            raise self.reject(node, f"self.{func.attr} is not a bound operator")
        self.see(node, call, func, func.value)
        self.operator_arguments(call, OPERATORS[self.bound[func.attr]], scope)

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
        if node.id == "self":
            raise self.reject(node, "self may only be used as await self.<operator>(...)")
        if node.id in RESERVED_NAMES:
            raise self.reject(node, f"{node.id} may only be called")
        if node.id not in scope.assigned:
            raise self.reject(node, f"name {node.id!r} used before assignment")

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
            if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
                raise self.reject(node, f"{func.id}() takes exactly one positional argument")
            self.see(func)
            return self.expr(node.args[0], scope)
        if isinstance(func, ast.Name) and func.id == "range":
            raise self.reject(node, "range() may only head a for loop or a list comprehension")
        if _is_self_attr(func) and func.attr in self.bound:
            raise self.reject(node, f"operator call self.{func.attr}(...) must be awaited")
        if _is_self_attr(func) and func.attr == "run_workflow":
            raise self.reject(node, "recursive call to self.run_workflow() is not allowed")
        if _is_self_attr(func):
            raise self.reject(node, f"self.{func.attr} is not a bound operator")
        if isinstance(func, (ast.Name, ast.Attribute)):
            raise self.reject(node, f"call to {_dotted(func)}() is not allowed")
        raise self.reject(node, "calling an expression is not allowed")

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
            if part.conversion != -1:
                raise self.reject(node, f"f-string conversion !{chr(part.conversion)} is not allowed")
            if part.format_spec is not None:
                raise self.reject(node, "f-string format specs are not allowed")
            if not isinstance(part.value, ast.Name):
                raise self.reject(node, "f-string fields must be plain names")
            self.see(part)
            self.expr(part.value, scope)

    def list_comp(self, node: ast.ListComp, scope: _Scope) -> None:
        if len(node.generators) != 1:
            raise self.reject(node, "a list comprehension has exactly one for clause")
        gen = node.generators[0]
        if gen.is_async or gen.ifs:
            raise self.reject(node, "list comprehensions may not have if clauses or async for")
        self.range_call(gen.iter)
        loop_name = self.target(gen.target)
        inner = _Scope(scope.assigned | {loop_name}, scope.loops | {loop_name}, scope.depth, scope.loop_depth + 1)
        if inner.loop_depth > MAX_LOOP_DEPTH:
            raise self.reject(node, f"loops nest more than {MAX_LOOP_DEPTH} deep")
        if not isinstance(node.elt, ast.Await):
            raise self.reject(node, "a list comprehension's element must be await self.<operator>(...)")
        self.see(gen)
        self.await_call(node.elt, inner)

    def bare_await(self, node: ast.Await, scope: _Scope) -> None:
        raise self.reject(node, "await is allowed only in name = await ..., name.append(await ...) "
                                "and list comprehensions")

    def attribute(self, node: ast.Attribute, scope: _Scope) -> None:
        if node.attr.startswith("__"):
            raise self.reject(node, f"attribute {node.attr!r} is not allowed")
        if _is_self_attr(node) and node.attr in self.bound:
            raise self.reject(node, f"operator self.{node.attr} must be called with await")
        if _is_self_attr(node):
            raise self.reject(node, f"self.{node.attr} is not a bound operator")
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
    """run_workflow's body as written (comments included), dedented."""
    lines = source.splitlines()
    first = node.body[0]
    chunk = lines[first.lineno - 1: node.end_lineno]
    chunk[0] = " " * first.col_offset + chunk[0][first.col_offset:]  # the body may share the def's line
    return textwrap.dedent("\n".join(chunk)).strip("\n")


def check_workflow(source: str, operators: Sequence[str]) -> CheckedWorkflow:
    """Parse and validate a workflow against the language and the benchmark's operators.

    Raises WorkflowRejected (with a line and a reason) for anything outside the language.
    """
    tree = _parse(source)
    checker = _Checker(operators)
    run_node = checker.module(tree)
    checker.unseen_check(tree)
    return CheckedWorkflow(
        source=source,
        operators_used=dict(checker.bound),
        body_source=_body_source(source, run_node),
        _body=tuple(run_node.body),
    )


# ------------------------------------------------------------------ interpretation


class _Returned(Exception):
    """Unwinds the interpreter from a ``return`` statement."""

    def __init__(self, value: Value) -> None:
        self.value = value


class _Interpreter:
    """Walks an accepted run_workflow body; every value is capped, every effect is an operator call."""

    def __init__(self, operators: dict[str, Operator]) -> None:
        self.operators = operators
        self.env: dict[str, Value] = {}
        self.work = 0
        self.calls = 0

    # -------------------------------------------------------------- values

    def fail(self, node: ast.AST | None, reason: str) -> WorkflowRuntimeError:
        return WorkflowRuntimeError(reason, _line(node))

    def new_str(self, node: ast.AST, value: str) -> str:
        if len(value) > MAX_STR_CHARS:
            raise self.fail(node, f"a string exceeds {MAX_STR_CHARS} characters")
        self.charge(node, len(value))
        return value

    def charge(self, node: ast.AST, amount: int) -> None:
        """Count work, so that a run's CPU and memory stay bounded whatever its statements do."""
        self.work += amount
        if self.work > MAX_WORK:
            raise self.fail(node, f"the run exceeded its work budget ({MAX_WORK} characters and items)")

    def new_list(self, node: ast.AST, value: list) -> list:
        if len(value) > MAX_LIST_ITEMS:
            raise self.fail(node, f"a list exceeds {MAX_LIST_ITEMS} items")
        if any(isinstance(item, list) for item in value):
            raise self.fail(node, "lists of lists are not supported")
        self.charge(node, len(value))
        return value

    def number(self, node: ast.AST, value: int | float) -> int | float:
        if _is_int(value) and abs(value) > MAX_INT:
            raise self.fail(node, f"an integer exceeds {MAX_INT}")
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
                raise self.fail(node, f"a string exceeds {MAX_STR_CHARS} characters")
            parts.append(part)
        return self.new_str(node, "[" + ", ".join(parts) + "]")

    def result(self, node: ast.AST | None, value: Value) -> str:
        """The workflow's output as text: lists one item a line, None as empty."""
        if value is None:
            return ""
        if isinstance(value, list):
            parts = [self.text(node, item) for item in value]
            if sum(len(p) + 1 for p in parts) > MAX_STR_CHARS:
                raise self.fail(node, f"a string exceeds {MAX_STR_CHARS} characters")
            return "\n".join(parts)
        return self.text(node, value)

    # -------------------------------------------------------------- statements

    async def block(self, stmts: Sequence[ast.stmt]) -> None:
        for stmt in stmts:
            await asyncio.sleep(0)  # a statement at a time: the time limit can always interrupt
            handler = self.STATEMENTS.get(type(stmt))
            if handler is None:
                raise self.fail(stmt, f"unexpected {_kind(stmt)}")
            await handler(self, stmt)

    async def assign(self, node: ast.Assign) -> None:
        self.env[node.targets[0].id] = await self.value_or_await(node.value)

    async def aug_assign(self, node: ast.AugAssign) -> None:
        current = self.lookup(node.target, node.target.id)
        if isinstance(current, list):
            raise self.fail(node, "+= works on strings and numbers only")
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
            raise self.fail(node, f"a list exceeds {MAX_LIST_ITEMS} items")
        if isinstance(item, list):
            raise self.fail(node, "lists of lists are not supported")
        self.charge(node, 1)
        target.append(item)

    async def for_loop(self, node: ast.For) -> None:
        for index in range(node.iter.args[0].value):
            self.env[node.target.id] = index
            await self.block(node.body)

    async def if_stmt(self, node: ast.If) -> None:
        await self.block(node.body if await self.evaluate(node.test) else node.orelse)

    async def return_stmt(self, node: ast.Return) -> None:
        raise _Returned(None if node.value is None else await self.evaluate(node.value))

    async def pass_stmt(self, node: ast.Pass) -> None:
        return None

    STATEMENTS: dict[type, Callable[..., Any]] = {
        ast.Assign: assign, ast.AugAssign: aug_assign, ast.Expr: expr_stmt, ast.For: for_loop,
        ast.If: if_stmt, ast.Return: return_stmt, ast.Pass: pass_stmt,
    }

    # -------------------------------------------------------------- expressions

    def lookup(self, node: ast.AST, name: str) -> Value:
        if name not in self.env:
            raise self.fail(node, f"name {name!r} is not assigned")
        return self.env[name]

    async def value_or_await(self, node: ast.expr) -> Value:
        return await (self.operator_call(node) if isinstance(node, ast.Await) else self.evaluate(node))

    async def evaluate(self, node: ast.expr) -> Value:
        handler = self.EXPRESSIONS.get(type(node))
        if handler is None:
            raise self.fail(node, f"unexpected {_kind(node)}")
        return await handler(self, node)

    async def constant(self, node: ast.Constant) -> Value:
        return node.value

    async def name(self, node: ast.Name) -> Value:
        return self.lookup(node, node.id)

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
                raise self.fail(node, f"a string exceeds {MAX_STR_CHARS} characters")
            return self.new_str(node, left + right)
        if isinstance(left, list) and isinstance(right, list):
            if len(left) + len(right) > MAX_LIST_ITEMS:
                raise self.fail(node, f"a list exceeds {MAX_LIST_ITEMS} items")
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
        value = await self.evaluate(node.args[0])
        if node.func.id == "str":
            return self.text(node, value)
        if not isinstance(value, (str, list)):
            raise self.fail(node, f"len() needs a string or a list, not {type(value).__name__}")
        return len(value)

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
                raise self.fail(node, f"a string exceeds {MAX_STR_CHARS} characters")
        return self.new_str(node, "".join(parts))

    async def list_comp(self, node: ast.ListComp) -> Value:
        gen = node.generators[0]
        name, missing = gen.target.id, object()
        saved = self.env.get(name, missing)
        items: list[Value] = []
        try:
            for index in range(gen.iter.args[0].value):
                self.env[name] = index
                items.append(await self.operator_call(node.elt))
        finally:
            if saved is missing:
                self.env.pop(name, None)
            else:
                self.env[name] = saved
        return self.new_list(node, items)

    async def operator_call(self, node: ast.Await) -> Value:
        """Await a bound operator with checked, coerced arguments; its exceptions propagate."""
        call = node.value
        attr = call.func.attr
        instance = self.operators[attr]
        self.calls += 1
        if self.calls > MAX_OPERATOR_CALLS:
            raise self.fail(node, f"more than {MAX_OPERATOR_CALLS} operator calls in one run")
        named = [*zip(instance.keywords, call.args), *((k.arg, k.value) for k in call.keywords)]
        kwargs = {key: self.argument(node, key, await self.evaluate(value)) for key, value in named}
        result = await instance(**kwargs)
        if not isinstance(result, str):
            raise self.fail(node, f"operator {instance.name} returned {type(result).__name__}, not text")
        return self.new_str(node, result)

    def argument(self, node: ast.AST, key: str, value: Value) -> Value:
        if key != "solutions":
            return self.text(node, value)
        if not isinstance(value, list):
            raise self.fail(node, f"solutions must be a list, not {type(value).__name__}")
        return [self.text(node, item) for item in value]

    EXPRESSIONS: dict[type, Callable[..., Any]] = {
        ast.Constant: constant, ast.Name: name, ast.List: list_display, ast.UnaryOp: unary,
        ast.BinOp: binary, ast.Subscript: subscript, ast.Call: call, ast.Compare: compare,
        ast.BoolOp: bool_op, ast.JoinedStr: fstring, ast.ListComp: list_comp, ast.Await: operator_call,
    }


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
    body_source: str  # run_workflow's body, dedented (for the template-similarity check)
    _body: tuple[ast.stmt, ...] = field(repr=False)

    async def run(self, context: OperatorContext) -> str:
        """Bind the operators to ``context`` and interpret run_workflow; returns its output as text."""
        operators = {attr: OPERATORS[name](context, context.problem) for attr, name in self.operators_used.items()}
        interpreter = _Interpreter(operators)
        try:
            await interpreter.block(self._body)
        except _Returned as returned:
            return interpreter.result(None, returned.value)
        except RecursionError:
            raise WorkflowRuntimeError("values nest too deeply") from None
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
