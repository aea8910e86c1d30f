"""The workflow grammar: it compiles, it accepts the templates, and everything it accepts
passes ``check_workflow`` (random walks through an xgrammar matcher with the SmolLM2
tokenizer — the agreement test between ``scoreflow/grammar.py`` and the checker)."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest

xgr = pytest.importorskip("xgrammar", reason="grammar-constrained decoding needs xgrammar")

from benchmarks import get_benchmark  # noqa: E402
from scoreflow.config import DATASETS  # noqa: E402
from scoreflow.grammar import (  # noqa: E402
    LOOP_BODY_STATEMENTS,
    MAX_STATEMENTS,
    MAX_STRING_WORDS,
    MAX_WORD_CHARS,
    STRING_CHAR,
    GrammarDecoding,
    workflow_grammar,
)
from scoreflow.workflow import WorkflowRejected, check_workflow, extract_graph  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache"
OPERATOR_SETS = sorted({get_benchmark(name).binding_order for name in DATASETS})
WALKS_PER_SET = 150
MAX_WALK_TOKENS = 2500


# ---------------------------------------------------------------- without a tokenizer


@pytest.mark.parametrize("dataset", DATASETS)
def test_grammar_parses_for_every_benchmark(dataset: str) -> None:
    grammar = workflow_grammar(get_benchmark(dataset).binding_order)
    assert grammar.startswith("root ::= ")
    xgr.Grammar.from_ebnf(grammar)  # raises on a syntax error or an undefined rule


def test_grammar_text_is_deterministic_and_tag_optional() -> None:
    ops = get_benchmark("GSM8K").binding_order
    assert workflow_grammar(ops) == workflow_grammar(ops)
    assert '"<graph>\\nclass Workflow:' in workflow_grammar(ops)
    assert "<graph>\\n" not in workflow_grammar(ops, include_open_tag=False)


def test_bad_operator_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        workflow_grammar(["Custom", "Shell"])
    with pytest.raises(ValueError, match="cannot produce"):
        workflow_grammar(["ScEnsemble"])


def test_string_literal_characters() -> None:
    allowed = {chr(c) for c in range(256) if re.fullmatch(STRING_CHAR, chr(c))}
    assert allowed == {chr(c) for c in range(0x20, 0x7F)} - set('"()<\\`')


# ---------------------------------------------------------------- with the SmolLM2 tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoConfig, AutoTokenizer

    from scoreflow.models import resolve_model

    folder = resolve_model("smollm2-135m-instruct", cache_dir=CACHE_DIR)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.vocab_size_full = AutoConfig.from_pretrained(folder).vocab_size
    return tok


def decoding(tokenizer, operators: tuple[str, ...], **kwargs) -> GrammarDecoding:
    """Compiled once per process and grammar (GrammarDecoding caches)."""
    return GrammarDecoding(workflow_grammar(operators, **kwargs), tokenizer, tokenizer.vocab_size_full)


def accepts(dec: GrammarDecoding, tokenizer, text: str) -> bool:
    """The grammar takes exactly ``text`` as the model's tokens would spell it."""
    matcher = dec.matcher()
    ids = tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.accept_token(t) for t in ids) and matcher.is_completed()


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_template_workflow_is_accepted(tokenizer, dataset: str) -> None:
    bench = get_benchmark(dataset)
    dec = decoding(tokenizer, bench.binding_order)
    text = "<graph>\n" + bench.template_workflow + "</graph>"
    assert accepts(dec, tokenizer, text)
    assert not accepts(dec, tokenizer, text[: -len("</graph>")])  # the closing tag is required


DOC_EXAMPLE = '''class Workflow:
    def __init__(
        self,
        config,
        problem
    ) -> None:
        self.problem = problem
        self.config = create(config)
        self.custom = operator.Custom(self.config, self.problem)
        self.sc_ensemble = operator.ScEnsemble(self.config, self.problem)

    async def run_workflow(self):
        """
        This is a workflow graph.
        """
        solutions = []
        for _ in range(3):
            solution = await self.custom(instruction="Solve the problem step by step.")
            solutions.append(solution)
        final = await self.sc_ensemble(solutions=solutions)

        return final
'''
HEAD = DOC_EXAMPLE.split("        solutions = []")[0]  # the class up to run_workflow's first statement


def body(lines) -> str:
    """run_workflow's statements, two levels deep ('' is the blank line before the return)."""
    return "".join(f"        {line}\n" if line else "\n" for line in lines)


@pytest.mark.slow
def test_language_example_is_accepted_without_open_tag(tokenizer) -> None:
    ops = get_benchmark("GSM8K").binding_order
    assert accepts(decoding(tokenizer, ops, include_open_tag=False), tokenizer, DOC_EXAMPLE + "</graph>")
    check_workflow(DOC_EXAMPLE, ops)


@pytest.mark.slow
def test_min_calls_refuses_the_template(tokenizer) -> None:
    bench = get_benchmark("GSM8K")
    dec = decoding(tokenizer, bench.binding_order, min_calls=2)
    assert not accepts(dec, tokenizer, "<graph>\n" + bench.template_workflow + "</graph>")
    assert accepts(dec, tokenizer, "<graph>\n" + DOC_EXAMPLE + "</graph>")  # a call in a loop, then one more


ACCEPTED_LIMITS = (*["solution = await self.custom(instruction=\"x\")"] * MAX_STATEMENTS, "", "return solution")


@pytest.mark.slow
def test_statement_limits_are_exact(tokenizer) -> None:
    loop = ("answer = await self.custom(instruction=\"x\")", "for _ in range(2):",
            *["    solution = await self.custom(instruction=\"x\")"] * LOOP_BODY_STATEMENTS[0])
    dec = decoding(tokenizer, get_benchmark("GSM8K").binding_order)
    for lines in (ACCEPTED_LIMITS, (*loop, "", "return answer")):  # loop-local names end with the loop
        assert accepts(dec, tokenizer, "<graph>\n" + HEAD + body(lines) + "</graph>")


CALL = 'solution = await self.custom(instruction="x")'
REJECTED = {
    "name used before assignment": ("solution = await self.custom(instruction=\"x\")", "", "return final"),
    "unbound operator": ("solution = await self.review(pre_solution=\"x\")", "", "return solution"),
    "ensemble of an empty list": ("solutions = []", "solution = await self.sc_ensemble(solutions=solutions)"),
    "closing tag inside a literal": ("solution = await self.custom(instruction=\"a </graph> b\")", "", "return solution"),
    "banned substring in a literal": ("solution = await self.custom(instruction=\"use int( x\")", "", "return solution"),
    "range too long": ("for _ in range(4):", "    solution = await self.custom(instruction=\"x\")"),
    "word too long": (CALL.replace("x", "a" * (MAX_WORD_CHARS + 1)), "", "return solution"),
    "too many statements": (*[CALL] * (MAX_STATEMENTS + 1), "", "return solution"),
    "loop body too long": ("for _ in range(2):", *["    " + CALL] * (LOOP_BODY_STATEMENTS[0] + 1), CALL,
                           "", "return solution"),
    "too many words": (CALL.replace("x", " ".join(["a"] * (MAX_STRING_WORDS + 1))), "", "return solution"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REJECTED))
def test_grammar_refuses_what_the_checker_or_pipeline_would(tokenizer, case: str) -> None:
    ops = get_benchmark("GSM8K").binding_order
    assert not accepts(decoding(tokenizer, ops), tokenizer, "<graph>\n" + HEAD + body(REJECTED[case]) + "</graph>")


@pytest.mark.slow
def test_logits_processor_keeps_one_matcher_per_row(tokenizer) -> None:
    import torch

    dec = decoding(tokenizer, get_benchmark("GSM8K").binding_order)
    processor = dec.logits_processor()
    vocab = tokenizer.vocab_size_full
    prompt = torch.zeros((2, 3), dtype=torch.long)
    first = processor(prompt, torch.zeros(2, vocab))
    opening = tokenizer.encode("<graph>", add_special_tokens=False)[0]
    word = tokenizer.encode("hello", add_special_tokens=False)[0]
    assert first[0, opening] == 0 and first[0, word] == float("-inf") and torch.equal(first[0], first[1])
    step = torch.cat([prompt, torch.tensor([[opening], [word]])], dim=1)  # row 1: a token the grammar refuses
    second = processor(step, torch.zeros(2, vocab))
    assert torch.isinf(second[0]).sum() > vocab // 2  # row 0 still constrained
    assert not torch.isinf(second[1]).any()  # row 1 (finished, padded) is left alone


class Walker:
    """Random walks: at each step a uniformly random token the grammar allows.

    Inside a string literal nearly the whole vocabulary is allowed, so with probability
    ``close_bias`` a walk picks among the allowed tokens that contain a double quote —
    walks then end sooner and contain more statements (a better probe of the grammar's
    state tracking) while still reaching every allowed token. Likewise, where a statement
    or the blank line before the ``return`` may follow, the many whitespace tokens that
    hold a blank line all lead to the ``return``; with probability ``stay_bias`` a walk
    picks among the others, so walks are not cut short there.
    """

    def __init__(self, dec: GrammarDecoding, tokenizer, seed: int, close_bias: float = 0.3,
                 stay_bias: float = 0.75) -> None:
        self.dec, self.tokenizer = dec, tokenizer
        self.vocab = tokenizer.vocab_size_full
        self.rng = np.random.default_rng(seed)
        self.close_bias = close_bias
        self.stay_bias = stay_bias
        self.quote = np.zeros(self.vocab, dtype=bool)
        self.newline = np.zeros(self.vocab, dtype=bool)
        for token_id in range(len(tokenizer)):
            piece = tokenizer.decode([token_id])
            self.quote[token_id] = '"' in piece
            self.newline[token_id] = piece.lstrip(" ").startswith("\n\n")
        self.bitmask = xgr.allocate_token_bitmask(1, self.vocab)

    def allowed(self) -> np.ndarray:
        bits = np.unpackbits(self.bitmask[0].numpy().view(np.uint8), bitorder="little")[: self.vocab]
        return bits.astype(bool)

    def walk(self) -> str | None:
        """The decoded text of one complete walk (None: not finished within the bound)."""
        matcher, tokens = self.dec.matcher(), []
        while not matcher.is_completed() and len(tokens) < MAX_WALK_TOKENS:
            matcher.fill_next_token_bitmask(self.bitmask)
            allowed = self.allowed()
            closing = allowed & self.quote
            if allowed.sum() > 1000 and closing.any() and self.rng.random() < self.close_bias:
                allowed = closing
            staying = allowed & ~self.newline
            if staying.any() and (allowed & self.newline).any() and self.rng.random() < self.stay_bias:
                allowed = staying
            token = int(self.rng.choice(np.flatnonzero(allowed)))
            assert matcher.accept_token(token)
            tokens.append(token)
        return self.tokenizer.decode(tokens) if matcher.is_completed() else None


FEATURES = {
    "loop": "for _ in range(",
    "nested loop": "            for _ in range(",
    "ensemble": "sc_ensemble(solutions=",
    "append": ".append(",
    "concatenation": '" + ',
}


WALK_CASES = [(ops, 1) for ops in OPERATOR_SETS] + [(get_benchmark("MATH").binding_order, 2)]


@pytest.mark.slow
@pytest.mark.parametrize(("operators", "min_calls"), WALK_CASES,
                         ids=lambda v: "+".join(v) if isinstance(v, tuple) else f"min{v}")
def test_random_walks_pass_check_workflow(tokenizer, operators: tuple[str, ...], min_calls: int) -> None:
    dec = decoding(tokenizer, operators, min_calls=min_calls)
    walker = Walker(dec, tokenizer, seed=len(operators) + sum(map(len, operators)) + min_calls)
    seen: collections.Counter[str] = collections.Counter()
    finished = 0
    for _ in range(WALKS_PER_SET):
        text = walker.walk()
        if text is None:
            continue
        finished += 1
        assert text.startswith("<graph>\n") and text.endswith("</graph>")
        source = extract_graph(text)
        try:
            check_workflow(source, operators)
        except WorkflowRejected as exc:
            pytest.fail(f"the grammar accepted a workflow the checker rejects ({exc.reason}):\n{source}")
        assert source.count("await self.") >= min_calls
        seen.update(name for name, marker in FEATURES.items() if marker in source)
    name = "+".join(operators)
    print(f"{name} min_calls={min_calls}: {finished}/{WALKS_PER_SET} walks finished; features {dict(seen)}")
    assert finished >= 0.9 * WALKS_PER_SET
    assert {"loop", "ensemble", "append", "concatenation"} <= set(seen)  # the walks reach the grammar's corners
