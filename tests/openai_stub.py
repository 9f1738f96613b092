"""A scripted OpenAI-compatible chat server on loopback, for testing clients of LLM judges and generators.

Replies are chosen by the first rule whose key occurs in the request's messages, so a test decides per
prompt whether the server answers, answers garbage, stalls past the client's timeout, or fails with an HTTP
error (with the headers it likes, such as ``Retry-After``), regardless of the order in which concurrent
requests arrive. A rule may be a list of replies, used one per matching request in order (the last repeats):
fail twice, then answer. Every request is recorded, with the time it arrived.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass(frozen=True)
class Reply:
    """What the server does for a matching request: wait ``delay_s``, then answer ``text`` or fail."""

    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()  # sent with a failure, e.g. (("retry-after", "1"),)
    finish_reason: str = "stop"
    logprobs: tuple[float, ...] = ()  # sent, one entry per value, when the request asks for logprobs


@dataclass
class ScriptedOpenAIServer:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1 at a free port while used as a context manager."""

    rules: dict[str, Reply | list[Reply]]
    default: Reply = field(default_factory=lambda: Reply(text="no rule matched"))
    prompts: list[str] = field(default_factory=list)
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), prompt)

    def __post_init__(self) -> None:
        self._app = FastAPI()
        self._app.post("/v1/chat/completions")(self._chat)
        self._server = uvicorn.Server(
            uvicorn.Config(self._app, log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        )
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def hits(self, key: str) -> int:
        """How many requests contained ``key``."""
        return sum(key in p for p in self.prompts)

    def times(self, key: str) -> list[float]:
        """When each request containing ``key`` arrived (``time.monotonic()``)."""
        return [t for t, p in self.arrivals if key in p]

    def _reply(self, prompt: str) -> Reply:
        key = next((key for key in self.rules if key in prompt), None)
        if key is None:
            return self.default
        rule = self.rules[key]
        if isinstance(rule, Reply):
            return rule
        return rule[min(self.hits(key), len(rule)) - 1]

    async def _chat(self, request: Request) -> Any:
        body = await request.json()
        prompt = "\n".join(m["content"] for m in body["messages"])
        self.prompts.append(prompt)
        self.arrivals.append((time.monotonic(), prompt))
        reply = self._reply(prompt)
        deadline = time.monotonic() + reply.delay_s
        while time.monotonic() < deadline and not self._server.should_exit:  # stall, but not past shutdown
            await asyncio.sleep(0.02)
        if reply.status != 200:
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "server_error"}},
                status_code=reply.status,
                headers=dict(reply.headers),
            )
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "finish_reason": reply.finish_reason,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [
                    {"token": f"t{i}", "logprob": v, "top_logprobs": []} for i, v in enumerate(reply.logprobs)
                ]
            }
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "stub"),
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def __enter__(self) -> ScriptedOpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the scripted OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
