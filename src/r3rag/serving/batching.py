"""Coalescing batchers: the model calls and searches of concurrent requests, merged into shared batches.

Each request of the agent server runs its own :class:`~r3rag.agent.Agent` loop in a worker thread, and each
loop makes one ``generate`` call per step. Sent to the model one by one, 16 requests would cost 16 forward
passes per step; here every call waits in a queue, one worker thread takes everything queued when it is free
(the calls that arrived while the previous batch ran), runs them as one batch, and hands each caller its own
slice of the results. The model and the index are only ever called from that one thread, so neither needs to
be thread-safe. A batch that fails fails every call in it, with the same error; the worker keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from r3rag.llm.base import Completion, Conversation, Generator, SamplingParams, per_row
from r3rag.retrieval.base import Retriever
from r3rag.schema import Passage

P = TypeVar("P")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher was closed before this call ran (the server is shutting down)."""


@dataclass
class BatchStats:
    """What the batcher did: batches run, calls and items (conversations, queries) in them, the largest."""

    batches: int = 0
    calls: int = 0
    items: int = 0
    largest_items: int = 0
    largest_calls: int = 0
    failed_batches: int = 0
    sizes: list[int] = field(default_factory=list, repr=False)
    """Items per batch, in order (the tests check how calls were merged); bounded to the last 10,000."""

    def record(self, calls: int, items: int) -> None:
        self.batches += 1
        self.calls += calls
        self.items += items
        self.largest_items = max(self.largest_items, items)
        self.largest_calls = max(self.largest_calls, calls)
        self.sizes.append(items)
        del self.sizes[:-10_000]

    def summary(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "calls": self.calls,
            "items": self.items,
            "mean_calls_per_batch": round(self.calls / self.batches, 3) if self.batches else 0.0,
            "mean_items_per_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
            "largest_items": self.largest_items,
            "largest_calls": self.largest_calls,
            "failed_batches": self.failed_batches,
        }


@dataclass
class _Call(Generic[P, R]):
    payload: P
    size: int
    future: Future[R] = field(default_factory=Future)


class Coalescer(Generic[P, R]):
    """Runs ``process`` (many payloads -> one result each, in order) on one worker thread.

    ``submit`` blocks its caller until its payload's batch has run. The worker takes the oldest waiting call,
    optionally waits ``wait_s`` for more, then adds waiting calls while the batch holds fewer than
    ``max_items`` items (a single call larger than that still runs, alone).
    """

    def __init__(
        self,
        process: Callable[[list[P]], list[R]],
        size: Callable[[P], int],
        max_items: int,
        wait_s: float = 0.0,
        name: str = "r3rag-batcher",
    ):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._process, self._size = process, size
        self._max_items, self._wait_s = max_items, wait_s
        self._queue: deque[_Call[P, R]] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, payload: P) -> R:
        call: _Call[P, R] = _Call(payload, self._size(payload))
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed: the server is shutting down")
            self._queue.append(call)
            self._lock.notify()
        return call.future.result()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new calls, fail the waiting ones with :class:`BatcherClosed`, and stop the worker once its
        running batch (if any) has returned, waiting at most ``timeout`` seconds for it."""
        with self._lock:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        for call in waiting:
            call.future.set_exception(BatcherClosed("the server shut down before this call ran"))
        self._worker.join(timeout)

    def _take(self) -> list[_Call[P, R]] | None:
        """The next batch, or None once closed."""
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            batch = [self._queue.popleft()]
            items = batch[0].size
            deadline = time.monotonic() + self._wait_s
            while items < self._max_items and not self._closed:
                if self._queue:
                    batch.append(self._queue.popleft())
                    items += batch[-1].size
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                results = self._process([call.payload for call in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} calls returned {len(results)} results")
            except BaseException as e:  # every caller of the batch learns of it; the worker keeps serving
                self.stats.failed_batches += 1
                for call in batch:
                    call.future.set_exception(e)
                continue
            self.stats.record(len(batch), sum(call.size for call in batch))
            for call, result in zip(batch, results, strict=True):
                call.future.set_result(result)


_GenerateCall = tuple[list[Conversation], list[SamplingParams]]


class BatchingGenerator:
    """A :class:`~r3rag.llm.base.Generator` whose concurrent ``generate`` calls share the model's batches."""

    def __init__(self, generator: Generator, max_rows: int, wait_s: float = 0.0):
        self.generator = generator
        self.batcher: Coalescer[_GenerateCall, list[Completion]] = Coalescer(
            self._generate_all, lambda call: len(call[0]), max_rows, wait_s, "r3rag-generate"
        )

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        rows = per_row(sampling, len(conversations))
        if not conversations:
            return []
        return self.batcher.submit((list(conversations), rows))

    def _generate_all(self, calls: list[_GenerateCall]) -> list[list[Completion]]:
        completions = self.generator.generate(
            [c for conversations, _ in calls for c in conversations],
            [s for _, sampling in calls for s in sampling],
        )
        out, start = [], 0
        for conversations, _ in calls:
            out.append(completions[start : start + len(conversations)])
            start += len(conversations)
        if start != len(completions):
            raise RuntimeError(f"the generator returned {len(completions)} completions for {start}")
        return out

    def close(self, timeout: float = 30.0) -> None:
        self.batcher.close(timeout)


_SearchCall = tuple[list[str], int]


class BatchingRetriever:
    """A :class:`~r3rag.retrieval.base.Retriever` whose concurrent searches run as one: the distinct queries
    once, with the largest k asked for, each call getting its own top-k prefix back."""

    def __init__(self, retriever: Retriever, max_queries: int, wait_s: float = 0.0):
        self.retriever = retriever
        self.batcher: Coalescer[_SearchCall, list[list[Passage]]] = Coalescer(
            self._search_all, lambda call: len(call[0]), max_queries, wait_s, "r3rag-search"
        )

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        return self.batcher.submit((list(queries), k))

    def _search_all(self, calls: list[_SearchCall]) -> list[list[list[Passage]]]:
        unique = list(dict.fromkeys(q for queries, _ in calls for q in queries))
        k = max(k for _, k in calls)
        hits = self.retriever.search(unique, k)
        by_query = dict(zip(unique, hits, strict=True))
        return [[list(by_query[q][:k]) for q in queries] for queries, k in calls]

    def close(self, timeout: float = 30.0) -> None:
        self.batcher.close(timeout)
