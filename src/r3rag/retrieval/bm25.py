"""BM25 retrieval with bm25s: build from a corpus, save to and load from a folder, batched exact top-k search.

bm25s precomputes every (term, passage) score into a sparse matrix, so a query is a sum of a few matrix
columns and a top-k: a few hundred microseconds on a corpus of ten thousand passages. What we add around it
must stay cheap (the target is at most 10% over a bare bm25s call), hence the cached tokeniser below and
Passage objects made only for the hits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from r3rag.config import BM25Config
from r3rag.retrieval.store import MappedPassageStore, Passages
from r3rag.schema import Passage

if TYPE_CHECKING:
    import bm25s

BM25S_DIR = "bm25s"
CONFIG_FILE = "bm25.json"
_STEM_CACHE_LIMIT = 1_000_000


def _stopword_list(stopwords: str | list[str]) -> Sequence[str]:
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_EN_PLUS

    if isinstance(stopwords, list):
        return stopwords
    return {"en": STOPWORDS_EN, "en_plus": STOPWORDS_EN_PLUS, "none": ()}[stopwords]


def _stemmer(name: str | None) -> Callable[[str], str] | None:
    if name is None:
        return None
    import Stemmer

    if name not in Stemmer.algorithms():
        raise ValueError(
            f"bm25.stemmer: unknown PyStemmer algorithm {name!r} (known: {', '.join(Stemmer.algorithms())})"
        )
    return Stemmer.Stemmer(name).stemWord


class Bm25Tokenizer:
    """bm25s's tokenisation (lowercase, words of 2+ characters, stop words dropped, then stemmed).

    Every word's stem is cached, so a query costs one regex split and a few dict look-ups. The same object
    tokenises the passages at build time and the queries at search time, so both are always split alike.
    """

    _split = staticmethod(re.compile(r"(?u)\b\w\w+\b").findall)

    def __init__(self, config: BM25Config):
        self._lowercase = config.lowercase
        self._stopwords = frozenset(_stopword_list(config.stopwords))
        self._stem = _stemmer(config.stemmer)
        self._cache: dict[str, str] = {}

    def tokens(self, text: str) -> list[str]:
        if self._lowercase:
            text = text.lower()
        cache, out = self._cache, []
        for word in self._split(text):
            if word in self._stopwords:
                continue
            stem = cache.get(word)
            if stem is None:
                if len(cache) >= _STEM_CACHE_LIMIT:  # bound the memory a stream of odd queries can take
                    cache.clear()
                stem = cache[word] = self._stem(word) if self._stem else word
            out.append(stem)
        return out

    def corpus_ids(
        self, texts: Iterable[str], total: int, progress: bool
    ) -> tuple[list[list[int]], dict[str, int]]:
        """Token ids per passage and the vocabulary (stem -> id): what bm25s indexes without re-tokenising."""
        vocab: dict[str, int] = {}
        ids = [
            [vocab.setdefault(stem, len(vocab)) for stem in self.tokens(text)]
            for text in tqdm(texts, total=total, desc="tokenise", unit="passage", disable=not progress)
        ]
        return ids, vocab


class BM25Retriever:
    """A bm25s index over a PassageStore. ``n_threads`` > 0 spreads a batched search over that many threads.

    A query none of whose words is in the index scores 0 on every passage; it gets no passages rather than k
    arbitrary ones, and likewise only passages with a positive score are returned.
    """

    def __init__(self, bm25: bm25s.BM25, tokenizer: Bm25Tokenizer, store: Passages, config: BM25Config):
        self._bm25 = bm25
        self._tokenizer = tokenizer
        self._store = store
        self.config = config
        self.n_threads = 0

    @classmethod
    def build(cls, store: Passages, config: BM25Config, progress: bool = True) -> BM25Retriever:
        import bm25s

        tokenizer = Bm25Tokenizer(config)
        ids, vocab = tokenizer.corpus_ids(store.contents(), total=len(store), progress=progress)
        bm25 = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        bm25.index((ids, vocab), show_progress=progress)
        return cls(bm25, tokenizer, store, config)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self._bm25.save(directory / BM25S_DIR, show_progress=False)
        (directory / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2), encoding="utf-8")
        self._store.save(directory)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> BM25Retriever:
        """Load a saved index; ``mmap`` maps bm25s's score matrix and the passages from disk instead of
        reading them in, so every process serving the folder shares one copy in the page cache."""
        import bm25s

        directory = Path(directory)
        config = BM25Config.model_validate(json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")))
        bm25 = bm25s.BM25.load(directory / BM25S_DIR, show_progress=False, mmap=mmap)
        return cls(bm25, Bm25Tokenizer(config), MappedPassageStore.load(directory), config)

    @property
    def vocabulary_size(self) -> int:
        return len(self._bm25.vocab_dict)

    @property
    def tokenizer(self) -> Bm25Tokenizer:
        return self._tokenizer

    @property
    def engine(self) -> bm25s.BM25:
        """The underlying ``bm25s.BM25`` (the benchmark times a bare call on it)."""
        return self._bm25

    def __len__(self) -> int:
        return len(self._store)

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` the index holds (gold matching asks once per run)."""
        return self._store.known_ids(ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vocab = self._bm25.vocab_dict
        token_ids = [[vocab[t] for t in self._tokenizer.tokens(q) if t in vocab] for q in queries]
        results: list[list[Passage]] = [[] for _ in token_ids]
        rows = [i for i, ids in enumerate(token_ids) if ids]
        if not rows:
            return results
        docs, scores = self._bm25.retrieve(
            [token_ids[i] for i in rows],
            k=min(k, len(self._store)),
            show_progress=False,
            n_threads=self.n_threads,
        )
        for i, doc_row, score_row in zip(rows, docs.tolist(), scores.tolist(), strict=True):
            matched = sum(s > 0 for s in score_row)  # scores are sorted, so the matches come first
            results[i] = self._store.hits(doc_row[:matched], score_row[:matched])
        return results
