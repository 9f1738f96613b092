"""Retrieval: the Retriever protocol and its implementations (BM25, dense, HTTP client)."""

from r3rag.retrieval.base import Retriever

__all__ = ["Retriever"]
