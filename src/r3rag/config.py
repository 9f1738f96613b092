"""Configuration: one pydantic model per stage, YAML in and YAML out.

Every constant from the paper lives here, as a field whose default is the paper's value, with the source in
its description; code elsewhere reads it from a config and never inlines it. The CLI flags of a stage are
the fields of its config, and a run directory keeps the YAML of the config it ran with.

This module imports nothing else from r3rag, so every layer may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    """Base for every stage's config: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_yaml(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False), encoding="utf-8")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
        return cls.model_validate(data)


QuestionType = Literal["compositional", "chain", "inference", "comparison", "bridge_comparison"]
Difficulty = Literal["easy", "standard", "hard"]


class WorldConfig(StageConfig):
    """The synthetic world: its size, its split, and the knobs that make its questions hard.

    Measured on this project's machine, SmolLM2-135M fine-tuned for three minutes on templated 2-hop questions
    about fictional entities reaches 94-100% accuracy: a world that easy leaves nothing for RL to learn. The
    ``standard`` default therefore mixes in 3- and 4-hop chains and two-chain comparisons, phrases every
    relation many ways, reuses names and titles, and puts other people's names in passages, so that a first
    query often misses and the policy has to notice and reformulate. ``r3rag data world --report`` measures
    how often a BM25 search with the gold sub-question finds the gold passage, per question type.
    """

    seed: int = Field(0, description="Everything in the world follows from this seed.")
    people: int = Field(700, ge=20, description="People, near-namesakes included; two passages each.")
    cities: int = Field(120, ge=8)
    countries: int = Field(24, ge=3)
    organisations: int = Field(160, ge=12, description="Film studios, publishers, record labels, companies.")
    works: int = Field(420, ge=12, description="Films, novels and albums.")
    train_questions: int = Field(1000, ge=0)
    dev_questions: int = Field(200, ge=0)
    namesake_rate: float = Field(
        0.35, ge=0, le=1, description="Share of people who get a near-namesake (same first name, similar surname)."
    )
    title_echo_rate: float = Field(
        0.3, ge=0, le=1, description="Share of works whose title another work reuses with a small change."
    )
    mention_rate: float = Field(
        0.6, ge=0, le=1, description="Chance that a passage also names unrelated people (shared-name noise)."
    )
    paraphrase_variety: float = Field(
        1.0, ge=0, le=1, description="Share of the phrasings of each relation in use; 0 = one template each."
    )
    indirect_rate: float = Field(
        0.0, ge=0, le=1, description="Share of birth years stated only indirectly ('turned 40 in 1998')."
    )
    type_mix: dict[QuestionType, float] = Field(
        default_factory=lambda: {
            "compositional": 0.3,
            "chain": 0.2,
            "inference": 0.1,
            "comparison": 0.2,
            "bridge_comparison": 0.2,
        },
        description="Relative weights of question types; 'chain' are 3- and 4-hop compositional questions.",
    )

    @classmethod
    def for_difficulty(cls, difficulty: Difficulty, **overrides: Any) -> WorldConfig:
        """Presets: ``easy`` is the 2-hop templated world a cold start alone solves; ``hard`` adds more of
        everything that defeats a single query."""
        presets: dict[str, dict[str, Any]] = {
            "easy": {
                "namesake_rate": 0.0,
                "title_echo_rate": 0.0,
                "mention_rate": 0.0,
                "paraphrase_variety": 0.0,
                "type_mix": {"compositional": 1.0},
            },
            "standard": {},
            "hard": {
                "namesake_rate": 0.6,
                "title_echo_rate": 0.5,
                "mention_rate": 0.9,
                "indirect_rate": 0.1,
                "type_mix": {"compositional": 0.15, "chain": 0.3, "inference": 0.15, "comparison": 0.15,
                             "bridge_comparison": 0.25},
            },
        }
        return cls(**{**presets[difficulty], **overrides})
