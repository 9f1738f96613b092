"""A trajectory as it happens, for the viewer's ask tab: from a served agent (its server-sent events) or from
a local agent run in a thread; either way a stream of ``("step", step dict)`` then ``("answer", body)`` or
``("error", {"detail"})``, the events of ``POST /v1/ask/stream``."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from r3rag.agent import Agent
from r3rag.schema import QAExample, Step, Trajectory
from r3rag.serving.agent_api import answer_body

Event = tuple[str, dict[str, Any]]


def remote_events(
    url: str, question: str, api_key: str | None = None, timeout: float = 600.0
) -> Iterator[Event]:
    """The events of ``url``/v1/ask/stream for ``question``; a refused request is one ``error`` event."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.stream(
            "POST",
            url.rstrip("/") + "/v1/ask/stream",
            json={"question": question},
            headers=headers,
            timeout=timeout,
        ) as response:
            if response.status_code != 200:
                response.read()
                detail = response.json().get("detail", response.text) if response.content else ""
                yield "error", {"detail": f"HTTP {response.status_code}: {detail}"}
                return
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    yield event, json.loads(line.removeprefix("data: "))
    except httpx.HTTPError as e:
        yield "error", {"detail": f"cannot reach the agent at {url}: {e}"}


def local_events(agent: Agent, question: str) -> Iterator[Event]:
    """The same events from ``agent`` run here, in a thread (the page stays responsive meanwhile)."""
    events: queue.Queue[Event | None] = queue.Queue()
    started = time.perf_counter()

    def on_step(trajectory: Trajectory, step: Step) -> None:
        events.put(("step", step.to_dict()))

    def work() -> None:
        try:
            (trajectory,) = agent.run(
                [QAExample(id="question", question=question, answers=[])], on_step=on_step
            )
            events.put(("answer", answer_body("local", trajectory, time.perf_counter() - started)))
        except Exception as e:  # shown on the page, like the server's error event
            events.put(("error", {"detail": f"the agent failed: {type(e).__name__}: {e}"}))
        events.put(None)

    threading.Thread(target=work, name="r3rag-ask", daemon=True).start()
    while (event := events.get()) is not None:
        yield event
