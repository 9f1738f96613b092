"""Mutation testing over the code where a silent bug costs a training run: do the tests notice a planted bug?

Each mutation in :data:`MUTATIONS` is a small realistic bug (a flipped sign, an off-by-one, a wrong field, a
wrong default) written as an exact snippet of the source and its replacement. For each one the script copies
``src/`` to a temporary folder once, writes the mutated file into the copy (the real files are never
touched), and runs the test files that cover that module (:data:`TESTS`) with the copy first on
``PYTHONPATH``; the mutation is *killed* when a test fails. A whole-suite run per mutant (mutmut,
cosmic-ray) would take hours on a small machine; the catalogue takes minutes.

A snippet that does not occur exactly once in its file is an error, reported before anything runs, so the
catalogue cannot silently rot when the code changes: fix the snippet, or delete a mutation whose code is gone.
A mutation that survives gets a test that kills it, or, if it is truly equivalent (no input can tell it
apart), leaves the catalogue with a comment saying why.

    python tools/mutate.py                 # every mutation; exit 1 below the kill-rate threshold
    python tools/mutate.py --only ppo      # the mutations whose file or description contains "ppo"
    python tools/mutate.py --list          # the catalogue, without running anything
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path("src") / "r3rag"
THRESHOLD = 0.95
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutation:
    """A planted bug: in ``file`` (under src/r3rag), the snippet ``original`` becomes ``replacement``."""

    file: str
    original: str
    replacement: str
    description: str


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    killed: bool
    detail: str  # the first failing test, or why the run ended
    seconds: float


# The test files that cover each module, fastest and most specific first: pytest stops at the first failure.
TESTS: dict[str, tuple[str, ...]] = {
    "rl/ppo.py": ("test_rl_trainer.py", "test_rl_losses.py", "test_rl_ppo.py", "test_rl_cheaper_updates.py"),
    "rl/losses.py": ("test_rl_losses.py", "test_rl_trainer.py"),
    "rl/samples.py": ("test_rl_samples.py", "test_rl_cheaper_updates.py"),
    "llm/hf.py": ("test_llm_hf.py", "test_rl_cheaper_updates.py"),
    "rl/draws.py": ("test_rl_draws.py",),
    "rl/ptx.py": ("test_rl_ptx.py",),
    "evaluation/paired.py": ("test_paired.py",),
    "packing.py": ("test_rl_samples.py", "test_rl_models.py", "test_rl_trainer.py"),
    "rewards/metrics.py": ("test_metrics.py", "test_eval_scoring.py", "test_shaping.py", "test_judges.py"),
    "rewards/shaping.py": ("test_shaping.py",),
    "rewards/judges.py": ("test_judges.py", "test_shaping.py"),
    "evaluation/scoring.py": ("test_eval_scoring.py",),
    "steps.py": ("test_steps.py", "test_agent.py"),
    "retrieval/bm25.py": ("test_retrieval_bm25.py",),
    "config.py": ("test_rl_trainer.py", "test_shaping.py"),
}

MUTATIONS: list[Mutation] = [
    # ---------------------------------------------------------------- the 10 survivors of issue 23
    Mutation(
        "rl/ppo.py",
        "rewards = token_rewards(batch.rewards, kl, self.kl_coef, mask)",
        "rewards = token_rewards(batch.rewards, -kl, self.kl_coef, mask)",
        "trainer: the KL penalty's sign flipped",
    ),
    Mutation(
        "rl/ppo.py",
        "buffer.append(Experience(batch, old_logprobs,",
        "buffer.append(Experience(batch, ref_logprobs,",
        "trainer: the reference's log-probs stored as the old policy's (the ratio's denominator)",
    ),
    Mutation(
        "rl/ppo.py",
        "pg = sample_mean(pg_tokens, mask, n)",
        "pg = sample_mean(pg_tokens, mask)",
        "trainer: a micro-batch's policy loss divided by its own size, not the minibatch's",
    ),
    Mutation(
        "config.py",
        'clip_ratio: float = Field(0.2, gt=0, description="PPO ratio clip epsilon',
        'clip_ratio: float = Field(0.3, gt=0, description="PPO ratio clip epsilon',
        "PPOConfig: clip_ratio default 0.2 -> 0.3",
    ),
    Mutation(
        "rewards/metrics.py",
        "common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())",
        "common = len(set(pred_tokens) & set(gold_tokens))",
        "token F1: set intersection instead of clipped counts",
    ),
    Mutation(
        "rewards/shaping.py",
        "outcome_every_step = outcome / valid_steps"
        " if trajectory.status == TrajectoryStatus.ANSWERED else 0.0",
        "outcome_every_step = outcome / valid_steps",
        "outcome-only mode: unanswered trajectories paid wrong_reward",
    ),
    Mutation(
        "rewards/shaping.py",
        "valid_steps = sum(step.valid for step in trajectory.steps) if per_trajectory else 1",
        "valid_steps = 1",
        "scale trajectory: outcome mode pays the whole outcome on every step",
    ),
    Mutation(
        "rewards/shaping.py",
        "spread = max(len(relevances or ()), least) if per_trajectory else 1",
        "spread = len(trajectory.steps) if per_trajectory else 1",
        "scale trajectory: Rel spread over every step, the answer's included",
    ),
    Mutation(
        "rewards/shaping.py",
        'least = hops if config.scale == "hops" else 1',
        "least = 1",
        "scale hops: Rel spread over the searches alone, as scale trajectory",
    ),
    Mutation(
        "rl/ptx.py",
        "(total * (self.coef / targets)).backward()",
        "(total * self.coef).backward()",
        "PPO-ptx: the SFT loss summed over its target tokens, not averaged",
    ),
    Mutation(
        "rl/samples.py",
        "if len(values) == 1}",
        "if len(values) <= 2}",
        "skip_uniform_groups: a question with two different returns taken for a tie",
    ),
    Mutation(
        "llm/hf.py",
        "chosen = torch.log_softmax(logits, dim=-1)",
        "chosen = torch.log_softmax(logits / 0.5, dim=-1)",
        "old_logprobs rollout: the decode's log-probs at another temperature than 1",
    ),
    Mutation(
        "rl/ppo.py",
        "old_logprobs = batch.behaviour_logprobs  # what",
        "old_logprobs = batch.behaviour_logprobs.roll(1, -1)  # what",
        "old_logprobs rollout: the recorded log-probs shifted by one action token",
    ),
    Mutation(
        "rl/draws.py",
        "partners = waiting.get(OPPOSITE_SIDES[side])",
        "partners = waiting.get(side)",
        "balance_sides: a two-way question paired with one of its own side",
    ),
    Mutation(
        "rl/draws.py",
        "sided.setdefault(examples[index].type, [])",
        'sided.setdefault("", [])',
        "balance_sides: a two-way question paired across question types",
    ),
    Mutation(
        "steps.py",
        '_HEADER = re.compile(r"(?im)^[ \\t#*>]*step[ \\t]*(\\d{1,9})[ \\t]*:")',
        '_HEADER = re.compile(r"(?i)\\bstep[ \\t]*(\\d{1,9})[ \\t]*:")',
        "parser: the Step k: header found anywhere in a line",
    ),
    Mutation(
        "evaluation/scoring.py",
        "example.supporting_titles, rule)\n",
        "example.supporting_titles, rule) or 0.0\n",
        "eval: questions without gold passages counted as recall 0",
    ),
    Mutation(
        "packing.py",
        "if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_tokens:",
        "if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) < max_tokens:",
        "length_groups: the micro-batch bound exclusive (off by one)",
    ),
    Mutation(
        "retrieval/bm25.py",
        "return cls(bm25, Bm25Tokenizer(config), MappedPassageStore.load(directory), config)",
        "return cls(bm25, Bm25Tokenizer(BM25Config()), MappedPassageStore.load(directory), config)",
        "BM25 load: the tokenizer rebuilt with default settings, not the saved ones",
    ),
    # ---------------------------------------------------------------------------------- the trainer
    Mutation(
        "rl/ppo.py",
        "kl = approx_kl(old_logprobs, ref_logprobs, mask, c.kl_estimator)",
        "kl = approx_kl(ref_logprobs, old_logprobs, mask, c.kl_estimator)",
        "trainer: KL(ref || old) instead of KL(old || ref)",
    ),
    Mutation(
        "rl/losses.py",
        "statistics.stdev(v) if len(v) > 1 else 0.0",
        "statistics.pstdev(v) if len(v) > 1 else 0.0",
        "GRPO: the population standard deviation instead of the sample one",
    ),
    Mutation(
        "rl/samples.py",
        "samples_with_rewards(trajectories, [rewards_to_go(r.rewards) for r in rewards])",
        "samples_with_rewards(trajectories, [r.rewards for r in rewards])",
        "returns-to-go: each step keeps only its own reward",
    ),
    Mutation(
        "rl/samples.py",
        "[rewards_to_go(r.rewards) for r in rewards], [t.example_id",
        "[r.rewards for r in rewards], [t.example_id",
        "rloo-to-go: each step compared on its own reward, not its reward-to-go",
    ),
    Mutation(
        "rl/losses.py",
        "g_s - (totals[key][s] - g_s) / others",
        "g_s - totals[key][s] / (others + 1)",
        "RLOO and rloo-to-go: the baseline includes the trajectory itself (the group mean, biased)",
    ),
    Mutation(
        "rl/losses.py",
        "sum(g[s] for g in trajectories if s < len(g))",
        "sum(g[min(s, len(g) - 1)] for g in trajectories)",
        "rloo-to-go: an ended sample counted with its last reward-to-go, not 0",
    ),
    # ------------------------------------------------------- the adaptive KL controller and snapshots
    Mutation(
        "rl/losses.py",
        "error = min(max(kl / target - 1.0, -0.2), 0.2)",
        "error = min(max(kl / target - 1.0, -0.2), 0.4)",
        "KL controller: the proportional error clipped at 0.4 instead of 0.2",
    ),
    Mutation(
        "rl/losses.py",
        "return max(beta * (1.0 + error * samples / horizon), floor)",
        "return beta * (1.0 + error * samples / horizon)",
        "KL controller: no floor (beta wears down at the reference, turns negative on a long iteration)",
    ),
    Mutation(
        "rl/ppo.py",
        'self.kl_coef, metrics["ppo/kl"], c.kl_target, len(samples), c.kl_horizon, c.kl_coef',
        'self.kl_coef, metrics["ppo/kl"], c.kl_target, len(buffer), c.kl_horizon, c.kl_coef',
        "trainer: the controller counts micro-batches, not samples",
    ),
    Mutation(
        "rl/ppo.py",
        'self.kl_coef = float(state.get("kl_coef", self.config.kl_coef))',
        "self.kl_coef = self.config.kl_coef",
        "trainer: a resumed run restarts the adaptive beta from kl_coef",
    ),
    Mutation(
        "rl/ppo.py",
        "if iteration == c.iterations or self._out_of_time(started, iter_started, minutes):",
        "if self._out_of_time(started, iter_started, minutes):",
        "trainer: no snapshot for a budget the run finishes within",
    ),
    Mutation(
        "evaluation/paired.py",
        "tail = sum(comb(n, i) for i in range(min(gained, lost) + 1))",
        "tail = sum(comb(n, i) for i in range(min(gained, lost)))",
        "McNemar: the tail misses its own count",
    ),
    Mutation(
        "rl/ppo.py",
        "if c.normalize_advantages:",
        "if not c.normalize_advantages:",
        "trainer: advantage whitening switched the wrong way",
    ),
    Mutation(
        "rl/ppo.py",
        "gae(rewards, old_values, mask, c.gamma, c.lam)",
        "gae(rewards, old_values, mask, c.lam, c.gamma)",
        "trainer: gamma and lambda swapped",
    ),
    Mutation(
        "rl/ppo.py",
        "old_values = old.values * mask",
        "old_values = old.values",
        "trainer: old values stored with garbage at padding",
    ),
    Mutation(
        "rl/ppo.py",
        "vl = sample_mean(v_tokens, mask, n)",
        "vl = sample_mean(v_tokens, mask)",
        "trainer: a micro-batch's value loss divided by its own size, not the minibatch's",
    ),
    Mutation(
        "rl/ppo.py",
        "new.logprobs, e.old_logprobs, e.advantages, mask, c.clip_ratio",
        "new.logprobs, e.old_logprobs, e.advantages, mask, c.value_clip",
        "trainer: the policy loss clipped with value_clip",
    ),
    Mutation(
        "rl/ppo.py",
        "v_tokens = value_loss(new.values, e.old_values, e.returns, mask, c.value_clip)",
        "v_tokens = value_loss(new.values, e.old_values, e.returns, mask, c.clip_ratio)",
        "trainer: the value loss clipped with clip_ratio",
    ),
    Mutation(
        "rl/ppo.py",
        "sample_mean(((ratio - 1).abs() > c.clip_ratio).float(), mask, n)",
        "sample_mean(((ratio - 1).abs() > c.value_clip).float(), mask, n)",
        "trainer: clip fraction measured against value_clip",
    ),
    Mutation(
        "rl/ppo.py",
        'sums["approx_kl_old"] += float(sample_mean((ratio - 1) - log_ratio, mask, n))',
        'sums["approx_kl_old"] += float(sample_mean(log_ratio - (ratio - 1), mask, n))',
        "trainer: KL(old || new) logged with the wrong sign",
    ),
    Mutation(
        "rl/ppo.py",
        "        if count >= minibatch_size:",
        "        if count > minibatch_size:",
        "minibatches: a full minibatch takes one more micro-batch (off by one)",
    ),
    # ------------------------------------------------------------------------------------ the losses
    Mutation(
        "rl/losses.py",
        "return torch.where(mask.bool(), logprobs - other, torch.zeros((), dtype=logprobs.dtype))",
        "return logprobs - other",
        "log-ratio not masked before exp (issue 22 item 12: NaN from padding)",
    ),
    Mutation(
        "rl/losses.py",
        "return (log_r.exp() - 1 - log_r) * mask",
        "return (log_r.exp() - 1 + log_r) * mask",
        "k3: wrong sign of log r",
    ),
    Mutation(
        "rl/losses.py",
        "return (step_rewards - kl_coef * kl) * mask",
        "return (step_rewards + kl_coef * kl) * mask",
        "token rewards: KL penalty added instead of subtracted",
    ),
    Mutation(
        "rl/losses.py",
        "running = delta + gamma * lam * running",
        "running = delta + gamma * running",
        "GAE: lambda dropped from the recursion",
    ),
    Mutation(
        "rl/losses.py",
        "delta = rewards[:, t] + gamma * next_value - values[:, t]",
        "delta = rewards[:, t] + next_value - values[:, t]",
        "GAE: the next value not discounted",
    ),
    Mutation(
        "rl/losses.py",
        "next_value = values[:, t + 1] if t + 1 < rewards.shape[1]",
        "next_value = values[:, t] if t + 1 < rewards.shape[1]",
        "GAE: bootstraps from V_t instead of V_{t+1} (off by one)",
    ),
    Mutation(
        "rl/losses.py",
        "mean, var = flat.mean(), flat.var(unbiased=False)",
        "mean, var = flat.mean(), flat.var(unbiased=True)",
        "whitening: sample variance instead of the population's",
    ),
    Mutation(
        "rl/losses.py",
        "return -torch.min(unclipped, clipped) * mask, ratio",
        "return -torch.max(unclipped, clipped) * mask, ratio",
        "policy loss: the optimistic bound (max) instead of the pessimistic (min)",
    ),
    Mutation(
        "rl/losses.py",
        "clipped = ratio.clamp(1 - clip, 1 + clip) * advantages",
        "clipped = ratio.clamp(1 / (1 + clip), 1 + clip) * advantages",
        "policy loss: lower clip bound 1/(1+eps) instead of 1-eps",
    ),
    Mutation(
        "rl/losses.py",
        "return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2) * mask",
        "return 0.5 * torch.min((values - returns) ** 2, (clipped - returns) ** 2) * mask",
        "value loss: min of the clipped and unclipped errors",
    ),
    Mutation(
        "rl/losses.py",
        "return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)",
        "return x.sum(dim) / mask.sum(dim).clamp(min=1)",
        "masked mean: padding values summed in",
    ),
    Mutation(
        "rl/losses.py",
        "return masked_mean(x, mask, dim=-1).sum() / (x.shape[0] if samples is None else samples)",
        "return masked_mean(x, mask, dim=-1).sum() / (x.shape[1] if samples is None else samples)",
        "sample mean: divided by the token count instead of the sample count",
    ),
    # ------------------------------------------------------------------------------ packing and masks
    Mutation(
        "packing.py",
        "if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_tokens:",
        "if groups and lengths[groups[-1][0]] * len(groups[-1]) <= max_tokens:",
        "length_groups: padded size counted without the row being added",
    ),
    Mutation(
        "packing.py",
        "order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)",
        "order = sorted(range(len(lengths)), key=lambda i: lengths[i])",
        "length_groups: shortest first, so a group's first row is not its longest",
    ),
    Mutation(
        "packing.py",
        "trunk = max(members, key=lambda i: len(samples[i].tokens))",
        "trunk = min(members, key=lambda i: len(samples[i].tokens))",
        "pack_samples: the shortest sample as the trunk",
    ),
    Mutation(
        "packing.py",
        "before = [p - 1 if p - 1 < shared else offset + p - 1 - shared for p in where]",
        "before = [p - 1 if p < shared else offset + p - 1 - shared for p in where]",
        "collate: the branch point of a shared prefix off by one",
    ),
    Mutation(
        "packing.py",
        "return logits.gather(-1, action_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)",
        "return logits.gather(-1, action_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=0)",
        "token log-probs: normalised over the wrong axis",
    ),
    Mutation(
        "packing.py",
        "attention[r, 0, span, :shared] = True",
        "attention[r, 0, span, : shared - 1] = True",
        "collate: a branch does not see the last shared token",
    ),
    # ------------------------------------------------------------------------------------- metrics
    Mutation(
        "rewards/metrics.py",
        "recall = common / len(gold_tokens)",
        "recall = common / len(pred_tokens)",
        "token F1: recall divided by the prediction's length",
    ),
    Mutation(
        "rewards/metrics.py",
        "if (pred in _SPECIAL_ANSWERS or gold in _SPECIAL_ANSWERS) and pred != gold:",
        "if pred in _SPECIAL_ANSWERS and pred != gold:",
        "token F1: a yes/no gold gives partial credit",
    ),
    Mutation(
        "rewards/metrics.py",
        '_ARTICLES = re.compile(r"\\b(a|an|the)\\b")',
        '_ARTICLES = re.compile(r"\\b(an|the)\\b")',
        "normalisation: the article 'a' kept",
    ),
    Mutation(
        "rewards/metrics.py",
        "if opposite is not None and opposite in pred_tokens:",
        "if opposite is not None and opposite in pred:",
        "cover-EM: the opposite of yes/no searched as a substring ('no' in 'know')",
    ),
    Mutation(
        "rewards/metrics.py",
        "return len({gold.key(p) for p in passages} & gold.keys) / len(gold)",
        "return sum(p in gold for p in passages) / len(gold)",
        "gold recall: a gold passage retrieved twice counted twice",
    ),
    Mutation(
        "rewards/metrics.py",
        "    if not passages:\n        return 0.0",
        "    if not passages:\n        return 1.0",
        "gold precision: no passages counted as all relevant",
    ),
    # ------------------------------------------------------------------------------------- shaping
    Mutation(
        "rewards/shaping.py",
        "return config.lambda_correct if correct else config.lambda_wrong",
        "return config.lambda_wrong if correct else config.lambda_correct",
        "lambda_T: correct and wrong swapped",
    ),
    Mutation(
        "rewards/shaping.py",
        "        return config.lambda_out_of_steps",
        "        return config.lambda_format_error",
        "lambda_T: out of steps given the format-error factor",
    ),
    Mutation(
        "rewards/shaping.py",
        'if config.mode == "process":\n        return 1.0',
        'if config.mode == "outcome":\n        return 1.0',
        "lambda_T: process mode scaled by the outcome",
    ),
    Mutation(
        "rewards/shaping.py",
        "kind, fmt = StepKind.INVALID, config.format_reward",
        "kind, fmt = StepKind.INVALID, 0.0",
        "shaping: no format penalty",
    ),
    Mutation(
        "rewards/shaping.py",
        '"process": 0.0}[config.mode]',
        '"process": outcome}[config.mode]',
        "process-only mode: the answer step paid the outcome",
    ),
    Mutation(
        "rewards/shaping.py",
        "any(not 0.0 <= r <= 1.0 for r in relevances)",
        "any(not 0.0 <= r < 1.0 for r in relevances)",
        "shaping: Rel = 1 refused (off by one at the bound)",
    ),
    Mutation(
        "rewards/shaping.py",
        "total=rounded(fmt + out + proc),",
        "total=rounded(out + proc),",
        "shaping: the format part left out of the total",
    ),
    Mutation(
        "rewards/shaping.py",
        "pays_bonus = trajectory.status == TrajectoryStatus.ANSWERED or",
        "pays_bonus = trajectory.status != TrajectoryStatus.FORMAT_ERROR or",
        "search bonus: paid to a trajectory that ran out of steps though it must answer",
    ),
    Mutation(
        "config.py",
        '0.8, description="lambda_T = 1 + gamma_incorrect (-0.2)',
        '0.9, description="lambda_T = 1 + gamma_incorrect (-0.2)',
        "RewardConfig: lambda_wrong default 0.8 -> 0.9",
    ),
    Mutation(
        "config.py",
        '0.01,\n        ge=0,\n        description="beta of the per-token KL penalty',
        '0.001,\n        ge=0,\n        description="beta of the per-token KL penalty',
        "PPOConfig: kl_coef default 0.01 -> 0.001",
    ),
    # -------------------------------------------------------------------------------------- judges
    Mutation(
        "rewards/judges.py",
        "if matched or self._generator is None:",
        "if self._generator is None:",
        "correctness: the LLM asked even when the match already says correct",
    ),
    # Not planted, equivalent: "score = min(1.0, max(0.0, value))" -> "min(1.0, value)" in LLMRelevanceJudge.
    # parse_score never returns a negative number ("Score: -0.2" does not parse), so no input reaches the
    # lower clamp; it stays as a guard in case the parser changes.
    Mutation(
        "rewards/judges.py",
        "score = self.config.relevance_fallback",
        "score = 0.0",
        "relevance: the configured fallback ignored",
    ),
    Mutation(
        "rewards/judges.py",
        "np.clip((cosines - floor) / (ceiling - floor), 0.0, 1.0).mean()",
        "np.clip((cosines - floor) / ceiling, 0.0, 1.0).mean()",
        "similarity relevance: mapped with the wrong range",
    ),
    Mutation(
        "rewards/judges.py",
        "self._entries.popitem(last=False)",
        "self._entries.popitem(last=True)",
        "judge cache: evicts the newest entry instead of the least recently used",
    ),
    Mutation(
        "rewards/judges.py",
        'return f"{example.question} {example.answers[0]}" if example.answers else example.question',
        "return example.question",
        "similarity relevance: the gold answer left out of the reference text",
    ),
    # ----------------------------------------------------------------------------- eval scoring
    Mutation(
        "evaluation/scoring.py",
        "if step.index <= budget and step.is_answer:",
        "if step.index < budget and step.is_answer:",
        "budget accuracy: an answer at the budget's last step not counted (off by one)",
    ),
    Mutation(
        "evaluation/scoring.py",
        "return step.query is not None and (step.valid or bool(step.passages))",
        "return step.query is not None and step.valid",
        "retrieval count: a failed step that kept its passages not counted",
    ),
    Mutation(
        "evaluation/scoring.py",
        'recall=None if top_k is None else _mean_or_none(r["recall"] for r in group),',
        'recall=_mean_or_none(r["recall"] for r in group),',
        "summary: a method without retrieval reported with a recall",
    ),
    Mutation(
        "evaluation/scoring.py",
        '"steps": max((s.index for s in trajectory.steps), default=0),',
        '"steps": len(trajectory.steps),',
        "scores: steps counted as step records, not the last step's number",
    ),
    # ---------------------------------------------------------------------------------- the parser
    Mutation(
        "steps.py",
        "header = _HEADER.search(text, 0, analysis_match.start() if analysis_match else len(text))",
        "header = _HEADER.search(text)",
        "parser: a later step's header read as this step's",
    ),
    Mutation(
        "steps.py",
        "decision = min(decisions, key=lambda m: m.start())",
        "decision = max(decisions, key=lambda m: m.start())",
        "parser: the last decision marker wins",
    ),
    Mutation(
        "steps.py",
        "MISSING_DECISION, EMPTY_QUERY, EMPTY_ANSWER})",
        "MISSING_DECISION, EMPTY_QUERY})",
        "parser: an empty final answer is valid",
    ),
    Mutation(
        "steps.py",
        "step.valid = not issues if strict else not FATAL_ISSUES.intersection(issues)",
        "step.valid = not FATAL_ISSUES.intersection(issues) if strict else not issues",
        "parser: strict and lenient swapped",
    ),
    Mutation(
        "steps.py",
        "return joined if max_chars is None else joined[:max_chars]",
        "return joined if max_chars is None else joined[: max_chars - 1]",
        "documents: cut one character short (off by one)",
    ),
    Mutation(
        "steps.py",
        '|\\n[ \\t]*step[ \\t]*\\d+[ \\t]*:|###"',
        '|\\n[ \\t]*step[ \\t]*\\d+[ \\t]*:"',
        "parser: a markdown rule does not end a field",
    ),
]


def check(mutations: Sequence[Mutation], package: Path) -> list[str]:
    """Every catalogue error at once: unknown files, modules without tests, snippets not exactly once."""
    errors = []
    for m in mutations:
        path = package / m.file
        if m.file not in TESTS:
            errors.append(f"{m.file}: no test files mapped in TESTS ({m.description})")
        if not path.is_file():
            errors.append(f"{m.file}: no such file ({m.description})")
            continue
        count = path.read_text(encoding="utf-8").count(m.original)
        if count != 1:
            errors.append(
                f"{m.file}: the snippet occurs {count} times, not once ({m.description}): {m.original!r}"
            )
    for module, files in TESTS.items():
        errors += [f"TESTS[{module!r}]: no tests/{f}" for f in files if not (ROOT / "tests" / f).is_file()]
    return errors


_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)  # "FAILED path::test[id] - why"


def run_tests(src: Path, files: Sequence[str], timeout_s: float) -> tuple[bool, str]:
    """Run ``files`` against the code in ``src``; (passed, the first failing test or why the run ended)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += [str(Path("tests") / f) for f in files]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f} s"
    if done.returncode == 0:
        return True, ""
    found = _FAILED.search(done.stdout)
    if found:
        return False, found.group(1)
    tail = (done.stdout + done.stderr).strip().splitlines()
    return False, f"exit {done.returncode}: {tail[-1] if tail else ''}"


def mutate_one(m: Mutation, copy: Path, timeout_s: float) -> Outcome:
    """Apply ``m`` to the copy, run its tests, restore the copy's file."""
    target = copy / "r3rag" / m.file
    original = target.read_text(encoding="utf-8")
    target.write_text(original.replace(m.original, m.replacement, 1), encoding="utf-8")
    started = time.perf_counter()
    try:
        passed, detail = run_tests(copy, TESTS[m.file], timeout_s)
    finally:
        target.write_text(original, encoding="utf-8")
    return Outcome(m, not passed, detail, time.perf_counter() - started)


def baseline(copy: Path, files: Sequence[str], timeout_s: float) -> None:
    """The unmutated code must pass every mapped test, and the copy must be what the tests import."""
    probe = subprocess.run(
        [sys.executable, "-c", "import r3rag; print(r3rag.__file__)"],
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=True,
    )
    if not probe.stdout.strip().startswith(str(copy)):
        raise SystemExit(f"mutate: the tests would import r3rag from {probe.stdout.strip()}, not the copy")
    passed, detail = run_tests(copy, files, timeout_s)
    if not passed:
        raise SystemExit(f"mutate: the tests fail without any mutation ({detail}); fix them first")


def table(outcomes: Sequence[Outcome]) -> str:
    lines = ["| # | file | mutation | result | first failing test | s |", "|---|---|---|---|---|---|"]
    for i, o in enumerate(outcomes, start=1):
        result = "killed" if o.killed else "**survived**"
        cells = (str(i), o.mutation.file, o.mutation.description, result, o.detail, f"{o.seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the mutations whose file or description contains this text")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="minimum kill rate (0 to 1)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per mutant's test run")
    args = parser.parse_args(argv)

    errors = check(MUTATIONS, ROOT / PACKAGE)
    if errors:
        print("mutate: the catalogue does not match the code:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.file or args.only in m.description]
    if args.list or not chosen:
        for m in chosen:
            print(f"{m.file}: {m.description}")
        return 0 if chosen or args.list else 2

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="r3rag-mutate-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        baseline(copy, sorted({f for m in chosen for f in TESTS[m.file]}), args.timeout)
        outcomes = []
        for i, m in enumerate(chosen, start=1):
            outcome = mutate_one(m, copy, args.timeout)
            outcomes.append(outcome)
            state = "killed" if outcome.killed else "SURVIVED"
            print(f"[{i}/{len(chosen)}] {state:8} {m.file}: {m.description}", file=sys.stderr, flush=True)
    killed = sum(o.killed for o in outcomes)
    rate = killed / len(outcomes)
    print(table(outcomes))
    print(
        f"\n{killed} of {len(outcomes)} mutations killed ({rate:.1%}; threshold {args.threshold:.0%}) "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0 if rate >= args.threshold else 1


if __name__ == "__main__":
    raise SystemExit(main())
