"""``optimize.py``: its refusals, and a real SmolLM2-135M run under ``accelerate launch``.

The refusals run in-process and load no model. The end-to-end run trains the embedded
SmolLM2-135M-Instruct on CPU for a few steps on real-shaped pairs (prompts made with
its chat template, completions that stop right before ``</graph>``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from peft import load_peft_weights

from scoreflow import models
from scoreflow.config import Config, load_config
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import atomic_write_jsonl, read_json
from scoreflow.workspace import Workspace

import optimize

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "tests"
DATASET = "HumanEval"


def settings(tmp_path: Path, *extra: str) -> list[str]:
    return [f"workspace={tmp_path / 'ws'}", f"cache_dir={CACHE}", "generator.model=smollm2-135m-instruct", *extra]


def cli_args(tmp_path: Path, epoch: int, *extra: str) -> list[str]:
    args = ["--dataset", DATASET, "--epoch", str(epoch)]
    for item in settings(tmp_path):
        args += ["--set", item]
    return [*args, *extra]


def evaluated_epoch(config: Config, epoch: int, records: list[dict[str, Any]]) -> Workspace:
    """An epoch folder whose evaluate stage is complete, as evaluate.py leaves it."""
    workspace = Workspace.from_config(config, DATASET, epoch)
    stage = workspace.start("evaluate", config)
    atomic_write_jsonl(stage.output_path("preferences.jsonl"), records)
    stage.finish(counts={"pairs": len(records)})
    return workspace


def pair(prompt: str = "p", chosen: str = "<graph>\na\n", score: float = 0.9) -> dict[str, Any]:
    return {"problem_id": "HumanEval/0", "prompt": prompt, "chosen": chosen, "rejected": "<graph>\nb\n",
            "chosen_score": score, "rejected_score": 0.1, "chosen_sample": 0, "rejected_sample": 1}


# ------------------------------------------------------------------ refusals (no model)


def test_missing_evaluate_stage_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "optimize.py", *cli_args(tmp_path, 0)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "evaluate stage is missing" in lines[0]
    assert "evaluate.py --dataset HumanEval --task optimize --epoch 0" in lines[0]


def test_empty_preferences_are_an_error(tmp_path: Path) -> None:
    evaluated_epoch(load_config(None, settings(tmp_path)), 0, [])
    with pytest.raises(ScoreFlowError, match="no preference pairs"):
        optimize.main(cli_args(tmp_path, 0))


def test_malformed_pair_names_file_and_line(tmp_path: Path) -> None:
    evaluated_epoch(load_config(None, settings(tmp_path)), 0, [pair(), pair(score=1.5)])
    with pytest.raises(ScoreFlowError, match=r"preferences.jsonl:2: chosen_score must be a number in \[0, 1\]"):
        optimize.main(cli_args(tmp_path, 0))


def test_epoch_one_needs_epoch_one_adapter(tmp_path: Path) -> None:
    evaluated_epoch(load_config(None, settings(tmp_path)), 1, [pair()])
    with pytest.raises(ScoreFlowError, match=r"optimize stage is missing.*optimize.py --dataset HumanEval --epoch 0"):
        optimize.main(cli_args(tmp_path, 1))


def test_finished_adapter_is_not_overwritten_without_force(tmp_path: Path) -> None:
    config = load_config(None, settings(tmp_path))
    evaluated_epoch(config, 0, [pair()])
    stage = Workspace.from_config(config, DATASET, 1).start("optimize", config)
    stage.output_path("adapter").mkdir()
    stage.finish()
    with pytest.raises(ScoreFlowError, match="already trained.*pass --force"):
        optimize.main(cli_args(tmp_path, 0))
    assert stage.output_path("adapter").is_dir()


# ------------------------------------------------------------------ SmolLM2-135M end to end


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve_model(models.DEFAULT_EMBEDDED_MODEL, CACHE))


def real_shaped_pairs(tokenizer: Any) -> list[dict[str, Any]]:
    """Generator prompts made with the chat template, workflows cut right before </graph>."""
    good = (
        "<graph>\nclass Workflow:\n    def __init__(self, config, problem):\n"
        "        self.custom = operator.Custom(config, problem)\n"
        "    async def run_workflow(self):\n"
        "        return await self.custom(input=self.problem, instruction='Solve it step by step.')\n"
    )
    bad = "<graph>\nclass Workflow:\n    async def run_workflow(self):\n        return self.problem\n"
    records = []
    for i, (s_w, s_l) in enumerate([(1.0, 0.0), (0.67, 0.33), (0.9, 0.2)]):
        question = f"Write a workflow for this problem: return the sum of the first {i + 3} squares."
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        record = {**pair(prompt, good, s_w), "rejected": bad, "rejected_score": s_l}
        records.append({**record, "problem_id": f"HumanEval/{i}"})
    return records


@pytest.mark.slow
def test_smollm2_run_through_accelerate_launch(tmp_path: Path, smollm2_tokenizer: Any) -> None:
    config = load_config(None, settings(tmp_path))
    records = real_shaped_pairs(smollm2_tokenizer)
    evaluated_epoch(config, 0, records)
    launcher = shutil.which("accelerate")
    assert launcher, "accelerate's launcher is not on PATH"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [launcher, "launch", "--num_processes=1", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
         "optimize.py", *cli_args(tmp_path, 0, "--set", "training.learning_rate=0.0001")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("HumanEval epoch 0 -> 1: score_dpo on 3 pairs, 3 steps, final loss"), summary
    assert "reward accuracy" in summary

    target = Workspace.from_config(config, DATASET, 1)
    manifest = target.require("optimize")
    training = manifest["training"]
    assert manifest["counts"] == {"pairs": 3, "steps": 3}
    assert training["bf16"] is False and training["device"] == "cpu" and training["processes"] == 1
    assert 0 < training["final_loss"] < 1 and 0 <= training["reward_accuracy"] <= 1
    assert training["peak_memory_kind"] == "process_max_rss" and training["peak_memory_bytes"] > 2**27
    assert manifest["config"]["training"]["learning_rate"] == 0.0001
    adapter = target.path("adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    lora = read_json(adapter / "adapter_config.json")
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (8, 16, 0.01)
    assert sorted(lora["target_modules"]) == ["q_proj", "v_proj"]
    assert training["lora"] == {"r": 8, "alpha": 16, "dropout": 0.01, "target_modules": ["q_proj", "v_proj"]}
    weights = load_peft_weights(str(adapter), device="cpu")
    assert len(weights) == 4 * 30  # A and B of q_proj and v_proj in each of the 30 layers
    assert all(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k)  # trained away from B = 0
    assert not any(p.name.startswith(".adapter.partial") for p in target.dir.iterdir())
    json.dumps(manifest)  # the manifest stays plain JSON


# ------------------------------------------------------------------ the seed README's command forms


def seed_form(tmp_path: Path, epoch: int) -> list[str]:
    """``optimize.py --epoch=i`` as the seed README writes it: no --dataset."""
    args = [f"--epoch={epoch}"]
    for item in settings(tmp_path):
        args += ["--set", item]
    return args


def test_the_dataset_is_inferred_from_the_one_with_that_epochs_pairs(tmp_path: Path) -> None:
    with pytest.raises(ScoreFlowError, match=r"no dataset has a finished evaluate stage in .*epoch_0; pass --dataset"):
        optimize.main(seed_form(tmp_path, 0))
    config = load_config(None, settings(tmp_path))
    evaluated_epoch(config, 0, [])
    with pytest.raises(ScoreFlowError, match="no preference pairs"):  # HumanEval was found and its pairs read
        optimize.main(seed_form(tmp_path, 0))
    other = Workspace.from_config(config, "MBPP", 0).start("evaluate", config)
    other.finish()
    with pytest.raises(ScoreFlowError, match=r"several datasets .* \(HumanEval, MBPP\); pass --dataset"):
        optimize.main(seed_form(tmp_path, 0))


def test_generate_and_evaluate_take_the_seed_readmes_equals_form() -> None:
    from scoreflow.cli import make_stage_parser

    args = make_stage_parser("x").parse_args(["--dataset=HumanEval", "--task=optimize", "--epoch=0"])
    assert (args.dataset, args.task, args.epoch) == ("HumanEval", "optimize", 0)
