"""fttt/ttt.py on SmolLM2-135M-Instruct (fp32, CPU): the adapter reset, the cached-attempt
losses against full forwards, the gradients, the steps, and FTTT / FTTT+ end to end.

Generations are kept short (a few to 40 new tokens): one token costs about 0.1-0.4 s on
the 2-core CI machine. Where a test needs failures that train, it uses a task whose
verifier rejects every answer, so the path taken does not depend on what SmolLM2 writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import transformers

from fttt import chat, ttt
from fttt.config import FtttConfig, MethodSettings, ModelSettings, SamplingSettings, TTTSettings
from fttt.methods import INCORRECT, Context, method_function
from fttt.policy import Policy
from fttt.tasks import GSM8K, Question

pytestmark = pytest.mark.slow

GSM8K_RECORD = {"id": 0, "question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
                "answer": "3 + 2 = 5\n#### 5"}
SHORT = "What is 2 + 2? Answer with a number only."  # SmolLM2 ends its attempt and its reflection early (seed 42)


class AlwaysWrong:
    """A verifier that rejects every answer: each attempt is a counted failure."""

    name = "GSM8K"

    def extract(self, completion: str) -> str | None:
        return "wrong"

    async def verdict(self, question: Question, completion: str, judge: Any = None) -> bool | None:
        return False


def question(qid: str, message: str) -> Question:
    return Question(id=qid, original_id=qid, user_message=message, reference="")


@pytest.fixture(scope="module")
def policy() -> Iterator[Policy]:
    from scoreflow.models import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct", ".cache", dtype="float32", device="cpu")
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # a caller under no_grad: the trainer must turn grad on itself
    yield Policy(model, tokenizer, SamplingSettings(max_new_tokens=12))
    torch.set_grad_enabled(previous)  # grad mode is process-wide: later test modules train


@pytest.fixture(scope="module")
def trainer(policy: Policy) -> ttt.Trainer:
    return ttt.Trainer.for_policy(policy, TTTSettings())


@pytest.fixture(scope="module")
def attempt(policy: Policy, trainer: ttt.Trainer) -> dict[str, Any]:
    """A short attempt sampled with a non-zero adapter in eval mode, with its cache."""
    trainer.reset(3)
    perturb_b(trainer, seed=5)
    trainer.model.eval()
    prompt = chat.prompt_ids(policy.tokenizer, SHORT)
    generation = policy.generate(prompt, keep_cache=True, model=trainer.model, max_new_tokens=10)
    return {"prompt": prompt, "generation": generation, "state": ttt.lora_state(trainer.model)}


def perturb_b(trainer: ttt.Trainer, *, seed: int) -> None:
    """Give every B a small random value, so the adapter changes the model's outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in trainer.layers:
            b = layer.lora_B["default"].weight
            b.copy_(0.02 * torch.randn(b.shape, generator=generator))


def restore(trainer: ttt.Trainer, state: dict[str, torch.Tensor]) -> None:
    params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def make_context(policy: Policy, task: Any, *, budget: int = 2, accounting: str = "paper", method: str = "fttt",
                 max_new_tokens: int = 12, **ttt_settings: Any) -> tuple[Context, list[Any]]:
    policy.sampling = SamplingSettings(max_new_tokens=max_new_tokens)
    config = FtttConfig(methods=MethodSettings(budget=budget, accounting=accounting),  # type: ignore[arg-type]
                        sampling=policy.sampling, ttt=TTTSettings(**ttt_settings))
    records: list[Any] = []
    ctx = Context(config, task, policy, judge=None, record=records.append, method=method, seed=42)
    return ctx, records


# ------------------------------------------------------------------ the adapter and its reset


def test_the_adapter_is_built_once_and_reset_matches_a_fresh_peft_adapter(policy: Policy, trainer: ttt.Trainer) -> None:
    from peft import get_peft_model

    from scoreflow.models import load_causal_lm

    assert ttt.Trainer.for_policy(policy, TTTSettings()) is trainer  # get_peft_model is not called again
    assert len(trainer.layers) == 60  # 30 layers x (q_proj, v_proj), no nested adapters
    assert sum(p.numel() for p in trainer.parameters) == 230_400  # FTTT_SPEC 6.4 (derived)
    trainer.reset(7)
    after_reset = torch.rand(4)  # where the random stream is left for sampling
    mine = ttt.lora_state(trainer.model)
    fresh, _ = load_causal_lm("smollm2-135m-instruct", ".cache", dtype="float32", device="cpu")
    transformers.set_seed(7)
    peft_model = get_peft_model(fresh, ttt.lora_config(TTTSettings()))  # the original's reset
    after_peft = torch.rand(4)
    theirs = ttt.lora_state(peft_model)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(after_reset, after_peft)
    assert all(not v.any() for k, v in mine.items() if "lora_B" in k)


def test_learning_rate_switch() -> None:
    mistral = FtttConfig(model=ModelSettings(arch="mistral"))
    assert ttt.learning_rate(mistral, plus=True, task="MBPP") == 2e-5
    assert ttt.learning_rate(mistral, plus=True, task="HumanEval") == 2e-5
    assert ttt.learning_rate(mistral, plus=False, task="MBPP") == 1e-5
    assert ttt.learning_rate(mistral, plus=True, task="GSM8K") == 1e-5
    assert ttt.learning_rate(FtttConfig(), plus=True, task="MBPP") == 1e-5


# ------------------------------------------------------------------ losses and gradients


def test_cached_loss_equals_a_full_forward(policy: Policy, trainer: ttt.Trainer, attempt: dict[str, Any]) -> None:
    restore(trainer, attempt["state"])
    trainer.model.eval()
    generation, prompt = attempt["generation"], attempt["prompt"]
    assert generation.cache.get_seq_length() == len(prompt) + len(generation.ids) - 1
    feedback = chat.followup_ids(policy.tokenizer, SHORT, INCORRECT, assistant_header=False)
    context = [*prompt, *generation.ids[:-1]]  # the feedback's end-of-turn takes the last token's slot
    cached = ttt.feedback_loss(trainer.model, ttt.clone_cache(generation.cache), feedback)
    full = ttt.full_forward_loss(trainer.model, context, feedback)
    assert abs(cached.item() - full.item()) < 1e-5
    # and what HF computes with labels=input_ids over the feedback alone
    hf = trainer.model(input_ids=torch.tensor([feedback]), past_key_values=ttt.clone_cache(generation.cache),
                       labels=torch.tensor([feedback])).loss
    assert abs(cached.item() - hf.item()) < 1e-5
    # FTTT+'s segment-normalised loss against a direct computation
    ids, split = ttt.plus_feedback_ids(policy.tokenizer, SHORT, "The sum of 2 and 2 is 4, not what was written.")
    plus = ttt.feedback_loss(trainer.model, ttt.clone_cache(generation.cache), ids, split=split, coeff=0.5)
    logits = trainer.model(input_ids=torch.tensor([[*context, *ids]])).logits[0, len(context):-1]
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    direct = losses[:split].mean() + 0.5 * losses[split:].mean()
    assert abs(plus.item() - direct.item()) < 1e-5
    assert abs(plus.item() - losses.mean().item()) > 1e-4  # the split matters


def test_plus_feedback_boundary(policy: Policy) -> None:
    tokenizer = policy.tokenizer
    reflection = "The sum was added wrongly."
    ids, split = ttt.plus_feedback_ids(tokenizer, SHORT, reflection)
    whole = chat.followup_text(tokenizer, SHORT, f"{INCORRECT} {reflection}", assistant_header=False)
    assert tokenizer.decode(ids) == whole  # the user turn "incorrect + space + reflection", closed
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[1:split + 1]).endswith(INCORRECT)  # losses[:L] predict exactly part A
    assert tokenizer.decode(ids[split + 1:]).startswith(f" {reflection}")


def test_gradients_reach_only_the_lora_weights(policy: Policy, trainer: ttt.Trainer, attempt: dict[str, Any]) -> None:
    trainer.reset(11)  # B = 0: A's gradient is zero at the first step, B's is not
    trainer.new_optimizer(1e-3)
    generation = attempt["generation"]
    feedback = chat.followup_ids(policy.tokenizer, SHORT, INCORRECT, assistant_header=False)
    model = trainer.model
    model.eval()
    with torch.enable_grad():
        ttt.feedback_loss(model, ttt.clone_cache(generation.cache), feedback).backward()
    named = dict(model.named_parameters())
    assert all(p.grad is None for n, p in named.items() if "lora_" not in n)
    a_grads = [p.grad for n, p in named.items() if "lora_A" in n]
    b_grads = [p.grad for n, p in named.items() if "lora_B" in n]
    assert len(a_grads) == len(b_grads) == 60
    assert all(g is not None and not g.any() for g in a_grads)
    assert all(g is not None and g.any() for g in b_grads)
    for module in ("q_proj", "v_proj"):
        assert all(p.grad.any() for n, p in named.items() if "lora_B" in n and module in n)
    assert trainer.optimizer is not None
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    with torch.enable_grad():
        ttt.feedback_loss(model, ttt.clone_cache(generation.cache), feedback).backward()
    assert all(p.grad is not None and p.grad.any() for n, p in named.items() if "lora_A" in n)
    trainer.optimizer.zero_grad()


def test_a_step_lowers_the_feedback_loss_and_repeated_steps_copy_the_cache(
        policy: Policy, trainer: ttt.Trainer, attempt: dict[str, Any]) -> None:
    # lr 1e-3 rather than the paper's 1e-5, whose one-step change is too small to assert on.
    generation = attempt["generation"]
    length = generation.cache.get_seq_length()
    feedback = chat.followup_ids(policy.tokenizer, SHORT, INCORRECT, assistant_header=False)
    trainer.settings = dataclasses.replace(trainer.settings, steps_per_failure=2, lora_dropout=0.05)
    try:
        trainer.reset(13)
        trainer.new_optimizer(1e-3)
        trainer.model.eval()
        before = ttt.feedback_loss(trainer.model, ttt.clone_cache(generation.cache), feedback).item()
        step = trainer.step(generation.cache, feedback)  # two steps, each on a copy of the cache
        trainer.model.eval()
        after = ttt.feedback_loss(trainer.model, ttt.clone_cache(generation.cache), feedback).item()
    finally:
        trainer.settings = dataclasses.replace(trainer.settings, steps_per_failure=1)
    assert generation.cache.get_seq_length() == length  # the attempt's cache did not grow
    assert len(step.losses) == 2 and step.losses[1] < step.losses[0]
    assert step.extra()["step_losses"] == step.losses
    assert after < before
    assert abs(step.losses[0] - before) < 0.05  # the first step's loss is the pre-step loss (dropout aside)


# ------------------------------------------------------------------ the methods end to end


def test_fttt_unanswered_attempts_count_only_under_strict(policy: Policy) -> None:
    """Four new tokens never reach "The final answer is": every verdict is None."""
    task = GSM8K()
    q = task.question(GSM8K_RECORD)
    ctx, records = make_context(policy, task, budget=1, max_new_tokens=4)
    result = method_function("fttt")(ctx, q)
    assert len(records) == 3  # 2 * budget + 1 generations (fttt.py L39), none counted, none trained
    assert all(r.verdict is None and not r.counted and r.counted_strict and r.reason == "no answer" for r in records)
    assert all(r.loss is None and not r.finished for r in records)
    assert (result.paper_num_trials, result.counted_attempts, result.generations) == (0, 0, 3)
    assert not result.success and result.final_verdict is None and result.extra["losses"] == []
    strict, strict_records = make_context(policy, task, budget=1, max_new_tokens=4, accounting="strict")
    result = method_function("fttt")(strict, q)
    assert len(strict_records) == 1 and result.answer_generations == 1  # every generation counts
    assert strict_records[0].text == records[0].text  # what the method does is the same
    assert (result.paper_num_trials, result.counted_attempts) == (0, 0)


def test_fttt_trains_per_failure_resets_bitwise_and_ignores_question_order(policy: Policy, trainer: ttt.Trainer) -> None:
    q1, q2 = question("a", SHORT), question("b", "Name a color.")
    ctx, records = make_context(policy, AlwaysWrong(), max_new_tokens=6)
    trainer.reset(42)
    initial = ttt.lora_state(trainer.model)
    run = method_function("fttt")
    first = {q.id: run(ctx, q) for q in (q1, q2)}
    forward = [r.as_record() for r in records]
    records.clear()
    second = {q.id: run(ctx, q) for q in (q2, q1)}
    backward = [r.as_record() for r in records]
    for qid in ("a", "b"):
        assert first[qid].paper_num_trials == 2 and not first[qid].success  # 32 at exhaustion, here the budget
        assert len(first[qid].extra["losses"]) == 2 and all(x > 0 for x in first[qid].extra["losses"])
        assert dataclasses.replace(first[qid], seconds=0) == dataclasses.replace(second[qid], seconds=0)
        mine = [{k: v for k, v in r.items() if k != "seconds" and k != "extra"} for r in forward if r["question_id"] == qid]
        theirs = [{k: v for k, v in r.items() if k != "seconds" and k != "extra"} for r in backward if r["question_id"] == qid]
        assert mine == theirs  # texts, verdicts and losses bitwise the same in either order
        assert [r["counted"] for r in mine] == [True, True] and all(r["loss"] is not None for r in mine)
        assert all(r["extra"]["feedback_tokens"] == 12 for r in forward)
    trained = ttt.lora_state(trainer.model)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if "lora_A" in k)  # steps were taken
    assert all(not trained[k].any() for k in trained if "lora_B" in k)  # disarmed after the question
    trainer.reset(42)
    reset = ttt.lora_state(trainer.model)
    assert all(torch.equal(reset[k], initial[k]) for k in initial)


def test_fttt_plus_reflects_and_trains(policy: Policy) -> None:
    ctx, records = make_context(policy, AlwaysWrong(), budget=1, method="fttt_plus", max_new_tokens=40)
    result = method_function("fttt_plus")(ctx, question("p", SHORT))
    attempts = [r for r in records if r.kind == "attempt"]
    reflections = [r for r in records if r.kind == "reflection"]
    assert [r.index for r in records] == list(range(len(records)))
    assert all(not r.counted and not r.counted_strict and not r.checked for r in reflections)
    # seed 42: the first attempt and its reflection both end with <|im_end|> (checked), so it trains
    first = attempts[0]
    assert first.finished and first.counted and first.loss is not None and records[1].kind == "reflection"
    assert records[1].finished and records[1].extra == {"attempt": 0}
    assert {"loss_incorrect", "loss_reflection", "feedback_tokens"} <= first.extra.keys()
    assert result.paper_num_trials == 1 and result.counted_attempts == 1
    assert result.generated_tokens == sum(r.new_tokens for r in records)  # reflection tokens included


def test_fttt_plus_truncated_attempts_are_free_under_the_paper(policy: Policy) -> None:
    ctx, records = make_context(policy, AlwaysWrong(), budget=1, method="fttt_plus", max_new_tokens=3)
    result = method_function("fttt_plus")(ctx, question("t", "Write a long story about a dragon."))
    assert len(records) == 3 and all(r.kind == "attempt" for r in records)  # no reflection, no training
    assert all(not r.finished and not r.counted and r.counted_strict and r.reason == "truncated" for r in records)
    assert all(r.loss is None for r in records) and result.paper_num_trials == 0
    ctx, records = make_context(policy, AlwaysWrong(), budget=1, method="fttt_plus", max_new_tokens=3,
                                accounting="strict")
    result = method_function("fttt_plus")(ctx, question("t", "Write a long story about a dragon."))
    assert len(records) == 1 and records[0].counted_strict and records[0].loss is None


def test_switches_mode_header_adapter_seed_and_lr(policy: Policy, trainer: ttt.Trainer, attempt: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No sampling here: generate hands back the stored attempt with a copy of its cache."""
    stored = attempt["generation"]
    seen: list[dict[str, Any]] = []

    def fake_generate(input_ids: list[int], **kwargs: Any) -> Any:
        model = kwargs["model"]
        seen.append({"training": model.training, "state": ttt.lora_state(model)})
        return dataclasses.replace(stored, cache=ttt.clone_cache(stored.cache))

    monkeypatch.setattr(policy, "generate", fake_generate)
    runs = {}
    for name, settings in {
        "paper": {},
        "switched": {"dropout_during_generation": False, "feedback_assistant_header": "always", "adapter_seed": 5,
                     "learning_rate": 3e-5},
    }.items():
        seen.clear()
        ctx, records = make_context(policy, AlwaysWrong(), budget=1, **settings)
        result = method_function("fttt")(ctx, question("s", SHORT))
        runs[name] = (records[0], result, [dict(s) for s in seen])
    paper, switched = runs["paper"], runs["switched"]
    assert paper[2][0]["training"] is True and switched[2][0]["training"] is False  # LoRA dropout while sampling
    assert paper[0].extra["feedback_tokens"] == 12
    with_header = chat.followup_ids(policy.tokenizer, SHORT, INCORRECT, assistant_header=True)
    assert switched[0].extra["feedback_tokens"] == len(with_header) > 12  # + the assistant header
    assert paper[1].extra["adapter_seed"] == 42 and switched[1].extra["adapter_seed"] == 5
    assert (paper[1].extra["learning_rate"], switched[1].extra["learning_rate"]) == (1e-5, 3e-5)
    trainer.reset(5)
    five = ttt.lora_state(trainer.model)
    assert all(torch.equal(five[k], switched[2][0]["state"][k]) for k in five)  # the adapter seed drew the adapter
    assert any(not torch.equal(five[k], paper[2][0]["state"][k]) for k in five)


def test_a_bf16_step_keeps_peft_dtypes() -> None:
    """bf16 base weights; PEFT keeps the LoRA weights in fp32 (its autocast_adapter_dtype)."""
    from scoreflow.models import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct", ".cache", dtype="bfloat16", device="cpu")
    trainer = ttt.Trainer(Policy(model, tokenizer, SamplingSettings(max_new_tokens=4)), TTTSettings())
    trainer.reset(42)
    trainer.new_optimizer(1e-3)
    context = chat.prompt_ids(tokenizer, SHORT) + chat.encode(tokenizer, "4")
    feedback = chat.followup_ids(tokenizer, SHORT, INCORRECT, assistant_header=False)
    with torch.no_grad():
        cache = trainer.model(input_ids=torch.tensor([context]), use_cache=True).past_key_values
    step = trainer.step(cache, feedback)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for p in trainer.parameters} == {torch.float32}
    assert torch.isfinite(torch.tensor(step.losses)).all() and step.losses[0] > 0
    assert any(p.any() for n, p in ttt.lora_state(trainer.model).items() if "lora_B" in n)
