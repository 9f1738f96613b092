"""The scheduler of model calls: slots, retries (Retry-After honoured), hung requests, per-question progress,
and the teacher's retryable failures and resume, against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from eval_fixtures import RuleGenerator, TriggerRetriever
from openai_stub import Reply, ScriptedOpenAIServer
from r3rag.agent import Agent, failed_call
from r3rag.coldstart.records import TeacherResult, failures_path, read_records, run_teacher
from r3rag.coldstart.teacher import LLMTeacher
from r3rag.config import AgentConfig, ColdStartConfig, JudgeConfig
from r3rag.evaluation.manifest import build_manifest, differences
from r3rag.evaluation.runner import FAILED_FILE, PREDICTIONS_FILE, EvalRunner, planned_runs, record_key
from r3rag.jsonl import iter_jsonl
from r3rag.llm.base import AsyncGenerator, Completion, Conversation, SamplingParams, per_row
from r3rag.llm.openai import OpenAIGenerator
from r3rag.llm.scheduler import Scheduler, is_transient, retry_after_s
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.schema import Passage, QAExample
from r3rag.steps import QUESTION_PREFIX
from test_eval_runner import CONFIG, DATASETS, GOLD, MANIFEST, dispatching_rule


def query(k: int, q: str = "who is it") -> str:
    return f"Step {k}:\nThe problem analysis: I need a fact.\nThe retrieval query: {q}"


def answer(k: int, a: str) -> str:
    return f"Step {k}:\nThe problem analysis: The documents say so.\nThe final answer: {a}"


def conv(user: str) -> Conversation:
    return [{"role": "user", "content": user}]


def generator(server: ScriptedOpenAIServer, **settings: Any) -> OpenAIGenerator:
    return OpenAIGenerator(server.base_url, "m", **{"backoff_s": 0.01, **settings})


# ------------------------------------------------------------------------------------- what is retried


def headers(**values: str) -> SimpleNamespace:
    """An error carrying a response with these headers, as the openai client's errors do."""
    return SimpleNamespace(
        response=SimpleNamespace(headers={k.replace("_", "-"): v for k, v in values.items()})
    )


def test_retry_after_in_milliseconds_seconds_or_as_a_date() -> None:
    assert retry_after_s(headers(retry_after_ms="1500")) == 1.5  # type: ignore[arg-type]
    assert retry_after_s(headers(retry_after="3")) == 3.0  # type: ignore[arg-type]
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after_s(headers(retry_after=date)) or 0) <= 30  # type: ignore[arg-type]
    assert retry_after_s(headers(retry_after="soon")) is None  # type: ignore[arg-type]
    assert retry_after_s(ValueError("no response")) is None


def status_error(code: int) -> openai.APIStatusError:
    response = httpx.Response(code, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    return openai.APIStatusError("failed", response=response, body=None)


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (429, True),
        (500, True),
        (503, True),
        (408, True),
        (409, True),
        (400, False),
        (401, False),
        (404, False),
        (422, False),
    ],
)
def test_which_statuses_are_transient(code: int, transient: bool) -> None:
    assert is_transient(status_error(code)) is transient


def test_no_answer_in_time_and_no_connection_are_transient_a_bug_is_not() -> None:
    assert is_transient(TimeoutError()) and is_transient(httpx.ConnectError("refused"))
    assert not is_transient(ValueError("a bug"))


# ------------------------------------------------------------------------------ the scheduler on its own


def test_calls_in_flight_are_bounded_and_results_keep_their_order() -> None:
    scheduler = Scheduler(concurrency=3, retries=0)
    active, most = 0, 0

    async def work(n: int) -> int:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.02 * (n % 3))
        active -= 1
        return n * n

    async def everything() -> list[int]:
        return list(await asyncio.gather(*(scheduler.call(lambda n=n: work(n)) for n in range(12))))

    assert scheduler.run(everything()) == [n * n for n in range(12)]
    assert most == 3 and scheduler.stats.sent == 12 and scheduler.stats.in_flight == 0
    scheduler.close()


def test_map_gives_each_item_once_as_it_finishes_within_its_window() -> None:
    scheduler = Scheduler()
    running, most = 0, 0

    async def work(delay: float) -> float:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(delay)
        running -= 1
        return delay

    delays = [0.3, 0.01, 0.2, 0.02, 0.1]
    out = list(scheduler.map(delays, work, window=5))
    assert [item for item, _ in out] == sorted(delays)  # in the order they finished, not the order given
    assert all(item == result for item, result in out)
    running = most = 0
    assert sorted(d for d, _ in scheduler.map(delays, work, window=2)) == sorted(delays) and most == 2
    scheduler.close()


def test_map_raises_the_first_error_and_cancels_the_rest() -> None:
    scheduler = Scheduler()
    cancelled = []

    async def work(n: int) -> int:
        if n == 1:
            raise RuntimeError("question 1 broke")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    with pytest.raises(RuntimeError, match="question 1 broke"):
        list(scheduler.map(range(4), work, window=4))
    time.sleep(0.1)
    assert sorted(cancelled) == [0, 2, 3]
    scheduler.close()


# --------------------------------------------------------------------------- against a scripted server


def test_429_and_500_are_retried_and_retry_after_is_waited() -> None:
    retry_after = (("retry-after", "1"),)
    rules: dict[str, Reply | list[Reply]] = {
        "limited": [Reply(status=429, headers=retry_after), Reply(text="ok after 429")],
        "broken": [Reply(status=500), Reply(status=500), Reply(text="ok after 500s")],
    }
    with ScriptedOpenAIServer(rules) as server:
        policy = generator(server)
        out = policy.generate([conv("limited"), conv("broken")], SamplingParams())
    assert [c.text for c in out] == ["ok after 429", "ok after 500s"]
    first, second = server.times("limited")
    assert second - first >= 0.95  # the server asked for 1 s; the backoff alone would be 0.01 s
    gaps = [b - a for a, b in zip(server.times("broken"), server.times("broken")[1:], strict=False)]
    assert len(gaps) == 2 and max(gaps) < 0.9
    assert (policy.scheduler.stats.retried, policy.scheduler.stats.failed) == (3, 0)
    assert policy.scheduler.stats.tokens == 2 * 15


def test_a_hung_request_is_abandoned_and_retried() -> None:
    with ScriptedOpenAIServer({"hang": [Reply(text="too late", delay_s=30), Reply(text="ok")]}) as server:
        policy = generator(server, timeout=0.5)
        started = time.monotonic()
        (completion,) = policy.generate([conv("hang")], SamplingParams())
        took = time.monotonic() - started
    assert completion.text == "ok" and server.hits("hang") == 2 and took < 5


def test_a_call_that_keeps_failing_is_an_error_completion_after_its_retries() -> None:
    with ScriptedOpenAIServer({"down": Reply(status=503)}) as server:
        policy = generator(server, max_retries=2)
        (completion,) = policy.generate([conv("down")], SamplingParams())
    assert completion.finish_reason == "error" and "503" in (completion.error or "")
    assert server.hits("down") == 3 and policy.scheduler.stats.failed == 1


def test_a_client_error_is_not_retried() -> None:
    with ScriptedOpenAIServer({"bad": Reply(status=400)}) as server:
        (completion,) = generator(server).generate([conv("bad")], SamplingParams())
    assert completion.finish_reason == "error" and server.hits("bad") == 1


# -------------------------------------------------------------------------- one question on its own


class AsyncScripted:
    """An AsyncGenerator replying to each question with its script (as the batch test generator does)."""

    def __init__(self, script: dict[str, list[str | None]]):
        self.script = {q: list(replies) for q, replies in script.items()}
        self.scheduler = Scheduler()
        self.sampling: list[tuple[str, SamplingParams]] = []

    def _reply(self, conversation: Conversation, params: SamplingParams) -> Completion:
        question = conversation[-1]["content"].splitlines()[0].removeprefix(QUESTION_PREFIX).strip()
        self.sampling.append((question, params))
        reply = self.script[question].pop(0)
        if reply is None:
            return Completion(text="", finish_reason="error", error="HTTP 503")
        return Completion(reply, "stop", [1], [2], len(conversation[-1]["content"]), len(reply))

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        return [
            self._reply(c, p)
            for c, p in zip(conversations, per_row(sampling, len(conversations)), strict=True)
        ]

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        return self.generate(conversations, sampling)

    async def complete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        await asyncio.sleep(0)
        return self._reply(conversation, params)


class Ranked:
    def __init__(self) -> None:
        self.passages = [Passage(f"p{i}", f"T{i}", f"text {i}") for i in range(10)]

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [list(self.passages[:k]) for _ in queries]


SCRIPT: dict[str, list[str | None]] = {
    "a": [query(1), "garbage", query(2, "again"), answer(3, "Ada")],
    "b": [answer(1, "Bo")],
    "c": [query(1), None, None],
}


def test_a_question_alone_gets_the_trajectory_of_the_batch() -> None:
    config = AgentConfig(top_k=2, max_steps=3, max_format_retries=1, seed=7, force_answer=True)
    questions = [QAExample(id=q, question=q, answers=["x"]) for q in SCRIPT]
    batch = AsyncScripted(SCRIPT)
    batched = Agent(batch, Ranked(), config).run(questions, temperatures=[0.3] * 3)
    alone = AsyncScripted(SCRIPT)
    assert isinstance(alone, AsyncGenerator)
    agent = Agent(alone, Ranked(), config)
    singles = [alone.scheduler.run(agent.arun(q, 0.3)) for q in questions]
    assert [t.to_dict() for t in singles] == [t.to_dict() for t in batched]
    assert sorted(alone.sampling, key=lambda s: s[0]) == sorted(batch.sampling, key=lambda s: s[0])
    a, b, c = singles
    assert a.final_answer == "Ada" and a.metadata["regenerations"] == 1 and failed_call(a) is None
    assert [p.id for p in a.steps[1].passages] == ["p2", "p3"]  # deduplicated against step 1's
    assert b.final_answer == "Bo"
    assert failed_call(c) == "HTTP 503" and c.status.value == "format-error"


# ------------------------------------------------------------------------------------------ the teacher


def teacher_config(**overrides: Any) -> ColdStartConfig:
    base = {"attempts": 2, "format_retries": 0, "agent": AgentConfig(top_k=2, max_doc_chars=512, max_steps=3)}
    return ColdStartConfig(**{**base, **overrides})


def example(qid: str, gold: str) -> QAExample:
    return QAExample(id=qid, question=f"Question {qid}?", answers=[gold], dataset="t", type="compositional")


def llm_teacher(server: ScriptedOpenAIServer, judge_llm: bool = False, **settings: Any) -> LLMTeacher:
    policy = generator(server, **{"max_retries": 1, **settings})
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=judge_llm), policy if judge_llm else None)
    return LLMTeacher(policy, Ranked(), teacher_config(), judge, "llm:test", questions_in_flight=8)


def test_a_slow_question_does_not_hold_the_others(tmp_path: Path) -> None:
    """Three-step questions finish while a slow one is still on its first step: no lockstep round waits."""
    fast = [Reply(text=query(1)), Reply(text=query(2, "more")), Reply(text=answer(3, "Gold"))]
    rules: dict[str, Reply | list[Reply]] = {f"Question F{i}?": fast for i in range(6)}
    rules["Question S?"] = Reply(text=answer(1, "Gold"), delay_s=1.5)
    finished: dict[str, float] = {}
    with ScriptedOpenAIServer(rules) as server:
        started = time.monotonic()
        examples = [example("S", "Gold")] + [example(f"F{i}", "Gold") for i in range(6)]
        run_teacher(
            llm_teacher(server),
            examples,
            tmp_path / "t.jsonl",
            on_result=lambda r: finished.setdefault(r.example.id, time.monotonic() - started),
        )
    assert list(finished)[-1] == "S" and finished["S"] >= 1.5
    assert max(finished[f"F{i}"] for i in range(6)) < 1.0
    assert all(r["kept"] for r in read_records(tmp_path / "t.jsonl"))


def test_a_question_whose_calls_keep_failing_is_retryable_and_a_rerun_retries_it(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    examples = [example("A", "Ada"), example("X", "Xi"), example("J", "Jo")]
    down: dict[str, Reply | list[Reply]] = {  # the first key found in a request decides
        "Candidate answer: Joe": Reply(status=503),  # the judge is down...
        "Question A?": Reply(text=answer(1, "Ada")),
        "Question X?": Reply(status=500),
        "Question J?": Reply(text=answer(1, "Joe")),  # ...and "Joe" is no match: it must ask the LLM
    }
    with ScriptedOpenAIServer(down) as server:
        first = run_teacher(llm_teacher(server, judge_llm=True), examples, out)
    assert (first.written, first.kept, first.failed, first.retried) == (1, 1, 2, 0)
    assert server.hits("Question X?") == 2  # the call and its one retry; then the question stopped
    failures = {r["id"]: r for _, r in iter_jsonl(failures_path(out))}
    assert set(failures) == {"X", "J"} and "500" in failures["X"]["error"]
    assert failures["J"]["error"] == "correctness judge: generation_error"
    assert [r["id"] for r in read_records(out)] == ["A"]

    up: dict[str, Reply | list[Reply]] = {
        "Candidate answer: Joe": Reply(text="Verdict: incorrect"),
        "Question X?": Reply(text=answer(1, "Xi")),
        "Question J?": Reply(text=answer(1, "Joe")),
    }
    with ScriptedOpenAIServer(up) as server:
        second = run_teacher(llm_teacher(server, judge_llm=True), examples, out)
    assert (second.skipped, second.retried, second.written, second.failed) == (1, 2, 2, 0)
    assert server.hits("Question A?") == 0
    records = {r["id"]: r for r in read_records(out)}
    assert sorted(records) == ["A", "J", "X"] and len(list(iter_jsonl(out))) == 3
    assert records["X"]["kept"] and not records["J"]["kept"]  # only a teacher judged wrong is not kept
    assert [a["reason"].split(":")[0] for a in records["J"]["attempts"]] == ["wrong answer", "wrong answer"]


class Crash(Exception):
    """Stands for the process dying mid-run."""


def test_a_crash_mid_run_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    golds = {f"Q{i}": f"Gold {i}" for i in range(12)}
    rules: dict[str, Reply | list[Reply]] = {
        f"Question {q}?": Reply(text=answer(1, g), delay_s=0.05 * (i % 4))
        for i, (q, g) in enumerate(golds.items())
    }
    examples = [example(q, g) for q, g in golds.items()]
    written: list[str] = []

    def crash_after_five(result: TeacherResult) -> None:
        written.append(result.example.id)
        if len(written) == 5:
            raise Crash

    with ScriptedOpenAIServer(rules) as server:
        with pytest.raises(Crash):
            run_teacher(llm_teacher(server), examples, out, on_result=crash_after_five)
        asked_first = {q for q in golds if any(f"Question {q}?" in p for p in server.prompts)}
        before = len(server.prompts)
        summary = run_teacher(llm_teacher(server), examples, out)
        asked_again = {q for q in golds if any(f"Question {q}?" in p for p in server.prompts[before:])}
    ids = [r["id"] for _, r in iter_jsonl(out)]
    assert sorted(ids) == sorted(golds) and len(ids) == len(set(ids))
    assert summary.skipped == 5 and summary.written == 7
    assert asked_again == set(golds) - set(written)
    assert asked_first - set(written)  # questions were in flight when it crashed: they were asked again


# ------------------------------------------------------------------------------------- the evaluation


class FlakyEndpoint:
    """The evaluation's rule generator behind an endpoint whose calls about questions containing ``down``
    fail (as they would after their retries)."""

    def __init__(self, down: str | None):
        self.rules = RuleGenerator(dispatching_rule)
        self.down = down
        self.scheduler = Scheduler()

    def _one(self, conversation: Conversation, params: SamplingParams) -> Completion:
        if self.down is not None and self.down in conversation[-1]["content"]:
            return Completion(text="", finish_reason="error", error="InternalServerError: 500")
        return self.rules.generate([conversation], params)[0]

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        return [
            self._one(c, p) for c, p in zip(conversations, per_row(sampling, len(conversations)), strict=True)
        ]

    async def agenerate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        return self.generate(conversations, sampling)

    async def complete(self, conversation: Conversation, params: SamplingParams) -> Completion:
        return self._one(conversation, params)


def test_eval_records_failed_questions_aside_and_a_rerun_completes_the_table(tmp_path: Path) -> None:
    def evaluate(out: Path, endpoint: FlakyEndpoint) -> list[dict[str, Any]]:
        judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
        return EvalRunner(CONFIG, endpoint, TriggerRetriever(), judge, out, GOLD).run(DATASETS)

    clean = evaluate(tmp_path / "clean", FlakyEndpoint(down=None))
    out = tmp_path / "flaky"
    evaluate(out, FlakyEndpoint(down="(1)"))  # the question of "other" o1
    first = [r["key"] for _, r in iter_jsonl(out / PREDICTIONS_FILE)]
    failed = {r["key"]: r for _, r in iter_jsonl(out / FAILED_FILE)}
    runs = planned_runs(CONFIG)
    assert set(failed) == {record_key(m, "other", k, "o1") for m, k in runs}
    assert all(set(r["errors"]) == {"InternalServerError: 500"} for r in failed.values())
    assert len(first) == len(set(first)) == len(runs) * 4  # every other question, once
    rerun = evaluate(out, FlakyEndpoint(down=None))
    keys = [r["key"] for _, r in iter_jsonl(out / PREDICTIONS_FILE)]
    assert len(keys) == len(set(keys)) == len(runs) * 5
    assert set(keys) - set(first) == set(failed)

    def table(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {r["key"]: (r["prediction"], r["acc"], r["budget_acc"], r["recall"]) for r in records}

    assert table(rerun) == table(clean)


def test_an_eval_may_resume_with_other_judge_call_settings_not_another_judge() -> None:
    def manifest(**judge: Any) -> dict[str, Any]:
        config = CONFIG.model_copy(update={"judge": CONFIG.judge.model_copy(update=judge)})
        return build_manifest(
            config, MANIFEST["model"], MANIFEST["retriever"], MANIFEST["datasets"], MANIFEST["gold_match"]
        )

    old = manifest(max_retries=2, concurrency=8, timeout_s=60.0)
    assert differences(old, manifest(max_retries=6, concurrency=64, timeout_s=30.0, backoff_s=0.5)) == []
    assert differences(old, manifest(max_retries=2, concurrency=8, model="other/judge")) != []


def test_a_cold_start_may_resume_with_other_judge_call_settings(tmp_path: Path) -> None:
    from r3rag.coldstart.build import build

    rules: dict[str, Reply | list[Reply]] = {"Question A?": Reply(text=answer(1, "Ada"))}
    first = teacher_config(judge=JudgeConfig(correctness_llm=False, max_retries=2, concurrency=8))
    calls = teacher_config(judge=JudgeConfig(correctness_llm=False, max_retries=6, timeout_s=5.0))
    other = teacher_config(judge=JudgeConfig(correctness_llm=False, correctness_match="cover_em"))
    with ScriptedOpenAIServer(rules) as server:
        build(first, llm_teacher(server), [example("A", "Ada")], tmp_path)
        build(calls, llm_teacher(server), [example("A", "Ada")], tmp_path)
        with pytest.raises(ValueError, match="judge.correctness_match: 'em' -> 'cover_em'"):
            build(other, llm_teacher(server), [example("A", "Ada")], tmp_path)
