"""Splitting a passage into sentences: the unit the oracle teacher quotes and the RL rollout may reorder."""

from __future__ import annotations

import re

# A sentence ends at . ! or ? before a capital, a digit or a quote, unless the period ends an initial ("U.S.",
# "John F. Kennedy").
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)\s+(?=[A-Z0-9\"'(])")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order (empty ones dropped)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
