"""The retrieval server: one index behind HTTP, shared by many rollout workers.

``POST /search {"queries": [...], "k": 5}`` -> ``{"results": [[{id, title, text, score}, ...], ...]}``,
``POST /ids {"ids": [...]}`` -> ``{"known": [...]}`` (which passage ids the index holds, for gold matching),
``GET /health`` (status, index and limits) and ``GET /stats`` (counters). Three things make it fast under
many small concurrent requests: an LRU cache answers repeated (query, k) pairs without searching; the
queries of requests that arrive while a search runs are searched together in the next call (micro-batching,
one worker thread, so the index is never searched concurrently); and a bad request is refused with a 4xx
naming the field before it costs a search.

What keeps it safe to run: it listens on loopback by default and warns at startup when it does not; it
answers only requests whose Host header names an allowed host (400 otherwise: a web page cannot reach it
through DNS rebinding); with ``api_key_env`` every request must carry ``Authorization: Bearer <key>`` (401);
a /search body must be declared ``application/json`` (415: a browser's cross-site form post cannot be) and
is bounded in size (413); the cache is bounded in bytes, not only in entries; /health names the corpus by
file name and checksum, never by its path on the server.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)

from r3rag.config import LOOPBACK_HOSTS, RetrieverServerConfig, ServerAccessConfig
from r3rag.gold import PassageLookup
from r3rag.retrieval.base import Retriever
from r3rag.retrieval.index import IndexManifest, check_manifest, load_index, read_manifest
from r3rag.schema import Passage

logger = logging.getLogger(__name__)
WORKER_ENV = "R3RAG_RETRIEVER_WORKER"

_MAX_ERRORS_SHOWN = 5
# What one cache entry costs beyond its query's and its JSON's bytes: the ordered dict's slot and link, the
# key and value tuples, the str and bytes headers, the size (CPython 3.11, measured with tracemalloc: ~300).
_ENTRY_OVERHEAD = 320


class ServerBusy(Exception):
    """More requests wait for a search than the server accepts: answered with 503, which clients retry."""


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future[list[list[Passage]]]


@dataclass
class ServerCounters:
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    queries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    batches: int = 0
    batched_queries: int = 0
    search_seconds: float = 0.0
    rejected: int = 0
    unauthorized: int = 0
    busy: int = 0
    errors: int = 0


class SearchBatcher:
    """Runs the queries of concurrent requests as one ``search`` call on a single worker thread.

    Requests queue while a search runs; the next call takes everything queued (up to about
    ``max_batch_queries``: the request that crosses the limit is still included), searches the distinct
    queries once with the largest k asked for, and gives each request its own top-k prefix back.
    """

    def __init__(self, retriever: Retriever, config: RetrieverServerConfig, counters: ServerCounters):
        self._retriever = retriever
        self._max_batch = config.max_batch_queries
        self._wait_s = config.batch_wait_ms / 1000
        self._max_pending = config.max_pending
        self._counters = counters
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r3rag-search")

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if self._queue.qsize() >= self._max_pending:
            raise ServerBusy(f"{self._queue.qsize()} requests are already waiting for a search")
        future: asyncio.Future[list[list[Passage]]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(queries, k, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._wait_s:
                await asyncio.sleep(self._wait_s)
            size = len(batch[0].queries)
            while size < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
                size += len(batch[-1].queries)
            await self._search(batch)

    async def _search(self, batch: list[_Pending]) -> None:
        unique = list(dict.fromkeys(q for pending in batch for q in pending.queries))
        k = max(pending.k for pending in batch)
        started = time.perf_counter()
        try:
            hits = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._retriever.search, unique, k
            )
        except Exception as e:  # every waiting request learns of the failure; the loop keeps serving
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
            return
        self._counters.batches += 1
        self._counters.batched_queries += len(unique)
        self._counters.search_seconds += time.perf_counter() - started
        by_query = dict(zip(unique, hits, strict=True))
        for pending in batch:
            if not pending.future.done():  # done = cancelled: the client went away
                pending.future.set_result([by_query[q][: pending.k] for q in pending.queries])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LRUCache:
    """(query, k) -> the JSON of its hits, least recently used dropped first, held to at most ``capacity``
    entries and ``max_bytes`` bytes (either 0 keeps nothing).

    An entry is stored as the JSON text it is answered with, so its size is known, not guessed: the query's
    and the JSON's bytes plus a measured per-entry overhead. (Kept as dicts, a k=100 entry cost ~22 KB of
    small objects whatever the passages' length, and 400 requests grew the server by 2 GB.)
    """

    def __init__(self, capacity: int, max_bytes: int):
        self.capacity, self.max_bytes = capacity, max_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[tuple[str, int], tuple[bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def entry_bytes(key: tuple[str, int], value: bytes) -> int:
        return len(key[0].encode()) + len(value) + _ENTRY_OVERHEAD

    def get(self, key: tuple[str, int]) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: tuple[str, int], value: bytes) -> None:
        size = self.entry_bytes(key, value)
        if self.capacity == 0 or size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1


class _IdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str]


def _not_blank(query: str) -> str:
    if not query.strip():
        raise ValueError("query is empty or only whitespace")
    return query


def _request_model(config: RetrieverServerConfig) -> type[BaseModel]:
    """The /search body schema, with this server's limits in it."""
    query = Annotated[str, StringConstraints(max_length=config.max_query_chars), AfterValidator(_not_blank)]
    return create_model(
        "SearchRequest",
        __config__=ConfigDict(extra="forbid"),
        queries=(Annotated[list[query], Field(min_length=1, max_length=config.max_queries)], ...),
        k=(Annotated[int, Field(ge=1, le=config.max_k)], ...),
    )


def describe_validation_error(error: ValidationError) -> str:
    """'queries.3: String should have at most 2000 characters; k: ...': the field, then what is wrong."""
    parts = [
        f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
        for e in error.errors(include_url=False)[:_MAX_ERRORS_SHOWN]
    ]
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/@\[\]]+)(?::\d{1,5})?")


def accepted_hosts(config: ServerAccessConfig) -> list[str]:
    """The Host names requests may use: the loopback names, the host the server is bound to (unless that is
    every interface, whose clients use names the server cannot know) and ``allowed_hosts``."""
    bind = config.host.lower()
    bind = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    hosts = [*LOOPBACK_HOSTS, *([bind] if bind not in ("0.0.0.0", "[::]", "") else [])]
    return list(dict.fromkeys([*hosts, *(h.lower() for h in config.allowed_hosts)]))


def _host_allowed(header: str | None, hosts: Sequence[str]) -> bool:
    match = _HOST_HEADER.fullmatch(header or "")
    if match is None:
        return False
    host = match[1].lower()
    return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in hosts)


def read_api_key(config: ServerAccessConfig) -> str | None:
    """The key the server requires, from the variable ``api_key_env`` names; None when no variable is named.
    A named variable that is unset or empty is refused: a server meant to be locked must not start open."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        raise ValueError(
            f"api_key_env: the environment variable {config.api_key_env} is unset or empty; export the key "
            "in it, or leave --api-key-env out to serve without a key (on loopback only)"
        )
    return key


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(
    config: ServerAccessConfig, keyed: bool, server: str = "retrieval server", does: str = "search the index"
) -> str | None:
    """The startup warning for a server reachable from other machines; None on loopback."""
    if is_loopback(config.host):
        return None
    hosts = accepted_hosts(config)
    return (
        f"the {server} listens on {config.host}:{config.port}, beyond loopback: other machines can "
        "reach it. "
        + (
            f"Requests must send the API key in ${config.api_key_env}. "
            if keyed
            else "No API key is set, so anyone who reaches this port can search the index "
            "(--api-key-env VAR requires one). "
        )
        + (
            "Any Host header is accepted."
            if "*" in hosts
            else f"Only requests addressed to {', '.join(hosts)} are answered (--allowed-hosts adds names)."
        )
    )


class AccessGuard:
    """ASGI middleware in front of every route: the Host check (400), then the API key (401), each answered
    with a JSON ``detail`` that says what to send, before any other work."""

    def __init__(
        self, app: Any, hosts: list[str], key: str | None, key_env: str | None, counters: ServerCounters
    ):
        self.app, self.hosts, self.key_env, self.counters = app, hosts, key_env, counters
        self.key = key.encode() if key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value for name, value in scope["headers"]}
        refusal: JSONResponse | None = None
        host = headers.get("host", b"").decode("latin-1")
        if "*" not in self.hosts and not _host_allowed(host, self.hosts):
            self.counters.rejected += 1
            refusal = JSONResponse(
                {
                    "detail": f"Host header {host[:100]!r} is not one this server answers to "
                    f"({', '.join(self.hosts)}); add it with --allowed-hosts"
                },
                status_code=400,
            )
        elif self.key is not None and not self._authorized(headers.get("authorization", b"")):
            self.counters.unauthorized += 1
            detail = f"missing or wrong API key: send Authorization: Bearer <the key in ${self.key_env}>"
            refusal = JSONResponse(
                {"detail": detail},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        # compare_digest takes time independent of where the tokens differ: no timing oracle on the key
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key or b"")


def _index_summary(manifest: IndexManifest) -> dict[str, Any]:
    """The index as /health shows it: the corpus by file name and checksum, an encoder loaded from a local
    folder by the folder's name; no path of the server's file system."""
    summary = manifest.model_dump(include={"retriever", "corpus_sha256", "passages", "encoder", "built_at"})
    summary["corpus"] = Path(manifest.corpus).name
    for key in ("name", "model") if summary.get("encoder") else ():
        if Path(summary["encoder"][key]).expanduser().is_absolute():
            summary["encoder"][key] = Path(summary["encoder"][key]).name
    return summary


def create_app(
    retriever: Retriever, config: RetrieverServerConfig | None = None, manifest: IndexManifest | None = None
) -> FastAPI:
    """A FastAPI app serving ``retriever``; ``manifest`` (of an index folder) is shown in /health.

    Raises ValueError when ``config.api_key_env`` names a variable that holds no key.
    """
    config = config or RetrieverServerConfig()
    counters = ServerCounters()
    cache = LRUCache(config.cache_size, config.cache_max_bytes)
    request_model = _request_model(config)
    state: dict[str, SearchBatcher] = {}
    key = read_api_key(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warning := exposure_warning(config, keyed=key is not None):
            logger.warning(warning)
        batcher = state["batcher"] = SearchBatcher(retriever, config, counters)
        runner = asyncio.create_task(batcher.run())
        yield
        runner.cancel()
        batcher.close()

    app = FastAPI(title="r3rag retriever", lifespan=lifespan)
    app.add_middleware(
        AccessGuard, hosts=accepted_hosts(config), key=key, key_env=config.api_key_env, counters=counters
    )
    index_summary = _index_summary(manifest) if manifest else {"retriever": type(retriever).__name__}
    limits = config.model_dump(include={"max_queries", "max_k", "max_query_chars", "max_body_bytes"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "index": index_summary, "limits": limits}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {
            "uptime_s": round(time.monotonic() - counters.started, 3),
            "requests": counters.requests,
            "queries": counters.queries,
            "cache": {
                "size": len(cache),
                "capacity": cache.capacity,
                "bytes": cache.bytes,
                "max_bytes": cache.max_bytes,
                "evictions": cache.evictions,
                "hits": counters.cache_hits,
                "misses": counters.cache_misses,
            },
            "batches": counters.batches,
            "mean_batch_queries": round(counters.batched_queries / counters.batches, 3)
            if counters.batches
            else 0.0,
            "search_seconds": round(counters.search_seconds, 3),
            "pending": state["batcher"].pending,
            "rejected": counters.rejected,
            "unauthorized": counters.unauthorized,
            "busy": counters.busy,
            "errors": counters.errors,
        }

    @app.post("/ids")
    async def ids(request: Request) -> dict[str, Any]:
        """Which of the given passage ids the index holds (gold matching asks once per run); ``known`` is
        null when the retriever cannot tell."""
        try:
            body = _IdsRequest.model_validate_json(await read_body(request, config.max_body_bytes))
        except ValidationError as e:
            raise HTTPException(422, describe_validation_error(e)) from None
        if not isinstance(retriever, PassageLookup):
            return {"known": None}
        known = await asyncio.to_thread(retriever.known_ids, body.ids)
        return {"known": None if known is None else sorted(known)}

    @app.post("/search")
    async def search(request: Request) -> Response:
        counters.requests += 1
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            counters.rejected += 1
            raise HTTPException(
                415, f"Content-Type must be application/json, not {media_type or 'none'}: send a JSON body"
            )
        try:
            body = request_model.model_validate_json(await read_body(request, config.max_body_bytes))
        except HTTPException:
            counters.rejected += 1
            raise
        except ValidationError as e:
            counters.rejected += 1
            raise HTTPException(422, describe_validation_error(e)) from None
        queries: list[str] = body.queries  # type: ignore[attr-defined]  # a model made from the config
        k: int = body.k  # type: ignore[attr-defined]  # (its fields are not declared)
        counters.queries += len(queries)
        results = [cache.get((q, k)) for q in queries]  # each the JSON of one query's hits
        missing = [i for i, hits in enumerate(results) if hits is None]
        counters.cache_hits += len(queries) - len(missing)
        counters.cache_misses += len(missing)
        if missing:
            found = await _search_missing(state["batcher"], [queries[i] for i in missing], k, counters)
            for i, passages in zip(missing, found, strict=True):
                hits = json.dumps([p.to_dict() for p in passages], ensure_ascii=False).encode()
                results[i] = hits
                cache.put((queries[i], k), hits)
        answer = b'{"results": [' + b", ".join(results) + b"]}"  # type: ignore[arg-type]  # all filled
        return Response(answer, media_type="application/json")

    return app


async def _search_missing(
    batcher: SearchBatcher, queries: Sequence[str], k: int, counters: ServerCounters
) -> list[list[Passage]]:
    try:
        return await batcher.search(list(queries), k)
    except ServerBusy as e:
        counters.busy += 1
        raise HTTPException(503, f"server busy: {e}; retry later") from None
    except Exception as e:
        counters.errors += 1
        raise HTTPException(500, f"search failed: {type(e).__name__}: {e}") from None


def serve(
    directory: str | Path,
    config: RetrieverServerConfig | None = None,
    *,
    expect_corpus: str | Path | None = None,
    expect_encoder: str | None = None,
    n_threads: int = 0,
    device: str | None = None,
    log_level: str = "info",
) -> None:
    """Load the index in ``directory`` and serve it with uvicorn until interrupted."""
    import uvicorn

    config = config or RetrieverServerConfig()
    if not logging.getLogger().handlers:  # the startup warning, formatted like uvicorn's own lines
        logging.basicConfig(format="%(levelname)s:  %(message)s")
    if config.workers == 1:
        retriever = load_index(directory, expect_corpus, expect_encoder, n_threads=n_threads, device=device)
        app = create_app(retriever, config, read_manifest(directory))
        uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=False)
        return
    check_manifest(read_manifest(directory), directory, expect_corpus, expect_encoder)  # fail here, once
    read_api_key(config)
    os.environ[WORKER_ENV] = json.dumps(
        {
            "directory": str(directory),
            "config": config.model_dump(mode="json"),
            "n_threads": n_threads,
            "device": device,
        }
    )
    uvicorn.run(
        f"{__name__}:worker_app",
        factory=True,
        workers=config.workers,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=False,
    )


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (``workers`` > 1). uvicorn starts workers by import string, so
    :func:`serve` passes the settings through the environment; each worker maps the same index files."""
    settings = json.loads(os.environ[WORKER_ENV])
    directory = settings["directory"]
    config = RetrieverServerConfig.model_validate(settings["config"])
    retriever = load_index(directory, n_threads=settings["n_threads"], device=settings["device"])
    return create_app(retriever, config, read_manifest(directory))


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yield its base URL (port 0 picks a free port)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="r3rag-retrieval-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the retrieval server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
