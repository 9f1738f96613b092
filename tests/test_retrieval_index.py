"""Index folders: manifest contents, load round trip, refusal of a mismatched corpus or encoder, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from r3rag import __version__
from r3rag.cli import app
from r3rag.config import DenseConfig, EncoderConfig, IndexBuildConfig, RetrievalConfig
from r3rag.data.corpus import corpus_checksum, write_corpus
from r3rag.retrieval import open_retriever
from r3rag.retrieval.bm25 import BM25Retriever
from r3rag.retrieval.dense import DenseRetriever
from r3rag.retrieval.encoders import Encoder
from r3rag.retrieval.index import (
    MANIFEST_FILE,
    IndexFormatError,
    IndexMismatchError,
    build_index,
    load_index,
    read_manifest,
    staging_folder,
)
from retrieval_fixtures import PASSAGES, tiny_encoder_dir, write_hand_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hand_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def bm25_index(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "bm25"
    build_index(IndexBuildConfig(corpus=corpus, out=out), progress=False)
    return out


@pytest.fixture(scope="module")
def dense_index(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder = tiny_encoder_dir(tmp_path_factory.mktemp("models") / "tiny-encoder")
    out = tmp_path_factory.mktemp("indexes") / "dense"
    dense = DenseConfig(encoder=EncoderConfig(model=str(encoder), pooling="mean", bf16=False))
    build_index(IndexBuildConfig(corpus=corpus, out=out, retriever="dense", dense=dense), progress=False)
    return out


def test_bm25_manifest_records_what_the_index_was_built_from(bm25_index: Path, corpus: Path) -> None:
    manifest = read_manifest(bm25_index)
    assert manifest.retriever == "bm25" and manifest.encoder is None
    assert manifest.corpus_sha256 == corpus_checksum(corpus) and manifest.corpus == str(corpus.resolve())
    assert manifest.passages == manifest.sizes["passages"] == len(PASSAGES)
    assert manifest.sizes["vocabulary"] > 30 and manifest.sizes["bytes"] > 0
    assert manifest.r3rag_version == __version__ and manifest.build_seconds > 0
    assert manifest.config["stemmer"] == "english"
    assert json.loads((bm25_index / MANIFEST_FILE).read_text())["retriever"] == "bm25"


def test_dense_manifest_records_the_encoder(dense_index: Path) -> None:
    manifest = read_manifest(dense_index)
    assert manifest.retriever == "dense" and manifest.sizes["dimension"] == 32
    assert manifest.encoder is not None and manifest.encoder.pooling == "mean"
    assert manifest.config["index"] == "flat"


@pytest.mark.parametrize("fixture", ["bm25_index", "dense_index"])
def test_load_index_round_trip(fixture: str, request: pytest.FixtureRequest, corpus: Path) -> None:
    directory = request.getfixturevalue(fixture)
    retriever = load_index(directory, expect_corpus=corpus)
    assert isinstance(retriever, BM25Retriever if fixture == "bm25_index" else DenseRetriever)
    hits = retriever.search(["Marie Curie radioactivity", "river"], k=3)
    assert [len(h) for h in hits] == [3, 3]
    assert {p.id for row in hits for p in row} <= {p.id for p in PASSAGES}
    if fixture == "bm25_index":
        assert hits[0][0].id == "curie"


def test_another_corpus_is_refused(bm25_index: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    write_corpus(other, PASSAGES[:5])
    with pytest.raises(IndexMismatchError, match=r"built from another corpus.*other\.jsonl has sha256"):
        load_index(bm25_index, expect_corpus=other)
    with pytest.raises(FileNotFoundError, match="expect_corpus: .*missing.jsonl: no such file"):
        load_index(bm25_index, expect_corpus=tmp_path / "missing.jsonl")


def test_another_encoder_is_refused(bm25_index: Path, dense_index: Path) -> None:
    with pytest.raises(IndexMismatchError, match="built with encoder .* but encoder 'minilm' was expected"):
        load_index(dense_index, expect_encoder="minilm")
    with pytest.raises(IndexMismatchError, match="is a BM25 index, which has no encoder"):
        load_index(bm25_index, expect_encoder="e5")
    spec = read_manifest(dense_index).encoder
    assert spec is not None
    load_index(dense_index, expect_encoder=spec.model)
    load_index(bm25_index, expect_encoder="bm25")


def test_folders_that_are_not_indexes_are_refused(tmp_path: Path, bm25_index: Path) -> None:
    with pytest.raises(IndexFormatError, match="not an r3rag index"):
        load_index(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MANIFEST_FILE).write_text('{"retriever": "bm25"}')
    with pytest.raises(IndexFormatError, match="not a valid index manifest"):
        load_index(broken)
    future = tmp_path / "future"
    future.mkdir()
    manifest = json.loads((bm25_index / MANIFEST_FILE).read_text()) | {"format": 99}
    (future / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="index format 99"):
        load_index(future)


def test_rebuild_replaces_an_index_but_never_other_files(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build_index(IndexBuildConfig(corpus=corpus, out=out), progress=False)
    (out / "stale.txt").write_text("left over")
    build_index(IndexBuildConfig(corpus=corpus, out=out), progress=False)
    assert not (out / "stale.txt").exists() and (out / MANIFEST_FILE).is_file()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an r3rag index; refusing"):
        build_index(IndexBuildConfig(corpus=corpus, out=precious), progress=False)
    assert (precious / "notes.txt").read_text() == "mine"


def test_empty_corpus_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: no passages"):
        build_index(IndexBuildConfig(corpus=empty, out=tmp_path / "index"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def test_open_retriever_takes_a_folder_or_a_url(bm25_index: Path, corpus: Path) -> None:
    local = open_retriever(RetrievalConfig(source=str(bm25_index), expect_corpus=corpus, n_threads=2))
    assert isinstance(local, BM25Retriever) and local.n_threads == 2
    from r3rag.retrieval.client import RetrieverClient

    remote = open_retriever(RetrievalConfig(source="http://127.0.0.1:8001/", retries=1))
    assert (
        isinstance(remote, RetrieverClient) and remote.url == "http://127.0.0.1:8001" and remote.retries == 1
    )


def test_cli_build_and_search(corpus: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-index"
    built = runner.invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert read_manifest(out).passages == len(PASSAGES)
    found = runner.invoke(app, ["index", "search", str(out), "Who discovered radium?", "-k", "2"])
    assert found.exit_code == 0, found.output
    assert "Radium" in found.stdout and "radium" in found.stdout
    other = tmp_path / "other.jsonl"
    write_corpus(other, PASSAGES[:5])
    refused = runner.invoke(app, ["index", "search", str(out), "radium", "--expect-corpus", str(other)])
    assert refused.exit_code == 2 and "built from another corpus" in refused.output
    bad = runner.invoke(
        app, ["index", "build", "--corpus", str(corpus), "--out", str(out), "--retriever", "tfidf"]
    )
    assert bad.exit_code == 2 and "retriever" in bad.output and "'bm25' or 'dense'" in bad.output


# ------------------------------------------------------------------------- resumed builds, old folders


def test_an_interrupted_dense_build_resumes_where_it_stopped(
    corpus: Path, dense_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that fails after its second chunk keeps its staging folder; the next build of the same corpus
    and settings encodes only the passages left and ends with the index an uninterrupted build makes."""
    dense = DenseConfig.model_validate(read_manifest(dense_index).config | {"chunk_size": 4})
    config = IndexBuildConfig(corpus=corpus, out=tmp_path / "dense", retriever="dense", dense=dense)
    encoded: list[int] = []
    real = Encoder.encode_passages

    def interrupted(self: Encoder, texts: list[str]) -> np.ndarray:
        if len(encoded) == 2:
            raise KeyboardInterrupt  # what a Ctrl-C or a pre-empted job looks like from inside
        encoded.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(Encoder, "encode_passages", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(config, progress=False)
    staging = staging_folder(config.out)
    assert encoded == [4, 4] and not config.out.exists() and staging.is_dir()
    monkeypatch.setattr(
        Encoder, "encode_passages", lambda self, texts: [encoded.append(len(texts)), real(self, texts)][1]
    )
    build_index(config, progress=False)
    assert encoded == [4, 4, 2] and not staging.exists()  # 10 passages: only the last chunk was left
    resumed, whole = load_index(config.out), load_index(dense_index)
    queries = ["Marie Curie radioactivity", "river", "computer"]
    for a, b in zip(resumed.search(queries, k=4), whole.search(queries, k=4), strict=True):
        assert [p.id for p in a] == [p.id for p in b]
        assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=2e-3)  # fp16 storage


def test_a_staging_folder_of_another_corpus_is_started_afresh(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    staging = staging_folder(out)
    staging.mkdir()
    (staging / "build.json").write_text('{"corpus_sha256": "another"}')
    (staging / "passages.offsets.npy").write_text("left by a build of another corpus")
    build_index(IndexBuildConfig(corpus=corpus, out=out), progress=False)
    assert read_manifest(out).passages == len(PASSAGES) and not staging.exists()
    assert load_index(out).search(["Marie Curie radioactivity"], k=1)[0][0].id == "curie"


@pytest.mark.parametrize(("fixture", "old_files"), [("bm25_index", []), ("dense_index", ["index.faiss"])])
def test_folders_of_format_1_still_load(
    fixture: str, old_files: list[str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Format 1 had no offsets file and no index.faiss (Flat was rebuilt from the embeddings on load)."""
    new = request.getfixturevalue(fixture)
    old = tmp_path / "old"
    shutil.copytree(new, old)
    (old / "passages.offsets.npy").unlink()
    for name in old_files:
        (old / name).unlink()
    manifest = json.loads((old / MANIFEST_FILE).read_text()) | {"format": 1}
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    queries = ["Marie Curie radioactivity", "river Seine", "English mathematician"]
    assert load_index(old).search(queries, k=3) == load_index(new).search(queries, k=3)
