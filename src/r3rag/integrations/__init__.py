"""Adapters that run r3rag's agent, retriever and reward inside other training engines (optional extras)."""
