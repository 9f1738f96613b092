"""Retrieval: the Retriever protocol and its implementations (BM25, dense, HTTP client).

The implementations import heavy libraries (bm25s, torch, faiss), so they are imported where used, and
:func:`open_retriever` picks one from a :class:`~r3rag.config.RetrievalConfig` without the caller knowing
which: a local index folder or a server URL look the same to the agent.
"""

import os

from r3rag.config import RetrievalConfig
from r3rag.retrieval.base import Retriever

__all__ = ["Retriever", "open_retriever"]


def open_retriever(config: RetrievalConfig) -> Retriever:
    """The retriever ``config.source`` names: a URL gets the HTTP client, anything else is an index folder."""
    if config.source.startswith(("http://", "https://")):
        from r3rag.retrieval.client import RetrieverClient

        key = os.environ.get(config.api_key_env, "").strip() if config.api_key_env else ""
        return RetrieverClient(
            config.source,
            timeout_s=config.timeout_s,
            retries=config.retries,
            backoff_s=config.backoff_s,
            api_key=key or None,
        )
    from r3rag.retrieval.index import load_index

    return load_index(
        config.source,
        config.expect_corpus,
        config.expect_encoder,
        n_threads=config.n_threads,
        device=config.device,
    )
