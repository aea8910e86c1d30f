"""Test-time training from verbal feedback: FTTT and FTTT+ (FTTT_SPEC 2.7, 2.8 and 6.2).

One PEFT LoRA (r 4, alpha 16, dropout 0.05 on q_proj/v_proj) is put on the policy's model
once per run and **reset explicitly** before every question: ``set_seed`` and then the
random draws the original's ``get_peft_model`` makes (PEFT builds ``lora_A`` and
``lora_B`` as ``nn.Linear`` layers on the CPU, whose default init draws both, and then
``reset_lora_parameters`` redraws A and zeroes B; layer by layer, in module order). So
the adapter a question starts from, and the random stream its sampling continues, are
those of the original's "set_seed, get_peft_model, generate" (fttt.py worker L286-300),
without re-injecting layers (which relied on PEFT 0.12's behaviour, SPEC 6.2).

Per counted failure the adapter takes ``steps_per_failure`` AdamW steps on the
likelihood of the verifier's feedback turn given the question and the failed attempt.
The attempt enters as ``generate``'s own cache (prompt + attempt minus its last sampled
token, computed without grad), so only the feedback tokens are forwarded; the feedback
begins with the end-of-turn token, which takes that last token's slot (SPEC 1.3).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import LoraLayer
from transformers.cache_utils import DynamicLayer

from fttt import chat
from fttt.attempts import Counter, QuestionResult
from fttt.config import FtttConfig, TTTSettings
from fttt.methods import INCORRECT, Context
from fttt.policy import Generation, Policy
from fttt.tasks import Question
from scoreflow.errors import ScoreFlowError

ADAPTER = "default"
# FTTT+'s reflection instruction (fttt.py L183-184, Llama version), in our words.
REFLECT = (
    "Your answer is incorrect. Check your solution and briefly summarize all of its mistakes. "
    "Do not give the corrected solution, and do not use the words \"my solution\"."
)
CODE_TASKS = ("MBPP", "HumanEval")


# ------------------------------------------------------------------ the adapter


def lora_config(settings: TTTSettings) -> LoraConfig:
    """The original's adapter (fttt.sh L69-71; target default utils.py L74-76)."""
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM",
    )


def lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
    """Every LoRA layer, in module order (the order PEFT injects and initialises them)."""
    return [module for module in model.modules() if isinstance(module, LoraLayer) and ADAPTER in module.lora_A]


def init_lora_(layers: list[LoraLayer]) -> None:
    """Redraw every layer's A and zero its B exactly as PEFT's adapter creation does.

    Per layer, on the CPU generator in fp32: ``nn.Linear(in, r)`` and ``nn.Linear(r, out)``
    draw Kaiming-uniform weights when built, then ``reset_lora_parameters`` draws A again
    (Kaiming-uniform, a = sqrt(5)) and sets B to zero. Drawing the two throw-away weights
    keeps the random stream where the original leaves it; the values are copied to the
    device afterwards, as PEFT moves the new layers there (so CUDA's stream is untouched).
    """
    with torch.no_grad():
        for layer in layers:
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            drawn = torch.empty(a.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5))  # nn.Linear(in, r)'s own init
            torch.nn.init.kaiming_uniform_(torch.empty(b.shape, dtype=torch.float32), a=math.sqrt(5))  # nn.Linear(r, out)
            torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5))  # reset_lora_parameters
            a.copy_(drawn)
            b.zero_()
            a.grad = b.grad = None


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every LoRA weight (tests compare states bitwise)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def learning_rate(config: FtttConfig, *, plus: bool, task: str) -> float:
    """1e-5 everywhere, except Mistral FTTT+ on the code tasks (fttt.sh L31-45)."""
    ttt = config.ttt
    if plus and config.model.arch == "mistral" and task in CODE_TASKS:
        return ttt.mistral_code_plus_learning_rate
    return ttt.learning_rate


# ------------------------------------------------------------------ losses


def token_losses(model: Any, cache: Any, ids: list[int]) -> torch.Tensor:
    """Per-token shifted cross-entropy of ``ids`` continued from ``cache`` (HF's
    ``labels=input_ids``: token i+1 predicted at position i, so len(ids) - 1 values).
    The forward extends ``cache`` in place (a DynamicCache appends)."""
    inputs = torch.tensor([ids], device=model.device)
    logits = model(input_ids=inputs, past_key_values=cache, use_cache=True).logits
    return _shifted(logits[0], inputs[0])


def _shifted(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    # fp32 cross-entropy, as HF's ForCausalLMLoss upcasts the logits.
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")


def combine(losses: torch.Tensor, split: int | None = None, coeff: float = 1.0) -> torch.Tensor:
    """FTTT: the mean over the feedback tokens. FTTT+ (``split`` = L): mean(losses[:L]) +
    coeff * mean(losses[L:]), each segment averaged on its own (fttt.py L229-254)."""
    if split is None:
        return losses.mean()
    head, tail = losses[:split], losses[split:]
    return head.mean() + coeff * tail.mean() if tail.numel() else head.mean()


def feedback_loss(model: Any, cache: Any, feedback_ids: list[int], *, split: int | None = None,
                  coeff: float = 1.0) -> torch.Tensor:
    """The training loss of one step: the feedback forwarded over the attempt's cache."""
    return combine(token_losses(model, cache, feedback_ids), split, coeff)


def full_forward_loss(model: Any, context_ids: list[int], feedback_ids: list[int], *, split: int | None = None,
                      coeff: float = 1.0) -> torch.Tensor:
    """The same loss from one forward over context + feedback with no cache (the
    reference for the cache trick; its gradient also flows through the context)."""
    inputs = torch.tensor([[*context_ids, *feedback_ids]], device=model.device)
    logits = model(input_ids=inputs, use_cache=False, logits_to_keep=len(feedback_ids)).logits
    return combine(_shifted(logits[0], inputs[0, len(context_ids):]), split, coeff)


def clone_cache(cache: Any) -> Any:
    """A copy a forward can extend without touching ``cache`` (a forward appends the
    feedback to the cache it is given). A DynamicCache's layers rebind their tensors with
    ``torch.cat`` and never write into them, so copying the layer objects is enough and
    costs no memory; any other cache is deep-copied."""
    layers = getattr(cache, "layers", None)
    if layers is not None and all(type(layer) is DynamicLayer for layer in layers):
        copied = copy.copy(cache)
        copied.layers = [copy.copy(layer) for layer in layers]
        return copied
    return copy.deepcopy(cache)


# ------------------------------------------------------------------ the trainer


@dataclass
class StepResult:
    """What the ``steps_per_failure`` steps on one failed attempt gave."""

    losses: list[float]  # the loss of each step, before its update
    feedback_tokens: int
    seconds: float
    parts: tuple[float, float] | None = None  # FTTT+: the two segment means of the first step

    def extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feedback_tokens": self.feedback_tokens, "step_seconds": round(self.seconds, 3)}
        if len(self.losses) > 1:
            out["step_losses"] = self.losses
        if self.parts is not None:
            out["loss_incorrect"], out["loss_reflection"] = self.parts
        return out


class Trainer:
    """The run's one LoRA on the policy's model: reset, sample, reflect, step."""

    def __init__(self, policy: Policy, settings: TTTSettings) -> None:
        self.policy = policy
        self.settings = settings
        self.model: PeftModel = get_peft_model(policy.model, lora_config(settings))
        self.layers = lora_layers(self.model)
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def for_policy(cls, policy: Policy, settings: TTTSettings) -> Trainer:
        """The trainer kept on the policy: ``get_peft_model`` runs once per loaded model."""
        trainer = getattr(policy, "fttt_trainer", None)
        if trainer is None:
            trainer = cls(policy, settings)
            policy.fttt_trainer = trainer  # type: ignore[attr-defined]
        elif _shape(trainer.settings) != _shape(settings):
            raise ScoreFlowError("ttt: the LoRA settings changed within one run (the adapter is built once)")
        trainer.settings = settings
        return trainer

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def reset(self, seed: int, *, sampling_seed: int | None = None) -> None:
        """``set_seed(seed)`` then the adapter's creation draws (see ``init_lora_``); with a
        separate ``sampling_seed`` (``ttt.adapter_seed`` set) the stream then restarts there."""
        transformers.set_seed(seed)
        init_lora_(self.layers)
        if sampling_seed is not None:
            transformers.set_seed(sampling_seed)
        self.optimizer = None

    def disarm(self) -> None:
        """B = 0: the adapter adds exactly nothing until the next reset (uses no randomness)."""
        with torch.no_grad():
            for layer in self.layers:
                layer.lora_B[ADAPTER].weight.zero_()

    def new_optimizer(self, lr: float) -> None:
        """A fresh AdamW (default betas/eps, weight decay 0, constant LR) per question (SPEC 2.7 item 2)."""
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, weight_decay=self.settings.weight_decay)

    def sample(self, prompt: list[int]) -> Generation:
        """One attempt from the prompt with its cache; train mode (LoRA dropout on) when
        ``dropout_during_generation``, as the original samples (SPEC 2.7 item 1, 5 item 14)."""
        self.model.train(self.settings.dropout_during_generation)
        return self.policy.generate(prompt, keep_cache=True, model=self.model)

    def reflect(self, context: list[int]) -> Generation:
        """FTTT+'s reflection: the base model (adapter disabled), one sample, fresh cache."""
        self.model.train(self.settings.dropout_during_generation)
        with self.model.disable_adapter():
            return self.policy.generate(context, model=self.model)

    def step(self, cache: Any, feedback_ids: list[int], *, split: int | None = None, coeff: float = 1.0) -> StepResult:
        """``steps_per_failure`` steps (fttt.py L97-109), in train mode as the original.
        With more than one, each step continues a copy of the attempt's cache, so every
        step sees the same context (the original's would grow); ``cache`` is left as is."""
        if self.optimizer is None:
            raise ScoreFlowError("ttt: step before new_optimizer")
        start, steps = time.perf_counter(), self.settings.steps_per_failure
        self.model.train()
        losses: list[float] = []
        parts: tuple[float, float] | None = None
        for _ in range(steps):
            context = clone_cache(cache) if steps > 1 else cache
            with torch.enable_grad():  # whatever the caller's grad mode (generation runs under no_grad)
                per_token = token_losses(self.model, context, feedback_ids)
                loss = combine(per_token, split, coeff)
                loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            losses.append(loss.item())
            if split is not None and parts is None:
                detached = per_token.detach()
                parts = (detached[:split].mean().item(), detached[split:].mean().item() if len(detached) > split else 0.0)
            del context
        return StepResult(losses, len(feedback_ids), time.perf_counter() - start, parts)


def _shape(settings: TTTSettings) -> tuple[Any, ...]:
    return settings.lora_r, settings.lora_alpha, settings.lora_dropout, tuple(settings.target_modules)


def plus_feedback_ids(tokenizer: Any, user_message: str, reflection: str) -> tuple[list[int], int]:
    """FTTT+'s training turn and L (fttt.py L127-131, L213-222): end-of-turn + user header
    + the "incorrect" sentence (part A), then " " + the reflection + the template's turn
    close. Part A is tokenized on its own so the boundary is exact; L counts its tokens
    after the leading end-of-turn, so losses[:L] are exactly the ones predicting them."""
    before, after = chat.followup_segments(tokenizer, user_message, INCORRECT, assistant_header=False)
    head = chat.encode(tokenizer, before)
    return [*head, *chat.encode(tokenizer, f" {reflection}{after}")], len(head) - 1


# ------------------------------------------------------------------ the methods


def run_fttt(ctx: Context, question: Question) -> QuestionResult:
    """FTTT (SPEC 2.7): sample from the prompt; a failure trains on the feedback turn."""
    return _Run(ctx, question, plus=False).run()


def run_fttt_plus(ctx: Context, question: Question) -> QuestionResult:
    """FTTT+ (SPEC 2.8): as FTTT, training on the feedback plus a self-reflection."""
    return _Run(ctx, question, plus=True).run()


class _Run:
    """One question of FTTT or FTTT+: the reset, a fresh optimiser, then the attempt loop."""

    def __init__(self, ctx: Context, question: Question, *, plus: bool) -> None:
        settings = ctx.config.ttt
        self.ctx, self.question, self.plus = ctx, question, plus
        self.trainer = Trainer.for_policy(ctx.policy, settings)
        # The question's seed is the run's (set_seed then get_peft_model, fttt.py worker L286-300),
        # unless ttt.adapter_seed fixes the adapter across seeds.
        self.seed = settings.adapter_seed if settings.adapter_seed is not None else ctx.seed
        self.trainer.reset(self.seed, sampling_seed=ctx.seed if settings.adapter_seed is not None else None)
        self.lr = learning_rate(ctx.config, plus=plus, task=ctx.task.name)
        self.trainer.new_optimizer(self.lr)
        self.counter: Counter = ctx.counter()
        self.prompt = ctx.prompt_ids(question)
        self.feedback = chat.followup_ids(ctx.policy.tokenizer, question.user_message, INCORRECT,
                                          assistant_header=settings.feedback_assistant_header == "always")
        self.losses: list[float] = []

    def run(self) -> QuestionResult:
        start, counter = time.perf_counter(), self.counter
        verdict: bool | None = None
        try:
            for _ in range(2 * self.ctx.budget + 1):  # at most 65 generations at budget 32 (fttt.py L39)
                if counter.exhausted:
                    break
                verdict = self.attempt()
                if verdict:
                    break
        finally:
            self.trainer.disarm()
        failures = counter.paper - counter.solved  # counted failures before success (SPEC 1.5)
        return counter.result(
            self.question, paper_num_trials=failures, final_verdict=verdict, seconds=time.perf_counter() - start,
            extra={"losses": self.losses, "learning_rate": self.lr, "adapter_seed": self.seed,
                   "lora_dtype": str(self.trainer.parameters[0].dtype).removeprefix("torch.")},
        )

    def attempt(self) -> bool | None:
        """One generation, its verdict and what it triggers; returns the verdict."""
        generation = self.trainer.sample(self.prompt)
        verdict = self.ctx.verdict(self.question, generation.text)
        if verdict is True:
            self.record(generation, verdict)
        elif verdict is None:  # no answer: free under the paper, never trained on (fttt.py L79-81)
            self.record(generation, verdict, counted=False, reason="no answer")
        elif self.plus:
            self.reflect_and_train(generation)
        else:
            step = self.trainer.step(generation.cache, self.feedback)
            self.record(generation, verdict, step=step)
        generation.cache = None  # the attempt's KV cache is not needed any more
        return verdict

    def reflect_and_train(self, generation: Generation) -> None:
        """FTTT+'s failed attempt (fttt.py L180-255): a truncated attempt or reflection is
        free under the paper and never trained on; otherwise train on feedback + reflection."""
        if not generation.finished:
            self.record(generation, False, counted=False, reason="truncated")
            return
        tokenizer, message = self.ctx.policy.tokenizer, self.question.user_message
        instruction = chat.followup_ids(tokenizer, message, REFLECT, assistant_header=True)
        reflection = self.trainer.reflect([*self.prompt, *generation.ids, *chat.continuation_after(generation.ids, instruction)])
        if not reflection.finished:
            index = self.record(generation, False, counted=False, reason="reflection truncated")
        else:
            text = tokenizer.decode(reflection.ids[:-1], skip_special_tokens=False)  # without its end-of-turn
            ids, split = plus_feedback_ids(tokenizer, message, text)
            step = self.trainer.step(generation.cache, ids, split=split, coeff=self.ctx.config.ttt.reflection_coeff)
            index = self.record(generation, False, step=step)
        self.ctx.attempt(self.question, self.counter, reflection, kind="reflection", check=False, counted=False,
                         counted_strict=False, reason="reflection", extra={"attempt": index})

    def record(self, generation: Generation, verdict: bool | None, *, counted: bool = True,
               reason: str | None = None, step: StepResult | None = None) -> int:
        """Record and count an answer (every answer counts under strict accounting), with
        the verdict already known and the loss of the step it triggered. Returns its index."""
        loss = step.losses[0] if step is not None else None
        if loss is not None:
            self.losses.append(loss)
        attempt = self.ctx.attempt(self.question, self.counter, generation, verdict=verdict, counted=counted,
                                   reason=reason, loss=loss, extra=step.extra() if step is not None else {})
        return attempt.index


__all__ = [
    "REFLECT", "StepResult", "Trainer", "combine", "feedback_loss", "full_forward_loss", "init_lora_",
    "learning_rate", "lora_config", "lora_layers", "lora_state", "plus_feedback_ids", "run_fttt", "run_fttt_plus",
    "token_losses",
]
