"""Corpus files: FlashRAG jsonl (``{"id", "contents": "title\\ntext"}``), read lazily, written atomically.

A corpus can be tens of millions of passages, so reading is a generator (:func:`iter_corpus`) and nothing
here holds a whole corpus unless asked to (:func:`read_corpus`). Corpora built from the context paragraphs
of QA datasets are deduplicated by (title, text) and use content-derived ids
(:func:`r3rag.schema.passage_id_for`), so the same paragraph gets the same id in every run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from r3rag.jsonl import RecordError, iter_jsonl, read_text, write_jsonl
from r3rag.schema import Passage, passage_id_for


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Yield the passages of a corpus jsonl one by one.

    Accepts FlashRAG's ``{"id", "contents"}`` and also ``{"id", "title", "text"}``. A record without an id
    or without text is an error naming the file and line.
    """
    for line_no, record in iter_jsonl(path):
        if "id" not in record:
            raise RecordError(path, line_no, "missing", field="id")
        if not isinstance(record["id"], str | int) or isinstance(record["id"], bool):
            raise RecordError(path, line_no, "must be text or a number", field="id")
        if "contents" in record:
            if not isinstance(record["contents"], str):
                raise RecordError(path, line_no, "must be a string", field="contents")
            yield Passage.from_contents(str(record["id"]), record["contents"])
        elif "text" in record:
            for field in ("title", "text"):
                if not isinstance(record.get(field, ""), str):
                    raise RecordError(path, line_no, "must be a string", field=field)
            yield Passage(id=str(record["id"]), title=record.get("title", ""), text=record["text"])
        else:
            raise RecordError(path, line_no, "missing (or 'text')", field="contents")


def read_corpus(path: str | Path) -> list[Passage]:
    """The whole corpus in memory; refuses duplicate ids, which would make retrieval results ambiguous."""
    passages, seen = [], set()
    for number, passage in enumerate(iter_corpus(path), start=1):
        if passage.id in seen:
            raise RecordError(path, number, f"duplicate id {passage.id!r}", field="id")
        seen.add(passage.id)
        passages.append(passage)
    return passages


def write_corpus(path: str | Path, passages: Iterable[Passage]) -> int:
    """Write passages as FlashRAG corpus jsonl; return how many were written."""
    return write_jsonl(path, ({"id": p.id, "contents": p.contents} for p in passages))


def dedupe_passages(passages: Iterable[Passage]) -> Iterator[Passage]:
    """Drop repeated (title, text) pairs, keeping the first; ids are recomputed from the content."""
    seen: set[str] = set()
    for p in passages:
        pid = passage_id_for(p.title, p.text)
        if pid not in seen:
            seen.add(pid)
            yield Passage(id=pid, title=p.title, text=p.text)


def read_title_text_json(path: str | Path) -> Iterator[Passage]:
    """A corpus stored as one JSON list of ``{"title", "text"}`` objects (HippoRAG's corpus files)."""
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise RecordError(path, 0, f"not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(records, list):
        raise RecordError(path, 0, "expected a JSON list of {title, text} objects")
    for number, record in enumerate(records, start=1):
        for key in ("title", "text"):
            if not isinstance(record, dict) or not isinstance(record.get(key), str):
                raise RecordError(path, number, "missing or not a string", field=key)
        yield Passage(id="", title=record["title"], text=record["text"])


def corpus_checksum(path: str | Path) -> str:
    """SHA-256 of the corpus file, read in chunks: what index manifests record to detect a changed corpus."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
