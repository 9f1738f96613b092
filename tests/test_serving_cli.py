"""``r3rag serve agent`` and ``r3rag view`` on the command line: flags reach the configs, bad paths are one
line. The server and the page themselves are replaced by recorders (they are tested in their own files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.config import IndexBuildConfig
from r3rag.data.corpus import write_corpus
from r3rag.retrieval.index import build_index
from r3rag.schema import Passage
from run_fixtures import write_run

runner = CliRunner()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-cli")
    write_corpus(root / "corpus.jsonl", [Passage(f"p{i}", f"T{i}", f"text {i}") for i in range(4)])
    build_index(IndexBuildConfig(corpus=root / "corpus.jsonl", out=root / "index"), progress=False)
    return root / "index"


def test_serve_agent_passes_the_settings_and_names_no_path(index, monkeypatch):
    calls = []
    monkeypatch.setattr("r3rag.serving.agent_api.serve", lambda *args: calls.append(args))
    result = runner.invoke(
        app,
        [
            "serve", "agent", str(index),
            "--generator.base-url", "http://127.0.0.1:9/v1", "--generator.model", "my-policy",
            "--agent.top-k", "2", "--max-top-k", "8", "--port", "9100",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ((generator, retriever, config, describe, log_level),) = calls
    assert (config.agent.top_k, config.max_top_k, config.port, config.host) == (2, 8, 9100, "127.0.0.1")
    assert describe == {"model": "my-policy", "backend": "openai-compatible", "retriever": "index index"}
    assert [p.id for p in retriever.search(["text 3"], 1)[0]] == ["p3"]
    assert type(generator).__name__ == "OpenAIGenerator" and log_level == "info"


def test_serve_agent_refuses_a_missing_index_and_a_bad_limit(tmp_path):
    missing = runner.invoke(app, ["serve", "agent", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such index folder" in missing.output
    bad = runner.invoke(app, ["serve", "agent", str(tmp_path), "--max-top-k", "0"])
    assert bad.exit_code == 2 and "--max-top-k" in bad.output


def test_view_opens_the_run_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("r3rag.serving.viewer.launch", lambda *args: calls.append(args))
    folder = write_run(tmp_path / "run")
    result = runner.invoke(
        app, ["view", str(folder), "--port", "7999", "--agent-url", "http://127.0.0.1:8002"]
    )
    assert result.exit_code == 0, result.output
    ((run, config, generator),) = calls
    assert (run, config.port, config.agent_url, generator) == (folder, 7999, "http://127.0.0.1:8002", None)
    missing = runner.invoke(app, ["view", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such run folder" in missing.output
