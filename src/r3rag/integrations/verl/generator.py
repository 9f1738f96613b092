"""The policy as veRL serves it: a :class:`~r3rag.llm.base.AsyncGenerator` over veRL's server manager.

veRL's rollout servers (vLLM, SGLang) take token ids and return token ids, behind
``server_manager.generate(request_id, prompt_ids=..., sampling_params=dict)``. This generator renders our
conversation with the policy's own chat template (:func:`~r3rag.steps.render_prompt`, exactly as the local
backend does), sends the ids, and reads the reply back the way :class:`~r3rag.llm.hf.HFGenerator` reports it:
``completion_token_ids`` are every sampled token (a stop string's tokens and the end-of-turn token included:
they are the actions PPO scores), ``text`` is cut before the first stop string. :meth:`complete` awaits the
server on the caller's event loop (veRL's worker loop), so :meth:`r3rag.agent.Agent.arun` runs each
trajectory on its own, many in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence
from functools import lru_cache
from typing import Any, Protocol

from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.llm.scheduler import Scheduler
from r3rag.steps import ChatTokenizer, render_prompt


class TokenOutput(Protocol):
    """What veRL's ``server_manager.generate`` returns (``verl.workers.rollout.replica.TokenOutput``)."""

    token_ids: list[int]


class ServerManager(Protocol):
    """veRL's ``LLMServerClient``, as far as the agent uses it."""

    def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]
    ) -> Awaitable[TokenOutput]: ...


class Tokenizer(ChatTokenizer, Protocol):
    eos_token_id: int | None

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@lru_cache(maxsize=1)
def _batch_scheduler() -> Scheduler:
    """The loop that runs the rare synchronous batch (:meth:`ServerGenerator.generate`): one per process."""
    return Scheduler(retries=0)


class ServerGenerator:
    """Completions from veRL's rollout servers. ``base`` is veRL's sampling dict for this rollout (its
    ``top_k``, ``repetition_penalty``, ``logprobs``...); each request overrides temperature, top-p, length,
    stops and seed with what the agent asks for."""

    def __init__(
        self, server_manager: ServerManager, tokenizer: Tokenizer, base: dict[str, Any] | None = None
    ):
        self.server_manager = server_manager
        self.tokenizer = tokenizer
        self.base = dict(base or {})

    @property
    def scheduler(self) -> Scheduler:
        return _batch_scheduler()

    def sampling_dict(self, params: SamplingParams) -> dict[str, Any]:
        """veRL's (vLLM's) sampling parameters for one request."""
        out = {
            **self.base,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "stop": list(params.stop),
        }
        if params.stop_token_ids:
            out["stop_token_ids"] = list(params.stop_token_ids)
        if params.seed is not None:
            out["seed"] = params.seed
        return out

    async def complete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        """One completion; a failed server call is a Completion with ``finish_reason="error"`` (the agent
        marks the trajectory, and the loop drops it, as the local rollout does)."""
        prompt_ids = list(
            self.tokenizer(render_prompt(self.tokenizer, conversation), add_special_tokens=False)["input_ids"]
        )
        try:
            out = await self.server_manager.generate(
                uuid.uuid4().hex, prompt_ids=prompt_ids, sampling_params=self.sampling_dict(params)
            )
        except Exception as error:  # a worker must not die with one request: the trajectory is dropped
            return Completion(
                "", "error", prompt_ids, [], len(prompt_ids), 0, f"{type(error).__name__}: {error}"
            )
        ids = list(out.token_ids)
        text, finish = self._read(ids, params)
        logprobs = getattr(out, "log_probs", None)
        return Completion(
            text,
            finish,
            prompt_ids,
            ids,
            len(prompt_ids),
            len(ids),
            token_logprobs=list(logprobs) if params.logprobs and logprobs else [],
        )

    def _read(self, ids: list[int], params: SamplingParams) -> tuple[str, str]:
        """The reply's text (before the first stop string, without the end-of-turn token) and why it ended."""
        ended = bool(ids) and (ids[-1] == self.tokenizer.eos_token_id or ids[-1] in params.stop_token_ids)
        text = self.tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True)
        cuts = [pos for pos in (text.find(s) for s in params.stop) if pos >= 0]
        if cuts:
            return text[: min(cuts)], "stop"
        return text, "stop" if ended or len(ids) < params.max_new_tokens else "length"

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        params = per_row(sampling, len(conversations))
        return list(
            await asyncio.gather(*(self.complete(c, p) for c, p in zip(conversations, params, strict=True)))
        )

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        return self.scheduler.run(self.agenerate(conversations, sampling))
