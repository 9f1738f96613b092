"""SFT step examples: the chat records the cold start writes, tokenised as the agent's generator encodes its
prompts, and laid out as samples of the packing code.

Two trainers read them: the cold start (:mod:`r3rag.coldstart.sft`) trains on them, and PPO keeps their
loss in its update when asked (``ptx_data``, :mod:`r3rag.rl.ptx`). Each record's prompt is rendered by the
model's chat template and its target is the assistant's step followed by the template's end-of-turn marker,
so the loss is on exactly the tokens the policy writes at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3rag.data.datasets import by_type
from r3rag.jsonl import RecordError, iter_jsonl
from r3rag.packing import Sample
from r3rag.steps import ChatTokenizer, render_prompt

IGNORE_INDEX = -100  # label of a token without loss (the value torch's cross-entropy skips)
_PROBE = "\x07r3rag-probe\x07"


def read_sft(path: str | Path) -> list[dict[str, Any]]:
    """SFT examples, each with an ``example_id`` and ``messages`` ending in the assistant's step."""
    out = []
    for line, record in iter_jsonl(path):
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            raise RecordError(path, line, "expected a list of at least two chat messages", field="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise RecordError(path, line, "expected {role, content}", field=f"messages[{i}]")
        if messages[-1].get("role") != "assistant":
            raise RecordError(path, line, "the last message must be the assistant's", field="messages")
        record.setdefault("example_id", record.get("id", str(line)))
        if not isinstance(record["example_id"], str | int) or isinstance(record["example_id"], bool):
            raise RecordError(path, line, "expected the question's id (text or a number)", field="example_id")
        out.append(record)
    return out


# ----------------------------------------------------------------------------------------- tokenisation


def end_of_turn(tokenizer: ChatTokenizer) -> str:
    """What the chat template writes after an assistant message's content (``<|im_end|>`` for ChatML,
    ``<|eot_id|>`` for Llama 3), found by rendering a conversation with and without an assistant turn.

    Trailing whitespace is dropped: generation stops at the end-of-turn token, so nothing after it is ever
    generated. A template that puts text of its own before the assistant's content is refused, since the
    target would then not be what the policy writes.
    """
    probe = [{"role": "user", "content": "Hi"}]
    prompt = render_prompt(tokenizer, probe)
    full = tokenizer.apply_chat_template([*probe, {"role": "assistant", "content": _PROBE}], tokenize=False)
    name = type(tokenizer).__name__
    if not full.startswith(prompt) or _PROBE not in full[len(prompt) :]:
        raise ValueError(f"{name}: the chat template does not extend the generation prompt with the reply")
    before, _, after = full[len(prompt) :].partition(_PROBE)
    if before:
        raise ValueError(f"{name}: the chat template adds {before!r} before the assistant's reply")
    suffix = after.rstrip()
    if not suffix:
        raise ValueError(f"{name}: the chat template writes no end-of-turn marker after the reply")
    return suffix


@dataclass(slots=True)
class TokenizedExample:
    """``input_ids`` = prompt + target; ``labels`` are ``IGNORE_INDEX`` over the prompt, the ids after it."""

    example_id: str
    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def tokenize_example(
    tokenizer: Any, messages: list[dict[str, str]], eot: str, example_id: str = ""
) -> TokenizedExample:
    """Prompt ids exactly as the agent's generator encodes them, then the step and end-of-turn ids.

    The two parts are encoded separately, as at inference, where the prompt is encoded and the step is
    generated after it token by token.
    """
    prompt = render_prompt(tokenizer, messages[:-1])
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    target_ids = list(tokenizer(messages[-1]["content"] + eot, add_special_tokens=False)["input_ids"])
    return TokenizedExample(
        example_id=example_id,
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
        prompt_length=len(prompt_ids),
    )


def tokenized_examples(path: str | Path, tokenizer: Any, types: Sequence[str] = ()) -> list[TokenizedExample]:
    """The records of an SFT jsonl (:func:`read_sft`) whose question's ``type`` (a field `r3rag coldstart`
    writes) is one of ``types`` (none given: every record), tokenised for ``tokenizer``."""
    eot = end_of_turn(tokenizer)
    records = by_type(read_sft(path), types, path, lambda record: str(record.get("type") or ""))
    return [
        tokenize_example(tokenizer, record["messages"], eot, str(record["example_id"])) for record in records
    ]


def as_samples(examples: list[TokenizedExample]) -> list[Sample]:
    """The examples as samples of the packing code: the target tokens are the "actions", and the examples of
    one question share a ``trajectory`` number so that they can share a row."""
    questions: dict[str, int] = {}
    return [
        Sample(
            tuple(e.input_ids),
            tuple(label != IGNORE_INDEX for label in e.labels),
            (0.0,) * len(e.input_ids),
            trajectory=questions.setdefault(e.example_id, len(questions)),
            step=i,
        )
        for i, e in enumerate(examples)
    ]
