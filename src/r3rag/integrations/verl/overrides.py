"""Hydra command-line overrides for veRL's trainer: the paper's recipe in veRL's keys, r3rag's own section,
and values rendered in hydra's grammar.

The ``r3rag`` section is written whole (every field, defaults included): a partial section would validate
against the nested configs' own defaults, not :class:`~r3rag.config.VerlLoopConfig`'s (its rollout is top-2,
512 characters, where a bare :class:`~r3rag.config.AgentConfig` is top-5). The keys are new to veRL's config,
hence the ``+``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from r3rag.config import CRITIC_FREE, VerlLoopConfig, VerlPrepareConfig
from r3rag.integrations.verl.data import AGENT_NAME

CONFIG_KEY = "r3rag"
"""The section of veRL's config that holds :class:`~r3rag.config.VerlLoopConfig`."""


def hydra_value(value: Any) -> str:
    """``value`` in hydra's override grammar: strings quoted (so spaces, colons, commas and brackets are
    text, and an interpolation is not resolved), lists and dicts in brackets and braces."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Hydra reads a backslash as an escape only before a quote or the closing quote, and resolves
        # ${...} even inside quotes.
        escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
        escaped = escaped.replace("'", "\\'").replace("${", "\\${")
        return f"'{escaped}'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no hydra rendering for {type(value).__name__} {value!r}")


def _leaves(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict) and value:
        return [line for k, v in value.items() for line in _leaves(f"{prefix}.{k}", v)]
    return [f"+{prefix}={hydra_value(value)}"]


def r3rag_overrides(config: VerlLoopConfig) -> list[str]:
    """The overrides that put ``config`` into veRL's config as its ``r3rag`` section."""
    return _leaves(CONFIG_KEY, config.model_dump(mode="json"))


RETURN_INFO_KEY = "return"
"""The trajectory's return in every output's ``reward_extra_info`` (the agent loop writes it): what veRL's
group filter compares under ``skip_uniform_groups``."""

KL_ESTIMATORS = {"k1": "kl", "k3": "low_var_kl"}
"""Our KL estimators by veRL's names (``algorithm.kl_penalty``, ``actor.kl_loss_type``)."""


def credit_overrides(config: VerlPrepareConfig) -> dict[str, Any]:
    """The estimator, the critic and the KL penalty of ``config.advantage`` in veRL's keys.

    gae / gae-trajectory (the paper's recipe): veRL's GAE with a critic on every step sample, KL in the
    reward. rloo / grpo: veRL's GRPO, which its V1 trainer runs on each trajectory's last output (one per
    ``{uid}_{session_id}``) and gives to the trajectory's every output; no critic; the KL penalty as the
    actor's loss term (veRL's convention for GRPO: in the reward it would only count the last step's)."""
    estimator = KL_ESTIMATORS[config.kl_estimator]
    if config.advantage not in CRITIC_FREE:
        return {
            "algorithm.adv_estimator": "gae",
            "algorithm.gamma": config.gamma,
            "algorithm.lam": config.lam,
            "algorithm.use_kl_in_reward": config.kl_coef > 0,
            "algorithm.kl_ctrl.kl_coef": config.kl_coef,
            "algorithm.kl_ctrl.type": "fixed" if config.kl_target is None else "adaptive",
            **({} if config.kl_target is None else {"algorithm.kl_ctrl.target_kl": config.kl_target}),
            "algorithm.kl_ctrl.horizon": config.kl_horizon,
            "algorithm.kl_penalty": estimator,
            "actor_rollout_ref.actor.use_kl_loss": False,
            "critic.model.path": config.critic_model or config.model,
            "critic.optim.lr": config.critic_lr,
            "critic.cliprange_value": config.value_clip,
            "critic.ppo_micro_batch_size_per_gpu": config.micro_batch_per_gpu,
        }
    return {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": config.advantage == "grpo",
        "algorithm.use_kl_in_reward": False,
        "actor_rollout_ref.actor.use_kl_loss": config.kl_coef > 0,
        "actor_rollout_ref.actor.kl_loss_coef": config.kl_coef,
        "actor_rollout_ref.actor.kl_loss_type": estimator,
        "critic.enable": False,
    }


def trainer_overrides(
    config: VerlPrepareConfig, train: Path, dev: Path | None, response_length: int
) -> list[str]:
    """veRL's keys for the paper's recipe (docs/verl.md has the table): PPO with a critic and GAE over step
    samples (V1 trainer), KL in the reward, the r3rag agent loop for every row; or, with ``advantage`` rloo
    or grpo, the critic-free estimator of :func:`credit_overrides`; with ``old_logprobs`` rollout, pi_old
    from the rollout server's log-probs (veRL's bypass mode); with ``skip_uniform_groups``, veRL's group
    filter on the trajectories' returns; with ``lora_rank``, a LoRA actor."""
    values: dict[str, Any] = {
        "trainer.use_v1": True,
        **credit_overrides(config),
        "actor_rollout_ref.model.path": config.model,
        "actor_rollout_ref.actor.optim.lr": config.actor_lr,
        "actor_rollout_ref.actor.clip_ratio": config.clip_ratio,
        "actor_rollout_ref.actor.ppo_mini_batch_size": config.minibatch_size,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": config.micro_batch_per_gpu,
        "actor_rollout_ref.actor.ppo_epochs": 1,
        "actor_rollout_ref.rollout.name": config.rollout_engine,
        "actor_rollout_ref.rollout.n": config.samples_per_question,
        "actor_rollout_ref.rollout.temperature": 1.0,
        "actor_rollout_ref.rollout.gpu_memory_utilization": config.gpu_memory_utilization,
        "actor_rollout_ref.rollout.agent.default_agent_loop": AGENT_NAME,
        "data.train_files": [str(train)],
        "data.val_files": [str(dev if dev is not None else train)],
        "data.train_batch_size": config.questions_per_iteration,
        "data.max_prompt_length": config.max_prompt_length,
        "data.max_response_length": response_length,
        "trainer.total_epochs": config.epochs,
        "trainer.n_gpus_per_node": config.n_gpus_per_node,
        "trainer.nnodes": config.nnodes,
        "trainer.save_freq": config.save_freq,
        "trainer.test_freq": config.test_freq if dev is not None else -1,
        "trainer.val_before_train": dev is not None,
        "trainer.project_name": config.project_name,
        "trainer.experiment_name": config.experiment_name,
        "trainer.default_local_dir": str(config.out / "checkpoints"),
    }
    if config.old_logprobs == "rollout":
        # pi_old = the rollout's log-probs, which the loop puts on each output (StepOutput.response_logprobs).
        # Raw, not veRL's default processed_logprobs: the loop samples at 0.1-1.0, the actor scores at 1.
        values |= {
            "actor_rollout_ref.rollout.calculate_log_probs": True,
            "actor_rollout_ref.rollout.logprobs_mode": "raw_logprobs",
            "algorithm.rollout_correction.bypass_mode": True,
        }
    if config.skip_uniform_groups:
        # veRL's V1 replay buffer evicts a question whose outputs all report one value and samples another.
        values |= {"algorithm.filter_groups.enable": True, "algorithm.filter_groups.metric": RETURN_INFO_KEY}
    if config.lora_rank:
        values |= {
            "actor_rollout_ref.model.lora_rank": config.lora_rank,
            "actor_rollout_ref.model.lora_alpha": config.lora_alpha,
            "actor_rollout_ref.model.target_modules": config.lora_targets,
        }
    return [f"{key}={hydra_value(value)}" for key, value in values.items()]
