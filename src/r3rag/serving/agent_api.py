"""The agent server: the reason-retrieve loop behind HTTP (``r3rag serve agent``).

``POST /v1/ask {"question", "max_steps"?, "top_k"?}`` answers with the final answer and every step (analysis,
query, retrieved passages, answer); ``POST /v1/ask/stream`` sends the same as server-sent events, one ``step``
event as each step finishes, then one ``answer`` event (or one ``error`` event). ``GET /health`` names the
model, the retriever and the limits; ``GET /stats`` counts requests and shows how well batches were shared;
``/docs`` is the OpenAPI page.

Each request runs its own :class:`~r3rag.agent.Agent` in a worker thread. The generator and the retriever
they share are wrapped in coalescing batchers (:mod:`r3rag.serving.batching`): the model calls of requests
that arrive while a batch runs join the next batch, so 16 concurrent questions cost about one batched forward
pass per step, not 16.

The same guard as the retrieval server (:mod:`r3rag.retrieval.server`): loopback by default with a warning
otherwise, the Host check, an optional API key, JSON bodies only, bounded in size and validated field by
field (422 naming the field), at most ``max_concurrent`` questions at once (503 beyond), and a time limit per
question (504; the question's loop stops at its next model call).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from r3rag.agent import Agent
from r3rag.config import AgentConfig, AgentServerConfig
from r3rag.llm.base import Completion, Conversation, Generator, SamplingParams
from r3rag.retrieval.base import Retriever
from r3rag.retrieval.server import (
    AccessGuard,
    ServerCounters,
    accepted_hosts,
    describe_validation_error,
    exposure_warning,
    read_api_key,
    read_body,
)
from r3rag.schema import QAExample, Step, Trajectory
from r3rag.serving.batching import BatchingGenerator, BatchingRetriever

logger = logging.getLogger(__name__)


class RequestCancelled(RuntimeError):
    """The request's client went away or its time ran out: its loop stops at the next model call."""


# ------------------------------------------------------------------------------------------------ schemas


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("question is empty or only whitespace")
    return text


def request_model(config: AgentServerConfig) -> type[BaseModel]:
    """The /v1/ask body, with this server's limits in its schema (so /docs shows them too)."""

    class AskRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        question: Annotated[
            str, StringConstraints(max_length=config.max_question_chars), AfterValidator(_not_blank)
        ]
        max_steps: Annotated[int, Field(ge=1, le=config.max_steps)] | None = None
        top_k: Annotated[int, Field(ge=1, le=config.max_top_k)] | None = None

    return AskRequest


class PassageOut(BaseModel):
    id: str
    title: str
    text: str
    score: float | None = None


class StepOut(BaseModel):
    """One step: its analysis, then a query with the passages it retrieved, or the final answer."""

    index: int
    analysis: str
    query: str | None
    answer: str | None
    passages: list[PassageOut]
    raw: str
    valid: bool
    issues: list[str]


class AskResponse(BaseModel):
    id: str
    question: str
    answer: str | None
    status: str = Field(description="answered, out-of-steps or format-error")
    steps: list[StepOut]
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def answer_body(request_id: str, trajectory: Trajectory, seconds: float) -> dict[str, Any]:
    """The /v1/ask answer (and the stream's last event) for a finished trajectory."""
    return {
        "id": request_id,
        "question": trajectory.question,
        "answer": trajectory.final_answer,
        "status": trajectory.status.value,
        "steps": [step.to_dict() for step in trajectory.steps],
        "prompt_tokens": trajectory.prompt_tokens,
        "completion_tokens": trajectory.completion_tokens,
        "seconds": round(seconds, 3),
    }


# ------------------------------------------------------------------------------------------------ the loop


class _CancellableGenerator:
    """One request's view of the shared generator: refuses to generate once the request is cancelled."""

    def __init__(self, generator: Generator, cancelled: threading.Event):
        self.generator, self.cancelled = generator, cancelled

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        if self.cancelled.is_set():
            raise RequestCancelled("the request was cancelled")
        return self.generator.generate(conversations, sampling)


@dataclass
class _Stats:
    requests: int = 0
    answered: int = 0
    in_flight: int = 0
    busy: int = 0
    timeouts: int = 0
    errors: int = 0
    cancelled: int = 0
    seconds: float = 0.0
    guard: ServerCounters = field(default_factory=ServerCounters)  # the Host and key refusals


class AgentService:
    """The shared batchers and the worker threads, and the count of questions in flight."""

    def __init__(
        self, generator: Generator, retriever: Retriever, agent: AgentConfig, config: AgentServerConfig
    ):
        wait_s = config.batch_wait_ms / 1000
        self.generator = BatchingGenerator(generator, config.max_batch_rows, wait_s)
        self.retriever = BatchingRetriever(retriever, config.max_batch_rows, wait_s)
        self.agent, self.config = agent, config
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(config.max_concurrent, thread_name_prefix="r3rag-agent")

    def admit(self) -> None:
        """Take a slot for one question, or refuse with 503 when all are taken."""
        with self._lock:
            self.stats.requests += 1
            if self.stats.in_flight >= self.config.max_concurrent:
                self.stats.busy += 1
                raise HTTPException(
                    503, f"server busy: {self.stats.in_flight} questions in flight; retry later"
                )
            self.stats.in_flight += 1

    def start(
        self,
        question: str,
        max_steps: int | None,
        top_k: int | None,
        cancelled: threading.Event,
        on_step: Callable[[Trajectory, Step], None] | None = None,
    ) -> asyncio.Future[Trajectory]:
        """Run one question (after :meth:`admit`) in a worker thread; its slot is freed when the loop ends,
        which after a cancellation is at its next model call."""
        update = {k: v for k, v in (("max_steps", max_steps), ("top_k", top_k)) if v is not None}
        agent = Agent(
            _CancellableGenerator(self.generator, cancelled),
            self.retriever,
            self.agent.model_copy(update=update),
        )
        example = QAExample(id="question", question=question, answers=[])

        def work() -> Trajectory:
            try:
                (trajectory,) = agent.run([example], on_step=on_step)
                return trajectory
            finally:
                with self._lock:
                    self.stats.in_flight -= 1

        future = asyncio.get_running_loop().run_in_executor(self._pool, work)
        # a request that timed out or was dropped no longer awaits its loop: its error is retrieved here
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    def close(self) -> None:
        """Stop the batchers first (a loop waiting on them fails at once), then the worker threads."""
        self.generator.close()
        self.retriever.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ the app


def create_app(
    generator: Generator,
    retriever: Retriever,
    config: AgentServerConfig | None = None,
    describe: dict[str, Any] | None = None,
) -> FastAPI:
    """The agent server's app over ``generator`` and ``retriever`` (``config.generator`` names the model
    the caller built; the app only uses ``generator``); ``describe`` is what /health says of them (the model
    and the index, never a path of the server's file system)."""
    config = config or AgentServerConfig()
    agent = config.agent
    key = read_api_key(config)
    body_model = request_model(config)
    state: dict[str, AgentService] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warning = exposure_warning(config, key is not None, "agent server", "ask the model questions")
        if warning:
            logger.warning(warning)
        service = state["service"] = AgentService(generator, retriever, agent, config)
        yield
        await asyncio.to_thread(service.close)

    app = FastAPI(
        title="r3rag agent",
        description="The R3-RAG reason-retrieve loop: a question in, the answer and every step out.",
        lifespan=lifespan,
    )
    guard_counters = ServerCounters()
    app.add_middleware(
        AccessGuard,
        hosts=accepted_hosts(config),
        key=key,
        key_env=config.api_key_env,
        counters=guard_counters,
    )
    limits = config.model_dump(
        include={"max_question_chars", "max_steps", "max_top_k", "max_body_bytes", "max_concurrent"}
    ) | {"request_timeout_s": config.request_timeout_s}
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body_model.model_json_schema()}},
        }
    }

    async def parse(request: Request) -> BaseModel:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(
                415, f"Content-Type must be application/json, not {media_type or 'none'}: send a JSON body"
            )
        try:
            return body_model.model_validate_json(await read_body(request, config.max_body_bytes))
        except ValidationError as e:
            raise HTTPException(422, describe_validation_error(e)) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **(describe or {}), "agent": agent.model_dump(mode="json"), "limits": limits}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        service = state["service"]
        s = service.stats
        return {
            "requests": s.requests,
            "answered": s.answered,
            "in_flight": s.in_flight,
            "busy": s.busy,
            "timeouts": s.timeouts,
            "cancelled": s.cancelled,
            "errors": s.errors,
            "mean_seconds": round(s.seconds / s.answered, 3) if s.answered else 0.0,
            "rejected": guard_counters.rejected,
            "unauthorized": guard_counters.unauthorized,
            "generation": service.generator.batcher.stats.summary(),
            "search": service.retriever.batcher.stats.summary(),
        }

    @app.post("/v1/ask", response_model=AskResponse, openapi_extra=body_doc)
    async def ask(request: Request) -> dict[str, Any]:
        """Answer one question; the answer holds every step."""
        body = await parse(request)
        service = state["service"]
        service.admit()
        cancelled, started = threading.Event(), time.perf_counter()
        future = service.start(body.question, body.max_steps, body.top_k, cancelled)  # type: ignore[attr-defined]
        try:
            trajectory = await asyncio.wait_for(asyncio.shield(future), config.request_timeout_s)
        except TimeoutError:
            cancelled.set()
            service.stats.timeouts += 1
            raise HTTPException(504, f"the question took more than {config.request_timeout_s} s") from None
        except asyncio.CancelledError:  # the client went away
            cancelled.set()
            service.stats.cancelled += 1
            raise
        except Exception as e:
            service.stats.errors += 1
            raise HTTPException(500, f"the agent failed: {type(e).__name__}: {e}") from None
        seconds = time.perf_counter() - started
        service.stats.answered += 1
        service.stats.seconds += seconds
        return answer_body(uuid.uuid4().hex[:16], trajectory, seconds)

    @app.post(
        "/v1/ask/stream",
        openapi_extra=body_doc
        | {"responses": {"200": {"content": {"text/event-stream": {}}, "description": "step events"}}},
    )
    async def ask_stream(request: Request) -> StreamingResponse:
        """Answer one question as server-sent events: ``step`` per finished step, then ``answer`` (the
        /v1/ask body) or ``error`` (``{"detail"}``)."""
        body = await parse(request)
        service = state["service"]
        service.admit()
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancelled, started = threading.Event(), time.perf_counter()

        def on_step(trajectory: Trajectory, step: Step) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, step.to_dict())

        future = service.start(body.question, body.max_steps, body.top_k, cancelled, on_step)  # type: ignore[attr-defined]
        request_id = uuid.uuid4().hex[:16]

        async def events() -> AsyncIterator[str]:
            deadline = loop.time() + config.request_timeout_s
            try:
                while not (future.done() and steps.empty()):
                    waiter = asyncio.ensure_future(steps.get())
                    either: set[asyncio.Future[Any]] = {waiter, future}
                    done, _ = await asyncio.wait(
                        either, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                    )
                    if waiter in done:
                        yield sse("step", waiter.result())
                        continue
                    waiter.cancel()
                    if not done:
                        cancelled.set()
                        service.stats.timeouts += 1
                        yield sse(
                            "error", {"detail": f"the question took more than {config.request_timeout_s} s"}
                        )
                        return
                error = future.exception()
                if error is not None:
                    service.stats.errors += 1
                    yield sse("error", {"detail": f"the agent failed: {type(error).__name__}: {error}"})
                    return
                seconds = time.perf_counter() - started
                service.stats.answered += 1
                service.stats.seconds += seconds
                yield sse("answer", answer_body(request_id, future.result(), seconds))
            finally:
                if not future.done():  # the client went away: stop the loop at its next model call
                    cancelled.set()
                    service.stats.cancelled += 1

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event: its name and its JSON data on one line each."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def serve(
    generator: Generator,
    retriever: Retriever,
    config: AgentServerConfig,
    describe: dict[str, Any],
    log_level: str = "info",
) -> None:
    """Serve the agent with uvicorn until interrupted."""
    import uvicorn

    if not logging.getLogger().handlers:  # the startup warning, formatted like uvicorn's own lines
        logging.basicConfig(format="%(levelname)s:  %(message)s")
    app = create_app(generator, retriever, config, describe)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=False)
