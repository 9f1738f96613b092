"""One veRL sample per step, each carrying the value its credit scheme gave it (the paper's: its own reward).

veRL's V1 trainer accepts a list of :class:`AgentLoopOutput` per rollout and trains each as its own sample,
but its post-processing (``AgentLoopWorkerTQ._agent_loop_postprocess``, veRL 0.9.1) copies the final output's
``reward_score`` onto every earlier one, and :meth:`AgentLoopOutput.as_dict` then writes that score on the
last response token (``rm_scores``), the only reward the trainer reads. :class:`StepOutput` keeps the step's
own reward in ``step_reward`` and writes it there instead, after the copy: the paper's per-step credit.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

from r3rag.integrations.verl.overrides import RETURN_INFO_KEY
from r3rag.packing import Sample
from r3rag.rewards.shaping import TrajectoryReward
from r3rag.schema import TrajectoryStatus


class StepOutput(AgentLoopOutput):
    """An :class:`AgentLoopOutput` whose ``rm_scores`` hold ``step_reward`` on the last response token."""

    step_reward: float

    def as_dict(self) -> dict[str, Any]:
        output: dict[str, Any] = super().as_dict()
        output.pop("step_reward", None)
        scores = torch.zeros_like(output["response_mask"], dtype=torch.float32)
        scores[-1] = self.step_reward
        output["rm_scores"] = scores
        return output


def step_outputs(samples: list[Sample], reward: TrajectoryReward) -> list[StepOutput]:
    """The step samples of one trajectory, as the agent loop's credit scheme cut them (``LOOP_CREDIT``), as
    veRL outputs, each keeping the value the scheme put on its last token: the prompt is the sample's tokens
    before its first action, the response its action tokens (one step's completion, all actions: the
    documents are in the next step's prompt, never in a response). A sample that carries the rollout's
    log-probs (the loop's ``record_logprobs``) gives them as the response's, veRL's ``rollout_log_probs``:
    pi_old under ``algorithm.rollout_correction.bypass_mode``. Every output reports the trajectory's
    return (``RETURN_INFO_KEY``), which veRL's group filter compares under ``skip_uniform_groups``."""
    info = {
        "correct": float(bool(reward.correct)),
        "answered": float(reward.status == TrajectoryStatus.ANSWERED),
        "steps": float(len(reward.steps)),
        RETURN_INFO_KEY: round(sum(reward.rewards), 9),  # as uniform_groups: one sum in another order ties
    }
    outputs = []
    for sample in samples:
        start = sample.action_mask.index(True)
        outputs.append(
            StepOutput(
                prompt_ids=list(sample.tokens[:start]),
                response_ids=list(sample.tokens[start:]),
                response_mask=[int(a) for a in sample.action_mask[start:]],
                response_logprobs=list(sample.behaviour_logprobs) or None,
                reward_score=sample.rewards[-1],
                step_reward=sample.rewards[-1],
                num_turns=2,
                metrics=AgentLoopMetrics(),
                extra_fields={"reward_extra_info": dict(info), "step": sample.step},
            )
        )
    return outputs
