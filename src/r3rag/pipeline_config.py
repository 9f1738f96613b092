"""The quickstart's config: every stage's config, for the whole chain in one folder (``r3rag quickstart``).

It lives above the stages it chains (imports point down): it embeds the eval config, which is built from the
registry of evaluation methods, so it cannot live in :mod:`r3rag.config`, the ground floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from r3rag.config import (
    BM25Config,
    ColdStartConfig,
    PPOConfig,
    SFTConfig,
    StageConfig,
    TinyModelConfig,
    WorldConfig,
    bf16_field,
    device_field,
)
from r3rag.evaluation.config import EvalConfig
from r3rag.evaluation.methods.registry import field_name, method_classes

TINY_MODEL_DIR = "tiny-model"
"""Where the ``tiny`` quickstart writes its random model, relative to the quickstart folder."""

_QUICKSTART_LAYOUT: dict[tuple[str, str], tuple[Any, str]] = {
    ("sft", "data"): (Path("coldstart/sft.jsonl"), "sft"),
    ("sft", "out"): (Path("sft"), "sft"),
    ("ppo", "model"): ("sft/final", "train"),
    ("ppo", "train"): (Path("world/train.jsonl"), "train"),
    ("ppo", "index"): ("index", "train"),
    ("ppo", "out"): (Path("ppo"), "train"),
    ("ppo", "dev"): (None, "train"),
}
"""The quickstart's stages read each other's outputs from fixed folders: each path field's value (relative to
the quickstart folder) and the command that runs the stage alone on other files."""


def _quickstart_world() -> WorldConfig:
    """The small quickstart's world: the default world's noise (namesakes, title echoes, mentions, every
    phrasing) with 2-hop compositional questions only (reasons in :meth:`PipelineConfig.preset`)."""
    return WorldConfig(type_mix={"compositional": 1.0})


def _quickstart_sft() -> SFTConfig:
    """The small quickstart's cold start (reasons in :meth:`PipelineConfig.preset`)."""
    return SFTConfig(
        data=Path("coldstart/sft.jsonl"),
        out=Path("sft"),
        epochs=1,
        max_examples=384,
        learning_rate=2e-4,
        micro_batch_size=2,
        grad_accum=1,
        val_fraction=0.02,
        eval_every=32,
        save_every=16,
    )


def _quickstart_ppo() -> PPOConfig:
    """The small quickstart's PPO (reasons in :meth:`PipelineConfig.preset`): the CPU preset for 2 iterations,
    at half its actor learning rate, one pass over each rollout (the official value)."""
    return PPOConfig.small_model(
        model="sft/final",
        train=Path("world/train.jsonl"),
        index="index",
        out=Path("ppo"),
        iterations=2,
        actor_lr=1e-5,
        ppo_epochs=1,
    )


def _quickstart_eval() -> EvalConfig:
    """The untrained model's baselines: chain of thought without and with retrieval, and IRCoT."""
    return EvalConfig(methods=["cot", "rag-cot", "ircot"])


def _tiny_eval() -> EvalConfig:
    """The tiny quickstart's evaluation: the same baselines over 2 steps, 16 tokens per call for every method
    (8 for a direct answer) and RAG with CoT's one retrieval at top-4."""
    sections: dict[str, dict[str, int]] = {}
    for method in method_classes():
        section = sections[field_name(method.name)] = {"max_new_tokens": 16}
        if "answer_tokens" in method.Settings.model_fields:
            section["answer_tokens"] = 8
    sections["rag_cot"]["top_k"] = 4
    return EvalConfig.model_validate(
        {"methods": ["cot", "rag-cot", "ircot"], "max_steps": 2, "batch_size": 8, **sections}
    )


class PipelineConfig(StageConfig):
    """``r3rag quickstart``: every stage's config, for the whole chain in one folder.

    The defaults are the ``small`` preset (see :meth:`preset`). The stages read each other's outputs from
    the folder's fixed layout (``world/``, ``index/``, ``coldstart/``, ``sft/``, ``ppo/``), so the path fields
    of ``sft`` and ``ppo`` are that layout, relative to the folder; to run a stage on other files, run its
    own command (``r3rag sft``, ``r3rag train``, ...). ``sft.model`` is the untrained base model: any model
    name, or ``tiny-model`` with ``tiny_model`` set. R3-RAG-CS and R3-RAG are evaluated in the agent settings
    of the cold start they were trained with (:meth:`r3rag_eval`).
    """

    based_on: Literal["small", "tiny", "custom"] = Field(
        "custom", description="The preset this config was made from: a label; the fields are what runs."
    )
    world: WorldConfig = Field(default_factory=_quickstart_world)
    bm25: BM25Config = Field(default_factory=BM25Config)
    tiny_model: TinyModelConfig | None = Field(
        None,
        description="Build this random model into tiny-model/ and start from it (sft.model: tiny-model).",
    )
    coldstart: ColdStartConfig = Field(default_factory=ColdStartConfig)
    sft: SFTConfig = Field(default_factory=_quickstart_sft)
    ppo: PPOConfig = Field(default_factory=_quickstart_ppo)
    eval: EvalConfig = Field(
        default_factory=_quickstart_eval,
        description="The untrained base model's evaluation (its methods are the baseline rows of the table).",
    )
    eval_questions: int = Field(48, ge=1, description="Dev questions every evaluation runs (the first N).")
    eval_bf16: bool | None = bf16_field(
        "The evaluations load their model in bf16 (faster generation where bf16 is native)."
    )
    eval_device: str = device_field()

    @model_validator(mode="after")
    def _check_chain(self) -> Self:
        """Refuse settings that would break the chain: a stage reading from outside the layout, a model
        trained with other agent settings than its rollouts, a teacher that needs an endpoint."""
        for (section, name), (expected, command) in _QUICKSTART_LAYOUT.items():
            value = getattr(getattr(self, section), name)
            if value != expected:
                raise ValueError(
                    f"{section}.{name} must be {expected!s} (the quickstart's layout), not {value!s}; run "
                    f"`r3rag {command}` alone for other files"
                )
        if (self.tiny_model is not None) != (self.sft.model == TINY_MODEL_DIR):
            raise ValueError(f"sft.model is {TINY_MODEL_DIR!r} exactly when tiny_model is set")
        if self.coldstart.teacher != "oracle":
            raise ValueError(
                "the quickstart's cold start uses the oracle teacher; run `r3rag coldstart --teacher llm` "
                "alone for an LLM teacher"
            )
        policy, rollout = self.coldstart.agent, self.ppo.rollout
        for name in ("top_k", "max_doc_chars", "dedup_passages", "system_prompt"):
            if getattr(policy, name) != getattr(rollout, name):
                raise ValueError(
                    f"ppo.rollout.{name} ({getattr(rollout, name)!r}) must be coldstart.agent.{name} "
                    f"({getattr(policy, name)!r}): R3-RAG-CS is trained for the cold start's prompts"
                )
        if "r3rag" in self.eval.methods:
            raise ValueError(
                "eval.methods are the untrained model's baselines; the r3rag rows are always run"
            )
        return self

    def r3rag_eval(self) -> EvalConfig:
        """The evaluation of R3-RAG-CS and R3-RAG: method r3rag in the cold start's agent settings (top-k,
        document cut, re-generations of a malformed step, system turn), everything else as the baselines'."""
        agent = self.coldstart.agent
        r3rag = self.eval.settings("r3rag").model_copy(
            update={"max_doc_chars": agent.max_doc_chars, "format_retries": agent.max_format_retries}
        )
        return self.eval.model_copy(
            update={
                "methods": ["r3rag"],
                "top_k": agent.top_k,
                "r3rag": r3rag,
                "system_prompt": agent.system_prompt,
            }
        )

    @classmethod
    def preset(cls, name: Literal["small", "tiny"]) -> PipelineConfig:
        """``small``: the embedded SmolLM2-135M-Instruct on a 2-hop version of the default world, sized for
        <= 20 minutes on a 2-core CPU (measured: 17 from a fresh clone on an idle Zen 4 EPYC). ``tiny``: a
        random 2-layer model on a tiny world, the whole chain in about a minute; its accuracies mean nothing,
        it checks the plumbing.

        ``small``, from runs measured on the project's 2-core machine:

        - world: the default world's entities and noise (near-namesakes, echoed titles, other people named in
          passages, every phrasing of every relation), but 2-hop compositional questions only. On the full
          mix (3-4-hop chains, inference, comparisons) a 135M model learns little in minutes: 512 examples
          of SFT (12 min on one busy core) gave R3-RAG-CS 8.3% on 48 dev questions (RAG with CoT 10.4%).
          With comparisons in the mix, which untrained RAG with CoT answers by picking one of the two names,
          the trained models only tie it (12.5% each on 60% 2-hop, 40% comparison questions). On 2-hop
          questions alone, 384 examples gave 20.8%, and every untrained baseline 0%. The full mix is what
          ``r3rag data world`` makes and the README's longer runs use;
        - cold-start data: the oracle teacher over every train question (about a second);
        - SFT: 384 examples of whole questions (~128 trajectories), packed 2 trajectories per step (~57
          steps), 1 epoch, lr 2e-4 (a 135M model in a few dozen steps wants a rate far above the official
          1e-5 for 8B). ~110k trained tokens: ~7 minutes on one busy core, ~4 idle. 2% of the questions
          held out; a checkpoint every 16 steps;
        - PPO: :meth:`PPOConfig.small_model` (4 questions x 4 samples per iteration, shared critic) for 2
          iterations at actor lr 1e-5 (half the preset's) and one pass over each rollout (the official
          ``max_epochs``; the preset's second pass cost 1.4 of the 5.4 minutes on a Zen 4 EPYC). Two
          iterations (32 trajectories) demonstrate the stage but cannot improve on R3-RAG-CS: from the same
          R3-RAG-CS (20.8%), R3-RAG scored 8.3% at the preset's 2e-5, 14.6% at 5e-6, 18.8% and 20.8% in two
          runs at 1e-5 (2 passes each): noise, whose harm the lower rate limits. No dev evaluation inside
          PPO: the evaluation stage measures R3-RAG on the same questions as the other rows;
        - evaluation: the first 48 dev questions; the baselines in the paper's evaluation setting (5 steps,
          top-5, top-16 for RAG with CoT, greedy), R3-RAG-CS and R3-RAG in the cold start's agent settings
          (top-2, 512-character documents, 3 re-generations of a malformed step); bf16 weights where the
          CPU computes bf16 natively (AVX-512 BF16, AMX), fp32 elsewhere.
        """
        if name == "small":
            return cls(based_on="small")
        if name != "tiny":
            raise ValueError(f"preset must be small or tiny, not {name!r}")
        agent = ColdStartConfig().agent
        return cls(
            based_on="tiny",
            world=WorldConfig(  # about the smallest world that has every question type
                people=100,
                cities=10,
                countries=3,
                organisations=12,
                works=24,
                train_questions=24,
                dev_questions=6,
            ),
            tiny_model=TinyModelConfig(),
            coldstart=ColdStartConfig(agent=agent),
            sft=SFTConfig(
                data=Path("coldstart/sft.jsonl"),
                out=Path("sft"),
                model=TINY_MODEL_DIR,
                max_steps=3,
                learning_rate=1e-3,
                micro_batch_size=4,
                grad_accum=1,
                eval_every=3,
                save_every=2,
            ),
            ppo=PPOConfig.small_model(
                model="sft/final",
                train=Path("world/train.jsonl"),
                index="index",
                out=Path("ppo"),
                rollout=agent.model_copy(
                    update={"max_steps": 2, "max_new_tokens": 24, "max_format_retries": 0}
                ),
                iterations=2,
                questions_per_iteration=2,
                samples_per_question=2,
                tensorboard=False,
            ),
            eval=_tiny_eval(),
            eval_questions=4,
        )
