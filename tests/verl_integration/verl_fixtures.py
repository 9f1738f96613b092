"""What the veRL tests run against: veRL's own V1 rollout worker, a server manager backed by a real local
model, and the real BM25 index of the hand corpus.

The policy is the tiny random Llama (tests/tiny_llm.py) after a few seconds of supervised training on one
question's two steps (a retrieval step, then the answer), as the agent itself renders them: it then writes
those steps when sampled, so a rollout has retrieval and answer steps whose rewards differ. Every token it
returns is sampled by the model in :class:`TinyServer`, as a vLLM server would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import verl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from verl.workers.rollout.replica import TokenOutput

from r3rag.agent import Agent
from r3rag.config import AgentConfig, IndexBuildConfig, RetrievalConfig
from r3rag.retrieval import open_retriever
from r3rag.retrieval.index import build_index
from r3rag.schema import QAExample
from retrieval_fixtures import write_hand_corpus
from rl_fixtures import ScriptedTokenGenerator
from tiny_llm import tiny_model, tiny_tokenizer

torch.set_num_threads(1)  # a 48-wide model: more threads only contend with each other on a loaded machine

EXAMPLE = QAExample(
    id="q-ada",
    question="Who wrote the first computer program?",
    answers=["Ada Lovelace"],
    supporting_ids=["ada"],
)
STEPS = [
    "Step 1:\nThe problem analysis: find who wrote the first program.\n"
    "The retrieval query: first computer program",
    "Step 2:\nThe problem analysis: the documents name her.\nThe final answer: Ada Lovelace",
]
ROLLOUT = AgentConfig(
    top_k=2, max_doc_chars=512, max_steps=3, max_format_retries=0, max_new_tokens=48, seed=0
)
"""The agent settings of the tests: the official top-2 and 512 characters, short budgets."""


def build_bm25(root: Path) -> Path:
    """The real BM25 index (bm25s) of the hand corpus."""
    corpus = write_hand_corpus(root / "corpus.jsonl")
    build_index(IndexBuildConfig(corpus=corpus, out=root / "index"), progress=False)
    return root / "index"


def teach_policy(index: Path, out: Path, iterations: int = 150) -> Path:
    """The tiny Llama trained on the prompts the agent builds for EXAMPLE (through the real index) and the two
    scripted steps, saved with its tokenizer as a Hugging Face folder."""
    script = {EXAMPLE.question: list(STEPS)}
    retriever = open_retriever(RetrievalConfig(source=str(index)))
    config = ROLLOUT.model_copy(update={"record_token_ids": True})
    (trajectory,) = Agent(ScriptedTokenGenerator(script), retriever, config).run([EXAMPLE])
    pairs = trajectory.metadata["step_token_ids"]
    assert len(pairs) == 2, trajectory.to_dict()
    model = tiny_model().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(iterations):
        for pair in pairs:
            ids = torch.tensor([pair["prompt"] + pair["completion"]])
            labels = ids.clone()
            labels[0, : len(pair["prompt"])] = -100
            loss = model(input_ids=ids, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval().save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


class TinyServer:
    """veRL's server manager (``LLMServerClient.generate``) backed by a local causal LM: sampled token by
    token at the request's temperature and top-p, seeded by its ``seed``, ended by end-of-turn, a stop string
    or ``max_tokens``; the stop string's tokens are returned, as vLLM returns them."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.requests: list[dict[str, Any]] = []

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any
    ) -> TokenOutput:
        self.requests.append({"prompt_ids": list(prompt_ids), **sampling_params})
        await asyncio.sleep(0)  # another trajectory may run meanwhile, as with a real server
        return self._sample(list(prompt_ids), sampling_params)

    @torch.no_grad()
    def _sample(self, prompt: list[int], p: dict[str, Any]) -> TokenOutput:
        rng = torch.Generator().manual_seed(int(p.get("seed", 0)))
        ids, out, logprobs = list(prompt), [], []
        for _ in range(int(p["max_tokens"])):
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            token = _pick(logits, float(p["temperature"]), float(p.get("top_p", 1.0)), rng)
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            ids.append(token)
            out.append(token)
            if token == self.tokenizer.eos_token_id or _stopped(
                self.tokenizer.decode(out), p.get("stop", ())
            ):
                break
        return TokenOutput(token_ids=out, log_probs=logprobs, stop_reason="completed")


def _pick(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)
    order = probs.argsort(descending=True)
    keep = probs[order].cumsum(0) - probs[order] < top_p
    kept = torch.zeros_like(probs)
    kept[order[keep]] = probs[order[keep]]
    return int(torch.multinomial(kept / kept.sum(), 1, generator=rng))


def _stopped(text: str, stops: Sequence[str]) -> bool:
    return any(s in text for s in stops)


def verl_config(model: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """veRL's own ``ppo_trainer.yaml``, composed by hydra with ``overrides``."""
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model}",
                "actor_rollout_ref.rollout.name=vllm",
                *overrides,
            ],
        )
