"""Sampling candidate workflows from the generator: one interface, two backends.

* ``VLLMSampler`` (GPU, the paper's setting): vLLM serves the base model and, for
  epoch > 0, the previous epoch's LoRA adapter directly (``LoRARequest``); with
  ``serve_adapter`` false the caller passes a merged model folder and no adapter.
* ``TransformersSampler`` (CPU or GPU): plain ``model.generate`` with the base model
  plus an optional PEFT adapter; used for small models, tests and machines without
  vLLM.

Conventions shared by both backends (and by the preference data, which stores the
prompt text):

* ``SampleRequest.prompt`` is the FINAL prompt text, already chat-formatted
  (``Sampler.format_prompt(messages)`` builds it). It is tokenized with
  ``add_special_tokens=False`` — the chat template already contains BOS where the
  model wants one — and sent as token ids, so both backends and DPO training see the
  same tokens (tokenize the stored prompt the same way when training).
* ``Sample.text`` is the completion up to, NOT including, the first stop string
  (``</graph>``); the caller appends ``</graph>`` itself when it needs the closed tag.
* Seeds: a request's ``seed`` if given, else ``generation.seed + r`` where ``r``
  counts this sampler's earlier ``sample`` calls, so a resampling round does not
  repeat the previous round's draws while a rerun of the same sequence of calls
  reproduces them. vLLM seeds every request; transformers seeds each generate call
  (``torch.manual_seed``) from its first request's seed and the call's index, so its
  draws also depend on ``batch_size``.

vLLM is imported only inside ``VLLMSampler`` (it is GPU-only); the request
construction lives in pure functions that are tested without it.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoreflow.config import GenerationConfig, GeneratorConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from scoreflow.grammar import GrammarDecoding

VLLM_LORA_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 320, 512)  # ranks vLLM accepts
LORA_NAME = "epoch"
LORA_ID = 1


@dataclass(frozen=True)
class SampleRequest:
    """``n`` completions of one chat-formatted prompt (see ``Sampler.format_prompt``)."""

    prompt: str
    n: int = 1
    seed: int | None = None  # None: generation.seed + the sampler's call count


@dataclass(frozen=True)
class Sample:
    """One completion, cut before the stop string, with token counts for cost reports."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class SamplerStats:
    """Running totals so callers can report throughput (completion tokens per second)."""

    calls: int = 0
    samples: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class Sampler(ABC):
    """Draws ``n`` samples per request, in request order."""

    tokenizer: PreTrainedTokenizerBase
    generation: GenerationConfig

    def __init__(self) -> None:
        self.stats = SamplerStats()

    def format_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The exact prompt text for chat ``messages`` (assistant turn opened, not started)."""
        return format_chat(self.tokenizer, messages)

    def format_raw(self, text: str) -> str:
        """The exact prompt text for a raw completion prompt (the original's way)."""
        return format_raw(self.tokenizer, text)

    def sample(self, requests: Sequence[SampleRequest]) -> list[list[Sample]]:
        for request in requests:
            if request.n < 1:
                raise ValueError(f"SampleRequest.n must be >= 1 (got {request.n})")
        start = time.perf_counter()
        results = self._sample(list(requests), self.generation.seed + self.stats.calls)
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        self.stats.samples += sum(len(r) for r in results)
        self.stats.completion_tokens += sum(s.completion_tokens for r in results for s in r)
        return results

    @abstractmethod
    def _sample(self, requests: list[SampleRequest], default_seed: int) -> list[list[Sample]]:
        """Backend work; ``default_seed`` applies to requests without their own seed."""

    @abstractmethod
    def close(self) -> None:
        """Release the model (and GPU memory)."""


def format_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def format_raw(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """``text`` as vLLM sees a raw prompt: after the BOS the tokenizer adds (if it adds one).

    Prompts are stored with their special tokens written out, so that the samplers (which
    hand token ids to vLLM: it adds no second BOS) and the trainer see the same ids."""
    return f"{tokenizer.bos_token}{text}" if adds_bos(tokenizer) else text


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether plain ``tokenizer(text)`` prepends the BOS token."""
    bos_id = tokenizer.bos_token_id
    return bos_id is not None and tokenizer("a").input_ids[:1] == [bos_id]


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a stored prompt (chat-formatted or raw: it already holds its special tokens)."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# ---------------------------------------------------------------- transformers


class TransformersSampler(Sampler):
    """``model.generate`` in batches of ``generator.batch_size`` prompts, ``n`` rows each."""

    def __init__(self, generator: GeneratorConfig, generation: GenerationConfig, *, model: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, grammar: str | GrammarDecoding | None = None) -> None:
        """Wrap a loaded model (left-padding tokenizer with a pad token, as ``load_causal_lm``
        returns); ``grammar`` is EBNF text or an already compiled ``GrammarDecoding``."""
        super().__init__()
        import torch
        from transformers import StoppingCriteriaList, StopStringCriteria

        from scoreflow.grammar import GrammarDecoding

        self.generator, self.generation = generator, generation
        self.model, self.tokenizer = model, tokenizer
        self.device = model.device
        if isinstance(grammar, str):
            grammar = GrammarDecoding(grammar, tokenizer, model.config.vocab_size)
        self.decoding = grammar
        stop = [s for s in generation.stop if s]
        self.stopping = StoppingCriteriaList([StopStringCriteria(tokenizer, stop)]) if stop else None
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(tokenizer.eos_token_id)
        self._torch = torch

    @classmethod
    def load(cls, generator: GeneratorConfig, generation: GenerationConfig, *, cache_dir: str | Path,
             adapter: Path | None = None, grammar: str | None = None, device: str | None = None,
             ) -> TransformersSampler:
        """Load ``generator.model`` (plus the PEFT ``adapter``) with ``load_causal_lm`` and wrap it."""
        from scoreflow.models import default_device, load_causal_lm

        device = device or default_device()
        model, tokenizer = load_causal_lm(generator.model, cache_dir, dtype=_dtype_for(generator.dtype, device),
                                          device=device, adapter=adapter)
        return cls(generator, generation, model=model, tokenizer=tokenizer, grammar=grammar)

    def _sample(self, requests: list[SampleRequest], default_seed: int) -> list[list[Sample]]:
        results: list[list[Sample]] = []
        for index, chunk in enumerate(_chunks(requests, self.generator.batch_size)):
            seed = chunk[0].seed if chunk[0].seed is not None else default_seed
            results.extend(self._generate(chunk, seed * 1_000_003 + index))
        return results

    def _generate(self, chunk: list[SampleRequest], seed: int) -> list[list[Sample]]:
        """One generate call: the chunk's prompts, ``n`` rows each (same ``n`` in a chunk)."""
        torch = self._torch
        n = chunk[0].n
        ids = [prompt_token_ids(self.tokenizer, r.prompt) for r in chunk]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        sampling = self.generation.temperature > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.generation.max_new_tokens, do_sample=sampling,
            num_return_sequences=n if sampling else 1, stopping_criteria=self.stopping,
            pad_token_id=self.tokenizer.pad_token_id)
        if sampling:
            kwargs.update(temperature=self.generation.temperature, top_p=self.generation.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
            batch = {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}  # greedy: n equal rows
        if self.decoding is not None:
            kwargs["logits_processor"] = [self.decoding.logits_processor()]
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**batch, **kwargs)
        generated = out[:, batch["input_ids"].shape[1]:].tolist()
        return [[self._sample_of(generated[i * n + j], len(ids[i])) for j in range(n)] for i in range(len(chunk))]

    def _sample_of(self, tokens: list[int], prompt_tokens: int) -> Sample:
        used = self._used_length(tokens)
        text, _ = cut_at_stop(self.tokenizer.decode(tokens[:used], skip_special_tokens=True), self.generation.stop)
        return Sample(text=text, prompt_tokens=prompt_tokens, completion_tokens=used)

    def _used_length(self, tokens: list[int]) -> int:
        """Tokens the model really produced: through EOS or the stop string, no padding."""
        end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
        decode = lambda k: self.tokenizer.decode(tokens[:k], skip_special_tokens=True)  # noqa: E731
        if not cut_at_stop(decode(end), self.generation.stop)[1]:
            return end
        low, high = 1, end  # the shortest prefix whose text holds a stop string
        while low < high:
            mid = (low + high) // 2
            if cut_at_stop(decode(mid), self.generation.stop)[1]:
                high = mid
            else:
                low = mid + 1
        return low

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self.decoding = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


def _dtype_for(dtype: str, device: str) -> str:
    """Half precision on CPU is slow and partly unsupported: compute in float32 there."""
    if device == "cpu" and dtype in ("bfloat16", "float16"):
        return "float32"
    return dtype


def _chunks(requests: list[SampleRequest], size: int) -> Iterator[list[SampleRequest]]:
    """Consecutive runs of at most ``size`` requests with equal ``n`` (one generate call each)."""
    chunk: list[SampleRequest] = []
    for request in requests:
        if chunk and (len(chunk) == size or request.n != chunk[0].n):
            yield chunk
            chunk = []
        chunk.append(request)
    if chunk:
        yield chunk


# ---------------------------------------------------------------- vLLM: request construction


def vllm_sampling_kwargs(generation: GenerationConfig, n: int, grammar: str | None,
                         seed: int | None = None) -> dict[str, Any]:
    """``SamplingParams(**kwargs)`` for one request; ``structured_outputs`` is a plain dict
    here (``VLLMSampler`` turns it into ``StructuredOutputsParams``)."""
    kwargs: dict[str, Any] = dict(
        n=n,
        temperature=generation.temperature,
        top_p=generation.top_p,
        max_tokens=generation.max_new_tokens,
        stop=list(generation.stop),
        include_stop_str_in_output=False,
        seed=generation.seed if seed is None else seed,
        skip_special_tokens=True,
    )
    if grammar is not None:
        kwargs["structured_outputs"] = {"grammar": grammar}
    return kwargs


def vllm_engine_kwargs(generator: GeneratorConfig, adapter: Path | None, *, model: str | None = None,
                       structured: bool = False) -> dict[str, Any]:
    """``vllm.LLM(**kwargs)``; ``model`` overrides ``generator.model`` (a resolved local folder)."""
    kwargs: dict[str, Any] = dict(
        model=model or generator.model,
        dtype=generator.dtype,
        tensor_parallel_size=generator.tensor_parallel_size,
        gpu_memory_utilization=generator.gpu_memory_utilization,
        max_model_len=generator.max_model_len,
        enable_lora=adapter is not None,
    )
    if adapter is not None:
        kwargs.update(max_lora_rank=vllm_lora_rank(adapter_rank(adapter)), max_loras=1)
    if structured:
        kwargs["structured_outputs_config"] = {"backend": "xgrammar"}  # the backend the tests verify
    return kwargs


def lora_request_args(adapter: Path) -> tuple[str, int, str]:
    """``LoRARequest(*args)``: the previous epoch's adapter folder, served as is."""
    return (LORA_NAME, LORA_ID, str(adapter))


def adapter_rank(adapter: Path) -> int:
    """The LoRA rank ``r`` written in a PEFT adapter folder."""
    config = Path(adapter) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["r"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{adapter}: not a PEFT LoRA adapter folder ({exc})") from None


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")


# ---------------------------------------------------------------- vLLM: the engine


class VLLMSampler(Sampler):
    """vLLM offline engine; the adapter (if any) is attached to every request."""

    def __init__(self, generator: GeneratorConfig, generation: GenerationConfig, *, cache_dir: str | Path,
                 adapter: Path | None = None, grammar: str | None = None) -> None:
        super().__init__()
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from scoreflow.models import resolve_model

        self.generator, self.generation, self.grammar = generator, generation, grammar
        model = str(resolve_model(generator.model, cache_dir))
        self.llm = LLM(**vllm_engine_kwargs(generator, adapter, model=model, structured=grammar is not None))
        self.lora = LoRARequest(*lora_request_args(adapter)) if adapter is not None else None
        self.tokenizer = self.llm.get_tokenizer()

    def _sample(self, requests: list[SampleRequest], default_seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        prompts, params = [], []
        for request in requests:
            kwargs = vllm_sampling_kwargs(self.generation, request.n, self.grammar,
                                          request.seed if request.seed is not None else default_seed)
            if "structured_outputs" in kwargs:
                kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
            params.append(SamplingParams(**kwargs))
            prompts.append({"prompt_token_ids": prompt_token_ids(self.tokenizer, request.prompt)})
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        return [[self._sample_of(o, len(out.prompt_token_ids)) for o in out.outputs] for out in outputs]

    def _sample_of(self, output: Any, prompt_tokens: int) -> Sample:
        text, _ = cut_at_stop(output.text, self.generation.stop)  # vLLM already drops the stop string
        return Sample(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(output.token_ids))

    def close(self) -> None:
        import gc

        self.llm = None  # type: ignore[assignment]
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


# ---------------------------------------------------------------- factory


def make_sampler(generator: GeneratorConfig, generation: GenerationConfig, *, cache_dir: str | Path,
                 adapter: Path | None, grammar: str | None) -> Sampler:
    """The configured backend. ``adapter``: a PEFT folder to serve on top of the base model
    (None: base model, or a merged model folder named by ``generator.model``)."""
    if generator.backend == "vllm":
        return VLLMSampler(generator, generation, cache_dir=cache_dir, adapter=adapter, grammar=grammar)
    if generator.backend == "transformers":
        return TransformersSampler.load(generator, generation, cache_dir=cache_dir, adapter=adapter, grammar=grammar)
    raise ValueError(f"unknown generator backend {generator.backend!r}")
