"""Getting runnable code out of LLM replies (scoreflow/codeutil.py)."""

from __future__ import annotations

import ast
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from scoreflow import codeutil
from scoreflow.codeutil import defines_function, extract_code_blocks, import_statements, sanitize


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


def test_sanitize_prefers_the_longest_block_defining_entry() -> None:
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


# ------------------------------------------- MetaGPT's choices (M13) and where we differ


def test_sanitize_longest_block_wins_even_when_it_comes_first() -> None:
    """MetaGPT takes the parsable span with the most non-blank lines, not the last block."""
    text = (
        "```python\ndef add(a, b):\n    total = a + b\n    return total\n```\n"
        "Shorter:\n```python\ndef add(a, b):\n    return 0\n```"
    )
    assert _load(sanitize(text, "add"))["add"](1, 2) == 3


def test_sanitize_ties_go_to_the_earlier_span() -> None:
    text = "```python\ndef add(a, b):\n    return a + b\n```\nor\n```python\ndef add(a, b):\n    return 0\n```"
    assert _load(sanitize(text, "add"))["add"](1, 2) == 3


def test_sanitize_a_longer_unfenced_span_beats_a_block() -> None:
    text = (
        "def add(a, b):\n    # the sum\n    result = a + b\n    return result\n\nIn short:\n"
        "```python\ndef add(a, b):\n    return 0\n```"
    )
    assert _load(sanitize(text, "add"))["add"](1, 2) == 3


def test_sanitize_first_definition_wins() -> None:
    text = "```python\ndef f():\n    return 1\n\ndef f():\n    return 2\n\nK = 3\nK = 4\n\ndef g():\n    return K\n```"
    code = sanitize(text, "f")
    assert _load(code)["f"]() == 1 and "return 2" not in code
    assert _load(sanitize(text, "g"))["g"]() == 3


def test_sanitize_a_function_without_return_gives_way_to_one_with_it() -> None:
    text = "def f():\n    pass\n\ndef f():\n    return 2\n"
    code = sanitize(text, "f")
    assert _load(code)["f"]() == 2 and "pass" not in code


def test_sanitize_keeps_a_needed_helper_without_return() -> None:
    """Deviation: MetaGPT drops every function without ``return``, even a helper the entry
    point calls (the solution then fails with a NameError); we keep it."""
    text = "def fill(xs):\n    xs.append(1)\n\ndef f():\n    xs = []\n    fill(xs)\n    return xs\n"
    assert _load(sanitize(text, "f"))["f"]() == [1]


def test_sanitize_top_level_entry_beats_a_method_in_a_longer_span() -> None:
    text = (
        "```python\nclass Solver:\n    def f(self):\n        value = 5\n        return value\n```\n"
        "```python\ndef f():\n    return 1\n```"
    )
    assert _load(sanitize(text, "f"))["f"]() == 1


# MBPP task 18's reference solution, unfenced after a line of prose: the constant before
# the first ``def`` was dropped (a window started at the ``def``), and the code raised NameError.
MBPP_18 = (
    "NO_OF_CHARS = 256\ndef str_to_list(string): \n\ttemp = [] \n\tfor x in string: \n\t\ttemp.append(x) \n\treturn temp \n"
    "def lst_to_string(List): \n\treturn ''.join(List) \ndef get_char_count_array(string): \n\tcount = [0] * NO_OF_CHARS \n"
    "\tfor i in string: \n\t\tcount[ord(i)] += 1\n\treturn count \ndef remove_dirty_chars(string, second_string): \n"
    "\tcount = get_char_count_array(second_string) \n\tip_ind = 0\n\tres_ind = 0\n\ttemp = '' \n"
    "\tstr_list = str_to_list(string) \n\twhile ip_ind != len(str_list): \n\t\ttemp = str_list[ip_ind] \n"
    "\t\tif count[ord(temp)] == 0: \n\t\t\tstr_list[res_ind] = str_list[ip_ind] \n\t\t\tres_ind += 1\n"
    "\t\tip_ind+=1\n\treturn lst_to_string(str_list[0:res_ind]) "
)


def test_sanitize_keeps_a_constant_before_the_first_def_after_prose() -> None:
    text = "Here is the solution:\n" + MBPP_18 + "\n\nIt counts the characters of the second string first."
    code = sanitize(text, "remove_dirty_chars")
    assert code.startswith("NO_OF_CHARS = 256\n")
    assert _load(code)["remove_dirty_chars"]("probasscurve", "pros") == "bacuve"


def test_mbpp_18_reference_matches_the_prepared_data() -> None:
    prepared = Path(__file__).resolve().parent.parent / "data" / "prepared" / "MBPP" / "test.jsonl"
    if not prepared.exists():
        pytest.skip("python -m data.prepare --dataset MBPP has not run")
    records = [json.loads(line) for line in prepared.read_text().splitlines()]
    (record,) = [r for r in records if r["task_id"] == 18]
    assert record["code"] == MBPP_18


def test_sanitize_leads_in_with_constants_blank_lines_and_bracketed_values() -> None:
    text = (
        "The table comes first.\n\nTABLE = {\n    'a': 1,\n}\n\n# the lookup\nDEFAULT = 0\n"
        "def f(key):\n    return TABLE.get(key, DEFAULT)\n\nThat is all."
    )
    code = sanitize(text, "f")
    assert "TABLE = {" in code and "DEFAULT = 0" in code
    assert _load(code)["f"]("a") == 1


def test_sanitize_lead_in_stops_at_prose() -> None:
    text = "UNUSED = 1\nThen some prose.\nK = 2\ndef f():\n    return K\n"
    code = sanitize(text, "f")
    assert "UNUSED" not in code and _load(code)["f"]() == 2


# A brute-force MetaGPT: every line span (i, j), j > i, that ast.parse accepts; the most
# non-blank lines wins, the earliest on ties; in it, the first definition of the entry
# point, functions without ``return`` skipped. Cubic: small replies only.

def _metagpt_span(text: str) -> str:
    lines = text.split("\n")
    best, most = (0, 0), 0
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            try:
                ast.parse("\n".join(lines[i : j + 1]))
            except SyntaxError:
                continue
            count = sum(1 for line in lines[i : j + 1] if line.strip())
            if count > most:
                best, most = (i, j), count
    return "\n".join(lines[best[0] : best[1] + 1])


def _first_definition(source: str, name: str) -> str | None:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    seen: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not any(isinstance(child, ast.Return) for child in ast.walk(node)):
                continue
            bound = node.name
        elif isinstance(node, ast.ClassDef):
            bound = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            bound = node.targets[0].id
        else:
            continue
        if bound not in seen and bound == name:
            return ast.dump(node)
        seen.add(bound)
    return None


PIECES = (
    "Here is the code:", "Explanation follows.", "", "```python", "```", "~~~", "def f():\n    return 1",
    "def f():\n    return 2", "def f():\n    pass", "def f(x):\n    return g(x)", "def g(x):\n    return 3", "K = 4",
    "print(f())", "def broken(:", "x = (", "assert f() == 1", "import math", "class A:\n    def f(self):\n        return 5",
    "    return 7", "f = lambda: 9", "# comment", "Output: 3", "if __name__ == '__main__':\n    print(f())",
    "x = [\n    1,\n]", "for i in range(2):\n    pass", "Note: x = 5 is it", "    indented prose", "f(1)",
)


def test_sanitize_picks_the_entry_point_metagpt_picks() -> None:
    """Where MetaGPT's longest span defines the entry point, we return that same definition
    (replies without triple-quoted strings; see docs/fidelity.md)."""
    rng = random.Random(14)
    compared = 0
    for _ in range(600):
        text = "\n".join(rng.choice(PIECES) for _ in range(rng.randint(1, 10)))
        wanted = _first_definition(_metagpt_span(text), "f")
        if wanted is None:
            continue
        compared += 1
        assert _first_definition(sanitize(text, "f"), "f") == wanted, text
    assert compared > 250


# ----------------------------------------------------------------- import_statements


def test_import_statements() -> None:
    code = "import math\nfrom the above we see\nfrom typing import List\n    import os\nx = 1\nimport (\n"
    assert import_statements(code) == "import math\nfrom typing import List"
    assert import_statements("def solve():\n    return 1") == ""


# ------------------------------------------------------- speed of the lead-in search


def _repeat(unit: str, size: int = 200_000) -> str:
    return unit * max(1, size // len(unit))


LEAD_IN_FAMILIES = {  # prose lines end in a full stop: a bare word would be a valid statement
    "many_short_lead_ins": _repeat("Z = 3\ndef f():\n  return Z\nSome prose.\n"),
    "indented_lines_between": _repeat("x = 1\n  y\n" * 25 + "def f():\n  return 1\nSome prose.\n"),
    "closing_brackets": _repeat("]\n" * 60 + "Some prose.\ndef f():\n  return 1\n"),
    "prose_that_parses": _repeat("Note: x = 5 is it\ndef f():\n  return 1\nSome prose.\n"),
    "one_long_lead_in": "Some prose.\n" + "x = 1\n" * 30_000 + "def f():\n  return x\n",
    "long_statement_lines": _repeat(("b = " + "1, " * 3000 + "1\n") * 3 + "def f():\n  return b\nSome prose.\n"),
    "entry_assignments": _repeat("f = 1\nSome prose.\n"),
    "comments_above": _repeat("# c\n" * 50 + "def f():\n  return 1\nSome prose.\n"),
}


@pytest.mark.parametrize("name", sorted(LEAD_IN_FAMILIES))
def test_lead_in_search_is_fast_on_hostile_replies(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse work stays within sanitize's budget (the walk and the lead-in parses are charged
    to it), and the time with it, as for tests/test_parse_speed.py's families."""
    handed: list[int] = []
    real_parse = ast.parse

    def counting_parse(source: str, *args: Any, **kwargs: Any) -> ast.Module:
        handed.append(len(source))
        return real_parse(source, *args, **kwargs)

    text = LEAD_IN_FAMILIES[name]
    monkeypatch.setattr(ast, "parse", counting_parse)
    start = time.perf_counter()
    code = sanitize(text, "f")
    seconds = time.perf_counter() - start
    monkeypatch.undo()
    assert sum(handed) <= codeutil._BUDGET_PER_CHAR * len(text) + codeutil._BUDGET_FLOOR
    assert seconds < 2.0, f"{name} took {seconds:.3f} s"
    assert defines_function(code, "f")
