"""The optimize stage: Score-DPO fine-tuning of the generator's LoRA (SPEC section 7).

With r = log pi_theta(y|x) - log pi_ref(y|x) summed over the completion tokens,

    loss = -log sigmoid(beta * (f(s_w) * r_w - (1 - f(s_l)) * r_l))

``ScoreDPOTrainer`` is a small subclass of TRL 1.16's ``DPOTrainer`` (no fork). It relies
on these TRL internals, so TRL is pinned to ``TRL_VERSION`` and ``tests/test_training.py``
fails loudly when any of them changes:

* ``DPOTrainer.compute_loss`` delegates to ``_compute_loss(model, inputs, return_outputs)``,
  which this class replaces;
* ``DPOTrainer.compute_ref_log_probs(model, inputs)`` returns the reference log-probs of a
  padded batch (all adapters disabled when the PEFT model has no ``"ref"`` adapter);
  ``_precompute_ref_logps`` calls it on batches of ``self.data_collator``;
* ``_set_signature_columns_if_needed`` lists the dataset columns the Trainer keeps;
* ``DataCollatorForPreference`` puts the chosen rows first and the rejected rows second,
  with ``input_ids``, ``attention_mask``, ``completion_mask`` (and the precomputed
  ``ref_chosen_logps``/``ref_rejected_logps`` when present);
* the fused LM head TRL patches onto the model: ``model(..., labels=..., fused_lm_head=True)``
  returns per-token ``log_probs`` of the next token, zero where the label is -100;
* the attributes ``beta``, ``precompute_ref_logps``, ``_metrics``, ``aux_loss_enabled``,
  ``router_aux_loss_coef``;
* ``_prepare_dataset(dataset, processing_class, args, dataset_name)`` turns the text columns
  into ``prompt_ids``/``chosen_ids``/``rejected_ids`` (replaced by ``PromptIdsAsSampled``).

The reference is the base model with the LoRA disabled, also when epoch i > 0 continues
epoch i's adapter: the trainer always gets a ``peft_config`` (given a ``PeftModel``, TRL
would make the reference a frozen copy of that adapter instead) and the adapter's weights
are loaded into the fresh LoRA right after the trainer is built.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import trl
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftConfig, get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from transformers import PreTrainedTokenizerBase, Trainer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from scoreflow.config import Config, TrainingConfig
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_jsonl
from scoreflow.models import load_causal_lm
from scoreflow.sampling import adds_bos
from scoreflow.workspace import Workspace

TRL_VERSION = "1.16.0"  # ScoreDPOTrainer overrides internals of exactly this release
SCORE_COLUMNS = ("chosen_score", "rejected_score")
PAIR_FIELDS = ("prompt", "chosen", "rejected", *SCORE_COLUMNS)
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *SCORE_COLUMNS})

SCORE_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda s: s,  # the paper's f
}


def check_trl_version() -> None:
    """Refuse to run on a TRL whose internals this module was not written against."""
    if trl.__version__ != TRL_VERSION:
        raise ScoreFlowError(
            f"ScoreDPOTrainer needs trl=={TRL_VERSION} (it overrides TRL internals); found trl {trl.__version__}"
        )


# ------------------------------------------------------------------ the loss


def score_dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_weights: torch.Tensor,
    rejected_weights: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses and their sigmoid arguments; weights 1 and 1 give sigmoid DPO bit for bit."""
    logits = beta * (chosen_weights * chosen_logratios - rejected_weights * rejected_logratios)
    return -F.logsigmoid(logits), logits


def score_weights(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(s_w) and 1 - f(s_l)."""
    return transform(chosen_scores), 1 - transform(rejected_scores)


@dataclass
class ScorePreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator plus the pair scores as float tensors (TRL's drops unknown keys)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        for key in SCORE_COLUMNS:
            if key in examples[0]:
                batch[key] = torch.tensor([float(e[key]) for e in examples], dtype=torch.float32)
        return batch


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the model's forward takes (TRL forwards every key that is not one of its own)."""
    return {k: v for k, v in batch.items() if k not in _NON_MODEL_KEYS}


class PromptIdsAsSampled:
    """Tokenize prompt and completions apart, as the original's trainer does.

    TRL 1.16 tokenizes prompt + completion jointly and splits where they diverge; the
    original's raw prompt ends with a space ("...: ") that merges with the completion's
    first token, so TRL would train on a context without the prompt's last token. Here
    the prompt's ids are exactly the sampler's (the stored text holds its special tokens,
    BOS included: one BOS) and each completion is tokenized alone, plus EOS."""

    def _prepare_dataset(self, dataset: Dataset, processing_class: PreTrainedTokenizerBase, args: DPOConfig,
                         dataset_name: str) -> Dataset:
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        eos = tokenizer.eos_token_id

        def tokenize(example: dict[str, Any]) -> dict[str, Any]:
            ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            return {"prompt_ids": ids(example["prompt"]), "chosen_ids": ids(example["chosen"]) + [eos],
                    "rejected_ids": ids(example["rejected"]) + [eos]}

        dataset = dataset.map(tokenize, desc=f"Tokenizing {dataset_name} dataset")
        if args.max_length is not None and args.truncation_mode == "keep_start":  # as TRL: no fully cut pairs
            dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
        return dataset


class DPOTrainerAsSampled(PromptIdsAsSampled, DPOTrainer):
    """Stock TRL DPO (the paper's ablation) on the same tokens as Score-DPO."""


class ScoreDPOTrainer(PromptIdsAsSampled, DPOTrainer):
    """TRL's DPOTrainer with the Score-DPO loss; data tokenized as sampled (``PromptIdsAsSampled``);
    everything else (reference, logging) is TRL's."""

    def __init__(
        self,
        model: Any,
        *,
        args: DPOConfig,
        train_dataset: Dataset,
        processing_class: PreTrainedTokenizerBase,
        score_transform: str = "identity",
        **kwargs: Any,
    ) -> None:
        check_trl_version()
        _check_supported(args)
        missing = [c for c in SCORE_COLUMNS if c not in train_dataset.column_names]
        if missing:
            raise ValueError(f"Score-DPO needs the dataset columns {SCORE_COLUMNS}; missing {missing}")
        self.score_transform = SCORE_TRANSFORMS[score_transform]
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = _score_collator(args, processing_class)
        super().__init__(model, args=args, train_dataset=train_dataset, processing_class=processing_class, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the score columns when the Trainer drops the columns the model does not take."""
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *SCORE_COLUMNS]

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """TRL's reference pass, without the score tensors (which are no model input)."""
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in SCORE_COLUMNS})

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False) -> Any:
        """The Score-DPO loss in place of TRL's loss switch; the same two forwards, so the same cost."""
        mode = "train" if self.model.training else "eval"
        outputs, chosen_logps, rejected_logps = self._policy_logps(model, inputs)
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        weights = score_weights(inputs["chosen_score"], inputs["rejected_score"], self.score_transform)
        losses, logits = score_dpo_loss(chosen_logratios, rejected_logratios, *weights, self.beta)
        loss = losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_pairs(mode, inputs, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios, logits)
        return (loss, outputs) if return_outputs else loss

    def _policy_logps(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Summed completion log-probs of the chosen and rejected rows, through TRL's fused LM head."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        kwargs = {**_model_inputs(inputs), "use_cache": False}
        if self.aux_loss_enabled:
            kwargs["output_router_logits"] = True
        outputs = model(**kwargs, labels=labels, fused_lm_head=True)
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)
        chosen, rejected = logps.chunk(2, dim=0)
        return outputs, chosen, rejected

    def _reference_logps(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Precomputed ones from the batch, else TRL's pass with the adapter disabled (the base model)."""
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        return self.compute_ref_log_probs(self.ref_model or self.model, inputs)

    def _log_pairs(
        self,
        mode: str,
        inputs: dict[str, Any],
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        chosen_logratios: torch.Tensor,
        rejected_logratios: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """TRL's reward metrics plus the score-weighted margin, gathered in one call."""
        chosen_rewards, rejected_rewards = self.beta * chosen_logratios, self.beta * rejected_logratios
        metrics = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/score_weighted_margins": logits,  # beta * (f(s_w) r_w - (1 - f(s_l)) r_l)
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            "scores/chosen": inputs["chosen_score"],
            "scores/rejected": inputs["rejected_score"],
        }
        table = torch.stack([v.detach().float().to(logits.device) for v in metrics.values()], dim=1)
        means = self.accelerator.gather(table).mean(dim=0).tolist()
        for key, value in zip(metrics, means, strict=True):
            self._metrics[mode][key].append(value)


def _check_supported(args: DPOConfig) -> None:
    """TRL options that change the loss or the log-probs, which Score-DPO does not implement."""
    unsupported = {
        "loss_type": args.loss_type != ["sigmoid"],
        "ld_alpha": args.ld_alpha is not None,
        "use_weighting": args.use_weighting,
        "f_divergence_type": args.f_divergence_type != "reverse_kl",
        "label_smoothing": args.label_smoothing != 0.0,
    }
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise ValueError(f"ScoreDPOTrainer does not support the DPOConfig options {bad}")


def _score_collator(args: DPOConfig, tokenizer: PreTrainedTokenizerBase) -> ScorePreferenceCollator:
    """The collator TRL would build, with the scores kept."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ScorePreferenceCollator(
        pad_token_id=tokenizer.pad_token_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )


# ------------------------------------------------------------------ preference data


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """The preference records of an epoch; an empty or malformed file is a user error."""
    if not path.is_file():
        raise ScoreFlowError(f"{path}: the preference file is missing")
    records = read_jsonl(path)
    if not records:
        raise ScoreFlowError(f"{path}: no preference pairs (no problem had workflows with different scores)")
    for number, record in enumerate(records, start=1):
        _check_pair(record, f"{path}:{number}")
    return records


def _check_pair(record: dict[str, Any], where: str) -> None:
    missing = [k for k in PAIR_FIELDS if k not in record]
    if missing:
        raise ScoreFlowError(f"{where}: preference record lacks {', '.join(missing)}")
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(record[key], str) or not record[key]:
            raise ScoreFlowError(f"{where}: {key} must be a non-empty string")
    for key in SCORE_COLUMNS:
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ScoreFlowError(f"{where}: {key} must be a number in [0, 1], not {value!r}")


def completion_text(sample: str, stop: str) -> str:
    """The generator's text plus the stop string it halted on: what the policy should learn to write."""
    return sample if sample.endswith(stop) else sample + stop


def trl_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt text that TRL (which tokenizes with special tokens) turns into exactly the generator's tokens.

    ``prompt`` holds its special tokens (chat-templated, or raw after the BOS), so it may start with the BOS text; a tokenizer
    that adds a BOS itself would double it. Dropping the text lets the tokenizer put it back.
    """
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and adds_bos(tokenizer):
        return prompt[len(bos) :]
    return prompt


def pair_dataset(records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, stop: str) -> Dataset:
    """Score-DPO rows: TRL's prompt/chosen/rejected text columns plus the two scores."""
    rows = [
        {
            "prompt": r["prompt"],  # tokenized as stored, special tokens included (PromptIdsAsSampled)
            "chosen": completion_text(r["chosen"], stop),
            "rejected": completion_text(r["rejected"], stop),
            "chosen_score": float(r["chosen_score"]),
            "rejected_score": float(r["rejected_score"]),
        }
        for r in records
    ]
    return Dataset.from_list(rows)


def sft_dataset(records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, stop: str) -> Dataset:
    """SFT rows (the paper's ablation): the prompt and the chosen workflow only."""
    rows = [{"prompt": trl_prompt(r["prompt"], tokenizer), "completion": completion_text(r["chosen"], stop)}
            for r in records]
    return Dataset.from_list(rows)


# ------------------------------------------------------------------ trainers


def process_state() -> PartialState:
    """Accelerate's process state; without a GPU it must be told so to see a multi-process CPU launch."""
    return PartialState(cpu=not torch.cuda.is_available())


def use_bf16(training: TrainingConfig) -> bool:
    """bf16 on GPU and fp32 on CPU unless the config says otherwise."""
    return torch.cuda.is_available() if training.bf16 is None else training.bf16


def _common_args(training: TrainingConfig, output_dir: str) -> dict[str, Any]:
    """The Trainer arguments every loss shares; everything numeric comes from the config."""
    return {
        "output_dir": output_dir,
        "learning_rate": training.learning_rate,
        "per_device_train_batch_size": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "num_train_epochs": training.num_epochs,
        "max_length": training.max_length,
        "bf16": use_bf16(training),
        "seed": training.seed,
        "gradient_checkpointing": training.gradient_checkpointing,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": not process_state().is_main_process,
    }


def dpo_args(training: TrainingConfig, output_dir: str, **overrides: Any) -> DPOConfig:
    """Arguments of the Score-DPO and DPO trainers (TRL's sigmoid loss type, no truncation by default)."""
    values = {
        **_common_args(training, output_dir),
        "beta": training.beta,
        "loss_type": ["sigmoid"],
        "disable_dropout": True,  # TRL's default, and the original's: policy and reference forwards match
        "precompute_ref_log_probs": training.precompute_ref_log_probs,
    }
    return DPOConfig(**{**values, **overrides})


def sft_args(training: TrainingConfig, output_dir: str, **overrides: Any) -> SFTConfig:
    """Arguments of the SFT ablation: loss on the completion tokens only."""
    values = {**_common_args(training, output_dir), "completion_only_loss": True, "packing": False}
    return SFTConfig(**{**values, **overrides})


def lora_config(training: TrainingConfig) -> LoraConfig:
    lora = training.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def adapter_lora_config(adapter: Path) -> LoraConfig:
    """The LoRA settings of a saved adapter, made trainable (saved configs say inference mode)."""
    if not (adapter / "adapter_config.json").is_file():
        raise ScoreFlowError(f"{adapter}: no adapter_config.json; the previous epoch's adapter is incomplete")
    saved = PeftConfig.from_pretrained(str(adapter))
    if not isinstance(saved, LoraConfig):
        raise ScoreFlowError(f"{adapter}: expected a LoRA adapter, found {type(saved).__name__}")
    saved.inference_mode = False
    return saved


def lora_summary(trainer: Trainer) -> dict[str, Any]:
    """The LoRA settings actually trained (a continued adapter keeps its own)."""
    lora = trainer.accelerator.unwrap_model(trainer.model).peft_config["default"]
    modules = sorted(lora.target_modules)
    return {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout, "target_modules": modules}


def load_adapter_weights(model: Any, adapter: Path) -> None:
    """Put a saved adapter's weights into the model's (same-shaped) trainable LoRA, checking every one landed."""
    weights = load_peft_weights(str(adapter), device="cpu")
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise ScoreFlowError(f"{adapter}: weights that match no LoRA layer: {result.unexpected_keys[:3]}")
    loaded = get_peft_model_state_dict(model)
    for key, value in weights.items():
        if key not in loaded or not torch.equal(loaded[key].cpu().to(value.dtype), value):
            raise ScoreFlowError(f"{adapter}: adapter weight {key} did not load")


def build_trainer(
    config: Config,
    records: Sequence[dict[str, Any]],
    output_dir: str,
    *,
    init_adapter: Path | None = None,
    loaded: tuple[Any, PreTrainedTokenizerBase] | None = None,
    **arg_overrides: Any,
) -> Trainer:
    """The trainer of ``config.training.loss``, its LoRA fresh or continued from ``init_adapter``.

    ``loaded``: a (model, tokenizer) already in memory instead of ``generator.model``
    (``perf/gpu_check.py`` trains a random 8B-shaped model that exists nowhere on disk)."""
    check_trl_version()
    training = config.training
    model, tokenizer = loaded or load_causal_lm(
        config.generator.model,
        config.cache_dir,
        dtype="bfloat16" if use_bf16(training) else "float32",
        device=str(process_state().device),
    )
    peft_config = adapter_lora_config(init_adapter) if init_adapter else lora_config(training)
    stop = config.generation.stop[0]
    if training.loss == "sft":
        trainer: Trainer = SFTTrainer(
            model,
            args=sft_args(training, output_dir, **arg_overrides),
            train_dataset=sft_dataset(records, tokenizer, stop),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    elif training.loss == "dpo":
        trainer = DPOTrainerAsSampled(
            model,
            args=dpo_args(training, output_dir, **arg_overrides),
            train_dataset=pair_dataset(records, tokenizer, stop).remove_columns(list(SCORE_COLUMNS)),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    else:
        trainer = ScoreDPOTrainer(
            model,
            args=dpo_args(training, output_dir, **arg_overrides),
            train_dataset=pair_dataset(records, tokenizer, stop),
            processing_class=tokenizer,
            peft_config=peft_config,
            score_transform=training.score_transform,
        )
    if init_adapter:
        load_adapter_weights(trainer.model, init_adapter)
    return trainer


# ------------------------------------------------------------------ training and saving


@dataclass(frozen=True)
class TrainResult:
    """What the optimize manifest records about a training run."""

    pairs: int
    steps: int
    final_loss: float | None  # the last logged step
    mean_loss: float | None  # over the whole run
    first_loss: float | None
    reward_accuracy: float | None  # run mean of rewards/accuracies (None for SFT)
    train_time_s: float
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" or "process_max_rss"


def train(trainer: Trainer, pairs: int) -> TrainResult:
    """Run the trainer and summarise its log history."""
    device = trainer.args.device
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    output = trainer.train()
    elapsed = time.perf_counter() - start
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    return TrainResult(
        pairs=pairs,
        steps=trainer.state.global_step,
        final_loss=losses[-1] if losses else None,
        mean_loss=_finite(output.training_loss),
        first_loss=losses[0] if losses else None,
        reward_accuracy=sum(accuracies) / len(accuracies) if accuracies else None,
        train_time_s=round(elapsed, 3),
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if on_cuda else _max_rss_bytes(),
        peak_memory_kind="cuda_max_allocated" if on_cuda else "process_max_rss",
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def save_adapter(trainer: Trainer, target: Path) -> None:
    """Write the trained adapter (main process only), replacing ``target`` in one rename."""
    if not trainer.accelerator.is_main_process:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    with _staging(target) as tmp:
        model.save_pretrained(tmp)


def save_merged(trainer: Trainer, target: Path) -> None:
    """A full model copy with the adapter merged in, for servers that cannot load an adapter."""
    if not trainer.accelerator.is_main_process:
        return
    merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    with _staging(target) as tmp:
        merged.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary sibling folder that becomes ``target`` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        _share(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _share(folder: Path) -> None:
    """Usual permissions: mkdtemp (and safetensors) make private files, which other users could not serve."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


# ------------------------------------------------------------------ the stage


class OptimizeStage:
    """``optimize.py --epoch i``: train on epoch i's pairs and write epoch i+1's adapter.

    Under ``accelerate launch`` with several processes every process trains (data
    parallel) and only the main one writes the manifest, the adapter and the merged copy.
    """

    def __init__(self, config: Config, dataset: str, epoch: int) -> None:
        self.config = config
        self.source = Workspace.from_config(config, dataset, epoch)
        self.target = Workspace.from_config(config, dataset, epoch + 1)
        self.state = process_state()

    def run(self, *, force: bool = False, **arg_overrides: Any) -> dict[str, Any] | None:
        """Train and record; the manifest on the main process, None on the others."""
        check_trl_version()
        records, init_adapter = self._inputs(force)
        stage = self.target.start("optimize", self.config, force=force) if self.state.is_main_process else None
        self.state.wait_for_everyone()
        with tempfile.TemporaryDirectory(prefix="scoreflow-optimize-") as work:
            trainer = build_trainer(self.config, records, work, init_adapter=init_adapter, **arg_overrides)
            lora = lora_summary(trainer)
            result = train(trainer, len(records))
            save_adapter(trainer, self.target.path("adapter"))
            if self.config.training.merge_adapter:
                save_merged(trainer, self.target.path("merged"))
        self.state.wait_for_everyone()
        if stage is None:
            return None
        return stage.finish(
            counts={"pairs": result.pairs, "steps": result.steps},
            training={
                **asdict(result),
                "loss": self.config.training.loss,
                "from_epoch": self.source.epoch,
                "init_adapter": str(init_adapter) if init_adapter else None,
                "lora": lora,
                "adapter": str(self.target.path("adapter")),
                "processes": self.state.num_processes,
                "device": str(self.state.device),
                "bf16": use_bf16(self.config.training),
                "merged": self.config.training.merge_adapter,
            },
        )

    def _inputs(self, force: bool) -> tuple[list[dict[str, Any]], Path | None]:
        """Check everything a run needs before any model is loaded (every process, same verdict)."""
        self.source.require("evaluate")
        init_adapter = None
        if self.source.epoch > 0:
            self.source.require("optimize")  # epoch i's adapter, written by optimize --epoch i-1
            init_adapter = self.source.path("adapter")
        if self.target.is_complete("optimize") and not force:
            raise ScoreFlowError(
                f"{self.target.dataset} epoch {self.target.epoch}: the adapter is already trained "
                f"({self.target.path('adapter')}); pass --force to retrain it"
            )
        return load_pairs(self.source.path("preferences.jsonl")), init_adapter


def summary_line(manifest: dict[str, Any]) -> str:
    """One line for the terminal: pairs, steps, loss, reward accuracy, time."""
    t = manifest["training"]

    def num(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return (
        f"{manifest['dataset']} epoch {t['from_epoch']} -> {manifest['epoch']}: {t['loss']} on "
        f"{t['pairs']} pairs, {t['steps']} steps, final loss {num(t['final_loss'], '.4f')} "
        f"(mean {num(t['mean_loss'], '.4f')}), reward accuracy {num(t['reward_accuracy'], '.3f')}, "
        f"{t['train_time_s']:.1f} s, peak memory {t['peak_memory_bytes'] / 2**30:.2f} GiB; adapter {t['adapter']}"
    )
