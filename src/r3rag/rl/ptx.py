"""The cold start's loss kept in the RL update: PPO-ptx (InstructGPT, Ouyang et al. 2022, eq. 2; OpenRLHF's
``--pretrain_data`` with ``--ptx_coef``), on the cold start's own SFT examples.

Why: an RL run on a CPU samples a few dozen questions, and every update moves the policy on all question
types, the ones it drew and the ones it did not. Measured here (docs/results.md), runs gained on the types
their rollouts rewarded and lost on the others; the KL penalty of the reward cannot stop that, since it is
computed on the steps the policy sampled only. Adding ``ptx_coef`` x the SFT loss (mean negative
log-likelihood per target token) of a few cold-start questions to every optimizer step pulls the policy back
to the teacher's steps wherever the rollout gave no signal.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from r3rag.data.sft import as_samples, tokenized_examples
from r3rag.packing import CausalLM, Sample, loss_sum, training_rows


class PtxLoss:
    """The SFT term of the actor's loss: the examples of ``ptx_data``, a few questions drawn per optimizer
    step (every step example of a drawn question, computed in one row that shares their prompts)."""

    def __init__(self, samples: list[Sample], coef: float, questions: int, pad_id: int) -> None:
        if not samples:
            raise ValueError("ptx_data holds no SFT examples")
        self.samples = samples
        self.rows = training_rows(samples, share_prefixes=True)
        self.coef = coef
        self.questions = min(questions, len(self.rows))
        self.pad_id = pad_id

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        tokenizer: Any,
        coef: float,
        questions: int,
        pad_id: int,
        types: Sequence[str] = (),
    ) -> PtxLoss:
        """Read an SFT jsonl (``r3rag coldstart``'s ``sft.jsonl``), the examples of questions of ``types``
        only (none given: all), and tokenise them as the cold start did."""
        return cls(as_samples(tokenized_examples(path, tokenizer, types)), coef, questions, pad_id)

    def draw(self, rng: random.Random) -> list[Sample]:
        """The step examples of ``questions`` distinct questions, drawn by ``rng``."""
        rows = rng.sample(range(len(self.rows)), self.questions)
        return [self.samples[i] for row in rows for i in self.rows[row]]

    def backward(
        self, actor: CausalLM, rng: random.Random, bf16: bool, share_prefixes: bool
    ) -> tuple[float, float]:
        """Add ``coef`` x the mean NLL per target token of one draw to the actor's gradients.

        Called on zeroed gradients, before the optimizer step's PPO micro-batches add theirs, so it also
        measures the norm of the term's own gradient. Returns the unweighted loss and that norm.
        """
        total, targets = loss_sum(actor, self.draw(rng), share_prefixes, self.pad_id, bf16)
        (total * (self.coef / targets)).backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in actor.parameters() if p.grad is not None])
        return float(total.detach()) / targets, float(norm)
