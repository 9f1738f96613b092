"""r3rag inside veRL 0.9.1, for real on the CPU: veRL's own V1 rollout worker reads our parquet file with its
own dataset class, instantiates our agent loop from its registry, runs it against a server manager backed by a
real local model and the real BM25 index, and post-processes the outputs into its transfer-queue batch; its
own GAE then computes the advantages. Only the transfer queue's network calls are replaced, by a recorder.

Runs in .venv-verl (``make test`` builds it): veRL pins transformers<5.11, which r3rag's own venv is past.
"""

from __future__ import annotations

import asyncio
import shlex
import statistics
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import verl.trainer.ppo.v1.agent_loop_tq as tq_module
import verl.trainer.ppo.v1.replay_buffer as replay_buffer_module
from omegaconf import DictConfig
from tensordict import TensorDict
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.protocol import DataProto
from verl.trainer.config.algorithm import FilterGroupsConfig, RolloutCorrectionConfig
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.workers.config import HFModelConfig
from verl_fixtures import EXAMPLE, ROLLOUT, TinyServer, build_bm25, teach_policy, verl_config

from r3rag.agent import Agent
from r3rag.config import Advantage, RetrievalConfig, VerlLoopConfig, VerlPrepareConfig
from r3rag.integrations.verl.agent_loop import LOOP_CREDIT, R3RagAgentLoop, loop_config, sample_temperature
from r3rag.integrations.verl.data import row_example, write_parquet
from r3rag.integrations.verl.generator import ServerGenerator
from r3rag.integrations.verl.outputs import step_outputs
from r3rag.integrations.verl.overrides import RETURN_INFO_KEY, credit_overrides, hydra_value, r3rag_overrides
from r3rag.retrieval import open_retriever
from r3rag.rewards import TrajectoryScorer, build_relevance_judge
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.rewards.shaping import TrajectoryReward
from r3rag.rl.losses import leave_one_out_advantages
from r3rag.schema import QAExample, Trajectory

TEMPERATURES = [0.1, 0.4, 0.7, 1.0]
UID = "uid-0"


@dataclass
class Rollout:
    """What one rollout of EXAMPLE through veRL's worker left: the transfer-queue puts, the requests the
    server saw, and, for comparison, the trajectories our agent gives the same question outside veRL."""

    keys: list[str]
    fields: TensorDict
    requests: list[dict[str, Any]]
    expected: list[Trajectory]
    rewards: list[list[float]]
    loop: VerlLoopConfig
    config: Any
    tokenizer: Any


def _recorder(puts: list[dict[str, Any]]) -> tuple[Any, Any]:
    async def kv_put(**kwargs: Any) -> None:
        puts.append({"status": kwargs["tag"]["status"]})

    async def kv_batch_put(**kwargs: Any) -> None:
        puts.append(kwargs)

    return kv_put, kv_batch_put


def _scorer(loop: VerlLoopConfig) -> TrajectoryScorer:
    """The loop's reward outside veRL, for the expected values."""
    return TrajectoryScorer(loop.reward, CorrectnessJudge(loop.judges), build_relevance_judge(loop.judges))


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The BM25 index and the policy taught EXAMPLE's two steps on it, shared by the rollouts below."""
    root = tmp_path_factory.mktemp("verl-policy")
    index = build_bm25(root)
    return index, teach_policy(index, root / "model")


def _roll(
    root: Path,
    policy: tuple[Path, Path],
    advantage: Advantage,
    estimator: str,
    patch: pytest.MonkeyPatch,
    logprobs: bool = False,
) -> Rollout:
    """EXAMPLE's four samples through veRL's V1 rollout worker with the loop's ``advantage`` (and, with
    ``logprobs``, the server's log-probs recorded, as ``r3rag verl prepare --old-logprobs rollout`` sets)."""
    index, model_dir = policy
    train = write_parquet([EXAMPLE], root / "train.parquet", ROLLOUT.system_prompt)
    loop = VerlLoopConfig(
        retrieval=RetrievalConfig(source=str(index)),
        rollout=ROLLOUT.model_copy(update={"record_token_ids": True, "record_logprobs": logprobs}),
        temperatures=TEMPERATURES,
        advantage=advantage,
    )
    config = verl_config(
        model_dir,
        [
            f"algorithm.adv_estimator={estimator}",
            "actor_rollout_ref.rollout.n=4",
            "actor_rollout_ref.rollout.agent.default_agent_loop=r3rag",
            f"data.train_files=[{train}]",
            *r3rag_overrides(loop),
        ],
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    server = TinyServer(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
    puts: list[dict[str, Any]] = []
    kv_put, kv_batch_put = _recorder(puts)
    patch.setattr(tq_module.tq, "init", lambda *a, **k: None)
    patch.setattr(tq_module.tq, "async_kv_put", kv_put)
    patch.setattr(tq_module.tq, "async_kv_batch_put", kv_batch_put)
    worker = tq_module.AgentLoopWorkerTQ.__ray_metadata__.modified_class(config, llm_client=server)
    dataset = RLHFDataset(data_files=[str(train)], tokenizer=worker.tokenizer, config=config.data)
    batch_dict = collate_fn([dataset[0]])
    batch_dict["uid"] = np.array([UID], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", 1)

    async def run() -> None:
        await worker.generate_sequences(batch)
        await asyncio.gather(*list(worker.background_tasks))

    asyncio.run(run())
    assert puts[-1] == {"status": "finished"}, puts
    outputs = [p for p in puts if "keys" in p]
    keys = [k for p in outputs for k in p["keys"]]
    fields = tu.concat_tensordict([p["fields"] for p in outputs])
    requests = list(server.requests)

    agent = Agent(ServerGenerator(server, tokenizer), open_retriever(loop.retrieval), loop.rollout)

    async def outside() -> list[Trajectory]:
        return list(await asyncio.gather(*(agent.arun(EXAMPLE, t, s) for s, t in enumerate(TEMPERATURES))))

    expected = asyncio.run(outside())
    rewards = [r.rewards for r in _scorer(loop).score([EXAMPLE] * len(expected), expected)]
    return Rollout(keys, fields, requests, expected, rewards, loop, config, tokenizer)


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory, policy: tuple[Path, Path]) -> Rollout:
    """The paper's recipe: each step's output carries its own reward, for veRL's GAE."""
    with pytest.MonkeyPatch.context() as patch:
        return _roll(tmp_path_factory.mktemp("verl"), policy, "gae", "gae", patch)


@pytest.fixture(scope="module")
def logprob_rollout(tmp_path_factory: pytest.TempPathFactory, policy: tuple[Path, Path]) -> Rollout:
    """The paper's recipe with ``old_logprobs: rollout``: the loop records the server's log-probs."""
    with pytest.MonkeyPatch.context() as patch:
        return _roll(tmp_path_factory.mktemp("verl-logprobs"), policy, "gae", "gae", patch, logprobs=True)


def _tempered_score(
    score: Callable[..., list[TrajectoryReward]],
) -> Callable[..., list[TrajectoryReward]]:
    """The scorer's rewards, each trajectory's last step paid its sampling temperature more: the taught policy
    writes the same two steps at every temperature, and a group of equal returns would give every
    critic-free advantage 0, whatever the code did."""

    def tempered(self: TrajectoryScorer, examples: Any, trajectories: Any) -> list[TrajectoryReward]:
        out = []
        for reward, trajectory in zip(score(self, examples, trajectories), trajectories, strict=True):
            last = reward.steps[-1]
            extra = trajectory.metadata["temperature"]
            out.append(replace(reward, steps=(*reward.steps[:-1], replace(last, total=last.total + extra))))
        return out

    return tempered


@pytest.fixture(scope="module")
def critic_free_rollout(tmp_path_factory: pytest.TempPathFactory, policy: tuple[Path, Path]) -> Rollout:
    """``advantage: rloo`` (or grpo: the loop writes the same): every output of a trajectory carries its
    return, for veRL's GRPO; the returns made to differ by :func:`_tempered_score`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrajectoryScorer, "score", _tempered_score(TrajectoryScorer.score))
        return _roll(tmp_path_factory.mktemp("verl-critic-free"), policy, "rloo", "grpo", patch)


def _score(rollout: Rollout, trajectory: Trajectory) -> TrajectoryReward:
    (reward,) = _scorer(rollout.loop).score([EXAMPLE], [trajectory])
    return reward


def _row(rollout: Rollout, session: int, step: int) -> dict[str, Any]:
    i = rollout.keys.index(f"{UID}_{session}_{step}")
    return {k: rollout.fields[k][i] for k in ("prompts", "responses", "response_mask", "rm_scores")}


def test_one_output_per_step_each_with_its_own_reward_on_its_last_token(rollout: Rollout) -> None:
    expected_keys = {f"{UID}_{s}_{i}" for s, t in enumerate(rollout.expected) for i in range(len(t.steps))}
    assert set(rollout.keys) == expected_keys
    for session, (trajectory, rewards) in enumerate(zip(rollout.expected, rollout.rewards, strict=True)):
        for step, ids in enumerate(trajectory.metadata["step_token_ids"]):
            row = _row(rollout, session, step)
            assert row["prompts"].tolist() == ids["prompt"]
            assert row["responses"].tolist() == ids["completion"]
            scores = row["rm_scores"].tolist()
            assert scores[-1] == pytest.approx(rewards[step])
            assert scores[:-1] == [0.0] * (len(scores) - 1)


def test_hand_computed_rewards_of_the_retrieve_then_answer_trajectory(rollout: Rollout) -> None:
    """The coolest sample writes the taught steps: the query's top-2 are the gold passage 'ada' and
    'babbage' (Rel = 1/2 gold) and the answer is right, so step 1 earns lambda_correct * Rel = 1.6 * 0.5 and
    step 2 the correct reward 2.0, each on its own last token, although veRL copies the final output's
    reward onto the earlier ones."""
    first = rollout.expected[0]
    assert first.status == "answered" and [s.is_retrieval for s in first.steps] == [True, False]
    assert [p.id for p in first.steps[0].passages] == ["ada", "babbage"]
    assert _row(rollout, 0, 0)["rm_scores"][-1].item() == pytest.approx(0.8)
    assert _row(rollout, 0, 1)["rm_scores"][-1].item() == pytest.approx(2.0)


def test_documents_are_in_the_next_prompt_never_in_a_response(rollout: Rollout) -> None:
    passage = rollout.expected[0].steps[0].passages[0]
    step1, step2 = _row(rollout, 0, 0), _row(rollout, 0, 1)
    assert passage.text in rollout.tokenizer.decode(step2["prompts"].tolist())
    for row in (step1, step2):
        assert row["response_mask"].tolist() == [1] * len(row["responses"])
        response = rollout.tokenizer.decode(row["responses"].tolist())
        assert passage.text not in response and "The retrieval documents" not in response


def test_each_sample_of_a_question_runs_at_the_papers_temperature(rollout: Rollout) -> None:
    """veRL asks for its rollout temperature (1.0) for every sample; the loop sends sample i at the paper's
    0.1 + 0.3 i instead (no step here needed a re-generation, which would sample hotter)."""
    assert sorted({r["temperature"] for r in rollout.requests}) == TEMPERATURES
    assert all(r["max_tokens"] == ROLLOUT.max_new_tokens and r["top_p"] == 1.0 for r in rollout.requests)


def _padded(rollout: Rollout) -> DataProto:
    """The batch as the V1 trainer's ``_compute_advantage`` builds it from the transfer queue, KL-free."""
    fields = rollout.fields.select("uid", "response_mask", "rm_scores")
    data = DataProto(batch=fields.to_padded_tensor())
    data.batch["token_level_rewards"] = data.batch["rm_scores"]
    data.non_tensor_batch["uid"] = np.array(data.batch.pop("uid").tolist(), dtype=object)
    return data


def test_veRLs_gae_gives_each_step_its_own_return_and_advantage(rollout: Rollout) -> None:
    """The trainer's own path (``_compute_advantage``): padded batch, rm_scores as token rewards, zero values
    (an untrained critic), GAE with the paper's gamma = lambda = 1. Each step's return on its action tokens
    is its own reward, so the retrieval step and the answer step get different advantages."""
    data = _padded(rollout)
    data.batch["values"] = torch.zeros_like(data.batch["rm_scores"])
    algorithm = rollout.config.algorithm
    assert (algorithm.adv_estimator, algorithm.gamma, algorithm.lam) == ("gae", 1.0, 1.0)
    out = compute_advantage_for_multi_trajectories(
        data,
        batch_keys=rollout.keys,
        adv_estimator=algorithm.adv_estimator,
        gamma=algorithm.gamma,
        lam=algorithm.lam,
        num_repeat=rollout.config.actor_rollout_ref.rollout.n,
        config=algorithm,
    )
    mask = out.batch["response_mask"].bool()
    step_advantage = {}
    for i, key in enumerate(rollout.keys):
        session, step = (int(x) for x in key.rsplit("_", 2)[1:])
        returns = out.batch["returns"][i][mask[i]]
        assert torch.allclose(returns, torch.full_like(returns, rollout.rewards[session][step]))
        step_advantage[key] = out.batch["advantages"][i][mask[i]].mean().item()
    assert step_advantage[f"{UID}_0_0"] != pytest.approx(step_advantage[f"{UID}_0_1"])


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_veRLs_grpo_gives_every_step_its_trajectorys_group_advantage(
    critic_free_rollout: Rollout, tmp_path: Path, advantage: str
) -> None:
    """The critic-free path end to end: the loop writes each trajectory's return on its outputs, and veRL's
    V1 GRPO (with the estimator keys `r3rag verl prepare` writes) compares the question's four returns and
    gives a trajectory's advantage to each of its steps. Hand values: returns G_s (the steps' rewards), then
    G_s - mean (rloo; RLOO's advantage times 3/4) or (G_s - mean) / (std + 1e-6) (grpo, std with n - 1)."""
    rollout = critic_free_rollout
    settings = VerlPrepareConfig(
        model="m", train=tmp_path / "t.jsonl", index="i", out=tmp_path, advantage=advantage, kl_coef=0
    )
    keys = credit_overrides(settings)
    algorithm = verl_config(tmp_path, [f"{k}={hydra_value(v)}" for k, v in keys.items()]).algorithm
    assert algorithm.adv_estimator == "grpo"
    returns = [sum(r) for r in rollout.rewards]
    assert len(set(returns)) == 4 and {len(r) for r in rollout.rewards} == {2}  # distinct, two steps each
    mean, std = statistics.fmean(returns), statistics.stdev(returns)
    expected = {
        "rloo": [g - mean for g in returns],
        "grpo": [(g - mean) / (std + 1e-6) for g in returns],
    }[advantage]
    if advantage == "rloo":
        assert expected == pytest.approx([0.75 * a for a in leave_one_out_advantages(returns, [0] * 4)])
    out = compute_advantage_for_multi_trajectories(
        _padded(rollout),
        batch_keys=rollout.keys,
        adv_estimator=algorithm.adv_estimator,
        norm_adv_by_std_in_grpo=algorithm.norm_adv_by_std_in_grpo,
        num_repeat=4,
        config=algorithm,
    )
    mask = out.batch["response_mask"].bool()
    assert sorted(rollout.keys) == [f"{UID}_{s}_{t}" for s in range(4) for t in range(2)]
    for i, key in enumerate(rollout.keys):
        session = int(key.rsplit("_", 2)[1])
        advantages = out.batch["advantages"][i][mask[i]]
        assert torch.allclose(advantages, torch.full_like(advantages, expected[session]), atol=1e-5), key


def test_each_output_of_a_critic_free_trajectory_carries_its_return(critic_free_rollout: Rollout) -> None:
    """What veRL's GRPO reads is the trajectory's last output; the earlier ones hold the same return (veRL
    overwrites their advantage with the last one's), the documents still never in a response."""
    rollout = critic_free_rollout
    for session, rewards in enumerate(rollout.rewards):
        for step in range(len(rewards)):
            row = _row(rollout, session, step)
            assert row["rm_scores"][-1].item() == pytest.approx(sum(rewards))
            assert row["rm_scores"][:-1].abs().sum().item() == 0


def test_gae_trajectory_outputs_carry_each_steps_reward_to_go(rollout: Rollout) -> None:
    """``advantage: gae-trajectory``: the loop's scheme on the same trajectories puts r_s + r_(s+1) + ... on
    step s's last response token (then veRL's GAE, with a critic, as for gae)."""
    for trajectory, rewards in zip(rollout.expected, rollout.rewards, strict=True):
        reward = _score(rollout, trajectory)
        outputs = step_outputs(LOOP_CREDIT["gae-trajectory"]([trajectory], [reward]), reward)
        scores = [o.as_dict()["rm_scores"] for o in outputs]
        to_go = [sum(rewards[s:]) for s in range(len(rewards))]
        assert [float(s[-1]) for s in scores] == pytest.approx(to_go)
        assert all(float(s[:-1].abs().sum()) == 0 for s in scores)


def test_with_rollout_logprobs_each_output_carries_the_servers_logprob_of_each_response_token(
    logprob_rollout: Rollout, rollout: Rollout
) -> None:
    """``old_logprobs: rollout``: every step's output hands veRL (``rollout_log_probs``, its pi_old in bypass
    mode) the log-probs the server returned for that step's completion, token by token: each is the policy's
    log-softmax at temperature 1 of its own response token, recomputed here with a full forward pass. Without
    ``record_logprobs`` no output carries any."""
    model = AutoModelForCausalLM.from_pretrained(logprob_rollout.config.actor_rollout_ref.model.path).eval()
    checked = 0
    for session, trajectory in enumerate(logprob_rollout.expected):
        for step, ids in enumerate(trajectory.metadata["step_token_ids"]):
            i = logprob_rollout.keys.index(f"{UID}_{session}_{step}")
            assert logprob_rollout.fields["responses"][i].tolist() == ids["completion"]
            got = logprob_rollout.fields["rollout_log_probs"][i].tolist()
            assert got == pytest.approx(ids["logprobs"], abs=1e-6)
            prompt, completion = ids["prompt"], ids["completion"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
            scores = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
            recomputed = scores.gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()
            assert got == pytest.approx(recomputed, abs=1e-4)
            checked += 1
    assert checked == len(logprob_rollout.keys) > 0
    assert "rollout_log_probs" not in rollout.fields


def test_the_r3rag_section_composes_into_veRLs_config_and_reads_back(rollout: Rollout) -> None:
    assert rollout.config.trainer.use_v1 is True
    assert loop_config(rollout.config) == rollout.loop


def test_a_greedy_request_from_veRL_stays_greedy() -> None:
    config = VerlLoopConfig(retrieval=RetrievalConfig(source="x"))
    assert [sample_temperature(config, {"temperature": 1.0}, s) for s in range(5)] == [
        0.1,
        0.4,
        0.7,
        1.0,
        0.1,
    ]
    assert sample_temperature(config, {"temperature": 0}, 2) == 0.0


def test_without_veRLs_V1_trainer_the_loop_says_to_switch_it_on(rollout: Rollout) -> None:
    loop = R3RagAgentLoop.__new__(R3RagAgentLoop)
    loop.config = rollout.config
    with pytest.raises(ValueError, match="trainer.use_v1=true"):
        asyncio.run(loop.run({"temperature": 1.0}, extra_info={}))


def test_a_config_without_the_r3rag_section_names_the_override(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\+r3rag.retrieval.source"):
        loop_config(verl_config(tmp_path))


def _prepare(rollout: Rollout, tmp_path: Path, *options: str) -> tuple[Path, list[str], Any]:
    """`r3rag verl prepare` with ``options`` on a FlashRAG file of EXAMPLE: the folder, its overrides, and
    veRL's config composed from them."""
    from typer.testing import CliRunner

    from r3rag.cli import app
    from r3rag.jsonl import write_jsonl

    questions = tmp_path / "train.jsonl"
    record = {"id": EXAMPLE.id, "question": EXAMPLE.question, "golden_answers": EXAMPLE.answers}
    write_jsonl(questions, [{**record, "metadata": {"supporting_ids": ["ada"]}}])
    model = rollout.config.actor_rollout_ref.model.path
    out = tmp_path / "run"
    command = ["verl", "prepare", "--model", model, "--train", str(questions), "--out", str(out)]
    result = CliRunner().invoke(app, [*command, "--index", rollout.loop.retrieval.source, *options])
    assert result.exit_code == 0, result.output
    overrides = (out / "overrides.txt").read_text().splitlines()
    return out, overrides, verl_config(Path(model), overrides)


def test_prepare_writes_rows_veRL_reads_and_a_launch_whose_overrides_compose(
    rollout: Rollout, tmp_path: Path
) -> None:
    """`r3rag verl prepare` on a FlashRAG file: veRL's dataset class reads the question back whole, the
    overrides compose into veRL's config with the paper's hyperparameters, and the script is valid bash."""
    out, overrides, config = _prepare(rollout, tmp_path, "--kl-target", "0.05")
    index, model = rollout.loop.retrieval.source, rollout.config.actor_rollout_ref.model.path
    assert config.trainer.use_v1 is True
    assert (config.algorithm.adv_estimator, config.algorithm.gamma, config.algorithm.lam) == ("gae", 1.0, 1.0)
    assert need_critic(config) and need_reference_policy(config)
    assert (config.algorithm.use_kl_in_reward, config.algorithm.kl_ctrl.kl_coef) == (True, 0.01)
    kl_ctrl = config.algorithm.kl_ctrl  # our adaptive controller is veRL's
    assert (kl_ctrl.type, kl_ctrl.target_kl, kl_ctrl.horizon) == ("adaptive", 0.05, 10_000)
    assert config.actor_rollout_ref.actor.optim.lr == 5e-7 and config.critic.optim.lr == 9e-6
    assert config.actor_rollout_ref.rollout.n == 4
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "r3rag"
    loop = loop_config(config)
    assert (loop.rollout.top_k, loop.rollout.max_doc_chars, loop.judges.reference_match) == (2, 512, "id")
    assert loop.retrieval.source == index and loop.advantage == "gae"

    tokenizer = AutoTokenizer.from_pretrained(model)
    (row,) = RLHFDataset(data_files=config.data.train_files, tokenizer=tokenizer, config=config.data)
    assert row["agent_name"] == "r3rag"
    assert row_example(row["extra_info"]) == QAExample(
        id=EXAMPLE.id, question=EXAMPLE.question, answers=EXAMPLE.answers, supporting_ids=["ada"], dataset=""
    )
    script = out / "run_verl.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert all(shlex.quote(o) in script.read_text() for o in overrides)


def test_prepare_critic_free_builds_no_critic_and_puts_the_kl_penalty_in_the_loss(
    rollout: Rollout, tmp_path: Path
) -> None:
    """`--advantage rloo`: veRL's GRPO without the std division, no critic, KL as the actor's loss term (the
    reference model kept for it), and the loop told to write each trajectory's return."""
    _, overrides, config = _prepare(rollout, tmp_path, "--advantage", "rloo", "--kl-coef", "0.02")
    algorithm, actor = config.algorithm, config.actor_rollout_ref.actor
    assert (algorithm.adv_estimator, algorithm.norm_adv_by_std_in_grpo) == ("grpo", False)
    assert not need_critic(config) and not any(o.startswith("critic.model") for o in overrides)
    assert algorithm.use_kl_in_reward is False and need_reference_policy(config)
    assert (actor.use_kl_loss, actor.kl_loss_coef, actor.kl_loss_type) == (True, 0.02, "kl")
    assert loop_config(config).advantage == "rloo"
    _, _, config = _prepare(rollout, tmp_path, "--advantage", "grpo", "--kl-coef", "0")
    assert (config.algorithm.adv_estimator, config.algorithm.norm_adv_by_std_in_grpo) == ("grpo", True)
    assert not need_reference_policy(config)  # no penalty, no reference model


def test_prepare_lora_gives_the_actor_adapters_veRL_accepts_and_leaves_the_critic_full(
    rollout: Rollout, tmp_path: Path
) -> None:
    """`--lora-rank 8 --lora-targets '[q_proj, v_proj]'`: veRL's model keys on the actor only (the critic
    stays full), which veRL's own model config accepts; without it, no LoRA key at all."""
    options = ("--lora-rank", "8", "--lora-alpha", "32", "--lora-targets", "[q_proj, v_proj]")
    _, overrides, config = _prepare(rollout, tmp_path, *options)
    model = config.actor_rollout_ref.model
    assert (model.lora_rank, model.lora_alpha, list(model.target_modules)) == (8, 32, ["q_proj", "v_proj"])
    assert config.critic.model.lora_rank == 0 and need_critic(config)
    hf_model = omega_conf_to_dataclass(model, dataclass_type=HFModelConfig)  # veRL's own validation
    assert (hf_model.lora_rank, hf_model.lora_alpha) == (8, 32)
    _, overrides, config = _prepare(rollout, tmp_path, "--lora-rank", "4")
    assert config.actor_rollout_ref.model.target_modules == "all-linear"
    _, overrides, _ = _prepare(rollout, tmp_path)
    keys = [o.split("=", 1)[0] for o in overrides]
    assert not any("lora" in k or "target_modules" in k for k in keys)


def test_prepare_rollout_logprobs_makes_veRL_take_pi_old_from_the_rollout(
    rollout: Rollout, tmp_path: Path
) -> None:
    """`--old-logprobs rollout`: the server reports log-probs at temperature 1 (vLLM's raw ones: the loop
    samples at 0.1-1.0, veRL's actor scores at 1), veRL's trainer takes them as pi_old instead of recomputing
    (its rollout correction's bypass mode, which its own config class accepts), and the loop records them;
    without it, none of these."""
    _, _, config = _prepare(rollout, tmp_path, "--old-logprobs", "rollout")
    correction = omega_conf_to_dataclass(config.algorithm.rollout_correction, RolloutCorrectionConfig)
    assert correction.bypass_mode is True and correction.rollout_is is None
    rollout_config = config.actor_rollout_ref.rollout  # temperature 1, as the actor scores them
    assert (rollout_config.calculate_log_probs, rollout_config.logprobs_mode) == (True, "raw_logprobs")
    assert loop_config(config).rollout.record_logprobs is True
    _, overrides, config = _prepare(rollout, tmp_path)
    assert config.algorithm.rollout_correction.bypass_mode is False
    assert loop_config(config).rollout.record_logprobs is False
    assert config.actor_rollout_ref.rollout.logprobs_mode == "processed_logprobs"  # veRL's default
    keys = (
        "algorithm.rollout_correction",
        "actor_rollout_ref.rollout.calculate",
        "actor_rollout_ref.rollout.logprobs",
    )
    assert not any(o.startswith(keys) for o in overrides)


def test_prepare_skip_uniform_groups_turns_on_veRLs_group_filter_on_the_loops_return(
    rollout: Rollout, tmp_path: Path
) -> None:
    """`--advantage rloo --skip-uniform-groups`: veRL's group filter compares the return the loop reports
    (its own config class accepts the keys); without the switch, no filter key; with a critic, refused."""
    _, _, config = _prepare(rollout, tmp_path, "--advantage", "rloo", "--skip-uniform-groups")
    groups = omega_conf_to_dataclass(config.algorithm.filter_groups, FilterGroupsConfig)
    assert (groups.enable, groups.metric) == (True, RETURN_INFO_KEY)
    _, overrides, config = _prepare(rollout, tmp_path, "--advantage", "rloo")
    assert config.algorithm.filter_groups.enable is False
    assert not any(o.startswith("algorithm.filter_groups") for o in overrides)
    with pytest.raises(ValueError, match="skip_uniform_groups needs a baseline of whole trajectories"):
        VerlPrepareConfig(model="m", train=tmp_path / "t", index="i", out=tmp_path, skip_uniform_groups=True)


def test_veRLs_group_filter_drops_the_question_whose_returns_tie_and_keeps_the_other(
    rollout: Rollout, critic_free_rollout: Rollout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """veRL's V1 replay buffer under `skip_uniform_groups` (its DAPO filter on RETURN_INFO_KEY), on what its
    rollout worker stored: the paper's rollout, whose four samples write the same steps and so earn one
    return, is dropped (the question veRL then replaces); the critic-free one, whose four returns differ,
    is kept, although each of its trajectories' two outputs report the same return."""
    tied = {round(sum(r), 9) for r in rollout.rewards}
    assert len(tied) == 1 and len({round(sum(r), 9) for r in critic_free_rollout.rewards}) == 4
    stored = {
        key.replace(UID, name, 1): extra
        for name, stored_rollout in (("tied", rollout), ("varied", critic_free_rollout))
        for key, extra in zip(stored_rollout.keys, stored_rollout.fields["extra_fields"], strict=True)
    }

    def kv_batch_get(keys: list[str], partition_id: str, select_fields: list[str]) -> dict[str, Any]:
        assert partition_id == "train" and select_fields == ["extra_fields"]
        return {"extra_fields": [stored[key] for key in keys]}

    monkeypatch.setattr(replay_buffer_module.tq, "kv_batch_get", kv_batch_get)
    buffer = replay_buffer_module.ReplayBuffer(
        trainer_mode="sync",
        trainer_config=DictConfig({}),
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs=DictConfig({}),
        refill_fn=lambda *args, **kwargs: None,
        filter_groups_metric=RETURN_INFO_KEY,
    )
    buffer.partitions["train"] = {key: {} for key in stored}
    buffer.finished_keys["train"] = {"tied", "varied"}
    assert buffer._dapo_filtered_keys("train") == ({"tied"}, Counter({tied.pop(): 1}))


def test_overrides_quote_what_hydra_would_misread(tmp_path: Path) -> None:
    tricky = "It's a: [test], {x} ${y} \\ done \\"
    loop = VerlLoopConfig(
        retrieval=RetrievalConfig(source=str(tmp_path)),
        rollout=ROLLOUT.model_copy(update={"system_prompt": tricky, "stop": ["a,b", "c'd"]}),
    )
    assert loop_config(verl_config(tmp_path, r3rag_overrides(loop))) == loop
