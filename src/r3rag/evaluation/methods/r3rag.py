"""R3-RAG itself: the reason-retrieve agent in the paper's step format (:mod:`r3rag.steps`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from r3rag.agent import Agent
from r3rag.config import AgentConfig
from r3rag.evaluation.methods.base import EvalMethod, MethodSettings
from r3rag.llm.base import AsyncGenerator, Generator
from r3rag.retrieval.base import Retriever
from r3rag.schema import QAExample, Trajectory

if TYPE_CHECKING:
    from r3rag.evaluation.config import EvalConfigBase


class R3RAG(EvalMethod):
    """The :class:`~r3rag.agent.Agent` under the shared budget, top-k, decoding and system turn."""

    name = "r3rag"
    title = "R3-RAG"
    position = 100

    class Settings(MethodSettings):
        """R3-RAG's own settings: the agent settings a trained model may need to be run as it was trained."""

        max_new_tokens: int = Field(512, ge=1, description="Tokens per step (official code: 512).")
        format_retries: int = Field(
            0, ge=0, description="Re-generations of a malformed step (official inference: 0; RL: 3)."
        )
        max_doc_chars: int | None = Field(
            None,
            ge=1,
            description="Cut each step's joined documents (paper evaluation: no cut; a model trained on "
            "512-character steps, as the official RL and our cold start do, may be run with 512).",
        )
        force_answer: bool = Field(
            False,
            description="When the steps run out, ask once more for a final answer (the paper does not): the "
            "control that tells a model that reads better from one that only stops searching sooner.",
        )

    settings: Settings

    def __init__(
        self, generator: Generator, retriever: Retriever | None, config: EvalConfigBase, top_k: int | None
    ):
        super().__init__(generator, retriever, config, top_k)
        assert retriever is not None  # checked above: R3-RAG retrieves
        agent_config = AgentConfig(
            max_steps=config.max_steps,
            top_k=self.top_k,
            max_format_retries=self.settings.format_retries,
            temperature=config.temperature,
            seed=config.seed,
            max_new_tokens=self.settings.max_new_tokens,
            max_doc_chars=self.settings.max_doc_chars,
            force_answer=self.settings.force_answer,
            system_prompt=config.system_prompt,
        )
        self.agent = Agent(generator, retriever, agent_config)

    def run(self, examples: Sequence[QAExample]) -> list[Trajectory]:
        generator = self.generator
        if isinstance(generator, AsyncGenerator):  # through an endpoint: each question on its own
            window = max(1, len(examples))
            found = dict(
                generator.scheduler.map(range(len(examples)), lambda n: self.agent.arun(examples[n]), window)
            )
            trajectories = [found[n] for n in range(len(examples))]
        else:
            trajectories = self.agent.run(examples)
        for trajectory in trajectories:
            trajectory.metadata["method"] = self.name
        return trajectories
