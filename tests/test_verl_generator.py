"""The generator over veRL's server manager (its module imports no veRL, so it is tested in r3rag's own venv):
the request it sends, and how it reads the reply back, as the local backend reports a completion."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from r3rag.integrations.verl.generator import ServerGenerator
from r3rag.llm.base import AsyncGenerator, SamplingParams
from r3rag.steps import render_prompt
from tiny_llm import tiny_tokenizer

CONVERSATION = [{"role": "user", "content": "The question: Who directed the film?"}]


@dataclass
class Reply:
    token_ids: list[int]
    log_probs: list[float] | None = None


@dataclass
class Server:
    """Answers every request with ``reply`` (or raises ``error``) and keeps the requests."""

    reply: list[int]
    error: Exception | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]
    ) -> Reply:
        self.requests.append({"prompt_ids": prompt_ids, **sampling_params})
        if self.error is not None:
            raise self.error
        return Reply(self.reply, [-0.5] * len(self.reply))


def _complete(server: Server, params: SamplingParams) -> Any:
    return asyncio.run(
        ServerGenerator(server, tiny_tokenizer(), {"top_k": -1}).complete(CONVERSATION, params)
    )


def test_the_request_is_the_rendered_prompt_and_the_agents_sampling_over_veRLs_own() -> None:
    tok = tiny_tokenizer()
    server = Server(tok("Step 1:", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    _complete(server, SamplingParams(temperature=0.4, top_p=0.9, max_new_tokens=7, stop=("X",), seed=3))
    (request,) = server.requests
    rendered = tok(render_prompt(tok, CONVERSATION), add_special_tokens=False)["input_ids"]
    assert request == {
        "prompt_ids": rendered,
        "top_k": -1,
        "temperature": 0.4,
        "top_p": 0.9,
        "max_tokens": 7,
        "stop": ["X"],
        "seed": 3,
    }


def test_every_sampled_token_is_kept_and_the_text_is_cut_at_the_stop_string() -> None:
    tok = tiny_tokenizer()
    ids = tok("The retrieval query: film\nStep 2:", add_special_tokens=False)["input_ids"]
    completion = _complete(Server(ids), SamplingParams(max_new_tokens=64, stop=("\nStep 2:",), logprobs=True))
    assert completion.completion_token_ids == ids
    assert (completion.text, completion.finish_reason) == ("The retrieval query: film", "stop")
    assert completion.token_logprobs == [-0.5] * len(ids)


def test_end_of_turn_is_an_action_but_not_text_and_a_full_budget_is_length() -> None:
    tok = tiny_tokenizer()
    ids = tok("film", add_special_tokens=False)["input_ids"]
    ended = _complete(Server([*ids, tok.eos_token_id]), SamplingParams(max_new_tokens=64))
    assert (ended.text, ended.finish_reason, ended.completion_token_ids) == (
        "film",
        "stop",
        [*ids, tok.eos_token_id],
    )
    cut = _complete(Server(ids), SamplingParams(max_new_tokens=len(ids)))
    assert (cut.text, cut.finish_reason, cut.token_logprobs) == ("film", "length", [])


def test_a_failed_server_call_is_an_error_completion_not_a_crash() -> None:
    completion = _complete(Server([], error=ConnectionError("replica down")), SamplingParams())
    assert completion.finish_reason == "error"
    assert completion.error == "ConnectionError: replica down"


def test_it_is_an_async_generator_whose_batch_keeps_the_order() -> None:
    tok = tiny_tokenizer()
    generator = ServerGenerator(Server(tok("a", add_special_tokens=False)["input_ids"]), tok)
    assert isinstance(generator, AsyncGenerator)
    out = generator.generate([CONVERSATION, CONVERSATION], [SamplingParams(seed=1), SamplingParams(seed=2)])
    assert [c.text for c in out] == ["a", "a"]
    assert [r["seed"] for r in generator.server_manager.requests] == [1, 2]
