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


# ---------------------------------------------------------------- the hard-question filter


@pytest.fixture
def filtered(tmp_path):
    """A finished filter for two prepared GSM8K questions, written through the real stage API."""
    from fttt.config import load_fttt_config
    from fttt.runner import filter_identity, prompt_hash
    from fttt.tasks import get_task
    from fttt.workspace import HARD_STAGE, hard_folder
    from scoreflow.jsonio import atomic_write_json

    data = tmp_path / "data"
    assert _prepare_gsm8k(data) == 0
    config = load_fttt_config(None, [f"workspace={tmp_path / 'ws'}", f"data_dir={data}", "model.name=some/model"])
    task = get_task("GSM8K")
    questions = task.load(data)[:2]
    folder = hard_folder(config, "GSM8K")
    folder.start(HARD_STAGE, config).finish()
    atomic_write_json(folder.path("hard_ids.json"), {
        **filter_identity(config, task), "hard_ids": [questions[1].id], "correct_ids": [questions[0].id],
        "prompts": {q.id: prompt_hash(q) for q in questions},
    })
    return config, folder, task, questions


def _prepare_gsm8k(data: Path) -> int:
    from data import prepare

    return prepare.main(["--suite", "fttt", "--dataset", "GSM8K", "--set", f"data_dir={data}"])


def test_a_run_takes_the_filters_hard_questions(filtered):
    from fttt.runner import check_filter

    config, folder, task, questions = filtered
    assert [q.id for q in check_filter(config, folder, task, questions)] == [questions[1].id]


@pytest.mark.parametrize("override, key", [
    ("model.name=other/model", "model"),
    ("model.dtype=bfloat16", "dtype"),
    ("judge.time_limit_s=10", "judge_time_limit_s"),
    ("sampling.max_new_tokens=64", "max_new_tokens"),
])
def test_a_filter_made_for_another_setting_is_refused(filtered, override, key):
    from fttt.config import load_fttt_config
    from fttt.runner import check_filter
    from scoreflow.config import to_dict
    from scoreflow.errors import ScoreFlowError

    config, folder, task, questions = filtered
    other = load_fttt_config(None, [f"workspace={config.workspace}", f"data_dir={config.data_dir}",
                                    f"model.name={config.model.name}", override])
    other_folder = type(folder)(other, "GSM8K", "hard")
    if other_folder.dir != folder.dir:  # another model has its own folder: no filter there at all
        with pytest.raises(ScoreFlowError, match="no finished hard-question filter"):
            check_filter(other, other_folder, task, questions)
        other_folder = folder
    with pytest.raises(ScoreFlowError, match=f"made with {key} = "):
        check_filter(other, other_folder, task, questions)
    assert to_dict(other) != to_dict(config)


def test_a_filter_for_another_split_or_prompt_is_refused(filtered, tmp_path):
    import json

    from fttt.runner import check_filter
    from fttt.tasks import Question
    from scoreflow.errors import ScoreFlowError

    config, folder, task, questions = filtered
    manifest = Path(config.data_dir) / "GSM8K" / "manifest.json"
    saved = manifest.read_text()
    manifest.write_text(json.dumps({**json.loads(saved), "split_sha256": "0" * 64}))
    with pytest.raises(ScoreFlowError, match="split_sha256"):
        check_filter(config, folder, task, questions)
    manifest.write_text(saved)
    reworded = Question(questions[0].id, questions[0].original_id, questions[0].user_message + " ", "1")
    with pytest.raises(ScoreFlowError, match="posed differently"):
        check_filter(config, folder, task, [reworded])
    unknown = Question("9999", 9999, "q", "1")
    with pytest.raises(ScoreFlowError, match="was not filtered"):
        check_filter(config, folder, task, [unknown])


# ---------------------------------------------------------------- beam search on out-of-memory


def test_beam_search_halves_its_width_on_out_of_memory(smol_tokenizer):
    """The original halves num_beams on a CUDA OOM and retries (beam_search.py L46-71). A CPU
    cannot run out of GPU memory, so the model's generate raises it above two beams."""
    import torch

    from fttt.config import SamplingSettings
    from fttt.policy import Policy
    from scoreflow.models import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct", ".cache", dtype="float32", device="cpu")
    real_generate, widths = model.generate, []

    def generate(*args, num_beams=1, **kwargs):
        widths.append(num_beams)
        if num_beams > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(*args, num_beams=num_beams, **kwargs)

    model.generate = generate
    policy = Policy(model, tokenizer, SamplingSettings(max_new_tokens=8))
    beams, width = policy.beams(chat.prompt_ids(tokenizer, "Say hi."), 8)
    assert widths == [8, 4, 2] and width == 2 and len(beams) == 2
    assert all(b.text and b.new_tokens <= 8 for b in beams)


def test_revision_reuses_its_cache_across_turns_with_the_same_tokens(smol_tokenizer):
    """The second turn continued from the first turn's cache decodes the same greedy tokens
    as a fresh encoding of the whole conversation (the cache only saves the re-encoding)."""
    from fttt.config import SamplingSettings
    from fttt.policy import Policy
    from scoreflow.models import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct", ".cache", dtype="float32", device="cpu")
    policy = Policy(model, tokenizer, SamplingSettings(max_new_tokens=24))
    prompt = chat.prompt_ids(tokenizer, "What is 7 times 8? End with 'The final answer is N'.")
    first = policy.generate(prompt, greedy=True, keep_cache=True)
    followup = chat.followup_ids(tokenizer, "x", RETRY, assistant_header=False)
    sequence = [*prompt, *first.ids, *chat.continuation_after(first.ids, followup)]
    assert first.cache.get_seq_length() == len(prompt) + len(first.ids) - 1
    reused = policy.generate(sequence, greedy=True, past_key_values=first.cache)
    fresh = policy.generate(sequence, greedy=True)
    assert reused.ids == fresh.ids and reused.new_tokens > 0


def test_normalized_votes_merge_equivalent_math_answers():
    from fttt.config import load_fttt_config
    from fttt.methods import Context, vote_key
    from fttt.tasks import get_task

    def key(mode: str, text: str):
        config = load_fttt_config(None, [f"methods.self_consistency_votes={mode}"])
        ctx = Context(config, get_task("MATH500"), policy=None, judge=None, record=lambda a: None)
        try:
            return vote_key(ctx, text)
        finally:
            ctx.close()

    assert key("raw", r"so $\boxed{\dfrac{1}{2}}$") != key("raw", r"$\boxed{0.5}$")  # the paper: split votes
    assert key("normalized", r"so $\boxed{\dfrac{1}{2}}$") == key("normalized", r"$\boxed{0.5}$") == r"\frac{1}{2}"


@pytest.mark.slow
def test_best_of_n_in_batches_stops_at_the_first_pass_and_leaves_the_rest_unchecked(tmp_path):
    """HumanEval/23 (strlen) is one SmolLM2 solves at nearly every sample: with two samples
    per generate call the first passes, the second is recorded unchecked and uncounted."""
    from fttt.config import load_fttt_config
    from fttt.judging import make_judge
    from fttt.methods import Context, best_of_n
    from fttt.policy import load_policy
    from fttt.tasks import get_task

    from data import prepare

    data = tmp_path / "data"
    assert prepare.main(["--suite", "fttt", "--dataset", "HumanEval", "--set", f"data_dir={data}"]) == 0
    config = load_fttt_config("config/fttt_tiny.yaml", [f"data_dir={data}", "methods.sample_batch=2",
                                                        "methods.budget=4", "sampling.max_new_tokens=96"])
    task, records = get_task("HumanEval"), []
    question = next(q for q in task.load(data) if q.id == "HumanEval/23")
    judge = make_judge(config)
    ctx = Context(config, task, load_policy(config), judge, record=records.append, method="best_of_n")
    try:
        import transformers

        transformers.set_seed(42)
        result = best_of_n(ctx, question)
    finally:
        ctx.close()
        judge.close()
    assert result.success and len(records) % 2 == 0  # whole batches of two
    passed = next(i for i, a in enumerate(records) if a.verdict)
    assert all(a.checked and a.counted for a in records[: passed + 1])
    assert all(not a.checked and not a.counted and not a.counted_strict for a in records[passed + 1:])
    assert result.success_at == passed + 1 and result.generations == len(records)
