"""PPO with the hybrid reward: R3-RAG-CS -> R3-RAG on one machine, every step of the algorithm in sight.

One iteration (defaults: the official run, reference §1.5 and §3.3; CleanRL's names in comments):

1. **Rollout.** ``questions_per_iteration`` training questions (:mod:`r3rag.rl.draws`), each
   ``samples_per_question`` times at temperatures 0.1/0.4/0.7/1.0, through the agent loop with the real
   retriever and the *current* actor. The hybrid reward scores every step (:mod:`r3rag.rl.rollout`).
2. **Samples.** The credit scheme (``advantage``; by default :func:`r3rag.rl.samples.step_samples`, the
   paper's) makes one sample per step: its prompt, its action tokens, one scalar on the last action token (its
   reward; its return-to-go; or, critic-free, its trajectory's group advantage, with V = 0). Samples are
   sorted by length and cut into micro-batches of at most ``micro_batch_tokens`` padded tokens; the same
   micro-batches serve the passes below and the updates, so log-probs before the first update match
   exactly (ratio = 1).
3. **Experience** (no gradients), per micro-batch: log pi_old and V_old from one actor pass (and the critic
   trunk if separate), log pi_ref from the reference, then ``KL_t`` (k1 or k3), ``r_t = -beta KL_t`` (plus
   the step reward on the last token), GAE with gamma = lambda = 1 inside each sample, and advantages
   whitened over the whole buffer.
4. **Update**: ``ppo_epochs`` passes; each pass shuffles the micro-batches and accumulates gradients over
   them up to ``minibatch_size`` samples per optimizer step. Loss = clipped surrogate + value loss (clipped)
   - entropy bonus, each averaged over a sample's tokens then over samples (with ``ptx_data``, plus
   ``ptx_coef`` x the SFT loss of a few cold-start questions, :mod:`r3rag.rl.ptx`); gradients clipped to
   ``max_grad_norm`` for actor and critic separately; AdamW with the actor's and critic's own learning rates,
   linear warmup then cosine decay to ``min_lr_ratio``, as a function of progress through the run.
5. **Record**: metrics to jsonl + TensorBoard, a greedy dev evaluation every ``eval_every`` iterations, a
   checkpoint, the curve png.

Deviations from the official code are deliberate and listed in the README (section "PPO with the hybrid
reward"): the LR schedule follows the real number of updates (the official one is sized for ~5x fewer
steps), no padding of the buffer by duplicated samples, and optionally a critic sharing the actor's trunk.
"""

from __future__ import annotations

import copy
import json
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from r3rag import runs
from r3rag.agent import Agent
from r3rag.config import AGENT_FILE, CRITIC_FREE, JUDGE_CALL_FIELDS, PPOConfig
from r3rag.device import (
    describe,
    enable_gradient_checkpointing,
    module_device,
    precision,
    resolve_bf16,
    resolve_device,
    wants_gradient_checkpointing,
    weights_dtype,
)
from r3rag.jsonl import write_jsonl
from r3rag.llm.hf import HFGenerator
from r3rag.lora import merged
from r3rag.packing import Batch, Sample, collate, length_groups, pack_samples
from r3rag.retrieval.base import Retriever
from r3rag.retrieval.shuffled import SentenceShuffledRetriever
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.rl.dev_eval import evaluate
from r3rag.rl.draws import epoch_order
from r3rag.rl.losses import (
    adaptive_kl_coef,
    approx_kl,
    explained_variance,
    gae,
    policy_loss,
    sample_mean,
    token_rewards,
    value_loss,
    whiten,
)
from r3rag.rl.models import ActorCritic, ReferencePolicy
from r3rag.rl.ptx import PtxLoss
from r3rag.rl.rollout import Rollout, Scorer, collect, repeat, rollout_metrics
from r3rag.rl.samples import CREDIT_SCHEMES, CreditScheme, uniform_groups
from r3rag.rl.tracking import CURVE_FILE, MetricsLog, plot_curve
from r3rag.schema import QAExample, Trajectory

FINAL_DIR = "final"
SNAPSHOTS_DIR = "snapshots"
SNAPSHOT_FILE = "snapshot.json"
ROLLOUTS_DIR = "rollouts"
CHECKPOINTS = "checkpoints"
CHECKPOINT_LABEL = "iter"
RESUMABLE_CHANGES = frozenset(
    {
        "iterations",
        "max_minutes",
        "snapshot_minutes",
        "tensorboard",
        "device",
        "gradient_checkpointing",
        *(f"judges.{name}" for name in JUDGE_CALL_FIELDS),
    }
)
"""Config fields a resumed run may change (how the judges' endpoint is called, and where the model runs,
among them); any other difference means another run, in another folder."""
SCHEDULE_RESOLUTION = 1_000_000
"""Positions of the learning-rate schedule over the whole run: it is a function of progress through the run,
since the number of optimizer steps depends on how many steps the rollouts take."""


def snapshot_folder(out: Path, minutes: float) -> Path:
    """Where a run in ``out`` saves the actor of its first ``minutes`` (``snapshot_minutes``)."""
    return out / SNAPSHOTS_DIR / f"{minutes:g}min"


@dataclass(slots=True)
class Experience:
    """One micro-batch of the rollout buffer with everything the update reads, per action token."""

    batch: Batch
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def progress_schedule(optimizer: torch.optim.Optimizer, warmup_ratio: float, min_lr_ratio: float) -> LambdaLR:
    """OpenRLHF's ``cosine_with_min_lr`` (transformers' scheduler): linear warmup over ``warmup_ratio`` of the
    run, then cosine from each group's learning rate down to ``min_lr_ratio`` of it. Its positions are
    progress through the run (:func:`schedule_to`), not optimizer steps, whose number is not known ahead."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        round(warmup_ratio * SCHEDULE_RESOLUTION),
        SCHEDULE_RESOLUTION,
        min_lr_rate=min_lr_ratio,
    )


def schedule_to(scheduler: LambdaLR, progress: float) -> None:
    """Set the learning rates to the schedule's value at ``progress`` (0 to 1) through the run."""
    position = round(progress * SCHEDULE_RESOLUTION)
    groups = scheduler.optimizer.param_groups
    for group, factor, base in zip(groups, scheduler.lr_lambdas, scheduler.base_lrs, strict=True):
        group["lr"] = base * factor(position)


def minibatches(order: Sequence[int], sizes: Sequence[int], minibatch_size: int) -> list[list[int]]:
    """Consecutive micro-batches of ``order`` grouped until each group holds ``minibatch_size`` samples or
    more (the last group takes what is left)."""
    groups: list[list[int]] = [[]]
    count = 0
    for i in order:
        if count >= minibatch_size:
            groups.append([])
            count = 0
        groups[-1].append(i)
        count += sizes[i]
    return [g for g in groups if g]


class PPOTrainer:
    """The PPO loop over an actor, a retriever and a scorer; :meth:`from_config` builds it from files."""

    def __init__(
        self,
        config: PPOConfig,
        actor: nn.Module,
        tokenizer: Any,
        retriever: Retriever,
        scorer: Scorer,
        judge: CorrectnessJudge,
        train: Sequence[QAExample],
        dev: Sequence[QAExample] = (),
        credit: CreditScheme | None = None,
    ) -> None:
        if not train:
            raise ValueError("no training questions")
        self.config = config
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.scorer = scorer
        self.judge = judge
        self.train_examples = list(train)
        self.dev_examples = list(dev)[: config.eval_questions]
        self.credit = credit or CREDIT_SCHEMES[config.advantage]
        self.critic_free = config.advantage in CRITIC_FREE  # the samples carry the baseline: no value
        self.out = Path(config.out)
        torch.manual_seed(config.seed)  # LoRA's initial A matrices
        self.model = ActorCritic(  # critic-free: the (cheap, never trained) head, no second trunk
            actor,
            "shared" if config.advantage in CRITIC_FREE else config.critic,
            config.lora_rank,
            config.lora_alpha,
            tuple(config.lora_targets),
        ).eval()  # no dropout anywhere: log-probs of the update match those of the rollout (as OpenRLHF)
        self.device = module_device(actor)
        self.bf16 = resolve_bf16(config.bf16, self.device)
        if self.bf16 and config.old_logprobs == "rollout":
            warnings.warn(
                "old_logprobs: rollout under bf16: the decode (cached) and the update (a full pass) compute "
                "the same log-probs along different paths, so they differ by bf16's rounding, not fp32's "
                "(measured: 3e-5 per token), and the ratio starts away from 1; old_logprobs: recompute "
                "avoids it",
                stacklevel=2,
            )
        if wants_gradient_checkpointing(config.gradient_checkpointing, actor):
            enable_gradient_checkpointing(self.model.actor)
            if self.model.critic_trunk is not None:
                enable_gradient_checkpointing(self.model.critic_trunk)
        # no penalty, no reference: no frozen copy of the actor in memory and no pass over it
        self.reference = ReferencePolicy(self.model) if config.kl_penalty else None
        self.optimizer = torch.optim.AdamW(
            [
                {"params": self.model.actor_parameters(), "lr": config.actor_lr},
                {"params": self.model.critic_parameters(), "lr": config.critic_lr},
            ],
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
        )
        self.scheduler = progress_schedule(self.optimizer, config.warmup_ratio, config.min_lr_ratio)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.ptx = (
            None
            if config.ptx_data is None
            else PtxLoss.from_file(
                config.ptx_data,
                tokenizer,
                config.ptx_coef,
                config.ptx_questions,
                self.pad_id,
                config.ptx_types,
            )
        )
        self._orders: dict[int, list[int]] = {}
        self._eval_seconds = 0.0  # the last dev evaluation's duration, for the time budget
        self.kl_coef = config.kl_coef  # beta of the next iteration; moves with `kl_target`

    @classmethod
    def from_config(cls, config: PPOConfig) -> PPOTrainer:
        """Load the cold-start model, the retriever, the judges and the questions the config names."""
        from r3rag.config import RetrievalConfig
        from r3rag.data.datasets import load_dataset, of_types
        from r3rag.gold import resolve_gold_match
        from r3rag.llm.models import load_model
        from r3rag.retrieval import open_retriever
        from r3rag.rewards import TrajectoryScorer, build_relevance_judge, endpoint_generator
        from r3rag.rewards.scoring import check_bonus_annotations

        train = of_types(load_dataset(config.train), config.train_types, config.train)
        sources = {str(config.train): train}
        check_bonus_annotations(config.reward, sources)  # before the model loads: minutes at 7B
        device = resolve_device(config.device)
        actor, tokenizer = load_model(
            config.model,
            dtype=weights_dtype(resolve_bf16(config.bf16, device), trained=config.lora_rank == 0),
            device=device,
        )
        retriever = open_retriever(RetrievalConfig(source=config.index))
        judge_llm = endpoint_generator(config.judges)
        judge = CorrectnessJudge(config.judges, judge_llm)
        relevance = match = None
        reference = config.judges.relevance == "reference" and config.reward.mode != "outcome"
        if reference or config.reward.gold_recall:  # logged here; metrics count judgements by rule
            match = resolve_gold_match(config.judges.reference_match, sources, retriever).rule
        if config.reward.mode != "outcome":
            relevance = build_relevance_judge(config.judges, judge_llm, match=match)
        return cls(
            config,
            actor,
            tokenizer,
            retriever,
            TrajectoryScorer(config.reward, judge, relevance, gold_match=match),
            judge,
            train,
            load_dataset(config.dev) if config.dev is not None else (),
        )

    # ------------------------------------------------------------------------------------------ the loop

    def train(self, progress: bool = True) -> list[dict[str, Any]]:
        """Run (or resume) the whole training; returns the metrics records of the run."""
        with runs.locked(self.out):
            return self._train(progress)

    def _train(self, progress: bool) -> list[dict[str, Any]]:
        c = self.config
        started = time.perf_counter()
        last_done = self._start_run()
        log = MetricsLog(self.out, resume_after=last_done if last_done > 0 else -1, tensorboard=c.tensorboard)
        bar = tqdm(
            total=c.iterations, initial=last_done, disable=not progress, unit="iter", dynamic_ncols=True
        )
        if progress:
            parameters = sum(p.numel() for p in self.model.parameters())
            where = f"on {describe(self.device)}, {precision(self.bf16)}, {parameters / 1e6:,.0f}M parameters"
            bar.write(where)
        try:
            if last_done == 0 and self.dev_examples:
                bar.set_description("dev eval (R3-RAG-CS)")
                log.log({"iteration": 0, **self._evaluate(0), **runs.peak_memory()})
            iteration = last_done
            while iteration < c.iterations:
                iteration += 1
                iter_started = time.perf_counter()
                metrics = self.iteration(iteration, bar)
                out_of_time = self._out_of_time(started, iter_started)
                last = iteration == c.iterations or out_of_time
                if self.dev_examples and ((c.eval_every and iteration % c.eval_every == 0) or last):
                    bar.set_description(f"iter {iteration}: dev eval")
                    metrics.update(self._evaluate(iteration))
                metrics["time/iteration"] = time.perf_counter() - iter_started
                metrics.update(runs.peak_memory())
                log.log(metrics)
                plot_curve(log.records, self.out / CURVE_FILE)
                if iteration % c.save_every == 0 or last:
                    bar.set_description(f"iter {iteration}: checkpoint")
                    self._save(iteration)
                for minutes in c.snapshot_minutes:  # a budget the whole run fits in: its last iteration
                    if iteration == c.iterations or self._out_of_time(started, iter_started, minutes):
                        self._save_snapshot(minutes, iteration, time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(self._postfix(metrics))
                if out_of_time:
                    break
            bar.set_description("saving the final actor")
            self._save_final()
            return log.records
        finally:
            bar.close()
            log.close()

    def _save_final(self) -> None:
        """Write ``final/``: the actor, its tokenizer and ``agent.yaml`` (the rollout's agent settings,
        greedy), which R3-RAG must be run with, as R3-RAG-CS is with its own. Written beside and renamed into
        place, so a ``final/`` that exists is complete (a crash while saving leaves the checkpoints)."""
        self._save_actor(self.out / FINAL_DIR)

    def _save_snapshot(self, minutes: float, iteration: int, elapsed: float) -> None:
        """The actor a run of ``max_minutes = minutes`` would have ended with, once, in ``final/``'s layout,
        with ``snapshot.json``: the iteration it is from and the minutes trained to reach it."""
        folder = snapshot_folder(self.out, minutes)
        if not folder.exists():
            self._save_actor(folder, {"iteration": iteration, "minutes": elapsed / 60})

    def _save_actor(self, folder: Path, snapshot: dict[str, float] | None = None) -> None:
        with runs.atomic_folder(folder) as tmp:
            if snapshot is not None:
                (tmp / SNAPSHOT_FILE).write_text(json.dumps(snapshot), encoding="utf-8")
            self.model.save_actor(tmp, self.tokenizer)
            agent = self.config.rollout.model_copy(update={"temperature": 0.0, "record_token_ids": False})
            agent.to_yaml(tmp / AGENT_FILE)

    def _out_of_time(self, started: float, iter_started: float, minutes: float | None = None) -> bool:
        """Would one more iteration, and the final dev evaluation after it, end past ``minutes`` (by default
        ``max_minutes``)?

        Both are estimated by the last ones (an iteration takes about as long as the one before it), so the
        run stops, evaluates and saves within its budget instead of overrunning it by an iteration.
        """
        budget = self.config.max_minutes if minutes is None else minutes
        if budget is None:
            return False
        now = time.perf_counter()
        next_end = now - started + (now - iter_started) + (self._eval_seconds if self.dev_examples else 0.0)
        return next_end / 60 > budget

    def rollout_retriever(self, iteration: int) -> Retriever:
        """What an iteration's rollout searches: the index, or with ``shuffle_sentences`` the index with each
        passage's sentences in an order drawn for that iteration (dev evaluations search the index)."""
        if not self.config.shuffle_sentences:
            return self.retriever
        return SentenceShuffledRetriever(
            self.retriever, runs.derive_seed(self.config.seed, "sentences", iteration)
        )

    def iteration(self, iteration: int, bar: tqdm[Any] | None = None) -> dict[str, Any]:
        """Rollout, samples, experience, update: one PPO iteration; returns its metrics."""
        c = self.config

        def phase(name: str) -> None:
            if bar is not None:
                bar.set_description(f"iter {iteration}: {name}")

        phase("rollout")
        examples, temperatures = repeat(self._questions(iteration), c.samples_per_question, c.temperatures)
        agent_config = c.rollout.model_copy(
            update={
                "record_token_ids": True,
                "record_logprobs": c.old_logprobs == "rollout",
                "seed": runs.derive_seed(c.seed, "rollout", iteration),
            }
        )
        rollout = collect(
            Agent(self._generator(), self.rollout_retriever(iteration), agent_config),
            self.scorer,
            examples,
            temperatures,
        )
        self._write_trajectories(
            self.out / ROLLOUTS_DIR / f"iter-{iteration:05d}.jsonl", rollout.trajectories, rollout
        )
        metrics: dict[str, Any] = {"iteration": iteration, **rollout_metrics(rollout)}
        metrics["time/rollout"] = rollout.generate_seconds
        metrics["time/scoring"] = rollout.score_seconds

        trajectories, rewards = rollout.trajectories, rollout.rewards
        if c.skip_uniform_groups:  # their advantage is zero: an update on them would only cost time
            uniform = uniform_groups(trajectories, rewards)
            kept = [i for i, t in enumerate(trajectories) if t.example_id not in uniform]
            trajectories, rewards = [trajectories[i] for i in kept], [rewards[i] for i in kept]
            metrics["samples/uniform_questions"] = float(len(uniform))
            if not kept:  # nothing to learn from this rollout; the next one draws other questions
                metrics["samples"] = 0.0
                return metrics
        samples = self.credit(trajectories, rewards)
        if not samples:
            raise RuntimeError(f"iteration {iteration}: the rollout gave no samples to learn from")
        phase("log-probs")
        buffer, experience_metrics = self._experience(samples)
        metrics.update(experience_metrics)
        if c.kl_target is not None:  # the next iteration's beta, from this one's KL
            self.kl_coef = adaptive_kl_coef(
                self.kl_coef, metrics["ppo/kl"], c.kl_target, len(samples), c.kl_horizon, c.kl_coef
            )
        phase("update")
        metrics.update(self._update(buffer, iteration))
        return metrics

    # ------------------------------------------------------------------------------------------- phases

    def _experience(self, samples: list[Sample]) -> tuple[list[Experience], dict[str, float]]:
        """The rollout buffer, per micro-batch: old log-probs and values, reference log-probs, KL, GAE."""
        c = self.config
        if c.old_logprobs == "rollout" and not all(s.behaviour_logprobs for s in samples):
            raise ValueError(
                "old_logprobs: rollout, but the rollout recorded no log-probs for some steps (a backend "
                "that does not report them): use old_logprobs: recompute"
            )
        buffer: list[Experience] = []
        policy_seconds = reference_seconds = 0.0
        pass_tokens = 0  # tokens through the passes that ran (old log-probs or values, reference)
        packs = pack_samples(samples, c.share_prefixes)
        for group in length_groups([pack.length(samples) for pack in packs], c.micro_batch_tokens):
            batch = collate(samples, [packs[i] for i in group], self.pad_id).to(self.device)
            mask = batch.action_mask
            old_values = kl = torch.zeros_like(mask)
            old_logprobs = batch.behaviour_logprobs  # what `old_logprobs: rollout` keeps
            if c.old_logprobs == "recompute" or not self.critic_free:  # log-probs, or values, or both
                started = time.perf_counter()
                with torch.no_grad():
                    old = self.model(batch, self.bf16, values=not self.critic_free)
                if old.values is not None:
                    old_values = old.values * mask
                if c.old_logprobs == "recompute":
                    old_logprobs = old.logprobs
                pass_tokens += batch.tokens
                policy_seconds += time.perf_counter() - started
            if self.reference is not None:
                started = time.perf_counter()
                ref_logprobs = self.reference.logprobs(batch, self.bf16)
                # KL_t = log pi_old(a_t) - log pi_ref(a_t)  (k1), or k3; per token, on the sampled tokens
                kl = approx_kl(old_logprobs, ref_logprobs, mask, c.kl_estimator)
                pass_tokens += batch.tokens
                reference_seconds += time.perf_counter() - started
            # r_t = -beta * KL_t, plus the step's reward on its last action token
            rewards = token_rewards(batch.rewards, kl, self.kl_coef, mask)
            # GAE in each sample: delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lambda A_{t+1}
            # (critic-free: V = 0, so A_t is the sample's advantage less the KL penalty from t on)
            advantages, returns = gae(rewards, old_values, mask, c.gamma, c.lam)
            buffer.append(Experience(batch, old_logprobs, old_values, kl, advantages, returns))

        masks = [e.batch.action_mask for e in buffer]
        flat = {
            name: torch.cat([getattr(e, name)[m.bool()] for e, m in zip(buffer, masks, strict=True)])
            for name in ("kl", "advantages", "returns", "old_values")
        }
        if c.normalize_advantages:  # A <- (A - mean) / std over every action token of the buffer
            for e, whitened in zip(buffer, whiten([e.advantages for e in buffer], masks), strict=True):
                e.advantages = whitened
        tokens = sum(e.batch.tokens for e in buffer)
        sample_kl = torch.cat([(e.kl).sum(-1) for e in buffer])
        measured_kl = {
            "ppo/kl": float(flat["kl"].mean()),
            "ppo/kl_per_sample": float(sample_kl.mean()),
            "ppo/kl_coef": self.kl_coef,
        }
        critic = {
            "ppo/return_mean": float(flat["returns"].mean()),
            "ppo/value_mean": float(flat["old_values"].mean()),
            "ppo/explained_variance": explained_variance(flat["old_values"], flat["returns"]),
        }
        return buffer, {
            "samples": float(len(samples)),
            "samples/action_tokens": float(flat["kl"].numel()),
            "samples/tokens": float(tokens),
            **(measured_kl if self.reference is not None else {}),
            "ppo/advantage_raw_mean": float(flat["advantages"].mean()),
            "ppo/advantage_raw_std": float(flat["advantages"].std(unbiased=False)),
            **({} if self.critic_free else critic),
            "time/policy_pass": policy_seconds,
            "time/reference_pass": reference_seconds,
            **(
                {"passes/tokens_per_s": pass_tokens / max(policy_seconds + reference_seconds, 1e-9)}
                if pass_tokens
                else {}
            ),
        }

    def _update(self, buffer: list[Experience], iteration: int) -> dict[str, float]:
        """``ppo_epochs`` passes over the buffer in shuffled minibatches; returns the update's metrics."""
        c = self.config
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(runs.derive_seed(c.seed, "minibatches", iteration))
        sizes = [e.batch.size for e in buffer]
        value_weight = c.vf_coef if c.critic == "shared" else 1.0
        actor_params, critic_params = self.model.actor_parameters(), self.model.critic_parameters()
        ptx_draws = random.Random(runs.derive_seed(c.seed, "ptx", iteration))
        sums: dict[str, float] = defaultdict(float)
        tokens = steps = 0
        ptx_seconds = 0.0
        for epoch in range(c.ppo_epochs):
            order = torch.randperm(len(buffer), generator=generator).tolist()
            groups = minibatches(order, sizes, c.minibatch_size)
            for k, group in enumerate(groups):
                n = sum(sizes[i] for i in group)
                self.optimizer.zero_grad(set_to_none=True)
                if self.ptx is not None:  # first, on zeroed gradients: its own norm is measured
                    ptx_started = time.perf_counter()
                    ptx_loss, ptx_norm = self.ptx.backward(
                        self.model.actor, ptx_draws, self.bf16, c.share_prefixes
                    )
                    sums["ptx_loss"] += ptx_loss
                    sums["ptx_grad_norm"] += ptx_norm
                    ptx_seconds += time.perf_counter() - ptx_started
                for i in group:
                    e = buffer[i]
                    mask = e.batch.action_mask
                    new = self.model(
                        e.batch, self.bf16, values=not self.critic_free, entropy_grad=c.ent_coef > 0
                    )
                    # ratio_t = pi(a_t) / pi_old(a_t);  L_clip = -min(ratio A, clip(ratio, 1-eps, 1+eps) A)
                    pg_tokens, ratio = policy_loss(
                        new.logprobs, e.old_logprobs, e.advantages, mask, c.clip_ratio
                    )
                    pg = sample_mean(pg_tokens, mask, n)
                    entropy = sample_mean(new.entropy, mask, n)
                    loss = pg - c.ent_coef * entropy
                    if new.values is not None:
                        # L_V = 0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)
                        v_tokens = value_loss(new.values, e.old_values, e.returns, mask, c.value_clip)
                        vl = sample_mean(v_tokens, mask, n)
                        loss = loss + value_weight * vl
                        sums["value_loss"] += float(vl.detach())
                    loss.backward()
                    with torch.no_grad():
                        log_ratio = ratio.log()
                        sums["policy_loss"] += float(pg)
                        sums["entropy"] += float(entropy)
                        # the share of tokens whose ratio left [1 - eps, 1 + eps], and KL(pi_old || pi)
                        sums["clip_fraction"] += float(
                            sample_mean(((ratio - 1).abs() > c.clip_ratio).float(), mask, n)
                        )
                        sums["approx_kl_old"] += float(sample_mean((ratio - 1) - log_ratio, mask, n))
                    tokens += e.batch.tokens
                # clip each network's gradient norm on its own, as the official actor and critic engines do
                sums["grad_norm_actor"] += float(nn.utils.clip_grad_norm_(actor_params, c.max_grad_norm))
                if not self.critic_free:
                    sums["grad_norm_critic"] += float(
                        nn.utils.clip_grad_norm_(critic_params, c.max_grad_norm)
                    )
                progress = (iteration - 1 + (epoch + (k + 1) / len(groups)) / c.ppo_epochs) / c.iterations
                schedule_to(self.scheduler, progress)
                self.optimizer.step()
                steps += 1
        # no gradient outlives the update: the rollout would carry them, and its bf16 copy of the actor too
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        out = {f"ppo/{k}": v / steps for k, v in sums.items()}
        out.update(
            {
                "ppo/optimizer_steps": float(steps),
                "ppo/lr_actor": self.optimizer.param_groups[0]["lr"],
                "ppo/lr_critic": self.optimizer.param_groups[1]["lr"],
                "time/update": seconds,
                "update/tokens_per_s": tokens / max(seconds, 1e-9),
            }
        )
        if self.ptx is not None:
            out["time/ptx"] = ptx_seconds  # within time/update
        return out

    def _evaluate(self, iteration: int) -> dict[str, float]:
        started = time.perf_counter()
        agent_config = self.config.rollout.model_copy(
            update={"temperature": 0.0, "seed": self.config.seed, "record_token_ids": False}
        )
        metrics, trajectories = evaluate(
            Agent(self._generator(), self.retriever, agent_config), self.judge, self.dev_examples
        )
        self._write_trajectories(self.out / "dev" / f"iter-{iteration:05d}.jsonl", trajectories)
        metrics["dev/questions"] = float(len(self.dev_examples))
        metrics["time/dev_eval"] = self._eval_seconds = time.perf_counter() - started
        return metrics

    # -------------------------------------------------------------------------------------------- helpers

    def _generator(self) -> HFGenerator:
        """Generation with the actor's current weights. Under ``bf16``, on a bf16 copy of them made now (the
        paper's rollouts ran on vLLM in bf16): over the fp32 weights being trained, autocast would cast every
        weight again at every generated token (measured in :mod:`r3rag.llm.hf`). A LoRA actor in fp32
        generates on a merged copy: peft's wrapper runs two more matmuls per adapted layer at every token (11%
        slower decoding of the embedded model on one core; the merge takes a second). With ``old_logprobs:
        recompute`` the trained model computes the update's old log-probs afresh, so a copy's rounding only
        changes what is sampled; ``rollout`` takes them from the copy (fp32: within 1e-4, bf16: warned).
        """
        actor = self.model.actor
        if self.bf16:
            actor = (merged(actor, keep=True) if self.model.lora else copy.deepcopy(actor)).to(torch.bfloat16)
        elif self.model.lora:
            actor = merged(actor, keep=True)
        return HFGenerator(actor, self.tokenizer, batch_size=self.config.rollout_batch_size, bf16=self.bf16)

    def _questions(self, iteration: int) -> list[QAExample]:
        """This iteration's questions: the training set in a seeded order, epoch after epoch (see draws)."""
        q, n = self.config.questions_per_iteration, len(self.train_examples)
        chosen = []
        for position in range((iteration - 1) * q, iteration * q):
            epoch, k = divmod(position, n)
            if epoch not in self._orders:
                seed = runs.derive_seed(self.config.seed, "epoch", epoch)
                self._orders[epoch] = epoch_order(self.train_examples, seed, self.config.balance_sides)
            chosen.append(self.train_examples[self._orders[epoch][k]])
        return chosen

    def _start_run(self) -> int:
        """Bind the folder to the config; restore the latest checkpoint; return its iteration (or 0)."""
        checkpoint = runs.latest_checkpoint(self.out / CHECKPOINTS, CHECKPOINT_LABEL)
        runs.bind(self.out, self.config, holds_results=checkpoint is not None, may_change=RESUMABLE_CHANGES)
        if checkpoint is None:
            return 0
        state = runs.load_checkpoint(checkpoint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_coef = float(state.get("kl_coef", self.config.kl_coef))  # older checkpoints: fixed beta
        return int(state["step"])

    def _save(self, iteration: int) -> None:
        runs.save_checkpoint(
            self.out / CHECKPOINTS,
            CHECKPOINT_LABEL,
            iteration,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "kl_coef": self.kl_coef,
            },
            keep=self.config.keep_checkpoints,
            digits=5,
        )

    @staticmethod
    def _write_trajectories(
        path: Path, trajectories: Sequence[Trajectory], rollout: Rollout | None = None
    ) -> None:
        """The trajectories (and their rewards) as jsonl, without the token ids (they are in the samples)."""
        records = []
        for i, trajectory in enumerate(trajectories):
            record = trajectory.to_dict()
            record["metadata"].pop("step_token_ids", None)
            if rollout is not None:
                record["reward"] = rollout.rewards[i].to_dict()
            records.append(record)
        write_jsonl(path, records)

    @staticmethod
    def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
        keys = {
            "reward/trajectory_mean": "reward",
            "rollout/accuracy": "acc",
            "dev/accuracy": "dev",
            "ppo/kl": "kl",
        }
        return {short: f"{metrics[key]:.3g}" for key, short in keys.items() if key in metrics}
