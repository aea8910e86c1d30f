"""Step time of Score-DPO against stock TRL DPO, and what precomputed reference log-probs save.

Three trainers are built on the same model and the same pairs (real-shaped: chat-templated
prompts, ``<graph>`` completions): stock ``trl.DPOTrainer`` (sigmoid loss), ``ScoreDPOTrainer``,
and ``ScoreDPOTrainer`` with ``precompute_ref_log_probs``. A step is what ``Trainer.train``
does per batch: ``training_step`` (policy forward, reference pass unless precomputed, loss
and metrics, backward), gradient clipping and the AdamW update. The machine may be shared,
so the variants alternate step by step (rotating order) on the same pair, and the ratio is
the median of the per-pair Score-DPO/DPO ratios; one warm-up pass over the pairs is dropped.
On CPU the ratios use the process's CPU time with one torch thread (wall time on a shared
machine swings several-fold); on a GPU they use wall time after a synchronize.

Model: ``smollm2`` (the embedded SmolLM2-135M-Instruct, default) or ``tiny`` (a random
2-layer Llama with hidden size 64 and SmolLM2's vocabulary). CPU runs in fp32; on a GPU
the project's default (bf16) applies. Gradient checkpointing is on (TRL's default).

Usage: python perf/train_bench.py [--model smollm2|tiny] [--pairs 4] [--rounds 3] [--threads 1]
Last line: ``score_dpo_step_ratio: X`` (median per-step Score-DPO/DPO time; target <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from scoreflow import models  # noqa: E402
from scoreflow.config import load_config  # noqa: E402
from scoreflow.training import build_trainer  # noqa: E402

Times = dict[str, list[tuple[float, float]]]  # variant -> (wall, CPU) seconds per step
VARIANTS = {  # name -> config overrides
    "dpo": ["training.loss=dpo"],
    "score_dpo": ["training.loss=score_dpo"],
    "score_dpo_precomputed": ["training.loss=score_dpo", "training.precompute_ref_log_probs=true"],
}


def timed_step(trainer: Any, batch: dict[str, Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of one optimizer step as ``Trainer.train`` runs it."""
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.training_step(trainer.model, batch)
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.args.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def tiny_model(folder: Path, tokenizer_source: Path) -> Path:
    """A random 2-layer Llama (hidden 64) with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pairs(tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """Real-shaped preference records (the prompt is already chat-templated)."""
    good = (
        "<graph>\nclass Workflow:\n    def __init__(self, config, problem):\n"
        "        self.custom = operator.Custom(config, problem)\n"
        "    async def run_workflow(self):\n"
        "        return await self.custom(input=self.problem, instruction='Solve it step by step.')\n"
    )
    bad = "<graph>\nclass Workflow:\n    async def run_workflow(self):\n        return self.problem\n"
    records = []
    for i in range(n):
        question = f"Write a workflow for this problem: return the sum of the first {i + 3} squares of a list."
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        records.append({"prompt": prompt, "chosen": good, "rejected": bad + "#" * i,
                        "chosen_score": 0.9 - 0.1 * (i % 3), "rejected_score": 0.1 * (i % 4)})
    return records


def build(model: str, cache_dir: Path, records: list[dict[str, Any]], work: Path) -> dict[str, tuple[Any, float]]:
    """Each variant's trainer, ready to step, and its build time (which includes any precompute pass)."""
    built = {}
    for name, overrides in VARIANTS.items():
        config = load_config(None, [f"generator.model={model}", f"cache_dir={cache_dir}", *overrides])
        start = time.perf_counter()
        trainer = build_trainer(config, records, str(work / name), disable_tqdm=True)
        seconds = time.perf_counter() - start
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop
        built[name] = (trainer, seconds)
    return built


def batches(trainer: Any) -> list[dict[str, Any]]:
    """The pairs one at a time (batch size 1), collated by the trainer's own collator."""
    return [trainer.data_collator([row]) for row in trainer.train_dataset]


def run(built: dict[str, tuple[Any, float]], rounds: int) -> Times:
    """(wall, CPU) step times per variant; variants alternate step by step, the first round is a warm-up."""
    data = {name: batches(trainer) for name, (trainer, _) in built.items()}
    names = list(built)
    times: Times = {name: [] for name in names}
    for round_index in range(rounds + 1):
        for i in range(len(data[names[0]])):
            shift = (round_index + i) % len(names)
            for name in names[shift:] + names[:shift]:
                elapsed = timed_step(built[name][0], data[name][i])
                if round_index > 0:
                    times[name].append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--pairs", type=int, default=4, help="distinct pairs (batch size 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the pairs, after one warm-up pass")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "tests")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: CPU time measures the work alone on a shared machine; 0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    smollm2 = models.resolve_model(models.DEFAULT_EMBEDDED_MODEL, args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        model = str(smollm2 if args.model == "smollm2" else tiny_model(work / "tiny", Path(smollm2)))
        records = pairs(AutoTokenizer.from_pretrained(model), args.pairs)
        built = build(model, args.cache_dir, records, work)
        times = run(built, args.rounds)
        report(args, built, times)


def report(args: argparse.Namespace, built: dict[str, tuple[Any, float]], times: Times) -> None:
    """Medians per variant; the ratios use CPU time on CPU (robust to a shared machine) and wall time on GPU."""
    trainer = built["score_dpo"][0]
    rows = trainer.train_dataset
    tokens = statistics.mean(len(r["prompt_ids"]) + (len(r["chosen_ids"]) + len(r["rejected_ids"])) / 2 for r in rows)
    clock = 1 if trainer.args.device.type == "cpu" else 0
    print(f"model: {args.model}, device: {trainer.args.device}, bf16: {trainer.args.bf16}, "
          f"gradient checkpointing: {trainer.args.gradient_checkpointing}, threads: {torch.get_num_threads()}, "
          f"pairs: {len(rows)}, mean tokens per sequence: {tokens:.0f}, ratios on {('wall', 'CPU')[clock]} time")
    medians = {}
    for name, pairs_ in times.items():
        wall, cpu = [t[0] for t in pairs_], [t[1] for t in pairs_]
        medians[name] = statistics.median((wall, cpu)[clock])
        print(f"{name}_step_s: wall median {statistics.median(wall):.4f} (min {min(wall):.4f}, max {max(wall):.4f}), "
              f"CPU median {statistics.median(cpu):.4f} over {len(pairs_)} steps")
    paired = [s[clock] / d[clock] for s, d in zip(times["score_dpo"], times["dpo"], strict=True)]
    of_medians = medians["score_dpo"] / medians["dpo"]
    print(f"score_dpo/dpo per-step ratios: median {statistics.median(paired):.3f} "
          f"(min {min(paired):.3f}, max {max(paired):.3f}); ratio of medians {of_medians:.3f}")
    precompute_s = built["score_dpo_precomputed"][1] - built["score_dpo"][1]
    print(f"precompute_ref_log_probs_s: {precompute_s:.3f} wall for {len(rows)} pairs "
          "(difference of trainer build times)")
    print(f"precomputed_step_ratio: {medians['score_dpo_precomputed'] / medians['score_dpo']:.3f} "
          "(Score-DPO median step with precomputed reference log-probs / with the live reference pass)")
    print(f"score_dpo_step_ratio: {statistics.median(paired):.3f}")


if __name__ == "__main__":
    main()
