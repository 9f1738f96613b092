"""Dense: exact top-k against brute force, index types, streaming and resumed builds, mmap loading, encoder
conventions and precision, the real MiniLM (smoke)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3rag.config import DenseConfig, EncoderConfig
from r3rag.retrieval.dense import EMBEDDINGS_FILE, DenseRetriever
from r3rag.retrieval.encoders import Encoder, EncoderSpec, resolve_encoder
from r3rag.retrieval.faiss_index import gpu_count, set_search_parameters, use_gpu
from r3rag.retrieval.store import PassageStore
from retrieval_fixtures import PASSAGES, generated_passages, tiny_encoder_dir

QUERIES = ["Marie Curie physicist", "river Seine Paris", "English mathematician computer", "Nile Egypt"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_encoder_dir(tmp_path_factory.mktemp("models") / "tiny-encoder")


def dense_config(encoder_dir: Path, **changes: object) -> DenseConfig:
    encoder = EncoderConfig(model=str(encoder_dir), pooling="mean", bf16=False)
    return DenseConfig(encoder=encoder).model_copy(update=changes)


@pytest.fixture(scope="module")
def built_dir(encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dense")
    DenseRetriever.build(PassageStore(list(PASSAGES)), dense_config(encoder_dir), directory, progress=False)
    return directory


@pytest.fixture(scope="module")
def retriever(built_dir: Path) -> DenseRetriever:
    return DenseRetriever.load(built_dir)


def test_top_k_is_exact_inner_product(retriever: DenseRetriever, built_dir: Path) -> None:
    stored = np.load(built_dir / EMBEDDINGS_FILE)
    assert stored.dtype == np.float16
    passages = stored.astype(np.float32)
    scores = retriever.encoder.encode_queries(QUERIES) @ passages.T
    for query, row, hits in zip(QUERIES, scores, retriever.search(QUERIES, k=4), strict=True):
        order = np.argsort(-row)[:4]
        assert [p.id for p in hits] == [PASSAGES[i].id for i in order], query
        assert [p.score for p in hits] == pytest.approx(row[order].tolist(), abs=1e-5)


def test_the_index_knows_its_passage_ids(retriever: DenseRetriever) -> None:
    assert retriever.known_ids(["curie", "0", "nile"]) == {"curie", "nile"}


def test_embeddings_are_unit_length_so_scores_are_cosines(retriever: DenseRetriever) -> None:
    (hits,) = retriever.search(["Radium"], k=len(PASSAGES) + 5)
    assert len(hits) == len(PASSAGES)
    assert all(-1.0001 <= p.score <= 1.0001 for p in hits)
    with pytest.raises(ValueError, match="k must be at least 1"):
        retriever.search(["Radium"], k=0)
    assert retriever.search([], k=3) == []


def test_hnsw_finds_the_exact_top_k_on_a_small_corpus(
    retriever: DenseRetriever, encoder_dir: Path, tmp_path: Path
) -> None:
    hnsw = DenseRetriever.build(
        PassageStore(list(PASSAGES)), dense_config(encoder_dir, index="hnsw"), tmp_path, progress=False
    )
    exact = retriever.search(QUERIES, k=3)
    approx = hnsw.search(QUERIES, k=3)
    assert [[p.id for p in hits] for hits in approx] == [[p.id for p in hits] for hits in exact]


@pytest.mark.parametrize("index", ["flat", "hnsw", "IVF2,Flat", "SQ8"])
def test_save_load_round_trip(encoder_dir: Path, tmp_path: Path, index: str) -> None:
    built = DenseRetriever.build(
        PassageStore(list(PASSAGES)),
        dense_config(encoder_dir, index=index, nprobe=2),
        tmp_path,
        progress=False,
    )
    loaded = DenseRetriever.load(tmp_path)
    assert loaded.encoder.spec == built.encoder.spec and loaded.config == built.config
    for a, b in zip(loaded.search(QUERIES, k=3), built.search(QUERIES, k=3), strict=True):
        assert [p.id for p in a] == [p.id for p in b]
        assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=1e-3)  # fp16 storage


def test_reload_keeps_non_default_encoder_and_index_settings(encoder_dir: Path, tmp_path: Path) -> None:
    """Prefixes, pooling, normalisation and the HNSW search breadth come back from the folder, not from the
    defaults: the reloaded index embeds queries and ranks passages exactly as the one that was saved."""
    encoder = EncoderConfig(
        model=str(encoder_dir),
        query_prefix="search: ",
        passage_prefix="doc: ",
        pooling="cls",
        normalize=False,
        bf16=False,
    )
    config = DenseConfig(encoder=encoder, index="hnsw", hnsw_m=8, hnsw_ef_search=3)
    built = DenseRetriever.build(PassageStore(list(PASSAGES)), config, tmp_path, progress=False)
    loaded = DenseRetriever.load(tmp_path)
    assert loaded.config == config and loaded.encoder.spec == built.encoder.spec
    assert loaded.encoder.spec.query_prefix == "search: " and loaded.encoder.spec.pooling == "cls"
    np.testing.assert_allclose(loaded.encoder.encode_queries(QUERIES), built.encoder.encode_queries(QUERIES))
    for a, b in zip(loaded.search(QUERIES, k=3), built.search(QUERIES, k=3), strict=True):
        assert [p.id for p in a] == [p.id for p in b]
        assert [p.score for p in a] == pytest.approx([p.score for p in b], rel=1e-2)  # fp16 storage


def test_prefixes_are_applied_to_queries_and_passages(encoder_dir: Path) -> None:
    e5 = Encoder.from_config(EncoderConfig(model=str(encoder_dir), conventions="e5", bf16=False))
    plain = Encoder.from_config(EncoderConfig(model=str(encoder_dir), pooling="mean", bf16=False))
    assert e5.spec.pooling == "mean"
    np.testing.assert_allclose(
        e5.encode_queries(["paris"]), plain.encode_queries(["query: paris"]), atol=1e-6
    )
    np.testing.assert_allclose(
        e5.encode_passages(["paris"]),
        plain.encode_passages(["passage: paris"]),
    )
    assert not np.allclose(e5.encode_queries(["paris"]), plain.encode_queries(["paris"]), atol=1e-3)


def test_cls_pooling_differs_from_mean_pooling(encoder_dir: Path) -> None:
    cls = Encoder.from_config(EncoderConfig(model=str(encoder_dir), pooling="cls", bf16=False))
    mean = Encoder.from_config(EncoderConfig(model=str(encoder_dir), pooling="mean", bf16=False))
    assert not np.allclose(
        cls.encode_queries(["marie curie"]), mean.encode_queries(["marie curie"]), atol=1e-3
    )


def test_conventions_come_from_presets_names_and_overrides() -> None:
    e5 = resolve_encoder(EncoderConfig(model="e5"))
    assert (e5.model, e5.query_prefix, e5.passage_prefix, e5.pooling) == (
        "intfloat/e5-base-v2",
        "query: ",
        "passage: ",
        "mean",
    )
    assert (e5.query_max_length, e5.passage_max_length) == (256, 512)
    bge = resolve_encoder(EncoderConfig(model="BAAI/bge-small-en-v1.5"))
    assert bge.conventions == "bge" and bge.pooling == "cls"
    assert bge.query_prefix.startswith("Represent this sentence") and bge.passage_prefix == ""
    assert resolve_encoder(EncoderConfig(model="intfloat/multilingual-e5-small")).conventions == "e5"
    plain = resolve_encoder(EncoderConfig(model="sentence-transformers/all-mpnet-base-v2"))
    assert (plain.conventions, plain.query_prefix, plain.pooling) == ("plain", "", "model")
    assert resolve_encoder(EncoderConfig(model="some/e5ish-model")).conventions == "plain"
    custom = resolve_encoder(
        EncoderConfig(model="e5", query_prefix="search: ", pooling="cls", query_max_length=64)
    )
    assert (custom.query_prefix, custom.passage_prefix, custom.pooling, custom.query_max_length) == (
        "search: ",
        "passage: ",
        "cls",
        64,
    )


def test_encoder_identity_ignores_the_name_used() -> None:
    spec = resolve_encoder(EncoderConfig(model="e5"))
    assert spec.same_encoder("e5") and spec.same_encoder("intfloat/e5-base-v2")
    assert not spec.same_encoder("bge")
    renamed = EncoderSpec.model_validate(spec.model_dump() | {"name": "my-e5"})
    assert renamed.same_encoder("e5") and renamed.same_encoder("my-e5")
    assert not renamed.same_encoder("intfloat/e5-large-v2")


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encoder .*cannot load"):
        Encoder.from_config(EncoderConfig(model=str(tmp_path / "no-such-model"), bf16=False))


@pytest.mark.smoke
def test_embedded_minilm_retrieves_by_meaning(tmp_path: Path) -> None:
    minilm = DenseRetriever.build(PassageStore(list(PASSAGES)), DenseConfig(), tmp_path, progress=False)
    assert minilm.encoder.spec.name == "minilm" and minilm.dimension == 384
    results = minilm.search(
        [
            "Who found the radioactive element in 1898?",
            "the first program for a computer",
            "longest river of Africa",
        ],
        k=3,
    )
    assert [hits[0].id for hits in results] == ["radium", "ada", "nile"]


# ------------------------------------------------------------------ streaming builds, index types, mmap


class CountingEncoder:
    """The real encoder, counting the passages it encodes and raising on call number ``fail_on`` (an
    interruption after ``fail_on - 1`` chunks)."""

    def __init__(self, encoder: Encoder, fail_on: int | None = None):
        self.inner, self.spec, self.fail_on = encoder, encoder.spec, fail_on
        self.calls = self.rows = 0

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected interruption")
        self.rows += len(texts)
        return self.inner.encode_passages(texts)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.inner.encode_queries(queries)


CORPUS = generated_passages(300)
GENERATED_QUERIES = [p.contents for p in generated_passages(20, seed=1)]


@pytest.fixture(scope="module")
def encoder(encoder_dir: Path) -> Encoder:
    return Encoder.from_config(dense_config(encoder_dir).encoder)


def brute_force(encoder: Encoder, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product in numpy: the reference every index is held to."""
    scores = encoder.encode_queries(GENERATED_QUERIES) @ embeddings.astype(np.float32).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def test_streaming_build_equals_a_one_shot_build(encoder: Encoder, encoder_dir: Path, tmp_path: Path) -> None:
    """Encoded in 5 chunks of 64 (the last one short), written to disk and added chunk by chunk, the index
    holds the embeddings of one call over the whole corpus and ranks as brute force over them does."""
    config = dense_config(encoder_dir, chunk_size=64)
    streamed = DenseRetriever.build(PassageStore(CORPUS), config, tmp_path, encoder=encoder, progress=False)
    one_shot = encoder.encode_passages([p.contents for p in CORPUS])
    np.testing.assert_allclose(np.load(tmp_path / EMBEDDINGS_FILE), one_shot, atol=2e-3)
    rows, scores = brute_force(encoder, one_shot, k=10)
    hits = streamed.search(GENERATED_QUERIES, k=10)
    assert [[p.id for p in row] for row in hits] == [[CORPUS[i].id for i in row] for row in rows]
    for row, expected in zip(hits, scores, strict=True):
        assert [p.score for p in row] == pytest.approx(expected.tolist(), abs=2e-3)


def test_an_interrupted_build_resumes_and_encodes_only_the_missing_chunks(
    encoder: Encoder, encoder_dir: Path, tmp_path: Path
) -> None:
    config = dense_config(encoder_dir, chunk_size=64)
    whole = DenseRetriever.build(PassageStore(CORPUS), config, tmp_path / "whole", encoder=encoder)
    interrupted = CountingEncoder(encoder, fail_on=3)
    with pytest.raises(RuntimeError, match="injected interruption"):
        DenseRetriever.build(PassageStore(CORPUS), config, tmp_path / "resumed", encoder=interrupted)
    assert interrupted.rows == 128 and not (tmp_path / "resumed" / "index.faiss").exists()
    resumed_encoder = CountingEncoder(encoder)
    resumed = DenseRetriever.build(
        PassageStore(CORPUS), config, tmp_path / "resumed", encoder=resumed_encoder
    )
    assert (resumed_encoder.calls, resumed_encoder.rows) == (3, 300 - 128)  # chunks 3, 4 and the short 5th
    np.testing.assert_array_equal(
        np.load(tmp_path / "resumed" / EMBEDDINGS_FILE), np.load(tmp_path / "whole" / EMBEDDINGS_FILE)
    )
    assert resumed.search(GENERATED_QUERIES, k=10) == whole.search(GENERATED_QUERIES, k=10)


@pytest.mark.parametrize(
    ("index", "least_recall"),
    [("flat", 1.0), ("IVF8,Flat", 1.0), ("HNSW16", 0.95), ("SQ8", 0.9), ("IVF8,PQ16x4", 0.3)],
)
def test_index_factory_types_against_brute_force(
    encoder: Encoder, encoder_dir: Path, tmp_path: Path, index: str, least_recall: float
) -> None:
    """Flat, and IVF probing all its lists, are exact; HNSW, SQ8 and IVF-PQ approximate: recall@10 against
    brute force over the same embeddings is at least the bound (measured on this corpus: HNSW16 1.0, SQ8
    0.96, IVF8,PQ16x4 0.37, ten times chance, 10/300). PQ recall grows with its codes (PQ16: 0.92), and so
    does its training time, hence 4-bit codes here."""
    config = dense_config(encoder_dir, index=index, nprobe=8, train_size=256, chunk_size=100)
    retriever = DenseRetriever.build(PassageStore(CORPUS), config, tmp_path, encoder=encoder, progress=False)
    rows, _ = brute_force(encoder, np.load(tmp_path / EMBEDDINGS_FILE), k=10)
    hits = retriever.search(GENERATED_QUERIES, k=10)
    found = [
        len({p.id for p in row} & {CORPUS[i].id for i in exact})
        for row, exact in zip(hits, rows, strict=True)
    ]
    assert sum(found) / rows.size >= least_recall


def test_an_unknown_index_type_is_an_error_naming_the_field(encoder_dir: Path, tmp_path: Path) -> None:
    config = dense_config(encoder_dir, index="Bogus42")
    with pytest.raises(ValueError, match="dense.index: faiss cannot build 'Bogus42'"):
        DenseRetriever.build(PassageStore(list(PASSAGES)), config, tmp_path, progress=False)


@pytest.mark.parametrize("index", ["flat", "HNSW16", "IVF8,PQ8x4"])
def test_memory_mapped_loading_returns_what_a_full_read_returns(
    encoder: Encoder, encoder_dir: Path, tmp_path: Path, index: str
) -> None:
    import faiss

    config = dense_config(encoder_dir, index=index, nprobe=4, train_size=256)
    DenseRetriever.build(PassageStore(CORPUS), config, tmp_path, encoder=encoder, progress=False)
    mapped = DenseRetriever.load(tmp_path)
    read_whole = faiss.read_index(str(tmp_path / "index.faiss"))
    set_search_parameters(read_whole, config)
    in_memory = DenseRetriever(encoder, read_whole, PassageStore(CORPUS), config)
    assert mapped.search(GENERATED_QUERIES, k=10) == in_memory.search(GENERATED_QUERIES, k=10)


def test_faiss_gpu_is_used_only_when_present() -> None:
    """faiss-cpu here: auto falls back to the CPU, on is a clear error, off never asks."""
    if gpu_count():
        pytest.skip("faiss sees a GPU: the CPU fallback cannot be observed here")
    assert not use_gpu(DenseConfig(gpu="auto")) and not use_gpu(DenseConfig(gpu="off"))
    with pytest.raises(ValueError, match="dense.gpu: on, but faiss sees no GPU"):
        use_gpu(DenseConfig(gpu="on"))


def test_fp16_weights_encode_what_fp32_weights_do(encoder_dir: Path) -> None:
    full = Encoder.from_config(EncoderConfig(model=str(encoder_dir), pooling="mean", bf16=False))
    half = Encoder.from_config(EncoderConfig(model=str(encoder_dir), pooling="mean", fp16=True))
    texts = [p.contents for p in PASSAGES]
    assert half.encode_passages(texts).dtype == np.float16
    np.testing.assert_allclose(half.encode_passages(texts), full.encode_passages(texts), atol=1e-2)
    assert not np.array_equal(half.encode_queries(texts), full.encode_queries(texts))


def test_several_devices_encode_with_a_process_pool(encoder_dir: Path) -> None:
    """Two CPU processes stand in for two GPUs: the pool's embeddings are the single process's."""
    config = EncoderConfig(model=str(encoder_dir), pooling="mean", bf16=False)
    single = Encoder.from_config(config)
    pooled = Encoder.from_config(config.model_copy(update={"devices": ["cpu", "cpu"]}))
    texts = [p.contents for p in CORPUS[:80]]
    try:
        np.testing.assert_allclose(pooled.encode_passages(texts), single.encode_passages(texts), atol=1e-3)
        assert pooled._pool is not None
    finally:
        pooled.close()
    assert pooled._pool is None


def test_a_folder_left_by_another_build_is_redone_not_reused(
    encoder: Encoder, encoder_dir: Path, tmp_path: Path
) -> None:
    """Another index type over the same embeddings rebuilds the index and keeps the embeddings (the encoder
    and passages are the same); another encoder re-encodes everything; search settings change neither."""
    import faiss

    flat = dense_config(encoder_dir, chunk_size=100)
    DenseRetriever.build(PassageStore(CORPUS), flat, tmp_path, encoder=encoder, progress=False)
    same = CountingEncoder(encoder)
    DenseRetriever.build(PassageStore(CORPUS), flat.model_copy(update={"nprobe": 3}), tmp_path, encoder=same)
    hnsw = CountingEncoder(encoder)
    built = DenseRetriever.build(
        PassageStore(CORPUS), dense_config(encoder_dir, index="HNSW16"), tmp_path, encoder=hnsw
    )
    assert same.rows == hnsw.rows == 0
    assert isinstance(faiss.downcast_index(built._index), faiss.IndexHNSW)
    cls = Encoder.from_config(EncoderConfig(model=str(encoder_dir), pooling="cls", bf16=False))
    other = CountingEncoder(cls)
    DenseRetriever.build(
        PassageStore(CORPUS), dense_config(encoder_dir, index="HNSW16"), tmp_path, encoder=other
    )
    assert other.rows == len(CORPUS)
