"""The agent server (``r3rag serve agent``): schema, limits, errors, auth, streaming order, shared batches."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi.testclient import TestClient

from r3rag.config import AgentConfig, AgentServerConfig
from r3rag.llm.base import Completion, Conversation, SamplingParams
from r3rag.retrieval.server import serve_in_thread
from r3rag.serving.agent_api import create_app
from test_agent import PASSAGES, FixedRetriever, ScriptedGenerator, answer, query

BASE = "http://127.0.0.1"


def client(generator, config: AgentServerConfig | None = None, **kwargs) -> TestClient:
    app = create_app(generator, FixedRetriever(PASSAGES), config, **kwargs)
    return TestClient(app, base_url=BASE)


def events(text: str) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a server-sent event stream."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_ask_returns_the_answer_and_every_step_with_its_passages():
    generator = ScriptedGenerator({"Who made it?": [query(1), answer(2, "Ada")]})
    with client(generator) as c:
        response = c.post("/v1/ask", json={"question": "Who made it?", "top_k": 2})
    assert response.status_code == 200
    body = response.json()
    assert (body["answer"], body["status"], body["question"]) == ("Ada", "answered", "Who made it?")
    assert [s["index"] for s in body["steps"]] == [1, 2]
    first, last = body["steps"]
    assert (first["query"], first["analysis"]) == ("who made it", "need more facts.")
    assert [p["id"] for p in first["passages"]] == ["p0", "p1"]  # top_k=2 of the request
    assert (last["answer"], last["passages"]) == ("Ada", [])
    assert body["prompt_tokens"] > 0 and body["completion_tokens"] == len(query(1)) + len(answer(2, "Ada"))


def test_the_step_budget_of_a_request_ends_the_loop():
    generator = ScriptedGenerator({"Q": [query(1), query(2), query(3)]})
    with client(generator) as c:
        body = c.post("/v1/ask", json={"question": "Q", "max_steps": 2}).json()
    assert (body["status"], body["answer"], len(body["steps"])) == ("out-of-steps", None, 2)
    assert [len(s["passages"]) for s in body["steps"]] == [5, 5]  # the agent's default top-5, deduplicated


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": "   "}, "question: Value error, question is empty"),
        ({"question": "x" * 2001}, "question: String should have at most 2000 characters"),
        ({"question": "Q", "top_k": 21}, "top_k: Input should be less than or equal to 20"),
        ({"question": "Q", "max_steps": 0}, "max_steps: Input should be greater than or equal to 1"),
        ({"question": "Q", "max_steps": 11}, "max_steps: Input should be less than or equal to 10"),
        ({"question": "Q", "temperature": 2}, "temperature: Extra inputs are not permitted"),
        ({}, "question: Field required"),
    ],
)
def test_a_bad_body_is_refused_with_422_naming_the_field(body, field):
    with client(ScriptedGenerator({})) as c:
        for route in ("/v1/ask", "/v1/ask/stream"):
            response = c.post(route, json=body)
            assert response.status_code == 422
            assert field in response.json()["detail"]


def test_content_type_and_body_size_are_checked_before_anything_runs():
    with client(ScriptedGenerator({}), AgentServerConfig(max_body_bytes=1024)) as c:
        form = c.post("/v1/ask", content=b"question=Q", headers={"content-type": "text/plain"})
        assert form.status_code == 415 and "application/json" in form.json()["detail"]
        big = c.post("/v1/ask", json={"question": "x" * 2000})
        assert big.status_code == 413 and "limit is 1024" in big.json()["detail"]
        assert c.get("/stats").json()["requests"] == 0


def test_the_api_key_is_required_on_every_route_when_set(monkeypatch):
    monkeypatch.setenv("AGENT_KEY", "s3cret")
    generator = ScriptedGenerator({"Q": [answer(1, "yes")]})
    with client(generator, AgentServerConfig(api_key_env="AGENT_KEY")) as c:
        assert c.get("/health").status_code == 401
        wrong = c.post("/v1/ask", json={"question": "Q"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "AGENT_KEY" in wrong.json()["detail"]
        ok = c.post("/v1/ask", json={"question": "Q"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["answer"] == "yes"
    monkeypatch.delenv("AGENT_KEY")
    with pytest.raises(ValueError, match="AGENT_KEY is unset or empty"):
        create_app(generator, FixedRetriever(PASSAGES), AgentServerConfig(api_key_env="AGENT_KEY"))


def test_a_host_header_of_another_site_is_refused():
    with client(ScriptedGenerator({})) as c:
        response = c.get("/health", headers={"host": "evil.example:8002"})
    assert response.status_code == 400 and "--allowed-hosts" in response.json()["detail"]


def test_health_names_model_retriever_and_limits_and_docs_show_the_schema():
    describe = {"model": "tiny", "retriever": "index world"}
    with client(ScriptedGenerator({}), AgentServerConfig(agent=AgentConfig(top_k=3)), describe=describe) as c:
        health = c.get("/health").json()
        schema = c.get("/openapi.json").json()
    assert (health["model"], health["retriever"], health["agent"]["top_k"]) == ("tiny", "index world", 3)
    assert health["limits"]["max_top_k"] == 20
    body = schema["paths"]["/v1/ask"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["question"]
    assert body["properties"]["question"]["maxLength"] == 2000
    assert "/v1/ask/stream" in schema["paths"]


def test_stream_sends_each_step_in_order_then_the_answer():
    generator = ScriptedGenerator({"Q": [query(1, "first"), query(2, "second"), answer(3, "done")]})
    with client(generator) as c, c.stream("POST", "/v1/ask/stream", json={"question": "Q", "top_k": 1}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        received = events(r.read().decode())
    assert [name for name, _ in received] == ["step", "step", "step", "answer"]
    assert [data.get("query") for _, data in received[:3]] == ["first", "second", None]
    assert [len(data["passages"]) for _, data in received[:2]] == [1, 1]
    final = received[-1][1]
    assert (final["answer"], final["status"], len(final["steps"])) == ("done", "answered", 3)


class Broken:
    def generate(self, conversations, sampling):
        raise RuntimeError("CUDA out of memory")


def test_a_failing_model_is_a_500_and_a_stream_error_event():
    with client(Broken()) as c:
        response = c.post("/v1/ask", json={"question": "Q"})
        assert response.status_code == 500
        assert response.json()["detail"] == "the agent failed: RuntimeError: CUDA out of memory"
        with c.stream("POST", "/v1/ask/stream", json={"question": "Q"}) as r:
            received = events(r.read().decode())
        assert received == [("error", {"detail": "the agent failed: RuntimeError: CUDA out of memory"})]
        stats = c.get("/stats").json()
    assert (stats["errors"], stats["in_flight"], stats["generation"]["failed_batches"]) == (2, 0, 2)


@dataclass
class SlowGenerator:
    """Answers each question with its own answer after ``delay`` seconds per batch; records batch sizes."""

    delay: float
    batches: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        self.batches.append(len(conversations))
        time.sleep(self.delay)
        out = []
        for conversation in conversations:
            question = conversation[-1]["content"].splitlines()[0].split(": ", 1)[-1]
            out.append(Completion(answer(1, f"answer to {question}")))
        return out


def test_requests_beyond_max_concurrent_get_503_and_a_slow_question_gets_504():
    generator = SlowGenerator(delay=1.0)
    config = AgentServerConfig(max_concurrent=1, request_timeout_s=0.3)
    with client(generator, config) as c, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(c.post, "/v1/ask", json={"question": "Q1"})
        deadline = time.monotonic() + 5
        while c.get("/stats").json()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = c.post("/v1/ask", json={"question": "Q2"})
        assert busy.status_code == 503 and "retry later" in busy.json()["detail"]
        timed_out = slow.result(10)
        assert timed_out.status_code == 504 and "more than 0.3 s" in timed_out.json()["detail"]
        stats = c.get("/stats").json()
    assert (stats["busy"], stats["timeouts"]) == (1, 1)


def test_concurrent_requests_share_generation_batches_and_each_gets_its_own_answer():
    """16 clients over real HTTP: their model calls are merged into far fewer batches than calls."""
    generator = SlowGenerator(delay=0.2)
    app = create_app(generator, FixedRetriever(PASSAGES))
    questions = [f"question number {i}?" for i in range(16)]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:

        def ask(q: str) -> dict:
            response = http.post("/v1/ask", json={"question": q})
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, questions))
        stats = http.get("/stats").json()["generation"]
    assert [a["answer"] for a in answers] == [f"answer to {q}" for q in questions]
    assert stats["calls"] == 16 and sum(generator.batches) == 16
    assert len(generator.batches) <= 4  # the first call runs alone; the others queue behind it
    assert max(generator.batches) >= 8
