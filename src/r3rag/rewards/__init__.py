"""Rewards: answer metrics, the correctness and relevance judges, and the R3-RAG hybrid reward per step.

``metrics`` is plain string arithmetic; ``prompts`` is the text contract with a judge LLM; ``judges`` turns
answers and retrieved documents into Acc and Rel, never raising on a judge failure; ``shaping`` turns a
finished trajectory plus those judgements into one reward per step; ``scoring`` runs the judges over a batch
of trajectories and shapes their rewards.
"""

from r3rag.rewards.judges import (
    CorrectnessItem,
    CorrectnessJudge,
    JudgeStats,
    LLMRelevanceJudge,
    ReferenceRelevanceJudge,
    RelevanceItem,
    RelevanceJudge,
    TextEncoder,
    Verdict,
    build_relevance_judge,
    endpoint_generator,
)
from r3rag.rewards.metrics import (
    cover_exact_match,
    exact_match,
    normalize_answer,
    supporting_precision,
    supporting_recall,
    token_f1,
)
from r3rag.rewards.scoring import TrajectoryScorer, relevance_items
from r3rag.rewards.shaping import StepKind, StepReward, TrajectoryReward, lambda_t, shape_rewards

__all__ = [
    "CorrectnessItem",
    "CorrectnessJudge",
    "JudgeStats",
    "LLMRelevanceJudge",
    "ReferenceRelevanceJudge",
    "RelevanceItem",
    "RelevanceJudge",
    "StepKind",
    "StepReward",
    "TextEncoder",
    "TrajectoryReward",
    "TrajectoryScorer",
    "Verdict",
    "build_relevance_judge",
    "endpoint_generator",
    "cover_exact_match",
    "exact_match",
    "lambda_t",
    "normalize_answer",
    "relevance_items",
    "shape_rewards",
    "supporting_precision",
    "supporting_recall",
    "token_f1",
]
