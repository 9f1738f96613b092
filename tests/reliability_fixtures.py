"""Files for the reliability and fuzz tests: a small world, two indexes, a tiny model, cold-start data."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.coldstart.build import SFT_FILE
from r3rag.config import IndexBuildConfig, WorldConfig
from r3rag.data.world import generate_world, write_world
from r3rag.retrieval.index import build_index
from tiny_llm import tiny_model, tiny_tokenizer

SMALL = dict(
    people=100, cities=10, countries=3, organisations=12, works=24, train_questions=8, dev_questions=3
)


def make_files(root: Path) -> dict[str, Path]:
    """A small world, its BM25 index, a second index over half its corpus, a tiny model, cold-start data."""
    write_world(generate_world(WorldConfig(**SMALL)), root / "world")
    corpus = root / "world" / "corpus.jsonl"
    build_index(IndexBuildConfig(corpus=corpus, out=root / "index"), progress=False)
    lines = corpus.read_text().splitlines(keepends=True)
    (root / "half.jsonl").write_text("".join(lines[: len(lines) // 2]))
    build_index(IndexBuildConfig(corpus=root / "half.jsonl", out=root / "other-index"), progress=False)
    tiny_model().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    coldstart = ["coldstart", "--questions", str(root / "world" / "train.jsonl"), "--index"]
    result = CliRunner().invoke(app, [*coldstart, str(root / "index"), "--out", str(root / "coldstart")])
    assert result.exit_code == 0, result.output
    return {
        "root": root,
        "corpus": corpus,
        "train": root / "world" / "train.jsonl",
        "dev": root / "world" / "dev.jsonl",
        "index": root / "index",
        "other_index": root / "other-index",
        "model": root / "model",
        "sft": root / "coldstart" / SFT_FILE,
    }


def one_line_error(result) -> str:
    """The error line of a command that failed as expected: exit status 2, no traceback, and one line that
    says what is wrong, last (progress lines may come before it)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.output, result.output
    return errors[0]
