"""FTTT's typed configuration (FTTT_SPEC sections 1, 2 and 6.5), on ScoreFlow's machinery.

The dataclass defaults are the paper's setting (Llama-3.1-8B-Instruct in float32, budget
32, T 0.6 / top-p 0.95, 2,048 new tokens, the 3 s judge); ``config/fttt.yaml`` spells
them out and a test keeps the two identical. ``--config`` / ``--set`` and the load-time
errors are ScoreFlow's (``scoreflow.config.load_config`` with ``root=FtttConfig``).
Every switch that reproduces one of the original's quirks says so where it is declared
and is recorded in each run's manifest (the whole config is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scoreflow.config import _num, load_config
from scoreflow.errors import ScoreFlowError
from scoreflow.sandbox import SandboxSettings

TASKS: tuple[str, ...] = ("MATH500", "GSM8K", "MBPP", "HumanEval")
METHODS: tuple[str, ...] = (
    "greedy", "revision", "beam_search", "best_of_n", "self_refine", "self_consistency", "fttt", "fttt_plus",
)
PAPER_SEEDS: tuple[int, ...] = (42, 85, 100)


@dataclass(frozen=True)
class ModelSettings:
    """The solver model (FTTT_SPEC 1.1)."""

    name: str = "meta-llama/Llama-3.1-8B-Instruct"  # hub name, local folder or embedded name
    arch: Literal["llama", "mistral", "other"] = "llama"  # selects the Mistral FTTT+ code LR and the Llama header quirk
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the paper's prelim runs in fp32; bf16 is the GPU switch
    device: str = "auto"  # auto: cuda when available, else cpu (transformers' default attention is SDPA, the original's)


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding (FTTT_SPEC section 2, common defaults)."""

    temperature: float = _num(0.6, 0.0, 2.0)
    top_p: float = _num(0.95, 0.0, 1.0)
    max_new_tokens: int = _num(2048, 1)


@dataclass(frozen=True)
class MethodSettings:
    """Budget and the baselines' own numbers (FTTT_SPEC 1.5, 2.2-2.6)."""

    budget: int = _num(32, 1)  # attempts per hard question (--num_trials 32)
    accounting: Literal["paper", "strict"] = "paper"  # paper: FTTT(+) skip unanswered/truncated attempts; strict: every generation counts
    beam_width: int | None = _num(None, 1)  # None: the budget (num_beams = 32)
    greedy_methods: tuple[str, ...] = ("greedy", "revision", "beam_search")  # run at T = 0 (the scripts' --temperature 0)
    revision_seed: int = 42  # revision.py and greedy hard-code seed 42
    self_consistency_votes: Literal["raw", "normalized"] = "raw"  # raw: the paper (un-normalised strings split the vote)
    sample_batch: int = _num(1, 1)  # Best-of-N / Self-Consistency samples per generate call; 1: the paper's (one at a time)


@dataclass(frozen=True)
class TTTSettings:
    """Test-time training (FTTT_SPEC 2.7-2.8; issue 18)."""

    lora_r: int = _num(4, 1)
    lora_alpha: int = _num(16, 1)
    lora_dropout: float = _num(0.05, 0.0, 1.0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = _num(1e-5, 0.0)
    mistral_code_plus_learning_rate: float = _num(2e-5, 0.0)  # Mistral FTTT+ on MBPP and HumanEval (fttt.sh L42-45)
    weight_decay: float = _num(0.0, 0.0)
    steps_per_failure: int = _num(1, 1)  # num_optim_step_per_sample
    reflection_coeff: float = _num(1.0, 0.0)  # FTTT+'s coeff
    dropout_during_generation: bool = True  # the original samples in train mode (LoRA dropout active)
    feedback_assistant_header: Literal["paper", "always"] = "paper"  # paper: none after the feedback turn (Llama)
    adapter_seed: int | None = None  # None: the question's seed initialises the adapter (set_seed then get_peft_model)


@dataclass(frozen=True)
class JudgeSettings:
    """How code is judged (FTTT_SPEC section 3)."""

    url: str | None = None  # None: in process through the sandbox; else a `python -m fttt.judge` service
    time_limit_s: float = _num(3.0, 0.1, 600.0)  # the original's 3 s
    attempts: int = _num(3, 1, 10)  # HTTP tries (sleeps 1 s, 3 s between them)
    request_timeout_s: float = _num(60.0, 1.0)


@dataclass(frozen=True)
class TaskSettings:
    """Which questions and how they are posed (FTTT_SPEC 1.2)."""

    mbpp_separator: Literal["literal", "newline"] = "literal"  # literal: the original's backslash-n quirk
    problem_ids: tuple[str, ...] = ()  # only these questions (smoke runs); empty: the whole split
    max_problems: int | None = _num(None, 1)
    use_hard_filter: bool = True  # run only on the questions greedy got wrong (python -m fttt.hard)


@dataclass(frozen=True)
class FtttConfig:
    """The whole configuration of one FTTT command."""

    workspace: str = "workspace/fttt"  # runs land in <workspace>/<model>/<dataset>/<method>_s<seed>/
    data_dir: str = "data/prepared/fttt"  # prepared test splits (python -m data.prepare --suite fttt)
    cache_dir: str = ".cache"
    model: ModelSettings = field(default_factory=ModelSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    methods: MethodSettings = field(default_factory=MethodSettings)
    ttt: TTTSettings = field(default_factory=TTTSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    seeds: tuple[int, ...] = PAPER_SEEDS


def load_fttt_config(path: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> FtttConfig:
    """Defaults, the YAML file, then ``--set`` overrides, validated (ScoreFlow's rules)."""
    return load_config(path, overrides, root=FtttConfig)


def check_task(name: str) -> str:
    if name not in TASKS:
        raise ScoreFlowError(f"--dataset: unknown FTTT dataset {name!r} (expected one of: {', '.join(TASKS)})")
    return name


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ScoreFlowError(f"--method: unknown method {name!r} (expected one of: {', '.join(METHODS)})")
    return name


def main(argv: list[str] | None = None) -> int:
    """``python -m fttt.config [--config F] [--set k=v] [--get dotted.key]``: the resolved
    configuration as YAML, or one value (lists space-separated, for shell loops)."""
    from scoreflow.cli import make_parser
    from scoreflow.config import dump_yaml, to_dict

    parser = make_parser("Print the FTTT configuration after the file and --set overrides.", dataset=False)
    parser.add_argument("--get", default=None, metavar="KEY", help="print only this dotted key")
    args = parser.parse_args(argv)
    config = load_fttt_config(args.config, args.overrides)
    if args.get is None:
        print(dump_yaml(config), end="")
        return 0
    value = to_dict(config)
    for part in args.get.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ScoreFlowError(f"--get {args.get}: unknown key")
        value = value[part]
    print(" ".join(map(str, value)) if isinstance(value, list) else value)
    return 0


if __name__ == "__main__":
    from scoreflow.cli import run

    run(main)
