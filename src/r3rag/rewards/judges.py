"""The paper's judges: answer correctness (Acc, the outcome reward) and document relevance (Rel, the process).

Judging happens inside RL rollouts, so a judge never raises on a bad judge reply: an unparseable answer, a
timeout or a server error falls back to a defined value (the match result for correctness, a configured
score for relevance) and is counted in :class:`JudgeStats`, which the trainer logs. The official code crashes
on a relevance reply without a score and silently calls any other failure "wrong"; a reward that drifts
unseen is the hardest RL bug to find, so here nothing crashes and nothing is silent.

All judges work on batches (one ``generate`` call for every prompt of a rollout) and cache LLM judgements,
since several samples of one question often repeat an answer or a search.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

import numpy as np

from r3rag.config import JudgeConfig
from r3rag.gold import MatchRule
from r3rag.llm.base import AsyncGenerator, Completion, Conversation, Generator, SamplingParams
from r3rag.llm.openai import OpenAIGenerator
from r3rag.rewards.metrics import cover_exact_match, exact_match, normalize_answer, supporting_precision
from r3rag.rewards.prompts import correctness_prompt, parse_score, parse_verdict, relevance_prompt
from r3rag.schema import Passage, QAExample, Step

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Why a judgement fell back. Generation errors include timeouts and HTTP errors reported by the Generator.
UNPARSEABLE = "unparseable"
TRUNCATED = "truncated"
GENERATION_ERROR = "generation_error"
GENERATOR_RAISED = "generator_raised"
NO_REFERENCE = "no_reference"


@dataclass
class JudgeStats:
    """What a judge did, for the training log: how its judgements were decided and how often it fell back.

    ``decided`` counts judgements by how they were made (``empty``, ``match``, ``llm``, ``gold_by_id``,
    ``gold_by_title``, ``embedding``, ``no_new_passages``); ``fallbacks`` counts, by reason, judgements that
    used the fallback.
    """

    items: int = 0
    llm_calls: int = 0
    cache_hits: int = 0
    clamped: int = 0
    decided: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)

    @property
    def fallback_count(self) -> int:
        return sum(self.fallbacks.values())

    def as_dict(self) -> dict[str, int]:
        """Flat counters for a metrics log."""
        out = {
            "items": self.items,
            "llm_calls": self.llm_calls,
            "cache_hits": self.cache_hits,
            "clamped": self.clamped,
            "fallbacks": self.fallback_count,
        }
        out.update({f"decided/{k}": v for k, v in sorted(self.decided.items())})
        out.update({f"fallback/{k}": v for k, v in sorted(self.fallbacks.items())})
        return out

    def reset(self) -> None:
        """Start counting afresh (e.g. at each training iteration)."""
        self.items = self.llm_calls = self.cache_hits = self.clamped = 0
        self.decided.clear()
        self.fallbacks.clear()


class _LRUCache:
    """A bounded mapping that forgets the least recently used entry; size 0 stores nothing."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: Hashable, value: Any) -> None:
        if self._size == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _sampling(config: JudgeConfig) -> SamplingParams:
    return SamplingParams(temperature=config.temperature, max_new_tokens=config.max_new_tokens)


def _ask(
    generator: Generator,
    conversations: list[Conversation],
    sampling: SamplingParams,
    parse: Callable[[str], T | None],
    stats: JudgeStats,
) -> list[tuple[T | None, str]]:
    """Send every conversation in one batch; for each, the parsed value, or None and the reason it failed."""
    if not conversations:
        return []
    stats.llm_calls += len(conversations)
    try:
        completions = generator.generate(conversations, sampling)
    except Exception as exc:  # a judge must never take a rollout down with it
        return _raised(exc, len(conversations))
    return _read(completions, len(conversations), parse)


async def _aask(
    generator: AsyncGenerator,
    conversations: list[Conversation],
    sampling: SamplingParams,
    parse: Callable[[str], T | None],
    stats: JudgeStats,
) -> list[tuple[T | None, str]]:
    """:func:`_ask`, awaited on the endpoint's scheduler (so that a question waiting for its verdict holds no
    other question)."""
    if not conversations:
        return []
    stats.llm_calls += len(conversations)
    try:
        completions = await generator.agenerate(conversations, sampling)
    except Exception as exc:
        return _raised(exc, len(conversations))
    return _read(completions, len(conversations), parse)


def _raised(exc: Exception, n: int) -> list[tuple[Any, str]]:
    logger.warning("judge generator failed on a batch of %d: %r", n, exc)
    return [(None, GENERATOR_RAISED)] * n


def _read(
    completions: Sequence[Completion], n: int, parse: Callable[[str], T | None]
) -> list[tuple[T | None, str]]:
    """The parsed value of each completion, or None and why not."""
    if len(completions) != n:
        return _raised(RuntimeError(f"generator returned {len(completions)} completions for {n}"), n)
    results: list[tuple[T | None, str]] = []
    for completion in completions:
        value = None if completion.finish_reason == "error" else parse(completion.text)
        if value is not None:
            results.append((value, ""))
        elif completion.finish_reason == "error":
            results.append((None, GENERATION_ERROR))
        else:
            results.append((None, TRUNCATED if completion.finish_reason == "length" else UNPARSEABLE))
    errors = [c.error for c in completions if c.finish_reason == "error"]
    if errors:  # the counts say how often; the log says why (a wrong model name fails every request)
        logger.warning("%d of %d judge requests failed, e.g. %s", len(errors), len(completions), errors[0])
    return results


# ---------------------------------------------------------------------------------------------- correctness


@dataclass(frozen=True, slots=True)
class CorrectnessItem:
    """One answer to judge. ``golds`` are all accepted aliases (the official RL judge saw only the first)."""

    question: str
    answer: str | None
    golds: tuple[str, ...]


_Key = tuple[str, str, tuple[str, ...]]
"""What the LLM is asked about an answer: the question, the answer, the gold aliases."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A correctness judgement and how it was reached; ``fallback_reason`` is set when the LLM failed."""

    correct: bool
    source: Literal["empty", "match", "llm", "fallback"]
    fallback_reason: str | None = None


class CorrectnessJudge:
    """Acc(a) = Acc_match(a) or Acc_model(a) (paper §3): a string match, then an LLM for what it misses.

    The LLM is asked only when the match fails, so it can only turn a wrong into a right; when it cannot be
    asked or its reply cannot be read, the match result (wrong) stands and the fallback is counted.
    """

    def __init__(self, config: JudgeConfig, generator: Generator | None = None) -> None:
        if config.correctness_llm and generator is None:
            raise ValueError(
                "correctness_llm is on but no Generator was given: pass one (e.g. for JudgeConfig.endpoint) "
                "or set correctness_llm: false for match-only judging"
            )
        self.config = config
        self.stats = JudgeStats()
        self._generator = generator if config.correctness_llm else None
        self._cache = _LRUCache(config.cache_size)

    def _matches(self, answer: str, golds: Sequence[str]) -> bool:
        if self.config.correctness_match == "cover_em":
            return cover_exact_match(answer, golds) == 1.0
        return exact_match(answer, golds) == 1.0

    def judge(self, question: str, answer: str | None, golds: Sequence[str]) -> Verdict:
        return self.judge_many([CorrectnessItem(question, answer, tuple(golds))])[0]

    def judge_many(self, items: Sequence[CorrectnessItem]) -> list[Verdict]:
        """Verdicts in order; every item the match cannot settle goes to the LLM in one batch."""
        verdicts, pending = self._match(items)
        if pending and self._generator is not None:
            prompts = [correctness_prompt(*key) for key in pending]
            results = _ask(self._generator, prompts, _sampling(self.config), parse_verdict, self.stats)
            self._settle(verdicts, pending, results)
        return cast(list[Verdict], verdicts)

    async def ajudge_many(self, items: Sequence[CorrectnessItem]) -> list[Verdict]:
        """:meth:`judge_many` from an event loop: the LLM's calls are awaited on its endpoint's scheduler when
        it has one, else the batch runs on a worker thread."""
        verdicts, pending = self._match(items)
        if pending and self._generator is not None:
            prompts = [correctness_prompt(*key) for key in pending]
            sampling = _sampling(self.config)
            if isinstance(self._generator, AsyncGenerator):
                results = await _aask(self._generator, prompts, sampling, parse_verdict, self.stats)
            else:
                results = await asyncio.to_thread(
                    _ask, self._generator, prompts, sampling, parse_verdict, self.stats
                )
            self._settle(verdicts, pending, results)
        return cast(list[Verdict], verdicts)

    def _match(self, items: Sequence[CorrectnessItem]) -> tuple[list[Verdict | None], dict[_Key, list[int]]]:
        """The verdicts the match (or the cache) settles; the others' positions by what the LLM is asked."""
        verdicts: list[Verdict | None] = [None] * len(items)
        pending: dict[_Key, list[int]] = {}
        for i, item in enumerate(items):
            self.stats.items += 1
            answer = (item.answer or "").strip()
            if not normalize_answer(answer):
                verdicts[i] = Verdict(False, "empty")
                self.stats.decided["empty"] += 1
                continue
            matched = self._matches(answer, item.golds)
            if matched or self._generator is None:
                verdicts[i] = Verdict(matched, "match")
                self.stats.decided["match"] += 1
                continue
            key = (item.question.strip(), answer, tuple(item.golds))
            cached = self._cache.get(key)
            if cached is not None:
                verdicts[i] = cached
                self.stats.cache_hits += 1
                self.stats.decided["llm"] += 1
            else:
                pending.setdefault(key, []).append(i)
        return verdicts, pending

    def _settle(
        self,
        verdicts: list[Verdict | None],
        pending: dict[_Key, list[int]],
        results: list[tuple[bool | None, str]],
    ) -> None:
        """Fill in the LLM's verdicts (or the fallback, counted, where it could not be asked or read)."""
        for key, (value, reason) in zip(pending, results, strict=True):
            indices = pending[key]
            self.stats.cache_hits += len(indices) - 1
            if value is None:
                verdict = Verdict(False, "fallback", reason)
                self.stats.fallbacks[reason] += len(indices)
            else:
                verdict = Verdict(value, "llm")
                self._cache.put(key, verdict)
                self.stats.decided["llm"] += len(indices)
            for i in indices:
                verdicts[i] = verdict


def failed_judgement(verdict: Verdict) -> bool:
    """Whether the LLM could not be asked (its call failed after the endpoint's retries, or the generator
    raised): the verdict is the match's fallback, and asking again later may change it."""
    return verdict.fallback_reason in (GENERATION_ERROR, GENERATOR_RAISED)


# ------------------------------------------------------------------------------------------------ relevance


@dataclass(frozen=True, slots=True)
class RelevanceItem:
    """One retrieval step to score: its example (question and gold evidence), the step, and the passages the
    step newly retrieved (passages seen earlier in the trajectory are not credited again)."""

    example: QAExample
    step: Step
    passages: tuple[Passage, ...]


@runtime_checkable
class RelevanceJudge(Protocol):
    """Rel in [0, 1] for each retrieval step; a step that retrieved nothing new scores 0."""

    stats: JudgeStats

    def score_many(self, items: Sequence[RelevanceItem]) -> list[float]: ...


class LLMRelevanceJudge:
    """Rel(d) = LLM(question, documents) (paper §3), optionally also shown the step's analysis and query (as
    the official judge is). Scores are parsed strictly and clamped to [0, 1]; failures use
    ``JudgeConfig.relevance_fallback`` and are counted."""

    def __init__(self, generator: Generator, config: JudgeConfig) -> None:
        self.config = config
        self.stats = JudgeStats()
        self._generator = generator
        self._cache = _LRUCache(config.cache_size)

    def _prompt(self, item: RelevanceItem) -> Conversation:
        shown_step = self.config.relevance_sees_step
        return relevance_prompt(
            item.example.question,
            item.passages,
            analysis=item.step.analysis if shown_step else None,
            query=item.step.query if shown_step else None,
            max_doc_chars=self.config.relevance_max_doc_chars,
        )

    def score_many(self, items: Sequence[RelevanceItem]) -> list[float]:
        scores: list[float] = [0.0] * len(items)
        pending: dict[tuple[str, ...], list[int]] = {}
        prompts: dict[tuple[str, ...], Conversation] = {}
        for i, item in enumerate(items):
            self.stats.items += 1
            if not item.passages:
                self.stats.decided["no_new_passages"] += 1
                continue
            prompt = self._prompt(item)
            key = tuple(m["content"] for m in prompt)
            cached = self._cache.get(key)
            if cached is not None:
                scores[i] = cached
                self.stats.cache_hits += 1
                self.stats.decided["llm"] += 1
            else:
                pending.setdefault(key, []).append(i)
                prompts[key] = prompt

        keys = list(pending)
        results = _ask(
            self._generator, [prompts[k] for k in keys], _sampling(self.config), parse_score, self.stats
        )
        for key, (value, reason) in zip(keys, results, strict=True):
            indices = pending[key]
            self.stats.cache_hits += len(indices) - 1
            if value is None:
                score = self.config.relevance_fallback
                self.stats.fallbacks[reason] += len(indices)
            else:
                score = min(1.0, max(0.0, value))
                self.stats.clamped += len(indices) * (score != value)
                self.stats.decided["llm"] += len(indices)
                self._cache.put(key, score)
            for i in indices:
                scores[i] = score
        return scores


class TextEncoder(Protocol):
    """Anything that embeds a list of texts into an (n, d) array, such as a sentence-transformers model."""

    def encode(self, sentences: list[str]) -> Any: ...


class ReferenceRelevanceJudge:
    """Rel without an LLM, for offline runs and for datasets with gold evidence.

    With gold supporting passages (HotpotQA, 2Wiki, MuSiQue, the synthetic world): the share of the step's new
    passages that are gold, recognised by ``match``, the rule :func:`~r3rag.gold.resolve_gold_match` decided
    for the training questions and the index (counted as ``gold_by_id`` or ``gold_by_title``, so the training
    log says which rule scored every step). Without them: the mean, over the new passages, of the cosine
    similarity between the passage and "question + gold answer", mapped linearly from [similarity_floor,
    similarity_ceiling] to [0, 1]. With neither gold nor encoder the step gets ``relevance_fallback``, counted
    as ``no_reference``.
    """

    def __init__(
        self, config: JudgeConfig, encoder: TextEncoder | None = None, match: MatchRule | None = None
    ) -> None:
        if config.similarity_ceiling <= config.similarity_floor:
            raise ValueError("similarity_ceiling must be greater than similarity_floor")
        if match is None and config.reference_match == "auto":
            raise ValueError(
                "reference_match: auto is decided against the index: pass the rule of "
                "r3rag.gold.resolve_gold_match(...) as match, or set reference_match: id or title"
            )
        self.config = config
        self.match: MatchRule = match or cast(MatchRule, config.reference_match)
        self.stats = JudgeStats()
        self._encoder = encoder

    def score_many(self, items: Sequence[RelevanceItem]) -> list[float]:
        scores: list[float] = [0.0] * len(items)
        to_embed: list[int] = []
        for i, item in enumerate(items):
            self.stats.items += 1
            ex = item.example
            if not item.passages:
                self.stats.decided["no_new_passages"] += 1
                continue
            share = supporting_precision(item.passages, ex.supporting_ids, ex.supporting_titles, self.match)
            if share is not None:
                scores[i] = share
                self.stats.decided[f"gold_by_{self.match}"] += 1
            elif self._encoder is None:
                scores[i] = self.config.relevance_fallback
                self.stats.fallbacks[NO_REFERENCE] += 1
            else:
                to_embed.append(i)
        if to_embed and self._encoder is not None:
            similar = _similarity_scores(
                self._encoder,
                [items[i] for i in to_embed],
                self.config.similarity_floor,
                self.config.similarity_ceiling,
            )
            for i, score in zip(to_embed, similar, strict=True):
                scores[i] = score
            self.stats.decided["embedding"] += len(to_embed)
        return scores


def _similarity_scores(
    encoder: TextEncoder, items: Sequence[RelevanceItem], floor: float, ceiling: float
) -> list[float]:
    """One encode call for every distinct text of the batch, then cosine similarities mapped to [0, 1]."""
    index: dict[str, int] = {}
    for item in items:
        index.setdefault(_reference_text(item.example), len(index))
        for p in item.passages:
            index.setdefault(p.contents, len(index))
    vectors = np.asarray(encoder.encode(list(index)), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    scores = []
    for item in items:
        query = vectors[index[_reference_text(item.example)]]
        cosines = np.array([vectors[index[p.contents]] @ query for p in item.passages])
        scores.append(float(np.clip((cosines - floor) / (ceiling - floor), 0.0, 1.0).mean()))
    return scores


def _reference_text(example: QAExample) -> str:
    """What a relevant passage should resemble: the question with its canonical gold answer."""
    return f"{example.question} {example.answers[0]}" if example.answers else example.question


def build_relevance_judge(
    config: JudgeConfig,
    generator: Generator | None = None,
    encoder: TextEncoder | None = None,
    match: MatchRule | None = None,
) -> RelevanceJudge:
    """The relevance judge the config names; an LLM judge needs a Generator, a reference judge may take an
    encoder for examples without gold passages and needs the gold-matching rule in force (``match``) unless
    the config names one."""
    if config.relevance == "llm":
        if generator is None:
            raise ValueError(
                "relevance: llm needs a Generator (e.g. for JudgeConfig.endpoint); "
                "use relevance: reference to judge without an LLM"
            )
        return LLMRelevanceJudge(generator, config)
    return ReferenceRelevanceJudge(config, encoder, match)


def endpoint_generator(config: JudgeConfig) -> Generator | None:
    """The Generator for the judge endpoint the config names (None without one), e.g. a vLLM server."""
    if config.endpoint is None:
        return None
    return OpenAIGenerator(
        config.endpoint,
        config.model,
        api_key_env=config.api_key_env,
        concurrency=config.concurrency,
        timeout=config.timeout_s,
        max_retries=config.max_retries,
        backoff_s=config.backoff_s,
    )
