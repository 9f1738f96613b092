"""A retriever whose passages come back with their sentences reordered: where a fact sits says nothing.

Why: measured on the synthetic world (docs/results.md), RL runs learnt to quote a passage's first sentence,
which names the answer of 36-41% of the hops they read; their right quotes grew where the answer is first
and not where it is later. With the sentences of every passage in an order drawn for it, the first sentence
is right no more often than any other, so the reward pays only reading the sentence that holds the hop's
relation. Used by the RL rollout alone (``PPOConfig.shuffle_sentences``, off); evaluation reads passages as
they are. Measured once, from one cold start and seed, it gained nothing (docs/results.md): an ablation.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from r3rag.retrieval.base import Retriever
from r3rag.schema import Passage
from r3rag.sentences import split_sentences


class SentenceShuffledRetriever:
    """Wraps ``inner``: every passage it returns has its sentences in an order drawn from ``seed`` and the
    passage's id (the same passage in the same order within one wrapper, whichever query found it)."""

    def __init__(self, inner: Retriever, seed: int) -> None:
        self.inner = inner
        self.seed = seed

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[self.shuffled(p) for p in hits] for hits in self.inner.search(queries, k)]

    def shuffled(self, passage: Passage) -> Passage:
        """``passage`` with its sentences in this wrapper's order for its id, joined by single spaces."""
        sentences = split_sentences(passage.text)
        random.Random(f"{self.seed}:{passage.id}").shuffle(sentences)
        return dataclasses.replace(passage, text=" ".join(sentences))
