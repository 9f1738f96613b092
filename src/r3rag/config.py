"""Configuration: one pydantic model per stage, YAML in and YAML out.

Every constant from the paper lives here, as a field whose default is the paper's value, with the source in
its description; code elsewhere reads it from a config and never inlines it. The CLI flags of a stage are
the fields of its config, and a run directory keeps the YAML of the config it ran with.

This module imports nothing else from r3rag, so every layer may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

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


class WorldConfig(StageConfig):
    """The synthetic world: size, split and the knobs that make its questions hard.

    The defaults give a few thousand passages and a question mix in which a single well-phrased query often
    does not find the right passage (see ``r3rag data world --report``), so a policy has to notice and
    reformulate: room for RL past the cold start.
    """

    seed: int = Field(0, description="Everything in the world follows from this seed.")
    people: int = Field(700, ge=20, description="Number of people (each gets a biography and a career passage).")
    cities: int = Field(120, ge=8)
    countries: int = Field(24, ge=3)
    organisations: int = Field(160, ge=8)
    works: int = Field(420, ge=10, description="Films, novels and albums.")
    train_questions: int = Field(1000, ge=0)
    dev_questions: int = Field(200, ge=0)
    namesake_rate: float = Field(
        0.35, ge=0, le=1, description="Share of people given a near-namesake (same first name, similar surname)."
    )
    title_echo_rate: float = Field(
        0.3, ge=0, le=1, description="Share of works whose title is reused with a small change by another work."
    )
    mention_rate: float = Field(
        0.6, ge=0, le=1, description="Chance that a passage also mentions other people (shared-name noise)."
    )
    type_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "compositional": 0.35,
            "inference": 0.1,
            "comparison": 0.2,
            "bridge_comparison": 0.2,
            "chain": 0.15,
        },
        description="Relative weights of question types; 'chain' are 3- and 4-hop compositional questions.",
    )
