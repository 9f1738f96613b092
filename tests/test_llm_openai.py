"""The OpenAI-compatible backend against a scripted chat-completions server on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from r3rag.llm.base import SamplingParams
from r3rag.llm.openai import OpenAIGenerator


class Script:
    """What the server does, chosen by the user message: ok, flaky, slow, busy..., pair..., ids or none.

    A ``pair`` request is held until two requests are in flight at once (or ``PAIR_WAIT_S`` passed, which
    only a client that never overlaps two requests waits for): overlap is then an event, not a timing
    accident, and ``most_active`` says how many ran together."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.attempts: Counter[str] = Counter()
        self.active = 0
        self.most_active = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            user = body["messages"][-1]["content"]
            self.attempts[user] += 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                return await self.reply(user, body)
            finally:
                self.active -= 1

        return app

    async def reply(self, user: str, body: dict[str, Any]) -> JSONResponse:
        if user == "flaky" and self.attempts[user] <= 2:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if user == "slow":
            await asyncio.sleep(1.0)
        if user.startswith("busy"):
            await asyncio.sleep(0.2)
        if user.startswith("pair"):
            await self._until_two_in_flight()
        if user == "none":
            return JSONResponse({**_completion(body, ""), "choices": []})
        payload = _completion(body, f"echo {user}")
        if user == "ids":
            payload["prompt_token_ids"] = [5, 6, 7]
            payload["choices"][0]["token_ids"] = [8, 9]
        return JSONResponse(payload)

    async def _until_two_in_flight(self) -> None:
        for _ in range(int(PAIR_WAIT_S / 0.005)):
            if self.active >= 2:
                return
            await asyncio.sleep(0.005)


PAIR_WAIT_S = 10.0


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    config = uvicorn.Config(script.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", script
    srv.should_exit = True
    thread.join(timeout=5)


def conv(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": user}]


def test_request_carries_the_sampling_and_the_key(server, monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, script = server
    monkeypatch.setenv("R3RAG_TEST_KEY", "secret-1")
    generator = OpenAIGenerator(base_url, "policy", api_key_env="R3RAG_TEST_KEY")
    params = SamplingParams(
        temperature=0.7, top_p=0.9, max_new_tokens=33, stop=("\nStep 2:",), seed=5, stop_token_ids=(2,)
    )
    (completion,) = generator.generate([conv("ok")], params)
    assert completion.text == "echo ok"
    assert completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 3)
    assert completion.error is None
    body = script.requests[-1]
    assert body["model"] == "policy" and body["messages"] == conv("ok")
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.9, 33, 5)
    assert body["stop"] == ["\nStep 2:"] and body["stop_token_ids"] == [2]
    assert "return_token_ids" not in body
    assert script.headers[-1]["authorization"] == "Bearer secret-1"


def test_per_conversation_sampling_and_order(server) -> None:
    base_url, script = server
    generator = OpenAIGenerator(base_url, "policy", concurrency=3)
    temperatures = [0.1, 0.4, 0.7, 1.0]
    users = [f"busy {i}" for i in range(4)]
    out = generator.generate([conv(u) for u in users], [SamplingParams(temperature=t) for t in temperatures])
    assert [c.text for c in out] == [f"echo {u}" for u in users]
    sent = {r["messages"][-1]["content"]: r["temperature"] for r in script.requests}
    assert [sent[u] for u in users] == temperatures


def test_concurrency_is_bounded(server) -> None:
    base_url, script = server
    script.most_active = 0
    generator = OpenAIGenerator(base_url, "policy", concurrency=2)
    out = generator.generate([conv(f"pair {i}") for i in range(6)], SamplingParams())
    assert [c.text for c in out] == [f"echo pair {i}" for i in range(6)]
    assert script.most_active == 2  # each request waited for a second one, and no third came


def test_server_errors_are_retried(server) -> None:
    base_url, script = server
    generator = OpenAIGenerator(base_url, "policy", max_retries=3)
    (completion,) = generator.generate([conv("flaky")], SamplingParams())
    assert completion.text == "echo flaky" and completion.error is None
    assert script.attempts["flaky"] == 3


def test_timeouts_are_retried_then_reported_as_an_error(server) -> None:
    base_url, script = server
    generator = OpenAIGenerator(base_url, "policy", timeout=0.3, max_retries=1)
    ok, slow = generator.generate([conv("ok"), conv("slow")], SamplingParams())
    assert ok.text == "echo ok"
    assert slow.finish_reason == "error" and slow.text == ""
    assert "Timeout" in (slow.error or "")
    assert script.attempts["slow"] == 2


def test_unreachable_server_is_an_error_not_an_exception() -> None:
    generator = OpenAIGenerator("http://127.0.0.1:9/v1", "policy", timeout=1, max_retries=0)
    (completion,) = generator.generate([conv("ok")], SamplingParams())
    assert completion.finish_reason == "error"
    assert "Connection" in (completion.error or "")


def test_empty_choices_are_an_error(server) -> None:
    base_url, _ = server
    (completion,) = OpenAIGenerator(base_url, "policy").generate([conv("none")], SamplingParams())
    assert completion.finish_reason == "error"
    assert completion.error == "the server returned no choices"


def test_token_ids_when_the_server_returns_them(server) -> None:
    base_url, script = server
    generator = OpenAIGenerator(base_url, "policy", return_token_ids=True)
    (completion,) = generator.generate([conv("ids")], SamplingParams())
    assert script.requests[-1]["return_token_ids"] is True
    assert completion.prompt_token_ids == [5, 6, 7]
    assert completion.completion_token_ids == [8, 9]
