"""The ``local`` executor backend: an in-process transformers model, no network, no key.

Workflows issue many operator calls at once from asyncio tasks. Running them one
``generate`` at a time would leave a CPU (let alone a GPU) mostly idle, so one
worker thread owns the model and serves the calls in batches: it takes what is
pending (up to ``max_batch`` requests, waiting at most ``batch_window_s`` for more),
groups them by sampling parameters, left-pads each group and runs one ``generate``
per group. torch releases the GIL in its kernels, so the event loop stays
responsive meanwhile. The model is loaded by the worker on the first call, so a run
served entirely from the reply cache never loads it.

Temperature 0 is greedy decoding. In float32 on CPU the same prompt gave the same
text alone and batched with others in our checks (tests/test_local_backend.py);
this is not a guarantee on every device and dtype, since padding changes matmul
shapes and a near-tie between two tokens can flip. Sampled replies
(temperature > 0) are not reproducible: they share torch's global generator.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import StoppingCriteria, StoppingCriteriaList

from scoreflow.executor.client import ChatClient, Completion, ExecutorUnavailable, Message, SamplingParams, Usage, UsageMeter

from scoreflow.models import load_causal_lm
from scoreflow.runclock import current_clock

if TYPE_CHECKING:
    import torch

    from scoreflow.config import ExecutorConfig
    from scoreflow.executor.cache import ReplyCache

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_NEW_TOKENS = 512

Result = Completion


@dataclass
class _Request:
    """One pending call and where to deliver its reply."""

    messages: list[Message]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Result]
    work_s: float = 0.0  # this request's share of its batch's compute (set by the worker)


def _deliver(request: _Request, result: Result | None, error: BaseException | None) -> None:
    """Resolve a caller's future from the worker thread (skipped if the caller gave up)."""

    def settle() -> None:
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(result)  # type: ignore[arg-type]

    try:
        request.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's event loop is closed: nobody is waiting
        pass


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the earliest stop string (which, as with OpenAI, is not returned)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


class LocalChatClient(ChatClient):
    """A chat client over a transformers causal LM in this process, batching concurrent calls."""

    backend = "local"

    def __init__(
        self,
        model: str,
        *,
        cache_dir: str | Path,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        cache: ReplyCache | None = None,
        meter: UsageMeter | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_window_s: float = 0.01,
        default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        dtype: str = "auto",
        device: str | None = None,
        system_message: str | None = None,
    ) -> None:
        super().__init__(
            model, temperature=temperature, max_tokens=max_tokens, cache=cache, meter=meter, system_message=system_message
        )
        self.cache_dir = Path(cache_dir)
        self.max_batch = max(1, max_batch)
        self.batch_window_s = batch_window_s
        self.default_max_new_tokens = default_max_new_tokens
        self.dtype = dtype
        self.device = device
        self.batches_run = 0  # generate calls so far (tests check that calls were batched)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._lm: Any = None
        self._tokenizer: Any = None
        self._load_error: BaseException | None = None

    @classmethod
    def from_config(
        cls,
        config: ExecutorConfig,
        *,
        cache_dir: str | Path,
        cache: ReplyCache | None = None,
        meter: UsageMeter | None = None,
    ) -> LocalChatClient:
        """The configured executor; a batch never exceeds the configured concurrency."""
        return cls(
            config.model,
            cache_dir=cache_dir,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            cache=cache,
            meter=meter,
            max_batch=min(config.concurrency, DEFAULT_MAX_BATCH),
            system_message=config.system_message,
        )

    async def _complete(self, messages: list[Message], params: SamplingParams) -> Result:
        """Queue the call for the worker. For a timed run the wait in the queue and the batch
        are not counted as such; the run is charged its share of the batch's compute."""
        if self._closed:
            raise ExecutorUnavailable(f"local model {self.model}: the client is closed")
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        request = _Request(messages, params, loop, loop.create_future())
        self._queue.put(request)
        clock = current_clock()
        if clock is None:
            return await request.future
        try:
            with clock.queued():
                return await request.future
        finally:
            clock.charge(request.work_s)

    async def aclose(self) -> None:
        """Stop the worker after the calls already queued, and drop the model."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
        self._lm = self._tokenizer = None

    # --- the worker thread -------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=f"local-lm:{self.model}", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        """Load the model, then serve batches until the stop sentinel."""
        try:
            self._lm, self._tokenizer = load_causal_lm(
                self.model, self.cache_dir, dtype=self.dtype, device=self.device
            )
        except Exception as exc:  # every call will report it
            self._load_error = exc
        while (batch := self._collect()) is not None:
            self._run(batch)
        self._fail_pending()

    def _collect(self) -> list[_Request] | None:
        """The next batch: what is queued now plus what arrives within the window; None = stop."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:  # serve this batch, stop at the next collect
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """One generate per group of identical sampling parameters; errors go to that group's callers."""
        groups: dict[SamplingParams, list[_Request]] = {}
        for request in batch:
            if not request.future.done():  # the caller was cancelled meanwhile
                groups.setdefault(request.params, []).append(request)
        for params, group in groups.items():
            started = time.perf_counter()
            try:
                if self._load_error is not None:
                    raise self._load_error
                results = self._generate(group, params)
            except Exception as exc:
                error = ExecutorUnavailable(f"local model {self.model}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                for request in group:
                    _deliver(request, None, error)
                continue
            _share_batch_time(group, results, time.perf_counter() - started)
            for request, result in zip(group, results):
                _deliver(request, result, None)

    def _fail_pending(self) -> None:
        error = ExecutorUnavailable(f"local model {self.model}: the client is closed")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _deliver(item, None, error)

    # --- generation ----------------------------------------------------------------------

    def _generate(self, group: list[_Request], params: SamplingParams) -> list[Result]:
        """Left-pad the chat prompts (each cut to the model's context), generate once, and
        split the rows into replies. Rows whose callers all gave up stop the batch early."""
        tokenizer = self._tokenizer
        max_new = params.max_tokens or self.default_max_new_tokens
        prompts = [self._prompt_ids(r.messages, max_new) for r in group]
        enc = tokenizer.pad({"input_ids": [ids for ids, _ in prompts]}, padding=True, return_tensors="pt").to(self._lm.device)
        kwargs = self._generation_kwargs(params)
        kwargs["stopping_criteria"] = StoppingCriteriaList([_AllAbandoned(group)])
        output = self._lm.generate(**enc, **kwargs)
        self.batches_run += 1
        new_tokens = output[:, enc["input_ids"].shape[1] :].cpu()
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        return [self._reply(row, n, params, cut) for row, n, (_, cut) in zip(new_tokens, prompt_lengths, prompts)]

    def _prompt_ids(self, messages: list[Message], max_new_tokens: int) -> tuple[list[int], int]:
        """The chat prompt's token ids, its middle cut so that prompt + reply fit the context."""
        text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        room = max(16, self.context_tokens() - max_new_tokens)
        if len(ids) <= room:
            return ids, 0
        head = room // 4  # the start says what to do, the end holds the question and the answer cue
        return ids[:head] + ids[len(ids) - (room - head):], len(ids) - room

    def context_tokens(self) -> int:
        """The model's context length (positions), from its config."""
        config = self._lm.config
        return int(getattr(config, "max_position_embeddings", 0) or getattr(self._tokenizer, "model_max_length", 2048))

    def _generation_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        """Greedy at temperature 0, else plain temperature/top-p sampling (no top-k, as with OpenAI)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens or self.default_max_new_tokens,
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if params.temperature == 0.0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            top_p = 1.0 if params.top_p is None else params.top_p
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=top_p, top_k=0)
        if params.stop:  # stop rows early; the text is cut in _reply
            kwargs.update(stop_strings=list(params.stop), tokenizer=self._tokenizer)
        return kwargs

    def _end_ids(self) -> set[int]:
        """Token ids that end a row: the model's EOS ids and the pad id filling finished rows."""
        eos = self._lm.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        ids.add(self._tokenizer.pad_token_id)
        return ids

    def _reply(self, row: torch.Tensor, prompt_tokens: int, params: SamplingParams, truncated: int) -> Result:
        """A row's text up to its end token, cut at a stop string; usage without padding."""
        end_ids = self._end_ids()
        tokens = row.tolist()
        length = next((i for i, t in enumerate(tokens) if t in end_ids), len(tokens))
        text = self._tokenizer.decode(tokens[:length], skip_special_tokens=True)
        return Completion(cut_at_stop(text, params.stop), Usage(int(prompt_tokens), length), truncated)


class _AllAbandoned(StoppingCriteria):
    """Stops a batch once every caller in it gave up (its run hit its time limit)."""

    def __init__(self, group: list[_Request]) -> None:
        self.group = group

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = all(r.future.done() for r in self.group)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _share_batch_time(group: list[_Request], results: list[Result], seconds: float) -> None:
    """Each request's share of a batch's compute, by its tokens (what it would cost alone, roughly)."""
    weights = [r.usage.total_tokens or 1 for r in results]
    total = sum(weights)
    for request, weight in zip(group, weights):
        request.work_s = seconds * weight / total
