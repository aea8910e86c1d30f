"""Getting runnable code out of LLM replies (scoreflow/codeutil.py)."""

from __future__ import annotations

import ast
from typing import Any

from scoreflow.codeutil import defines_function, extract_code_blocks, sanitize


def _load(source: str) -> dict[str, Any]:
    """Execute sanitized code in a fresh namespace (it must not print or fail)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<sanitized>", "exec"), namespace)  # noqa: S102 - test input
    return namespace


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


# ------------------------------------------------------------ code blocks


def test_extract_code_blocks_languages_and_order() -> None:
    text = (
        "intro\n```python\na = 1\n```\nmid\n~~~\nb = 2\n~~~\n"
        "```bash\nls -la\n```\n```py\nc = 3\n```\n```Python3\nd = 4\n```\n```\ne = 5\n```"
    )
    assert extract_code_blocks(text) == ["a = 1", "b = 2", "c = 3", "d = 4", "e = 5"]


def test_extract_code_blocks_missing_closing_fence() -> None:
    text = "Here:\n```python\ndef f():\n    return 1\n"
    assert extract_code_blocks(text) == ["def f():\n    return 1"]


def test_extract_code_blocks_indented_fence_is_dedented() -> None:
    text = "1. Step\n    ```python\n    x = 1\n    if x:\n        y = 2\n    ```\n"
    assert extract_code_blocks(text) == ["x = 1\nif x:\n    y = 2"]


def test_extract_code_blocks_none() -> None:
    assert extract_code_blocks("just prose") == []


# --------------------------------------------------------------- sanitize

REPLY = '''Sure! Here is my solution.

```python
import math
from typing import List

MOD = 10**9 + 7
UNUSED = 5

def helper(x):
    # this comment must survive
    return x * 2 % MOD

def unused_helper():
    return 1

def solve(nums: List[int]) -> int:
    """Docstring kept."""
    result = 0
    def inner(v):
        return helper(v) + math.floor(0.5)
    for n in nums:
        result += inner(n)
    return result

result = solve([1, 2, 3])
print(result)
assert solve([]) == 0

if __name__ == "__main__":
    print(solve([4]))
```

This works because each number is doubled.
'''


def test_sanitize_keeps_entry_helpers_constants_and_imports() -> None:
    code = sanitize(REPLY, "solve")
    assert "# this comment must survive" in code
    assert '"""Docstring kept."""' in code
    assert "import math" in code and "from typing import List" in code
    assert _top_level_names(code) == {"MOD", "helper", "solve"}
    assert _load(code)["solve"]([1, 2, 3]) == 12


def test_sanitize_drops_demo_code(capsys: Any) -> None:
    code = sanitize(REPLY, "solve")
    for dropped in ("unused_helper", "UNUSED", "print(", "assert ", "__main__", "Sure!"):
        assert dropped not in code
    _load(code)
    assert capsys.readouterr().out == ""


def test_sanitize_nested_function_left_alone() -> None:
    code = sanitize(REPLY, "solve")
    assert "    def inner(v):\n        return helper(v) + math.floor(0.5)" in code


def test_sanitize_local_name_does_not_pull_demo_assignment() -> None:
    # ``result`` is a local of solve; the top-level ``result = solve(...)`` must go.
    assert "result = solve(" not in sanitize(REPLY, "solve")


def test_sanitize_prefers_last_block_defining_entry() -> None:
    text = (
        "First try:\n```python\ndef add(a, b):\n    return a - b\n```\n"
        "Fixed:\n```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```\n"
        "Usage:\n```python\nadd(3, 4)\n```"
    )
    code = sanitize(text, "add")
    assert _load(code)["add"](1, 2) == 3
    assert "print" not in code


def test_sanitize_borrows_helper_from_another_block() -> None:
    text = (
        "Helper:\n```python\nimport re\n\ndef words(s):\n    return re.findall(r'\\w+', s)\n```\n"
        "Main:\n```python\ndef count_words(s):\n    return len(words(s))\n```"
    )
    code = sanitize(text, "count_words")
    assert _load(code)["count_words"]("a b, c") == 3


def test_sanitize_missing_closing_fence() -> None:
    text = "Here you go:\n```python\ndef inc(x):\n    return x + 1\n"
    assert _load(sanitize(text, "inc"))["inc"](1) == 2


def test_sanitize_unfenced_code_between_prose() -> None:
    text = (
        "Explanation first.\n\ndef f(x):\n    return g(x) + 1\n\n"
        "def g(x):\n    return x * 10\n\nExample: f(1) returns 11, as shown.\n"
    )
    code = sanitize(text, "f")
    assert _load(code)["f"](1) == 11
    assert "Example" not in code


def test_sanitize_syntax_error_tail_in_block() -> None:
    text = "```python\ndef f(x):\n    return x + 1\n\ndef broken(:\n    pass\n```"
    code = sanitize(text, "f")
    assert _load(code)["f"](1) == 2
    assert "broken" not in code


def test_sanitize_truncated_unfenced_reply() -> None:
    text = "def f(x):\n    return x * 3\n\nprint(f(2)\n"  # generation cut off
    assert _load(sanitize(text, "f"))["f"](2) == 6


def test_sanitize_class_wrapped_entry_point() -> None:
    text = (
        "```python\nclass Solution:\n    def twoSum(self, a, b):\n        return self.k + a + b\n\n"
        "    k = 0\n\nprint(Solution().twoSum(1, 2))\n```"
    )
    code = sanitize(text, "twoSum")
    assert "print" not in code
    assert _load(code)["twoSum"](1, 2) == 3
    assert defines_function(code, "twoSum")


def test_sanitize_top_level_function_beats_method() -> None:
    text = "class A:\n    def f(self):\n        return 1\n\ndef f():\n    return 2\n"
    code = sanitize(text, "f")
    assert _load(code)["f"]() == 2
    assert "class A" not in code


def test_sanitize_keeps_decorators_and_class_dependencies() -> None:
    text = (
        "import functools\n\nclass Box:\n    def __init__(self, v):\n        self.v = v\n\n"
        "@functools.lru_cache(maxsize=None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
        "def entry(n):\n    return Box(fib(n)).v\n\nprint(entry(10))\n"
    )
    code = sanitize(text, "entry")
    assert "@functools.lru_cache(maxsize=None)" in code
    assert _load(code)["entry"](10) == 55


def test_sanitize_keeps_recursion_limit() -> None:
    text = "import sys\nsys.setrecursionlimit(10000)\n\ndef f(n):\n    return 0 if n == 0 else f(n - 1)\n"
    assert "sys.setrecursionlimit(10000)" in sanitize(text, "f")


def test_sanitize_entry_point_missing_returns_parsable_code_unchanged() -> None:
    text = "Answer:\n```python\ndef other(x):\n    return x\n\nprint(other(1))\n```"
    code = sanitize(text, "wanted")
    assert code == "def other(x):\n    return x\n\nprint(other(1))"
    assert "wanted" not in _top_level_names(code)


def test_sanitize_plain_code_without_entry_is_unchanged() -> None:
    text = "x = 1\nprint(x)\n"
    assert sanitize(text, "f") == text


def test_sanitize_output_parses_and_defines_entry() -> None:
    code = sanitize(REPLY, "solve")
    ast.parse(code)
    assert defines_function(code, "solve")


# ------------------------------------------------------- defines_function


def test_defines_function() -> None:
    assert defines_function("def f():\n    pass", "f")
    assert defines_function("async def f():\n    pass", "f")
    assert defines_function("f = lambda: 1", "f")
    assert not defines_function("class f:\n    pass", "f")
    assert not defines_function("def g():\n    def f():\n        pass", "f")
    assert not defines_function("def f(:", "f")
    assert not defines_function("print('f')", "f")


# ------------------------------------------------------- degenerate input


def test_sanitize_empty_and_blank_text() -> None:
    assert sanitize("", "f") == ""
    assert sanitize("\n\n", "f") == "\n\n"


def test_sanitize_survives_expressions_too_deep_for_the_parser() -> None:
    # The parser gives up (MemoryError / RecursionError); that line is simply unparsable.
    text = "def f():\n    return 1\n\nx = " + "-" * 5_000 + "1\n"
    assert _load(sanitize(text, "f"))["f"]() == 1
    assert not defines_function("x = " + "-" * 5_000 + "1", "x")


def test_sanitize_survives_statement_too_deep_to_unparse() -> None:
    # Parses, but ast.unparse (used for statements sharing a line) recurses too deep.
    text = "def f():\n    return 1\n\nx = " + "-" * 1_000 + "1; y = 2\n"
    assert _load(sanitize(text, "f"))["f"]() == 1


def test_sanitize_cuts_a_long_continuation_tail_at_once() -> None:
    text = "def f(x):\n    return x + 1\n\ny = 1 + \\\n" + "    1 + \\\n" * 5_000
    assert sanitize(text, "f") == "def f(x):\n    return x + 1\n"
