"""JSON Lines in and out, with errors that name the file and line, and appends that survive a crash.

Every stage that writes results as it goes (teacher generation, evaluation, ``r3rag ask --out``) appends one
record per line through :class:`JsonlAppender` and, on restart, skips the ids :func:`read_ids` finds. A line
cut short by a crash is the only damage a crash can do; :func:`read_ids` and :class:`JsonlAppender` both
drop such a final partial line instead of failing on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO


class RecordError(ValueError):
    """A record in a data file is malformed. The message names the file, the record and the field."""

    def __init__(self, path: str | Path, record: int, message: str, field: str | None = None):
        self.path, self.record, self.field = str(path), record, field
        where = f"{path}: record {record}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line; a line that is no JSON object is an error."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = _decode(path, line_no, raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(path, line_no, f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise RecordError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def _decode(path: str | Path, record: int, raw: bytes) -> str:
    """UTF-8 text, or a RecordError naming the file, the record and the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(
            path, record, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


def read_text(path: str | Path) -> str:
    """A whole file as UTF-8 text (a JSON document, say); a byte that is not UTF-8 is a RecordError naming
    the line it is on."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise RecordError(path, 0, f"not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line})") from None


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records to ``path`` atomically (a temporary file renamed into place); return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def _drop_partial_last_line(path: Path) -> None:
    """Cut a final line that a crash left without its newline, so the next append starts clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def rewind(path: str | Path, key: str, last: int) -> list[dict[str, Any]]:
    """Cut a resumable run's log back to its checkpoint: keep the records whose ``key`` is at most ``last``
    (a crashed run wrote later ones, which the resumed run is about to redo) and drop a partial final line;
    rewrite the file atomically and return the records kept."""
    path = Path(path)
    if not path.exists():
        return []
    _drop_partial_last_line(path)
    kept = [record for _, record in iter_jsonl(path) if record.get(key, last + 1) <= last]
    write_jsonl(path, kept)
    return kept


def read_ids(path: str | Path, key: str = "id") -> set[str]:
    """The ``key`` values already written to an append-only results file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return set()
    _drop_partial_last_line(path)
    return {str(record[key]) for _, record in iter_jsonl(path) if key in record}


class JsonlAppender:
    """Append records to a jsonl file, flushed line by line, so a crash loses at most the line in flight."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
