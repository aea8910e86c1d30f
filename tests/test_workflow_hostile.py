"""Hostile workflows: each is rejected at check time with a specific reason, or, where it
is inside the language, stopped at run time — and nothing reaches the executor or leaks.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from benchmarks import get_benchmark
from scoreflow.config import ExecutorConfig
from scoreflow.executor.openai_backend import OpenAIChatClient
from scoreflow.operators import OperatorContext
from scoreflow.workflow import (
    MAX_AST_DEPTH,
    MAX_OPERATOR_CALLS,
    MAX_SOURCE_CHARS,
    WorkflowRejected,
    WorkflowRuntimeError,
    check_workflow,
)
from tests.fake_openai import FakeOpenAIServer

SECRET = "sk-hostile-test-secret-0123456789"
CUSTOM = "self.custom = operator.Custom(config, problem)"


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.requests.clear()
    yield


def wf(body: str, init: str = CUSTOM) -> str:
    """A Workflow class with the given __init__ bindings and run_workflow body."""
    return (
        "class Workflow:\n    def __init__(self, config, problem) -> None:\n"
        + textwrap.indent(textwrap.dedent(init).strip(), " " * 8)
        + "\n\n    async def run_workflow(self):\n"
        + textwrap.indent(textwrap.dedent(body).strip(), " " * 8)
        + "\n"
    )


def cls(members: str, header: str = "class Workflow:") -> str:
    """A whole class with the given members (for class-level tricks)."""
    return header + "\n" + textwrap.indent(textwrap.dedent(members).strip(), "    ") + "\n"


RUN = "    async def run_workflow(self):\n        x = await self.custom()\n        return x\n"
INIT = f"    def __init__(self, config, problem) -> None:\n        {CUSTOM}\n"


# (id, source, a fragment the rejection reason must contain)
REJECTED: list[tuple[str, str, str]] = [
    # imports in every spelling and place
    ("import-top", "import os\n" + wf("return 1"), "import"),
    ("from-import-top", "from os import system\n" + wf("return 1"), "import"),
    ("import-in-body", wf("import os\nreturn 1"), "import"),
    ("from-import-in-body", wf("from subprocess import run\nreturn 1"), "import"),
    ("dunder-import", wf("x = __import__('os')\nreturn 1"), "call to __import__() is not allowed"),
    ("importlib", wf("x = importlib.import_module('os')"), "call to importlib.import_module() is not allowed"),
    ("import-in-class", "class Workflow:\n    import os\n" + INIT + "\n" + RUN, "import is not allowed in class"),
    ("import-in-init", wf("return 1", "import os\n" + CUSTOM), "import is not allowed in __init__"),
    ("import-socket", wf("import socket\nreturn 1"), "import"),
    ("socket-call", wf("s = socket.create_connection(('example.com', 80))"), "socket.create_connection()"),
    # object-graph walks
    ("subclasses-walk", wf("x = ().__class__.__bases__[0].__subclasses__()"), "__subclasses__"),
    ("class-attr", wf("x = 'a'\ny = x.__class__"), "attribute '__class__' is not allowed"),
    ("globals-attr", wf("x = self.custom.__globals__"), "attribute '__globals__' is not allowed"),
    ("builtins-name", wf("x = __builtins__"), "name '__builtins__' is not allowed"),
    ("getattr", wf("x = getattr(self, 'cu' + 'stom')"), "call to getattr() is not allowed"),
    ("self-dict", wf("x = self.__dict__"), "attribute '__dict__' is not allowed"),
    ("type-call", wf("x = type(self)"), "call to type() is not allowed"),
    ("self-bare", wf("x = self"), "self may only be used"),
    # string tricks
    ("percent-format", wf("x = '%s' % 'a'"), "operator % is not allowed"),
    ("str-format", wf("x = '{0.__class__}'.format('a')"), "call to .format() is not allowed"),
    ("fstring-conversion", wf("s = 'a'\nx = f'{s!r}'"), "f-string conversion !r is not allowed"),
    ("fstring-debug", wf("s = 'a'\nx = f'{s=}'"), "f-string conversion"),
    ("fstring-spec", wf("s = 'a'\nn = 3\nx = f'{s:>{n}}'"), "f-string format specs are not allowed"),
    ("fstring-call", wf("s = 'a'\nx = f'{len(s)}'"), "f-string fields must be plain names"),
    ("fstring-attr", wf("x = f'{self.custom}'"), "f-string fields must be plain names"),
    # secrets: config, the API key path, the environment, files
    ("self-config", wf("x = self.config"), "self.config is not a bound operator"),
    ("config-api-key", wf("x = config.api_key"), "attribute access config.api_key is not allowed"),
    ("client-path", wf("x = self.custom.context.client"), "attribute access self.custom.context.client"),
    ("os-environ", wf("x = os.environ['OPENAI_API_KEY']"), "attribute access os.environ is not allowed"),
    ("problem-answer", wf("x = problem.answer"), "attribute access problem.answer is not allowed"),
    ("self-problem", wf("x = self.problem", CUSTOM + "\nself.problem = problem"), "self.problem is not a bound"),
    ("open", wf("x = open('/etc/passwd')"), "call to open() is not allowed"),
    ("open-in-argument", wf("x = await self.custom(instruction=open('/etc/passwd'))"), "call to open()"),
    ("exec", wf("exec('import os')"), "call to exec() is not allowed"),
    ("eval", wf("x = eval('1')"), "call to eval() is not allowed"),
    ("compile", wf("x = compile('1', 'f', 'eval')"), "call to compile() is not allowed"),
    ("globals", wf("x = globals()"), "call to globals() is not allowed"),
    ("locals", wf("x = locals()"), "call to locals() is not allowed"),
    ("vars", wf("x = vars(self)"), "call to vars() is not allowed"),
    ("breakpoint", wf("breakpoint()"), "call to breakpoint() is not allowed"),
    # unbounded work
    ("while-true", wf("while True:\n    pass"), "while loop is not allowed"),
    ("range-power", wf("for _ in range(10**9):\n    pass"), "range() bound must be an integer constant"),
    ("range-large", wf("for _ in range(1000000000):\n    pass"), "range(1000000000) exceeds 3"),
    ("range-zero", wf("for _ in range(0):\n    pass"), "range(0) must be at least 1"),
    ("range-variable", wf("n = 3\nfor _ in range(n):\n    pass"), "range() bound must be an integer constant"),
    ("range-two-args", wf("for _ in range(1, 3):\n    pass"), "range() takes exactly one argument"),
    ("loop-over-list", wf("xs = [1]\nfor x in xs:\n    xs.append(x)"), "loops must iterate over range(N)"),
    ("loops-3-deep", wf("for a in range(3):\n    for b in range(3):\n        for c in range(3):\n            pass"),
     "loops nest more than 2 deep"),
    ("comprehension-3-deep", wf("for a in range(3):\n    for b in range(3):\n"
                                "        xs = [await self.custom() for c in range(3)]"), "loops nest more than 2 deep"),
    ("blocks-4-deep", wf("if 1:\n    if 1:\n        if 1:\n            if 1:\n                pass"),
     "blocks nest more than 3 deep"),
    ("recursion", wf("x = await self.run_workflow()"), "recursive call to self.run_workflow()"),
    ("recursion-unawaited", wf("x = self.run_workflow()"), "recursive call to self.run_workflow()"),
    # monkey-patching and rebinding
    ("patch-self-operator", wf("self.custom = None\nreturn 1"), "assignment to self.custom is not allowed"),
    ("patch-operator-module", wf("operator.Custom = None"), "assignment to operator.Custom is not allowed"),
    ("patch-in-init", wf("return 1", CUSTOM + "\noperator.Custom = None"), "__init__ may only contain"),
    ("lambda-in-init", wf("return 1", "self.custom = lambda: 1"), "__init__ may only contain"),
    ("init-extra-arg", wf("return 1", "self.custom = operator.Custom(config, __import__('os'))"),
     "must be constructed as operator.Custom(config, problem)"),
    ("init-private-attr", wf("return 1", "self._c = operator.Custom(config, problem)"), "self._c is not allowed"),
    ("init-rebind", wf("return 1", CUSTOM + "\nself.custom = operator.Review(config, problem)"), "bound twice"),
    ("init-config-attr", wf("return 1", "self.config = operator.Custom(config, problem)"),
     "self.config is not allowed"),
    ("init-default-arg", cls("def __init__(self, config, problem, evil=__import__('os')) -> None:\n"
                             f"    {CUSTOM}\n" + RUN.replace("    ", "", 1)), "signature must be __init__"),
    ("assign-builtin", wf("len = 3"), "name 'len' cannot be assigned"),
    ("builtin-as-value", wf("f = str"), "str may only be called"),
    # forbidden statements and expressions
    ("nested-def", wf("def f():\n    return 1\nreturn f()"), "function definition is not allowed"),
    ("nested-async-def", wf("async def f():\n    return 1"), "function definition is not allowed"),
    ("lambda", wf("f = lambda: 1"), "lambda is not allowed"),
    ("try-swallow", wf("try:\n    x = 1\nexcept Exception:\n    pass"), "try statement is not allowed"),
    ("with", wf("with open('f') as fh:\n    pass"), "with statement is not allowed"),
    ("async-with", wf("async with x:\n    pass"), "with statement is not allowed"),
    ("async-for", wf("async for x in y:\n    pass"), "async for loop is not allowed"),
    ("global", wf("global x\nx = 1"), "global statement is not allowed"),
    ("del", wf("x = 1\ndel x"), "del statement is not allowed"),
    ("raise", wf("raise SystemExit"), "raise statement is not allowed"),
    ("assert", wf("assert 1"), "assert statement is not allowed"),
    ("match", wf("match 1:\n    case 1:\n        pass"), "match statement is not allowed"),
    ("starred-args", wf("xs = ['a']\nx = await self.custom(*xs)"), "starred arguments are not allowed"),
    ("starred-list", wf("xs = ['a']\nx = [*xs]"), "starred expression is not allowed"),
    ("kwargs-unpack", wf("x = await self.custom(**{'instruction': 'a'})"), "**keyword unpacking"),
    ("walrus", wf("if (x := 1):\n    pass"), "assignment expression (:=) is not allowed"),
    ("yield", wf("yield 1"), "yield is not allowed"),
    ("conditional-expr", wf("x = 1 if True else 2"), "conditional expression is not allowed"),
    ("dict", wf("x = {}"), "dict is not allowed"),
    ("slice", wf("x = 'abc'[0:1]"), "slicing is not allowed"),
    ("bool-index", wf("x = 'abc'[True]"), "an index must be an integer constant"),
    ("bytes", wf("x = b'abc'"), "bytes constants are not allowed"),
    ("tuple-target", wf("a, b = 1, 2"), "as an assignment target is not allowed"),
    ("chained-assign", wf("a = b = 1"), "chained assignment is not allowed"),
    ("item-assign", wf("a = [1]\na[0] = 2"), "assignment to"),
    ("is-compare", wf("x = 1 is 1"), "comparison 'is' is not allowed"),
    ("bit-not", wf("x = ~1"), "unary operator ~ is not allowed"),
    ("unawaited-operator", wf("x = self.custom(instruction='a')"), "must be awaited"),
    ("operator-object", wf("x = self.custom"), "must be called with await"),
    ("bare-await", wf("await self.custom()"), "must be assigned to a name or appended"),
    ("return-await", wf("return await self.custom()"), "return await ... is not allowed"),
    ("await-in-expression", wf("x = 'a' + await self.custom()"), "await is allowed only in"),
    ("stray-string", wf("x = 1\n'not a docstring'"), "allowed only as the docstring"),
    # class shape
    ("decorated-run", cls(INIT.replace("    ", "", 1) + "\n@staticmethod\n" + RUN.replace("    ", "", 1)),
     "decorators are not allowed"),
    ("decorated-class", "@dataclass\n" + wf("return 1"), "decorators are not allowed"),
    ("second-class", wf("return 1") + "\nclass Evil:\n    pass\n", "a second class is not allowed"),
    ("code-outside-class", wf("return 1") + "\nprint('hi')\n", "outside class Workflow is not allowed"),
    ("class-bases", wf("return 1").replace("class Workflow:", "class Workflow(object):"), "base classes"),
    ("class-metaclass", wf("return 1").replace("class Workflow:", "class Workflow(metaclass=type):"),
     "keywords (metaclass=...)"),
    ("class-name", wf("return 1").replace("class Workflow:", "class Flow:"), "must be named Workflow"),
    ("extra-method", cls(INIT.replace("    ", "", 1) + RUN.replace("    ", "", 1) + "def helper(self):\n    pass"),
     "only __init__ and run_workflow"),
    ("class-attribute", "class Workflow:\n    x = 1\n" + INIT + RUN, "Assign node is not allowed in class Workflow"),
    ("sync-run", wf("return 1").replace("async def run_workflow", "def run_workflow"), "must be async def"),
    ("run-annotation", wf("return 1").replace("run_workflow(self):", "run_workflow(self) -> __import__('os'):"),
     "return annotation"),
    ("run-extra-arg", wf("return 1").replace("run_workflow(self)", "run_workflow(self, x=open('f'))"),
     "signature must be run_workflow(self)"),
    # operators and arguments
    ("unknown-operator", wf("return 1", "self.foo = operator.Foo(config, problem)"), "line 3: unknown operator 'Foo'"),
    ("unbound-attribute", wf("x = await self.review(pre_solution='a')"), "self.review is not a bound operator"),
    ("unknown-keyword", wf("x = await self.custom(prompt='a')"), "unknown keyword argument 'prompt' for Custom"),
    ("too-many-positional", wf("x = await self.custom('a', 'b')"), "at most 1 positional"),
    ("duplicate-argument", wf("x = await self.custom('a', instruction='b')"), "given twice"),
    ("append-keyword", wf("xs = []\nxs.append(x=1)"), ".append() takes exactly one positional argument"),
    ("append-undefined", wf("xs.append(1)"), "name 'xs' used before assignment"),
    ("used-before-assignment", wf("return answer"), "name 'answer' used before assignment"),
    # size and depth
    ("huge-constant", wf("x = '" + "A" * MAX_SOURCE_CHARS + "'"), f"(limit {MAX_SOURCE_CHARS})"),
    ("deep-list", wf("x = " + "[" * (MAX_AST_DEPTH + 5) + "]" * (MAX_AST_DEPTH + 5)), "nests too deeply"),
    ("long-chain", wf("x = 'a'\ny = " + "x + " * 3000 + "x"), "nest"),
    ("deep-parens", wf("x = " + "(" * 250 + "1" + ")" * 250), "too many nested parentheses"),
    ("null-byte", wf("x = 1") + "\0", "syntax error"),
    ("syntax-error", wf("x = = 1"), "line 6: syntax error"),
    ("empty", "", "no class Workflow"),
]


@pytest.mark.parametrize("source, fragment", [pytest.param(s, f, id=i) for i, s, f in REJECTED])
def test_rejected_at_check_time(server, source, fragment):
    with pytest.raises(WorkflowRejected) as caught:
        check_workflow(source, get_benchmark("GSM8K").operators)
    reason = caught.value.reason
    assert fragment in reason, reason
    assert "\n" not in reason and len(reason) < 300
    assert server.requests == []  # nothing ran


def test_programmer_is_not_available_to_humaneval(server):
    source = wf("x = await self.programmer(analysis='a')", "self.programmer = operator.Programmer(config, problem)")
    with pytest.raises(WorkflowRejected, match="operator 'Programmer' is not available"):
        check_workflow(source, get_benchmark("HumanEval").operators)
    assert server.requests == []


def test_the_catalogue_is_large_and_distinct():
    assert len(REJECTED) >= 30
    assert len({source for _, source, _ in REJECTED}) == len(REJECTED)


# ---------------------------------------------------------------- stopped at run time

DOUBLING = "s = 'ab'\nfor i in range(3):\n    for j in range(3):\n" + "        s = s + s\n" * 3 + "return s"
NUMBER = "n = 2\nfor i in range(3):\n    for j in range(3):\n" + "        n += n\n" * 8 + "return n"
COMPARE = ("s = 'ab'\nfor i in range(3):\n    for j in range(3):\n        s = s + s\nfor i in range(3):\n"
           "    s = s + s\n    s = s + s\nfor i in range(3):\n    for j in range(3):\n"
           + "        t = s == s and s in s\n" * 20)
FLOOD = "xs = []\nfor i in range(3):\n    for j in range(3):\n" + "        xs.append(await self.custom())\n" * 6

# (id, run_workflow body, reason fragment, requests the executor may see before the stop)
STOPPED: list[tuple[str, str, str, int]] = [
    ("string-doubling", DOUBLING, "a string exceeds", 0),
    ("list-doubling", "xs = ['a']\nfor i in range(3):\n    for j in range(3):\n        xs = xs + xs + xs\n",
     "a list exceeds 1000 items", 0),
    ("self-append", "xs = []\nxs.append(xs)", "lists of lists are not supported", 0),
    ("nested-list", "xs = []\nys = [xs]", "lists of lists are not supported", 0),
    ("integer-growth", NUMBER, "an integer exceeds", 0),
    ("compare-bomb", COMPARE, "work budget", 0),
    ("operator-flood", FLOOD, f"more than {MAX_OPERATOR_CALLS} operator calls", MAX_OPERATOR_CALLS),
    ("render-bomb", "s = 'ab'\nfor i in range(3):\n    for j in range(3):\n        s = s + s + s\n        s = s + s\n"
     "        xs = [s, s, s]\n        t = str(xs)", "a string exceeds", 0),
    ("solutions-not-list", "x = await self.custom(instruction=[1, 2])\ny = await self.custom(instruction=x)\n"
     "z = await self.sc_ensemble(solutions=y)", "solutions must be a list", 2),
]


@pytest.mark.parametrize("body, fragment, requests", [pytest.param(b, f, r, id=i) for i, b, f, r in STOPPED])
def test_stopped_at_run_time(server, body, fragment, requests):
    bench = get_benchmark("GSM8K")
    checked = check_workflow(wf(body, CUSTOM + "\nself.sc_ensemble = operator.ScEnsemble(config, problem)"),
                             bench.operators)

    async def go():
        config = ExecutorConfig(base_url=server.url, model="m", max_retries=0, request_timeout_s=20)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        try:
            return await checked.run(OperatorContext(client, bench, bench.trial_problem))
        finally:
            await client.aclose()

    try:
        with pytest.raises(WorkflowRuntimeError) as caught:
            asyncio.run(go())
    finally:
        bench.close()
    assert fragment in caught.value.reason, caught.value.reason
    assert len(server.requests) == requests
    assert SECRET not in json.dumps(server.requests)


def test_the_interpreter_holds_no_dangerous_builtins():
    """The module never calls exec/eval/compile/open/__import__ nor imports a loader."""
    import ast
    import inspect

    import scoreflow.workflow as module

    tree = ast.parse(inspect.getsource(module))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"exec", "eval", "compile", "open", "__import__", "setattr", "delattr"}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"importlib", "os", "subprocess", "socket", "builtins"}
