"""Pure, deterministic answer scorers (AFlow's rules, which ScoreFlow keeps).

Everything here is a plain function of strings so that the scorers can be unit
tested without an LLM. The one step that needs sympy on untrusted text (MATH
symbolic equivalence) is not run here: :func:`symbolic_check_program` returns a
standalone program for the project's sandbox, and :func:`parse_symbolic_output`
reads its verdict back.

Per dataset (SPEC section 2):

- DROP: :func:`drop_f1` (max token F1 over ``|``-joined gold alternatives).
- HotpotQA: :func:`token_f1` is the HotpotQA scorer (no alias on purpose).
- GSM8K: :func:`gsm8k_score` (last number of the output and of the gold answer,
  within 1e-6).
- MATH: :func:`math_answer` extracts the answer (``boxed`` chooses the original's
  reading of ``\\boxed{}`` or ours, ``scoring.math_boxed``); :func:`math_equal_fast`
  settles the easy cases; otherwise run :func:`symbolic_check_program` in the sandbox
  (or use :func:`math_equal` with a runner that does).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Literal

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DROP_PUNCTUATION_BUT_PIPE = str.maketrans("", "", string.punctuation.replace("|", ""))
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?|\d+\.\d+")
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_EXACT = re.compile(r"\\boxed\{")
_SENTENCE_END = re.compile(r"(?<!\d)[.!?]\s+")
_GSM8K_TOLERANCE = 1e-6
_MATH_TOLERANCE = 1e-3
_MATH_RELATIVE_TOLERANCE = 1e-9  # math.isclose's default, which the original's checks keep
BoxedReading = Literal["original", "balanced"]
SYMBOLIC_MARKER = "SYMBOLIC_EQUAL:"


# --------------------------------------------------------------------- QA / F1


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, blank out articles, collapse whitespace.

    The order matters (it is AFlow's): punctuation goes before the article
    rule, so "the." becomes "the" and is then removed as an article.
    """
    no_punct = text.lower().translate(_DROP_PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def _f1(shared: int, predicted: int, gold: int) -> float:
    if shared == 0:
        return 0.0
    precision = shared / predicted
    recall = shared / gold
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """F1 over normalized token multisets; also the HotpotQA scorer.

    Returns 0.0 when no token is shared, which covers an empty side.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    shared = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    return _f1(shared, len(pred_tokens), len(ref_tokens))


def _pipe_parts_tokens(text: str) -> list[list[str]]:
    """``normalize_answer(part).split()`` for each ``|``-separated part, in one pass.

    Normalising the whole text with ``|`` kept is the same as normalising each
    part: ``|`` is neither cased nor a word character, so case mapping and the
    article rule's word boundaries do not see across it.
    """
    no_punct = text.lower().translate(_DROP_PUNCTUATION_BUT_PIPE)
    return [part.split() for part in _ARTICLES.sub(" ", no_punct).split("|")]


def drop_f1(prediction: str, reference: str) -> float:
    """Max token F1 over (gold alternative, prediction part) pairs.

    DROP gold answers are alternatives joined by ``|``; a prediction may list
    several answers the same way. Blank alternatives are ignored; with none
    left the score is 0.0.

    A hostile prediction may have 100,000 parts, so each side is normalised
    once, repeated parts are scored once, and a part is compared only with the
    alternatives it shares a token with (the others score 0.0): the work is
    linear in the prediction for a given gold answer.
    """
    kept = "|".join(alt for alt in reference.split("|") if alt.strip())
    if not kept:
        return 0.0
    gold = [Counter(tokens) for tokens in _pipe_parts_tokens(kept)]
    gold_sizes = [sum(counts.values()) for counts in gold]
    holders: dict[str, list[int]] = {}  # token -> the alternatives holding it
    for index, counts in enumerate(gold):
        for token in counts:
            holders.setdefault(token, []).append(index)
    best = 0.0
    distinct_parts = {" ".join(tokens): tokens for tokens in _pipe_parts_tokens(prediction)}
    for tokens in distinct_parts.values():
        for index, overlap in _overlaps(tokens, gold, holders).items():
            best = max(best, _f1(overlap, len(tokens), gold_sizes[index]))
    return best


def _overlaps(tokens: list[str], gold: list[Counter[str]], holders: dict[str, list[int]]) -> dict[int, int]:
    """Shared token count with each alternative that shares any."""
    shared: dict[int, int] = {}
    for token, count in Counter(t for t in tokens if t in holders).items():
        for index in holders[token]:
            shared[index] = shared.get(index, 0) + min(count, gold[index][token])
    return shared


# ----------------------------------------------------------------------- GSM8K


def last_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators allowed), or None.

    ``1,234,567`` is one number; ``.5`` reads as 5 (a digit must lead);
    ``50%`` reads as 50 (GSM8K answers are bare numbers).
    """
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


def gsm8k_score(prediction: str, answer: str | float) -> tuple[float, float | None]:
    """(1.0 if the last number is within 1e-6 of the answer else 0.0, the number).

    The gold answer is read with the same last-number rule, as the original reads it
    (``$1,200`` is 1200); a gold answer without a number scores every output 0."""
    extracted = last_number(prediction)
    gold = float(answer) if isinstance(answer, (int, float)) else last_number(str(answer))
    if extracted is None or gold is None:
        return 0.0, extracted
    return (1.0 if abs(extracted - gold) <= _GSM8K_TOLERANCE else 0.0), extracted


# ------------------------------------------------------------------------ MATH


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the brace closing the one just before ``start``, or None.

    Escaped braces (``\\{`` / ``\\}``) do not count, so set notation such as
    ``\\{1, 2\\}`` inside a box is kept whole.
    """
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced.

    Returns None when there is no box or the last one never closes.
    """
    openings = list(_BOX_OPEN.finditer(text))
    if not openings:
        return None
    start = openings[-1].end()
    end = _balanced_end(text, start)
    return None if end is None else text[start:end]


def last_boxed_original(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` as the original's regex finds them, at any depth.

    The original scans left to right for the exact ``\\boxed{`` (no ``\\fbox``, no
    blank before the brace), skips a box that never closes, resumes after each
    match (so a box inside a matched box is part of its content, not a match), and
    counts every brace, escaped or not. Its regex allows one level of nested braces
    and so cannot read answers like ``\\frac{\\sqrt{3}}{2}``; here braces nest to
    any depth (SPEC: "nested braces allowed"). Linear: each brace's partner is
    found once.
    """
    partners = _brace_partners(text)
    found, resume = None, 0
    for match in _BOXED_EXACT.finditer(text):
        close = partners.get(match.end() - 1)
        if match.start() < resume or close is None:
            continue
        found, resume = text[match.end() : close], close + 1
    return found


def _brace_partners(text: str) -> dict[int, int]:
    """Index of each ``{`` that closes -> index of its ``}`` (every brace counts)."""
    partners: dict[int, int] = {}
    open_braces: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            open_braces.append(index)
        elif char == "}" and open_braces:
            partners[open_braces.pop()] = index
    return partners


def math_answer(text: str, boxed: BoxedReading = "original") -> str:
    """The boxed answer if any, else the last sentence ("" if there is none).

    ``boxed``: ``original`` reads boxes as the original does (:func:`last_boxed_original`);
    ``balanced`` takes the last ``\\boxed``/``\\fbox`` opening, blanks allowed before its
    brace, escaped braces ignored, and none if it never closes (:func:`last_boxed`).
    Sentences end at ``.``/``!``/``?`` plus whitespace, but not after a digit,
    so "3.5" and "5. Next" stay whole.
    """
    boxed_text = last_boxed_original(text) if boxed == "original" else last_boxed(text)
    if boxed_text is not None:
        return boxed_text.strip()
    sentences = [part.strip() for part in _SENTENCE_END.split(text)]
    sentences = [part for part in sentences if part]
    return sentences[-1] if sentences else ""


def parse_number(text: str) -> float | None:
    """A float from ``text`` (commas dropped; ``50%`` / ``50\\%`` mean 0.5)."""
    cleaned = text.replace(",", "").strip()
    try:
        return float(cleaned)
    except ValueError:
        pass
    if not cleaned.endswith("%"):
        return None
    rest = cleaned[:-1]
    rest = rest.removesuffix("\\")
    try:
        return float(rest) / 100
    except ValueError:
        return None


def math_equal_fast(prediction: str, reference: str) -> bool | None:
    """Equality without sympy: identical strings, or numbers ``math.isclose`` within
    1e-3 absolute or 1e-9 relative (the original's check).

    None means "undecided here, run the symbolic check". Unlike the original, two
    numbers too long for a float (both ``inf``) are left to the exact symbolic check
    rather than called equal.
    """
    if prediction == reference:
        return True
    a, b = parse_number(prediction), parse_number(reference)
    if a is not None and b is not None:
        if math.isinf(a) and math.isinf(b):
            return None  # both beyond float range (400 digits read as inf): the symbolic check is exact
        return math.isclose(a, b, rel_tol=_MATH_RELATIVE_TOLERANCE, abs_tol=_MATH_TOLERANCE)
    return None


_SYMBOLIC_BODY = r'''
import contextlib
import io
import math
import re
import signal
import sys

STEP_SECONDS = 10
UNSAFE = re.compile(r"_|['\"`\[\]{};:]|lambda|import|\.[A-Za-z]")
MATH_FUNCTIONS = ("sqrt", "root", "cbrt", "gcd", "lcm", "factorial", "binomial")


class StepTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise StepTimeout()


def limited(fn, *args):
    """Run one step under an alarm so a slow simplify ends as "not equal"."""
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(STEP_SECONDS)
    try:
        return fn(*args)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)


def latex_parser():
    try:
        from sympy.parsing.latex import parse_latex
    except Exception:
        return None
    try:
        parse_latex("1")
        return parse_latex
    except Exception:
        pass
    try:
        parse_latex("1", backend="lark")
        return lambda s: parse_latex(s, backend="lark")
    except Exception:
        return None


def safe_namespace(sympy):
    names = {}
    for key in dir(sympy):
        if key.startswith("_"):
            continue
        value = getattr(sympy, key)
        is_class = isinstance(value, type) and issubclass(value, sympy.Basic)
        if is_class or isinstance(value, sympy.Basic) or key in MATH_FUNCTIONS:
            names[key] = value
    names["__builtins__"] = {}
    return names


def parse_plain(text, sympy):
    """sympy's expression parser with its standard transformations (the original's
    parse_expr), over sympy's names only; text that could reach Python is refused."""
    if UNSAFE.search(text):
        return None
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations
    return parse_expr(text, global_dict=safe_namespace(sympy), local_dict={}, transformations=standard_transformations)


def parse(text, sympy, latex):
    """The LaTeX parser first, then the plain one, as the original tries them."""
    for parser in (latex, lambda s: parse_plain(s, sympy)):
        if parser is None:
            continue
        try:
            result = limited(parser, text)
        except Exception:
            continue
        if result is not None:
            return with_pi(result, sympy)
    return None


def with_pi(expr, sympy):
    """The antlr backend reads the LaTeX pi command as a plain symbol."""
    try:
        return expr.subs(sympy.Symbol("pi"), sympy.pi)
    except Exception:
        return expr


def equal(a, b, sympy):
    try:
        if limited(lambda: bool(sympy.simplify(a - b) == 0)):
            return True
    except Exception:
        pass
    try:  # math.isclose as the original: relative 1e-9 or absolute 1e-3
        return limited(lambda: math.isclose(sympy.N(a), sympy.N(b), rel_tol=1e-9, abs_tol=1e-3))
    except Exception:
        return False


def decide():
    import sympy
    latex = latex_parser()
    a = parse(PREDICTION, sympy, latex)
    b = parse(REFERENCE, sympy, latex)
    return a is not None and b is not None and equal(a, b, sympy)


def main():
    verdict = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # keep the verdict the only line
            verdict = decide()
    except BaseException:
        verdict = False
    sys.stdout.write("SYMBOLIC_EQUAL: " + ("1" if verdict else "0") + "\n")


main()
'''


def symbolic_check_program(prediction: str, reference: str) -> str:
    """Source of a standalone program judging sympy equivalence of two answers.

    Parsing untrusted text with sympy can evaluate code, so this must run in
    the project's sandbox, never in-process. The strings are embedded as
    ``repr`` literals (never formatted into code). The program prints exactly
    one line, ``SYMBOLIC_EQUAL: 1`` or ``SYMBOLIC_EQUAL: 0``, and exits 0.
    As the original: each answer is read by the LaTeX parser, else by sympy's
    expression parser (standard transformations); equal if ``simplify(a - b) == 0``
    or the values are ``math.isclose`` (relative 1e-9, absolute 1e-3). Unlike the
    original, an answer neither parser reads is never equal (the original hands
    the raw text to ``sympify``, i.e. to ``eval``), each step has a 10 s alarm, and
    the LaTeX pi symbol is sympy's pi. LaTeX parsing needs ``antlr4-python3-runtime==4.11`` (or ``lark``);
    without either it still tries sympy's plain-expression parser.
    """
    header = f"PREDICTION = {prediction!r}\nREFERENCE = {reference!r}\n"
    return header + _SYMBOLIC_BODY


def parse_symbolic_output(output: str) -> bool:
    """True only if the program's verdict line says 1 (missing line: False)."""
    for line in reversed(output.splitlines()):
        stripped = line.strip()
        if stripped.startswith(SYMBOLIC_MARKER):
            return stripped[len(SYMBOLIC_MARKER) :].strip() == "1"
    return False


def math_equal(prediction: str, reference: str, run_program: Callable[[str], str | None]) -> bool:
    """Full MATH equality: the fast rules, then the symbolic program.

    ``run_program`` runs a Python program in a sandbox and returns its stdout
    (None on timeout/failure, which counts as "not equal").
    """
    fast = math_equal_fast(prediction, reference)
    if fast is not None:
        return fast
    output = run_program(symbolic_check_program(prediction, reference))
    return output is not None and parse_symbolic_output(output)
