"""Any OpenAI-compatible chat-completions server (vLLM, SGLang, DeepSeek, a hosted API) as a Generator.

Every request runs on the generator's :class:`~r3rag.llm.scheduler.Scheduler`: at most ``concurrency`` in
flight across everything that shares the generator, each retried on connection errors, timeouts, 408/409/429
and 5xx with exponential backoff that honours ``Retry-After``, and abandoned (then retried) when no whole
response came within ``timeout`` seconds. The ``openai`` client's own retries are off (the scheduler's module
says why). Two ways in: :meth:`OpenAIGenerator.generate`, the synchronous batch of the Generator protocol (the
batch fans out to the scheduler), and :meth:`OpenAIGenerator.complete`, one awaitable completion, with which
the agent runs each question on its own. Whatever still fails becomes ``Completion(finish_reason="error",
error=...)`` for that conversation only, so one bad request never crashes a rollout or an evaluation; the
callers record it as a failed, retryable call.

The API key is read from the environment variable named by ``api_key_env``; when it is unset the key
``"EMPTY"`` is sent, which servers started without a key (vLLM's default) accept. With
``return_token_ids`` the request asks vLLM (0.10.2 and later) for the prompt and completion token ids, which
a PPO trainer needs; other servers ignore the field and only token counts are reported. ``logprobs`` in the
sampling params becomes the API's ``logprobs: true``; a server that does not support it returns none and
``token_logprobs`` stays empty.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.llm.scheduler import Scheduler


class OpenAIGenerator:
    """Chat completions against ``base_url`` (e.g. ``http://localhost:8000/v1``) with model ``model``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        return_token_ids: bool = False,
    ):
        import openai

        self.model = model
        self.return_token_ids = return_token_ids
        self.scheduler = Scheduler(concurrency, max_retries, timeout, backoff_s)
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            timeout=timeout,
            max_retries=0,  # the scheduler retries, with a whole-request deadline and the slot released
        )

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        params = per_row(sampling, len(conversations))
        if not conversations:
            return []
        return self.scheduler.run(self._gather(conversations, params))

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        """:meth:`generate`, awaited from any event loop."""
        params = per_row(sampling, len(conversations))
        return await self.scheduler.submit(self._gather(conversations, params))

    async def _gather(
        self, conversations: Sequence[Conversation], params: list[SamplingParams]
    ) -> list[Completion]:
        return list(await asyncio.gather(*map(self.complete, conversations, params)))

    async def complete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        """One completion, awaited on the scheduler's loop; a call that still fails after the retries is an
        error completion."""
        request = self._request(conversation, params)
        try:
            response = await self.scheduler.call(lambda: self.client.chat.completions.create(**request))
        except Exception as e:  # noqa: BLE001 - any failure of one request is reported on that completion
            return Completion(text="", finish_reason="error", error=f"{type(e).__name__}: {e}")
        if not response.choices:
            return Completion(text="", finish_reason="error", error="the server returned no choices")
        choice = response.choices[0]
        usage = response.usage
        extra = choice.model_extra or {}
        prompt_ids = list((response.model_extra or {}).get("prompt_token_ids") or [])
        completion_ids = list(extra.get("token_ids") or [])
        logprobs = [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
        prompt_tokens = usage.prompt_tokens if usage else len(prompt_ids)
        completion_tokens = usage.completion_tokens if usage else len(completion_ids)
        self.scheduler.add_tokens(prompt_tokens, completion_tokens)
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",  # "content_filter" etc. are kept as the server said
            prompt_token_ids=prompt_ids,
            completion_token_ids=completion_ids,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_logprobs=logprobs,
        )

    def _request(self, conversation: Conversation, params: SamplingParams) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if params.logprobs:
            request["logprobs"] = True
        extra_body: dict[str, Any] = {}
        if params.stop_token_ids:
            extra_body["stop_token_ids"] = list(params.stop_token_ids)
        if self.return_token_ids:
            extra_body["return_token_ids"] = True
        if extra_body:
            request["extra_body"] = extra_body
        return request

    def close(self) -> None:
        """Stop the scheduler's loop (the connections close with the process)."""
        self.scheduler.close()
