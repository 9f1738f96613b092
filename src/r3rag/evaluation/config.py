"""``r3rag eval``'s config: the settings every method shares, and one section per registered method.

:class:`EvalConfigBase` holds the shared fields (budgets, top-k, decoding, system turn, judge), written out so
that type checkers and readers see them. :data:`EvalConfig` adds a section per method of the registry, named
after it with hyphens as underscores and holding that method's own ``Settings``, so a YAML file reads
``ircot: {max_passages: 15}`` and ``r3rag: {format_retries: 3, max_doc_chars: 512}``. A new method's file
brings its section with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, create_model, field_validator

from r3rag.config import JudgeConfig, StageConfig
from r3rag.evaluation.methods.base import EvalMethod, MethodSettings
from r3rag.evaluation.methods.registry import field_name, method_class, method_classes


def _eval_judge() -> JudgeConfig:
    """Match-only Acc by default, so evaluation runs offline; the LLM judge needs an endpoint: opt-in."""
    return JudgeConfig(correctness_llm=False, relevance="reference")


def _default_methods() -> list[str]:
    """Every registered method meant for the run's own model (Search-R1's protocol is for its checkpoints)."""
    return [cls.name for cls in method_classes() if cls.by_default]


class EvalConfigBase(StageConfig):
    """``r3rag eval``: the methods compared, the budgets they share, and how their answers are judged.

    Defaults are the paper's evaluation setting: a budget of 5 steps for R3-RAG and every iterative baseline,
    top-5 passages per retrieval (top-16 for RAG with CoT), greedy decoding, and Acc = normalised exact match,
    or an LLM judge when the match fails (when one is configured). The model, retriever and datasets are not
    fields: the run's manifest records them, with checksums. Each method's own settings are in its section
    (see :data:`EvalConfig`).
    """

    methods: list[str] = Field(
        default_factory=_default_methods,
        description="Methods to run (paper Table 1 rows; by default every method but search-r1, which is "
        "meant for Search-R1's own checkpoints).",
    )
    max_steps: int = Field(
        5,
        ge=1,
        description="Step budget of R3-RAG and of every iterative baseline (paper: 5). Accuracy at every "
        "budget 1..max_steps comes from the same run (paper Fig. 3; official cal_metric.py).",
    )
    top_k: int = Field(5, ge=1, description="Passages per retrieval (paper evaluation: top-5).")
    top_k_sweep: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list,
        description="More top-k values to run the sweep methods with (paper Fig. 4: 1..10).",
    )
    sweep_methods: list[str] | None = Field(
        None, description="Methods the top-k sweep runs (default: every selected method that retrieves)."
    )
    passage_chars: int | None = Field(
        None,
        ge=1,
        description="Cut the text of every retrieved passage to about this many characters, for every method "
        "alike (paper evaluation: whole passages; the cost of long prompts on CPU is why to cut).",
    )
    system_prompt: str | None = Field(
        "You are a helpful assistant.", description="System turn of every method (the paper's SFT/RL prompt)."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy (paper evaluation).")
    seed: int | None = Field(0, description="Sampling seed per question and call (matters only above 0).")
    batch_size: int = Field(
        32, ge=1, description="Questions advanced together; also how many are written to the file at a time."
    )
    judge: JudgeConfig = Field(
        default_factory=_eval_judge,
        description="Acc: the correctness judge (match, then the LLM judge if correctness_llm is on).",
    )

    @field_validator("methods", "sweep_methods")
    @classmethod
    def _registered(cls, names: list[str] | None) -> list[str] | None:
        """A method name the registry does not know is an error that lists the known ones."""
        for name in names or ():
            method_class(name)
        return names

    def settings(self, method: str) -> MethodSettings:
        """The section of ``method``: its own settings."""
        method_class(method)
        settings: MethodSettings = getattr(self, field_name(method))
        return settings


def eval_config_model(methods: Sequence[type[EvalMethod]]) -> type[EvalConfigBase]:
    """The eval config with one section per method of ``methods`` (each its Settings, at their defaults)."""
    sections: dict[str, Any] = {}  # field name -> (type, FieldInfo), as create_model takes them
    for cls in methods:
        field = field_name(cls.name)
        if field in EvalConfigBase.model_fields:
            raise TypeError(
                f"method {cls.name!r}: its config section {field!r} is a shared eval config field"
            )
        sections[field] = (
            cls.Settings,
            Field(default_factory=cls.Settings, description=f"{cls.title}: its own settings."),
        )
    names = ", ".join(cls.name for cls in methods)
    others = [cls.name for cls in methods if not cls.by_default]
    sections["methods"] = (
        list[str],
        Field(
            default_factory=lambda: [cls.name for cls in methods if cls.by_default],
            description=f"Methods to run, of {names} (paper Table 1 rows); by default every one"
            + (f" but {', '.join(others)}, meant for their own checkpoints." if others else "."),
        ),
    )
    return create_model(
        "EvalConfig",
        __base__=EvalConfigBase,
        __module__=__name__,
        __doc__=EvalConfigBase.__doc__,
        **sections,
    )


if TYPE_CHECKING:
    EvalConfig = EvalConfigBase  # to a type checker: the shared fields (the sections are made at import)
else:
    EvalConfig = eval_config_model(method_classes())
"""The eval config of every registered method: the shared fields, then one section per method."""
