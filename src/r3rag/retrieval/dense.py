"""Dense retrieval: passages embedded once, queries embedded per search, top-k by inner product with faiss.

Flat (exact) is the default, as in the paper's E5 and BGE indexes; HNSW trades a little recall for speed on
corpora too large to scan. The embeddings are stored as float16 (half the disk of float32, the paper's
``fp16`` ``save_embedding``) and the Flat index is rebuilt from them on load, which takes a fraction of a
second per million vectors; an HNSW graph is slow to build, so it is saved as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from r3rag.config import DenseConfig
from r3rag.retrieval.encoders import Encoder, EncoderSpec
from r3rag.retrieval.store import PassageStore
from r3rag.schema import Passage

if TYPE_CHECKING:
    import faiss

EMBEDDINGS_FILE = "embeddings.f16.npy"
HNSW_FILE = "hnsw.faiss"
CONFIG_FILE = "dense.json"


def _faiss_index(embeddings: np.ndarray, config: DenseConfig) -> faiss.Index:
    import faiss

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1]
    index: faiss.Index
    if config.index == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    index.add(vectors)
    return index


class DenseRetriever:
    """An encoder, a faiss index over the passage embeddings, and the passages they came from."""

    def __init__(
        self,
        encoder: Encoder,
        index: faiss.Index,
        embeddings: np.ndarray,
        store: PassageStore,
        config: DenseConfig,
    ):
        self.encoder = encoder
        self._index = index
        self._embeddings = embeddings
        self._store = store
        self.config = config

    @classmethod
    def build(cls, store: PassageStore, config: DenseConfig, progress: bool = True) -> DenseRetriever:
        encoder = Encoder.from_config(config.encoder)
        embeddings = encoder.encode_passages(list(store.contents()), progress=progress)
        return cls(encoder, _faiss_index(embeddings, config), embeddings, store, config)

    def save(self, directory: str | Path) -> None:
        import faiss

        directory = Path(directory)
        np.save(directory / EMBEDDINGS_FILE, self._embeddings)
        if self.config.index == "hnsw":
            faiss.write_index(self._index, str(directory / HNSW_FILE))
        meta = {"config": self.config.model_dump(mode="json"), "encoder": self.encoder.spec.model_dump()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        self._store.save(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> DenseRetriever:
        import faiss

        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        config = DenseConfig.model_validate(meta["config"])
        spec = EncoderSpec.model_validate(meta["encoder"])
        embeddings = np.load(directory / EMBEDDINGS_FILE)
        if config.index == "hnsw":
            index = faiss.read_index(str(directory / HNSW_FILE))
            cast("faiss.IndexHNSW", index).hnsw.efSearch = config.hnsw_ef_search  # read as its own class
        else:
            index = _faiss_index(embeddings, config)
        settings = config.encoder
        encoder = Encoder(
            spec, device=device or settings.device, bf16=settings.bf16, batch_size=settings.batch_size
        )
        return cls(encoder, index, embeddings, PassageStore.load(directory), config)

    @property
    def dimension(self) -> int:
        return int(self._embeddings.shape[1])

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
        scores, rows = self._index.search(self.encoder.encode_queries(queries), min(k, len(self._store)))
        results = []
        for row, score_row in zip(rows.tolist(), scores.tolist(), strict=True):
            found = sum(r >= 0 for r in row)  # faiss pads a short result with -1 at the end
            results.append(self._store.hits(row[:found], score_row[:found]))
        return results
