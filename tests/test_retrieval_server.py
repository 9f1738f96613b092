"""The retrieval server on loopback, through the real client: answers, 4xx, batching, cache, 503, 500, and
what keeps it safe: the cache's byte bound, the Host check, JSON bodies, no paths, the warning, the key."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from r3rag.config import IndexBuildConfig, RetrievalConfig, RetrieverServerConfig
from r3rag.retrieval import open_retriever
from r3rag.retrieval.client import RetrievalRequestError, RetrieverClient, RetrieverUnavailable
from r3rag.retrieval.encoders import EncoderSpec
from r3rag.retrieval.index import build_index, load_index, read_manifest
from r3rag.retrieval.server import (
    LRUCache,
    accepted_hosts,
    create_app,
    exposure_warning,
    serve_in_thread,
)
from r3rag.schema import Passage
from retrieval_fixtures import write_hand_corpus

LIMITS = RetrieverServerConfig(max_queries=4, max_k=10, max_query_chars=50, max_body_bytes=2048)
JSON = {"Content-Type": "application/json"}
QUERIES = ["Marie Curie", "river through Paris", "English mathematician", "radium 1898", "Nile", "zebra"]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("server")
    out = root / "index"
    build_index(IndexBuildConfig(corpus=write_hand_corpus(root / "corpus.jsonl"), out=out), progress=False)
    return out


@pytest.fixture(scope="module")
def url(index: Path) -> Iterator[str]:
    with serve_in_thread(create_app(load_index(index), LIMITS, read_manifest(index))) as base:
        yield base


def as_tuples(results: list[list[Passage]]) -> list[list[tuple]]:
    return [[(p.id, p.title, p.text, round(p.score or 0, 5)) for p in hits] for hits in results]


def test_client_answers_equal_the_local_index(url: str, index: Path) -> None:
    local = load_index(index)
    with RetrieverClient(url, max_queries=LIMITS.max_queries) as client:
        for k in (1, 3, 10):
            assert as_tuples(client.search(QUERIES, k)) == as_tuples(local.search(QUERIES, k))
        assert client.search([], 3) == []


def test_health_and_stats(url: str) -> None:
    with RetrieverClient(url) as client:
        health = client.health()
        client.search(["Ada Lovelace program"], 2)
        client.search(["Ada Lovelace program"], 2)
        stats = client.stats()
    assert (
        health["status"] == "ok"
        and health["index"]["retriever"] == "bm25"
        and health["index"]["passages"] == 10
    )
    assert health["limits"]["max_queries"] == 4
    assert stats["cache"]["hits"] >= 1 and stats["batches"] >= 1 and stats["errors"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"queries": [], "k": 3}, "queries: List should have at least 1 item"),
        ({"queries": ["a", "b", "c", "d", "e"], "k": 3}, "queries: List should have at most 4 items"),
        ({"queries": ["radium"], "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"queries": ["radium"], "k": 11}, "k: Input should be less than or equal to 10"),
        ({"queries": ["x" * 51], "k": 3}, "queries.0: String should have at most 50 characters"),
        ({"queries": ["ok", "   "], "k": 3}, "queries.1: Value error, query is empty or only whitespace"),
        ({"queries": "radium", "k": 3}, "queries: Input should be a valid array"),
        ({"queries": ["radium"]}, "k: Field required"),
        ({"queries": ["radium"], "k": 3, "top": 5}, "top: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_get_422_naming_the_field(url: str, body: dict, message: str) -> None:
    response = httpx.post(f"{url}/search", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_invalid_json_and_oversized_bodies_are_refused(url: str) -> None:
    response = httpx.post(f"{url}/search", content=b'{"queries": [', headers=JSON)
    assert response.status_code == 422 and "body: Invalid JSON" in response.json()["detail"]
    declared = httpx.post(f"{url}/search", content=b" " * 4096, headers=JSON)
    assert declared.status_code == 413 and "limit is 2048" in declared.json()["detail"]
    chunks = iter([b" " * 1024] * 4)  # chunked: no Content-Length
    streamed = httpx.post(f"{url}/search", content=chunks, headers=JSON)
    assert streamed.status_code == 413 and "exceeds the limit of 2048" in streamed.json()["detail"]


def test_client_raises_the_servers_4xx_message(url: str) -> None:
    with (
        RetrieverClient(url) as client,
        pytest.raises(RetrievalRequestError, match=r"/search: HTTP 422: k: Input"),
    ):
        client.search(["radium"], 50)


def test_the_client_asks_which_ids_the_index_holds(url: str, index: Path) -> None:
    """Gold matching's one look-up: the server answers as the local index does, in requests of ``max_ids``."""
    ids = ["curie", "nope", "nile", "0", "seine"]
    assert load_index(index).known_ids(ids) == {"curie", "nile", "seine"}  # type: ignore[attr-defined]
    with RetrieverClient(url, max_ids=2) as client:
        assert client.known_ids(ids) == {"curie", "nile", "seine"}
        assert client.known_ids([]) == set()
    response = httpx.post(f"{url}/ids", json={"ids": "curie"})
    assert response.status_code == 422 and "ids: Input should be a valid array" in response.json()["detail"]


def test_a_server_that_cannot_tell_its_ids_says_so() -> None:
    """A retriever without ids answers null; a server older than /ids answers 404: both mean "cannot tell"."""
    with serve_in_thread(create_app(SlowRetriever(delay=0.0))) as base, RetrieverClient(base) as client:
        assert client.known_ids(["a"]) is None
    old = httpx.MockTransport(lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    with RetrieverClient("http://old", transport=old) as client:
        assert client.known_ids(["a"]) is None


def test_server_down_is_a_clear_error_naming_the_url(index: Path) -> None:
    with serve_in_thread(create_app(load_index(index))) as base:
        pass  # started, answered nothing, stopped: the port is closed now
    with (
        RetrieverClient(base, retries=2, backoff_s=0.01) as client,
        pytest.raises(RetrieverUnavailable) as error,
    ):
        client.search(["radium"], 3)
    assert f"retrieval server at {base} is unavailable after 3 attempts (ConnectError" in str(error.value)
    assert "r3rag serve retriever" in str(error.value)


class SlowRetriever:
    """Answers ``{query}#{i}`` for i < k after a delay and records every call: how requests were batched."""

    def __init__(self, delay: float, fail: bool = False):
        self.delay, self.fail = delay, fail
        self.calls: list[tuple[list[str], int]] = []
        self._lock = threading.Lock()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        with self._lock:
            self.calls.append((list(queries), k))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("index on fire")
        return [[Passage(f"{q}#{i}", q, "text", score=float(k - i)) for i in range(k)] for q in queries]


def test_concurrent_requests_are_searched_together(tmp_path: Path) -> None:
    slow = SlowRetriever(delay=0.1)
    requests = [([f"q{i}", "shared"], 1 + i % 4) for i in range(12)]
    with serve_in_thread(create_app(slow, RetrieverServerConfig(cache_size=0))) as base:

        def ask(request: tuple[list[str], int]) -> list[list[str]]:
            with RetrieverClient(base) as client:
                return [[p.id for p in hits] for hits in client.search(*request)]

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, requests))
        stats = httpx.get(f"{base}/stats").json()
    for (queries, k), answer in zip(requests, answers, strict=True):
        assert answer == [[f"{q}#{i}" for i in range(k)] for q in queries]
    assert len(slow.calls) < len(requests) and stats["batches"] == len(slow.calls)
    assert max(len(queries) for queries, _ in slow.calls) > 2
    assert all(
        len(set(queries)) == len(queries) for queries, _ in slow.calls
    )  # "shared" searched once per call


def test_cache_answers_repeated_queries_without_searching() -> None:
    slow = SlowRetriever(delay=0.0)
    with serve_in_thread(create_app(slow)) as base, RetrieverClient(base) as client:
        first = client.search(["alpha", "beta"], 3)
        again = client.search(["beta", "alpha"], 3)
        other_k = client.search(["alpha"], 2)
        stats = client.stats()
    assert as_tuples(again) == as_tuples(first[::-1]) and len(other_k[0]) == 2
    assert slow.calls == [(["alpha", "beta"], 3), (["alpha"], 2)]
    assert stats["cache"] == {
        "size": 3,
        "capacity": 100_000,
        "bytes": stats["cache"]["bytes"],
        "max_bytes": 256 << 20,
        "evictions": 0,
        "hits": 2,
        "misses": 3,
    }
    assert stats["cache"]["bytes"] > 0


def test_a_full_queue_answers_503_and_a_failing_search_500() -> None:
    slow = SlowRetriever(delay=0.3)
    with serve_in_thread(create_app(slow, RetrieverServerConfig(max_pending=1, cache_size=0))) as base:
        with ThreadPoolExecutor(6) as pool:
            codes = list(
                pool.map(
                    lambda i: (
                        httpx.post(
                            f"{base}/search", json={"queries": [f"q{i}"], "k": 1}, timeout=10
                        ).status_code
                    ),
                    range(6),
                )
            )
        assert codes.count(200) >= 2 and 503 in codes and set(codes) <= {200, 503}
        assert httpx.get(f"{base}/stats").json()["busy"] == codes.count(503)
    broken = SlowRetriever(delay=0.0, fail=True)
    with (
        serve_in_thread(create_app(broken)) as base,
        RetrieverClient(base, retries=1, backoff_s=0.01) as client,
    ):
        with pytest.raises(
            RetrieverUnavailable, match="HTTP 500: search failed: RuntimeError: index on fire"
        ):
            client.search(["q"], 1)
        assert len(broken.calls) == 2  # first attempt and one retry


# ------------------------------------------------------------------------------------- cache bounded in bytes


def test_cache_accounts_bytes_and_drops_the_least_recently_used() -> None:
    cache = LRUCache(capacity=100, max_bytes=3 * LRUCache.entry_bytes(("q0", 5), b"x" * 1000))
    for i in range(3):
        cache.put((f"q{i}", 5), b"x" * 1000)
    assert cache.get(("q0", 5)) is not None  # q0 is now the most recently used
    cache.put(("q3", 5), b"x" * 1000)
    assert cache.get(("q1", 5)) is None and cache.get(("q0", 5)) is not None and len(cache) == 3
    assert cache.bytes == 3 * LRUCache.entry_bytes(("q0", 5), b"x" * 1000) <= cache.max_bytes
    cache.put(("big", 5), b"x" * cache.max_bytes)  # larger than the whole cache: not kept, nothing dropped
    assert cache.get(("big", 5)) is None and len(cache) == 3 and cache.evictions == 1
    cache.put(("q0", 5), b"y" * 10)  # replacing an entry replaces its bytes
    assert cache.bytes == 2 * LRUCache.entry_bytes(("q0", 5), b"x" * 1000) + LRUCache.entry_bytes(
        ("q0", 5), b"y" * 10
    )


class LongPassages:
    """k passages of 1,000 characters per query, every call recorded: what a k=100 request caches."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append(list(queries))
        return [[Passage(f"{q}#{i}", q, "w" * 1000, score=float(-i)) for i in range(k)] for q in queries]


def test_many_large_k_requests_keep_the_cache_under_its_byte_bound() -> None:
    """The RSS 95 MB -> 2.18 GB report: the cache held 100,000 entries whatever their size."""
    retriever = LongPassages()
    config = RetrieverServerConfig(cache_max_bytes=1 << 20)  # about ten k=100 answers of 1 KB passages
    with serve_in_thread(create_app(retriever, config)) as base, RetrieverClient(base) as client:
        for i in range(40):
            client.search([f"question {i}"], 100)
            cache = client.stats()["cache"]
            assert 0 < cache["bytes"] <= 1 << 20
        assert cache["evictions"] > 0 and cache["size"] < 40 and cache["size"] + cache["evictions"] == 40
        assert cache["size"] * 100 * 1000 < 1 << 20
        client.search(["question 39"], 100)  # the newest is still cached
        assert len(retriever.calls) == 40
        again = client.search(["question 0"], 100)  # the oldest was dropped: searched again
        assert len(retriever.calls) == 41 and [p.id for p in again[0]][:2] == ["question 0#0", "question 0#1"]


# ------------------------------------------------------------------------------------------------ hardening


def test_requests_for_another_host_are_refused(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    body = {"queries": ["radium"], "k": 1}
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert httpx.post(f"{url}/search", json=body, headers={"Host": host}).status_code == 200, host
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "a b"):
        response = httpx.post(f"{url}/search", json=body, headers={"Host": host})
        assert response.status_code == 400, host
        assert "is not one this server answers to (127.0.0.1, localhost, [::1])" in response.json()["detail"]
    assert httpx.get(f"{url}/health", headers={"Host": "attacker.example"}).status_code == 400


def test_allowed_hosts_add_names_and_patterns() -> None:
    config = RetrieverServerConfig(host="10.1.2.3", allowed_hosts=["retriever.internal", "*.example.com"])
    assert accepted_hosts(config) == [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "10.1.2.3",
        "retriever.internal",
        "*.example.com",
    ]
    assert accepted_hosts(RetrieverServerConfig(host="0.0.0.0")) == ["127.0.0.1", "localhost", "[::1]"]
    assert accepted_hosts(RetrieverServerConfig(host="::")) == ["127.0.0.1", "localhost", "[::1]"]
    with (
        serve_in_thread(create_app(SlowRetriever(0.0), config)) as base,
        serve_in_thread(
            create_app(SlowRetriever(0.0), RetrieverServerConfig(allowed_hosts=["*"]))
        ) as anyhost,
    ):
        for host, code in [
            ("retriever.internal:8001", 200),
            ("a.example.com", 200),
            ("example.com", 400),
            ("10.1.2.3", 200),
            ("evil.com", 400),
        ]:
            assert httpx.get(f"{base}/health", headers={"Host": host}).status_code == code, host
        assert httpx.get(f"{anyhost}/health", headers={"Host": "evil.com"}).status_code == 200
    with pytest.raises(ValidationError, match="'a:80' is not a host name"):
        RetrieverServerConfig(allowed_hosts=["a:80"])
    with pytest.raises(ValidationError, match="'ex\\*ample.com' is not a host name"):
        RetrieverServerConfig(allowed_hosts=["ex*ample.com"])


def test_search_bodies_must_be_declared_json(url: str) -> None:
    body = b'{"queries": ["radium"], "k": 1}'
    for content_type, code in [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        (None, 415),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
    ]:
        headers = {"Content-Type": content_type} if content_type else {}
        response = httpx.post(f"{url}/search", content=body, headers=headers)
        assert response.status_code == code, content_type
    response = httpx.post(f"{url}/search", content=body, headers={"Content-Type": "text/plain"})
    assert response.json()["detail"].startswith("Content-Type must be application/json, not text/plain")


def test_health_shows_no_path_of_the_servers_file_system(url: str, index: Path) -> None:
    health = httpx.get(f"{url}/health").json()
    assert health["index"]["corpus"] == "corpus.jsonl" and len(health["index"]["corpus_sha256"]) == 64
    assert str(index.parent) not in json.dumps(health) and "/" not in health["index"]["corpus"]
    # a dense index's encoder loaded from a local folder is named by the folder's name
    encoder = EncoderSpec(
        name="/models/private/e5-small",
        model="/models/private/e5-small",
        conventions="e5",
        query_prefix="query: ",
        passage_prefix="passage: ",
        pooling="mean",
        normalize=True,
    )
    manifest = read_manifest(index).model_copy(update={"retriever": "dense", "encoder": encoder})
    with serve_in_thread(create_app(SlowRetriever(0.0), manifest=manifest)) as base:
        dense = httpx.get(f"{base}/health").json()
    assert dense["index"]["encoder"]["model"] == dense["index"]["encoder"]["name"] == "e5-small"
    assert "/models" not in json.dumps(dense)


def test_binding_beyond_loopback_warns_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    assert exposure_warning(RetrieverServerConfig(host="127.0.0.1"), keyed=False) is None
    assert exposure_warning(RetrieverServerConfig(host="::1"), keyed=False) is None
    assert exposure_warning(RetrieverServerConfig(host="localhost"), keyed=False) is None
    open_ = exposure_warning(RetrieverServerConfig(host="0.0.0.0", port=9000), keyed=False) or ""
    assert "listens on 0.0.0.0:9000, beyond loopback" in open_ and "No API key is set, so anyone" in open_
    assert "Only requests addressed to 127.0.0.1, localhost, [::1] are answered" in open_
    keyed = RetrieverServerConfig(host="10.0.0.5", api_key_env="RETRIEVER_KEY", allowed_hosts=["*"])
    message = exposure_warning(keyed, keyed=True) or ""
    assert "$RETRIEVER_KEY" in message and "Any Host header is accepted" in message
    with caplog.at_level(logging.WARNING, logger="r3rag.retrieval.server"):
        with TestClient(create_app(SlowRetriever(0.0), RetrieverServerConfig(host="0.0.0.0"))):
            pass  # the lifespan ran: the server started and stopped
        with TestClient(create_app(SlowRetriever(0.0))):
            pass
    logged = [r.getMessage() for r in caplog.records if r.name == "r3rag.retrieval.server"]
    assert logged == [exposure_warning(RetrieverServerConfig(host="0.0.0.0"), keyed=False)]


def test_an_api_key_guards_every_endpoint(monkeypatch: pytest.MonkeyPatch, index: Path) -> None:
    monkeypatch.setenv("TEST_RETRIEVER_KEY", "s3cret-key")
    config = RetrieverServerConfig(api_key_env="TEST_RETRIEVER_KEY")
    with serve_in_thread(create_app(load_index(index), config, read_manifest(index))) as base:
        for method, path in [("POST", "/search"), ("GET", "/health"), ("GET", "/stats")]:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}]:
                response = httpx.request(
                    method, f"{base}{path}", json={"queries": ["radium"], "k": 1}, headers=headers
                )
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert (
                    "send Authorization: Bearer <the key in $TEST_RETRIEVER_KEY>" in response.json()["detail"]
                )
        with RetrieverClient(base, api_key="s3cret-key") as client:
            assert client.search(["radium 1898"], 1)[0][0].id == "radium"
            assert client.health()["status"] == "ok" and client.stats()["unauthorized"] == 9
        with (
            RetrieverClient(base, retries=0) as client,
            pytest.raises(RetrievalRequestError, match="HTTP 401"),
        ):
            client.search(["radium"], 1)
        # what rollouts and evaluation use: the key from the environment variable RetrievalConfig names
        named = open_retriever(RetrievalConfig(source=base, api_key_env="TEST_RETRIEVER_KEY"))
        assert named.search(["radium 1898"], 1)[0][0].id == "radium"
        monkeypatch.setenv("R3RAG_RETRIEVER_API_KEY", "s3cret-key")  # the default variable
        assert open_retriever(RetrievalConfig(source=base)).search(["Nile"], 1)[0][0].id == "nile"
        monkeypatch.delenv("R3RAG_RETRIEVER_API_KEY")
        with pytest.raises(RetrievalRequestError, match="HTTP 401"):
            open_retriever(RetrievalConfig(source=base)).search(["Nile"], 1)


def test_a_named_key_variable_that_is_empty_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_KEY", " ")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    for name in ("EMPTY_KEY", "UNSET_KEY"):
        with pytest.raises(ValueError, match=f"the environment variable {name} is unset or empty"):
            create_app(SlowRetriever(0.0), RetrieverServerConfig(api_key_env=name))


def test_several_workers_serve_one_mapped_index(index: Path) -> None:
    """`--workers 2`: two uvicorn processes on one port, each mapping the same index, answer as it does."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "r3rag", "serve", "retriever", str(index), "--port", str(port)]
    server = subprocess.Popen([*command, "--workers", "2"], stderr=subprocess.PIPE, text=True)
    try:
        client = RetrieverClient(f"http://127.0.0.1:{port}", retries=8, backoff_s=0.5)
        queries = ["Marie Curie radioactivity", "river Seine", "English mathematician"]
        expected = as_tuples(load_index(index).search(queries, k=3))
        deadline = time.monotonic() + 60
        while True:
            try:
                assert as_tuples(client.search(queries, k=3)) == expected
                break
            except RetrieverUnavailable:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert errors.count("Started server process") == 2, errors
