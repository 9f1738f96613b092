"""Hydra command-line overrides for veRL's trainer: r3rag's section, and values rendered in hydra's grammar.

The ``r3rag`` section is written whole (every field, defaults included): a partial section would validate
against the nested configs' own defaults, not :class:`~r3rag.config.VerlLoopConfig`'s (its rollout is top-2,
512 characters, where a bare :class:`~r3rag.config.AgentConfig` is top-5). The keys are new to veRL's config,
hence the ``+``.
"""

from __future__ import annotations

from typing import Any

from r3rag.config import VerlLoopConfig

CONFIG_KEY = "r3rag"
"""The section of veRL's config that holds :class:`~r3rag.config.VerlLoopConfig`."""


def hydra_value(value: Any) -> str:
    """``value`` in hydra's override grammar: strings quoted (so spaces, colons, commas and brackets are
    text), lists and dicts in brackets and braces."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no hydra rendering for {type(value).__name__} {value!r}")


def _leaves(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict) and value:
        return [line for k, v in value.items() for line in _leaves(f"{prefix}.{k}", v)]
    return [f"+{prefix}={hydra_value(value)}"]


def r3rag_overrides(config: VerlLoopConfig) -> list[str]:
    """The overrides that put ``config`` into veRL's config as its ``r3rag`` section."""
    return _leaves(CONFIG_KEY, config.model_dump(mode="json"))
