"""`r3rag coldstart` and `r3rag sft` as a user runs them: a small world, its BM25 index, a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.coldstart.build import CONFIG_FILE, SFT_FILE, STATS_FILE, TRAJECTORIES_FILE
from r3rag.config import ColdStartConfig, IndexBuildConfig, WorldConfig
from r3rag.data.world import generate_world, write_world
from r3rag.jsonl import iter_jsonl
from r3rag.retrieval.index import build_index
from tiny_llm import tiny_model, tiny_tokenizer

runner = CliRunner()
SMALL = dict(
    people=160, cities=30, countries=6, organisations=40, works=90, train_questions=40, dev_questions=5
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-coldstart")
    write_world(generate_world(WorldConfig(**SMALL)), root / "world")
    build_index(IndexBuildConfig(corpus=root / "world" / "corpus.jsonl", out=root / "index"), progress=False)
    tiny_model().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    return root


def test_coldstart_then_sft(world: Path, tmp_path: Path):
    out = tmp_path / "coldstart"
    args = ["coldstart", "--questions", str(world / "world" / "train.jsonl"), "--index", str(world / "index")]
    result = runner.invoke(app, [*args, "--out", str(out), "--limit", "20", "--agent.max-doc-chars", "400"])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output and "sft.jsonl" in result.output
    assert ColdStartConfig.from_yaml(out / CONFIG_FILE).agent.max_doc_chars == 400
    records = [r for _, r in iter_jsonl(out / TRAJECTORIES_FILE)]
    assert len(records) == 20 and json.loads((out / STATS_FILE).read_text())["questions"] == 20
    again = runner.invoke(app, [*args, "--out", str(out), "--limit", "20", "--agent.max-doc-chars", "400"])
    assert again.exit_code == 0 and "20 already done" in again.output
    other = runner.invoke(app, [*args, "--out", str(out), "--agent.top-k", "5"])
    assert other.exit_code == 2 and "agent.top_k: 2 -> 5" in other.output

    run = tmp_path / "sft"
    sft = ["sft", "--data", str(out / SFT_FILE), "--out", str(run), "--model", str(world / "model")]
    result = runner.invoke(app, [*sft, "--max-steps", "2", "--micro-batch-size", "2", "--grad-accum", "1"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and (run / "final" / "agent.yaml").is_file()


def test_errors_name_the_file(world: Path, tmp_path: Path):
    missing = tmp_path / "nope.jsonl"
    args = ["coldstart", "--questions", str(missing), "--index", str(world / "index"), "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output
    result = runner.invoke(app, ["sft", "--data", str(missing), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output
