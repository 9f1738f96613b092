"""r3rag: R3-RAG, a language model that learns to reason and retrieve step by step (SFT cold start + PPO)."""

__version__ = "0.1.0"
