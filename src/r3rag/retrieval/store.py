"""The passages of an index, in index order: what turns a row number from bm25s or faiss into a Passage.

Every index folder keeps its own copy (``passages.jsonl``, FlashRAG corpus format), so a folder is enough to
serve an index: the corpus it was built from may have moved or changed since (the manifest's checksum says
which corpus it was).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from r3rag.data.corpus import read_corpus, write_corpus
from r3rag.schema import Passage

PASSAGES_FILE = "passages.jsonl"


class PassageStore:
    """Passages by row, ids unique (``read_corpus`` refuses duplicates: they would make hits ambiguous)."""

    def __init__(self, passages: list[Passage]):
        self._passages = passages

    @classmethod
    def from_corpus(cls, path: str | Path) -> PassageStore:
        return cls(read_corpus(path))

    @classmethod
    def load(cls, directory: str | Path) -> PassageStore:
        return cls(read_corpus(Path(directory) / PASSAGES_FILE))

    def save(self, directory: str | Path) -> None:
        write_corpus(Path(directory) / PASSAGES_FILE, self._passages)

    def __len__(self) -> int:
        return len(self._passages)

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` this store holds. One pass over the passages and no lasting id map: it is
        asked once per run (:func:`r3rag.gold.resolve_gold_match`), and a map of a 21M-passage corpus would
        cost more memory than the question deserves."""
        wanted = set(ids)
        return {p.id for p in self._passages if p.id in wanted}

    def contents(self) -> Iterable[str]:
        """The text each retriever indexes: title and text, as FlashRAG and the paper's indexes do."""
        return (p.contents for p in self._passages)

    def hits(self, rows: Sequence[int], scores: Sequence[float]) -> list[Passage]:
        """Fresh Passages for one query's hits, which callers may keep or change (a hot loop)."""
        out, passages = [], self._passages
        for row, score in zip(rows, scores, strict=True):
            p = passages[row]
            out.append(Passage(p.id, p.title, p.text, score))
        return out
