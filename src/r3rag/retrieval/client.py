"""The HTTP Retriever: the same ``search`` as a local index, answered by ``r3rag serve retriever``.

Rollout workers must survive a server restart or a burst of 503s without losing a trajectory, so connection
errors, timeouts and 5xx are retried with exponential backoff (with jitter, so many workers do not retry in
lockstep). A 4xx is the caller's mistake and is raised at once with the server's explanation. When the server
stays unreachable, the error names the URL and how to start it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from r3rag.schema import Passage

_RETRYABLE = (httpx.TransportError,)  # connect/read/write errors and timeouts, protocol errors


class RetrieverUnavailable(ConnectionError):
    """The retrieval server could not be reached, or kept failing, after every retry."""


class RetrievalRequestError(ValueError):
    """The server refused a request (4xx): the message is the server's, naming the field at fault."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class RetrieverClient:
    """A Retriever backed by a retrieval server at ``url`` (e.g. ``http://127.0.0.1:8001``).

    Batches larger than ``max_queries`` (the server's per-request limit) are sent in several requests, and id
    look-ups in requests of ``max_ids`` ids (well under the server's default body limit).
    ``retries`` is the number of retries after the first attempt; the n-th retry waits about
    ``backoff_s * 2**(n-1)`` seconds, capped at ``max_backoff_s``. ``api_key`` is sent as
    ``Authorization: Bearer`` to a server started with ``--api-key-env``.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        max_queries: int = 256,
        max_ids: int = 5000,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_queries = max_queries
        self.max_ids = max_ids
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        )

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        results: list[list[Passage]] = []
        for start in range(0, len(queries), self.max_queries):
            chunk = list(queries[start : start + self.max_queries])
            body = self._request("POST", "/search", json={"queries": chunk, "k": k})
            rows = body.get("results")
            if not isinstance(rows, list) or len(rows) != len(chunk):
                raise RetrieverUnavailable(
                    f"{self.url}/search: malformed response (expected {len(chunk)} results)"
                )
            results.extend([Passage.from_dict(hit) for hit in row] for row in rows)
        return results

    def known_ids(self, ids: Iterable[str]) -> set[str] | None:
        """The subset of ``ids`` the server's index holds, asked ``max_ids`` at a time; None when the server
        cannot tell (a retriever without ids, or a server older than ``POST /ids``)."""
        ids = list(ids)
        known: set[str] = set()
        for start in range(0, len(ids), self.max_ids):
            try:
                body = self._request("POST", "/ids", json={"ids": ids[start : start + self.max_ids]})
            except RetrievalRequestError as e:
                if e.status == 404:
                    return None
                raise
            if body.get("known") is None:
                return None
            known.update(body["known"])
        return known

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/stats")

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)

    def _request(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1))
            try:
                response = self._http.request(method, path, json=json)
            except _RETRYABLE as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code >= 400:
                status = response.status_code
                raise RetrievalRequestError(f"{self.url}{path}: HTTP {status}: {_detail(response)}", status)
            return response.json()
        raise RetrieverUnavailable(
            f"retrieval server at {self.url} is unavailable after {self.retries + 1} attempts ({last}); "
            f"is it running? Start one with `r3rag serve retriever INDEX_DIR --port PORT`"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrieverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
