"""The Generator protocol: chat conversations in, completions with token ids out.

The agent, the teacher, the judges and the baselines only see this protocol, so a local transformers model
and a remote OpenAI-compatible server (vLLM, SGLang, DeepSeek, a hosted API) are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from r3rag.llm.scheduler import Scheduler

Conversation = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample one completion. ``temperature == 0`` means greedy decoding.

    ``stop`` strings end the completion and are left out of its text; ``stop_token_ids`` end it too, in
    addition to the model's own end-of-turn tokens (remote backends pass them on where the server allows).
    ``logprobs`` asks for the log-probability of every generated token (FLARE retrieves when the model is
    unsure of its next sentence); it is off by default because remote servers charge for it.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False


@dataclass(slots=True)
class Completion:
    """One generated completion. ``finish_reason`` is ``"stop"``, ``"length"`` or ``"error"``.

    Token ids are filled by local backends (the PPO trainer needs them); remote backends may leave them empty
    and report only counts. ``token_logprobs`` (only when ``SamplingParams.logprobs`` asked for them) holds
    the model's log-probability of each generated token, at temperature 1 before top-p, whatever the
    sampling temperature: local backends align it with ``completion_token_ids``; servers give what they
    report.
    """

    text: str
    finish_reason: str = "stop"
    prompt_token_ids: list[int] = field(default_factory=list)
    completion_token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    token_logprobs: list[float] = field(default_factory=list)


@runtime_checkable
class Generator(Protocol):
    """Batched chat generation. ``sampling`` is one setting for all, or one per conversation (the paper
    samples each prompt at several temperatures in one rollout)."""

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]: ...


@runtime_checkable
class AsyncGenerator(Protocol):
    """A Generator that can also complete one conversation at a time, awaited on its scheduler's event loop
    (a remote endpoint): the agent then runs every question on its own instead of in lockstep batches.
    ``agenerate`` is the batch, awaitable from any event loop."""

    scheduler: Scheduler

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]: ...

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]: ...

    async def complete(self, conversation: Conversation, params: SamplingParams) -> Completion: ...


def per_row(sampling: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    """One SamplingParams per conversation, whether one was given for all or one for each."""
    if isinstance(sampling, SamplingParams):
        return [sampling] * n
    rows = list(sampling)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} sampling settings for {n} conversations")
    return rows
