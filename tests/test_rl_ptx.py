"""PPO-ptx: the cold start's SFT loss in every actor update, checked against a plain cross-entropy by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from r3rag.data.sft import IGNORE_INDEX, end_of_turn, tokenize_example
from r3rag.jsonl import RecordError
from r3rag.rl.ptx import PtxLoss
from rl_fixtures import tiny_config, tiny_trainer
from tiny_llm import tiny_model, tiny_tokenizer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
STEP_1 = "Step 1:\nThe problem analysis: find the film.\nThe retrieval query: film director"
STEP_2 = "Step 2:\nThe problem analysis: the documents say so.\nThe final answer: Ada"


def record(example_id: str, question: str, step: str, type: str) -> dict:
    """An SFT record as `r3rag coldstart` writes it: system, user (the question so far), the step."""
    user = {"role": "user", "content": question}
    messages = [SYSTEM, user, {"role": "assistant", "content": step}]
    return {"example_id": example_id, "type": type, "messages": messages}


def sft_records() -> list[dict]:
    """Three questions: q0 (a chain) with two steps (the second prompt extends the first), q1 and q2
    (comparisons) with one."""
    first = "The question: Who directed film 0?"
    return [
        record("q0", first, STEP_1, "chain"),
        record("q0", f"{first}\n{STEP_1}\ndocs", STEP_2, "chain"),
        record("q1", "Q: one?", STEP_2, "comparison"),
        record("q2", "Q: two?", STEP_1, "comparison"),
    ]


def write_sft(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def hand_sft_loss(model: torch.nn.Module, records: list[dict]) -> torch.Tensor:
    """Mean cross-entropy over every target token of the records, one padded-free row per example."""
    tokenizer = tiny_tokenizer()
    eot = end_of_turn(tokenizer)
    total, count = torch.zeros(()), 0
    for record in records:
        example = tokenize_example(tokenizer, record["messages"], eot)
        ids = torch.tensor([example.input_ids])
        labels = torch.tensor(example.labels[1:])
        logits = model(input_ids=ids).logits[0, :-1].float()
        total = total + F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        count += int((labels != IGNORE_INDEX).sum())
    return total / count


def gradients_at_the_optimizer_step(trainer) -> list[torch.Tensor]:
    """Run one iteration and return the actor's gradients as the (only) optimizer step saw them."""
    seen: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.extend(p.grad.clone() for p in trainer.model.actor_parameters())
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.metrics = trainer.iteration(1)
    return seen


@pytest.mark.parametrize("types", [[], ["comparison"]])
def test_each_optimizer_step_adds_coef_times_the_sft_loss_gradient(tmp_path: Path, types: list[str]) -> None:
    """With every question drawn, the update's actor gradient is PPO's plus 0.5 x the gradient of the mean
    cross-entropy of the SFT examples' targets (all of them, or with ``ptx_types`` those of its questions
    only), computed here by a plain forward pass; the logged loss and gradient norm are that cross-entropy
    and 0.5 x its gradient's norm."""
    data = write_sft(tmp_path / "sft.jsonl", sft_records())
    one_step = {"ppo_epochs": 1, "minibatch_size": 10_000, "max_grad_norm": 1e9}
    ptx = {"ptx_data": data, "ptx_coef": 0.5, "ptx_questions": 5, "ptx_types": types}
    with_ptx = tiny_trainer(tiny_config(tmp_path / "ptx", **ptx, **one_step))
    plain = tiny_trainer(tiny_config(tmp_path / "plain", **one_step))

    model = tiny_model()
    expected_loss = hand_sft_loss(model, [r for r in sft_records() if not types or r["type"] in types])
    expected_loss.backward()
    sft_grads = [p.grad for p in model.parameters()]

    grads, plain_grads = gradients_at_the_optimizer_step(with_ptx), gradients_at_the_optimizer_step(plain)
    assert with_ptx.metrics["ppo/optimizer_steps"] == 1
    for g, p, s in zip(grads, plain_grads, sft_grads, strict=True):
        torch.testing.assert_close(g - p, 0.5 * s, atol=1e-4, rtol=1e-3)  # g - p: rounding of two sums
    assert with_ptx.metrics["ppo/ptx_loss"] == pytest.approx(float(expected_loss.detach()), rel=1e-5)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(0.5 * s) for s in sft_grads]))
    assert with_ptx.metrics["ppo/ptx_grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    assert "ppo/ptx_loss" not in plain.metrics and "time/ptx" not in plain.metrics


def test_a_draw_is_whole_questions_each_at_most_once(tmp_path: Path) -> None:
    ptx = PtxLoss.from_file(write_sft(tmp_path / "sft.jsonl", sft_records()), tiny_tokenizer(), 0.1, 2, 0)
    assert sorted(len(row) for row in ptx.rows) == [1, 1, 2]  # q0's two steps share one row
    rng = random.Random(0)
    for _ in range(20):
        drawn = ptx.draw(rng)
        questions = [s.trajectory for s in drawn]
        assert len(set(questions)) == 2
        assert len(drawn) == sum(len(row) for row in ptx.rows if ptx.samples[row[0]].trajectory in questions)
    assert len(PtxLoss(ptx.samples, 0.1, 10, 0).draw(rng)) == 4  # more questions asked than there are: all


def test_a_bad_ptx_file_is_refused_by_file_and_line_before_training(tmp_path: Path) -> None:
    records = sft_records()
    records[2]["messages"] = records[2]["messages"][:-1] + [{"role": "user", "content": "no reply"}]
    data = write_sft(tmp_path / "bad.jsonl", records)
    with pytest.raises(RecordError, match=r"bad\.jsonl.*3"):
        tiny_trainer(tiny_config(tmp_path / "run", ptx_data=data))


def test_ptx_types_naming_a_type_the_file_lacks_is_refused_with_the_types_it_has(tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", sft_records())
    with pytest.raises(
        ValueError, match=r"sft\.jsonl: no question of type 'inference' \(it has: chain 2, comparison 2\)"
    ):
        PtxLoss.from_file(data, tiny_tokenizer(), 0.1, 2, 0, types=["comparison", "inference"])


def test_ptx_types_without_ptx_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ptx_types picks examples of ptx_data"):
        tiny_config(tmp_path / "run", ptx_types=["comparison"])
