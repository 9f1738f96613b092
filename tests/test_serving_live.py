"""The ask tab's event streams: from a served agent over real HTTP, and from a local agent in a thread."""

from __future__ import annotations

from r3rag.agent import Agent
from r3rag.config import AgentConfig, AgentServerConfig
from r3rag.retrieval.server import serve_in_thread
from r3rag.serving.agent_api import create_app
from r3rag.serving.live import local_events, remote_events
from test_agent import PASSAGES, FixedRetriever, ScriptedGenerator, answer, query


def test_remote_events_stream_each_step_then_the_answer():
    generator = ScriptedGenerator({"Q": [query(1, "first"), answer(2, "Ada")]})
    app = create_app(generator, FixedRetriever(PASSAGES), AgentServerConfig(agent=AgentConfig(top_k=1)))
    with serve_in_thread(app) as url:
        received = list(remote_events(url, "Q"))
        refused = list(remote_events(url, "   "))
    assert [name for name, _ in received] == ["step", "step", "answer"]
    assert received[0][1]["query"] == "first" and [p["id"] for p in received[0][1]["passages"]] == ["p0"]
    assert (received[2][1]["answer"], received[2][1]["status"]) == ("Ada", "answered")
    assert refused == [
        ("error", {"detail": "HTTP 422: question: Value error, question is empty or only whitespace"})
    ]


def test_remote_events_name_an_unreachable_agent():
    ((name, data),) = list(remote_events("http://127.0.0.1:9", "Q", timeout=2))
    assert name == "error" and data["detail"].startswith("cannot reach the agent at http://127.0.0.1:9")


def test_local_events_run_the_agent_and_report_its_failure():
    agent = Agent(
        ScriptedGenerator({"Q": [query(1), answer(2, "Ada")]}), FixedRetriever(PASSAGES), AgentConfig()
    )
    received = list(local_events(agent, "Q"))
    assert [name for name, _ in received] == ["step", "step", "answer"]
    assert received[-1][1]["answer"] == "Ada" and received[-1][1]["id"] == "local"

    class Broken:
        def generate(self, conversations, sampling):
            raise RuntimeError("no model")

    failing = list(local_events(Agent(Broken(), FixedRetriever(PASSAGES)), "Q"))
    assert failing == [("error", {"detail": "the agent failed: RuntimeError: no model"})]
