"""A local transformers model as a batched :class:`~r3rag.llm.base.Generator`.

Why a decode loop of our own instead of ``model.generate``: every row of a batch carries its own
:class:`SamplingParams` (the paper samples each prompt at temperatures 0.1/0.4/0.7/1.0 in one rollout, and
the agent stops each step at its own next-step header). ``generate`` takes one temperature, one top-p, one
``max_new_tokens`` and one set of stop strings per call, so it would need one call per distinct setting
(4 calls of 8 rows instead of one of 32: the batching we want is lost) or logits processors that fake
per-row temperature and still share stops and lengths. A plain loop over the KV cache does all of it per row
and, more importantly for throughput, **drops a row from the batch as soon as it finishes**: ``generate``
keeps computing finished rows (as padding) until the longest row is done, and step lengths vary a lot, so
the batch would mostly compute tokens nobody reads. With the loop, the cost of a batch follows the tokens
actually generated. Measured on the SmolLM2 embedded model, 32 greedy step prompts, bf16: 210 tok/s with
this loop vs 182 useful tok/s with ``generate`` at a 64-token cap (the gap grows with the cap, since rows
finish ever earlier than the longest); at batch 1, fp32: 20.9 vs 17.0 tok/s.

The other levers (whole-rollout figures in ``benchmarks/rollout.py``):

- length bucketing: conversations are sorted by prompt length before being cut into batches, so a batch
  pads little (prefill cost and attention over padding both shrink);
- only the last position's logits are computed (``logits_to_keep=1``): full-sequence logits of a
  49k-vocabulary model at 32 x 2,000 tokens would be 12 GB;
- bf16: a generator that only generates (``from_name``: ``ask``, ``eval``, the quickstart's evaluations)
  loads its weights in bf16, so no forward pass casts them. A generator over a model being trained (PPO's
  rollouts: fp32 master weights) runs its batched forward passes under bf16 autocast instead, which casts
  every weight at every decoded token. Measured on a 2-core AMD EPYC (Zen 4, AVX-512 BF16, no AMX), 8 rows
  x 64 greedy tokens: 5.0 s with bf16 weights, 8.7 s under autocast; prefill speed is the same either way
  (compute-bound). On a CPU, under autocast a single row decodes in fp32, which was faster than autocast
  for one row (20.8 vs 10.7 tok/s on a 2-core Xeon); when a batch shrinks to its last row mid-decode, that
  row carries on in fp32 (its bf16 KV cache is promoted by the concatenation that appends the next keys).
  On a GPU every row decodes under autocast (``r3rag.device.autocast_single_rows``);
- prefill in chunks: the prompts of a batch go through the model a few rows at a time, at most
  ``prefill_tokens`` tokens per forward pass, and their KV caches are joined for the decode, which keeps
  every row. One forward pass over 16 prompts of 1,900 tokens ran at 619 tok/s, 2 rows at a time at 909
  (same EPYC, bf16): the activations of a huge pass fall out of the CPU's caches. Decoding wants the
  opposite (every row shares one read of the weights), hence chunks for the prefill only.

On a GPU: the model's device is the generator's. Prompts are padded on the host and moved once per batch;
from then on the decode stays on the device: sampling settings live there (:class:`RowSampling`), each row
with a seed draws from its own CUDA generator, the sampled tokens feed the next step without a round trip,
and the only host sync per decoded token is reading the tokens back to check each row's stops (plus one
when rows finish and leave the batch). Greedy decoding takes the same code path on every device, so a CPU
test pins what a GPU decodes (up to the GPU's own floating-point rounding).

Token ids: ``prompt_token_ids`` is the rendered prompt (no padding); ``completion_token_ids`` is exactly what
was sampled, including the stop token (EOS is an action the policy must learn), and including the tokens of
a stop string, which ``text`` leaves out. A PPO trainer scores the sampled tokens, not a re-tokenisation.
Rows that ask for ``logprobs`` get one log-probability per completion token, read off the logits the loop
already has (a log-softmax over the vocabulary per token: no extra forward pass).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r3rag.device import autocast as device_autocast
from r3rag.device import (
    autocast_single_rows,
    module_device,
    needs_autocast,
    resolve_bf16,
    resolve_device,
    weights_dtype,
)
from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.steps import render_prompt

PREFILL_TOKENS = 4096
"""Tokens of one prefill forward pass (rows x padded width): measured fastest per token around 4k (module
docstring)."""


@dataclass(frozen=True, slots=True)
class RowSampling:
    """The sampling settings of the rows of a decoding batch, on the device for the sampler's arithmetic and
    on the host for its branching (which rows sample, whether any keeps a nucleus), so that no decision
    costs a device-to-host sync: on a GPU the only sync of a decoded token is reading the tokens back."""

    temperatures: list[float]
    top_ps: list[float]
    generators: list[torch.Generator | None]
    device_temperatures: torch.Tensor
    device_top_ps: torch.Tensor

    @classmethod
    def build(
        cls,
        temperatures: Sequence[float],
        top_ps: Sequence[float],
        generators: Sequence[torch.Generator | None],
        device: torch.device,
    ) -> RowSampling:
        # greedy rows get temperature 1 on the device: their probabilities are computed and never drawn from
        safe = [t if t > 0 else 1.0 for t in temperatures]
        return cls(
            list(temperatures),
            list(top_ps),
            list(generators),
            torch.tensor(safe, dtype=torch.float32, device=device),
            torch.tensor(top_ps, dtype=torch.float32, device=device),
        )

    def select(self, keep: Sequence[int], index: torch.Tensor) -> RowSampling:
        """The rows at positions ``keep`` (``index``: the same positions, on the device)."""
        return RowSampling(
            [self.temperatures[b] for b in keep],
            [self.top_ps[b] for b in keep],
            [self.generators[b] for b in keep],
            self.device_temperatures[index],
            self.device_top_ps[index],
        )


def sample_next_tokens(logits: torch.Tensor, rows: RowSampling) -> torch.Tensor:
    """One token per row: greedy where the temperature is 0, else top-p sampling at the row's temperature.

    Rows with a generator draw from it (reproducible regardless of what else is in the batch; on a GPU, a
    CUDA generator); rows without one draw from torch's global generator of the logits' device.
    """
    tokens = logits.argmax(dim=-1)
    sampled = [b for b, t in enumerate(rows.temperatures) if t > 0]
    if not sampled:
        return tokens
    probs = torch.softmax(logits.float() / rows.device_temperatures[:, None], dim=-1)
    if any(rows.top_ps[b] < 1 for b in sampled):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs[mass_before >= rows.device_top_ps[:, None]] = 0.0  # the first token always survives
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    for b in sampled:
        tokens[b] = torch.multinomial(probs[b], 1, generator=rows.generators[b])[0]
    return tokens


@dataclass(slots=True)
class _Row:
    """Decoding state of one conversation."""

    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class HFGenerator:
    """Batched generation with a local transformers causal LM (left padding, KV cache, per-row sampling).

    ``batch_size`` bounds how many conversations are decoded together; more are sorted by prompt length
    and run in consecutive batches; it is also the memory knob (the KV cache holds every row of a batch).
    ``prefill_tokens`` bounds the tokens of one prefill forward pass (a batch's prompts go through in chunks
    of rows). ``bf16`` runs the forward passes of a model with fp32 weights under bf16 autocast; a model whose
    weights are all bf16 (:meth:`from_name` with ``bf16``) needs none. Tensors go to the model's device.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        bf16: bool = False,
        prefill_tokens: int = PREFILL_TOKENS,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if prefill_tokens < 1:
            raise ValueError("prefill_tokens must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefill_tokens = prefill_tokens
        self.device = module_device(model)
        self.autocast = needs_autocast(model, bf16)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.cache_keyword = cache_keyword(model)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        batch_size: int = 32,
        bf16: bool | None = None,
        device: str | torch.device = "auto",
    ) -> HFGenerator:
        """Load a model by name (the embedded default, a folder, a .gguf, or a hub id; see ``models.py``)
        onto ``device``, with bf16 weights when ``bf16`` (unset: where the device computes bf16 natively,
        :func:`r3rag.device.resolve_bf16`): it only generates, so it needs no fp32 copy."""
        from r3rag.llm.models import load_model

        placed = resolve_device(device)
        bf16 = resolve_bf16(bf16, placed)
        model, tokenizer = load_model(name, dtype=weights_dtype(bf16, trained=False), device=placed)
        return cls(model, tokenizer, batch_size=batch_size, bf16=bf16)

    def encode(self, conversation: Conversation) -> list[int]:
        """The prompt token ids of a conversation, rendered through the model's chat template."""
        text = render_prompt(self.tokenizer, conversation)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        params = per_row(sampling, len(conversations))
        rows = [
            _Row(
                prompt_ids=self.encode(conv),
                params=p,
                stop_ids=self.eos_ids | frozenset(p.stop_token_ids),
                generator=None if p.seed is None else torch.Generator(self.device).manual_seed(p.seed),
            )
            for conv, p in zip(conversations, params, strict=True)
        ]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids))
        completions: list[Completion | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, completion in zip(batch, self._generate_batch([rows[i] for i in batch]), strict=True):
                completions[i] = completion
        return [c for c in completions if c is not None]

    def _generate_batch(self, rows: list[_Row]) -> list[Completion]:
        """Decode one left-padded batch; finished rows leave the batch (and the KV cache) at once.

        Everything stays on the model's device but the sampled tokens, read back once per decoded token to
        check each row's stops: the one host sync a decode needs."""
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            attention[b, width - len(row.prompt_ids) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        results: list[Completion | None] = [None] * len(rows)
        active = list(range(len(rows)))  # batch position -> row index
        sampling = RowSampling.build(
            [r.params.temperature for r in rows],
            [r.params.top_p for r in rows],
            [r.generator for r in rows],
            self.device,
        )
        want_logprobs = any(r.params.logprobs for r in rows)
        single_rows = autocast_single_rows(self.device)
        autocast = self.autocast and (len(rows) > 1 or single_rows)
        with torch.inference_mode():
            logits, cache = self._prefill(input_ids, attention, positions, autocast)
            next_positions = positions[:, -1] + 1
            while True:
                sampled = sample_next_tokens(logits, sampling)
                if want_logprobs:
                    chosen = torch.log_softmax(logits, dim=-1).gather(1, sampled[:, None])[:, 0].tolist()
                tokens = sampled.tolist()
                keep = []
                for b, (i, token) in enumerate(zip(active, tokens, strict=True)):
                    rows[i].generated.append(token)
                    if rows[i].params.logprobs:
                        rows[i].logprobs.append(chosen[b])
                    done = self._finish(rows[i])
                    if done is None:
                        keep.append(b)
                    else:
                        results[i] = done
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    attention, next_positions = attention[index], next_positions[index]
                    sampling, sampled = sampling.select(keep, index), sampled[index]
                    active = [active[b] for b in keep]
                    autocast = autocast and (len(active) > 1 or single_rows)
                ones = torch.ones((len(active), 1), dtype=torch.long, device=self.device)
                attention = torch.cat([attention, ones], dim=1)
                logits = self._forward(sampled[:, None], attention, next_positions[:, None], cache, autocast)
                next_positions = next_positions + 1
        return [r for r in results if r is not None]

    def _prefill(
        self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, autocast: bool
    ) -> tuple[torch.Tensor, Any]:
        """The prompts' forward pass, ``prefill_tokens`` at most at a time: each chunk of rows fills its own
        KV cache, and the caches are joined row-wise (every chunk has the batch's width) for the decode."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        rows = max(1, self.prefill_tokens // input_ids.shape[1])
        cache = DynamicCache(config=self.model.config)
        plain = all(isinstance(layer, DynamicLayer) for layer in cache.layers)  # not a recurrent state
        if rows >= len(input_ids) or not plain:
            return self._forward(input_ids, attention, positions, cache, autocast), cache
        logits, layers = [], []
        for start in range(0, len(input_ids), rows):
            part, cache = slice(start, start + rows), DynamicCache(config=self.model.config)
            logits.append(self._forward(input_ids[part], attention[part], positions[part], cache, autocast))
            layers.append(
                [(layer.keys, layer.values) for layer in cache.layers if isinstance(layer, DynamicLayer)]
            )
        joined = [
            tuple(torch.cat(tensors) for tensors in zip(*chunks, strict=True))
            for chunks in zip(*layers, strict=True)
        ]
        return torch.cat(logits), DynamicCache(joined, config=self.model.config)

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        autocast: bool,
    ) -> torch.Tensor:
        with device_autocast(self.device, enabled=autocast):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_keyword: cache},
            )
        return out.logits[:, -1, :].float()

    def _finish(self, row: _Row) -> Completion | None:
        """A Completion if the row's last token ended it (stop token, stop string, length), else None."""
        ids, p = row.generated, row.params
        if ids[-1] in row.stop_ids:
            return self._completion(row, self._decode(ids[:-1]), "stop")
        if p.stop:
            window = max(len(s) for s in p.stop) + 2  # a stop string of L characters spans at most L tokens
            if any(s in self._decode(ids[-window:]) for s in p.stop):
                text = self._decode(ids)
                cut = min(pos for pos in (text.find(s) for s in p.stop) if pos >= 0)
                return self._completion(row, text[:cut], "stop")
        if len(ids) >= p.max_new_tokens:
            return self._completion(row, self._decode(ids), "length")
        return None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @staticmethod
    def _completion(row: _Row, text: str, finish_reason: str) -> Completion:
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_token_ids=list(row.prompt_ids),
            completion_token_ids=list(row.generated),
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.generated),
            token_logprobs=list(row.logprobs),
        )


def cache_keyword(model: Any) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` from transformers 5.x (which warns that
    ``past_key_values`` goes away in 5.40), ``past_key_values`` before (the floor, 4.56, has no ``cache``).
    A forward that takes only ``**kwargs`` (a wrapper) gets the name every version still accepts today."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-turn ids from the tokenizer and the model's generation config (which may list several)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return frozenset(ids)
