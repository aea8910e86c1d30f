"""GPU check: Score-DPO step time, peak memory and sampling throughput of a Llama-3.1-8B-shaped generator.

Why: the paper trains Llama-3.1-8B-Instruct's LoRA with Score-DPO and samples k workflows per
problem with it. These figures say what one optimize step and one generate call cost on the GPU
at hand, before any weights are downloaded: the model is randomly initialised (time and memory
depend on its shape, not its values) and the tokenizer is built in code, so nothing is fetched.

Measured, one ``name: value`` line each (printed as soon as known):

* ``build_s``: building the bf16 model directly on the device (torch's and transformers'
  default init run there, no CPU init); ``model_params_b``: its size in billions.
* ``score_dpo_step_s`` / ``score_dpo_peak_gib``: one Score-DPO step at batch 1 on pairs of about
  1,000 tokens (prompt + completion), LoRA from the ``training.lora`` defaults, the project's
  ``ScoreDPOTrainer`` with ``dpo_args``; a step is what ``Trainer.train`` does per batch
  (``perf/train_bench.timed_step``). Median of the timed steps after the warm-up ones; the peak
  is ``torch.cuda.max_memory_allocated`` over the steps (weights included).
* ``score_dpo_precomputed_*``: the same with ``training.precompute_ref_log_probs``; its
  ``trainer_build_s`` includes TRL's hash of the model and the reference pass over the pairs.
* ``sampler_tokens_per_s_k8``: completion tokens per second of ``TransformersSampler`` (given the
  in-memory model with a fresh LoRA attached, as ``PeftModel``) drawing k = 8 samples of one
  ~1,000-token prompt at the configured temperature/top-p, after a short warm-up call.

* ``fttt_*``: one FTTT test-time-training step (``fttt.ttt.Trainer``: the LoRA r 4 on q/v, AdamW)
  after a ``fttt_attempt_tokens`` = 2,048-token attempt, bf16. ``fttt_step_cached_s`` forwards only
  the 12 feedback tokens over the attempt's KV cache (what FTTT does; the cache comes from a
  no-grad prefill standing in for ``generate``'s, timed as ``fttt_prefill_s``), so without the
  cache one step costs ``fttt_prefill_s + fttt_step_cached_s``; ``fttt_step_full_s`` is a full
  forward/backward over prompt + attempt + feedback (gradient through every position).
  ``fttt_plus_step_cached_s`` is FTTT+'s step on the feedback plus a 512-token reflection.
  Peaks are per variant; ``fttt_loss_abs_diff`` checks the cached loss against the full one.
  The section has its own deadline (``--fttt-budget-s``).

``--tiny`` runs the same code on a 2-layer Llama (hidden 64) with ~64-token pairs; on CPU
(``--device cpu``, fp32) peak memory is the process's max RSS. The run stops timing steps
early rather than pass ``--budget-s`` (it must finish well inside 8 minutes).

Usage: python perf/gpu_check.py [--tiny] [--device cpu|cuda] [--budget-s 420] [--fttt-budget-s 75]
                            [--sections score_dpo,sampler,fttt]
"""

from __future__ import annotations

import time

START = time.perf_counter()  # total_s includes the imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import string  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SECTIONS = ("score_dpo", "sampler", "fttt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer Llama and short pairs (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda (with --tiny: cuda if present, else cpu)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop timing steps early past this")
    parser.add_argument("--fttt-budget-s", type=float, default=75.0,
                        help="the FTTT section's own deadline, from its start (it stops timing steps past it)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    return parser.parse_args(argv)


def hide_gpus_for_cpu_runs(argv: list[str]) -> None:
    """``--device cpu`` hides the GPUs before torch loads, so every ``torch.cuda.is_available()`` agrees."""
    if parse_args(argv).device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


if __name__ == "__main__":
    hide_gpus_for_cpu_runs(sys.argv[1:])

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from peft import get_peft_model  # noqa: E402
from tokenizers import Tokenizer, decoders, pre_tokenizers  # noqa: E402
from tokenizers import models as tokenizer_models  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast  # noqa: E402

from fttt import ttt  # noqa: E402
from fttt.config import SamplingSettings, TTTSettings  # noqa: E402
from fttt.policy import Policy  # noqa: E402
from perf.train_bench import batches, timed_step  # noqa: E402
from scoreflow.config import Config, load_config  # noqa: E402
from scoreflow.sampling import SampleRequest, TransformersSampler  # noqa: E402
from scoreflow.training import ScoreDPOTrainer, build_trainer, lora_config, use_bf16  # noqa: E402

SAMPLES = 8  # k: samples of one prompt per sampler call
VARIANTS = {  # name -> config overrides
    "score_dpo": [],
    "score_dpo_precomputed": ["training.precompute_ref_log_probs=true"],
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model's shape and the workload's sizes."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    prompt_words: int  # prompt + <graph> + chosen words + </graph> + EOS: the pair's length in tokens
    chosen_words: int
    rejected_words: int
    warmup_steps: int
    timed_steps: int
    new_tokens: int  # per sample in the timed sampler call
    warmup_new_tokens: int
    fttt_prompt_tokens: int = 256  # FTTT: the question's prompt
    fttt_attempt_tokens: int = 2048  # the failed attempt the step continues from
    fttt_reflection_tokens: int = 512  # FTTT+: the reflection inside the training turn
    fttt_timed_steps: int = 3


LLAMA_8B = Shape("llama-3.1-8b", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256,
                 prompt_words=747, chosen_words=250, rejected_words=200, warmup_steps=2, timed_steps=5,
                 new_tokens=256, warmup_new_tokens=16)
TINY = Shape("tiny", layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=4096,
             prompt_words=41, chosen_words=20, rejected_words=14, warmup_steps=1, timed_steps=3,
             new_tokens=16, warmup_new_tokens=4, fttt_prompt_tokens=16, fttt_attempt_tokens=64,
             fttt_reflection_tokens=16)

# ------------------------------------------------------------------ tokenizer, model, pairs

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
GRAPH_TAGS = ("<graph>", "</graph>")  # whole tokens, so the stop string is one id
PIECES = tuple(string.ascii_lowercase + string.digits)
FIRST_WORD_ID = len(SPECIAL_TOKENS) + len(GRAPH_TAGS) + 2 * len(PIECES)


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-piece tokenizer built in code with exactly ``vocab_size`` ids, so every id the model emits decodes.

    Letters and digits are pieces, so lowercase text round-trips (transformers' stop-string
    matcher needs that); every id from ``FIRST_WORD_ID`` on is the whole word ``w<id>``, so
    text made of such words is a chosen sequence of token ids.
    """
    names = [*SPECIAL_TOKENS, *GRAPH_TAGS, *PIECES, *(f"##{p}" for p in PIECES)]
    names += [f"w{i}" for i in range(len(names), vocab_size)]
    backend = Tokenizer(tokenizer_models.WordPiece({name: i for i, name in enumerate(names)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>", padding_side="left")
    tokenizer.add_tokens(list(GRAPH_TAGS))  # matched before whitespace splitting, as real tokenizers do
    return tokenizer


def llama_config(shape: Shape, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """Llama-3.1-8B's architecture at ``shape``'s sizes."""
    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def build_model(config: LlamaConfig, device: torch.device, dtype: torch.dtype) -> tuple[PreTrainedModel, float]:
    """A randomly initialised model created on ``device`` in ``dtype`` (init runs there), and the seconds it took."""
    torch.manual_seed(0)
    start = time.perf_counter()
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    synchronize(device)
    return model, time.perf_counter() - start


def random_words(rng: random.Random, vocab_size: int, count: int) -> str:
    """``count`` whole-word tokens drawn uniformly from the word ids."""
    return " ".join(f"w{rng.randrange(FIRST_WORD_ID, vocab_size)}" for _ in range(count))


def preference_records(shape: Shape, count: int) -> list[dict[str, Any]]:
    """Pairs shaped like preferences.jsonl: ``<graph>`` completions (the trainer appends ``</graph>``)."""
    rng = random.Random(0)
    return [
        {
            "prompt": random_words(rng, shape.vocab, shape.prompt_words),
            "chosen": f" <graph> {random_words(rng, shape.vocab, shape.chosen_words)} ",
            "rejected": f" <graph> {random_words(rng, shape.vocab, shape.rejected_words)} ",
            "chosen_score": 0.9 - 0.1 * (i % 3),
            "rejected_score": 0.1 * (i % 4),
        }
        for i in range(count)
    ]


# ------------------------------------------------------------------ measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """The device's peak allocation since the last reset; on CPU the process's max RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB


def free_memory(device: torch.device) -> None:
    """Collect the last phase's model and trainer (they hold reference cycles) and return cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        progress(f"GPU memory still allocated: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB")


def elapsed() -> float:
    return time.perf_counter() - START


def progress(message: str) -> None:
    print(f"[{elapsed():6.1f} s] {message}", file=sys.stderr, flush=True)


def report(name: str, value: object) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{name}: {value}", flush=True)


def score_dpo_trainer(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
                      records: list[dict[str, Any]], output_dir: str) -> ScoreDPOTrainer:
    """The project's own trainer for ``training.loss=score_dpo``, around the in-memory model."""
    return build_trainer(config, records, output_dir, loaded=(model, tokenizer), disable_tqdm=True)


def step_times(trainer: ScoreDPOTrainer, shape: Shape, deadline: float) -> list[float]:
    """Wall seconds of the steps after the warm-up ones; stops once past ``deadline`` (keeping one timed step)."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop
    synchronize(trainer.args.device)
    times: list[float] = []
    for index, batch in enumerate(batches(trainer)):
        seconds = timed_step(trainer, batch)[0]  # synchronizes the GPU before reading the clock
        if index >= shape.warmup_steps:
            times.append(seconds)
            if elapsed() > deadline:
                break
    return times


def measure_score_dpo(name: str, config: Config, shape: Shape, tokenizer: PreTrainedTokenizerFast,
                      device: torch.device, deadline: float) -> None:
    """Build a fresh model and trainer for one variant; report its step time and peak memory."""
    model, build_s = build_model(llama_config(shape, tokenizer), device, model_dtype(config))
    if name == "score_dpo":
        report("model_params_b", sum(p.numel() for p in model.parameters()) / 1e9)
        report("build_s", build_s)
        report("attention", model.config._attn_implementation)
    records = preference_records(shape, shape.warmup_steps + shape.timed_steps)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as output_dir:
        start = time.perf_counter()
        trainer = score_dpo_trainer(config, model, tokenizer, records, output_dir)
        report(f"{name}_trainer_build_s", time.perf_counter() - start)
        if name == "score_dpo":
            rows = trainer.train_dataset
            report("pair_tokens", statistics.mean(len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in rows))
        progress(f"{name}: trainer built, stepping")
        reset_peak_memory(device)
        times = step_times(trainer, shape, deadline)
        report(f"{name}_step_s", statistics.median(times))
        report(f"{name}_peak_gib", peak_memory_gib(device))
        report(f"{name}_timed_steps", len(times))


def measure_sampler(config: Config, shape: Shape, tokenizer: PreTrainedTokenizerFast, device: torch.device) -> None:
    """k samples of one prompt through ``TransformersSampler`` on the model with a LoRA adapter attached."""
    base, _ = build_model(llama_config(shape, tokenizer), device, model_dtype(config))
    model = get_peft_model(base, lora_config(config.training)).eval()  # as PeftModel.from_pretrained attaches one
    prompt = random_words(random.Random(1), shape.vocab, shape.prompt_words + shape.chosen_words)
    request = [SampleRequest(prompt=prompt, n=SAMPLES)]
    warmup = dataclasses.replace(config.generation, max_new_tokens=shape.warmup_new_tokens)
    TransformersSampler(config.generator, warmup, model=model, tokenizer=tokenizer).sample(request)
    progress("sampler: warmed up, sampling")
    sampler = TransformersSampler(config.generator, config.generation, model=model, tokenizer=tokenizer)
    sampler.sample(request)
    stats = sampler.stats
    report(f"sampler_tokens_per_s_k{SAMPLES}", stats.tokens_per_second)
    report("sampler_completion_tokens", stats.completion_tokens)
    report("sampler_s", stats.seconds)


# ------------------------------------------------------------------ FTTT

FEEDBACK_TOKENS = 12  # Llama-3.1's feedback turn: <|eot_id|>, the user header, the "incorrect" sentence, <|eot_id|>


def word_ids(rng: random.Random, vocab_size: int, count: int) -> list[int]:
    return [rng.randrange(FIRST_WORD_ID, vocab_size) for _ in range(count)]


def timed(device: torch.device, fn: Any) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def prefill(model: Any, context: list[int]) -> Any:
    """The KV cache of ``context`` (prompt + attempt minus its last token), as ``generate`` leaves it."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([context], device=model.device), use_cache=True).past_key_values


def full_step(trainer: ttt.Trainer, context: list[int], feedback: list[int]) -> float:
    """One step without the cache: a full forward/backward over context + feedback."""
    trainer.model.train()
    with torch.enable_grad():
        loss = ttt.full_forward_loss(trainer.model, context, feedback)
        loss.backward()
    assert trainer.optimizer is not None
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return loss.item()


def median_step(device: torch.device, step: Any, steps: int, deadline: float) -> tuple[float, int]:
    """The median wall time of ``steps`` timed calls after one warm-up; stops past ``deadline``."""
    step()
    times: list[float] = []
    for _ in range(steps):
        times.append(timed(device, step)[0])
        if elapsed() > deadline:
            break
    return statistics.median(times), len(times)


def measure_fttt(shape: Shape, tokenizer: PreTrainedTokenizerFast, device: torch.device, dtype: torch.dtype,
                 deadline: float) -> None:
    """FTTT's training step through ``fttt.ttt.Trainer``, with and without the attempt's cache."""
    start = time.perf_counter()
    model, build_s = build_model(llama_config(shape, tokenizer), device, dtype)
    report("fttt_build_s", build_s)
    trainer = ttt.Trainer(Policy(model, tokenizer, SamplingSettings(max_new_tokens=shape.new_tokens)), TTTSettings())
    trainer.reset(42)
    trainer.new_optimizer(TTTSettings().learning_rate)
    report("fttt_lora_params", sum(p.numel() for p in trainer.parameters))
    report("fttt_lora_dtype", str(trainer.parameters[0].dtype).removeprefix("torch."))
    rng = random.Random(2)
    context = word_ids(rng, shape.vocab, shape.fttt_prompt_tokens + shape.fttt_attempt_tokens - 1)
    feedback = [tokenizer.eos_token_id, *word_ids(rng, shape.vocab, FEEDBACK_TOKENS - 1)]
    plus = [*feedback[:-1], *word_ids(rng, shape.vocab, shape.fttt_reflection_tokens), feedback[-1]]
    report("fttt_attempt_tokens", shape.fttt_attempt_tokens)
    report("fttt_context_tokens", len(context))
    report("fttt_feedback_tokens", len(feedback))
    trainer.model.train()
    prefill(trainer.model, context)  # warm-up
    prefill_s, cache = timed(device, lambda: prefill(trainer.model, context))
    report("fttt_prefill_s", prefill_s)
    trainer.model.eval()
    with torch.no_grad():
        cached = ttt.feedback_loss(trainer.model, ttt.clone_cache(cache), feedback).item()
        full = ttt.full_forward_loss(trainer.model, context, feedback).item()
    report("fttt_loss_abs_diff", abs(cached - full) + 1e-12)  # + 1e-12: the figure must be positive when exact
    progress("fttt: stepping with the cache")
    reset_peak_memory(device)
    seconds, count = median_step(device, lambda: trainer.step(ttt.clone_cache(cache), feedback),
                                 shape.fttt_timed_steps, deadline)
    report("fttt_step_cached_s", seconds)
    report("fttt_step_cached_peak_gib", peak_memory_gib(device))
    report("fttt_timed_steps", count)
    split = FEEDBACK_TOKENS - 2  # part A after the leading end-of-turn, as plus_feedback_ids counts it
    seconds, _ = median_step(device, lambda: trainer.step(ttt.clone_cache(cache), plus, split=split),
                             shape.fttt_timed_steps, deadline)
    report("fttt_plus_step_cached_s", seconds)
    cache = None  # free the attempt's KV cache before the full-forward variant
    free_memory(device)
    progress("fttt: stepping without the cache")
    reset_peak_memory(device)
    seconds, _ = median_step(device, lambda: full_step(trainer, context, feedback), shape.fttt_timed_steps, deadline)
    report("fttt_step_full_s", seconds)
    report("fttt_step_full_peak_gib", peak_memory_gib(device))
    report("fttt_s", time.perf_counter() - start)


def model_dtype(config: Config) -> torch.dtype:
    """The dtype ``build_trainer`` would load the generator in (bf16 on GPU, fp32 on CPU)."""
    return torch.bfloat16 if use_bf16(config.training) else torch.float32


def resolve_device(args: argparse.Namespace) -> torch.device:
    """The device to run on; asking for CUDA where there is none ends the run with one line."""
    name = args.device or ("cpu" if args.tiny and not torch.cuda.is_available() else "cuda")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device is visible (for the CPU smoke run use --tiny --device cpu)")
    return torch.device(name)


def report_environment(shape: Shape, device: torch.device, dtype: torch.dtype) -> None:
    report("gpu", torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu run)")
    for module in (torch, transformers, trl, peft):
        report(module.__name__, module.__version__)
    report("shape", shape.name)
    report("device", device.type)
    report("dtype", str(dtype).removeprefix("torch."))
    report("peak_memory_kind", "cuda_max_allocated" if device.type == "cuda" else "process_max_rss")


def main() -> None:
    args = parse_args()
    device = resolve_device(args)
    shape = TINY if args.tiny else LLAMA_8B
    tokenizer = build_tokenizer(shape.vocab)
    overrides = [f"generation.max_new_tokens={shape.new_tokens}"]
    base_config = load_config(None, overrides)
    report_environment(shape, device, model_dtype(base_config))
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        sys.exit(f"gpu_check: --sections takes a subset of {','.join(SECTIONS)}")
    deadlines = {"score_dpo": 0.35 * args.budget_s, "score_dpo_precomputed": 0.7 * args.budget_s}
    for name, variant in VARIANTS.items() if "score_dpo" in sections else ():
        progress(f"{name}: building")
        measure_score_dpo(name, load_config(None, [*overrides, *variant]), shape, tokenizer, device, deadlines[name])
        free_memory(device)
    if "sampler" in sections:
        progress("sampler: building")
        measure_sampler(base_config, shape, tokenizer, device)
        free_memory(device)
    if "fttt" in sections:
        progress("fttt: building")
        measure_fttt(shape, tokenizer, device, model_dtype(base_config), elapsed() + args.fttt_budget_s)
        free_memory(device)
    report("total_s", elapsed())
    if elapsed() > args.budget_s:
        progress(f"warning: the run took longer than --budget-s {args.budget_s:.0f}")


if __name__ == "__main__":
    main()
