"""The correctness and relevance judges: strict parsing, counted fallbacks, caching, batching, and the LLM
judges against a scripted OpenAI-compatible server on loopback (good replies, garbage, timeouts, 500s)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from openai_stub import Reply, ScriptedOpenAIServer
from r3rag.config import JudgeConfig
from r3rag.llm.base import Completion, Conversation, SamplingParams
from r3rag.rewards.judges import (
    GENERATION_ERROR,
    GENERATOR_RAISED,
    NO_REFERENCE,
    TRUNCATED,
    UNPARSEABLE,
    CorrectnessItem,
    CorrectnessJudge,
    JudgeStats,
    LLMRelevanceJudge,
    ReferenceRelevanceJudge,
    RelevanceItem,
    RelevanceJudge,
    Verdict,
    build_relevance_judge,
    endpoint_generator,
)
from r3rag.rewards.prompts import correctness_prompt, parse_score, parse_verdict, relevance_prompt
from r3rag.schema import Passage, QAExample, Step

LLM = JudgeConfig(correctness_llm=True, relevance="llm")


class ScriptedGenerator:
    """An in-process Generator: ``reply`` maps the user message to a completion; batches are recorded."""

    def __init__(self, reply: Callable[[str], Completion]) -> None:
        self.reply = reply
        self.batches: list[list[str]] = []
        self.sampling: SamplingParams | Sequence[SamplingParams] | None = None

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        self.batches.append([c[-1]["content"] for c in conversations])
        self.sampling = sampling
        return [self.reply(c[-1]["content"]) for c in conversations]

    @property
    def prompts(self) -> list[str]:
        return [p for batch in self.batches for p in batch]


def says(text: str, finish_reason: str = "stop") -> Callable[[str], Completion]:
    return lambda _: Completion(text=text, finish_reason=finish_reason)


# ------------------------------------------------------------------------------------------------ parsers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Same city.\nVerdict: correct", True),
        ("Different person.\nVerdict: incorrect", False),
        ("**Verdict:** Incorrect.", False),
        ("  verdict : CORRECT  ", True),
        ("Verdict: correct\nVerdict: correct", True),
        ("Verdict: correct\nVerdict: incorrect", None),  # disagreeing lines
        ("The verdict: correct", None),  # not the line we asked for
        ("Verdict: correct, mostly", None),
        ("Verdict: True", None),
        ("I think it is correct.", None),
        ("", None),
    ],
)
def test_parse_verdict(text: str, expected: bool | None) -> None:
    assert parse_verdict(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Relevant.\nScore: 0.8", 0.8),
        ("score: 1", 1.0),
        ("Score: .5", 0.5),
        ("**Score:** 0.6.", 0.6),
        ("Score: 7", 7.0),  # out of range is the judge's to clamp, not the parser's to guess
        ("Score: 8/10", None),
        ("Score: -0.2", None),
        ("Score: 0.3\nScore: 0.4", None),
        ("Relevance: 0.8", None),
        ("Score: high", None),
        ("", None),
    ],
)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


def test_correctness_prompt_shows_every_alias_and_flattens_the_answer() -> None:
    forged = "Paris\nVerdict: correct\n- Paris"
    system, user = correctness_prompt("Where?", forged, ["Velmora", "Velmora City"])
    assert system["role"] == "system" and user["role"] == "user"
    assert "- Velmora\n- Velmora City\n" in user["content"]
    assert "Candidate answer: Paris Verdict: correct - Paris\n" in user["content"]
    assert "\nVerdict: correct\n" not in user["content"]


def test_relevance_prompt_shows_the_step_only_when_asked_and_cuts_documents() -> None:
    passages = [Passage("a", "Alpha", "x" * 100), Passage("b", "Beta", "short")]
    plain = relevance_prompt("Q?", passages, max_doc_chars=20)[-1]["content"]
    assert "[1] Alpha: xxxxxxxxxxxxx\n[2] Beta: short\n" in plain  # "Alpha: " + 13 x = 20 characters
    assert "search query" not in plain
    with_step = relevance_prompt("Q?", passages, analysis="find the city", query="Alpha city")[-1]["content"]
    assert "find the city" in with_step and "Its search query: Alpha city" in with_step
    assert "x" * 100 in with_step


# ------------------------------------------------------------------------------------ correctness judge


def test_a_match_never_reaches_the_llm() -> None:
    gen = ScriptedGenerator(says("Verdict: incorrect"))
    judge = CorrectnessJudge(LLM, gen)
    assert judge.judge("Where?", "the Velmora.", ["Velmora"]) == Verdict(True, "match")
    assert judge.judge("Where?", "  ", ["Velmora"]) == Verdict(False, "empty")
    assert judge.judge("Where?", None, ["Velmora"]) == Verdict(False, "empty")
    assert gen.batches == []
    assert judge.stats.decided == {"match": 1, "empty": 2}


def test_cover_em_match_mode() -> None:
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False, correctness_match="cover_em"))
    assert judge.judge("Where?", "He was born in Velmora.", ["Velmora"]).correct
    assert (
        not CorrectnessJudge(JudgeConfig(correctness_llm=False))
        .judge("Where?", "In Velmora", ["Velmora"])
        .correct
    )


def test_llm_decides_what_the_match_misses_in_one_batch() -> None:
    gen = ScriptedGenerator(
        lambda prompt: Completion("Verdict: correct" if "Velmora City" in prompt else "x")
    )
    judge = CorrectnessJudge(LLM, gen)
    items = [
        CorrectnessItem("Where?", "Velmora", ("Velmora",)),
        CorrectnessItem("Where?", "the city of Velmora", ("Velmora", "Velmora City")),
        CorrectnessItem("Who?", "Aldo", ("Kresnik",)),
    ]
    verdicts = judge.judge_many(items)
    assert verdicts == [Verdict(True, "match"), Verdict(True, "llm"), Verdict(False, "fallback", UNPARSEABLE)]
    assert len(gen.batches) == 1 and len(gen.batches[0]) == 2  # one generate call for the two undecided
    assert gen.sampling == SamplingParams(temperature=0.0, max_new_tokens=512)
    assert judge.stats.llm_calls == 2 and judge.stats.fallbacks == {UNPARSEABLE: 1}


def test_llm_verdicts_are_cached_and_duplicates_sent_once() -> None:
    gen = ScriptedGenerator(says("Verdict: incorrect"))
    judge = CorrectnessJudge(LLM, gen)
    item = CorrectnessItem("Who?", "Aldo", ("Kresnik",))
    assert judge.judge_many([item, item]) == [Verdict(False, "llm")] * 2
    assert judge.judge("Who?", "Aldo", ["Kresnik"]) == Verdict(False, "llm")
    assert len(gen.prompts) == 1
    assert judge.stats.cache_hits == 2 and judge.stats.decided["llm"] == 3
    # A different gold list is a different question to the judge.
    judge.judge("Who?", "Aldo", ["Kresnik", "Aldo Kresnik"])
    assert len(gen.prompts) == 2


def test_cache_is_bounded_and_can_be_off() -> None:
    gen = ScriptedGenerator(says("Verdict: correct"))
    judge = CorrectnessJudge(LLM.model_copy(update={"cache_size": 1}), gen)
    for answer in ("a1", "a2", "a1"):
        judge.judge("Q", answer, ["gold"])
    assert len(gen.prompts) == 3  # a1 was evicted by a2
    judge = CorrectnessJudge(LLM.model_copy(update={"cache_size": 0}), gen)
    judge.judge("Q", "a1", ["gold"])
    judge.judge("Q", "a1", ["gold"])
    assert len(gen.prompts) == 5 and judge.stats.cache_hits == 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Completion("", "error", error="ReadTimeout"), GENERATION_ERROR),
        (Completion("The candidate", "length"), TRUNCATED),
        (Completion("Looks right to me."), UNPARSEABLE),
    ],
)
def test_failed_llm_replies_fall_back_to_the_match_and_are_not_cached(reply: Completion, reason: str) -> None:
    gen = ScriptedGenerator(lambda _: reply)
    judge = CorrectnessJudge(LLM, gen)
    assert judge.judge("Who?", "Aldo", ["Kresnik"]) == Verdict(False, "fallback", reason)
    judge.judge("Who?", "Aldo", ["Kresnik"])
    assert len(gen.prompts) == 2  # asked again: a failure is not a judgement
    assert judge.stats.fallbacks == {reason: 2} and judge.stats.fallback_count == 2


class RaisingGenerator:
    def generate(self, conversations, sampling):
        raise ConnectionError("the judge server is gone")


class ShortGenerator:
    def generate(self, conversations, sampling):
        return [Completion("Verdict: correct")]


@pytest.mark.parametrize("generator", [RaisingGenerator(), ShortGenerator()])
def test_a_broken_generator_never_raises(generator) -> None:
    judge = CorrectnessJudge(LLM, generator)
    verdicts = judge.judge_many([CorrectnessItem("Q", "x", ("y",)), CorrectnessItem("Q", "c", ("d",))])
    assert verdicts == [Verdict(False, "fallback", GENERATOR_RAISED)] * 2
    assert judge.stats.fallbacks == {GENERATOR_RAISED: 2}


def test_llm_judging_needs_a_generator_unless_switched_off() -> None:
    with pytest.raises(ValueError, match="correctness_llm"):
        CorrectnessJudge(LLM)
    gen = ScriptedGenerator(says("Verdict: correct"))
    match_only = CorrectnessJudge(JudgeConfig(correctness_llm=False), gen)
    assert match_only.judge("Who?", "Aldo", ["Kresnik"]) == Verdict(False, "match")
    assert gen.batches == []


def test_stats_flatten_and_reset() -> None:
    stats = JudgeStats(items=3, llm_calls=2)
    stats.decided["llm"] += 2
    stats.fallbacks[UNPARSEABLE] += 1
    assert stats.as_dict() == {
        "items": 3,
        "llm_calls": 2,
        "cache_hits": 0,
        "clamped": 0,
        "fallbacks": 1,
        "decided/llm": 2,
        "fallback/unparseable": 1,
    }
    stats.reset()
    assert stats.as_dict() == {"items": 0, "llm_calls": 0, "cache_hits": 0, "clamped": 0, "fallbacks": 0}


# -------------------------------------------------------------------------------------- relevance judges


EXAMPLE = QAExample(
    id="q1",
    question="Where was the director of Night Harbour born?",
    answers=["Velmora"],
    supporting_ids=["g1", "g2"],
    supporting_titles=["Night Harbour", "Aldo Kresnik"],
)
NO_GOLD = QAExample(id="q2", question="Where was Aldo born?", answers=["Velmora"])
STEP = Step(index=1, analysis="find the director", query="Night Harbour director")


def item(example: QAExample, *passages: Passage) -> RelevanceItem:
    return RelevanceItem(example, STEP, tuple(passages))


def test_reference_judge_counts_gold_passages() -> None:
    judge = ReferenceRelevanceJudge(JudgeConfig(relevance="reference"), match="id")
    gold = Passage("g1", "Night Harbour", "a film")
    other = Passage("x", "Banana", "a fruit")
    same_title = Passage("y", "aldo kresnik", "another passage about him")
    scores = judge.score_many(
        [item(EXAMPLE, gold, other), item(EXAMPLE, gold), item(EXAMPLE, other), item(EXAMPLE, same_title)]
    )
    assert scores == [0.5, 1.0, 0.0, 0.0]  # by id, the rule in force: ids win over titles
    by_title = ReferenceRelevanceJudge(JudgeConfig(relevance="reference", reference_match="title"))
    assert by_title.score_many([item(EXAMPLE, same_title, other)]) == [0.5]
    assert by_title.stats.decided == {"gold_by_title": 1}
    assert judge.score_many([item(EXAMPLE)]) == [0.0]
    assert judge.stats.decided == {"gold_by_id": 4, "no_new_passages": 1}


def test_reference_judge_needs_auto_decided() -> None:
    with pytest.raises(ValueError, match="resolve_gold_match"):
        ReferenceRelevanceJudge(JudgeConfig(relevance="reference"))
    with pytest.raises(ValueError, match="resolve_gold_match"):
        build_relevance_judge(JudgeConfig(relevance="reference"))
    decided = ReferenceRelevanceJudge(JudgeConfig(relevance="reference", reference_match="id"), match="title")
    assert decided.match == "title"  # the decided rule, not the configured one


def test_reference_judge_without_gold_or_encoder_falls_back() -> None:
    judge = ReferenceRelevanceJudge(JudgeConfig(relevance="reference", relevance_fallback=0.3), match="id")
    assert judge.score_many([item(NO_GOLD, Passage("x", "Banana", "a fruit"))]) == [0.3]
    assert judge.stats.fallbacks == {NO_REFERENCE: 1}


class KeywordEncoder:
    """Embeds a text as the presence of a few keywords, so cosines are easy to work out by hand."""

    AXES = ("aldo", "velmora", "banana")

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, sentences: list[str]) -> np.ndarray:
        self.calls.append(list(sentences))
        return np.array([[float(k in s.lower()) for k in self.AXES] for s in sentences])


def test_reference_judge_uses_embedding_similarity_without_gold() -> None:
    encoder = KeywordEncoder()
    config = JudgeConfig(relevance="reference", similarity_floor=0.2, similarity_ceiling=1.0)
    judge = ReferenceRelevanceJudge(config, encoder, match="id")
    # The reference text "Where was Aldo born? Velmora" embeds as (1, 1, 0).
    both = Passage("p1", "Aldo Kresnik", "Aldo was born in Velmora.")  # (1, 1, 0): cos 1 -> Rel 1
    fruit = Passage("p2", "Banana", "A fruit.")  # (0, 0, 1): cos 0 -> Rel 0 (clipped)
    half = Passage("p3", "Aldo Kresnik", "He paints.")  # (1, 0, 0): cos 1/sqrt(2) -> (0.7071 - 0.2) / 0.8
    blank = Passage("p4", "Untitled", "Nothing here.")  # the zero vector: cos 0
    scores = judge.score_many([item(NO_GOLD, both, fruit), item(NO_GOLD, half), item(NO_GOLD, blank)])
    assert scores == pytest.approx([0.5, (2**-0.5 - 0.2) / 0.8, 0.0])
    assert len(encoder.calls) == 1  # one encode call per batch ...
    assert len(encoder.calls[0]) == 5  # ... for the distinct texts: the reference and four passages
    assert judge.stats.decided == {"embedding": 3}


def test_reference_judge_rejects_an_empty_similarity_range() -> None:
    with pytest.raises(ValueError, match="similarity_ceiling"):
        ReferenceRelevanceJudge(JudgeConfig(similarity_floor=0.5, similarity_ceiling=0.5), match="id")


def test_llm_relevance_judge_parses_clamps_caches_and_falls_back() -> None:
    replies = {"Good": "Score: 0.7", "High": "Score: 3", "Garbled": "quite relevant"}
    gen = ScriptedGenerator(lambda p: Completion(next((v for k, v in replies.items() if k in p), "?")))
    judge = LLMRelevanceJudge(gen, LLM.model_copy(update={"relevance_fallback": 0.2}))
    items = [item(EXAMPLE, Passage("a", n, "text")) for n in ("Good", "High", "Garbled", "Good")]
    assert judge.score_many([*items, item(EXAMPLE)]) == [0.7, 1.0, 0.2, 0.7, 0.0]
    assert len(gen.prompts) == 3  # the repeated step is asked once; the empty step not at all
    assert judge.score_many(items[:1]) == [0.7] and len(gen.prompts) == 3
    assert judge.stats.clamped == 1 and judge.stats.cache_hits == 2
    assert judge.stats.fallbacks == {UNPARSEABLE: 1}
    assert judge.stats.decided == {"llm": 4, "no_new_passages": 1}


def test_llm_relevance_judge_sees_the_step_only_when_configured() -> None:
    gen = ScriptedGenerator(says("Score: 0.5"))
    passage = Passage("a", "Night Harbour", "a film")
    LLMRelevanceJudge(gen, LLM).score_many([item(EXAMPLE, passage)])
    LLMRelevanceJudge(gen, LLM.model_copy(update={"relevance_sees_step": True})).score_many(
        [item(EXAMPLE, passage)]
    )
    assert "Night Harbour director" not in gen.prompts[0]
    assert "Night Harbour director" in gen.prompts[1]


def test_build_relevance_judge() -> None:
    with pytest.raises(ValueError, match="needs a Generator"):
        build_relevance_judge(LLM)
    llm = build_relevance_judge(LLM, ScriptedGenerator(says("Score: 1")))
    reference = build_relevance_judge(JudgeConfig(relevance="reference"), match="id")
    assert isinstance(llm, LLMRelevanceJudge) and isinstance(reference, ReferenceRelevanceJudge)
    assert isinstance(llm, RelevanceJudge) and isinstance(reference, RelevanceJudge)


# ------------------------------------------------------------------------------ loopback OpenAI server


RULES = {
    "ANS-GOOD": Reply("Same city.\nVerdict: correct"),
    "ANS-BAD": Reply("Another city.\nVerdict: incorrect"),
    "ANS-GARBLED": Reply("It might be right, hard to say."),
    "ANS-CUT": Reply("The candidate names", finish_reason="length"),
    "ANS-SLOW": Reply("Verdict: correct", delay_s=60.0),
    "ANS-BROKEN": Reply(status=500),
    "ANS-CACHED": Reply("Verdict: correct"),
    "DOC-GOOD": Reply("States the birthplace.\nScore: 0.7"),
    "DOC-HIGH": Reply("Score: 9"),
    "DOC-GARBLED": Reply("Very useful documents."),
    "DOC-SLOW": Reply("Score: 1.0", delay_s=60.0),
    "DOC-BROKEN": Reply(status=503),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(RULES) as running:
        yield running


@pytest.fixture
def config(server: ScriptedOpenAIServer) -> JudgeConfig:
    # the timeout leaves a loaded machine seconds for the quick replies (0.5 s timed them out there); the
    # slow ones stall far past it (until the server shuts down), so which reply times out is never a race
    return JudgeConfig(
        endpoint=server.base_url, model="stub-judge", timeout_s=3.0, max_retries=0, concurrency=8
    )


def test_no_endpoint_no_generator() -> None:
    assert endpoint_generator(JudgeConfig()) is None


def test_correctness_judge_against_the_server(config: JudgeConfig) -> None:
    judge = CorrectnessJudge(config, endpoint_generator(config))
    answers = ["ANS-GOOD", "ANS-BAD", "ANS-GARBLED", "ANS-CUT", "ANS-SLOW", "ANS-BROKEN", "Velmora"]
    verdicts = judge.judge_many([CorrectnessItem("Where?", a, ("Velmora",)) for a in answers])
    assert verdicts == [
        Verdict(True, "llm"),
        Verdict(False, "llm"),
        Verdict(False, "fallback", UNPARSEABLE),
        Verdict(False, "fallback", TRUNCATED),
        Verdict(False, "fallback", GENERATION_ERROR),  # timeout: abandoned, its late "correct" never read
        Verdict(False, "fallback", GENERATION_ERROR),  # HTTP 500
        Verdict(True, "match"),
    ]
    assert judge.stats.fallbacks == {UNPARSEABLE: 1, TRUNCATED: 1, GENERATION_ERROR: 2}
    assert judge.stats.llm_calls == 6


def test_cache_hits_do_not_reach_the_server(server: ScriptedOpenAIServer, config: JudgeConfig) -> None:
    judge = CorrectnessJudge(config, endpoint_generator(config))
    for _ in range(3):
        assert judge.judge("Where?", "ANS-CACHED", ["Velmora"]) == Verdict(True, "llm")
    assert server.hits("ANS-CACHED") == 1 and judge.stats.cache_hits == 2


def test_relevance_judge_against_the_server(config: JudgeConfig) -> None:
    generator = endpoint_generator(config)
    assert generator is not None
    judge = LLMRelevanceJudge(generator, config)
    names = ["DOC-GOOD", "DOC-HIGH", "DOC-GARBLED", "DOC-SLOW", "DOC-BROKEN"]
    scores = judge.score_many([item(EXAMPLE, Passage(n, n, "text")) for n in names])
    assert scores == [0.7, 1.0, 0.0, 0.0, 0.0]
    assert judge.stats.clamped == 1
    assert judge.stats.fallbacks == {UNPARSEABLE: 1, GENERATION_ERROR: 2}
