"""Any OpenAI-compatible chat-completions server (vLLM, SGLang, DeepSeek, a hosted API) as a Generator.

Requests run in a thread pool bounded by ``concurrency`` (the ``openai`` client is thread-safe and keeps one
connection pool; threads keep the Generator protocol synchronous, so the agent needs no event loop).
Timeouts and retries are the ``openai`` client's own: it retries connection errors, timeouts, 408/409/429
and 5xx with exponential backoff and honours ``Retry-After``. Whatever still fails becomes
``Completion(finish_reason="error", error=...)`` for that conversation only, so one bad request never crashes
a rollout or an evaluation.

The API key is read from the environment variable named by ``api_key_env``; when it is unset the key
``"EMPTY"`` is sent, which servers started without a key (vLLM's default) accept. With
``return_token_ids`` the request asks vLLM (0.10.2 and later) for the prompt and completion token ids, which
a PPO trainer needs; other servers ignore the field and only token counts are reported. ``logprobs`` in the
sampling params becomes the API's ``logprobs: true``; a server that does not support it returns none and
``token_logprobs`` stays empty.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row


class OpenAIGenerator:
    """Chat completions against ``base_url`` (e.g. ``http://localhost:8000/v1``) with model ``model``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 3,
        return_token_ids: bool = False,
    ):
        import openai

        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.model = model
        self.concurrency = concurrency
        self.return_token_ids = return_token_ids
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        params = per_row(sampling, len(conversations))
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._complete, conversations, params))

    def _complete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        try:
            response = self.client.chat.completions.create(**self._request(conversation, params))
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
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",  # "content_filter" etc. are kept as the server said
            prompt_token_ids=prompt_ids,
            completion_token_ids=completion_ids,
            prompt_tokens=usage.prompt_tokens if usage else len(prompt_ids),
            completion_tokens=usage.completion_tokens if usage else len(completion_ids),
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
