"""Parsing stays near-linear on huge hostile replies.

Executor replies reach about 200,000 characters and are parsed on the asyncio
event loop that thousands of workflow runs share, so one superlinear step
stalls them all. Each hostile family below is timed at full size against a
generous bound (``pytest -s`` prints the measured times); its small version is
checked against a straightforward reference, so speed did not change answers.
"""

from __future__ import annotations

import ast
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import scoring
from benchmarks.base import Benchmark
from scoreflow import codeutil
from scoreflow.codeutil import defines_function, extract_code_blocks, sanitize
from scoreflow.operators import failure_details, first_code, parse_fields, solution_letter
from scoreflow.workflow import extract_graph

FULL = 200_000
SMALL = 2_000
BOUND_S = 2.0


def _timed(name: str, call: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.3f} s")
    assert seconds < BOUND_S, f"{name} took {seconds:.3f} s"
    return result


def _repeat(unit: str, size: int, head: str = "", tail: str = "") -> str:
    """``head + unit * n + tail`` of about ``size`` characters."""
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


# ------------------------------------------------------------------ sanitize

F_PASS = "def f():\n  pass\n"
F_RETURN = "def f():\n  return 1\n"
UNCHANGED = "<the text unchanged>"

# name -> (reply of about the given size, what sanitize(reply, "f") gives at either size)
SANITIZE_FAMILIES: dict[str, tuple[Callable[[int], str], str]] = {
    # the four reported inputs
    "backslash_tail_after_many_defs": (lambda n: _repeat("def f():\n  pass\nz = 1\n", n, tail="x = \\\n"), F_PASS),
    "backslash_lines": (lambda n: _repeat("\\\n", n, head="def f(a):\n    return a\n"), "def f(a):\n    return a\n"),
    "continued_return": (lambda n: _repeat("    + 1 \\\n", n, head="def f(a):\n    return a \\\n"), UNCHANGED),
    "indented_backslashes": (lambda n: _repeat("  \\\n", n, head=F_RETURN), F_RETURN),
    # more tails that fail only at the end of the text
    "decorator_tail": (lambda n: _repeat("@d\n", n, head=F_RETURN), F_RETURN),
    "try_without_handler": (lambda n: _repeat("  y = 1\n", n, head=F_RETURN + "try:\n"), F_RETURN),
    "unclosed_brackets": (lambda n: _repeat("(\n", n, head=F_RETURN), F_RETURN),
    "null_byte_tail": (lambda n: _repeat("z = 1\n", n, head=F_RETURN, tail="\0\n"), F_RETURN),
    "null_byte_head": (lambda n: _repeat("z = 1\n", n, head="x\0\n"), UNCHANGED),
    "too_deep_expression": (lambda n: F_RETURN + "x = " + "-" * n + "1\n", F_RETURN),
    # many starting points for the prefix search
    "entry_between_prose": (lambda n: _repeat(F_PASS + "prose here\n", n), F_PASS),
    "entry_inside_strings": (lambda n: _repeat("x = '''\n" + F_PASS + "'''\n", n, tail="y = (\n"), F_PASS),
    # fences
    "many_fences": (lambda n: _repeat("```\nx\n```\n", n), "x"),
    "fence_with_long_tag": (lambda n: "```" + "a" * n + "`\n", UNCHANGED),
    "blocks_with_broken_tails": (lambda n: _repeat("```python\n" + F_RETURN + "x = \\\n```\n", n), F_RETURN),
    "one_block_of_backslashes": (lambda n: "```python\n" + F_RETURN + "\\\n" * (n // 2) + "```\n", F_RETURN),
}


def _expected(name: str, text: str) -> str:
    wanted = SANITIZE_FAMILIES[name][1]
    return text if wanted == UNCHANGED else wanted


@pytest.mark.parametrize("name", sorted(SANITIZE_FAMILIES))
def test_sanitize_small_hostile_reply_answer(name: str) -> None:
    text = SANITIZE_FAMILIES[name][0](SMALL)
    assert sanitize(text, "f") == _expected(name, text)


@pytest.mark.parametrize("name", sorted(SANITIZE_FAMILIES))
def test_sanitize_hostile_reply_is_fast(name: str) -> None:
    text = SANITIZE_FAMILIES[name][0](FULL)
    assert _timed(f"sanitize/{name}", lambda: sanitize(text, "f")) == _expected(name, text)


def test_extract_code_blocks_and_defines_function_are_fast() -> None:
    fences = _repeat("```python\nx = 1\n", FULL)  # every block unclosed until the next opener
    assert len(_timed("extract_code_blocks/many_fences", lambda: extract_code_blocks(fences))) == 1
    assert _timed("extract_code_blocks/long_tag", lambda: extract_code_blocks("```" + "a" * FULL + "`\n")) == []
    code = _repeat("z = 1\n", FULL, head=F_RETURN)
    assert _timed("defines_function/long_module", lambda: defines_function(code, "f"))


def test_sanitize_parse_work_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linear by construction: ast.parse sees at most the budget, even where no
    cut-point rule helps (a too-deep expression fails every prefix of the reply)."""
    handed: list[int] = []
    real_parse = ast.parse

    def counting_parse(source: str, *args: Any, **kwargs: Any) -> ast.Module:
        handed.append(len(source))
        return real_parse(source, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", counting_parse)
    text = "x = " + "-" * 5_000 + "1\n" + _repeat("z = 1\n", FULL) + F_RETURN
    result = _timed("sanitize/budget_exhausted", lambda: sanitize(text, "f"))
    assert isinstance(result, str)
    budget = codeutil._BUDGET_PER_CHAR * len(text) + codeutil._BUDGET_FLOOR
    assert sum(handed) <= budget
    handed.clear()
    for name in ("backslash_tail_after_many_defs", "backslash_lines", "decorator_tail"):
        reply = SANITIZE_FAMILIES[name][0](FULL)
        sanitize(reply, "f")
        assert sum(handed) <= 2 * len(reply) + 1_000, name  # two full parses at most, not one per line
        handed.clear()


# ----------------------------------------- prefix search against the original


def _one_line_at_a_time(lines: list[str]) -> str | None:
    """The original search: parse, cut at the blamed line or one line, repeat."""
    end = len(lines)
    while end > 0:
        source = "\n".join(lines[:end])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
            lineno = getattr(err, "lineno", None)
            end = min(end - 1, (lineno if lineno and lineno <= end else end) - 1)
            continue
        return source if source.strip() else None
    return None


def _fast_search(lines: list[str]) -> str | None:
    session = codeutil._Session(sum(map(len, lines)))
    found = codeutil._longest_parsable_prefix(0, codeutil._Scans(lines, session))
    return None if found is None else found[0]


PIECES = (
    "def f(x):", "    return x", "  pass", "x = (", ")", "\\", "  \\", "    + 1 \\", "'''", '"""', "s = '''a", "b'''",
    "y = 1", "if x:", "else:", "@d", "try:", "except E:", "finally:", "# c \\", "", "  ", "z = [1,", "2]", "'a\\", "b'",
    "print(f(2)", "class A:", "    def g(self):", "        return 1", "lambda:", "x = 1 \\", "prose, (really",
    "t = 'it''s'",
    "u = f'{a!r}'", "try: pass", "  try:", "  except:", "x = 1  # :", "match x:", "  case 1:", "    pass", "\t  y = 2",
)


def test_prefix_search_matches_the_one_line_at_a_time_search() -> None:
    rng = random.Random(20240601)
    for _ in range(1500):
        lines = "\n".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))).splitlines()
        assert _fast_search(lines) == _one_line_at_a_time(lines), lines
    for name, (build, _) in SANITIZE_FAMILIES.items():
        lines = codeutil._clean(build(SMALL)).splitlines()
        assert _fast_search(lines) == _one_line_at_a_time(lines), name


def test_ruled_out_prefixes_never_parse() -> None:
    """The cut-point scan only skips prefixes that ast.parse rejects."""
    rng = random.Random(7)
    for _ in range(1000):
        lines = "\n".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))).splitlines()
        scan = codeutil._Scan(lines, 0, codeutil._Session(10**9))
        for end in range(1, len(lines) + 1):
            if scan.last_at_most(end, 0) != end:
                assert _one_line_at_a_time(lines[:end]) != "\n".join(lines[:end]), lines[:end]


# ------------------------------------------------------------------- scoring


def _drop_reference(prediction: str, reference: str) -> float:
    """DROP's definition, pair by pair."""
    alternatives = [alt for alt in reference.split("|") if alt.strip()]
    parts = prediction.split("|")
    return max((scoring.token_f1(part, alt) for alt in alternatives for part in parts), default=0.0)


# name -> (prediction, reference) of about the given size
DROP_FAMILIES: dict[str, Callable[[int], tuple[str, str]]] = {
    "pipes_only": lambda n: ("x|" * (n // 2), "4|four"),
    "distinct_parts_sharing_a_token": lambda n: ("|".join(f"a{i} x" for i in range(n // 8)), "x y|z"),
    "many_gold_alternatives": lambda n: ("the answer is four", "|".join(f"w{i}" for i in range(n // 7)) + "|four"),
    "pipes_on_both_sides": lambda n: (
        "|".join(f"p{i}" for i in range(n // 8)),
        "|".join(f"q{i}" for i in range(n // 8)),
    ),
    "punctuation_and_articles": lambda n: ("|".join(["The a, an! x."] * (n // 14)), "x|the"),
}


@pytest.mark.parametrize("name", sorted(DROP_FAMILIES))
def test_drop_f1_hostile(name: str) -> None:
    small = DROP_FAMILIES[name](SMALL)
    assert scoring.drop_f1(*small) == _drop_reference(*small)
    prediction, reference = DROP_FAMILIES[name](FULL)
    expected = _drop_reference(*small)  # each family scores the same at any size
    assert _timed(f"drop_f1/{name}", lambda: scoring.drop_f1(prediction, reference)) == expected


def test_drop_f1_matches_the_pairwise_definition() -> None:
    rng = random.Random(3)
    words = ["a", "an", "the", "The", "x", "X", "four", "4", " ", "|", "||", ".", ",", "Σ", "ΑΣ", "İ", "ß", "the.",
             "-"]
    for _ in range(3000):
        prediction = "".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        reference = "".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        assert scoring.drop_f1(prediction, reference) == _drop_reference(prediction, reference)


SCORING_CALLS: dict[str, tuple[Callable[[], Any], Any]] = {
    "token_f1/long": (lambda: scoring.token_f1("word " * (FULL // 5), "word"), pytest.approx(2 / (FULL // 5 + 1))),
    "normalize_answer/punctuation": (lambda: scoring.normalize_answer("!.," * (FULL // 3)), ""),
    "last_number/one_long_number": (lambda: scoring.last_number("1" * FULL), float("1" * FULL)),
    "last_number/thousands_groups": (lambda: scoring.last_number("1" + ",111" * (FULL // 4) + ",11"), 11.0),
    "last_number/many_numbers": (lambda: scoring.last_number("1 " * (FULL // 2) + "7"), 7.0),
    "last_number/dots": (lambda: scoring.last_number("1." * (FULL // 2)), 1.1),
    "last_boxed/deep_braces": (
        lambda: scoring.last_boxed("\\boxed{" + "{" * FULL + "}" * (FULL + 1)),
        "{" * FULL + "}" * FULL,
    ),
    "last_boxed/unclosed_deep": (lambda: scoring.last_boxed("\\boxed{" + "{" * FULL), None),
    "last_boxed/many_openings": (lambda: scoring.last_boxed("\\boxed{" * (FULL // 7) + "1}"), "1"),
    "last_boxed/escaped_braces": (
        lambda: scoring.last_boxed("\\boxed{" + "\\{" * (FULL // 2) + "}"),
        "\\{" * (FULL // 2),
    ),
    "last_boxed/space_run": (lambda: scoring.last_boxed("\\boxed" + " " * FULL + "{2}"), "2"),
    "math_answer/many_sentences": (lambda: scoring.math_answer("a. " * (FULL // 3) + "end"), "end"),
    "math_answer/space_run": (lambda: scoring.math_answer("." + " " * FULL + "x"), "x"),
    "math_answer/dots": (lambda: scoring.math_answer("." * FULL), "." * FULL),
    "parse_number/long_percent": (lambda: scoring.parse_number("5" * FULL + "%"), float("inf")),
    "math_equal_fast/long": (lambda: scoring.math_equal_fast("1" * FULL, "2"), False),
    "parse_symbolic_output/many_lines": (lambda: scoring.parse_symbolic_output("x\n" * (FULL // 2)), False),
    "symbolic_check_program/quotes": (lambda: len(scoring.symbolic_check_program("'\"" * FULL, "1")) > FULL, True),
}


@pytest.mark.parametrize("name", sorted(SCORING_CALLS))
def test_scoring_hostile(name: str) -> None:
    call, expected = SCORING_CALLS[name]
    assert _timed(name, call) == expected


# ------------------------------------------ parse helpers owned by other files

HELPER_CALLS: dict[str, tuple[Callable[[], Any], Any]] = {
    "parse_fields/many_openings": (lambda: parse_fields("<answer>" * (FULL // 8) + "3", ("answer",)), {"answer": "3"}),
    "parse_fields/unclosed_fields": (
        lambda: parse_fields("<thought>" * (FULL // 18) + "<answer>" * (FULL // 16), ("thought", "answer")),
        {"thought": "", "answer": ""},
    ),
    "parse_fields/space_runs": (lambda: parse_fields("<" + " " * FULL + "x", ("answer",)), {}),
    "solution_letter/tagged": (lambda: solution_letter("x" * FULL + "<solution_letter>B</solution_letter>", 3), 1),
    "solution_letter/non_word_run": (lambda: solution_letter("!" * FULL + "x", 3), None),
    "first_code/many_fences": (lambda: first_code("```\nx\n" * (FULL // 6)), "x"),
    "first_code/long_tag": (lambda: first_code("```" + "a" * FULL + "`\n"), "```" + "a" * FULL + "`"),
    "failure_details/long_output": (lambda: len(failure_details("x\n" * (FULL // 2))), 1000),
    "extract_graph/long_body": (lambda: extract_graph("<graph>" + "a\n" * (FULL // 2)), "a\n" * (FULL // 2)),
    "extract_graph/many_fences": (lambda: extract_graph("<graph>" + "```x" * (FULL // 4))[:4], "```x"),
    "parse_judgement/many_digits": (lambda: Benchmark.parse_judgement("0 1 " * (FULL // 4)), 1.0),
    "parse_judgement/dots": (lambda: Benchmark.parse_judgement("1." * (FULL // 2)), 0.0),
}


@pytest.mark.parametrize("name", sorted(HELPER_CALLS))
def test_parse_helpers_hostile(name: str) -> None:
    call, expected = HELPER_CALLS[name]
    assert _timed(name, call) == expected


# These two were quadratic (backtracking between two whitespace runs around an optional
# group) and took minutes at full size.
def test_solution_letter_long_whitespace_run() -> None:
    assert _timed("solution_letter/space_run", lambda: solution_letter("answer" + " " * FULL + "x", 3)) is None


def test_extract_graph_long_blank_run_after_fence() -> None:
    text = "<graph>```" + " " * FULL + "x"
    assert _timed("extract_graph/fence_blanks", lambda: extract_graph(text)) == text[len("<graph>") :] + "\n"


def test_failure_details_deeply_nested_marker_line() -> None:
    assert failure_details("PUBLIC_TEST_FAILURES:" + "[" * FULL) == "[" * 1000
