"""The solver model: loading, one-at-a-time sampling with its cache, and beam search.

The original generates with batch size 1 and ``num_return_sequences`` 1 (FTTT_SPEC 2),
reseeding per question, so a question's attempts are a fixed function of the seed;
this wrapper keeps that (a batch would change the random stream). ``generate`` can
hand back the ``DynamicCache`` that ``model.generate`` built: it covers the input and
every sampled token but the last, which is what FTTT's training step continues from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fttt.config import FtttConfig, SamplingSettings
from scoreflow.errors import ScoreFlowError


@dataclass
class Generation:
    """One sampled continuation."""

    ids: list[int]  # the new tokens (the final end-of-turn included when one was sampled)
    text: str  # decoded, special tokens kept or dropped as the method asked
    finished: bool  # ended with an EOS id (False: cut at max_new_tokens)
    seconds: float
    cache: Any = None  # DynamicCache over input + ids[:-1] (keep_cache=True)

    @property
    def new_tokens(self) -> int:
        return len(self.ids)


def load_policy(config: FtttConfig) -> Policy:
    """The configured model in the configured dtype (explicit: fp32 is the paper's)."""
    from scoreflow.models import default_device, load_causal_lm

    device = default_device() if config.model.device == "auto" else config.model.device
    try:
        model, tokenizer = load_causal_lm(config.model.name, config.cache_dir, dtype=config.model.dtype, device=device)
    except OSError as exc:
        raise ScoreFlowError(f"model.name {config.model.name!r}: cannot be loaded ({str(exc).splitlines()[0]})") from None
    return Policy(model, tokenizer, config.sampling)  # (grad stays on: generation runs under no_grad itself)


def fingerprint(model: Any) -> str:
    """A short hash of the model's config and a few of its weights: a hard-question filter
    or a resumed run can tell another model (or another dtype) from this one."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    params = list(model.named_parameters())
    for name, param in (params[0], params[len(params) // 2], params[-1]):
        digest.update(name.encode())
        digest.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class Policy:
    """A causal LM with the original's decoding settings."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        eos = model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        self.eos_ids = frozenset(i for i in ids if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))

    @property
    def device(self) -> Any:
        return self.model.device

    def generate(
        self,
        input_ids: list[int],
        *,
        greedy: bool = False,
        keep_cache: bool = False,
        skip_special_tokens: bool = False,
        max_new_tokens: int | None = None,
        model: Any = None,
        past_key_values: Any = None,
    ) -> Generation:
        """One continuation of ``input_ids`` (T = 0 means greedy, as in the original).

        ``past_key_values``: a cache over a prefix of ``input_ids`` (a previous turn's
        ``cache``), so only the rest is encoded, as the original's Revision reuses its
        cache across turns; it is extended in place."""
        kwargs = self._decoding(greedy)
        if past_key_values is not None:
            if past_key_values.get_seq_length() >= len(input_ids):
                raise ValueError("past_key_values must cover a strict prefix of input_ids")
            kwargs["past_key_values"] = past_key_values
        start = time.perf_counter()
        out = self._generate(input_ids, model=model, max_new_tokens=max_new_tokens, num_return_sequences=1,
                             return_dict_in_generate=True, use_cache=True, **kwargs)
        (generation,) = self._rows(out.sequences, len(input_ids), skip_special_tokens, time.perf_counter() - start)
        generation.cache = out.past_key_values if keep_cache else None
        return generation

    def samples(self, input_ids: list[int], n: int, *, skip_special_tokens: bool = False) -> list[Generation]:
        """``n`` independent samples of ``input_ids`` in one batch (``methods.sample_batch``;
        the original draws them one call at a time, which ``n`` = 1 reproduces exactly)."""
        if n == 1:
            return [self.generate(input_ids, skip_special_tokens=skip_special_tokens)]
        start = time.perf_counter()
        out = self._generate(input_ids, num_return_sequences=n, **self._decoding(False))
        return self._rows(out, len(input_ids), skip_special_tokens, (time.perf_counter() - start) / n)

    def beams(self, input_ids: list[int], width: int, *, max_new_tokens: int | None = None) -> tuple[list[Generation], int]:
        """``width`` beams returned in rank order (deterministic). On a CUDA out-of-memory
        error the width is halved and the search redone, as the original does; the width
        that ran is returned (and recorded by the caller). At width 0 it fails."""
        import torch

        while width >= 1:
            start = time.perf_counter()
            try:
                out = self._generate(input_ids, max_new_tokens=max_new_tokens, num_beams=width,
                                     num_return_sequences=width, do_sample=False)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                width //= 2
                continue
            return self._rows(out, len(input_ids), True, (time.perf_counter() - start) / width), width
        raise ScoreFlowError("beam search ran out of GPU memory even at one beam")

    def _generate(self, input_ids: list[int], *, model: Any = None, max_new_tokens: int | None = None,
                  **kwargs: Any) -> Any:
        """``model.generate`` on one unpadded prompt, without autograd."""
        import torch

        inputs = torch.tensor([input_ids], device=self.device)
        with torch.no_grad():
            return (model if model is not None else self.model).generate(
                input_ids=inputs, attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_new_tokens or self.sampling.max_new_tokens, pad_token_id=self.pad_id, **kwargs,
            )

    def _rows(self, sequences: Any, prompt_length: int, skip_special_tokens: bool, seconds: float) -> list[Generation]:
        """Each returned row's new tokens (padding after the first EOS dropped), decoded."""
        generations = []
        for row in sequences:
            ids = _strip_padding(row[prompt_length:].tolist(), self.eos_ids, self.pad_id)
            generations.append(Generation(
                ids=ids, text=self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens),
                finished=bool(ids) and ids[-1] in self.eos_ids, seconds=seconds,
            ))
        return generations

    def _decoding(self, greedy: bool) -> dict[str, Any]:
        if greedy or self.sampling.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        # top_k stays the model's generation default (50 unless its generation_config says
        # otherwise), as in the original, which sets only temperature and top_p.
        return {"do_sample": True, "temperature": self.sampling.temperature, "top_p": self.sampling.top_p}


def _strip_padding(ids: list[int], eos_ids: frozenset[int], pad_id: int) -> list[int]:
    """Drop what ``generate`` appends after the first EOS of a row (padding); keep the EOS."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    while ids and ids[-1] == pad_id and pad_id not in eos_ids:
        ids = ids[:-1]
    return ids
