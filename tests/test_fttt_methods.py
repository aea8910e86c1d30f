"""FTTT's chat turns, budget accounting and voting rules, and the methods' generation
plumbing on SmolLM2 (FTTT_SPEC 1.3, 1.5, 2.2-2.6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fttt import chat
from fttt.attempts import Attempt, Counter
from fttt.methods import RETRY, majority

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from scoreflow.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct", ".cache"))


def with_template(tokenizer, name: str):
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = (TEMPLATES / name).read_text()
    return other


# ---------------------------------------------------------------- chat turns


def test_followup_on_smollm2_starts_with_the_end_of_turn_it_replaces(smol_tokenizer):
    text = chat.followup_text(smol_tokenizer, "What is 2+3?", RETRY, assistant_header=False)
    assert text == f"<|im_end|>\n<|im_start|>user\n{RETRY}<|im_end|>\n"
    with_header = chat.followup_text(smol_tokenizer, "What is 2+3?", RETRY, assistant_header=True)
    assert with_header == text + "<|im_start|>assistant\n"
    ids = chat.followup_ids(smol_tokenizer, "What is 2+3?", RETRY, assistant_header=False)
    assert ids[0] == smol_tokenizer.eos_token_id  # <|im_end|>: the slot of the attempt's last sampled token


def test_followup_on_llama31_and_mistral_templates(smol_tokenizer):
    llama = with_template(smol_tokenizer, "llama31.jinja")
    text = chat.followup_text(llama, "Q", RETRY, assistant_header=False)
    # The original's hand-written Llama string: end-of-turn, user header, blank line, message, end-of-turn,
    # and no assistant header after the feedback (the paper's quirk).
    assert text == f"<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{RETRY}<|eot_id|>"
    assert chat.followup_text(llama, "Q", RETRY, assistant_header=True).endswith(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    mistral = with_template(smol_tokenizer, "mistral_v03.jinja")
    text = chat.followup_text(mistral, "Q", RETRY, assistant_header=False)
    # eos_token is the template's variable: the SmolLM2 tokenizer's stands where Mistral's </s> would
    assert text == f"{mistral.eos_token}[INST] {RETRY}[/INST]"


def test_prompt_has_one_bos_and_the_generation_header(smol_tokenizer):
    llama = with_template(smol_tokenizer, "llama31.jinja")
    text = chat.prompt_text(llama, "Q")
    bos = llama.bos_token  # the template's variable (the SmolLM2 tokenizer's own here)
    assert text.startswith(bos + "<|start_header_id|>system") and text.count(bos) == 1
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_followup_segments_split_after_the_message(smol_tokenizer):
    before, after = chat.followup_segments(smol_tokenizer, "Q", "Your answer is incorrect. ", assistant_header=False)
    assert before == "<|im_end|>\n<|im_start|>user\nYour answer is incorrect. "
    assert after == "<|im_end|>\n"


def test_continuation_after_drops_only_a_repeated_end_of_turn():
    assert chat.continuation_after([5, 6, 2], [2, 9, 10]) == [9, 10]  # the attempt ended with the end-of-turn
    assert chat.continuation_after([5, 6, 7], [2, 9, 10]) == [2, 9, 10]  # truncated: the turn is closed


# ---------------------------------------------------------------- budget accounting


def attempt(verdict, *, counted=True, counted_strict=True, kind="attempt") -> Attempt:
    return Attempt("q", 0, kind, counted, counted_strict, None if counted else "why", verdict, True, None, "", 10,
                   True, 0.1)


def test_fttt_paper_budget_does_not_count_unanswered_attempts_strict_does():
    """FTTT_SPEC 1.5 / 5.9: FTTT's unanswered attempts are free in the paper's accounting."""
    paper, strict = Counter(3, "paper"), Counter(3, "strict")
    sequence = [attempt(None, counted=False), attempt(False), attempt(None, counted=False), attempt(False),
                attempt(True)]
    for counter in (paper, strict):
        for a in sequence:
            if counter.exhausted:
                break
            counter.add(a)
    assert paper.solved and paper.success_at == 3 and paper.generations == 5  # 2 failures + the success
    assert not strict.solved and strict.generations == 3 and strict.exhausted  # three generations used the budget
    result = paper.result(type("Q", (), {"id": "q", "original_id": 1})(), paper_num_trials=2, final_verdict=True,
                          seconds=1.0)
    assert result.success and not result.success_strict and result.success_at_strict == 5


def test_self_refine_draft_is_free_in_the_paper_budget_only():
    paper = Counter(2, "paper")
    paper.add(attempt(None, counted=False, kind="draft"))  # never checked, counted_strict
    paper.add(attempt(False))
    assert not paper.exhausted and paper.strict == 2
    paper.add(attempt(True))
    assert paper.success_at == 2 and paper.success_at_strict == 3


def test_a_reflection_is_never_an_attempt():
    counter = Counter(2, "strict")
    counter.add(attempt(False))
    counter.add(attempt(None, counted=False, counted_strict=False, kind="reflection"))
    assert counter.strict == 1 and counter.paper == 1 and counter.generations == 2


# ---------------------------------------------------------------- Self-Consistency's vote


def test_majority_ties_keep_first_appearance_and_none_yields():
    assert majority(["a", "b", "b", "a"]) == "a"
    assert majority(["b", "a", "a"]) == "a"
    assert majority([None, None, "x"]) == "x"
    assert majority([None, None]) is None
