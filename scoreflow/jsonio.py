"""JSON and JSONL files written atomically, read with file:line errors.

Every artifact of the project is JSON or JSONL. Whole files are written to a
temporary sibling and renamed, so a crash leaves either the old or the new file.
Record logs are appended one line at a time and flushed, so a killed process
loses at most the line it was writing; that torn tail is dropped on the next open.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

from scoreflow.errors import ScoreFlowError

# mkstemp creates files readable by their owner only; artifacts get the mode an
# ordinary open() would give them, so a group sharing a workspace can read them.
# The umask is read once, at import, while no other thread can race the swap.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one rename (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(_line(r) for r in records))


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScoreFlowError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ScoreFlowError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


def iter_jsonl(path: str | os.PathLike[str], *, allow_torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a malformed line is an error naming file and line.

    With ``allow_torn_tail`` an unterminated, unparsable last line (a write cut off
    by a crash) is skipped instead.
    """
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise ScoreFlowError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if allow_torn_tail and not line.endswith("\n"):
                    return
                raise ScoreFlowError(f"{path}:{number}: malformed JSON record ({exc.msg})") from None
            except UnicodeDecodeError:
                raise ScoreFlowError(f"{path}:{number}: not UTF-8 text") from None
            if not isinstance(record, dict):
                raise ScoreFlowError(f"{path}:{number}: expected a JSON object per line")
            yield record


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"


class JsonlLog:
    """An append-only record file that a resumed stage continues."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return list(iter_jsonl(self.path, allow_torn_tail=True))

    def keys(self, key: Callable[[dict[str, Any]], Hashable]) -> set[Hashable]:
        """Keys of the records already written, so a resumed stage can skip them."""
        return {key(r) for r in self.read()}

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        handle = self._open()
        handle.write("".join(_line(r) for r in records))
        handle.flush()

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the whole log atomically (e.g. sorted into a canonical order)."""
        self.close()
        atomic_write_jsonl(self.path, records)

    def close(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def _open(self) -> Any:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(self.path)
            self._handle = self.path.open("a", encoding="utf-8")
        return self._handle

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line left by a killed writer."""
    if not path.exists():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
