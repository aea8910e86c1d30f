"""Getting runnable code out of LLM text, with the standard library's ``ast`` only.

LLM replies mix prose, several fenced blocks, example calls, ``__main__``
blocks and truncated tails. The code scorers (and the code operators) need a
module that defines the entry point and nothing that runs on import, so that
the hidden tests judge the function and not the model's demo code.
"""

from __future__ import annotations

import ast
import re
import textwrap
import warnings
from dataclasses import dataclass, field

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+.-]*)[^`~]*$")
_PYTHON_TAGS = frozenset({"", "python", "py", "ipython"})  # digits cut: python3 -> python
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)")
_MAX_FALLBACK_STARTS = 50


# ---------------------------------------------------------------- code blocks


def _fence_open(line: str) -> tuple[str, str] | None:
    """(fence, language) if ``line`` opens a fenced block."""
    match = _FENCE.match(line)
    if match is None:
        return None
    tag = re.match(r"[a-z]*", match.group(2).lower())
    return match.group(1), tag.group() if tag else ""


def _fence_closes(line: str, fence: str) -> bool:
    """A closing fence: same character, at least as long, nothing else."""
    stripped = line.strip()
    return bool(stripped) and set(stripped) == {fence[0]} and len(stripped) >= len(fence)


def _all_fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of every fenced block; an unclosed last block runs to the end."""
    blocks: list[tuple[str, str]] = []
    current: list[str] | None = None
    fence, language = "", ""
    for line in text.splitlines():
        if current is None:
            opened = _fence_open(line)
            if opened is not None:
                fence, language = opened
                current = []
        elif _fence_closes(line, fence):
            blocks.append((language, textwrap.dedent("\n".join(current))))
            current = None
        else:
            current.append(line)
    if current is not None:
        blocks.append((language, textwrap.dedent("\n".join(current))))
    return blocks


def extract_code_blocks(text: str) -> list[str]:
    """Contents of the Python (or untagged) fenced blocks, in order.

    Blocks tagged with another language are recognised (so their fences do
    not confuse the pairing) but left out.
    """
    return [code for lang, code in _all_fenced_blocks(_clean(text)) if lang in _PYTHON_TAGS]


# ------------------------------------------------------------------- parsing


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse(source: str) -> ast.Module | None:
    try:
        return _quiet_parse(source)
    except (SyntaxError, ValueError):
        return None


def _quiet_parse(source: str) -> ast.Module:
    """``ast.parse`` without the warnings model code provokes (invalid escapes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def _longest_parsable_prefix(lines: list[str]) -> str | None:
    """Longest prefix of ``lines`` that parses, cutting at each syntax error.

    Each failed parse drops at least one line, so this takes at most
    ``len(lines)`` parses (usually one or two).
    """
    end = len(lines)
    while end > 0:
        source = "\n".join(lines[:end])
        try:
            _quiet_parse(source)
        except SyntaxError as err:
            lineno = err.lineno if err.lineno and err.lineno <= end else end
            if lineno <= 1:
                return None  # line 1 itself is broken: no prefix can parse
            end = min(end - 1, lineno - 1)
            continue
        except ValueError:
            end -= 1
            continue
        return source if source.strip() else None
    return None


def _parsable_windows(text: str, entry_point: str) -> list[str]:
    """Parsable slices of ``text``: the longest prefix from the top, from each
    line that looks like the start of code (the first few dozen), and from each
    line defining ``entry_point``. This drops leading prose and broken tails."""
    lines = text.splitlines()
    code_starts = [i for i, line in enumerate(lines) if i and _CODE_START.match(line)]
    entry = re.compile(rf"^(async\s+)?def\s+{re.escape(entry_point)}\b")
    entry_starts = [i for i, line in enumerate(lines) if entry.match(line)]
    starts = sorted({0, *code_starts[:_MAX_FALLBACK_STARTS], *entry_starts})
    windows = []
    for start in starts:
        window = _longest_parsable_prefix(lines[start:])
        if window is not None:
            windows.append(window)
    return windows


# ------------------------------------------------------- top-level statements


@dataclass
class _Unit:
    """One top-level statement: what it binds, what it reads, its source."""

    node: ast.stmt
    source: str
    binds: set[str]
    reads: set[str]
    is_import: bool


@dataclass
class _Module:
    """A parsed candidate source, split into top-level units."""

    source: str
    units: list[_Unit]
    definitions: dict[str, _Unit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for unit in self.units:  # later definitions win, as at run time
            if not unit.is_import:
                for name in unit.binds:
                    self.definitions[name] = unit


def _free_names(node: ast.AST) -> set[str]:
    """Names ``node`` reads but does not bind itself (roughly, its free names).

    Local variables are excluded so that a local called ``result`` does not
    drag in a top-level demo line ``result = entry(...)``. Nested scopes are
    merged with their parent, which is close enough for dependency finding.
    """
    loads: set[str] = set()
    stores: set[str] = set()
    declared_global: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            (loads if isinstance(child.ctx, ast.Load) else stores).add(child.id)
        elif isinstance(child, ast.arg):
            stores.add(child.arg)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if child is not node:
                stores.add(child.name)
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            stores.update(_import_binds(child) or set())
        elif isinstance(child, ast.ExceptHandler) and child.name:
            stores.add(child.name)
        elif isinstance(child, (ast.Global, ast.Nonlocal)):
            declared_global.update(child.names)
    return (loads - stores) | declared_global


def _assigned_names(node: ast.stmt) -> set[str] | None:
    """Names bound by a simple (name-only targets) assignment, else None."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets = [node.target]
    else:
        return None
    names: set[str] = set()
    for target in targets:
        elts = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        if not all(isinstance(elt, ast.Name) for elt in elts):
            return None
        names.update(elt.id for elt in elts)  # type: ignore[union-attr]
    return names


def _import_binds(node: ast.stmt) -> set[str] | None:
    """Names bound by an import (or a try/except made only of imports)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if isinstance(node, ast.Try) and node.body:
        parts = [_import_binds(stmt) for stmt in node.body]
        if all(part is not None for part in parts):
            return set().union(*parts)  # type: ignore[arg-type]
    return None


def _is_recursion_limit(node: ast.stmt) -> bool:
    """``sys.setrecursionlimit(...)`` matters to recursive solutions: keep it."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    func = node.value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "setrecursionlimit"


def _segment(source: str, node: ast.stmt, shares_line: bool) -> str:
    """Original lines of ``node`` (decorators included) so comments survive."""
    if shares_line:
        return ast.unparse(node)
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = source.splitlines()[first - 1 : node.end_lineno]
    return "\n".join(lines).rstrip()


def _classify(node: ast.stmt, source: str, shares_line: bool) -> _Unit | None:
    text = _segment(source, node, shares_line)
    imported = _import_binds(node)
    if imported is not None:
        return _Unit(node, text, imported, set(), True)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return _Unit(node, text, {node.name}, _free_names(node), False)
    assigned = _assigned_names(node)
    if assigned is not None:
        value = node.value if node.value is not None else node  # type: ignore[attr-defined]
        return _Unit(node, text, assigned, _free_names(value), False)
    if _is_recursion_limit(node):
        return _Unit(node, text, set(), _free_names(node), False)
    return None  # prints, example calls, tests, __main__ blocks ...


def _build_module(source: str) -> _Module | None:
    tree = _parse(source)
    if tree is None:
        return None
    body = tree.body
    units = []
    for i, node in enumerate(body):
        prev_end = body[i - 1].end_lineno if i else None
        next_start = body[i + 1].lineno if i + 1 < len(body) else None
        shares = node.lineno == prev_end or node.end_lineno == next_start
        unit = _classify(node, source, shares)
        if unit is not None:
            units.append(unit)
    return _Module(source, units)


# ------------------------------------------------------------------ sanitize


def _method_owner(module: _Module, name: str) -> str | None:
    """Name of the last top-level class with a method called ``name``."""
    owner = None
    for unit in module.units:
        if isinstance(unit.node, ast.ClassDef) and any(
            isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == name for item in unit.node.body
        ):
            owner = unit.node.name
    return owner


def _has_entry(module: _Module, entry_point: str) -> bool:
    return entry_point in module.definitions or _method_owner(module, entry_point) is not None


def _resolve(primary: _Module, pool: list[_Module], roots: set[str]) -> tuple[list[_Unit], list[_Unit]]:
    """Definitions reachable from ``roots``: (from primary, from other blocks).

    Names are looked up in the primary module first, then in the other blocks
    from the last to the first; imports of the other blocks are only pulled in
    when a kept name needs them and the primary does not bind it.
    """
    primary_imports = set().union(*[u.binds for u in primary.units if u.is_import] or [set()])
    kept: dict[int, _Unit] = {}
    borrowed: dict[int, _Unit] = {}
    todo = list(roots)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        unit = primary.definitions.get(name)
        target = kept
        if unit is None and name not in primary_imports:
            unit = _lookup_pool(pool, name)
            target = borrowed
        if unit is not None and id(unit) not in kept and id(unit) not in borrowed:
            target[id(unit)] = unit
            todo.extend(unit.reads)
    return list(kept.values()), list(borrowed.values())


def _lookup_pool(pool: list[_Module], name: str) -> _Unit | None:
    for module in reversed(pool):
        if name in module.definitions:
            return module.definitions[name]
        for unit in module.units:
            if unit.is_import and name in unit.binds:
                return unit
    return None


def _render(units: list[_Unit]) -> str:
    """Join units: imports on consecutive lines, a blank line around the rest."""
    out: list[str] = []
    for i, unit in enumerate(units):
        if i:
            out.append("\n" if unit.is_import and units[i - 1].is_import else "\n\n")
        out.append(unit.source)
    return "".join(out) + "\n"


def _wrapper(class_name: str, entry_point: str) -> str:
    return f"def {entry_point}(*args, **kwargs):\n    return {class_name}().{entry_point}(*args, **kwargs)"


def _extract(primary: _Module, pool: list[_Module], entry_point: str) -> str:
    """The entry point and its transitive top-level dependencies, in source order."""
    owner = None if entry_point in primary.definitions else _method_owner(primary, entry_point)
    root = owner or entry_point
    kept, borrowed = _resolve(primary, pool, {root})
    kept_ids = {id(u) for u in kept}
    primary_units = [u for u in primary.units if u.is_import or id(u) in kept_ids or _keep_always(u)]
    borrowed_imports = [u for u in borrowed if u.is_import]
    borrowed_defs = [u for u in borrowed if not u.is_import]
    units = borrowed_imports + [u for u in primary_units if u.is_import]
    units += borrowed_defs + [u for u in primary_units if not u.is_import]
    text = _render(units)
    if owner is not None:
        text += "\n\n" + _wrapper(owner, entry_point) + "\n"
    return text


def _keep_always(unit: _Unit) -> bool:
    return _is_recursion_limit(unit.node)


def _blocks(text: str) -> list[_Module]:
    """Fenced blocks as modules; a block with a broken tail keeps its parsable prefix."""
    modules = []
    for code in extract_code_blocks(text):
        module = _build_module(code)
        if module is None:
            window = _longest_parsable_prefix(code.splitlines())
            module = _build_module(window) if window is not None else None
        if module is not None:
            modules.append(module)
    return modules


def _windows(text: str, entry_point: str) -> list[_Module]:
    modules = map(_build_module, _parsable_windows(text, entry_point))
    return [m for m in modules if m is not None]


def sanitize(text: str, entry_point: str) -> str:
    """Source defining ``entry_point`` plus everything it needs, nothing else.

    Tries the whole text, then the fenced blocks (the last one defining the
    entry point wins; helpers missing there are borrowed from the other
    blocks), then parsable line windows. Keeps all imports, the entry point,
    and the functions, classes and simple assignments it (transitively)
    references; drops demo code. A method-only entry point gets a module-level
    wrapper. If the entry point is nowhere, returns the best parsable code
    unchanged so the hidden test fails naturally.
    """
    text = _clean(text)
    whole = _build_module(text)
    if whole is not None and _has_entry(whole, entry_point):
        return _extract(whole, [], entry_point)
    blocks = _blocks(text)
    for index in range(len(blocks) - 1, -1, -1):
        if _has_entry(blocks[index], entry_point):
            others = blocks[:index] + blocks[index + 1 :]
            return _extract(blocks[index], others, entry_point)
    windows = _windows(text, entry_point)
    defining = [m for m in windows if _has_entry(m, entry_point)]
    if defining:
        return _extract(max(defining, key=lambda m: len(m.source)), [], entry_point)
    return _best_unchanged(text, whole, blocks, windows)


def _best_unchanged(text: str, whole: _Module | None, blocks: list[_Module], windows: list[_Module]) -> str:
    """Whole text if it parses, else the last block, else the longest window."""
    if whole is not None:
        return text
    if blocks:
        return blocks[-1].source
    if windows:
        return max(windows, key=lambda m: len(m.source)).source
    return text


def defines_function(code: str, name: str) -> bool:
    """Whether ``code`` binds ``name`` at top level as a function (``def`` or
    ``async def``) or by a simple assignment such as ``name = lambda ...``."""
    module = _build_module(_clean(code))
    if module is None:
        return False
    unit = module.definitions.get(name)
    return unit is not None and not isinstance(unit.node, ast.ClassDef)
