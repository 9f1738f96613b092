"""The coalescing batchers of the agent server, with real threads: what is merged, who gets what back,
errors, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.schema import Passage
from r3rag.serving.batching import BatcherClosed, BatchingGenerator, BatchingRetriever, Coalescer


class Gate:
    """A process function that holds its first batch until released, recording every batch it ran."""

    def __init__(self, fail_on: str | None = None):
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, payloads: list[list[str]]) -> list[list[str]]:
        self.batches.append([x for p in payloads for x in p])
        self.started.set()
        self.release.wait(10)
        if self.fail_on is not None and any(self.fail_on in p for p in payloads):
            raise RuntimeError(f"bad item {self.fail_on}")
        return [[x.upper() for x in p] for p in payloads]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def start_blocked(
    batcher: Coalescer[list[str], list[str]], gate: Gate, pool: ThreadPoolExecutor, calls: list[list[str]]
):
    """Submit one call that the gate holds, then ``calls``, all queued behind it."""
    first = pool.submit(batcher.submit, ["first"])
    gate.started.wait(10)
    futures = [pool.submit(batcher.submit, c) for c in calls]
    wait_for(lambda: batcher.pending == len(calls))
    return first, futures


def test_calls_waiting_while_a_batch_runs_join_the_next_batch_and_each_gets_its_own_results():
    gate = Gate()
    batcher = Coalescer(gate, len, max_items=100)
    with ThreadPoolExecutor(8) as pool:
        first, futures = start_blocked(batcher, gate, pool, [["a"], ["b", "c"], ["d"], ["e", "f", "g"]])
        gate.release.set()
        assert first.result(10) == ["FIRST"]
        assert [f.result(10) for f in futures] == [["A"], ["B", "C"], ["D"], ["E", "F", "G"]]
    assert gate.batches == [["first"], ["a", "b", "c", "d", "e", "f", "g"]]
    assert (batcher.stats.batches, batcher.stats.calls, batcher.stats.items) == (2, 5, 8)
    assert (batcher.stats.largest_items, batcher.stats.largest_calls) == (7, 4)
    assert batcher.stats.sizes == [1, 7]
    batcher.close()


def test_a_batch_stops_taking_calls_at_max_items_but_a_large_call_still_runs():
    gate = Gate()
    batcher = Coalescer(gate, len, max_items=3)
    with ThreadPoolExecutor(8) as pool:
        first, futures = start_blocked(batcher, gate, pool, [["a", "b"], ["c", "d"], ["e", "f", "g", "h"]])
        gate.release.set()
        assert [f.result(10) for f in futures] == [["A", "B"], ["C", "D"], ["E", "F", "G", "H"]]
    # 2 items < 3: the next call joins (4 items); the 4-item call runs alone
    assert gate.batches[1:] == [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    batcher.close()


def test_an_error_in_a_batch_reaches_every_caller_of_that_batch_and_the_next_batch_runs():
    gate = Gate(fail_on="bad")
    batcher = Coalescer(gate, len, max_items=100)
    with ThreadPoolExecutor(8) as pool:
        first, futures = start_blocked(batcher, gate, pool, [["x"], ["bad"]])
        gate.release.set()
        assert first.result(10) == ["FIRST"]
        for future in futures:
            with pytest.raises(RuntimeError, match="bad item bad"):
                future.result(10)
        assert batcher.submit(["ok"]) == ["OK"]
    assert batcher.stats.failed_batches == 1
    batcher.close()


def test_a_batch_returning_the_wrong_number_of_results_fails_its_callers():
    broken: Coalescer[int, int] = Coalescer(lambda payloads: [], lambda p: 1, max_items=10)
    with pytest.raises(RuntimeError, match="a batch of 1 calls returned 0 results"):
        broken.submit(1)
    assert broken.stats.failed_batches == 1
    broken.close()


def test_close_fails_the_waiting_calls_finishes_the_running_batch_and_refuses_new_ones():
    gate = Gate()
    batcher = Coalescer(gate, len, max_items=100)
    with ThreadPoolExecutor(8) as pool:
        first, futures = start_blocked(batcher, gate, pool, [["a"], ["b"]])
        closing = pool.submit(batcher.close, 10)
        wait_for(lambda: all(f.done() for f in futures))
        for future in futures:
            with pytest.raises(BatcherClosed):
                future.result()
        assert not closing.done()  # still waiting for the running batch
        gate.release.set()
        closing.result(10)
        assert first.result(10) == ["FIRST"]
    with pytest.raises(BatcherClosed):
        batcher.submit(["late"])
    assert not batcher._worker.is_alive()


def test_an_idle_batcher_closes_at_once():
    batcher = Coalescer(lambda p: p, len, max_items=4)
    started = time.monotonic()
    batcher.close(10)
    assert time.monotonic() - started < 1
    assert not batcher._worker.is_alive()


class RecordingGenerator:
    """Echoes each conversation's user turn with its temperature; records each call's row count."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        rows = per_row(sampling, len(conversations))
        self.calls.append(len(conversations))
        self.release.wait(10)
        return [
            Completion(f"{c[-1]['content']}@{s.temperature}")
            for c, s in zip(conversations, rows, strict=True)
        ]


def user(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


def test_batching_generator_merges_calls_and_keeps_each_rows_sampling():
    inner = RecordingGenerator()
    generator = BatchingGenerator(inner, max_rows=64)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(generator.generate, [user("q0")], SamplingParams(temperature=0.0))
        wait_for(lambda: inner.calls == [1])
        a = pool.submit(
            generator.generate, [user("a1"), user("a2")], [SamplingParams(0.1), SamplingParams(0.4)]
        )
        b = pool.submit(generator.generate, [user("b1")], SamplingParams(temperature=1.0))
        wait_for(lambda: generator.batcher.pending == 2)
        inner.release.set()
        assert [c.text for c in first.result(10)] == ["q0@0.0"]
        assert [c.text for c in a.result(10)] == ["a1@0.1", "a2@0.4"]
        assert [c.text for c in b.result(10)] == ["b1@1.0"]
    assert inner.calls == [1, 3]
    assert generator.generate([], SamplingParams()) == []
    with pytest.raises(ValueError, match="2 sampling settings for 1 conversations"):
        generator.generate([user("x")], [SamplingParams(), SamplingParams()])
    generator.close()


class CountingRetriever:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.release = threading.Event()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append((list(queries), k))
        self.release.wait(10)
        return [[Passage(f"{q}-{i}", q, f"hit {i}") for i in range(k)] for q in queries]


def test_batching_retriever_searches_distinct_queries_once_with_the_largest_k():
    inner = CountingRetriever()
    retriever = BatchingRetriever(inner, max_queries=64)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(retriever.search, ["z"], 1)
        wait_for(lambda: len(inner.calls) == 1)
        a = pool.submit(retriever.search, ["x", "y"], 2)
        b = pool.submit(retriever.search, ["y"], 4)
        wait_for(lambda: retriever.batcher.pending == 2)
        inner.release.set()
        assert [[p.id for p in hits] for hits in first.result(10)] == [["z-0"]]
        assert [[p.id for p in hits] for hits in a.result(10)] == [["x-0", "x-1"], ["y-0", "y-1"]]
        assert [[p.id for p in hits] for hits in b.result(10)] == [["y-0", "y-1", "y-2", "y-3"]]
    assert inner.calls == [(["z"], 1), (["x", "y"], 4)]
    retriever.close()


def test_the_wait_before_a_batch_gathers_a_call_that_arrives_just_after_the_first():
    batches: list[list[str]] = []
    batcher = Coalescer(lambda payloads: (batches.append([x for p in payloads for x in p]), payloads)[1], len,
                        max_items=10, wait_s=0.5)  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.submit, ["a"])
        time.sleep(0.05)
        second = pool.submit(batcher.submit, ["b"])
        assert (first.result(10), second.result(10)) == (["a"], ["b"])
    assert batches == [["a", "b"]]
    batcher.close()
