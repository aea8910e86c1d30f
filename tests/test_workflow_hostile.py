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
    WorkflowLimitExceeded,
    WorkflowRejected,
    WorkflowRuntimeError,
    check_workflow,
)
from tests.fake_openai import FakeOpenAIServer

SECRET = "sk-hostile-test-secret-0123456789"
CUSTOM = "self.custom = operator.Custom(config, problem)"
PROBLEM_INIT = ("self.problem = problem\nself.config = create(config)\n"
                "self.custom = operator.Custom(self.config, self.problem)")  # the original's constructor


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
    ("fstring-call", wf("s = 'a'\nx = f'{len(s)}'"), "f-string fields must be names, subscripts"),
    ("fstring-attr", wf("x = f'{self.custom}'"), "f-string fields must be names, subscripts"),
    ("fstring-method", wf("s = 'a'\nx = f'{s.strip()}'"), "f-string fields must be names, subscripts"),
    ("fstring-ascii", wf("s = 'a'\nx = f'{s!a}'"), "f-string conversion !a is not allowed"),
    ("fstring-config", wf("x = f'{self.config}'", PROBLEM_INIT), "f-string fields must be names, subscripts"),
    ("fstring-subscript-call", wf("xs = ['a']\nx = f'{xs[len(xs)]}'"), "an index must be an integer constant"),
    # secrets: config, the API key path, the environment, files
    ("self-config", wf("x = self.config"), "self.config cannot be used in run_workflow"),
    ("self-config-bound", wf("x = self.config", PROBLEM_INIT), "self.config cannot be used in run_workflow"),
    ("self-config-argument", wf("x = await self.custom(instruction=self.config)", PROBLEM_INIT),
     "self.config cannot be used in run_workflow"),
    ("self-config-attr", wf("x = self.config.api_key", PROBLEM_INIT), "attribute access self.config.api_key"),
    ("config-api-key", wf("x = config.api_key"), "attribute access config.api_key is not allowed"),
    ("client-path", wf("x = self.custom.context.client"), "attribute access self.custom.context.client"),
    ("os-environ", wf("x = os.environ['OPENAI_API_KEY']"), "attribute access os.environ is not allowed"),
    ("problem-answer", wf("x = problem.answer"), "attribute access problem.answer is not allowed"),
    ("self-problem-unbound", wf("x = self.problem"), "self.problem is not bound"),
    ("self-problem-reassigned", wf("self.problem = 'other'", PROBLEM_INIT),
     "assignment to self.problem is not allowed"),
    ("self-problem-call", wf("x = self.problem()", PROBLEM_INIT), "call to self.problem() is not allowed"),
    ("self-problem-dunder", wf("x = self.problem.__class__", PROBLEM_INIT), "attribute '__class__' is not allowed"),
    ("self-problem-attr", wf("x = self.problem.answer", PROBLEM_INIT), "attribute access self.problem.answer"),
    ("self-problem-other-value", wf("return 1", "self.problem = config\n" + CUSTOM), "__init__ may only contain"),
    ("self-problem-twice", wf("return 1", "self.problem = problem\n" + PROBLEM_INIT), "self.problem is bound twice"),
    # the original's create(config): only as self.config = create(config), once, in __init__
    ("create-in-body", wf("c = create(config)"), "call to create() is not allowed"),
    ("create-as-value", wf("c = create"), "create may only be used in __init__"),
    ("create-rebind", wf("create = 1"), "name 'create' cannot be assigned"),
    ("create-other-attr", wf("return 1", "self.llm = create(config)\n" + CUSTOM), "create may only be used as"),
    ("create-of-problem", wf("return 1", "self.config = create(problem)\n" + CUSTOM), "create may only be used as"),
    ("create-in-operator", wf("return 1", "self.custom = operator.Custom(create(config), problem)"),
     "create may only be used as"),
    ("create-twice", wf("return 1", "self.config = create(config)\n" + PROBLEM_INIT), "self.config is bound twice"),
    ("config-before-create", wf("return 1", "self.custom = operator.Custom(self.config, problem)\n"
                                            "self.config = create(config)"), "must be constructed as"),
    ("problem-before-binding", wf("return 1", "self.custom = operator.Custom(config, self.problem)\n"
                                              "self.problem = problem"), "must be constructed as"),
    ("operator-of-self-custom", wf("return 1", CUSTOM + "\nself.review = operator.Review(self.custom, problem)"),
     "must be constructed as"),
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
    ("try-finally", wf("try:\n    x = await self.custom()\nexcept Exception:\n    x = 'a'\nfinally:\n"
                       "    y = await self.custom()"), "try ... finally is not allowed"),
    ("try-finally-only", wf("try:\n    x = 1\nfinally:\n    x = 2"), "try ... finally is not allowed"),
    ("try-else", wf("try:\n    x = 1\nexcept Exception:\n    x = 2\nelse:\n    x = 3"), "try ... else is not allowed"),
    ("try-base-exception", wf("try:\n    x = 1\nexcept BaseException:\n    x = 2"), "only except Exception"),
    ("try-cancelled", wf("try:\n    x = 1\nexcept asyncio.CancelledError:\n    x = 2"),
     "not except asyncio.CancelledError"),
    ("try-timeout", wf("try:\n    x = 1\nexcept TimeoutError:\n    x = 2"), "only except Exception"),
    ("try-tuple", wf("try:\n    x = 1\nexcept (Exception, BaseException):\n    x = 2"), "only except Exception"),
    ("try-two-handlers", wf("try:\n    x = 1\nexcept ValueError:\n    x = 2\nexcept Exception:\n    x = 3"),
     "exactly one handler"),
    ("try-star", wf("try:\n    x = 1\nexcept* Exception:\n    pass"), "except* statement is not allowed"),
    ("try-raise", wf("try:\n    x = 1\nexcept Exception:\n    raise"), "raise statement is not allowed"),
    ("try-4-deep", wf("if 1:\n    for i in range(2):\n        try:\n            if 1:\n                pass\n"
                      "        except Exception:\n            pass"), "blocks nest more than 3 deep"),
    ("exception-as-value", wf("try:\n    x = 1\nexcept Exception as e:\n    x = 'error: ' + e"),
     "the exception name 'e' may be used only as str(e)"),
    ("exception-to-operator", wf("try:\n    x = 1\nexcept Exception as e:\n    x = await self.custom(e)"),
     "the exception name 'e' may be used only as str(e)"),
    ("exception-attribute", wf("try:\n    x = 1\nexcept Exception as e:\n    x = e.args"),
     "attribute access e.args is not allowed"),
    ("exception-traceback", wf("try:\n    x = 1\nexcept Exception as e:\n    x = e.__traceback__"),
     "attribute '__traceback__' is not allowed"),
    ("exception-after-handler", wf("try:\n    x = 1\nexcept Exception as e:\n    x = str(e)\nreturn str(e)"),
     "name 'e' used before assignment"),
    ("exception-shadows", wf("e = 'a'\ntry:\n    x = 1\nexcept Exception as e:\n    x = 2"), "is already a name"),
    ("exception-assigned", wf("try:\n    x = 1\nexcept Exception as e:\n    e = 1"), "cannot be assigned"),
    ("exception-appended", wf("try:\n    x = 1\nexcept Exception as e:\n    e.append(1)"), "may be used only"),
    ("exception-reserved", wf("try:\n    x = 1\nexcept Exception as str:\n    x = 2"), "cannot be assigned"),
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
    ("return-await-sleep", wf("return await asyncio.sleep(10)"), "await may only be applied"),
    ("return-await-expression", wf("return 'a' + await self.custom()"), "await is allowed only in"),
    ("await-in-expression", wf("x = 'a' + await self.custom()"), "await is allowed only in"),
    ("stray-string", wf("x = 1\n'not a docstring'"), "allowed only as the docstring"),
    # asyncio: only await asyncio.gather(...) of operator calls
    ("asyncio-sleep", wf("x = await asyncio.sleep(1)"), "await may only be applied to self.<operator>(...)"),
    ("asyncio-sleep-in-gather", wf("x = await asyncio.gather(asyncio.sleep(100), self.custom())"),
     "asyncio.gather() takes operator calls self.<operator>(...) only"),
    ("asyncio-create-task", wf("t = asyncio.create_task(self.custom())"),
     "call to asyncio.create_task() is not allowed"),
    ("asyncio-wait-for", wf("x = await asyncio.wait_for(self.custom(), 1)"), "await may only be applied"),
    ("asyncio-run", wf("x = asyncio.run(self.custom())"), "call to asyncio.run() is not allowed"),
    ("asyncio-subprocess", wf("p = await asyncio.create_subprocess_shell('ls')"), "await may only be applied"),
    ("asyncio-attr", wf("x = asyncio.get_event_loop"), "asyncio.get_event_loop is not allowed"),
    ("asyncio-loop-call", wf("x = asyncio.get_event_loop()"), "call to asyncio.get_event_loop() is not allowed"),
    ("asyncio-value", wf("x = asyncio"), "asyncio may only be used as await asyncio.gather"),
    ("asyncio-rebind", wf("asyncio = 1"), "name 'asyncio' cannot be assigned"),
    ("asyncio-import", "import asyncio\n" + wf("return 1"), "import"),
    ("gather-unawaited", wf("x = asyncio.gather(self.custom())"), "asyncio.gather(...) must be awaited"),
    ("gather-awaited-args", wf("x = await asyncio.gather(await self.custom())"), "without await"),
    ("gather-return-exceptions", wf("x = await asyncio.gather(self.custom(), return_exceptions=True)"),
     "no keyword arguments"),
    ("gather-empty", wf("x = await asyncio.gather()"), "needs at least one operator call"),
    ("gather-starred-name", wf("xs = []\nx = await asyncio.gather(*xs)"), "asyncio.gather(*...) needs"),
    ("gather-starred-empty", wf("x = await asyncio.gather(*[])"), "asyncio.gather(*...) needs"),
    ("gather-mixed-star", wf("x = await asyncio.gather(self.custom(), *[self.custom() for _ in range(2)])"),
     "one starred list and nothing else"),
    ("gather-append", wf("xs = []\nxs.append(await asyncio.gather(self.custom()))"), "would nest lists"),
    ("gather-in-comprehension", wf("xs = [await asyncio.gather(self.custom()) for _ in range(2)]"),
     "allowed only as name = await"),
    ("gather-range-large", wf("x = await asyncio.gather(*[self.custom() for _ in range(4)])"), "range(4) exceeds 3"),
    ("gather-comprehension-if", wf("x = await asyncio.gather(*[self.custom() for i in range(2) if i])"),
     "may not have if clauses"),
    ("gather-comprehension-3-deep", wf("for a in range(2):\n    for b in range(2):\n"
                                       "        x = await asyncio.gather(*[self.custom() for c in range(2)])"),
     "loops nest more than 2 deep"),
    ("gather-over-list", wf("xs = ['a']\nx = await asyncio.gather(*[self.custom(s) for s in xs])"),
     "loops must iterate over range(N)"),
    ("gather-recursion", wf("x = await asyncio.gather(self.run_workflow())"), "recursive call"),
    ("gather-unbound", wf("x = await asyncio.gather(self.review(pre_solution='a'))"), "self.review is not a bound"),
    ("gather-bare", wf("await asyncio.gather(self.custom())"), "must be assigned to a name or appended"),
    ("gather-in-expression", wf("x = 'a' + await asyncio.gather(self.custom())"), "await is allowed only in"),
    ("gather-of-open", wf("x = await asyncio.gather(open('/etc/passwd'))"), "takes operator calls"),
    ("gather-of-gather", wf("x = await asyncio.gather(asyncio.gather(self.custom()))"), "takes operator calls"),
    # string methods and builtins: constant arguments, a fixed set
    ("split-no-separator", wf("x = 'a b'.split()"), ".split() takes 1 argument(s)"),
    ("split-empty", wf("x = 'a b'.split('')"), ".split() needs a non-empty separator"),
    ("split-variable", wf("s = ','\nx = 'a'.split(s)"), ".split() arguments must be string constants"),
    ("split-maxsplit", wf("x = 'a,b'.split(',', 1)"), ".split() takes 1 argument(s)"),
    ("replace-variable", wf("s = 'a'\nx = 'a'.replace(s, 'b')"), ".replace() arguments must be string constants"),
    ("replace-count", wf("x = 'a'.replace('a', 'b', 3)"), ".replace() takes 2 argument(s)"),
    ("strip-variable", wf("s = 'a'\nx = 'a'.strip(s)"), ".strip() arguments must be string constants"),
    ("lower-argument", wf("x = 'A'.lower('x')"), ".lower() takes 0 argument(s)"),
    ("method-keyword", wf("x = 'a,b'.split(sep=',')"), ".split() takes positional arguments only"),
    ("method-starred", wf("xs = ['a']\nx = ','.join(*xs)"), ".join() takes positional arguments only"),
    ("unknown-method", wf("x = 'a'.encode()"), "call to .encode() is not allowed"),
    ("format-method", wf("x = '{}'.format(1)"), "call to .format() is not allowed"),
    ("dunder-method", wf("x = 'a'.__len__()"), "call to .__len__() is not allowed"),
    ("method-on-self", wf("x = self.join(['a'])"), "self.join is not a bound operator"),
    ("method-on-operator", wf("x = self.custom.strip()"), "must be called with await"),
    ("method-on-builtin", wf("x = str.strip('a')"), "str may only be called"),
    ("list-method", wf("xs = ['b']\nxs.sort()"), "call to xs.sort() is not allowed"),
    ("max-key-str", wf("x = max(['a'], key=str)"), "allows only key=len"),
    ("max-key-lambda", wf("x = max(['a'], key=lambda s: 1)"), "allows only key=len"),
    ("max-default", wf("x = max(['a'], default='x')"), "max() does not take default= here"),
    ("max-kwargs", wf("x = max(['a'], **{'key': len})"), "max() does not take ** here"),
    ("max-starred", wf("xs = ['a']\nx = max(*xs)"), "starred arguments to max() are not allowed"),
    ("min-no-argument", wf("x = min()"), "min() needs at least one argument"),
    ("sorted-two-args", wf("x = sorted(['a'], ['b'])"), "sorted() takes exactly one positional argument"),
    ("sorted-reverse-variable", wf("r = True\nx = sorted(['a'], reverse=r)"), "needs True or False"),
    ("sorted-cmp", wf("x = sorted(['a'], cmp=len)"), "sorted() does not take cmp= here"),
    ("sum-start", wf("x = sum([1], 0)"), "sum() takes exactly one positional argument"),
    ("sum-start-keyword", wf("x = sum([[1]], start=[])"), "sum() takes exactly one positional argument"),
    ("len-keyword", wf("x = len('a', x=1)"), "len() takes exactly one positional argument"),
    ("len-as-value", wf("f = len"), "len may only be called"),
    ("max-rebind", wf("max = 1"), "name 'max' cannot be assigned"),
    ("sorted-rebind-loop", wf("for sorted in range(2):\n    pass"), "name 'sorted' cannot be assigned"),
    ("other-builtin", wf("x = abs(-1)"), "call to abs() is not allowed"),
    ("enumerate", wf("xs = ['a']\nfor i in enumerate(xs):\n    pass"), "loops must iterate over range(N)"),
    ("map", wf("x = map(str, [1])"), "call to map() is not allowed"),
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
S1024 = "s = 'ab'\nfor i in range(3):\n    for j in range(3):\n        s = s + s\n"  # 1,024 characters
S65K = S1024 + "for i in range(3):\n    for j in range(2):\n        s = s + s\n"  # 65,536 characters
LIST_1000 = ("ys = [s, s, s, s, s, s, s, s, s, s]\nxs = ys + ys + ys + ys + ys + ys + ys + ys + ys + ys\n"
             "zs = xs + xs + xs + xs + xs + xs + xs + xs + xs + xs\n")  # 1,000 items
LIST_512 = "xs = [s]\nfor i in range(3):\n    for j in range(3):\n        xs = xs + xs\n"


def in_try(body: str, handler: str = "except Exception:") -> str:
    """``body`` inside a try whose handler swallows everything it is allowed to catch."""
    return "try:\n" + textwrap.indent(body, "    ") + f"\n{handler}\n    xs = 'swallowed'\nreturn 'swallowed'"


def gather_of(count: int) -> str:
    return "xs = await asyncio.gather(" + ", ".join(["self.custom()"] * count) + ")"


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
    # the new constructs: every result size-capped and charged to the work budget
    ("join-bomb", S1024 + LIST_512 + "t = ''.join(xs)", "a string exceeds", 0),
    ("join-separator-bomb", S1024 + LIST_512 + "t = s.join(xs)", "a string exceeds", 0),
    ("replace-bomb", S1024 + "for i in range(3):\n    for j in range(3):\n        s = s.replace('a', 'aaaa')",
     "a string exceeds", 0),
    ("upper-growth", "s = 'ßß'\nfor i in range(3):\n    for j in range(3):\n        s = s + s\n"
     "for i in range(3):\n    for j in range(2):\n        s = s + s\ns = s + s\nt = s.upper()", "a string exceeds", 0),
    ("split-bomb", "s = ',,'\nfor i in range(3):\n    for j in range(3):\n        s = s + s\nxs = s.split(',')",
     "a list exceeds 1000 items", 0),
    ("sorted-bomb", S65K + LIST_1000 + "t = sorted(zs)", "work budget", 0),
    ("sorted-reverse-bomb", S65K + LIST_1000 + "t = sorted(zs, reverse=True)", "work budget", 0),
    ("max-bomb", S65K + LIST_1000 + "t = max(zs)", "work budget", 0),
    ("min-bomb", S65K + LIST_1000 + "t = min(zs[0], zs[1], zs[2], zs[3]) + min(zs)", "work budget", 0),
    ("sum-overflow", "n = 1000000000000000000\nx = sum([n, n])", "an integer exceeds", 0),
    ("problem-doubling", "s = self.problem\nfor i in range(3):\n    for j in range(3):\n"
     "        s = s + s + s + s\n        s = f'{s}{s}'", "a string exceeds", 0),
    # try/except never swallows a limit
    ("try-string-cap", in_try(DOUBLING), "a string exceeds", 0),
    ("try-work-budget", in_try(COMPARE), "work budget", 0),
    ("try-operator-cap", in_try(FLOOD), f"more than {MAX_OPERATOR_CALLS} operator calls", MAX_OPERATOR_CALLS),
    ("bare-except-operator-cap", in_try(FLOOD, "except:"), f"more than {MAX_OPERATOR_CALLS} operator calls",
     MAX_OPERATOR_CALLS),
    ("except-as-operator-cap", in_try(FLOOD, "except Exception as e:"), "operator calls", MAX_OPERATOR_CALLS),
    ("try-lists-of-lists", in_try("ys = []\nys.append(ys)"), "lists of lists are not supported", 0),
    ("try-join-bomb", in_try(S1024 + LIST_512 + "t = ''.join(xs)"), "a string exceeds", 0),
    ("try-sorted-bomb", in_try(S65K + LIST_1000 + "t = sorted(zs)"), "work budget", 0),
    ("try-integer", in_try(NUMBER), "an integer exceeds", 0),
    # gather: every gathered call counts; counted before any is sent
    ("gather-over-cap", gather_of(60), f"more than {MAX_OPERATOR_CALLS} operator calls", 0),
    ("gather-loop-over-cap", "for i in range(3):\n    for j in range(3):\n        " + gather_of(6),
     f"more than {MAX_OPERATOR_CALLS} operator calls", 48),
    ("try-gather-over-cap", in_try(gather_of(60)), f"more than {MAX_OPERATOR_CALLS} operator calls", 0),
    ("gather-after-calls", "for i in range(3):\n    for j in range(3):\n        " + gather_of(5) + "\n"
     + gather_of(10), f"more than {MAX_OPERATOR_CALLS} operator calls", 45),
]
NOT_LIMITS = {"solutions-not-list"}  # errors Python raises too: catchable; the rest always stop the run


@pytest.mark.parametrize("case, body, fragment, requests", [pytest.param(i, b, f, r, id=i) for i, b, f, r in STOPPED])
def test_stopped_at_run_time(server, case, body, fragment, requests):
    bench = get_benchmark("GSM8K")
    init = PROBLEM_INIT + "\nself.sc_ensemble = operator.ScEnsemble(config, problem)"
    checked = check_workflow(wf(body, init), bench.operators)

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
    assert isinstance(caught.value, WorkflowLimitExceeded) == (case not in NOT_LIMITS)
    assert len(server.requests) == requests
    assert SECRET not in json.dumps(server.requests)


# ---------------------------------------------------------------- what no except may catch

SWALLOW = {
    "except Exception": "try:\n    x = await self.custom()\nexcept Exception:\n    x = 'swallowed'\nreturn x",
    "bare except": "try:\n    x = await self.custom()\nexcept:\n    x = 'swallowed'\nreturn x",
    "except as e": "try:\n    x = await self.custom()\nexcept Exception as e:\n    x = 'swallowed ' + str(e)\nreturn x",
    "gather": "try:\n    xs = await asyncio.gather(self.custom(), self.custom())\n    x = xs[0]\n"
              "except Exception:\n    x = 'swallowed'\nreturn x",
}


def run_caught(body: str, answer=None, *, limit: float | None = None, max_requests: int | None = None) -> str:
    """Run ``body`` (GSM8K, Custom bound) against its own server answering every request with
    ``answer`` (a Reply or Fault; default "ok"), with an optional time limit and request cap."""
    from scoreflow.workflow import run_with_limit

    bench = get_benchmark("GSM8K")
    checked = check_workflow(wf(body), bench.operators)

    async def go(url: str) -> str:
        config = ExecutorConfig(base_url=url, model="m", max_retries=0, request_timeout_s=20)
        client = OpenAIChatClient.from_config(config, cache=None, meter=None)
        context = OperatorContext(client, bench, bench.trial_problem, max_requests=max_requests)
        try:
            return await (checked.run(context) if limit is None else run_with_limit(checked, context, limit))
        finally:
            await client.aclose()

    try:
        with FakeOpenAIServer(None if answer is None else (lambda _body: answer)) as own:
            return asyncio.run(go(own.url))
    finally:
        bench.close()


@pytest.mark.parametrize("body", list(SWALLOW.values()), ids=list(SWALLOW))
def test_no_except_swallows_the_time_limit(body):
    from tests.fake_openai import Reply

    with pytest.raises(TimeoutError):
        run_caught(body, Reply("late", delay_s=3.0), limit=0.3)


@pytest.mark.parametrize("body", list(SWALLOW.values()), ids=list(SWALLOW))
def test_no_except_swallows_the_request_cap(body):
    from scoreflow.operators import RequestCapExceeded

    with pytest.raises(RequestCapExceeded):
        run_caught(body, max_requests=0)


@pytest.mark.parametrize("body", list(SWALLOW.values()), ids=list(SWALLOW))
def test_no_except_swallows_an_executor_outage(body):
    from scoreflow.executor.client import ExecutorUnavailable
    from tests.fake_openai import Fault

    with pytest.raises(ExecutorUnavailable) as caught:
        run_caught(body, Fault("status", status=503))
    assert SECRET not in str(caught.value)


def test_a_refused_request_is_the_workflows_own_failure_and_is_caught():
    from tests.fake_openai import Fault

    output = run_caught(SWALLOW["except as e"], Fault("status", status=400))
    assert output.startswith("swallowed ") and "400" in output and SECRET not in output
    assert run_caught(SWALLOW["gather"], Fault("status", status=400)) == "swallowed"


def test_an_uncatchable_failure_beside_a_catchable_one_wins():
    """Two gathered calls failing at once: the outage, not the catchable error, ends the run."""
    from scoreflow.executor.client import ExecutorUnavailable
    from scoreflow.workflow import _concurrently

    async def refused():
        raise ValueError("an operator's own error")

    async def outage():
        raise ExecutorUnavailable("the executor is down")

    async def slow():
        await asyncio.sleep(10)

    async def go():
        with pytest.raises(ExecutorUnavailable):
            await _concurrently([refused(), outage(), slow()])
        with pytest.raises(ValueError):
            await _concurrently([refused(), slow()])
        assert len(asyncio.all_tasks()) == 1  # the slow ones were cancelled, nothing left running

    asyncio.run(go())


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
