"""Shared pieces of the PPO tests: a scripted generator that returns real token ids, a fixed retriever, a toy
scorer, and a trainer on the tiny random Llama that runs an iteration in well under a second."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r3rag.agent import Agent
from r3rag.config import AgentConfig, JudgeConfig, PPOConfig, RewardConfig
from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.rewards import TrajectoryScorer, build_relevance_judge
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.rewards.shaping import StepKind, StepReward, TrajectoryReward
from r3rag.rl.ppo import PPOTrainer
from r3rag.rl.samples import step_token_ids
from r3rag.schema import Passage, QAExample, Trajectory
from r3rag.steps import QUESTION_PREFIX, render_prompt
from tiny_llm import tiny_model, tiny_tokenizer

QUERY = "Step 1:\nThe problem analysis: find the film.\nThe retrieval query: film director"
ANSWER = "Step 2:\nThe problem analysis: the documents say so.\nThe final answer: Ada"
INVALID = "I am not sure."
PASSAGES = [Passage(id=f"p{i}", title=f"Film {i}", text=f"Film {i} was directed by Ada.") for i in range(6)]


@dataclass
class ScriptedTokenGenerator:
    """Replies from a script per question, with the token ids a local backend would report: the prompt
    rendered through the tiny tokenizer's chat template, the reply encoded and ended by end-of-turn."""

    script: dict[str, list[str]]

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        tok = tiny_tokenizer()
        out = []
        for conv, _ in zip(conversations, per_row(sampling, len(conversations)), strict=True):
            question = conv[-1]["content"].splitlines()[0].removeprefix(QUESTION_PREFIX).strip()
            reply = self.script[question].pop(0)
            prompt = tok(render_prompt(tok, conv), add_special_tokens=False)["input_ids"]
            completion = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out.append(Completion(reply, "stop", prompt, completion, len(prompt), len(completion)))
        return out


@dataclass
class FixedRetriever:
    passages: list[Passage] = field(default_factory=lambda: list(PASSAGES))

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [list(self.passages[:k]) for _ in queries]


TARGET_IDS = frozenset(range(200, 400))


@dataclass
class ToyScorer:
    """Rewards each step with the share of its completion tokens whose id is in TARGET_IDS: a dense toy
    objective a tiny random policy can learn in a few iterations. Raises on call ``fail_on`` (a crash)."""

    fail_on: int | None = None
    calls: int = 0

    def score(
        self, examples: Sequence[QAExample], trajectories: Sequence[Trajectory]
    ) -> list[TrajectoryReward]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt("simulated crash")
        rewards = []
        for trajectory in trajectories:
            steps = []
            for step, ids in zip(trajectory.steps, step_token_ids(trajectory), strict=True):
                share = sum(t in TARGET_IDS for t in ids["completion"]) / len(ids["completion"])
                steps.append(StepReward(step.index, StepKind.INVALID, 0.0, 0.0, share, None, share))
            rewards.append(TrajectoryReward(trajectory.status, None, None, tuple(steps)))
        return rewards

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls}


def scripted_rollout(
    script: dict[str, list[str]],
) -> tuple[list[QAExample], list[Trajectory], list[TrajectoryReward]]:
    """Run the scripted replies through the agent (top-2, no re-generation) and score them with the hybrid
    reward (gold passage: p0)."""
    examples = [QAExample(id=q, question=q, answers=["Ada"], supporting_ids=["p0"]) for q in script]
    config = AgentConfig(top_k=2, max_format_retries=0, record_token_ids=True)
    trajectories = Agent(ScriptedTokenGenerator(script), FixedRetriever(), config).run(examples)
    judges = JudgeConfig(correctness_llm=False, relevance="reference")
    relevance = build_relevance_judge(judges, match="id")
    scorer = TrajectoryScorer(RewardConfig(), CorrectnessJudge(judges), relevance)
    return examples, trajectories, scorer.score(examples, trajectories)


def questions(n: int, prefix: str = "q") -> list[QAExample]:
    return [
        QAExample(id=f"{prefix}{i}", question=f"Who directed film {i}?", answers=["Ada"]) for i in range(n)
    ]


def tiny_config(out: Path, **overrides: object) -> PPOConfig:
    """A run on the tiny model: 2 iterations of 6 questions x 2 samples of at most 4 tokens, one step each."""
    values: dict = {
        "model": "tiny",
        "train": out / "train.jsonl",
        "index": "fixed",
        "out": out,
        "rollout": {"max_steps": 1, "max_format_retries": 0, "max_new_tokens": 4, "top_k": 2},
        "iterations": 2,
        "questions_per_iteration": 6,
        "samples_per_question": 2,
        "temperatures": [1.0],
        "actor_lr": 3e-4,
        "critic_lr": 1e-2,
        "warmup_ratio": 0.0,
        "minibatch_size": 4,
        "micro_batch_tokens": 256,
        "ppo_epochs": 2,
        "eval_every": 0,
        "eval_questions": 2,
        "rollout_batch_size": 16,
        "tensorboard": False,
        "bf16": False,
    }
    values.update(overrides)
    return PPOConfig.model_validate(values)


def tiny_trainer(
    config: PPOConfig, scorer: ToyScorer | None = None, actor: torch.nn.Module | None = None
) -> PPOTrainer:
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False, relevance="reference"))
    return PPOTrainer(
        config,
        actor if actor is not None else tiny_model(),
        tiny_tokenizer(),
        FixedRetriever(),
        scorer or ToyScorer(),
        judge,
        questions(12),
        questions(2, prefix="dev"),
    )
