"""faiss indexes from ``index_factory`` strings: trained on a sample, filled by chunk, read memory-mapped.

Inner product throughout (embeddings are unit length, so it is cosine). The file is read with
``IO_FLAG_MMAP_IFC``: the vectors, codes and graph stay in the page cache, shared by every process serving the
folder, instead of being copied into each one. faiss-gpu is used when it is installed and a GPU is visible
(``DenseConfig.gpu``): for training IVF quantizers and for search; vectors are added on the CPU, where the
index will be written from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from r3rag.config import DenseConfig
from r3rag.retrieval.embeddings import read_rows, sample_rows

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
log = logging.getLogger(__name__)


def factory_string(config: DenseConfig) -> str:
    """The ``faiss.index_factory`` string ``config.index`` names (``flat`` and ``hnsw`` are shorthands)."""
    return {"flat": "Flat", "hnsw": f"HNSW{config.hnsw_m}"}.get(config.index, config.index)


def gpu_count() -> int:
    """GPUs faiss can use here: 0 with faiss-cpu, or with faiss-gpu and no visible GPU."""
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


def use_gpu(config: DenseConfig) -> bool:
    """Whether faiss runs on GPUs; ``gpu: on`` without faiss-gpu and a GPU is an error, not a fallback."""
    if config.gpu == "off":
        return False
    if gpu_count():
        return True
    if config.gpu == "on":
        raise ValueError(
            "dense.gpu: on, but faiss sees no GPU (faiss-cpu is installed, or no GPU is visible); install "
            "faiss-gpu in place of faiss-cpu, or set dense.gpu to auto or off"
        )
    return False


def new_index(dimension: int, config: DenseConfig) -> faiss.Index:
    """An empty inner-product index of the configured type, with its HNSW build breadth set."""
    import faiss

    factory = factory_string(config)
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        raise ValueError(f"dense.index: faiss cannot build {factory!r} ({reason})") from None
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.efConstruction = config.hnsw_ef_construction
    return index


def _hnsw(index: faiss.Index) -> faiss.HNSW | None:
    import faiss

    index = faiss.downcast_index(index)
    return index.hnsw if isinstance(index, faiss.IndexHNSW) else None


def set_search_parameters(index: faiss.Index, config: DenseConfig) -> None:
    """Search breadth: ``hnsw_ef_search`` for HNSW graphs, ``nprobe`` for IVF indexes; others have none."""
    import faiss

    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.efSearch = config.hnsw_ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = config.nprobe


def _train(index: faiss.Index, embeddings: Path, config: DenseConfig, gpu: bool) -> None:
    """Train on a seeded sample (IVF, PQ and SQ need it), on the GPUs when asked and the type allows."""
    import faiss

    sample = sample_rows(embeddings, config.train_size)
    ivf = faiss.try_extract_index_ivf(index)
    if gpu and ivf is not None:
        # The coarse k-means is most of the training: run its assignments on the GPUs.
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    index.train(sample)


def build(embeddings: Path, count: int, config: DenseConfig, progress: bool = True) -> faiss.Index:
    """An index of the configured type over the first ``count`` rows of ``embeddings``, added by chunk."""
    import numpy as np

    dimension = int(np.load(embeddings, mmap_mode="r").shape[1])
    index = new_index(dimension, config)
    if not index.is_trained:
        _train(index, embeddings, config, use_gpu(config))
    with tqdm(total=count, desc="index", unit="passage", disable=not progress) as bar:
        for start in range(0, count, config.chunk_size):
            stop = min(start + config.chunk_size, count)
            index.add(read_rows(embeddings, start, stop))
            bar.update(stop - start)
    return index


def write(index: faiss.Index, path: Path) -> None:
    """Write atomically: an index file that exists is complete (a resumed build relies on it)."""
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def read(path: Path, config: DenseConfig) -> faiss.Index:
    """Read memory-mapped, set the search breadth, and move to the GPUs when configured and possible."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    set_search_parameters(index, config)
    if not use_gpu(config):
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True
    options.shard = True
    try:
        return faiss.index_cpu_to_all_gpus(index, options)
    except RuntimeError as e:  # HNSW and some codecs have no GPU version
        if config.gpu == "on":
            raise ValueError(
                f"dense.gpu: on, but {factory_string(config)!r} cannot run on GPUs ({e})"
            ) from None
        log.warning("faiss: %s has no GPU version; searching on the CPU", factory_string(config))
        return index
