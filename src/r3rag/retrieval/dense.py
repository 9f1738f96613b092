"""Dense retrieval: passages embedded once, queries embedded per search, top-k by inner product with faiss.

A build streams: passages are encoded a chunk at a time into ``embeddings.f16.npy`` (resumable, see
:mod:`r3rag.retrieval.embeddings`), then a faiss index of the configured type (Flat, the paper's choice, by
default; HNSW, IVF-PQ, SQ8... through ``index_factory``, :mod:`r3rag.retrieval.faiss_index`) is trained on a
sample and filled a chunk at a time, and written to ``index.faiss``. Loading maps the index and the passage
text from disk, so N server workers on one machine share one copy. At no point is the corpus held as
Python objects or all its embeddings as float32.

Folders written before ``index.faiss`` existed still load: an HNSW one from ``hnsw.faiss``, a Flat one by
adding its embeddings to a Flat index in memory, as those folders always did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r3rag.config import DenseConfig
from r3rag.data.corpus import corpus_checksum
from r3rag.retrieval import faiss_index
from r3rag.retrieval.embeddings import EMBEDDINGS_FILE, PROGRESS_FILE, PassageEncoder, encode_to_disk
from r3rag.retrieval.encoders import Encoder, EncoderSpec
from r3rag.retrieval.store import PASSAGES_FILE, MappedPassageStore, Passages
from r3rag.schema import Passage

if TYPE_CHECKING:
    import faiss

OLD_HNSW_FILE = "hnsw.faiss"
CONFIG_FILE = "dense.json"
# Settings that change how fast a build runs or how a search is done, not what is built: a build may resume
# with other values of these.
BUILD_INDEPENDENT: dict[str, Any] = {
    "chunk_size": True,
    "gpu": True,
    "nprobe": True,
    "hnsw_ef_search": True,
    "encoder": {"batch_size": True, "device": True, "devices": True},
}


def _what_is_built(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What decides the embeddings (the encoder and its settings) and what decides the index (the rest)."""
    config = DenseConfig.model_validate(meta["config"]).model_dump(mode="json", exclude=BUILD_INDEPENDENT)
    embedded = {
        "encoder": meta["encoder"],
        "settings": config.pop("encoder"),
        "passages": meta.get("passages"),
    }
    return embedded, config


class DenseRetriever:
    """An encoder, a faiss index over the passage embeddings, and the passages they came from."""

    def __init__(self, encoder: PassageEncoder, index: faiss.Index, store: Passages, config: DenseConfig):
        self.encoder = encoder
        self._index = index
        self._store = store
        self.config = config

    @classmethod
    def build(
        cls,
        store: Passages,
        config: DenseConfig,
        directory: str | Path,
        progress: bool = True,
        encoder: PassageEncoder | None = None,
    ) -> DenseRetriever:
        """Build into ``directory``, resuming what an interrupted build of the same index left there
        (embeddings by chunk, a written index whole); what a build of another index left is redone.
        ``encoder`` replaces the configured one (the benchmark's fast stand-in)."""
        directory = Path(directory)
        store.save(directory)
        own = encoder is None
        encoder = Encoder.from_config(config.encoder) if encoder is None else encoder
        meta = {
            "config": config.model_dump(mode="json"),
            "encoder": encoder.spec.model_dump(),
            "passages": corpus_checksum(directory / PASSAGES_FILE),  # under a minute at 21M; encoding: hours
        }
        meta_path = directory / CONFIG_FILE
        if meta_path.is_file():  # left by an earlier build: keep what it built that this one would too
            embedded, indexed = _what_is_built(json.loads(meta_path.read_text(encoding="utf-8")))
            if embedded != _what_is_built(meta)[0]:
                (directory / PROGRESS_FILE).unlink(missing_ok=True)
            if (embedded, indexed) != _what_is_built(meta):
                (directory / faiss_index.INDEX_FILE).unlink(missing_ok=True)
        meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            embeddings = encode_to_disk(encoder, store, directory, config.chunk_size, progress)
        finally:
            if own and isinstance(encoder, Encoder):
                encoder.close()
        if not (directory / faiss_index.INDEX_FILE).is_file():
            index = faiss_index.build(embeddings, len(store), config, progress)
            faiss_index.write(index, directory / faiss_index.INDEX_FILE)
            del index
        index = faiss_index.read(directory / faiss_index.INDEX_FILE, config)
        return cls(encoder, index, MappedPassageStore.load(directory), config)

    @classmethod
    def load(
        cls, directory: str | Path, device: str | None = None, encoder: PassageEncoder | None = None
    ) -> DenseRetriever:
        """Load a folder; ``device`` places the query encoder, ``encoder`` replaces it (a stand-in)."""
        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        config = DenseConfig.model_validate(meta["config"])
        spec = EncoderSpec.model_validate(meta["encoder"])
        if (directory / faiss_index.INDEX_FILE).is_file():
            index = faiss_index.read(directory / faiss_index.INDEX_FILE, config)
        elif (directory / OLD_HNSW_FILE).is_file():
            index = faiss_index.read(directory / OLD_HNSW_FILE, config)
        elif config.index == "flat":
            count = int(np.load(directory / EMBEDDINGS_FILE, mmap_mode="r").shape[0])
            index = faiss_index.build(directory / EMBEDDINGS_FILE, count, config, progress=False)
        else:
            raise FileNotFoundError(f"{directory}: no {faiss_index.INDEX_FILE}; rebuild the index")
        settings = config.encoder
        if encoder is None:
            encoder = Encoder(
                spec,
                device=device or settings.device,
                bf16=settings.bf16,
                batch_size=settings.batch_size,
                fp16=settings.fp16,
            )
        return cls(encoder, index, MappedPassageStore.load(directory), config)

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return len(self._store)

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` the index holds (gold matching asks once per run)."""
        return self._store.known_ids(ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        vectors = self.encoder.encode_queries(list(queries))
        scores, rows = self._index.search(vectors, min(k, len(self._store)))
        results = []
        for row, score_row in zip(rows.tolist(), scores.tolist(), strict=True):
            found = sum(r >= 0 for r in row)  # faiss pads a short result with -1 at the end
            results.append(self._store.hits(row[:found], score_row[:found]))
        return results
