"""Generation backends behind one Generator protocol: local transformers, and any OpenAI-compatible server."""

from r3rag.llm.base import Completion, Generator, SamplingParams

__all__ = ["Completion", "Generator", "SamplingParams"]
