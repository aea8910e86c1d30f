"""Sampling backends: vLLM request construction (pure), the vLLM engine where it is
installed, and the transformers sampler end to end on CPU with SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import get_benchmark
from scoreflow.config import GenerationConfig, GeneratorConfig
from scoreflow.sampling import (
    Sample,
    SampleRequest,
    TransformersSampler,
    _chunks,
    adapter_rank,
    cut_at_stop,
    lora_request_args,
    make_sampler,
    vllm_engine_kwargs,
    vllm_lora_rank,
    vllm_sampling_kwargs,
)
from scoreflow.workflow import WorkflowRejected, check_workflow, extract_graph

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache"
TINY = "smollm2-135m-instruct"
HUMANEVAL = get_benchmark("HumanEval")
PROBLEMS = (
    'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n',
    'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same backwards."""\n',
)


def write_adapter_config(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16, "peft_type": "LORA"}))
    return folder


# ---------------------------------------------------------------- vLLM request construction


def test_vllm_sampling_kwargs_follow_the_paper() -> None:
    kwargs = vllm_sampling_kwargs(GenerationConfig(seed=3), n=8, grammar=None)
    assert kwargs == {
        "n": 8, "temperature": 0.2, "top_p": 0.95, "max_tokens": 1000, "stop": ["</graph>"],
        "include_stop_str_in_output": False, "seed": 3, "skip_special_tokens": True,
    }


def test_vllm_sampling_kwargs_with_grammar_and_seed() -> None:
    kwargs = vllm_sampling_kwargs(GenerationConfig(), n=1, grammar="root ::= \"x\"", seed=41)
    assert kwargs["structured_outputs"] == {"grammar": "root ::= \"x\""}
    assert kwargs["seed"] == 41 and kwargs["n"] == 1


def test_vllm_engine_kwargs_without_adapter() -> None:
    kwargs = vllm_engine_kwargs(GeneratorConfig(), None)
    assert kwargs == {
        "model": "meta-llama/Llama-3.1-8B-Instruct", "dtype": "bfloat16", "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9, "max_model_len": 10000, "enable_lora": False,
    }


def test_vllm_engine_kwargs_with_adapter(tmp_path: Path) -> None:
    adapter = write_adapter_config(tmp_path / "epoch_1" / "adapter", rank=8)
    kwargs = vllm_engine_kwargs(GeneratorConfig(tensor_parallel_size=2), adapter, model="/models/base", structured=True)
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 8 and kwargs["max_loras"] == 1
    assert kwargs["model"] == "/models/base" and kwargs["dtype"] == "bfloat16" and kwargs["tensor_parallel_size"] == 2
    assert kwargs["structured_outputs_config"] == {"backend": "xgrammar"}


def test_lora_request_and_ranks(tmp_path: Path) -> None:
    adapter = write_adapter_config(tmp_path / "a", rank=4)
    assert lora_request_args(adapter) == ("epoch", 1, str(adapter))
    assert adapter_rank(adapter) == 4 and vllm_lora_rank(4) == 8
    assert vllm_lora_rank(16) == 16 and vllm_lora_rank(17) == 32
    with pytest.raises(ValueError, match="exceeds"):
        vllm_lora_rank(4096)
    with pytest.raises(ValueError, match="not a PEFT LoRA adapter"):
        adapter_rank(tmp_path / "missing")


def test_stop_cut_and_chunks() -> None:
    assert cut_at_stop("<graph>\nx\n</graph>tail", ["</graph>"]) == ("<graph>\nx\n", True)
    assert cut_at_stop("no stop", ["</graph>"]) == ("no stop", False)
    requests = [SampleRequest("a", 2), SampleRequest("b", 2), SampleRequest("c", 2), SampleRequest("d", 1)]
    assert [[r.prompt for r in c] for c in _chunks(requests, 2)] == [["a", "b"], ["c"], ["d"]]


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generator backend"):
        make_sampler(GeneratorConfig(backend="tgi"), GenerationConfig(), cache_dir=CACHE_DIR,  # type: ignore[arg-type]
                     adapter=None, grammar=None)


def test_vllm_engine_on_gpu() -> None:
    pytest.importorskip("vllm", reason="vLLM is GPU-only and not installed here (requirements-gpu.txt)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from scoreflow.grammar import workflow_grammar

    generator = GeneratorConfig(model=TINY, max_model_len=4096, gpu_memory_utilization=0.3)
    sampler = make_sampler(generator, GenerationConfig(max_new_tokens=300), cache_dir=CACHE_DIR, adapter=None,
                           grammar=workflow_grammar(HUMANEVAL.operators))
    try:
        samples = sampler.sample([SampleRequest(sampler.format_prompt(messages(p)), n=2) for p in PROBLEMS])
    finally:
        sampler.close()
    assert [len(s) for s in samples] == [2, 2]
    assert valid_count(samples) == 4


# ---------------------------------------------------------------- transformers sampler on CPU


def messages(problem: str) -> list[dict[str, str]]:
    """A short HumanEval-style request for a workflow (the real prompt is in scoreflow.prompts)."""
    return [{"role": "user", "content": (
        "Operators: CustomCodeGenerate(instruction), ScEnsemble(solutions), Review(pre_solution), "
        "Test(solution).\nTemplate workflow:\n<graph>\n" + HUMANEVAL.template_workflow + "</graph>\n"
        "Problem:\n" + problem + "\nWrite a better workflow. Reply with the workflow only, between "
        "<graph> and </graph>."
    )}]


def valid_count(samples: list[list[Sample]]) -> int:
    valid = 0
    for sample in (s for group in samples for s in group):
        source = extract_graph(sample.text)
        try:
            valid += source is not None and bool(check_workflow(source, HUMANEVAL.operators))
        except WorkflowRejected:
            pass
    return valid


@pytest.fixture(scope="module")
def base():
    """The tiny model, loaded once. One intra-op thread: on a 2-core machine shared with other
    test processes, two spinning torch threads make decoding up to ~10x slower."""
    import torch

    from scoreflow.models import load_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_causal_lm(TINY, CACHE_DIR, dtype="float32", device="cpu")
    finally:
        torch.set_num_threads(threads)


def cpu_sampler(base, grammar: bool, **generation) -> TransformersSampler:
    from scoreflow.grammar import workflow_grammar

    model, tokenizer = base
    config = GenerationConfig(**{"k": 2, "max_new_tokens": 200, **generation})
    return TransformersSampler(GeneratorConfig(model=TINY, backend="transformers", batch_size=2), config,
                               model=model, tokenizer=tokenizer,
                               grammar=workflow_grammar(HUMANEVAL.operators) if grammar else None)


GRAMMAR_TOKENS = 384  # as config/tiny.yaml: the original's class header alone is ~150 tokens


@pytest.mark.slow
def test_transformers_sampler_with_grammar_gives_valid_workflows(base) -> None:
    sampler = cpu_sampler(base, grammar=True, max_new_tokens=GRAMMAR_TOKENS)
    requests = [SampleRequest(sampler.format_prompt(messages(p)), n=2) for p in PROBLEMS]
    samples = sampler.sample(requests)
    assert [len(group) for group in samples] == [2, 2]
    for request, group in zip(requests, samples, strict=True):
        prompt_tokens = len(sampler.tokenizer(request.prompt, add_special_tokens=False)["input_ids"])
        for sample in group:
            assert sample.text.startswith("<graph>\n") and "</graph>" not in sample.text
            assert sample.prompt_tokens == prompt_tokens and 0 < sample.completion_tokens <= GRAMMAR_TOKENS
    print(f"grammar: valid {valid_count(samples)}/4, {sampler.stats.tokens_per_second:.1f} tok/s")
    assert valid_count(samples) == 4


@pytest.mark.slow
def test_transformers_sampler_without_grammar_runs(base) -> None:
    sampler = cpu_sampler(base, grammar=False, max_new_tokens=80)
    samples = sampler.sample([SampleRequest(sampler.format_prompt(messages(p)), n=2) for p in PROBLEMS])
    assert [len(group) for group in samples] == [2, 2]
    assert all(s.text and 0 < s.completion_tokens <= 80 for group in samples for s in group)
    print(f"no grammar: valid {valid_count(samples)}/4, {sampler.stats.tokens_per_second:.1f} tok/s")


@pytest.mark.slow
def test_seeds_reproduce_and_vary(base) -> None:
    sampler = cpu_sampler(base, grammar=False, max_new_tokens=8, temperature=1.0, top_p=1.0)
    prompt = sampler.format_prompt([{"role": "user", "content": "Name a colour."}])
    first = sampler.sample([SampleRequest(prompt, n=3, seed=5)])
    again = sampler.sample([SampleRequest(prompt, n=3, seed=5)])
    other = sampler.sample([SampleRequest(prompt, n=3, seed=6)])
    assert first == again
    assert first != other


@pytest.mark.slow
def test_adapter_changes_greedy_output(base, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from scoreflow.models import resolve_model

    fresh = AutoModelForCausalLM.from_pretrained(resolve_model(TINY, CACHE_DIR), dtype=torch.float32)
    peft_model = get_peft_model(fresh, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init: perturb so the adapter changes the model
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    del peft_model, fresh

    greedy = GenerationConfig(temperature=0.0, max_new_tokens=16)
    tuned = TransformersSampler.load(GeneratorConfig(model=TINY, backend="transformers"), greedy,
                                     cache_dir=CACHE_DIR, adapter=tmp_path / "adapter", device="cpu")
    plain = cpu_sampler(base, grammar=False, temperature=0.0, max_new_tokens=16)
    prompt = plain.format_prompt([{"role": "user", "content": "What is the capital of France?"}])
    assert type(tuned.model).__name__.startswith("Peft")
    tuned_text = tuned.sample([SampleRequest(prompt, n=2)])[0]
    plain_text = plain.sample([SampleRequest(prompt, n=1)])[0][0].text
    assert tuned_text[0] == tuned_text[1]  # greedy: the n rows agree
    assert tuned_text[0].text != plain_text
    ids = plain.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(tuned.model(**ids).logits, plain.model(**ids).logits, atol=1e-3)
