"""Index folders: build one from a corpus, with a manifest; load one only if it is what the caller expects.

The manifest (``manifest.json``) records what the index was built from: the corpus checksum, the retriever
and its settings, the encoder and its conventions, sizes, build time and the r3rag version. Loading with
``expect_corpus`` / ``expect_encoder`` refuses an index built from anything else: a stale index silently
answering from another corpus would corrupt every reward computed from its passages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from r3rag import __version__, runs
from r3rag.config import IndexBuildConfig
from r3rag.data.corpus import corpus_checksum, iter_corpus
from r3rag.retrieval.base import Retriever
from r3rag.retrieval.dense import BUILD_INDEPENDENT
from r3rag.retrieval.embeddings import PassageEncoder
from r3rag.retrieval.encoders import EncoderSpec
from r3rag.retrieval.store import OFFSETS_FILE, MappedPassageStore, write_store

MANIFEST_FILE = "manifest.json"
# Format 2 added passage offsets and index.faiss; folders of format 1 still load (read_manifest).
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
log = logging.getLogger(__name__)


class IndexFormatError(ValueError):
    """Not a readable r3rag index: no manifest, a broken one, or a format this version cannot read."""


class IndexMismatchError(ValueError):
    """An index was built from another corpus or with another encoder than the caller expects."""


class IndexManifest(BaseModel):
    """What an index folder holds and how it was made; written last, so a folder with one is complete."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    r3rag_version: str
    retriever: Literal["bm25", "dense"]
    corpus: str
    corpus_sha256: str
    passages: int
    encoder: EncoderSpec | None = None
    config: dict[str, Any]
    sizes: dict[str, int]
    build_seconds: float
    built_at: str


def read_manifest(directory: str | Path) -> IndexManifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise IndexFormatError(
            f"{directory}: not an r3rag index (no {MANIFEST_FILE}); build one with `r3rag index build`"
        )
    try:
        manifest = IndexManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise IndexFormatError(f"{path}: not a valid index manifest: {e}") from None
    if manifest.format not in READABLE_FORMATS:
        raise IndexFormatError(
            f"{path}: index format {manifest.format}, but this r3rag ({__version__}) reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}; rebuild the index"
        )
    return manifest


def check_manifest(
    manifest: IndexManifest,
    directory: str | Path,
    expect_corpus: str | Path | None,
    expect_encoder: str | None,
) -> None:
    """Raise IndexMismatchError, naming both sides, if the index is not built from what the caller expects."""
    if expect_corpus is not None:
        if not Path(expect_corpus).is_file():
            raise FileNotFoundError(f"expect_corpus: {expect_corpus}: no such file")
        checksum = corpus_checksum(expect_corpus)
        if checksum != manifest.corpus_sha256:
            raise IndexMismatchError(
                f"{directory} was built from another corpus: its manifest records {manifest.corpus} "
                f"(sha256 {manifest.corpus_sha256[:12]}), but {expect_corpus} has sha256 {checksum[:12]}; "
                f"rebuild it with `r3rag index build --corpus {expect_corpus} --out {directory}`"
            )
    if expect_encoder is not None:
        if manifest.encoder is None:
            if expect_encoder != "bm25":
                raise IndexMismatchError(
                    f"{directory} is a BM25 index, which has no encoder, "
                    f"but encoder {expect_encoder!r} was expected"
                )
        elif not manifest.encoder.same_encoder(expect_encoder):
            raise IndexMismatchError(
                f"{directory} was built with encoder {manifest.encoder.name!r} ({manifest.encoder.model}, "
                f"{manifest.encoder.conventions} conventions), but encoder {expect_encoder!r} was expected"
            )


def _folder_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an index (a typo must not delete someone's data)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise FileExistsError(f"{out}: exists and is not an r3rag index; refusing to replace it")


STATE_FILE = "build.json"


def staging_folder(out: Path) -> Path:
    """Where a build of ``out`` writes until it is complete (kept after a failure, to resume from)."""
    return out.parent / f".{out.name}.partial"


def _build_identity(config: IndexBuildConfig, checksum: str) -> dict[str, Any]:
    """What a staging folder was built from: a resumed build must match it, or it starts over."""
    if config.retriever == "bm25":
        settings = config.bm25.model_dump(mode="json")
    else:
        settings = config.dense.model_dump(mode="json", exclude=BUILD_INDEPENDENT)
    return {"corpus_sha256": checksum, "retriever": config.retriever, "settings": settings}


def _open_staging(staging: Path, identity: dict[str, Any]) -> bool:
    """Reuse ``staging`` if an earlier build of the same corpus and settings left it; else start it afresh.
    Return whether it was reused."""
    state = staging / STATE_FILE
    if state.is_file() and json.loads(state.read_text(encoding="utf-8")) == identity:
        return True
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    state.write_text(json.dumps(identity, indent=2), encoding="utf-8")
    return False


def build_index(
    config: IndexBuildConfig, progress: bool = True, encoder: PassageEncoder | None = None
) -> IndexManifest:
    """Build the index ``config`` describes into ``config.out``.

    It is built in a staging folder beside ``out`` and moved into place when complete. A build that fails
    or is killed leaves the staging folder; the next build of the same corpus and settings resumes from it
    (the passages if they were written, the embeddings from the last chunk written, the faiss index if it
    was written) instead of starting over. ``encoder`` replaces the configured dense encoder (the
    benchmark's fast stand-in).
    """
    if not config.corpus.is_file():
        raise FileNotFoundError(f"corpus: {config.corpus}: no such file")
    _check_out(config.out)
    if next(iter_corpus(config.corpus), None) is None:
        raise ValueError(f"corpus: {config.corpus}: no passages")
    started = time.perf_counter()
    checksum = corpus_checksum(config.corpus)
    staging = staging_folder(config.out)
    if _open_staging(staging, _build_identity(config, checksum)):
        log.info("index build: resuming from %s", staging)
    manifest = _build_into(staging, config, checksum, progress, started, encoder)
    (staging / STATE_FILE).unlink()
    runs.move_into_place(staging, config.out)
    return manifest


def _build_into(
    staging: Path,
    config: IndexBuildConfig,
    checksum: str,
    progress: bool,
    started: float,
    dense_encoder: PassageEncoder | None,
) -> IndexManifest:
    from r3rag.retrieval.bm25 import BM25Retriever
    from r3rag.retrieval.dense import DenseRetriever

    if not (staging / OFFSETS_FILE).is_file():
        write_store(iter_corpus(config.corpus), staging, source=config.corpus)
    store = MappedPassageStore.load(staging)
    encoder: EncoderSpec | None = None
    if config.retriever == "bm25":
        bm25 = BM25Retriever.build(store, config.bm25, progress=progress)
        bm25.save(staging)
        sizes = {"vocabulary": bm25.vocabulary_size}
        settings = config.bm25.model_dump(mode="json")
    else:
        dense = DenseRetriever.build(store, config.dense, staging, progress=progress, encoder=dense_encoder)
        encoder, sizes = dense.encoder.spec, {"dimension": dense.dimension}
        settings = config.dense.model_dump(mode="json")
    manifest = IndexManifest(
        r3rag_version=__version__,
        retriever=config.retriever,
        corpus=str(config.corpus.resolve()),
        corpus_sha256=checksum,
        passages=len(store),
        encoder=encoder,
        config=settings,
        sizes={"passages": len(store), "bytes": _folder_bytes(staging), **sizes},
        build_seconds=round(time.perf_counter() - started, 3),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def load_index(
    directory: str | Path,
    expect_corpus: str | Path | None = None,
    expect_encoder: str | None = None,
    *,
    n_threads: int = 0,
    device: str | None = None,
) -> Retriever:
    """Load an index folder as a Retriever, after checking its manifest against what the caller expects.

    ``n_threads`` (BM25) spreads batched searches over threads; ``device`` (dense) places the query encoder.
    """
    from r3rag.retrieval.bm25 import BM25Retriever
    from r3rag.retrieval.dense import DenseRetriever

    manifest = read_manifest(directory)
    check_manifest(manifest, directory, expect_corpus, expect_encoder)
    if manifest.retriever == "bm25":
        retriever = BM25Retriever.load(directory)
        retriever.n_threads = n_threads
        return retriever
    return DenseRetriever.load(directory, device=device)


def describe_retriever(source: str) -> dict[str, Any]:
    """The retriever: an index folder (its manifest's corpus checksum and settings) or a server URL."""
    if source.startswith(("http://", "https://")):
        return {"source": source, "kind": "server", "fingerprint": None}
    manifest = read_manifest(source)
    identity = {
        "retriever": manifest.retriever,
        "corpus_sha256": manifest.corpus_sha256,
        "passages": manifest.passages,
        "encoder": None if manifest.encoder is None else manifest.encoder.model_dump(mode="json"),
        "config": manifest.config,
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {
        "source": str(Path(source).resolve()),
        "kind": manifest.retriever,
        "encoder": None if manifest.encoder is None else manifest.encoder.name,
        "corpus": manifest.corpus,
        "corpus_sha256": manifest.corpus_sha256,
        "passages": manifest.passages,
        "fingerprint": fingerprint,
    }
