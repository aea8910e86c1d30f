"""The workflow language as an EBNF grammar, for grammar-constrained decoding.

``workflow_grammar`` states a strict subset of ``docs/workflow_language.md`` in
xgrammar's EBNF dialect (llama.cpp GBNF style), chosen so that EVERY string the
grammar accepts passes ``scoreflow.workflow.check_workflow`` for the given
operators (``tests/test_grammar.py`` checks this by random walks). It leaves out the
constructs the language accepts for the original generator's idioms (``asyncio.gather``,
``try``/``except``, string methods and builtins, ``self.problem``, ``range(N)`` above 3):
sampling under the grammar stays within the core, and the checker accepts both. A context-free
grammar cannot remember arbitrary identifiers, so "a name is assigned before it is
used" and "only bound operators are called" are enforced by making the grammar's
nonterminals carry that state explicitly over a small, fixed vocabulary:

* ``__init__`` binds a non-empty subset of the benchmark's operators, in the
  benchmark's order, under their conventional attribute names; the rest of the
  grammar is specialised to that subset ``B`` (only bound operators are called);
* ``run_workflow`` uses the string variables ``STRING_NAMES`` and, when ScEnsemble
  is bound, the list variable(s) ``LIST_NAMES``; each nonterminal knows which of
  them are surely assigned (and which lists are non-empty), so a name is referenced
  only after it is assigned, ScEnsemble only receives a list that was appended to,
  and ``return`` only names an assigned string;
* statements: ``s = await self.<op>(<kw>=<arg>)``, ``l = []`` (top level),
  ``l.append(await self.<op>(...))``, ``l.append(s)``, ``for _ in range(1|2|3):``
  (loops nest at most ``MAX_LOOP_DEPTH`` deep) and a final ``return s``; an ``<arg>``
  is a string literal, an assigned string name, or ``"literal" + name``. Names first
  assigned inside a loop body are not visible after the loop (the checker would
  allow them; the subset does not need them); lists filled inside a loop are;
* at most ``MAX_STATEMENTS`` top-level statements before the ``return`` (a loop counts
  as one) and ``LOOP_BODY_STATEMENTS`` per loop body, so every workflow is finite
  (small models otherwise repeat a line until the token limit); optionally at least
  ``min_calls`` operator calls before the ``return`` (see ``workflow_grammar``);
* ``__init__`` and ``run_workflow`` open as the template does (the original's idiom:
  multi-line signature, ``self.problem``, ``self.config = create(config)``, a docstring);
* fixed 4-space indentation, one blank line between the methods and one before the
  ``return`` (as the template), no comments;
* string literals are double-quoted printable ASCII without ``"``, ``\\``, ``<``,
  backticks or parentheses (so neither ``</graph>``, a Markdown fence, nor the banned
  substrings ``int(`` / ``.split(' ')`` of SPEC section 4 can appear inside), made of
  1 to ``MAX_STRING_WORDS`` words of at most ``MAX_WORD_CHARS`` characters joined by
  single spaces (a bounded length that xgrammar compiles fast: one flat ``{1,160}``
  repetition of characters alone costs seconds of compilation).

The grammar covers the completion after the prompt: optionally ``<graph>\\n``
(``include_open_tag``; the chat prompt ends with the assistant header, so the model
writes the tag itself), the workflow, then ``</graph>``. Sampling stops at
``</graph>``, so the returned text ends just before it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from scoreflow.operators import OPERATORS

if TYPE_CHECKING:
    import xgrammar
    from transformers import LogitsProcessor, PreTrainedTokenizerBase

STRING_NAMES: tuple[str, ...] = ("solution", "answer", "final")  # each doubles the grammar
LIST_NAMES: tuple[str, ...] = ("solutions",)
LIST_KEYWORDS = frozenset({"solutions"})  # keyword arguments that take a list (ScEnsemble)
LOOP_COUNTS: tuple[int, ...] = (1, 2, 3)
MAX_LOOP_DEPTH = 2
MAX_STATEMENTS = 8  # run_workflow's top-level statements before the return (a loop counts once)
LOOP_BODY_STATEMENTS: tuple[int, ...] = (3, 2)  # statements in a loop body, by nesting depth
MAX_STRING_WORDS = 24  # a literal is 1..24 words joined by single spaces (longer ones truncate small models)
MAX_WORD_CHARS = 24  # of 1..24 characters each (bounded repetitions compile cheaply this way)
INDENT = "    "
BODY_INDENT = 2  # run_workflow's statements sit two levels deep (class, method)
CLOSE_TAG = "</graph>"
OPEN_TAG = "<graph>"
# Printable ASCII minus '"', '(', ')', '<', '\\' and '`': no escapes, no "</graph>" or Markdown
# fence inside a literal, and none of the banned substrings ``int(`` and ``.split(' ')``.
STRING_CHAR = r"[ !#-'*-;=-\[\]-_a-~]"
WORD_CHAR = STRING_CHAR.replace("[ ", "[", 1)  # the same without the space
# The original's idiom (benchmarks/families.py's template): a multi-line signature, the problem
# kept, the config created, operators bound as operator.X(self.config, self.problem), a docstring.
INIT_HEAD = (f"{INDENT}def __init__(\n{INDENT * 2}self,\n{INDENT * 2}config,\n{INDENT * 2}problem\n{INDENT}) -> None:\n"
             f"{INDENT * 2}self.problem = problem\n{INDENT * 2}self.config = create(config)\n")
RUN_HEAD = (f"\n{INDENT}async def run_workflow(self):\n"
            f'{INDENT * 2}"""\n{INDENT * 2}This is a workflow graph.\n{INDENT * 2}"""\n')


@dataclass(frozen=True)
class _State:
    """What run_workflow has surely done so far: assigned strings, defined and filled lists,
    and operator calls made (counted up to the builder's cap, 0 when not counted)."""

    strings: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    filled: frozenset[str] = frozenset()
    calls: int = 0
    count: int = 0  # statements so far in the current block

    def key(self) -> str:
        return (f"s{_mask(self.strings, STRING_NAMES)}l{_mask(self.lists, LIST_NAMES)}"
                f"f{_mask(self.filled, LIST_NAMES)}c{self.calls}n{self.count}")

    def as_goal(self) -> _Exit:
        return _Exit(self.filled, self.calls)

    def assign(self, name: str) -> _State:
        return replace(self, strings=self.strings | {name})

    def define_list(self, name: str) -> _State:
        return replace(self, lists=self.lists | {name})

    def fill(self, name: str) -> _State:
        return replace(self, filled=self.filled | {name})

    def called(self, cap: int) -> _State:
        return replace(self, calls=min(cap, self.calls + 1))


@dataclass(frozen=True)
class _Exit:
    """What a loop body must leave behind (names it assigns stay inside the loop)."""

    filled: frozenset[str]
    calls: int

    def key(self) -> str:
        return f"t{_mask(self.filled, LIST_NAMES)}c{self.calls}"

    def allows(self, state: _State) -> bool:
        """``state`` can still end the body in this goal (fills and calls only grow)."""
        return state.filled <= self.filled and state.calls <= self.calls


def _mask(names: frozenset[str], order: Sequence[str]) -> int:
    return sum(1 << i for i, name in enumerate(order) if name in names)


def _lit(text: str) -> str:
    """An EBNF string literal (the texts here never need escapes beyond newline and quote)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _subsets(items: Sequence[str]) -> Iterator[frozenset[str]]:
    for size in range(len(items) + 1):
        for combo in itertools.combinations(items, size):
            yield frozenset(combo)


Alternative = tuple[str, ...]  # EBNF fragments: literals, inline groups, or rule names


class _Builder:
    """Emits rules memoised by name (the state is in the name), then keeps only the rules
    that can derive a complete string and are reachable from the root."""

    def __init__(self, operators: Sequence[str], min_calls: int, max_statements: int) -> None:
        self.operators = tuple(operators)
        self.cap = min_calls if min_calls > 1 else 0  # 0: a return needs a string, hence a call
        self.limits = (max_statements, *LOOP_BODY_STATEMENTS)  # statements per block, by depth
        self.rules: dict[str, list[Alternative]] = {}

    def rule(self, name: str, make: Any, *args: Any) -> str:
        """The rule ``name``, built once by ``make(*args) -> [alternatives]``."""
        if name not in self.rules:
            self.rules[name] = []  # placeholder: rules refer to themselves through the state
            self.rules[name] = [tuple(alt) for alt in make(*args)]
        return name

    def text(self) -> str:
        live = self.productive()
        if "root" not in live:
            raise ValueError("the operators cannot produce a workflow (ScEnsemble needs a generator)")
        lines = []
        for name in self.reachable(live):
            alternatives = [alt for alt in self.rules[name] if self.complete(alt, live)]
            lines.append(f"{name} ::= " + " | ".join(" ".join(alt) or '""' for alt in alternatives))
        return "\n".join(lines) + "\n"

    def complete(self, alternative: Alternative, live: set[str]) -> bool:
        return all(part in live for part in alternative if part in self.rules)

    def productive(self) -> set[str]:
        """Rules that derive at least one finite string (least fixpoint)."""
        live: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, alternatives in self.rules.items():
                if name not in live and any(self.complete(alt, live) for alt in alternatives):
                    live.add(name)
                    changed = True
        return live

    def reachable(self, live: set[str]) -> list[str]:
        order, stack = [], ["root"]
        seen = {"root"}
        while stack:
            name = stack.pop()
            order.append(name)
            for alt in self.rules[name]:
                if self.complete(alt, live):
                    for part in alt:
                        if part in self.rules and part not in seen:
                            seen.add(part)
                            stack.append(part)
        return order

    # ------------------------------------------------------------ class and __init__

    def workflow(self, open_tag: bool) -> list[Alternative]:
        head = (OPEN_TAG + "\n" if open_tag else "") + "class Workflow:\n" + INIT_HEAD
        return [(_lit(head), self.init(0, frozenset()), _lit(CLOSE_TAG))]

    def init(self, index: int, bound: frozenset[str]) -> str:
        return self.rule(f"init{index}_{self.bmask(bound)}", self._init, index, bound)

    def _init(self, index: int, bound: frozenset[str]) -> list[Alternative]:
        """Bind a non-empty subset of the operators, in the benchmark's order."""
        if index == len(self.operators):
            if not bound:
                return []
            return [(_lit(RUN_HEAD), self.body(bound, _State()))]
        name = self.operators[index]
        line = f"{INDENT * 2}self.{OPERATORS[name].attribute} = operator.{name}(self.config, self.problem)\n"
        return [(_lit(line), self.init(index + 1, bound | {name})), (self.init(index + 1, bound),)]

    def bmask(self, bound: frozenset[str]) -> int:
        return _mask(bound, self.operators)

    @staticmethod
    def takes_list(name: str) -> bool:
        return any(kw in LIST_KEYWORDS for kw in OPERATORS[name].keywords)

    # ------------------------------------------------------------ run_workflow blocks

    def body(self, bound: frozenset[str], state: _State) -> str:
        """Top-level statements of run_workflow, ending with ``return``."""
        return self.rule(f"body{self.bmask(bound)}_{state.key()}", self._body, bound, state)

    def _body(self, bound: frozenset[str], state: _State) -> list[Alternative]:
        indent = _lit(INDENT * BODY_INDENT)
        options = [(indent, *stmt, self.body(bound, after)) for stmt, after in self.statements(bound, state, 0, None)]
        if state.strings and state.calls >= self.cap:
            options.append((_lit("\n"), indent, _lit("return "), self.string_ref(state), _lit("\n")))
        return options

    def loop_body(self, bound: frozenset[str], state: _State, depth: int, goal: _Exit) -> str:
        """A loop's statements (at least one), ending in exactly ``goal``."""
        name = f"loop{self.bmask(bound)}_{state.key()}_d{depth}_{goal.key()}"
        return self.rule(name, self._loop_body, bound, state, depth, goal)

    def _loop_body(self, bound: frozenset[str], state: _State, depth: int, goal: _Exit) -> list[Alternative]:
        indent = _lit(INDENT * (BODY_INDENT + depth))
        return [(indent, *stmt, self.loop_rest(bound, after, depth, goal))
                for stmt, after in self.statements(bound, state, depth, goal)]

    def loop_rest(self, bound: frozenset[str], state: _State, depth: int, goal: _Exit) -> str:
        name = f"rest{self.bmask(bound)}_{state.key()}_d{depth}_{goal.key()}"
        return self.rule(name, self._loop_rest, bound, state, depth, goal)

    def _loop_rest(self, bound: frozenset[str], state: _State, depth: int, goal: _Exit) -> list[Alternative]:
        options: list[Alternative] = [(self.loop_body(bound, state, depth, goal),)]
        if state.as_goal() == goal:
            options.append(())
        return options

    def statements(self, bound: frozenset[str], state: _State, depth: int,
                   goal: _Exit | None) -> Iterator[tuple[Alternative, _State]]:
        """(statement after its indentation, state after it); ``goal`` is None at top level."""
        if state.count >= self.limits[depth]:
            return iter(())
        candidates = [(stmt, replace(after, count=state.count + 1))
                      for stmt, after in self._statements(bound, state, depth, goal)]
        return ((stmt, after) for stmt, after in candidates if goal is None or goal.allows(after))

    def _statements(self, bound: frozenset[str], state: _State, depth: int,
                    goal: _Exit | None) -> Iterator[tuple[Alternative, _State]]:
        call = self.call(bound, state)
        for name in STRING_NAMES:
            yield (_lit(name + " = "), call, _lit("\n")), state.assign(name).called(self.cap)
        if not any(self.takes_list(op) for op in bound):
            return  # lists only feed ScEnsemble
        for name in LIST_NAMES:
            if name not in state.lists and goal is None:
                yield (_lit(f"{name} = []\n"),), state.define_list(name)
            if name in state.lists:
                head = _lit(name + ".append(")
                yield (head, call, _lit(")\n")), state.fill(name).called(self.cap)
                if state.strings:
                    yield (head, self.string_ref(state), _lit(")\n")), state.fill(name)
        if depth < MAX_LOOP_DEPTH:
            yield from self.loops(bound, state, depth)

    def loops(self, bound: frozenset[str], state: _State, depth: int) -> Iterator[tuple[Alternative, _State]]:
        """``for _ in range(N):`` once per goal its body may reach (lists filled, calls made)."""
        head = ('"for _ in range("', "(" + " | ".join(_lit(str(n)) for n in LOOP_COUNTS) + ")", _lit("):\n"))
        for extra in _subsets(sorted(state.lists - state.filled)):
            for calls in range(state.calls, self.cap + 1):
                goal = _Exit(state.filled | extra, calls)
                after = replace(state, filled=goal.filled, calls=calls)
                yield (*head, self.loop_body(bound, replace(state, count=0), depth + 1, goal)), after

    # ------------------------------------------------------------ expressions

    def call(self, bound: frozenset[str], state: _State) -> str:
        """``await self.<attr>(...)`` for a bound operator whose arguments exist now."""
        key = f"call{self.bmask(bound)}_s{_mask(state.strings, STRING_NAMES)}f{_mask(state.filled, LIST_NAMES)}"
        return self.rule(key, self._call, bound, state)

    def _call(self, bound: frozenset[str], state: _State) -> list[Alternative]:
        options = []
        for name in self.operators:
            if name not in bound or (self.takes_list(name) and not state.filled):
                continue
            op = OPERATORS[name]
            parts = [_lit(f"await self.{op.attribute}(")]
            for i, kw in enumerate(op.keywords):
                parts += [_lit((", " if i else "") + kw + "="), self.argument(kw, state)]
            options.append((*parts, _lit(")")))
        return options

    def argument(self, keyword: str, state: _State) -> str:
        if keyword in LIST_KEYWORDS:
            return self.rule(f"lref_f{_mask(state.filled, LIST_NAMES)}", self._names, state.filled, LIST_NAMES)
        return self.rule(f"arg_s{_mask(state.strings, STRING_NAMES)}", self._string_arg, state)

    def _string_arg(self, state: _State) -> list[Alternative]:
        options: list[Alternative] = [("str",)]
        if state.strings:
            ref = self.string_ref(state)
            options += [(ref,), ("str", _lit(" + "), ref)]
        return options

    def string_ref(self, state: _State) -> str:
        return self.rule(f"sref_s{_mask(state.strings, STRING_NAMES)}", self._names, state.strings, STRING_NAMES)

    @staticmethod
    def _names(names: frozenset[str], order: Sequence[str]) -> list[Alternative]:
        return [(_lit(name),) for name in order if name in names]


def workflow_grammar(operators: Sequence[str], *, include_open_tag: bool = True, min_calls: int = 1,
                     max_statements: int = MAX_STATEMENTS) -> str:
    """EBNF (root rule ``root``) of ``[<graph>\\n] <workflow> </graph>`` for these operators.

    ``min_calls`` > 1 makes ``return`` wait until run_workflow has made that many operator
    calls (calls in loops count once): a one-call workflow is (nearly) the template, which
    SPEC section 4 rejects for math and QA, and small models otherwise copy the template.
    ``max_statements`` bounds run_workflow's top-level statements (loop bodies hold at most
    ``LOOP_BODY_STATEMENTS``), so a sampled workflow is finite: small models otherwise
    repeat one statement until ``max_new_tokens`` runs out.
    """
    unknown = [name for name in operators if name not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown operators: {unknown}")
    if len(LOOP_BODY_STATEMENTS) < MAX_LOOP_DEPTH:
        raise ValueError("LOOP_BODY_STATEMENTS needs a limit for every loop depth")
    builder = _Builder(operators, min_calls, max_statements)
    builder.rule("root", builder.workflow, include_open_tag)
    builder.rules["str"] = [(_lit('"'), "word", f"({_lit(' ')} word){{0,{MAX_STRING_WORDS - 1}}}", _lit('"'))]
    builder.rules["word"] = [(f"{WORD_CHAR}{{1,{MAX_WORD_CHARS}}}",)]
    return builder.text()


class GrammarDecoding:
    """A grammar compiled once for a tokenizer; hands out fresh per-generate processors.

    Compilation (token masks over the whole vocabulary, a few seconds) is the expensive
    step, so it is done once per (grammar, tokenizer) in a process (``_COMPILED``); a
    logits processor holds per-sequence matcher state and serves one ``generate`` call.
    """

    def __init__(self, grammar: str, tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None) -> None:
        key = (hashlib.sha256(grammar.encode()).hexdigest(), getattr(tokenizer, "name_or_path", ""),
               len(tokenizer), vocab_size)
        if key not in _COMPILED:
            _COMPILED[key] = _compile(grammar, tokenizer, vocab_size)
            while len(_COMPILED) > _COMPILED_LIMIT:
                _COMPILED.pop(next(iter(_COMPILED)))
        self.compiled: xgrammar.CompiledGrammar = _COMPILED[key]

    def matcher(self) -> xgrammar.GrammarMatcher:
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compiled)

    def logits_processor(self) -> LogitsProcessor:
        return _processor_class()(self.compiled)


_COMPILED: dict[tuple[str, str, int, int | None], Any] = {}  # oldest first
_COMPILED_LIMIT = 4


def _compile(grammar: str, tokenizer: PreTrainedTokenizerBase, vocab_size: int | None) -> xgrammar.CompiledGrammar:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    return xgr.GrammarCompiler(info, cache_enabled=False).compile_grammar(grammar)


_PROCESSOR_CLASS: type | None = None


def _processor_class() -> type:
    """The logits processor class, defined on first use so importing this module stays light."""
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        _PROCESSOR_CLASS = _define_processor_class()
    return _PROCESSOR_CLASS


def _define_processor_class() -> type:
    import torch
    import xgrammar as xgr
    from transformers import LogitsProcessor

    class GrammarLogitsProcessor(LogitsProcessor):
        """One xgrammar matcher per batch row (rows include ``num_return_sequences`` copies).

        Unlike ``xgrammar.contrib.hf.LogitsProcessor`` it tolerates rows that
        transformers has already finished (by a stop string or EOS) and pads: such a row's
        matcher simply stops advancing and the row is left unmasked (its tokens are
        replaced by padding anyway).
        """

        def __init__(self, compiled: xgrammar.CompiledGrammar) -> None:
            self.compiled = compiled
            self.vocab_size = compiled.tokenizer_info.vocab_size
            self.matchers: list[xgrammar.GrammarMatcher] = []
            self.live: list[bool] = []
            self.bitmask: torch.Tensor | None = None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if not self.matchers:
                rows = input_ids.shape[0]
                self.matchers = [xgr.GrammarMatcher(self.compiled) for _ in range(rows)]
                self.live = [True] * rows
                self.bitmask = xgr.allocate_token_bitmask(rows, self.vocab_size)
            elif input_ids.shape[0] != len(self.matchers):
                raise RuntimeError("a GrammarLogitsProcessor serves one generate call with a fixed batch")
            else:
                self._advance(input_ids[:, -1].tolist())
            assert self.bitmask is not None
            self.bitmask.fill_(-1)  # all allowed; live rows refill their own row
            for row, matcher in enumerate(self.matchers):
                if self.live[row]:
                    matcher.fill_next_token_bitmask(self.bitmask, row)
            return self._apply(scores)

        def _advance(self, tokens: list[int]) -> None:
            """Feed each live row its last token; a refused token (padding after a stop string)
            or a terminated grammar (EOS accepted) ends the row's constraint."""
            for row, token in enumerate(tokens):
                if self.live[row]:
                    matcher = self.matchers[row]
                    self.live[row] = matcher.accept_token(token) and not matcher.is_terminated()

        def _apply(self, scores: torch.FloatTensor) -> torch.FloatTensor:
            assert self.bitmask is not None
            if scores.device.type in ("cpu", "cuda"):
                xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device, non_blocking=True))
                return scores
            cpu = scores.to("cpu")
            xgr.apply_token_bitmask_inplace(cpu, self.bitmask)
            return cpu.to(scores.device)

    return GrammarLogitsProcessor
