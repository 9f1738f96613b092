"""A two-hop toy question, a retriever that fires on trigger phrases, and generators that reply by rule.

The rules read only the prompt they are given (never a call counter), so a method's behaviour depends on what
it shows the model, exactly as with a real greedy model: running it again, with another batch, or with a
smaller step budget gives the same replies for the same prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.schema import Passage, QAExample

FILM = Passage("film", "Silver Harbour", "Silver Harbour is a 1950 film made by Vale Studio.")
STUDIO = Passage("studio", "Vale Studio", "Vale Studio was founded by Ada Vale in 1931.")
NOISE = Passage("noise", "Copper Bay", "Copper Bay is a village by the sea.")
TRIGGERS = {"film": "silver harbour", "studio": "vale studio", "noise": "copper bay"}

QUESTION = "Who founded the studio that made Silver Harbour?"
BRIDGE_FACT = "made by Vale Studio"  # in the prompt once the film passage was retrieved
ANSWER_FACT = "founded by Ada Vale"  # in the prompt once the studio passage was retrieved


def example(example_id: str = "q1", question: str = QUESTION) -> QAExample:
    return QAExample(
        id=example_id,
        question=question,
        answers=["Ada Vale"],
        supporting_ids=["film", "studio"],
        supporting_titles=["Silver Harbour", "Vale Studio"],
        dataset="toy",
    )


@dataclass
class TriggerRetriever:
    """Returns, in corpus order, the passages whose trigger phrase occurs in the query; records each call."""

    passages: Sequence[Passage] = (FILM, STUDIO, NOISE)
    calls: list[tuple[list[str], int]] = field(default_factory=list)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append((list(queries), k))
        return [[p for p in self.passages if TRIGGERS[p.id] in q.lower()][:k] for q in queries]


Rule = Callable[[str], str | tuple[str, list[float]]]


@dataclass
class RuleGenerator:
    """Replies with ``rule(user turn)``; a rule may also give token log-probabilities (sent when asked for).

    Stop strings cut the reply as a backend would. Token counts are word counts, so they can be checked.
    """

    rule: Rule
    calls: list[list[str]] = field(default_factory=list)

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        params = per_row(sampling, len(conversations))
        users = [conv[-1]["content"] for conv in conversations]
        self.calls.append(users)
        out = []
        for user, p in zip(users, params, strict=True):
            reply = self.rule(user)
            text, logprobs = reply if isinstance(reply, tuple) else (reply, [])
            cuts = [text.find(s) for s in p.stop if s in text]
            text = text[: min(cuts)] if cuts else text
            out.append(
                Completion(
                    text,
                    prompt_tokens=len(user.split()),
                    completion_tokens=len(text.split()),
                    token_logprobs=list(logprobs) if p.logprobs else [],
                )
            )
        return out


def transcript(prompt: str, question: str = QUESTION) -> str:
    """The part of a prompt after the real question (instructions and worked examples come before it)."""
    return prompt.rsplit(question, 1)[-1]
