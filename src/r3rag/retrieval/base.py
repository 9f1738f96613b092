"""The Retriever protocol: what the agent, the teacher and the evaluation call to fetch passages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from r3rag.schema import Passage


@runtime_checkable
class Retriever(Protocol):
    """Batched top-k search. Implementations: local BM25, local dense, and the HTTP client of the server.

    ``search`` returns, for each query in order, its top ``k`` passages best first, each with ``score`` set.
    Batching is part of the contract: the agent sends one call per step for all open questions.
    """

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]: ...
