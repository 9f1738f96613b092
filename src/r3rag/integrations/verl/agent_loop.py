"""The agent loop veRL runs for each sample whose ``agent_name`` is ``r3rag``: our agent, retriever, reward.

veRL's V1 trainer (``trainer.use_v1=true``, its default) calls :meth:`R3RagAgentLoop.run` once per sample of a
question (``rollout.n`` of them, told apart by ``session_id``) on its worker's event loop. A run is the local
trainer's rollout of one question, through the same code paths:

1. the question is the one the dataset row holds (:mod:`~r3rag.integrations.verl.data`, as ``r3rag verl
   prepare`` writes it); the temperature is the paper's for the sample's index (0.1/0.4/0.7/1.0);
2. :meth:`r3rag.agent.Agent.arun` runs it, the policy being veRL's rollout servers
   (:class:`~r3rag.integrations.verl.generator.ServerGenerator`) and the retriever the one the config names
   (``r3rag serve retriever`` on a cluster);
3. :class:`~r3rag.rewards.TrajectoryScorer` gives each step its reward and the credit scheme of the config's
   ``advantage`` (:data:`LOOP_CREDIT`; the paper's :func:`r3rag.rl.samples.step_samples` by default) cuts the
   trajectory into one sample per step, its value on the step's last action token, the documents never
   among the actions;
4. each sample becomes a :class:`~r3rag.integrations.verl.outputs.StepOutput`, which keeps its own reward
   through veRL's post-processing.

A trajectory ended by a failed model call is dropped (an empty list, which veRL accepts), as
:func:`r3rag.rl.rollout.collect` drops it. The retriever and the judges are built once per worker process
from the ``r3rag`` section of veRL's config (:class:`~r3rag.config.VerlLoopConfig`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, register

from r3rag.agent import Agent, failed_call
from r3rag.config import VerlAdvantage, VerlLoopConfig
from r3rag.integrations.verl.data import AGENT_NAME, row_example
from r3rag.integrations.verl.generator import ServerGenerator
from r3rag.integrations.verl.outputs import StepOutput, step_outputs
from r3rag.integrations.verl.overrides import CONFIG_KEY
from r3rag.retrieval import Retriever, open_retriever
from r3rag.rewards import TrajectoryScorer, build_relevance_judge, endpoint_generator
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.rl.samples import (
    CreditScheme,
    return_to_go_samples,
    step_samples,
    trajectory_return_samples,
)
from r3rag.schema import Passage


class _OneAtATime:
    """A retriever searched by one thread at a time: the agent searches off the event loop, and a local index
    is not known to be thread-safe."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever
        self._lock = threading.Lock()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        with self._lock:
            return self.retriever.search(queries, k)


LOOP_CREDIT: dict[VerlAdvantage, CreditScheme] = {
    "gae": step_samples,
    "gae-trajectory": return_to_go_samples,
    "rloo": trajectory_return_samples,
    "grpo": trajectory_return_samples,
}
"""The scheme that cuts one trajectory into veRL's outputs for each ``advantage``: the local trainer's, but
critic-free ones carry the bare return (veRL's GRPO takes the group baseline, across calls of the loop)."""


@dataclass(frozen=True, slots=True)
class _Runtime:
    config: VerlLoopConfig
    retriever: Retriever
    scorer: TrajectoryScorer


@lru_cache(maxsize=4)
def _runtime(config_json: str) -> _Runtime:
    """The retriever and the scorer of one config, built once per worker process."""
    config = VerlLoopConfig.model_validate_json(config_json)
    judge_llm = endpoint_generator(config.judges)
    relevance = None
    if config.reward.mode != "outcome":
        relevance = build_relevance_judge(config.judges, judge_llm)
    match = config.judges.reference_match  # resolved by `r3rag verl prepare` when the reward needs it
    scorer = TrajectoryScorer(
        config.reward,
        CorrectnessJudge(config.judges, judge_llm),
        relevance,
        gold_match=None if match == "auto" else match,
    )
    return _Runtime(config, _OneAtATime(open_retriever(config.retrieval)), scorer)


def loop_config(trainer_config: Any) -> VerlLoopConfig:
    """The ``r3rag`` section of veRL's (omegaconf) config, validated; an error names what is missing."""
    section = trainer_config.get(CONFIG_KEY) if trainer_config is not None else None
    if section is None:
        raise ValueError(
            f"veRL's config has no '{CONFIG_KEY}' section: add the overrides `r3rag verl prepare` writes "
            f"(at least +{CONFIG_KEY}.retrieval.source=<index folder or retriever URL>)"
        )
    return VerlLoopConfig.model_validate(OmegaConf.to_container(section, resolve=True))


def sample_temperature(config: VerlLoopConfig, sampling_params: dict[str, Any], session_id: int) -> float:
    """The paper's temperature for a question's ``session_id``-th sample; greedy when veRL asks for greedy
    (validation, ``do_sample=False``)."""
    if float(sampling_params.get("temperature", 1.0)) == 0.0:
        return 0.0
    return config.temperatures[session_id % len(config.temperatures)]


@register(AGENT_NAME)
class R3RagAgentLoop(AgentLoopBase):
    """R3-RAG's reason-retrieve loop, one veRL output per step (see the module)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> list[StepOutput]:
        if "session_id" not in kwargs:
            raise ValueError(
                "the r3rag agent loop returns one output per step, which only veRL's V1 trainer accepts: "
                "set trainer.use_v1=true"
            )
        config = loop_config(self.config)
        runtime = _runtime(config.model_dump_json())
        example = row_example(kwargs.get("extra_info"))
        session = int(kwargs["session_id"])
        base = {k: v for k, v in sampling_params.items() if k not in ("temperature", "top_p")}
        agent = Agent(
            ServerGenerator(self.server_manager, self.tokenizer, base),
            runtime.retriever,
            config.rollout.model_copy(update={"record_token_ids": True}),
        )
        trajectory = await agent.arun(example, sample_temperature(config, sampling_params, session), session)
        if failed_call(trajectory) is not None:
            return []
        (reward,) = await asyncio.to_thread(runtime.scorer.score, [example], [trajectory])
        return step_outputs(LOOP_CREDIT[config.advantage]([trajectory], [reward]), reward)
