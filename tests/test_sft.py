"""SFT on a tiny random Llama: the loss falls, an interrupted run resumes to the same weights, the final model
is written only when training is complete, and LoRA merges into a plain checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from r3rag.coldstart.build import CONFIG_FILE
from r3rag.coldstart.dataset import step_conversations
from r3rag.coldstart.sft import (
    CHECKPOINTS,
    FINAL,
    micro_batches,
    prepare_data,
    row_length,
    train,
)
from r3rag.config import AGENT_FILE, AgentConfig, ColdStartConfig, SFTConfig
from r3rag.data.sft import IGNORE_INDEX, as_samples, end_of_turn, tokenize_example
from r3rag.jsonl import iter_jsonl
from r3rag.llm.hf import HFGenerator
from r3rag.packing import loss_sum, training_rows
from r3rag.schema import Passage, Step, Trajectory, TrajectoryStatus
from tiny_llm import tiny_model, tiny_tokenizer

AGENT = AgentConfig(top_k=1, max_doc_chars=80)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model folder and an SFT file of 16 two-step trajectories, as `r3rag coldstart` writes them."""
    root = tmp_path_factory.mktemp("sft")
    tiny_model().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    records = []
    for i in range(16):
        film = Passage(f"p{i}", f"Film {i}", f"Film {i} was directed by Ada {i}.")
        steps = [
            Step(1, "First find the film.", query=f"award winning film {i}", passages=[film]),
            Step(2, "The documents say so.", answer=f"Ada {i}"),
        ]
        t = Trajectory(f"q{i}", f"Who directed film {i}?", steps, f"Ada {i}", TrajectoryStatus.ANSWERED)
        for k, messages in enumerate(step_conversations(t, AGENT), start=1):
            records.append({"id": f"q{i}#{k}", "example_id": f"q{i}", "step": k, "messages": messages})
    data = root / "data"
    data.mkdir()
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ColdStartConfig(agent=AGENT).to_yaml(data / CONFIG_FILE)
    return {"model": root / "model", "data": data / "sft.jsonl"}


def config(setup: dict[str, Path], out: Path, **overrides) -> SFTConfig:
    base = dict(
        data=setup["data"],
        out=out,
        model=str(setup["model"]),
        max_steps=12,
        learning_rate=3e-3,
        micro_batch_size=4,
        grad_accum=2,
        val_fraction=0.25,
        eval_every=6,
        save_every=4,
        bf16=False,
    )
    return SFTConfig(**{**base, **overrides})


def test_loss_falls_and_the_final_model_is_complete(setup, tmp_path: Path):
    log: list[dict] = []
    result = train(config(setup, tmp_path / "run", max_steps=24), progress=False, on_step=log.append)
    assert [r["step"] for r in log] == list(range(1, 25))
    first, last = sum(r["loss"] for r in log[:3]) / 3, sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert [r["step"] for r in log if "eval_loss" in r] == [6, 12, 18, 24]
    assert log[-1]["eval_loss"] < log[5]["eval_loss"]
    assert (
        result.train_examples == 24 and result.val_examples == 8
    )  # 4 of 16 questions held out, 2 steps each
    final = tmp_path / "run" / FINAL
    assert result.final == final
    assert AgentConfig.from_yaml(final / AGENT_FILE) == AGENT  # the settings the model was trained for
    assert json.loads((final / "training.json").read_text())["steps"] == 24
    assert not list((tmp_path / "run").glob(".final*"))
    HFGenerator.from_name(str(final))  # loads as any model folder
    with pytest.raises(FileExistsError, match="complete"):
        train(config(setup, tmp_path / "run", max_steps=24), progress=False)


def test_interrupted_run_resumes_from_its_checkpoint(setup, tmp_path: Path):
    train(config(setup, tmp_path / "straight"), progress=False)

    def interrupt(record: dict) -> None:
        if record["step"] == 6:
            raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(config(setup, out), progress=False, on_step=interrupt)
    assert not (out / FINAL).exists()
    assert [p.name for p in sorted((out / CHECKPOINTS).iterdir())] == ["step-000004"]
    with pytest.raises(ValueError, match="learning_rate"):
        train(config(setup, out, learning_rate=1e-3), progress=False)
    result = train(config(setup, out), progress=False)
    assert result.resumed_from == 4 and result.steps == 12
    steps = [r["step"] for _, r in iter_jsonl(out / "log.jsonl")]
    assert steps == list(range(1, 13))  # steps 5 and 6, logged after the checkpoint, redone, not repeated
    assert [p.name for p in sorted((out / CHECKPOINTS).iterdir())] == ["step-000004", "step-000008"]
    straight = HFGenerator.from_name(str(tmp_path / "straight" / FINAL)).model.state_dict()
    resumed = HFGenerator.from_name(str(out / FINAL)).model.state_dict()
    for name, tensor in straight.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name


def three_step_examples() -> list:
    """Tokenised examples of two three-step trajectories (their prompts grow step by step)."""
    tokenizer = tiny_tokenizer()
    examples = []
    for i in range(2):
        doc = Passage(f"p{i}", f"Film {i}", f"Film {i} was directed by Ada {i} in the year {1990 + i}.")
        bio = Passage(f"b{i}", f"Ada {i}", f"Ada {i} was born in Rome {i}.")
        steps = [
            Step(1, "First find the film.", query=f"film {i} director", passages=[doc]),
            Step(2, f"Ada {i} directed it; now her birthplace.", query=f"Ada {i} born", passages=[bio]),
            Step(3, "The documents say so.", answer=f"Rome {i}"),
        ]
        t = Trajectory(f"q{i}", f"Where was the director of film {i} born?", steps, f"Rome {i}")
        for messages in step_conversations(t, AGENT):
            examples.append(tokenize_example(tokenizer, messages, end_of_turn(tokenizer), f"q{i}"))
    return examples


def test_packed_loss_and_gradients_equal_the_separate_examples():
    torch.manual_seed(0)
    model = tiny_model()
    examples = three_step_examples()
    samples = as_samples(examples)
    rows = training_rows(samples, share_prefixes=True)
    assert rows == [[0, 1, 2], [3, 4, 5]]  # one row per question
    assert training_rows(samples, share_prefixes=False) == [[i] for i in range(6)]
    packed_tokens = sum(row_length(samples, row) for row in rows)
    assert packed_tokens < 0.75 * sum(len(e.input_ids) for e in examples)

    # Reference: Hugging Face's own shifted cross-entropy, one example at a time.
    expected, count = torch.tensor(0.0), 0
    for e in examples:
        n = sum(label != IGNORE_INDEX for label in e.labels)
        out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
        expected, count = expected + out.loss * n, count + n
    expected.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}

    for share in (True, False):
        model.zero_grad()
        loss, n = loss_sum(model, samples, share, pad_id=0, bf16=False)
        assert n == count
        assert torch.allclose(loss, expected.detach(), rtol=1e-5), (share, loss, expected)
        loss.backward()
        for name, p in model.named_parameters():  # fp32 sums in another order: agree to 1e-4 of the scale
            scale = reference[name].abs().max()
            assert (p.grad - reference[name]).abs().max() <= 1e-4 * scale, (share, name)


def test_max_examples_keeps_whole_questions(setup, tmp_path: Path):
    cfg = config(setup, tmp_path / "subset", max_examples=7, val_fraction=0.0)
    data = prepare_data(cfg, tiny_tokenizer())
    per_question: dict[str, int] = {}
    for e in data.train:
        per_question[e.example_id] = per_question.get(e.example_id, 0) + 1
    assert len(data.train) == 6 and set(per_question.values()) == {2}  # 3 two-step questions fit in 7


@pytest.mark.parametrize("share_prefixes", [True, False])
def test_both_layouts_train(setup, tmp_path: Path, share_prefixes: bool):
    log: list[dict] = []
    cfg = config(setup, tmp_path / "run", max_steps=4, share_prefixes=share_prefixes, eval_every=4)
    result = train(cfg, progress=False, on_step=log.append)
    assert result.steps == 4 and [r["step"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["eval_loss"] > 0 and all(r["target_tokens"] > 0 for r in log)
    # 24 examples of 12 two-step questions; a step is 2 micro-batches of 4 rows: 16 examples packed, 8 not
    epochs = [0.0, 0.5, 1.0, 1.5] if share_prefixes else [0.0, 0.3333, 0.6667, 1.0]
    assert result.train_examples == 24 and [r["epoch"] for r in log] == epochs


def test_micro_batches_are_length_bucketed_and_seeded():
    lengths = [(i * 37) % 101 for i in range(200)]
    batches = micro_batches(lengths, 4, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert micro_batches(lengths, 4, seed=3) == batches and micro_batches(lengths, 4, seed=4) != batches
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 4 would spread about 60


def test_lora_is_merged_into_the_final_model(setup, tmp_path: Path):
    pytest.importorskip("peft")
    result = train(config(setup, tmp_path / "lora", lora=True, max_steps=3), progress=False)
    assert (result.final / "config.json").is_file() and not (result.final / "adapter_config.json").exists()
    base = HFGenerator.from_name(str(setup["model"])).model.state_dict()
    merged = HFGenerator.from_name(str(result.final)).model.state_dict()
    assert set(merged) == set(base)
    assert any(not torch.equal(base[name], merged[name]) for name in base)


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("fsdp", [False, True])
def test_two_processes_train_what_one_does(setup, tmp_path: Path, fsdp: bool):
    """`torchrun --nproc-per-node 2 -m r3rag sft` (gloo, on the CPU): each process takes half of every step's
    micro-batches and the gradients are summed, so the losses and the final weights are those of one process
    (losses to 1e-5: the processes add the same numbers in another order), and only one process writes the
    folder. With ``fsdp`` the weights, gradients and optimizer states are sharded over the two, and gathered
    whole for the checkpoint and the final model. A gentle learning rate keeps rounding differences from
    growing step after step (at 3e-3 the tiny model is chaotic: 1e-7 at step 2 became 10% by step 6)."""
    import os
    import socket
    import subprocess
    import sys

    settings = dict(max_steps=6, eval_every=3, save_every=3, learning_rate=3e-4)
    one = train(config(setup, tmp_path / "one", **settings), progress=False)
    two_config = config(setup, tmp_path / "two", fsdp=fsdp, **settings)
    two_config.to_yaml(tmp_path / "two.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(port), "-m", "r3rag", "sft", "--config", str(tmp_path / "two.yaml"),
    ]  # fmt: skip
    env = {**os.environ, "R3RAG_ALLOCATOR": "glibc", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one_log = [r for _, r in iter_jsonl(tmp_path / "one" / "log.jsonl")]
    two_log = [r for _, r in iter_jsonl(tmp_path / "two" / "log.jsonl")]
    assert [r["step"] for r in two_log] == list(range(1, 7))  # written once, by the main process
    for a, b in zip(one_log, two_log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=5e-3)  # norms of ~100, clipped to 1
        assert b["tokens"] == a["tokens"] and b["target_tokens"] == a["target_tokens"]
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
    mine, theirs = _final_weights(one.final), _final_weights(tmp_path / "two" / FINAL)
    assert mine.keys() == theirs.keys()
    checkpoint = _final_weights(tmp_path / "two" / CHECKPOINTS / "step-000003")
    assert checkpoint.keys() == mine.keys()
    for name, weight in mine.items():
        assert torch.allclose(weight, theirs[name], rtol=1e-4, atol=1e-6), name
    # resumed from the step-3 checkpoint (weights, and under FSDP the optimizer state re-sharded), the two
    # processes end where they ended before
    shutil.rmtree(tmp_path / "two" / FINAL)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, weight in _final_weights(tmp_path / "two" / FINAL).items():
        assert torch.allclose(weight, theirs[name], rtol=1e-5, atol=1e-7), name


def test_grad_accum_must_split_evenly_over_the_processes(setup, tmp_path: Path, monkeypatch):
    """Three processes cannot share two micro-batches a step equally: refused before anything loads."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("torch.distributed.init_process_group", lambda **_: None)
    with pytest.raises(ValueError, match=r"grad_accum \(2\) must be a multiple of the 3 processes"):
        train(config(setup, tmp_path / "run"), progress=False)


def test_gradient_checkpointing_trains_the_same_weights(setup, tmp_path: Path):
    """Recomputing activations in the backward pass changes memory, not the result."""
    plain = train(config(setup, tmp_path / "plain", max_steps=3), progress=False)
    checkpointed = train(
        config(setup, tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True), progress=False
    )
    mine, theirs = _final_weights(plain.final), _final_weights(checkpointed.final)
    for name, weight in mine.items():
        assert torch.allclose(weight, theirs[name], rtol=1e-5, atol=1e-7), name


def test_a_lora_run_keeps_its_frozen_base_in_bf16(setup, tmp_path: Path, monkeypatch):
    """With bf16, LoRA's frozen base is loaded in bf16 (no fp32 copy: half the memory) and its adapters
    train in fp32; a full fine-tune keeps fp32 master weights."""
    import r3rag.coldstart.sft as sft_module

    seen: dict[str, set[torch.dtype]] = {}
    real_step = sft_module._optimizer_step

    def spy(model, *args, **kwargs):
        seen["trained"] = {p.dtype for p in model.parameters() if p.requires_grad}
        seen["frozen"] = {p.dtype for p in model.parameters() if not p.requires_grad}
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(sft_module, "_optimizer_step", spy)
    train(config(setup, tmp_path / "lora", max_steps=1, bf16=True, lora=True, lora_rank=4), progress=False)
    assert seen == {"trained": {torch.float32}, "frozen": {torch.bfloat16}}
    train(config(setup, tmp_path / "full", max_steps=1, bf16=True), progress=False)
    assert seen == {"trained": {torch.float32}, "frozen": set()}


@pytest.mark.parametrize("native", [True, False])
def test_bf16_left_unset_follows_what_the_device_computes_natively(
    setup, tmp_path: Path, monkeypatch, native
):
    """Unset, bf16 is on where the device has bf16 arithmetic (the LoRA base loads in bf16) and off where
    torch would emulate it (the base stays fp32): r3rag.device.resolve_bf16 decides, not the field's None."""
    import r3rag.coldstart.sft as sft_module
    import r3rag.device as dev

    monkeypatch.setattr(dev, "native_bf16", lambda device: native)
    frozen: set[torch.dtype] = set()
    real_step = sft_module._optimizer_step

    def spy(model, *args, **kwargs):
        frozen.update(p.dtype for p in model.parameters() if not p.requires_grad)
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(sft_module, "_optimizer_step", spy)
    pytest.importorskip("peft")
    train(config(setup, tmp_path, max_steps=1, bf16=None, lora=True, lora_rank=4), progress=False)
    assert frozen == {torch.bfloat16 if native else torch.float32}
