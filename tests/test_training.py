"""Score-DPO: the TRL pin, the loss against stock TRL and against the formula, LoRA across epochs.

Model tests use a tiny Llama built in code (2 layers, hidden 64, the SmolLM2 tokenizer's
vocabulary, q_proj/v_proj present) saved once per session, so a whole training run costs
seconds on CPU. The tokenizer comes from the converted SmolLM2 folder in the git-ignored
``.cache/tests`` (built on first use, like tests/test_local_backend.py does).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import trl
from peft import get_peft_model_state_dict, load_peft_weights
from trl import DPOTrainer, SFTTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import FusedCausalLMOutput

from scoreflow import models
from scoreflow.config import Config, load_config
from scoreflow.jsonio import atomic_write_jsonl
from scoreflow.training import (
    SCORE_COLUMNS,
    TRL_VERSION,
    OptimizeStage,
    ScoreDPOTrainer,
    build_trainer,
    score_dpo_loss,
    train,
    trl_prompt,
)
from scoreflow.workspace import Workspace

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tests"
DATASET = "HumanEval"
TOL = 1e-6


# ------------------------------------------------------------------ the TRL pin (no model)


def _params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trl_is_the_pinned_release() -> None:
    assert trl.__version__ == TRL_VERSION == "1.16.0", (
        f"trl {trl.__version__} is installed but ScoreDPOTrainer overrides TRL {TRL_VERSION} internals; "
        "re-read trl/trainer/dpo_trainer.py against scoreflow/training.py before moving the pin"
    )


def test_trl_internals_score_dpo_relies_on_are_unchanged() -> None:
    """Each assertion names one TRL 1.16 internal that scoreflow/training.py depends on."""
    assert _params(DPOTrainer._compute_loss) == ["self", "model", "inputs", "return_outputs"]
    assert "self._compute_loss(model, inputs, return_outputs)" in inspect.getsource(DPOTrainer.compute_loss)
    assert _params(DPOTrainer.compute_ref_log_probs) == ["self", "model", "inputs"]
    ref_source = inspect.getsource(DPOTrainer.compute_ref_log_probs)
    assert 'adapter_name="ref" if "ref" in unwrapped_model.peft_config else None' in ref_source
    assert _params(DPOTrainer._set_signature_columns_if_needed) == ["self"]
    assert '"ref_chosen_logps"' in inspect.getsource(DPOTrainer._set_signature_columns_if_needed)
    precompute = inspect.getsource(DPOTrainer._precompute_ref_logps)
    assert "collate_fn=self.data_collator" in precompute
    assert "self.compute_ref_log_probs(model, padded_batch)" in precompute
    init = inspect.getsource(DPOTrainer.__init__)
    for assignment in ("self.beta =", "self.precompute_ref_logps =", "self._metrics =", "self.aux_loss_enabled =",
                       "self.router_aux_loss_coef =", "model = get_peft_model(model, peft_config"):
        assert assignment in init, assignment
    # Given a PeftModel (and no peft_config), TRL would train against a copy of that adapter:
    # the reason epoch i > 0 passes a peft_config and loads the weights afterwards.
    assert 'model.add_adapter("ref", default_config)' in init
    assert "processing_class(text=input)" in inspect.getsource(trl.data_utils._tokenize)  # special tokens on
    assert _params(DPOTrainer._prepare_dataset) == ["self", "dataset", "processing_class", "args", "dataset_name"]
    assert "self._prepare_dataset(train_dataset, processing_class, args" in init  # replaced by PromptIdsAsSampled
    assert "log_probs" in {f.name for f in dataclasses.fields(FusedCausalLMOutput)}


def test_trl_preference_collator_layout() -> None:
    fields = [f.name for f in dataclasses.fields(DataCollatorForPreference)]
    assert fields == ["pad_token_id", "max_length", "truncation_mode", "pad_to_multiple_of", "return_tensors"]
    out = DataCollatorForPreference(pad_token_id=0)([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}])
    assert sorted(out) == ["attention_mask", "completion_mask", "input_ids"]
    assert out["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 4, 5]]  # chosen rows first, then rejected
    assert out["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]


# ------------------------------------------------------------------ the formula (no model)


def test_score_dpo_loss_is_the_formula() -> None:
    r_w, r_l = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([-0.5, 0.4, 2.5])
    s_w, s_l = torch.tensor([1.0, 0.8, 0.6]), torch.tensor([0.0, 0.3, 0.5])
    losses, logits = score_dpo_loss(r_w, r_l, s_w, 1 - s_l, beta=0.1)
    for i in range(3):
        z = 0.1 * (s_w[i].item() * r_w[i].item() - (1 - s_l[i].item()) * r_l[i].item())
        assert logits[i].item() == pytest.approx(z, abs=1e-7)
        assert losses[i].item() == pytest.approx(math.log1p(math.exp(-z)), abs=1e-7)
    plain, _ = score_dpo_loss(r_w, r_l, torch.ones(3), torch.ones(3), beta=0.1)
    assert torch.equal(plain, -F.logsigmoid(0.1 * (r_w - r_l)))


# ------------------------------------------------------------------ fixtures




def chat_prompt(tokenizer: Any, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def make_pairs(tokenizer: Any, scores: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Records shaped like evaluate.py's preferences.jsonl (completions stop before </graph>)."""
    records = []
    for i, (s_w, s_l) in enumerate(scores):
        records.append({
            "problem_id": f"HumanEval/{i}",
            "prompt": chat_prompt(tokenizer, f"Write a workflow for problem {i}: add {i} and {i + 1}."),
            "chosen": "<graph>\nclass Workflow:\n    async def run_workflow(self):\n"
            f"        return await self.custom(input=self.problem, instruction='Solve step {i}.')\n",
            "rejected": "<graph>\nclass Workflow:\n    async def run_workflow(self):\n        return 0\n" + "#" * i,
            "chosen_score": s_w,
            "rejected_score": s_l,
            "chosen_sample": 0,
            "rejected_sample": 1,
        })
    return records


def tiny_config(model_dir: Path, tmp_path: Path, *overrides: str) -> Config:
    paths = [f"generator.model={model_dir}", f"cache_dir={CACHE}", f"workspace={tmp_path / 'ws'}"]
    return load_config(None, [*paths, *overrides])


def tiny_trainer(model_dir: Path, tmp_path: Path, records: list[dict[str, Any]], *overrides: str, **args: Any) -> Any:
    config = tiny_config(model_dir, tmp_path, *overrides)
    return build_trainer(config, records, str(tmp_path / "trainer"), disable_tqdm=True, **args)


def randomize_lora(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero LoRA weights, so the policy differs from the reference."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def loss_and_grads(trainer: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), lora_grads(model)


def by_hand_logps(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Summed completion log-probs from the plain logits (no TRL code involved)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=1)


def first_batch(trainer: Any, n: int) -> dict[str, Any]:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    a, b = a.double(), b.double()
    assert torch.allclose(a, b, atol=tol, rtol=0), f"max difference {(a - b).abs().max().item():.3g}"


# ------------------------------------------------------------------ data path


@pytest.mark.slow
def test_scores_survive_preparation_and_collation(tiny_dir: Path, tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    records = make_pairs(tokenizer, [(0.9, 0.2), (0.7, 0.4)])
    trainer = tiny_trainer(tiny_dir, tmp_path, records)
    kept = trainer._remove_unused_columns(trainer.train_dataset)
    assert set(kept.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids", *SCORE_COLUMNS}
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2  # batch size 1: one chosen row, one rejected row
    pair = next(r for r in records if r["chosen_score"] == pytest.approx(batch["chosen_score"].item()))
    assert batch["rejected_score"].item() == pytest.approx(pair["rejected_score"])

    row = trainer.train_dataset[0]
    generator_ids = tokenizer(records[0]["prompt"], add_special_tokens=False).input_ids
    assert row["prompt_ids"] == generator_ids  # exactly what the generator saw, no second BOS
    end = tokenizer("</graph>", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert row["chosen_ids"][-len(end):] == end and row["rejected_ids"][-len(end):] == end
    assert tokenizer.decode(row["chosen_ids"]).startswith("<graph>")


@pytest.mark.slow
def test_prompt_keeps_a_single_bos_with_a_bos_adding_tokenizer(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, add_bos_token=True)  # like Llama 3's tokenizer
    prompt = chat_prompt(tokenizer, "Hi")
    assert prompt.startswith(tokenizer.bos_token) and tokenizer("a").input_ids[0] == tokenizer.bos_token_id
    assert tokenizer(trl_prompt(prompt, tokenizer)).input_ids == tokenizer(prompt, add_special_tokens=False).input_ids
    plain = AutoTokenizer.from_pretrained(smollm2_dir)
    assert trl_prompt(prompt, plain) == prompt  # a tokenizer that adds nothing keeps the text as is


# ------------------------------------------------------------------ the loss against TRL and the formula


@pytest.mark.slow
def test_scores_one_and_zero_give_stock_trl_dpo_loss_and_gradients(
    tiny_dir: Path, tmp_path: Path, smollm2_dir: Path
) -> None:
    from transformers import AutoTokenizer

    records = make_pairs(AutoTokenizer.from_pretrained(smollm2_dir), [(1.0, 0.0), (1.0, 0.0)])
    score = tiny_trainer(tiny_dir, tmp_path, records, "training.lora.dropout=0.0")
    stock = tiny_trainer(tiny_dir, tmp_path, records, "training.lora.dropout=0.0", "training.loss=dpo")
    assert type(stock)._compute_loss is DPOTrainer._compute_loss and isinstance(score, ScoreDPOTrainer)  # stock loss
    randomize_lora(score.model)
    randomize_lora(stock.model)
    batch = first_batch(score, 2)
    stock_batch = {k: v for k, v in batch.items() if k not in SCORE_COLUMNS}

    loss, grads = loss_and_grads(score, batch)
    stock_loss, stock_grads = loss_and_grads(stock, stock_batch)
    assert loss.item() > 0.01  # the policy differs from the reference
    assert_close(loss, stock_loss)
    assert grads.keys() == stock_grads.keys() and len(grads) == 8  # A and B of q_proj, v_proj in 2 layers
    for name in grads:
        assert grads[name].abs().max() > 0, name
        assert_close(grads[name], stock_grads[name])


@pytest.mark.slow
def test_other_scores_give_the_formula_computed_by_hand(tiny_dir: Path, tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    scores = [(0.8, 0.3), (0.6, 0.5)]
    records = make_pairs(AutoTokenizer.from_pretrained(smollm2_dir), scores)
    trainer = tiny_trainer(tiny_dir, tmp_path, records, "training.lora.dropout=0.0")
    # The by-hand side runs in float64, so the only error left is TRL's fp32 LM-head kernel (~5e-7 here).
    trainer.model.double()
    randomize_lora(trainer.model)
    batch = first_batch(trainer, 2)
    loss, grads = loss_and_grads(trainer, batch)

    model = trainer.model
    model.zero_grad()
    policy_w, policy_l = by_hand_logps(model, batch).chunk(2)
    with torch.no_grad(), model.disable_adapter():
        ref_w, ref_l = by_hand_logps(model, batch).chunk(2)
    s_w, s_l = torch.tensor([s for s, _ in scores]).double(), torch.tensor([s for _, s in scores]).double()
    z = 0.1 * (s_w * (policy_w - ref_w) - (1 - s_l) * (policy_l - ref_l))
    expected = -F.logsigmoid(z).mean()
    expected.backward()
    assert_close(loss, expected.detach())
    for name, grad in lora_grads(model).items():
        assert_close(grads[name], grad)


@pytest.mark.slow
def test_precomputed_reference_log_probs_match_the_live_reference(
    tiny_dir: Path, tmp_path: Path, smollm2_dir: Path
) -> None:
    from transformers import AutoTokenizer

    records = make_pairs(AutoTokenizer.from_pretrained(smollm2_dir), [(0.9, 0.1), (0.6, 0.2)])
    live = tiny_trainer(tiny_dir, tmp_path, records)
    pre = tiny_trainer(tiny_dir, tmp_path, records, "training.precompute_ref_log_probs=true")
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(pre.train_dataset.column_names)
    batch, pre_batch = first_batch(live, 2), first_batch(pre, 2)
    assert {"ref_chosen_logps", "chosen_score"} <= set(pre_batch)
    with torch.no_grad():
        ref_w, ref_l = live.compute_ref_log_probs(live.model, batch)
    assert_close(pre_batch["ref_chosen_logps"], ref_w, 1e-4)
    assert_close(pre_batch["ref_rejected_logps"], ref_l, 1e-4)
    randomize_lora(live.model)
    randomize_lora(pre.model)
    assert_close(loss_and_grads(live, batch)[0], loss_and_grads(pre, pre_batch)[0], 1e-5)


# ------------------------------------------------------------------ training


@pytest.mark.slow
def test_training_lowers_the_loss_on_its_pairs(tiny_dir: Path, tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    records = make_pairs(AutoTokenizer.from_pretrained(smollm2_dir), [(0.9, 0.1), (0.8, 0.3)])
    trainer = tiny_trainer(tiny_dir, tmp_path, records, "training.learning_rate=0.01", "training.num_epochs=4")
    batch = first_batch(trainer, 2)

    def pair_loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item()

    before = pair_loss()
    result = train(trainer, len(records))
    after = pair_loss()
    assert result.steps == 8 and result.pairs == 2
    assert before == pytest.approx(math.log(2), abs=1e-6)  # a fresh LoRA (B = 0) is the reference
    assert after < before - 0.05, (before, after)
    assert result.final_loss < result.first_loss
    assert result.reward_accuracy is not None and result.reward_accuracy > 0.5
    assert result.peak_memory_kind == "process_max_rss" and result.peak_memory_bytes > 0


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_the_other_losses_train(loss: str, tiny_dir: Path, tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    records = make_pairs(tokenizer, [(0.9, 0.1)])
    trainer = tiny_trainer(tiny_dir, tmp_path, records, f"training.loss={loss}", "training.learning_rate=0.01")
    stock = {"dpo": DPOTrainer, "sft": SFTTrainer}[loss]  # TRL's loss; DPO on the Score-DPO tokens
    assert isinstance(trainer, stock) and type(trainer).compute_loss is stock.compute_loss
    assert getattr(type(trainer), "_compute_loss", None) is getattr(stock, "_compute_loss", None)
    if loss == "sft":
        row = trainer.train_dataset[0]
        prompt_len = len(tokenizer(records[0]["prompt"], add_special_tokens=False).input_ids)
        assert row["labels"] == [-100] * prompt_len + row["input_ids"][prompt_len:]  # loss on the workflow only
        assert row["input_ids"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(row["input_ids"][prompt_len:]).startswith("<graph>")
    result = train(trainer, len(records))
    assert result.steps == 1 and result.final_loss is not None and math.isfinite(result.final_loss)
    assert (result.reward_accuracy is None) == (loss == "sft")


# ------------------------------------------------------------------ LoRA across epochs


def evaluated_epoch(config: Config, epoch: int, records: list[dict[str, Any]]) -> Workspace:
    """An epoch folder whose evaluate stage is complete, as evaluate.py leaves it."""
    workspace = Workspace.from_config(config, DATASET, epoch)
    stage = workspace.start("evaluate", config)
    atomic_write_jsonl(stage.output_path("preferences.jsonl"), records)
    stage.finish(counts={"pairs": len(records)})
    return workspace


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_peft_weights(str(folder), device="cpu")


def trainer_weights(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_epochs_continue_the_adapter_against_the_base_model(tiny_dir: Path, tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_config(tiny_dir, tmp_path, "training.learning_rate=0.01")
    evaluated_epoch(config, 0, make_pairs(tokenizer, [(0.9, 0.1), (0.7, 0.2)]))
    records_1 = make_pairs(tokenizer, [(0.8, 0.0), (1.0, 0.5)])
    epoch_1 = evaluated_epoch(config, 1, records_1)

    manifest = OptimizeStage(config, DATASET, 0).run(disable_tqdm=True)
    assert manifest["status"] == "complete" and manifest["counts"] == {"pairs": 2, "steps": 2}
    assert manifest["training"]["init_adapter"] is None
    trained_1 = adapter_weights(epoch_1.path("adapter"))

    fresh = tiny_trainer(tiny_dir, tmp_path, records_1, "training.learning_rate=0.01")
    continued = build_trainer(config, records_1, str(tmp_path / "t"), init_adapter=epoch_1.path("adapter"))
    assert not same(trainer_weights(fresh), trained_1)
    assert same(trainer_weights(continued), trained_1)  # epoch 1 starts from epoch 1's adapter...
    assert all(p.requires_grad for n, p in continued.model.named_parameters() if "lora_" in n)  # ...trainable
    assert "ref" not in continued.model.peft_config  # and TRL made no frozen copy of it

    # The reference is the base model, not the adapter being continued.
    batch = first_batch(continued, 2)
    base, _ = models.load_causal_lm(str(tiny_dir), CACHE, dtype="float32", device="cpu")
    with torch.no_grad():
        ref = torch.cat(continued.compute_ref_log_probs(continued.model, batch))
        assert_close(ref, by_hand_logps(base, batch), 1e-4)
        policy = by_hand_logps(continued.model, batch)
    assert (policy - ref).abs().max() > 1e-3

    merging = dataclasses.replace(config, training=dataclasses.replace(config.training, merge_adapter=True))
    manifest = OptimizeStage(merging, DATASET, 1).run(disable_tqdm=True)
    assert manifest["training"]["init_adapter"] == str(epoch_1.path("adapter"))
    epoch_2 = Workspace.from_config(config, DATASET, 2)
    trained_2 = adapter_weights(epoch_2.path("adapter"))
    assert not same(trained_2, trained_1) and not same(trained_2, trainer_weights(fresh))
    assert Workspace.from_config(config, DATASET, 1).is_complete("optimize")  # untouched by epoch 1's run

    merged, _ = models.load_causal_lm(str(epoch_2.path("merged")), CACHE, dtype="float32", device="cpu")
    with_adapter, _ = models.load_causal_lm(
        str(tiny_dir), CACHE, dtype="float32", device="cpu", adapter=epoch_2.path("adapter")
    )
    with torch.no_grad():
        merged_logps = by_hand_logps(merged, batch)
        assert_close(merged_logps, by_hand_logps(with_adapter, batch), 1e-3)
        assert (merged_logps - by_hand_logps(base, batch)).abs().max() > 1e-3
