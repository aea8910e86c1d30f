"""The embedded model (GGUF -> transformers folder) and the batching local executor backend.

These load SmolLM2-135M-Instruct for real. The converted folder lives in the repo's
git-ignored ``.cache/tests`` so the ~25-60 s conversion happens once per machine, not
once per run; everything else keeps replies short to stay CPU-cheap.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from scoreflow import models
from scoreflow.config import ExecutorConfig
from scoreflow.errors import ScoreFlowError
from scoreflow.executor.client import ExecutorError, SamplingParams
from scoreflow.executor.local_backend import LocalChatClient, cut_at_stop

pytestmark = pytest.mark.slow

MODEL = models.DEFAULT_EMBEDDED_MODEL
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tests"
PROMPTS = [
    "What is 2+3?",
    "Name the capital of France.",
    "Write a Python function that adds two numbers.",
    "What is 7 times 8?",
    "Translate 'hello' into Spanish.",
    "List three colors.",
    "Is 17 a prime number?",
    "Who wrote Hamlet?",
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@dataclass(frozen=True)
class Converted:
    folder: Path
    built_now: bool  # converted in this session (convert_gguf then checked the logits itself)


@pytest.fixture(scope="session")
def converted_model() -> Converted:
    """The embedded model's folder, built on the first run on this machine."""
    built_before = models.is_complete(models.converted_folder(MODEL, CACHE))
    start = time.perf_counter()
    folder = models.resolve_model(MODEL, CACHE)
    print(f"\nresolve_model({MODEL!r}): {time.perf_counter() - start:.1f} s")
    assert isinstance(folder, Path)
    return Converted(folder, built_now=not built_before)


@pytest.fixture(scope="session")
def converted(converted_model: Converted) -> Path:
    return converted_model.folder


@pytest.fixture(scope="module")
def client(converted: Path) -> Iterator[LocalChatClient]:
    """One client (one worker thread, one loaded model) for the module; each test runs its own loop."""
    chat = LocalChatClient(MODEL, cache_dir=CACHE, max_tokens=16, max_batch=8)
    yield chat
    asyncio.run(chat.aclose())


# --- resolving and converting -----------------------------------------------------------


def test_embedded_model_is_converted_once(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert converted == models.converted_folder(MODEL, CACHE)
    for name in ("config.json", "model.safetensors", "tokenizer.json", models.MARKER):
        assert (converted / name).is_file(), name
    assert not list(converted.parent.glob(f".{MODEL}.partial-*"))
    marker_mtime = (converted / models.MARKER).stat().st_mtime_ns

    def no_rebuild(*_: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "convert_gguf", no_rebuild)
    start = time.perf_counter()
    assert models.resolve_model(MODEL, CACHE) == converted
    assert time.perf_counter() - start < 0.5
    assert (converted / models.MARKER).stat().st_mtime_ns == marker_mtime
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"


def test_converted_folder_reloads_plainly_with_the_gguf_logits(converted_model: Converted) -> None:
    """Plain ``from_pretrained`` works and gives the GGUF model's exact logits.

    Loading the GGUF takes ~25 s; right after a conversion (which made this very
    comparison before renaming the folder into place) it is not repeated.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted, gguf = converted_model.folder, models.gguf_path(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    plain = AutoModelForCausalLM.from_pretrained(converted)
    assert plain.dtype == torch.float32
    assert sum(p.numel() for p in plain.parameters()) == 134_515_008
    if converted_model.built_now:
        return
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert torch.equal(models.probe_logits(plain, tokenizer), models.probe_logits(from_gguf, tokenizer))


def test_folders_and_hub_names_pass_through(tmp_path: Path) -> None:
    assert models.resolve_model(str(tmp_path), tmp_path / "cache") == tmp_path
    assert models.resolve_model("meta-llama/Llama-3.1-8B-Instruct", tmp_path) == "meta-llama/Llama-3.1-8B-Instruct"
    assert not (tmp_path / "cache").exists()


def fake_converter(calls: list[int], delay_s: float = 0.3):
    """A cheap stand-in for the GGUF conversion that is slow enough to overlap callers."""

    def convert(_source: Path, out: Path) -> None:
        calls.append(1)
        (out / "config.json").write_text("{}")
        time.sleep(delay_s)
        (out / "model.safetensors").write_text("weights")

    return convert


def test_concurrent_first_use_converts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(models, "convert_gguf", fake_converter(calls))
    results: list[Path | str] = []

    def resolve() -> None:
        folder = models.resolve_model(MODEL, tmp_path)
        assert (Path(folder) / "model.safetensors").read_text() == "weights"  # never half a folder
        results.append(folder)

    threads = [threading.Thread(target=resolve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert results == [models.converted_folder(MODEL, tmp_path)] * 4
    assert not list((tmp_path / "models").glob(".*partial*"))


def test_failed_conversion_leaves_nothing_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        models.resolve_model(MODEL, tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f"{MODEL}.lock"]
    calls: list[int] = []
    monkeypatch.setattr(models, "convert_gguf", fake_converter(calls, 0.0))
    assert models.is_complete(Path(models.resolve_model(MODEL, tmp_path)))
    assert calls == [1]


def test_missing_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.EMBEDDED_MODELS, "ghost", models.EmbeddedModel("no_such_pkg_xyz", "x.gguf"))
    with pytest.raises(ScoreFlowError, match="no_such_pkg_xyz"):
        models.resolve_model("ghost", tmp_path)


# --- the local backend ---------------------------------------------------------------------


def test_from_config() -> None:
    config = ExecutorConfig(backend="local", model=MODEL, max_tokens=64, concurrency=4)
    chat = LocalChatClient.from_config(config, cache_dir=CACHE)
    assert (chat.backend, chat.model, chat.max_tokens, chat.max_batch, chat.temperature) == ("local", MODEL, 64, 4, 0.0)
    assert chat._thread is None  # the model loads on the first call, not before


def test_answers_a_real_prompt_with_usage(client: LocalChatClient) -> None:
    before = client.meter.prompt_tokens
    reply = asyncio.run(client.chat(user("What is 2+3?"), max_tokens=24))
    assert "5" in reply.text  # SmolLM2 says "2 + 3 = 5"
    prompt = client._tokenizer.apply_chat_template(user("What is 2+3?"), add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(client._tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < reply.usage.completion_tokens < 24  # stopped at end of turn
    assert client.meter.prompt_tokens - before == reply.usage.prompt_tokens


def test_concurrent_calls_are_batched_and_match_one_at_a_time(client: LocalChatClient) -> None:
    async def together() -> list[str]:
        replies = await asyncio.gather(*(client.chat(user(p)) for p in PROMPTS))
        return [r.text for r in replies]

    async def one_by_one() -> list[str]:
        return [(await client.chat(user(p))).text for p in PROMPTS]

    asyncio.run(client.chat(user("Hi"), max_tokens=2))  # warm up the kernels before timing
    start, batches = time.perf_counter(), client.batches_run
    batched = asyncio.run(together())
    batched_s, batch_calls = time.perf_counter() - start, client.batches_run - batches
    start, batches = time.perf_counter(), client.batches_run
    sequential = asyncio.run(one_by_one())
    print(f"\n8 calls batched: {batched_s:.1f} s in {batch_calls} generate; one at a time: {time.perf_counter() - start:.1f} s")
    assert batch_calls < len(PROMPTS)
    assert client.batches_run - batches == len(PROMPTS)
    assert batched == sequential
    assert "Paris" in batched[1]


def test_stop_strings_cut_the_reply(client: LocalChatClient) -> None:
    async def ask(stop: tuple[str, ...]) -> tuple[str, int]:
        text, usage, _ = await client._complete(user("List three colors."), SamplingParams(0.0, 40, stop=stop))
        return text, usage.completion_tokens

    (full, full_tokens), (cut, cut_tokens) = asyncio.run(_both(ask(()), ask(("2.",))))
    assert "2." in full  # "1. Red: ...\n2. Blue: ..."
    assert cut == full[: full.index("2.")]
    assert cut_tokens < full_tokens


async def _both(a, b):  # type: ignore[no-untyped-def]
    return await asyncio.gather(a, b)


def test_max_tokens_and_parameter_groups(client: LocalChatClient) -> None:
    async def run() -> list[tuple[str, int]]:
        calls = [client._complete(user("Who wrote Hamlet?"), SamplingParams(0.0, n)) for n in (3, 12, 3)]
        return [(text, usage.completion_tokens) for text, usage, _ in await asyncio.gather(*calls)]

    batches = client.batches_run
    (short, n_short), (longer, n_longer), again = asyncio.run(run())
    assert client.batches_run - batches == 2  # one generate per distinct max_tokens
    assert (n_short, n_longer) == (3, 12) and again == (short, n_short)
    assert longer.startswith(short) and len(short) < len(longer)


def test_sampling_runs(client: LocalChatClient) -> None:
    text, usage, _ = asyncio.run(client._complete(user("Name a fruit."), SamplingParams(0.8, 8, top_p=0.9)))
    assert 0 < usage.completion_tokens <= 8 and isinstance(text, str)


def test_generation_errors_reach_every_caller(client: LocalChatClient, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(client.chat(user("Hi"), max_tokens=1))  # make sure the model is loaded

    def boom(**_: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(client._lm, "generate", boom)
    failures = client.meter.failures

    async def run() -> list[BaseException | object]:
        return await asyncio.gather(*(client.chat(user(p)) for p in PROMPTS[:3]), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, ExecutorError) and "out of memory" in str(r) for r in results)
    assert client.meter.failures - failures == 3


def test_load_failure_is_an_executor_error_and_aclose_stops_the_worker(tmp_path: Path) -> None:
    broken = LocalChatClient(str(tmp_path), cache_dir=tmp_path)  # a folder without a model

    async def run() -> None:
        with pytest.raises(ExecutorError, match="local model"):
            await broken.chat(user("Hi"))
        await broken.aclose()
        with pytest.raises(ExecutorError, match="closed"):
            await broken.chat(user("Hi"))

    asyncio.run(run())
    assert broken._thread is not None and not broken._thread.is_alive()


def test_cut_at_stop() -> None:
    assert cut_at_stop("a</graph>b", ("</graph>",)) == "a"
    assert cut_at_stop("abcabc", ("c", "b")) == "a"
    assert cut_at_stop("abc", ()) == "abc"
    assert cut_at_stop("abc", ("x", "")) == "abc"


def test_load_causal_lm_with_an_adapter(converted: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    base, tokenizer = models.load_causal_lm(MODEL, CACHE, device="cpu")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None and not base.training
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(tmp_path / "adapter")
    model, _ = models.load_causal_lm(MODEL, CACHE, device="cpu", adapter=tmp_path / "adapter")
    assert isinstance(model, PeftModel) and not model.training
    enc = tokenizer(["Hi"], return_tensors="pt")
    assert model.generate(**enc, max_new_tokens=2, min_new_tokens=2, do_sample=False).shape[1] == enc["input_ids"].shape[1] + 2


def test_a_prompt_longer_than_the_context_is_cut_and_counted(client: LocalChatClient, monkeypatch) -> None:
    """The prompt's middle is cut so that prompt + reply fit the model's context (here set to
    300 tokens); the reply still comes, and the cut is counted."""
    monkeypatch.setattr(client, "context_tokens", lambda: 300)
    long_prompt = "Question: what colour is the sky? " + "Some unrelated filler text. " * 400 + "Answer in one word."
    done = asyncio.run(client._complete(user(long_prompt), SamplingParams(0.0, 8)))
    assert done.truncated_tokens > 1000 and done.usage.prompt_tokens <= 300 - 8
    before = client.meter.truncated_requests
    asyncio.run(client.chat(user(long_prompt + " "), max_tokens=8))
    assert client.meter.truncated_requests == before + 1


def test_a_run_is_charged_its_share_of_a_batch_not_the_queue(client: LocalChatClient) -> None:
    """Eight concurrent calls in one batch: each run's clock counts a share of the batch's
    time (about an eighth), not the whole wait."""
    from scoreflow.runclock import RunClock, _CURRENT

    async def one(i: int) -> float:
        clock = RunClock(600.0)
        _CURRENT.set(clock)  # this task's own context
        start = time.monotonic()
        await client.chat(user(f"Name a colour ({i})."), max_tokens=12)
        return clock.used_s() / (time.monotonic() - start)

    async def main() -> list[float]:
        return await asyncio.gather(*(one(i) for i in range(8)))

    shares = asyncio.run(main())
    assert sum(shares) == pytest.approx(1.0, abs=0.35) and max(shares) < 0.5
