"""Passage embeddings on disk: encoded chunk by chunk into one fp16 ``.npy``, resumable after interruption.

Encoding 21M passages takes hours, so it must survive a crash, a kill or a pre-empted GPU. The file
``embeddings.f16.npy`` is created at full size up front (sparse on disk), each chunk is written at its rows
and flushed, and only then does ``embeddings.progress.json`` move forward: a restarted build reads how many
rows are done and encodes only the rest. Chunks are written and read with plain file I/O rather than through
a memory map, so the build's memory is one chunk (texts, fp32 and fp16 vectors), whatever the corpus size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from r3rag.retrieval.encoders import EncoderSpec
from r3rag.retrieval.store import Passages

EMBEDDINGS_FILE = "embeddings.f16.npy"
PROGRESS_FILE = "embeddings.progress.json"
_DTYPE = np.dtype(np.float16)


class PassageEncoder(Protocol):
    """What the index needs from an encoder (:class:`~r3rag.retrieval.encoders.Encoder`, or a stand-in)."""

    spec: EncoderSpec

    @property
    def dimension(self) -> int: ...

    def encode_passages(self, texts: list[str]) -> np.ndarray: ...

    def encode_queries(self, queries: list[str]) -> np.ndarray: ...


def _rows_done(progress: Path, shape: tuple[int, int], path: Path) -> int:
    """Rows already encoded: 0 unless the progress file and the embeddings file agree with ``shape``."""
    if not (progress.is_file() and path.is_file()):
        return 0
    state = json.loads(progress.read_text(encoding="utf-8"))
    if (state.get("passages"), state.get("dimension")) != shape:
        return 0
    return int(state["rows"])


def _data_offset(path: Path, shape: tuple[int, int]) -> int:
    """Where the rows start in the ``.npy`` file: after its header, whose length the format decides."""
    return path.stat().st_size - shape[0] * shape[1] * _DTYPE.itemsize


def encode_to_disk(
    encoder: PassageEncoder, passages: Passages, directory: Path, chunk_size: int, progress: bool = True
) -> Path:
    """Encode every passage into ``directory/embeddings.f16.npy``, resuming after the last chunk written."""
    path, state = directory / EMBEDDINGS_FILE, directory / PROGRESS_FILE
    shape = (len(passages), encoder.dimension)
    done = _rows_done(state, shape, path)
    if done == 0:
        np.lib.format.open_memmap(path, mode="w+", dtype=_DTYPE, shape=shape).flush()
    offset = _data_offset(path, shape)
    row_bytes = shape[1] * _DTYPE.itemsize
    with (
        open(path, "r+b") as f,
        tqdm(total=shape[0], initial=done, desc="encode", unit="passage", disable=not progress) as bar,
    ):
        for start in range(done, shape[0], chunk_size):
            stop = min(start + chunk_size, shape[0])
            vectors = encoder.encode_passages(list(passages.contents(start, stop)))
            if vectors.shape != (stop - start, shape[1]):
                raise ValueError(
                    f"encoder {encoder.spec.name!r} returned {vectors.shape} for {stop - start} passages of "
                    f"dimension {shape[1]}"
                )
            f.seek(offset + start * row_bytes)
            f.write(np.ascontiguousarray(vectors, dtype=_DTYPE).tobytes())
            f.flush()
            os.fsync(f.fileno())
            tmp = state.with_name(state.name + ".tmp")
            tmp.write_text(json.dumps({"passages": shape[0], "dimension": shape[1], "rows": stop}))
            os.replace(tmp, state)
            bar.update(stop - start)
    return path


def read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an embeddings file as float32, read (not mapped), so they leave no page
    mapped in this process once dropped."""
    embeddings = np.load(path, mmap_mode="r")
    shape = embeddings.shape
    offset = _data_offset(path, shape)
    del embeddings
    with open(path, "rb") as f:
        f.seek(offset + start * shape[1] * _DTYPE.itemsize)
        rows = np.fromfile(f, dtype=_DTYPE, count=(stop - start) * shape[1])
    return rows.reshape(stop - start, shape[1]).astype(np.float32)


def sample_rows(path: Path, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct rows drawn with a fixed seed (all rows when there are fewer), as float32: the
    training sample of IVF, PQ and SQ indexes."""
    embeddings = np.load(path, mmap_mode="r")
    n = embeddings.shape[0]
    if size >= n:
        return np.asarray(embeddings, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.asarray(embeddings[rows], dtype=np.float32)
