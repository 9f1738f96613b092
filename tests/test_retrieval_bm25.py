"""BM25: exact top-k against an independent BM25 computation, tokenisation, edge cases, save/load."""

from __future__ import annotations

import math
from collections import Counter

import bm25s
import numpy as np
import pytest
import Stemmer
from hypothesis import given, settings
from hypothesis import strategies as st

from r3rag.config import BM25Config
from r3rag.retrieval.bm25 import BM25Retriever, Bm25Tokenizer
from r3rag.retrieval.store import PassageStore
from retrieval_fixtures import PASSAGES

QUERIES = [
    "Who discovered radium?",
    "English mathematician computer",
    "river flowing through Paris",
    "physicist Curie",
    "runs",
]


@pytest.fixture(scope="module")
def retriever() -> BM25Retriever:
    return BM25Retriever.build(PassageStore(list(PASSAGES)), BM25Config(), progress=False)


def reference_scores(query: str, k1: float = 1.5, b: float = 0.75) -> dict[str, float]:
    """Lucene BM25 written out from its formula, on tokens from bm25s's own tokenize function."""
    stemmer = Stemmer.Stemmer("english")

    def tokens(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)

    docs = tokens([p.contents for p in PASSAGES])
    avgdl = sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    scores = {}
    for passage, doc in zip(PASSAGES, docs, strict=True):
        tf = Counter(doc)
        norm = k1 * (1 - b + b * len(doc) / avgdl)
        scores[passage.id] = sum(
            math.log(1 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5)) * tf[t] / (norm + tf[t])
            for t in tokens([query])[0]
            if t in tf
        )
    return scores


@pytest.mark.parametrize("query", QUERIES)
def test_top_k_is_exact(retriever: BM25Retriever, query: str) -> None:
    expected = sorted(((s, pid) for pid, s in reference_scores(query).items() if s > 0), reverse=True)[:3]
    (hits,) = retriever.search([query], k=3)
    assert [p.id for p in hits] == [pid for _, pid in expected]
    assert [p.score for p in hits] == pytest.approx([s for s, _ in expected], rel=1e-5)


def test_obvious_answers_rank_first(retriever: BM25Retriever) -> None:
    results = retriever.search(["Who discovered radium?", "Egypt Africa", "Analytical Engine designer"], k=2)
    assert [hits[0].id for hits in results] == ["radium", "nile", "engine"]
    assert all(hits[0].score >= hits[-1].score for hits in results)


def test_stemming_and_stopwords_are_configurable() -> None:
    store = PassageStore(list(PASSAGES))
    stemmed = BM25Retriever.build(store, BM25Config(), progress=False)
    plain = BM25Retriever.build(store, BM25Config(stemmer=None, stopwords="none"), progress=False)
    assert stemmed.search(["runs"], k=1)[0][0].id == "running"  # runs, run, running: all stem to "run"
    assert plain.search(["runs"], k=1) == [[]]
    assert stemmed.search(["the of and"], k=3) == [[]]  # only stop words
    assert {p.id for p in plain.search(["the"], k=10)[0]} >= {"seine", "engine", "nile"}


def test_queries_without_known_words_get_no_passages(retriever: BM25Retriever) -> None:
    results = retriever.search(["zebra xylophone", "radium", "", "!!"], k=3)
    assert results[0] == [] and results[2] == [] and results[3] == []
    assert results[1][0].id == "radium"


def test_k_beyond_corpus_returns_every_matching_passage(retriever: BM25Retriever) -> None:
    (hits,) = retriever.search(["river"], k=50)
    assert {p.id for p in hits} == {"paris", "seine", "nile"}
    with pytest.raises(ValueError, match="k must be at least 1"):
        retriever.search(["river"], k=0)


def test_batched_and_threaded_search_equal_one_by_one(retriever: BM25Retriever) -> None:
    one_by_one = [retriever.search([q], k=4)[0] for q in QUERIES]
    assert retriever.search(QUERIES, k=4) == one_by_one
    retriever.n_threads = 2
    try:
        assert retriever.search(QUERIES * 30, k=4) == one_by_one * 30
    finally:
        retriever.n_threads = 0


def test_save_load_round_trip(retriever: BM25Retriever, tmp_path) -> None:
    retriever.save(tmp_path)
    loaded = BM25Retriever.load(tmp_path)
    assert loaded.config == retriever.config
    assert loaded.search(QUERIES, k=5) == retriever.search(QUERIES, k=5)


def test_reload_keeps_non_default_tokenizer_settings(tmp_path) -> None:
    """The saved tokeniser settings, not the defaults, split queries after a reload: without stemming "runs"
    matches nothing (the default stemmer would find "running"), without stop words "the" matches."""
    config = BM25Config(stemmer=None, stopwords="none", lowercase=False, k1=1.2, b=0.5)
    built = BM25Retriever.build(PassageStore(list(PASSAGES)), config, progress=False)
    queries = ["runs", "the", "Curie", "curie", *QUERIES]
    before = built.search(queries, k=5)
    assert before[0] == [] and before[1] and before[3] == []  # no stemming, no stop words, case kept
    built.save(tmp_path)
    loaded = BM25Retriever.load(tmp_path)
    assert loaded.config == config
    assert loaded.search(queries, k=5) == before


def test_unknown_stemmer_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="bm25.stemmer: unknown PyStemmer algorithm 'klingon'"):
        Bm25Tokenizer(BM25Config(stemmer="klingon"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdeIOU éß1_ ,.-'\n")), max_size=60))
def test_tokenizer_matches_bm25s(text: str) -> None:
    expected = bm25s.tokenize(
        [text], stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False
    )[0]
    assert Bm25Tokenizer(BM25Config()).tokens(text) == expected


def test_memory_mapped_load_equals_in_memory_load(retriever: BM25Retriever, tmp_path) -> None:
    retriever.save(tmp_path)
    mapped, read = BM25Retriever.load(tmp_path), BM25Retriever.load(tmp_path, mmap=False)
    assert isinstance(mapped.engine.scores["data"], np.memmap)
    assert not isinstance(read.engine.scores["data"], np.memmap)
    queries = [*QUERIES, "Paris river", "English computer mathematician"]
    assert mapped.search(queries, k=5) == read.search(queries, k=5) == retriever.search(queries, k=5)
