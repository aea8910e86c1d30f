"""MATH500's answer protocol: the last boxed expression and Hendrycks' string normalisation.

FTTT_SPEC 1.2 "Correctness" (``math500_dataset.py`` L68-76, L97-292): the inner text of the
last ``\\boxed`` of the reference solution and of the completion are normalised with the MATH
paper's ``strip_string`` and compared as exact strings; there is no symbolic check. The rules
below follow the original step by step, including its quirks (noted where they occur); the one
deliberate change is that an ``\\fbox{...}`` answer is unwrapped instead of failing an assert
(FTTT_SPEC section 5 item 3: that assert killed every worker in turn).
"""

from __future__ import annotations

BOXED = "\\boxed"
FBOX = "\\fbox"
BOXED_SPACE = "\\boxed "


def last_boxed(text: str) -> str | None:
    """The last boxed expression of ``text`` with its wrapper (``\\boxed{...}``), or None.

    Quirk kept (math500_dataset.py L97-113): when ``"\\boxed "`` occurs anywhere, the text after
    its last occurrence up to the next ``$`` wins, even over a later ``\\boxed{...}``.
    ``\\fbox`` is looked for only when there is no ``\\boxed`` at all.
    """
    if BOXED_SPACE in text:
        return BOXED_SPACE + text.split(BOXED_SPACE)[-1].split("$")[0]
    start = text.rfind(BOXED)
    if start < 0:
        start = text.rfind(FBOX)
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None  # an unclosed brace: no answer


def unwrap_boxed(boxed: str) -> str | None:
    """The inside of ``\\boxed{...}``, ``\\fbox{...}`` or ``"\\boxed ..."``; None when malformed.

    Fixed defect (FTTT_SPEC 5 item 3; ``remove_boxed``, math500_dataset.py L114-125): the
    original asserted the ``\\boxed{`` prefix, so an ``\\fbox{...}`` answer (or ``\\boxedx{}``)
    raised AssertionError in the worker. Here ``\\fbox{`` is unwrapped like ``\\boxed{`` and any
    other shape is "no answer".
    """
    if boxed.startswith(BOXED_SPACE):
        return boxed[len(BOXED_SPACE) :]
    for left in (BOXED + "{", FBOX + "{"):
        if boxed.startswith(left) and boxed.endswith("}"):
            return boxed[len(left) : -1]
    return None


def extract_boxed(text: str) -> str | None:
    """The raw (not normalised) content of the last boxed expression: what Self-Consistency
    votes on (FTTT_SPEC 2.6)."""
    boxed = last_boxed(text)
    return None if boxed is None else unwrap_boxed(boxed)


# ---------------------------------------------------------------- Hendrycks normalisation


class _Unnormalisable(Exception):
    """Raised where the original's helpers raise (an assert or an index error); ``is_equiv``
    then falls back to comparing the raw strings, as the original's bare ``except`` does."""


def _fix_fracs(text: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{7}`` -> ``\frac{1}{7}``; braced ones stay."""
    head, *rest = text.split("\\frac")
    out = head
    for part in rest:
        out += "\\frac"
        if not part:
            raise _Unnormalisable  # the original indexes part[0] (IndexError)
        if part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return text  # the original gives up and returns its input unchanged
        first, second, tail = part[0], part[1], part[2:]
        out += "{" + first + "}" + (second if second == "{" else "{" + second + "}") + tail
    return out


def _fix_a_slash_b(text: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}``, only for two plain integers that print back the same."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        num, den = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    if text != f"{num}/{den}":
        return text
    return "\\frac{" + str(num) + "}{" + str(den) + "}"


def _remove_right_units(text: str) -> str:
    """Drop everything from ``"\\text{ "`` on (in MATH that only ever introduces a unit)."""
    if "\\text{ " not in text:
        return text
    parts = text.split("\\text{ ")
    if len(parts) != 2:
        raise _Unnormalisable  # the original asserts exactly one occurrence
    return parts[0]


def _fix_sqrt(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (one character only, as in the original)."""
    if "\\sqrt" not in text:
        return text
    head, *rest = text.split("\\sqrt")
    out = head
    for part in rest:
        if not part:
            raise _Unnormalisable  # the original indexes part[0] (IndexError)
        out += "\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def strip_string(text: str) -> str:
    """The MATH paper's normalisation, step for step (order matters)."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = _remove_right_units(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # a short "x = " / "k=" prefix
        text = sides[1]
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


def is_equiv(left: str | None, right: str | None) -> bool:
    """Hendrycks equality; where normalisation fails, the raw strings are compared."""
    if left is None or right is None:
        return left is None and right is None
    try:
        return strip_string(left) == strip_string(right)
    except _Unnormalisable:
        return left == right
