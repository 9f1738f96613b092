"""Passage stores: the on-disk store (jsonl + offsets, memory-mapped) answers as the in-memory one does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3rag.data.corpus import write_corpus
from r3rag.jsonl import RecordError
from r3rag.retrieval.store import OFFSETS_FILE, PASSAGES_FILE, MappedPassageStore, PassageStore, write_store
from r3rag.schema import Passage
from retrieval_fixtures import PASSAGES

UNICODE = Passage("u1", "Zoë's café", 'Text with "quotes", a newline\\n escape and ünïcödé: 東京.')


def test_mapped_store_answers_as_the_list_does(tmp_path: Path) -> None:
    passages = [*PASSAGES, UNICODE]
    assert write_store(passages, tmp_path) == len(passages)
    mapped, listed = MappedPassageStore.load(tmp_path), PassageStore(passages)
    assert len(mapped) == len(listed) == 11
    assert list(mapped.contents()) == list(listed.contents()) == [p.contents for p in passages]
    assert list(mapped.contents(3, 5)) == [PASSAGES[3].contents, PASSAGES[4].contents]
    rows, scores = [10, 0, 4], [0.5, 0.25, -1.0]
    assert mapped.hits(rows, scores) == listed.hits(rows, scores)
    assert mapped.hits([10], [0.5])[0] == Passage(UNICODE.id, UNICODE.title, UNICODE.text, 0.5)
    assert mapped.known_ids(["u1", "nope", "nile"]) == {"u1", "nile"}
    offsets = np.load(tmp_path / OFFSETS_FILE)
    assert offsets.dtype == np.uint64 and offsets[0] == 0
    assert offsets[-1] == (tmp_path / PASSAGES_FILE).stat().st_size


def test_a_folder_without_offsets_still_loads(tmp_path: Path) -> None:
    """Index folders written before the offsets file existed: the offsets are found by reading the file."""
    write_corpus(tmp_path / PASSAGES_FILE, PASSAGES)
    old = MappedPassageStore.load(tmp_path)
    assert old.hits([2, 9], [1.0, 2.0]) == PassageStore(list(PASSAGES)).hits([2, 9], [1.0, 2.0])


def test_saving_copies_the_store_elsewhere_and_is_a_no_op_in_place(tmp_path: Path) -> None:
    write_store(PASSAGES, tmp_path / "a")
    store = MappedPassageStore.load(tmp_path / "a")
    before = (tmp_path / "a" / PASSAGES_FILE).stat().st_mtime_ns
    store.save(tmp_path / "a")
    assert (tmp_path / "a" / PASSAGES_FILE).stat().st_mtime_ns == before
    store.save(tmp_path / "b")
    assert list(MappedPassageStore.load(tmp_path / "b").contents()) == list(store.contents())


def test_duplicate_ids_are_refused_naming_the_record(tmp_path: Path) -> None:
    duplicated = [*PASSAGES[:4], Passage("paris", "Another Paris", "Paris, Texas.")]
    with pytest.raises(RecordError, match=r"corpus.jsonl: record 5, field 'id': duplicate id 'paris'"):
        write_store(duplicated, tmp_path / "store", source="corpus.jsonl")
    assert not (tmp_path / "store" / OFFSETS_FILE).exists()


def test_a_damaged_store_is_refused(tmp_path: Path) -> None:
    write_store(PASSAGES, tmp_path)
    with open(tmp_path / PASSAGES_FILE, "ab") as f:
        f.write(b'{"id": "extra", "contents": "x"}\n')
    with pytest.raises(ValueError, match="offsets end at byte .* the folder is damaged: rebuild the index"):
        MappedPassageStore.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no passages.jsonl; rebuild the index"):
        MappedPassageStore.load(tmp_path / "missing")
