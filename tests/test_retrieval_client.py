"""The HTTP client alone, against scripted responses: retries, exponential backoff, chunking, errors."""

from __future__ import annotations

import json

import httpx
import pytest

from r3rag.retrieval.client import RetrievalRequestError, RetrieverClient, RetrieverUnavailable

URL = "http://retriever.test:8001"


def answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    hits = [
        [{"id": f"{q}#{i}", "title": q, "text": "t", "score": 1.0 / (i + 1)} for i in range(body["k"])]
        for q in body["queries"]
    ]
    return httpx.Response(200, json={"results": hits})


class Script:
    """A transport that fails the first ``failures`` calls (with an exception or a status), then answers."""

    def __init__(self, failures: int, failure: int | type[Exception]):
        self.failures, self.failure, self.calls = failures, failure, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.failures:
            if isinstance(self.failure, int):
                return httpx.Response(self.failure, json={"detail": "overloaded"})
            raise self.failure("connection refused", request=request)
        return answer(request)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr("r3rag.retrieval.client.time.sleep", recorded.append)
    return recorded


@pytest.mark.parametrize(
    "failure", [503, 500, httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError]
)
def test_transient_failures_are_retried_with_exponential_backoff(failure, sleeps: list[float]) -> None:
    script = Script(failures=3, failure=failure)
    client = RetrieverClient(URL, retries=4, backoff_s=0.1, transport=httpx.MockTransport(script))
    (hits,) = client.search(["q"], 2)
    assert [p.id for p in hits] == ["q#0", "q#1"] and hits[1].score == 0.5
    assert script.calls == 4 and len(sleeps) == 3
    for n, delay in enumerate(sleeps):  # base * 2**n, with jitter in [0.5, 1]
        assert 0.1 * 2**n * 0.5 <= delay <= 0.1 * 2**n


def test_backoff_is_capped_and_the_error_names_the_url(sleeps: list[float]) -> None:
    script = Script(failures=100, failure=httpx.ConnectError)
    client = RetrieverClient(
        URL, retries=6, backoff_s=1.0, max_backoff_s=4.0, transport=httpx.MockTransport(script)
    )
    with pytest.raises(RetrieverUnavailable) as error:
        client.search(["q"], 1)
    assert script.calls == 7 and max(sleeps) <= 4.0 and min(sleeps[3:]) >= 2.0
    message = str(error.value)
    assert message.startswith(f"retrieval server at {URL} is unavailable after 7 attempts (ConnectError")
    assert "r3rag serve retriever" in message


def test_client_errors_are_not_retried(sleeps: list[float]) -> None:
    script = Script(failures=100, failure=422)
    client = RetrieverClient(URL, transport=httpx.MockTransport(script))
    with pytest.raises(RetrievalRequestError, match=rf"{URL}/search: HTTP 422: overloaded"):
        client.search(["q"], 1)
    assert script.calls == 1 and sleeps == []


def test_large_batches_are_split_and_kept_in_order() -> None:
    seen: list[list[str]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["queries"])
        return answer(request)

    client = RetrieverClient(URL, max_queries=2, transport=httpx.MockTransport(record))
    results = client.search(["a", "b", "c", "d", "e"], 1)
    assert seen == [["a", "b"], ["c", "d"], ["e"]]
    assert [hits[0].id for hits in results] == ["a#0", "b#0", "c#0", "d#0", "e#0"]


def test_a_malformed_answer_is_an_error() -> None:
    client = RetrieverClient(
        URL, transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"results": []}))
    )
    with pytest.raises(RetrieverUnavailable, match="malformed response"):
        client.search(["a"], 1)
