"""Model calls scheduled per question: many in flight, retried on transient faults, hung ones abandoned.

The paper-scale data jobs (a teacher writing trajectories for 65k questions, an evaluation with a 72B judge)
spend their time waiting for a remote model. A :class:`Scheduler` owns one event loop, on a thread of its own,
on which every call to an endpoint runs, so that:

- up to ``concurrency`` requests are in flight at once (one semaphore for the whole process), whichever
  question, method or judge they come from;
- each question advances on its own (:meth:`Scheduler.map` runs one coroutine per question, a window of them
  at once, and hands each result back as soon as it is finished), so a slow question holds no other;
- a request that fails transiently (a connection error, 408/409/429, a 5xx, no whole response within
  ``timeout_s``) is retried with exponential backoff and jitter; a ``Retry-After`` (or ``retry-after-ms``)
  header sets the wait instead, up to ``max_wait_s``. Whatever still fails after ``retries`` retries is raised
  to the caller, which records the question as failed and retryable.

Why not the ``openai`` client's own retries, which also honour ``Retry-After`` (up to 120 s)? Its timeout is
httpx's, per network operation, so a server that keeps a connection alive without finishing the answer is
never abandoned; here the deadline covers the whole request. It sleeps between tries while holding the
caller's slot, so a burst of 429s idles the whole pool; here a retry waits outside the semaphore and another
question's request takes the slot. And it retries silently, where the progress bar shows every retry. The
client is therefore built with ``max_retries=0`` and retried here with tenacity.
"""

from __future__ import annotations

import asyncio
import email.utils
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

T = TypeVar("T")
X = TypeVar("X")

TRANSIENT_STATUS = frozenset({408, 409, 429})
"""HTTP statuses worth retrying besides every 5xx: timeout, conflict (a lock), rate limit."""


@dataclass(slots=True)
class CallStats:
    """What the scheduler did so far, for the progress bar and the benchmarks (read from any thread)."""

    in_flight: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def status_code(error: BaseException) -> int | None:
    """The HTTP status an error carries (the ``openai`` client's APIStatusError, httpx's HTTPStatusError)."""
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: no answer in time, no connection, or a status that says "later"."""
    if isinstance(error, TimeoutError | httpx.TransportError):
        return True
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    code = status_code(error)
    return code is not None and (code in TRANSIENT_STATUS or code >= 500)


def retry_after_s(error: BaseException) -> float | None:
    """The wait a failed response asks for: ``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP
    date; None when it asks for none (or says something unreadable)."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
    date = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(date) if date else None
    return None if parsed is None else max(0.0, email.utils.mktime_tz(parsed) - time.time())


class Scheduler:
    """Runs model calls on its own event loop: at most ``concurrency`` in flight, each retried as the module
    says. :meth:`close` stops it (the loop thread is a daemon, so a forgotten one does not hang exit)."""

    def __init__(
        self,
        concurrency: int = 64,
        retries: int = 6,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
        max_wait_s: float = 120.0,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if retries < 0 or timeout_s <= 0 or backoff_s < 0 or max_wait_s < 0:
            raise ValueError("retries and backoff_s must be >= 0, timeout_s > 0, max_wait_s >= 0")
        self.concurrency, self.retries, self.timeout_s = concurrency, retries, timeout_s
        self.backoff_s, self.max_wait_s = backoff_s, max_wait_s
        self.stats = CallStats()
        self._slots = asyncio.Semaphore(concurrency)  # bound to the scheduler's loop on first use
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="r3rag-calls", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ one call

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """``await request()`` in a slot, within ``timeout_s``, retried on transient errors; raises the last
        error once the retries are spent (or at once for an error that retrying cannot fix)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            retry=retry_if_exception(is_transient),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return await retrying(self._attempt, request)
        except Exception:
            self.stats.failed += 1
            raise

    async def _attempt(self, request: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            self.stats.in_flight += 1
            self.stats.sent += 1
            try:
                async with asyncio.timeout(self.timeout_s):  # cancels a hung request: its connection closes
                    return await request()
            except TimeoutError:
                raise TimeoutError(f"no complete response within {self.timeout_s:g} s") from None
            finally:
                self.stats.in_flight -= 1

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next try: what the server asked for, else 1, 2, 4, ... x ``backoff_s`` with
        jitter (a burst of failures does not come back as a burst), never more than ``max_wait_s``."""
        error = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after_s(error) if error is not None else None
        if asked is not None:
            return min(asked, self.max_wait_s)
        backoff = self.backoff_s * 2 ** (state.attempt_number - 1)
        return min(backoff * random.uniform(0.5, 1.0), self.max_wait_s)

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retried += 1

    def add_tokens(self, prompt: int, completion: int) -> None:
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion

    # ------------------------------------------------------------------------- from synchronous callers

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the scheduler's loop and wait for it (from any thread but the loop's own).
        Interrupting the wait (Ctrl-C) cancels the coroutine."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("Scheduler.run called from the scheduler's own loop: await the coroutine")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        finally:
            future.cancel()

    async def submit(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the scheduler's loop from any event loop (a judge behind another endpoint
        than the teacher's has a scheduler of its own)."""
        if asyncio.get_running_loop() is self._loop:
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def map(
        self, items: Iterable[X], work: Callable[[X], Awaitable[T]], window: int
    ) -> Iterator[tuple[X, T]]:
        """``work(item)`` for every item, each on its own, at most ``window`` at once: ``(item, result)``
        pairs in the caller's thread in the order they finish. The first exception of a ``work`` is raised
        here, and the others in flight are cancelled; so are they when the caller stops iterating."""
        if window < 1:
            raise ValueError("window must be >= 1")
        finished: queue.Queue[tuple[bool, Any]] = queue.Queue()

        async def one(item: X) -> tuple[X, T]:
            return item, await work(item)

        async def drive() -> None:
            todo = iter(items)
            running: set[asyncio.Task[tuple[X, T]]] = set()
            try:
                while True:
                    while len(running) < window and (item := next(todo, _END)) is not _END:
                        running.add(asyncio.ensure_future(one(item)))
                    if not running:
                        return
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        finished.put((True, task.result()))
            finally:
                for task in running:
                    task.cancel()

        future = asyncio.run_coroutine_threadsafe(drive(), self._loop)
        future.add_done_callback(lambda f: finished.put((False, f)))
        try:
            while True:
                ok, value = finished.get()
                if not ok:
                    value.result()  # raises what ended the run, if anything did
                    return
                yield value
        finally:
            future.cancel()

    def close(self) -> None:
        """Stop the loop and its thread."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


_END: Any = object()
