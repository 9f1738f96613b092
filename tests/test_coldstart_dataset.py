"""SFT examples: prompts identical to the agent's, the loss mask on exactly the step tokens, the export."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from r3rag.agent import Agent
from r3rag.coldstart.dataset import coldstart_stats, sft_records, step_conversations
from r3rag.config import AgentConfig
from r3rag.data.sft import IGNORE_INDEX, end_of_turn, read_sft, tokenize_example
from r3rag.jsonl import RecordError
from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.llm.hf import HFGenerator
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus
from r3rag.steps import format_step
from tiny_llm import tiny_model, tiny_tokenizer

AGENT = AgentConfig(top_k=2, max_doc_chars=70, system_prompt="You are a helpful assistant.")
LONG = "words " * 30


def trajectory() -> Trajectory:
    p = [Passage(f"p{i}", f"Title {i}", f"Passage {i} says something. {LONG}") for i in range(4)]
    steps = [
        Step(1, "First find the film.", query="award winning film", passages=p[:2]),
        Step(2, "Now the director.", query="director of Film A", passages=p[2:4]),
        Step(3, "The documents say so.", answer="Ada Lovelace"),
    ]
    return Trajectory(
        "q1", "Who directed the film that won the award?", steps, "Ada Lovelace", TrajectoryStatus.ANSWERED
    )


@dataclass
class Replay:
    """A Generator that writes the given steps in order and records every conversation it was asked."""

    steps: list[Step]
    seen: list[Conversation] = field(default_factory=list)

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        per_row(sampling, len(conversations))
        self.seen += [list(c) for c in conversations]
        return [Completion(format_step(self.steps[len(self.seen) - 1]))]


@dataclass
class ByQuery:
    results: dict[str, list[Passage]]

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [self.results[q][:k] for q in queries]


def test_prompts_are_the_agents_prompts():
    """Replaying a trajectory through the Agent asks exactly the SFT prompts, step by step."""
    t = trajectory()
    replay = Replay(t.steps)
    retriever = ByQuery({s.query: s.passages for s in t.steps if s.query})
    (replayed,) = Agent(replay, retriever, AGENT).run([QAExample("q1", t.question, ["Ada Lovelace"])])
    assert [format_step(s) for s in replayed.steps] == [format_step(s) for s in t.steps]
    conversations = step_conversations(t, AGENT)
    assert [c[:-1] for c in conversations] == replay.seen
    assert [c[-1] for c in conversations] == [
        {"role": "assistant", "content": format_step(s)} for s in t.steps
    ]
    user = conversations[2][1]["content"]  # documents cut to max_doc_chars, as the agent cuts them
    assert "Passage 2 says" in user and "Passage 3" not in user and LONG not in user


def test_loss_mask_covers_exactly_the_step_tokens():
    tokenizer = tiny_tokenizer()
    generator = HFGenerator(tiny_model(), tokenizer)
    eot = end_of_turn(tokenizer)
    assert eot == "<|im_end|>"
    for messages, step in zip(step_conversations(trajectory(), AGENT), trajectory().steps, strict=True):
        example = tokenize_example(tokenizer, messages, eot)
        prompt_ids = generator.encode(messages[:-1])  # what the agent's generator feeds the policy
        n = example.prompt_length
        assert n == len(prompt_ids) and example.input_ids[:n] == prompt_ids
        for i, (token, label) in enumerate(zip(example.input_ids, example.labels, strict=True)):
            assert label == (IGNORE_INDEX if i < n else token), f"position {i}"
        target = example.input_ids[n:]
        assert tokenizer.decode(target) == format_step(step) + "<|im_end|>"
        assert target[-1] == tokenizer.eos_token_id  # the model learns to stop where the generator stops
        assert tokenizer.decode(example.input_ids) == generator.tokenizer.decode(prompt_ids + target)


def _tokenizer_with(template: str) -> PreTrainedTokenizerFast:
    tokenizer = tiny_tokenizer()
    copy = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    copy.chat_template = template
    return copy


def test_end_of_turn_comes_from_the_template():
    llama3 = (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
        "<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    assert end_of_turn(_tokenizer_with(llama3)) == "<|eot_id|>"
    thinking = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think></think>"
        "{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="adds '<think></think>' before"):
        end_of_turn(_tokenizer_with(thinking))


def _record(qid: str, kept: Trajectory | None) -> dict:
    return {
        "id": qid,
        "dataset": "world",
        "type": "compositional",
        "kept": kept is not None,
        "trajectory": None if kept is None else kept.to_dict(),
        "attempts": [{"attempt": 0, "reason": "" if kept else "hop 1 ('x') not found in 3 searches"}],
    }


def test_sft_records_export_and_statistics(tmp_path: Path):
    good = trajectory()
    bad = trajectory()
    bad.example_id = "q3"
    bad.steps[1].analysis = "It quotes The final answer: here."  # would not parse back as written
    records = [_record("q1", good), _record("q2", None), _record("q3", bad)]
    examples, dropped = sft_records(records, AGENT)
    assert dropped == 1
    assert [e["id"] for e in examples] == ["q1#1", "q1#2", "q1#3"]
    assert [m["role"] for m in examples[0]["messages"]] == ["system", "user", "assistant"]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    assert read_sft(path) == examples
    stats = coldstart_stats(records, examples, dropped)
    assert stats["kept"] == 2 and stats["per_group"]["world/compositional"]["attempted"] == 3
    assert stats["rejections"] == {"hop not found": 1}
    assert stats["steps_per_trajectory"]["histogram"] == {3: 2}
    assert stats["documents_per_retrieval_step"] == 2 and stats["sft_examples"] == 3


def test_read_sft_names_the_bad_field(tmp_path: Path):
    path = tmp_path / "sft.jsonl"
    path.write_text(
        json.dumps({"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "user"}]}) + "\n"
    )
    with pytest.raises(RecordError, match=r"record 1, field 'messages\[1\]'"):
        read_sft(path)
