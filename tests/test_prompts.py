"""The generator prompt: the original's structure per dataset, sent raw by default, and the
same token ids for the sampler and the Score-DPO trainer (one BOS) in both modes.

``pytest -s`` prints each dataset's prompt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.config import DATASETS, load_config
from scoreflow.prompts import generator_prompt
from scoreflow.sampling import adds_bos, format_chat, format_raw, prompt_token_ids
from scoreflow.workflow import check_workflow

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tests"
LLAMA31_TEMPLATE = (Path(__file__).parent / "data" / "llama31_chat_template.jinja").read_text()
PROBLEM = Problem(id="p", question="Tom has 3 apples and buys 4 more. How many apples does he have?",
                  input="Tom has 3 apples and buys 4 more. How many apples does he have?", answer="7")
SIZE = {"HumanEval": "fewer than 7", "MBPP": "at most 7"}


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_datasets_prompt_has_the_originals_structure(dataset: str) -> None:
    bench = get_benchmark(dataset, load_config())
    prompt = generator_prompt(bench, PROBLEM)
    print(f"\n===== {dataset} =====\n{prompt}")
    template = prompt.split("<graph>\n", 1)[1].split("\n</graph>", 1)[0]
    checked = check_workflow(template, bench.operators, max_range=bench.max_range)
    assert sorted(checked.operators_used.values()) == sorted(bench.operators)  # the template binds them all
    assert "self.problem = problem" in template and "= create(config)" in template
    assert '"""' in template.split("async def run_workflow(self):", 1)[1]  # the docstring
    for number, name in enumerate(bench.operators, start=1):
        assert f"{number}. {name}:" in prompt
    code, qa = bench.family == "code", bench.family == "qa"
    label = {"code": "TASK: ", "qa": "Question: "}.get(bench.family, "" if dataset == "MATH" else "Question: ")
    assert f"\n{label}{PROBLEM.question}\n" in prompt
    assert (SIZE[dataset] if code else "between 3 and 8") in prompt
    assert ("at most 3 iterations" in prompt) == code
    assert ("must contribute" in prompt) == qa
    assert ("differ from it" in prompt) == (not code)
    assert '"another"' in prompt and "think step by step" in prompt and "several solutions" in prompt
    assert prompt.endswith(": ") and "no information from the" in prompt.rsplit("\n", 1)[-1]
    assert not re.search(r"\bReview\b", prompt) or "Review" in bench.operators


def test_code_datasets_offer_the_originals_three_operators() -> None:
    for dataset in ("HumanEval", "MBPP"):
        assert get_benchmark(dataset).operators == ("CustomCodeGenerate", "ScEnsemble", "Test")


# ---------------------------------------------------------------- token ids: sampler == trainer


def smollm2_tokenizer(llama_like: bool) -> Any:
    """The embedded SmolLM2 tokenizer; ``llama_like``: with Llama-3.1's special tokens, its
    chat template (as published with the model) and a BOS added to every text, as Llama's."""
    from transformers import AutoTokenizer

    from scoreflow.models import resolve_model

    folder = resolve_model("smollm2-135m-instruct", CACHE)
    if not llama_like:
        return AutoTokenizer.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer.add_special_tokens({"bos_token": specials[0], "additional_special_tokens": specials[1:]})
    tokenizer.chat_template = LLAMA31_TEMPLATE
    tokenizer = AutoTokenizer.from_pretrained(_saved(tokenizer), add_bos_token=True)  # rebuilt with the new BOS
    assert adds_bos(tokenizer) and tokenizer("a").input_ids[0] == tokenizer.convert_tokens_to_ids(specials[0])
    return tokenizer


def _saved(tokenizer: Any) -> str:
    import tempfile

    folder = tempfile.mkdtemp(prefix="llama-like-tokenizer-")
    tokenizer.save_pretrained(folder)
    return folder


def trainer_prompt_ids(tokenizer: Any, prompt: str, tmp_path: Path) -> list[int]:
    """The prompt ids TRL's DPOTrainer (through our build_trainer) trains on."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from scoreflow.training import build_trainer

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    config = load_config(None, [f"workspace={tmp_path}", "training.bf16=false", "training.gradient_checkpointing=false"])
    record = {"prompt": prompt, "chosen": "<graph>\na = 1\n", "rejected": "<graph>\nb = 2\n",
              "chosen_score": 1.0, "rejected_score": 0.0}
    trainer = build_trainer(config, [record], str(tmp_path / "trainer"), loaded=(model, tokenizer), disable_tqdm=True)
    return list(trainer.train_dataset[0]["prompt_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("llama_like", [False, True], ids=["smollm2", "llama31-like"])
@pytest.mark.parametrize("chat", [False, True], ids=["raw", "chat"])
def test_the_sampler_and_the_trainer_see_the_same_prompt_ids(llama_like: bool, chat: bool, tmp_path: Path) -> None:
    tokenizer = smollm2_tokenizer(llama_like)
    text = generator_prompt(get_benchmark("GSM8K"), PROBLEM)
    prompt = format_chat(tokenizer, [{"role": "user", "content": text}]) if chat else format_raw(tokenizer, text)
    sampler_ids = prompt_token_ids(tokenizer, prompt)  # what both samplers (and vLLM, given ids) decode from
    assert trainer_prompt_ids(tokenizer, prompt, tmp_path) == sampler_ids
    bos = tokenizer.bos_token_id
    if llama_like:
        assert sampler_ids[0] == bos and sampler_ids.count(bos) == 1  # exactly one BOS
        if chat:
            assert "Cutting Knowledge Date" in prompt and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    if not chat:
        assert tokenizer.decode(sampler_ids, skip_special_tokens=True) == text  # the raw text, nothing wrapped around it
