"""The typed config loader: defaults, the paper's YAML, overrides and load-time errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scoreflow.config import Config, dump_yaml, load_config, to_dict
from scoreflow.errors import ScoreFlowError

ROOT = Path(__file__).resolve().parent.parent
PAPER_YAML = ROOT / "config" / "scoreflow.yaml"


def test_paper_yaml_equals_the_code_defaults():
    assert load_config(PAPER_YAML) == Config()
    assert yaml.safe_load(PAPER_YAML.read_text()) == to_dict(Config())


def test_paper_numbers():
    c = Config()
    assert (c.generation.k, c.generation.temperature, c.generation.top_p, c.generation.max_new_tokens) == (8, 0.2, 0.95, 1000)
    assert c.generation.stop == ("</graph>",)
    assert (c.evaluation.vali_num, c.executor.temperature, c.preference.alpha) == (3, 0.0, 3.0)
    assert (c.training.beta, c.training.learning_rate, c.training.batch_size, c.training.num_epochs) == (0.1, 1e-6, 1, 1.0)
    assert (c.training.lora.r, c.training.lora.alpha, c.training.lora.dropout) == (8, 16, 0.01)
    assert c.training.lora.target_modules == ("q_proj", "v_proj")
    assert c.datasets["HumanEval"].n_pairs == 600 and c.datasets["MBPP"].n_pairs == 2000
    thresholds = {k: v.similarity_threshold for k, v in c.datasets.items()}
    assert thresholds == {"HumanEval": 1.1, "MBPP": 1.1, "GSM8K": 0.8, "MATH": 0.75, "DROP": 0.75, "HotpotQA": 0.75}
    assert c.datasets["HumanEval"].check_time_limit_s == 40 and c.datasets["MBPP"].check_time_limit_s == 15
    assert c.datasets["GSM8K"].workflow_time_limit_s == 120 and c.datasets["MBPP"].workflow_time_limit_s == 240
    assert c.datasets["GSM8K"].trial_time_limit_s == 60 and c.datasets["HumanEval"].trial_time_limit_s == 120


def test_operator_and_executor_numbers_are_the_originals():
    """The original's Test rounds (10 HumanEval, 6 MBPP), Programmer tries and @retry(3), and
    MetaGPT's request settings: its system message, max_tokens 4096, 600 s timeout."""
    c = Config()
    assert (c.datasets["HumanEval"].test_max_rounds, c.datasets["MBPP"].test_max_rounds) == (10, 6)
    assert (c.operators.programmer_max_tries, c.operators.programmer_attempts, c.operators.programmer_retry_wait_s) == (3, 3, 2.0)
    assert c.executor.system_message == "You are a helpful assistant."
    assert (c.executor.max_tokens, c.executor.request_timeout_s) == (4096, 600.0)
    assert load_config(None, ["executor.system_message=null"]).executor.system_message is None
    with pytest.raises(ScoreFlowError, match="operators.test_max_rounds: unknown key"):
        load_config(None, ["operators.test_max_rounds=3"])
    tiny = load_config(ROOT / "config" / "tiny.yaml")
    assert tiny.datasets["HumanEval"].test_max_rounds == 1 and tiny.executor.max_tokens == 160


def test_overrides_and_partial_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("generation:\n  k: 4\ndatasets:\n  MBPP:\n    n_pairs: 10\n")
    c = load_config(path, ["executor.model=gpt-4o", "training.lora.target_modules=[q_proj]", "executor.base_url=null"])
    assert c.generation.k == 4 and c.generation.top_p == 0.95
    assert c.datasets["MBPP"].n_pairs == 10 and c.datasets["MBPP"].check_time_limit_s == 15
    assert c.executor.model == "gpt-4o" and c.executor.base_url is None
    assert c.training.lora.target_modules == ("q_proj",)
    assert isinstance(load_config(None, ["training.beta=1"]).training.beta, float)
    assert load_config(None, ["training.learning_rate=1e-6"]).training.learning_rate == 1e-6
    prices = load_config(None, ["executor.prices.my-model.input=1.5"]).executor.prices
    assert prices["my-model"].input == 1.5 and prices["my-model"].output == 0.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("generation.kk=3", "generation.kk: unknown key"),
        ("generation.k=three", "generation.k: expected an integer"),
        ("generation.k=0", "generation.k: must be >= 1"),
        ("generation.top_p=1.5", "generation.top_p: must be <= 1.0"),
        ("generation.grammar=1", "generation.grammar: expected true or false"),
        ("generation.k=2.5", "generation.k: expected an integer"),
        ("executor.backend=grpc", "executor.backend: expected one of openai, local"),
        ("training.loss=ppo", "training.loss: expected one of"),
        ("datasets.Foo.n_pairs=3", "datasets.Foo: unknown key"),
        ("datasets.MATH.n_pairs=-1", "datasets.MATH.n_pairs: must be >= 1"),
        ("sandbox.workers=0", "sandbox.workers: must be >= 1"),
        ("generation=5", "generation: expected a mapping"),
        ("noequals", "expected dotted.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ScoreFlowError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation: [unclosed\n")
    with pytest.raises(ScoreFlowError, match="bad.yaml: line"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ScoreFlowError, match="bad.yaml: expected a mapping"):
        load_config(bad)
    bad.write_text("executor:\n  api_key: sk-123\n")
    with pytest.raises(ScoreFlowError, match=r"bad.yaml: executor.api_key: unknown key"):
        load_config(bad)
    with pytest.raises(ScoreFlowError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(ScoreFlowError, match="unknown dataset 'Foo'"):
        Config().dataset("Foo")


def test_dump_round_trips(tmp_path):
    c = load_config(None, ["generation.k=3", "executor.backend=local"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_yaml(c))
    assert load_config(path) == c


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scoreflow.config", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path):
    for args in (["--set", "generation.k=0"], ["--config", str(tmp_path / "nope.yaml")], ["--bogus"]):
        done = _cli(*args)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def test_cli_prints_resolved_config():
    done = _cli("--set", "generation.k=5")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["generation"]["k"] == 5
