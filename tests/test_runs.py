"""Run folders: binding to settings, locking, atomic writes, checkpoints with every RNG, derived seeds."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from r3rag import runs
from r3rag.config import AgentConfig, SFTConfig


def sft(tmp_path: Path, **overrides) -> SFTConfig:
    return SFTConfig(data=tmp_path / "sft.jsonl", out=tmp_path / "run", **overrides)


def test_bind_writes_the_config_then_refuses_other_settings_naming_each_field(tmp_path: Path) -> None:
    runs.bind(tmp_path, sft(tmp_path), holds_results=False)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["learning_rate"] == 1e-5
    with pytest.raises(runs.RunFolderError) as refused:
        runs.bind(tmp_path, sft(tmp_path, learning_rate=2e-5, epochs=1), holds_results=True)
    assert str(refused.value) == (
        f"{tmp_path} holds a run with other settings (epochs: 3.0 -> 1.0; learning_rate: 1e-05 -> 2e-05); "
        "resume it with the same settings, or use another --out"
    )


def test_bind_lets_declared_fields_change_and_rebinds_a_folder_without_results(tmp_path: Path) -> None:
    runs.bind(tmp_path, sft(tmp_path), holds_results=True)
    runs.bind(tmp_path, sft(tmp_path, save_every=7), holds_results=True, may_change={"save_every"})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["save_every"] == 7
    runs.bind(tmp_path, sft(tmp_path, learning_rate=1.0), holds_results=False)  # nothing to resume: rebound
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["learning_rate"] == 1.0


def test_nested_differences_are_dotted_and_a_nested_field_may_be_declared(tmp_path: Path) -> None:
    assert runs.config_differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [
        "a.c: 2 -> 3",
        "d: None -> 4",
    ]
    runs.bind(tmp_path, AgentConfig(), holds_results=True)
    changed = AgentConfig(top_k=3, stop=["x"])
    runs.bind(tmp_path, changed, holds_results=True, may_change={"top_k", "stop"})
    with pytest.raises(runs.RunFolderError, match="top_k: 3 -> 4"):
        runs.bind(tmp_path, AgentConfig(top_k=4, stop=["x"]), holds_results=True, may_change={"stop"})


def test_a_folder_is_locked_against_a_second_writer_naming_the_holder(tmp_path: Path) -> None:
    in_use = rf"in use by another r3rag process \(pid {os.getpid()}\)"
    with runs.locked(tmp_path):
        with pytest.raises(runs.RunFolderError, match=in_use), runs.locked(tmp_path):
            pass
        other_process = "\n".join(
            [
                "from pathlib import Path",
                "from r3rag import runs",
                f"with runs.locked(Path({str(tmp_path)!r})): pass",
            ]
        )
        holder = subprocess.run([sys.executable, "-c", other_process], capture_output=True, text=True)
        assert holder.returncode == 1 and "RunFolderError" in holder.stderr
    with runs.locked(tmp_path):  # released: the next run takes it
        pass


def test_atomic_folder_replaces_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "final"
    with runs.atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), runs.atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("crash while saving")
    assert (final / "a.txt").read_text() == "one"
    with runs.atomic_folder(final) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary folder left behind


def test_atomic_file_keeps_the_old_content_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    runs.write_text(path, "old")
    with pytest.raises(OSError), runs.atomic_file(path) as handle:
        handle.write("half")
        raise OSError("disk full")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_checkpoints_keep_the_newest_and_restore_every_rng(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        runs.save_checkpoint(root, "iter", step, {"value": step}, keep=2, digits=5)
    assert [p.name for p in runs.checkpoints(root, "iter")] == ["iter-00002", "iter-00003"]
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    runs.save_checkpoint(root, "iter", 4, {"value": 4}, keep=2, digits=5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = runs.load_checkpoint(runs.latest_checkpoint(root, "iter"))
    assert state["value"] == 4 and state["step"] == 4
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    (root / "iter-00009").mkdir()  # no state file: an interrupted save never counts
    assert runs.latest_checkpoint(root, "iter").name == "iter-00004"


def test_derived_seeds_are_the_sha256_of_their_names() -> None:
    digest = hashlib.sha256(b"0:rollout:3").digest()
    assert runs.derive_seed(0, "rollout", 3) == int.from_bytes(digest[:8], "little") >> 1
    assert runs.derive_seed(0, "rollout", 3) != runs.derive_seed(0, "rollout", 4)
    assert 0 <= runs.derive_seed("x") < 2**63


def test_peak_memory_reports_the_host_figure() -> None:
    figures = runs.peak_memory()
    assert figures["memory/peak_rss_gb"] > 0.01


def test_checkpoints_carry_the_cuda_generators_where_there_is_a_gpu(tmp_path: Path, monkeypatch) -> None:
    """On a GPU machine the CUDA generators' states are saved with the others and restored on resume, so a
    resumed GPU run draws what an uninterrupted one would (CUDA simulated: its state is a stand-in tensor)."""
    cuda_states = [torch.tensor([7, 8], dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in cuda_states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    runs.save_checkpoint(tmp_path, "step", 1, {"x": 1}, keep=1)
    cuda_states[0] = torch.tensor([9, 9], dtype=torch.uint8)  # the generator moves on after the save
    state = runs.load_checkpoint(runs.latest_checkpoint(tmp_path, "step"))
    assert state["x"] == 1 and len(restored) == 1
    assert torch.equal(restored[0][0], torch.tensor([7, 8], dtype=torch.uint8))


def test_settings_added_since_a_folder_was_made_count_as_their_defaults(tmp_path: Path) -> None:
    """A run folder written before a setting existed (an upgrade added `device`, `fsdp`, a nested agent
    field) resumes; setting the new field to anything but its default is another run."""
    config = SFTConfig(data=tmp_path / "sft.jsonl", out=tmp_path / "run")
    old = config.model_dump(mode="json")
    for name in ("device", "fsdp", "gradient_checkpointing"):
        del old[name]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.CONFIG_FILE).write_text(yaml.safe_dump(old, sort_keys=False))
    runs.bind(tmp_path / "run", config, holds_results=True)  # no refusal
    (tmp_path / "run" / runs.CONFIG_FILE).write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(runs.RunFolderError, match=r"fsdp: False -> True"):
        runs.bind(tmp_path / "run", config.model_copy(update={"fsdp": True}), holds_results=True)


def test_nested_settings_added_since_count_as_their_defaults(tmp_path: Path) -> None:
    from r3rag.config import PPOConfig

    config = PPOConfig(model="m", train=tmp_path / "t.jsonl", index="i", out=tmp_path / "run")
    old = config.model_dump(mode="json")
    del old["rollout"]["seed"], old["device"]
    filled = runs.with_defaults(old, config)
    assert filled == config.model_dump(mode="json")
    assert runs.config_differences(filled, config.model_dump(mode="json")) == []
