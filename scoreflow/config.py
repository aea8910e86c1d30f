"""Typed configuration: every number of the method in one place.

The dataclass defaults are the paper's setting (SPEC sections 1, 3, 4, 6, 7);
``config/scoreflow.yaml`` spells them out and a test keeps the two identical.
A YAML file and ``--set dotted.key=value`` overrides are merged onto the defaults;
unknown keys, wrong types and out-of-range values fail at load time with the key's
path. Secrets never live here: the executor names the environment variable that
holds its API key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from scoreflow.errors import ScoreFlowError
from scoreflow.sandbox import SandboxSettings

DATASETS: tuple[str, ...] = ("HumanEval", "MBPP", "GSM8K", "MATH", "DROP", "HotpotQA")


def _num(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A field with an inclusive range the loader checks."""
    meta: dict[str, float] = {}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class GeneratorConfig:
    """The workflow-writing LLM (fine-tuned with LoRA across epochs)."""

    model: str = "meta-llama/Llama-3.1-8B-Instruct"  # hub name or local folder
    backend: Literal["vllm", "transformers"] = "vllm"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int = _num(10000, 256)
    tensor_parallel_size: int = _num(1, 1)
    gpu_memory_utilization: float = _num(0.9, 0.05, 1.0)
    serve_adapter: bool = True  # False: merge the adapter into a full copy for vLLM
    batch_size: int = _num(16, 1)  # transformers backend: prompts per generate call


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling of candidate workflows (SPEC sections 1 and 4)."""

    k: int = _num(8, 1)  # workflows per validation problem
    inference_k: int = _num(1, 1)  # workflows per test problem
    temperature: float = _num(0.2, 0.0, 2.0)
    top_p: float = _num(0.95, 0.0, 1.0)
    max_new_tokens: int = _num(1000, 1)
    stop: tuple[str, ...] = ("</graph>",)
    chat_template: bool = False  # False: the raw completion prompt the original sends; True: chat-formatted
    grammar: bool = False  # grammar-constrained decoding (the paper samples freely)
    grammar_min_calls: int | None = _num(None, 1, 8)  # calls before return; None: 2 where the template check applies, else 1
    max_resample_rounds: int = _num(500, 0)  # re-sampling rounds for invalid places (the original's 500)
    resample_time_limit_s: float | None = _num(None, 1.0)  # no new round after this long per chunk; None: no cap
    seed: int = _num(0, 0)
    problem_ids: tuple[str, ...] = ()  # only these problems of each split (smoke runs); empty: all
    max_problems: int | None = _num(None, 1)  # only the first N problems of a split (smoke runs)
    chunk_problems: int = _num(16, 1)  # problems sampled together; also the resume granularity


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens."""

    input: float = _num(0.0, 0.0)
    output: float = _num(0.0, 0.0)


@dataclass(frozen=True)
class ExecutorConfig:
    """The LLM that runs the workflows' operator calls."""

    backend: Literal["openai", "local"] = "openai"
    model: str = "gpt-4o-mini"
    base_url: str | None = None  # None: the OpenAI API; any OpenAI-compatible server
    api_key_env: str = "OPENAI_API_KEY"  # the variable's *name*; the key stays in the environment
    temperature: float = _num(0.0, 0.0, 2.0)
    system_message: str | None = "You are a helpful assistant."  # MetaGPT's default on every call; null: none
    max_tokens: int | None = _num(4096, 1)  # MetaGPT sends 4096
    max_request_chars: int | None = _num(200_000, 1000)  # longer requests are cut in the middle (recorded)
    concurrency: int = _num(50, 1)  # requests out at once; a local server: its number of slots
    request_timeout_s: float = _num(600.0, 0.1)  # MetaGPT's 600 s
    max_retries: int = _num(6, 0)
    backoff_initial_s: float = _num(1.0, 0.0)
    backoff_max_s: float = _num(60.0, 0.0)
    cache: bool = True  # SQLite reply cache in the workspace for temperature-0 calls
    prices: dict[str, ModelPrice] = field(
        default_factory=lambda: {
            "gpt-4o-mini": ModelPrice(0.15, 0.60),
            "gpt-4o": ModelPrice(2.50, 10.00),
            "deepseek-chat": ModelPrice(0.27, 1.10),
        }
    )


@dataclass(frozen=True)
class OperatorConfig:
    """Bounds inside the operators (SPEC section 3)."""

    programmer_time_limit_s: float = _num(30.0, 0.1)
    programmer_max_tries: int = _num(3, 1)  # write-and-run rounds with the error as feedback
    programmer_attempts: int = _num(3, 1)  # the whole operator again on an exception (the original's @retry(3))
    programmer_retry_wait_s: float = _num(2.0, 0.0)  # between those attempts (wait_fixed(2))


@dataclass(frozen=True)
class EvaluationConfig:
    """Scoring runs (SPEC sections 1 and 2)."""

    vali_num: int = _num(3, 1)  # runs per workflow; its score is their mean
    inference_runs: int | None = _num(None, 1)  # runs per test workflow; None: vali_num (the original)
    max_run_retries: int = _num(5, 0)  # a raising or timed-out run is retried this often
    runs_in_flight: int | None = _num(None, 1)  # runs admitted at once; None: from the concurrency (runs_admitted)
    limit_clock: Literal["work", "wall"] = "work"  # what a time limit counts; wall: queueing too (the original)
    max_requests_per_attempt: int = _num(50, 1)  # executor requests one attempt of a workflow may send
    max_requests_per_run: int = _num(100, 1)  # requests of all attempts of one scoring run together
    max_infra_failures: int = _num(3, 1)  # executor failures in a row (no run finishing between) that stop a stage


def runs_admitted(config: Config) -> int:
    """Runs in flight at once: enough to keep every executor slot busy while some runs
    do their own work (interpreter, sandbox, scoring), and no more, so that memory does
    not grow with a stage's size."""
    explicit = config.evaluation.runs_in_flight
    if explicit is not None:
        return explicit
    return math.ceil(1.25 * config.executor.concurrency) + config.sandbox.workers


@dataclass(frozen=True)
class ScoringConfig:
    """Benchmark rules where the original's behaviour and ours differ (docs/fidelity.md)."""

    math_boxed: Literal["original", "balanced"] = "original"  # which \\boxed{} is the answer (original: its regex, any depth)
    judge_verdict: Literal["exact", "last_digit"] = "exact"  # exact: the stripped reply must be "1" (the original)
    public_tests: Literal["original", "matched"] = "original"  # Test operator's asserts: the original's lookup, or ours


@dataclass(frozen=True)
class PreferenceConfig:
    """Pair sampling (SPEC section 6): probability proportional to (s_w - s_l) ** alpha."""

    alpha: float = _num(3.0, 0.0)
    seed: int = _num(0, 0)


@dataclass(frozen=True)
class LoraConfig:
    r: int = _num(8, 1)
    alpha: int = _num(16, 1)
    dropout: float = _num(0.01, 0.0, 1.0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class TrainingConfig:
    """Score-DPO fine-tuning of the generator's LoRA (SPEC section 7)."""

    loss: Literal["score_dpo", "dpo", "sft"] = "score_dpo"
    score_transform: Literal["identity"] = "identity"  # f in the Score-DPO loss
    beta: float = _num(0.1, 0.0)
    learning_rate: float = _num(1e-6, 0.0)
    batch_size: int = _num(1, 1)
    gradient_accumulation_steps: int = _num(1, 1)
    num_epochs: float = _num(1.0, 0.0)
    max_length: int | None = _num(None, 1)  # None: no truncation (the paper's setting)
    precompute_ref_log_probs: bool = False
    gradient_checkpointing: bool = True  # TRL's default: memory for time (an 8B model on one GPU)
    bf16: bool | None = None  # None: bf16 on GPU, fp32 on CPU
    merge_adapter: bool = False  # also write a merged full model copy
    seed: int = _num(0, 0)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class DatasetSettings:
    """Per-dataset numbers of SPEC sections 3, 4 and 6."""

    similarity_threshold: float = _num(0.75, 0.0)  # body vs template; >= 1 disables the check
    workflow_time_limit_s: float = _num(120.0, 0.1)
    trial_time_limit_s: float = _num(60.0, 0.1)
    check_time_limit_s: float = _num(10.0, 0.1)  # code: hidden tests; MATH: symbolic check
    n_pairs: int = _num(2000, 1)  # preference pairs resampled with replacement
    test_max_rounds: int = _num(10, 1)  # code: repair rounds of the Test operator (the original: 10, MBPP 6)
    extra_operators: tuple[str, ...] = ()  # offered besides the original's set (e.g. Review for code)


def _default_datasets() -> dict[str, DatasetSettings]:
    code = dict(workflow_time_limit_s=240.0, trial_time_limit_s=120.0, similarity_threshold=1.1)
    return {
        "HumanEval": DatasetSettings(**code, check_time_limit_s=40.0, n_pairs=600),
        "MBPP": DatasetSettings(**code, check_time_limit_s=15.0, test_max_rounds=6),
        "GSM8K": DatasetSettings(similarity_threshold=0.8),
        "MATH": DatasetSettings(similarity_threshold=0.75),
        "DROP": DatasetSettings(similarity_threshold=0.75),
        "HotpotQA": DatasetSettings(similarity_threshold=0.75),
    }


@dataclass(frozen=True)
class Config:
    """The whole configuration of one run."""

    workspace: str = "workspace"  # epoch folders land in <workspace>/<dataset>/epoch_<i>
    data_dir: str = "data/prepared"  # prepared splits (python -m data.prepare)
    cache_dir: str = ".cache"  # converted local models and similar reusable files
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    operators: OperatorConfig = field(default_factory=OperatorConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    datasets: dict[str, DatasetSettings] = field(default_factory=_default_datasets)

    def dataset(self, name: str) -> DatasetSettings:
        """Settings of one dataset; an unknown name is a user error."""
        if name not in self.datasets:
            raise ScoreFlowError(f"unknown dataset {name!r} (expected one of: {', '.join(DATASETS)})")
        return self.datasets[name]


# ---------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None = None, overrides: typing.Sequence[str] = (),
                *, root: type = Config) -> Any:
    """Defaults, then the YAML file, then ``dotted.key=value`` overrides, validated.

    ``root`` is the top-level dataclass: ScoreFlow's ``Config`` or FTTT's ``FtttConfig``."""
    tree = to_dict(root())
    if path is not None:
        _merge(tree, _read_yaml(Path(path)), source=str(path), prefix="")
    for item in overrides:
        key, value = _parse_override(item)
        _merge(tree, _nest(key, value), source=f"--set {item}", prefix="")
    return _build(root, tree, source=str(path) if path else "config", prefix="")


def to_dict(config: Any) -> Any:
    """A plain, YAML/JSON-ready snapshot (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScoreFlowError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ScoreFlowError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScoreFlowError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ScoreFlowError(f"--set {item}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(dotted.split(".")):
        tree = {part: tree}
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any], *, source: str, prefix: str) -> None:
    """Deep-merge ``update`` into ``base``; keys of fixed sections must already exist."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ScoreFlowError(f"{source}: {path}: keys must be strings")
        if key not in base and not _is_open_mapping(prefix):
            raise ScoreFlowError(f"{source}: {path}: unknown key")
        if key in base and isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, source=source, prefix=f"{path}.")
        else:
            base[key] = value


def _is_open_mapping(prefix: str) -> bool:
    """Mappings whose keys the user names (model prices, and the fields of a price being
    built up by several --set items; its dataclass checks them); datasets are a fixed set."""
    return prefix == "executor.prices." or (prefix.startswith("executor.prices.") and prefix.count(".") == 3)


def _build(cls: type, data: Any, *, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ScoreFlowError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if f.name not in data:
            continue
        value = _coerce(hints[f.name], data[f.name], source=source, path=path)
        _check_range(f, value, source=source, path=path)
        values[f.name] = value
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ScoreFlowError(f"{source}: {prefix}{unknown[0]}: unknown key")
    return cls(**values)


def _coerce(hint: Any, value: Any, *, source: str, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for arg in inner:
            try:
                return _coerce(arg, value, source=source, path=path)
            except ScoreFlowError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ScoreFlowError(f"{source}: {path}: expected one of {', '.join(map(str, args))} (got {value!r})")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source=source, prefix=f"{path}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ScoreFlowError(f"{source}: {path}: expected a list (got {value!r})")
        return tuple(_coerce(args[0], v, source=source, path=f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ScoreFlowError(f"{source}: {path}: expected a mapping (got {value!r})")
        return {str(k): _coerce(args[1], v, source=source, path=f"{path}.{k}") for k, v in value.items()}
    return _coerce_scalar(hint, value, source=source, path=path)


def _coerce_scalar(hint: Any, value: Any, *, source: str, path: str) -> Any:
    if hint is float and isinstance(value, str):
        value = _yaml_float(value)  # YAML 1.1 reads "1e-6" (no dot) as a string
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field {path} has an unsupported type {hint!r}")
    if not ok:
        raise ScoreFlowError(f"{source}: {path}: expected {_type_name(hint)} (got {value!r})")
    return float(value) if hint is float else value


def _yaml_float(text: str) -> Any:
    """A numeric string as a float; anything else (and nan/inf) stays text and fails the type check."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _type_name(hint: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _check_range(f: dataclasses.Field, value: Any, *, source: str, path: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and value < lo:
        raise ScoreFlowError(f"{source}: {path}: must be >= {lo} (got {value})")
    if hi is not None and value > hi:
        raise ScoreFlowError(f"{source}: {path}: must be <= {hi} (got {value})")



def main(argv: typing.Sequence[str] | None = None) -> int:
    """``python -m scoreflow.config``: print the resolved configuration as YAML."""
    from scoreflow.cli import config_from_args, make_parser

    parser = make_parser("Print the configuration after the file and --set overrides.", dataset=False)
    print(dump_yaml(config_from_args(parser.parse_args(argv))), end="")
    return 0


if __name__ == "__main__":
    from scoreflow.cli import run

    run(main)
