"""The retrieval server on loopback, through the real client: answers, 4xx, batching, cache, 503, 500."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from r3rag.config import IndexBuildConfig, RetrieverServerConfig
from r3rag.retrieval.client import RetrievalRequestError, RetrieverClient, RetrieverUnavailable
from r3rag.retrieval.index import build_index, load_index, read_manifest
from r3rag.retrieval.server import create_app, serve_in_thread
from r3rag.schema import Passage
from retrieval_fixtures import write_hand_corpus

LIMITS = RetrieverServerConfig(max_queries=4, max_k=10, max_query_chars=50, max_body_bytes=2048)
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
    response = httpx.post(f"{url}/search", content=b'{"queries": [')
    assert response.status_code == 422 and "body: Invalid JSON" in response.json()["detail"]
    declared = httpx.post(f"{url}/search", content=b" " * 4096)
    assert declared.status_code == 413 and "limit is 2048" in declared.json()["detail"]
    streamed = httpx.post(f"{url}/search", content=iter([b" " * 1024] * 4))  # chunked: no Content-Length
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
    assert stats["cache"] == {"size": 3, "capacity": 100_000, "hits": 2, "misses": 3}


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
