"""Dense: exact top-k against brute force, HNSW, encoder conventions, save/load, the real MiniLM (smoke)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from r3rag.config import DenseConfig, EncoderConfig
from r3rag.retrieval.dense import EMBEDDINGS_FILE, DenseRetriever
from r3rag.retrieval.encoders import Encoder, EncoderSpec, resolve_encoder
from r3rag.retrieval.store import PassageStore
from retrieval_fixtures import PASSAGES, tiny_encoder_dir

QUERIES = ["Marie Curie physicist", "river Seine Paris", "English mathematician computer", "Nile Egypt"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_encoder_dir(tmp_path_factory.mktemp("models") / "tiny-encoder")


def dense_config(encoder_dir: Path, **changes: object) -> DenseConfig:
    encoder = EncoderConfig(model=str(encoder_dir), pooling="mean", bf16=False)
    return DenseConfig(encoder=encoder).model_copy(update=changes)


@pytest.fixture(scope="module")
def retriever(encoder_dir: Path) -> DenseRetriever:
    return DenseRetriever.build(PassageStore(list(PASSAGES)), dense_config(encoder_dir), progress=False)


def test_top_k_is_exact_inner_product(retriever: DenseRetriever, tmp_path: Path) -> None:
    retriever.save(tmp_path)
    stored = np.load(tmp_path / EMBEDDINGS_FILE)
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


def test_hnsw_finds_the_exact_top_k_on_a_small_corpus(retriever: DenseRetriever, encoder_dir: Path) -> None:
    hnsw = DenseRetriever.build(
        PassageStore(list(PASSAGES)), dense_config(encoder_dir, index="hnsw"), progress=False
    )
    exact = retriever.search(QUERIES, k=3)
    approx = hnsw.search(QUERIES, k=3)
    assert [[p.id for p in hits] for hits in approx] == [[p.id for p in hits] for hits in exact]


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_save_load_round_trip(encoder_dir: Path, tmp_path: Path, index: str) -> None:
    built = DenseRetriever.build(
        PassageStore(list(PASSAGES)), dense_config(encoder_dir, index=index), progress=False
    )
    built.save(tmp_path)
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
    built = DenseRetriever.build(PassageStore(list(PASSAGES)), config, progress=False)
    built.save(tmp_path)
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
        e5.encode_passages(["paris"], progress=False),
        plain.encode_passages(["passage: paris"], progress=False),
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
def test_embedded_minilm_retrieves_by_meaning() -> None:
    minilm = DenseRetriever.build(PassageStore(list(PASSAGES)), DenseConfig(), progress=False)
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
