"""The passages of an index, in index order: what turns a row number from bm25s or faiss into a Passage.

Every index folder keeps its own copy (``passages.jsonl``, FlashRAG corpus format), so a folder is enough to
serve an index: the corpus it was built from may have moved or changed since (the manifest's checksum says
which corpus it was). Beside it, ``passages.offsets.npy`` holds the byte offset of every line (``n + 1``
uint64), so a loaded index reads a hit's line straight from the memory-mapped file: no passage is held as a
Python object, and every process serving the folder shares one copy of the text in the page cache.

Two stores implement the same methods: :class:`PassageStore` (a list in memory, for small corpora built in
code) and :class:`MappedPassageStore` (the folder on disk, what every loaded index uses).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from r3rag.jsonl import RecordError
from r3rag.schema import Passage

PASSAGES_FILE = "passages.jsonl"
OFFSETS_FILE = "passages.offsets.npy"
_ROWS_PER_READ = 8192


class Passages(Protocol):
    """What a retriever needs from its passages: how many, their text by row, hits by row, ids."""

    def __len__(self) -> int: ...

    def contents(self, start: int = 0, stop: int | None = None) -> Iterator[str]: ...

    def hits(self, rows: Sequence[int], scores: Sequence[float]) -> list[Passage]: ...

    def known_ids(self, ids: Iterable[str]) -> set[str]: ...

    def save(self, directory: str | Path) -> None: ...


def _id_hash(passage_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(passage_id.encode(), digest_size=8).digest(), "little")


def write_store(passages: Iterable[Passage], directory: str | Path, source: str | Path | None = None) -> int:
    """Stream passages into ``directory`` as ``passages.jsonl`` plus its offsets; return how many.

    Memory is 16 bytes per passage (an offset and an 8-byte hash of the id), never the passages themselves.
    Duplicate ids are refused, naming ``source`` (the corpus) and the record: they would make hits ambiguous.
    The offsets file is written last, so a folder that has one holds a complete store.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path, tmp = directory / PASSAGES_FILE, directory / (PASSAGES_FILE + ".tmp")
    offsets, hashes = array("Q", [0]), array("Q")
    with open(tmp, "wb") as f:
        for p in passages:
            line = (json.dumps({"id": p.id, "contents": p.contents}, ensure_ascii=False) + "\n").encode()
            f.write(line)
            offsets.append(offsets[-1] + len(line))
            hashes.append(_id_hash(p.id))
    _refuse_duplicates(np.frombuffer(hashes, dtype=np.uint64), tmp, np.frombuffer(offsets, np.uint64), source)
    os.replace(tmp, path)
    _save_atomic(directory / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.uint64))
    return len(hashes)


def _save_atomic(path: Path, array_: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array_)
    os.replace(tmp, path)


def _refuse_duplicates(
    hashes: np.ndarray, path: Path, offsets: np.ndarray, source: str | Path | None
) -> None:
    """Sort the id hashes; only where two are equal read those lines back and compare the ids themselves."""
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for row in np.flatnonzero(np.isin(hashes, repeated)).tolist():
            f.seek(int(offsets[row]))
            passage_id = str(json.loads(f.readline())["id"])
            if passage_id in seen:
                raise RecordError(source or path, row + 1, f"duplicate id {passage_id!r}", field="id")
            seen[passage_id] = row


class PassageStore:
    """Passages by row in a list: for corpora built in code (tests, the generated world); ids unique."""

    def __init__(self, passages: list[Passage]):
        self._passages = passages

    def save(self, directory: str | Path) -> None:
        write_store(self._passages, directory)

    def __len__(self) -> int:
        return len(self._passages)

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` this store holds. One pass over the passages and no lasting id map: it is
        asked once per run (:func:`r3rag.gold.resolve_gold_match`), and a map of a 21M-passage corpus would
        cost more memory than the question deserves."""
        wanted = set(ids)
        return {p.id for p in self._passages if p.id in wanted}

    def contents(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """The text each retriever indexes: title and text, as FlashRAG and the paper's indexes do."""
        return (p.contents for p in self._passages[start:stop])

    def hits(self, rows: Sequence[int], scores: Sequence[float]) -> list[Passage]:
        """Fresh Passages for one query's hits, which callers may keep or change (a hot loop)."""
        out, passages = [], self._passages
        for row, score in zip(rows, scores, strict=True):
            p = passages[row]
            out.append(Passage(p.id, p.title, p.text, score))
        return out


def _scan_offsets(path: Path) -> np.ndarray:
    """Line offsets of a folder written before the offsets file existed (read once, held in memory)."""
    offsets = array("Q", [0])
    with open(path, "rb") as f:
        for line in f:
            offsets.append(offsets[-1] + len(line))
    return np.frombuffer(offsets, dtype=np.uint64)


class MappedPassageStore:
    """Passages by row, read from a memory-mapped ``passages.jsonl`` through its offsets (also mapped).

    A folder written before offsets files existed still loads: its offsets are found by one pass over the
    file and held in memory (8 bytes per passage).
    """

    def __init__(self, path: Path, offsets: np.ndarray):
        self._path = path
        self._offsets = offsets
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""

    @classmethod
    def load(cls, directory: str | Path) -> MappedPassageStore:
        directory = Path(directory)
        path = directory / PASSAGES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {PASSAGES_FILE}; rebuild the index")
        offsets_path = directory / OFFSETS_FILE
        offsets = np.load(offsets_path, mmap_mode="r") if offsets_path.is_file() else _scan_offsets(path)
        if int(offsets[-1]) != path.stat().st_size:
            raise ValueError(
                f"{offsets_path}: offsets end at byte {int(offsets[-1])}, but {path} has "
                f"{path.stat().st_size} bytes; the folder is damaged: rebuild the index"
            )
        return cls(path, offsets)

    def save(self, directory: str | Path) -> None:
        """Copy the store into ``directory`` (nothing to do when it is already there)."""
        directory = Path(directory)
        if (directory / PASSAGES_FILE).resolve() == self._path.resolve():
            return
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path, directory / PASSAGES_FILE)
        _save_atomic(directory / OFFSETS_FILE, np.asarray(self._offsets))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _records(self, start: int, stop: int | None) -> Iterator[dict[str, str]]:
        """Rows in order, read in blocks with plain reads: a pass over the whole file (encoding, id look-up)
        then leaves no page mapped in this process, unlike the random reads of :meth:`hits`."""
        stop = len(self) if stop is None else min(stop, len(self))
        with open(self._path, "rb") as f:
            for first in range(start, stop, _ROWS_PER_READ):
                last = min(first + _ROWS_PER_READ, stop)
                f.seek(int(self._offsets[first]))
                for line in f.read(int(self._offsets[last]) - int(self._offsets[first])).splitlines():
                    yield json.loads(line)

    def contents(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """The text each retriever indexes (title and text), rows ``start`` to ``stop``, read in blocks."""
        return (record["contents"] for record in self._records(start, stop))

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` this store holds: one pass over the file, no lasting id map (see
        :meth:`PassageStore.known_ids`)."""
        wanted = set(ids)
        return {str(r["id"]) for r in self._records(0, None) if str(r["id"]) in wanted}

    def hits(self, rows: Sequence[int], scores: Sequence[float]) -> list[Passage]:
        """Fresh Passages for one query's hits, each parsed from its own line of the mapped file."""
        out, offsets, data = [], self._offsets, self._map
        for row, score in zip(rows, scores, strict=True):
            record = json.loads(data[int(offsets[row]) : int(offsets[row + 1])])
            p = Passage.from_contents(str(record["id"]), record["contents"])
            out.append(Passage(p.id, p.title, p.text, score))
        return out
