"""Step samples from a real agent run: prompts, actions, rewards and masks, token by token."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from r3rag.packing import Sample, collate, length_groups, pack_samples
from r3rag.rl.samples import CREDIT_SCHEMES, return_to_go_samples, step_samples, trajectory_return_samples
from rl_fixtures import ANSWER, INVALID, QUERY, scripted_rollout
from tiny_llm import tiny_tokenizer


def find(haystack: tuple[int, ...], needle: list[int]) -> int:
    for start in range(len(haystack) - len(needle) + 1):
        if list(haystack[start : start + len(needle)]) == needle:
            return start
    raise AssertionError("subsequence not found")


def test_each_step_is_one_sample_with_its_reward_on_its_last_action_token() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [QUERY, ANSWER]})
    (trajectory,) = trajectories
    samples = step_samples(trajectories, rewards)
    assert [s.step for s in samples] == [0, 1] and [s.trajectory for s in samples] == [0, 0]
    assert rewards[0].rewards == [pytest.approx(1.6 * 0.5), 2.0]  # 1 of 2 passages gold; correct answer
    for sample, ids, reward in zip(
        samples, trajectory.metadata["step_token_ids"], rewards[0].rewards, strict=True
    ):
        prompt, completion = ids["prompt"], ids["completion"]
        assert sample.tokens == (*prompt, *completion)
        for position in range(len(sample.tokens)):  # token by token
            assert sample.action_mask[position] == (position >= len(prompt))
            assert sample.rewards[position] == (reward if position == len(sample.tokens) - 1 else 0.0)
        assert sample.tokens[-1] == tiny_tokenizer().eos_token_id  # end-of-turn is an action


def test_documents_are_in_the_next_prompt_and_never_actions() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [QUERY, ANSWER]})
    first, second = step_samples(trajectories, rewards)
    tok = tiny_tokenizer()
    passage = trajectories[0].steps[0].passages[0]
    doc_ids = tok(f" {passage.contents}", add_special_tokens=False)["input_ids"][1:-1]  # inner tokens
    start = find(second.tokens, doc_ids)
    assert not any(second.action_mask[start : start + len(doc_ids)])
    actions = [t for t, is_action in zip(second.tokens, second.action_mask, strict=True) if is_action]
    assert tok.decode(actions, skip_special_tokens=True) == ANSWER
    # the first step's own tokens reappear in the second prompt, as context and no longer as actions
    first_actions = [t for t, a in zip(first.tokens, first.action_mask, strict=True) if a]
    assert tok.decode(first_actions, skip_special_tokens=True) == QUERY
    assert QUERY in tok.decode(list(second.tokens[: second.action_mask.index(True)]))


def test_a_malformed_step_is_an_action_with_the_format_penalty() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [INVALID]})
    (sample,) = step_samples(trajectories, rewards)
    assert sample.rewards[-1] == -1.0 and sum(sample.rewards) == -1.0
    assert sum(sample.action_mask) == len(trajectories[0].metadata["step_token_ids"][0]["completion"])


def test_trajectories_without_token_ids_are_refused() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [INVALID]})
    del trajectories[0].metadata["step_token_ids"]
    with pytest.raises(ValueError, match="record_token_ids"):
        step_samples(trajectories, rewards)


def test_sample_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="one entry per token"):
        Sample((1, 2), (False,), (0.0, 0.0), 0, 0)
    with pytest.raises(ValueError, match="at least one action"):
        Sample((1, 2), (False, False), (0.0, 0.0), 0, 0)
    with pytest.raises(ValueError, match="first token"):
        Sample((1, 2), (True, True), (0.0, 0.0), 0, 0)


def sample(prompt: int, actions: int, reward: float = 1.0, trajectory: int = 0, start: int = 10) -> Sample:
    tokens = tuple(range(start, start + prompt + actions))
    mask = (False,) * prompt + (True,) * actions
    return Sample(tokens, mask, (0.0,) * (prompt + actions - 1) + (reward,), trajectory, 0)


def test_collate_gathers_the_actions_and_the_positions_that_predict_them() -> None:
    samples = [sample(3, 2, 0.5), sample(1, 4, -1.0)]
    batch = collate(samples, pack_samples(samples, share_prefixes=False), pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 14], [10, 11, 12, 13, 14]]
    assert batch.rows.tolist() == [0, 1]
    assert batch.positions.tolist() == [[2, 3, 0, 0], [0, 1, 2, 3]]  # the token before each action
    assert batch.action_ids.tolist() == [[13, 14, 0, 0], [11, 12, 13, 14]]
    assert batch.action_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.rewards.tolist() == [[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]
    assert torch.equal(batch.attention_mask[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    short = [sample(2, 1), sample(5, 2)]
    padded = collate(short, pack_samples(short, share_prefixes=False), pad_id=0)
    assert padded.tokens == 10 and padded.size == 2
    assert padded.attention_mask[0, 0].tolist()[4] == [False] * 4 + [True, False, False]  # padding: itself


def test_a_pack_computes_the_shared_prefix_once() -> None:
    """Two steps of one trajectory: [10..15] (prompt 10-13, actions 14-15) and [10..12, 50..53]."""
    first = sample(4, 2, 0.5)
    second = Sample((10, 11, 12, 50, 51, 52, 53), (False,) * 5 + (True,) * 2, (0.0,) * 6 + (2.0,), 0, 1)
    (pack,) = pack_samples([first, second])
    assert pack.members == (1, 0) and pack.shared == (0, 3)  # the longer one is the trunk
    batch = collate([first, second], [pack], pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 50, 51, 52, 53, 13, 14, 15]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 3, 4, 5]]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask[6] == [1] * 7 + [0] * 3  # the trunk is causal and never sees the branch
    assert mask[8] == [1, 1, 1, 0, 0, 0, 0, 1, 1, 0]  # the branch sees the shared prefix and itself
    assert batch.positions.tolist() == [[4, 5], [7, 8]]  # tokens before 52, 53 (trunk) and 14, 15 (branch)
    assert batch.action_ids.tolist() == [[52, 53], [14, 15]]
    assert batch.rewards.tolist() == [[0.0, 2.0], [0.0, 0.5]]
    assert batch.tokens == 10 < len(first.tokens) + len(second.tokens)


def test_an_action_right_where_a_branch_leaves_the_trunk_is_predicted_from_the_trunk() -> None:
    """The branch [10, 11 | 60, 61] parts from the trunk [10..15] after 2 tokens, and its first action (60)
    is its first own token: the token before it is the trunk's 11 (row position 1), not the trunk's end."""
    trunk = Sample((10, 11, 12, 13, 14, 15), (False,) * 4 + (True,) * 2, (0.0,) * 6, 0, 1)
    branch = Sample((10, 11, 60, 61), (False, False, True, True), (0.0,) * 4, 0, 0)
    (pack,) = pack_samples([trunk, branch])
    assert pack.shared == (0, 2)
    batch = collate([trunk, branch], [pack], pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 14, 15, 60, 61]]
    assert batch.positions.tolist() == [[3, 4], [1, 6]]


def test_packs_follow_trajectories() -> None:
    samples = [sample(3, 1, trajectory=0), sample(5, 1, trajectory=1), sample(6, 1, trajectory=0)]
    assert [p.members for p in pack_samples(samples)] == [(2, 0), (1,)]
    assert [p.shared for p in pack_samples(samples)] == [(0, 4), (0,)]  # sample 0 lies inside sample 2


def test_length_groups_bound_padded_tokens_and_keep_similar_lengths_together() -> None:
    lengths = [12, 5, 42, 13, 4, 41]
    groups = length_groups(lengths, max_tokens=90)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        assert max(lengths[i] for i in group) * len(group) <= 90 or len(group) == 1
    assert groups == [[2, 5], [3, 0, 1, 4]]


def test_length_groups_fill_a_micro_batch_exactly_to_its_bound() -> None:
    """The bound is inclusive: two rows of 45 fill 90 padded tokens, a third would make 135."""
    assert length_groups([45, 45, 45], max_tokens=90) == [[0, 1], [2]]
    assert length_groups([45, 44], max_tokens=89) == [[0], [1]]
    assert length_groups([30, 30, 30], max_tokens=90) == [[0, 1, 2]]
    assert length_groups([100, 3], max_tokens=90) == [[0], [1]]  # too long for any bound: alone


def test_returns_to_go_carry_every_later_steps_reward() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [QUERY, ANSWER]})
    first, second = return_to_go_samples(trajectories, rewards)
    assert first.rewards[-1] == pytest.approx(1.6 * 0.5 + 2.0) and second.rewards[-1] == 2.0
    assert sum(first.rewards) == first.rewards[-1]  # still only on the last action token
    # the same cut as the paper's scheme: only the placed scalar differs
    paper = step_samples(trajectories, rewards)
    assert [(s.tokens, s.action_mask) for s in paper] == [(s.tokens, s.action_mask) for s in (first, second)]


def test_group_baselines_put_the_trajectorys_advantage_on_every_step() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [QUERY, ANSWER], "r": [INVALID]})
    # two samples of one question: returns 0.8 + 2.0 = 2.8 and -1.0
    same = [dataclasses.replace(t, example_id="g") for t in trajectories]
    samples = CREDIT_SCHEMES["rloo"](same, rewards)
    assert [s.rewards[-1] for s in samples] == pytest.approx([3.8, 3.8, -3.8])  # 2.8 - (-1), -1 - 2.8
    assert [sum(s.rewards) for s in samples] == pytest.approx([3.8, 3.8, -3.8])
    grpo = CREDIT_SCHEMES["grpo"](same, rewards)  # mean 0.9, sample std 3.8 / sqrt(2)
    assert grpo[0].rewards[-1] == pytest.approx(1.9 / (3.8 / 2**0.5 + 1e-4))
    # as asked (different questions), each trajectory is alone: nothing to compare with
    assert [s.rewards[-1] for s in CREDIT_SCHEMES["rloo"](trajectories, rewards)] == [0.0, 0.0, 0.0]


def test_returns_to_go_against_the_group_credit_each_step_against_the_same_step_of_the_others() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [QUERY, ANSWER], "r": [INVALID]})
    # one question: rewards-to-go [0.8 + 2.0, 2.0] and [-1.0]; the second has ended by step 2 (0 to earn)
    same = [dataclasses.replace(t, example_id="g") for t in trajectories]
    samples = CREDIT_SCHEMES["rloo-to-go"](same, rewards)
    assert [s.rewards[-1] for s in samples] == pytest.approx([2.8 + 1.0, 2.0 - 0.0, -1.0 - 2.8])
    assert [sum(s.rewards) for s in samples] == pytest.approx([3.8, 2.0, -3.8])
    assert [s.rewards[-1] for s in CREDIT_SCHEMES["rloo-to-go"](trajectories, rewards)] == [0.0, 0.0, 0.0]


def test_trajectory_returns_put_the_bare_return_on_every_step_for_a_trainer_that_takes_the_baseline() -> None:
    _, trajectories, rewards = scripted_rollout({"q": [QUERY, ANSWER], "r": [INVALID]})
    samples = trajectory_return_samples(trajectories, rewards)  # returns 0.8 + 2.0 and -1.0, no baseline
    assert [s.rewards[-1] for s in samples] == pytest.approx([2.8, 2.8, -1.0])
    assert [sum(s.rewards) for s in samples] == pytest.approx([2.8, 2.8, -1.0])
