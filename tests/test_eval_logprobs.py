"""Token log-probabilities for FLARE: exact from the local backend, passed through from a server."""

from __future__ import annotations

import pytest
import torch

from openai_stub import Reply, ScriptedOpenAIServer
from r3rag.llm.base import SamplingParams
from r3rag.llm.hf import HFGenerator
from r3rag.llm.openai import OpenAIGenerator
from r3rag.steps import build_messages
from tiny_llm import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("temperature", [0.0, 5.0])
def test_local_logprobs_equal_a_full_forward_pass(temperature: float) -> None:
    """The model's own probability (temperature 1) is what FLARE thresholds, however tokens were sampled."""
    generator = HFGenerator(tiny_model(), tiny_tokenizer(), batch_size=4, bf16=False)
    conversations = [build_messages("Who directed the film?"), build_messages("Which city?")]
    asked, plain = generator.generate(
        conversations,
        [
            SamplingParams(max_new_tokens=6, logprobs=True, temperature=temperature, seed=1),
            SamplingParams(max_new_tokens=6, temperature=temperature, seed=1),
        ],
    )
    assert plain.token_logprobs == []
    assert len(asked.token_logprobs) == len(asked.completion_token_ids) > 0
    ids = torch.tensor([asked.prompt_token_ids + asked.completion_token_ids])
    with torch.inference_mode():
        logits = generator.model(input_ids=ids).logits[0].float()
    start = len(asked.prompt_token_ids)
    expected = [
        torch.log_softmax(logits[start + i - 1], dim=-1)[token].item()
        for i, token in enumerate(asked.completion_token_ids)
    ]
    assert asked.token_logprobs == pytest.approx(expected, abs=1e-4)


def test_server_logprobs_are_requested_only_when_asked() -> None:
    with ScriptedOpenAIServer({"film": Reply("Vale Studio.", logprobs=(-0.25, -1.5))}) as server:
        generator = OpenAIGenerator(server.base_url, "stub")
        asked, plain = generator.generate(
            [build_messages("Which film?"), build_messages("Which film?")],
            [SamplingParams(logprobs=True), SamplingParams()],
        )
    assert asked.token_logprobs == [-0.25, -1.5]
    assert plain.token_logprobs == []
