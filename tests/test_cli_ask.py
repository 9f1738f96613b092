"""`r3rag ask` as a user runs it: a saved (tiny) model folder, a BM25 index, one question or a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.config import IndexBuildConfig
from r3rag.data.corpus import write_corpus
from r3rag.jsonl import iter_jsonl
from r3rag.retrieval.index import build_index
from r3rag.schema import Passage, Trajectory, TrajectoryStatus
from tiny_llm import tiny_model, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ask")
    model_dir = root / "model"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    passages = [
        Passage(id=f"p{i}", title=f"Film {i}", text=f"Film {i} was directed by Ada {i}.") for i in range(8)
    ]
    write_corpus(root / "corpus.jsonl", passages)
    build_index(IndexBuildConfig(corpus=root / "corpus.jsonl", out=root / "index"), progress=False)
    questions = root / "questions.jsonl"
    records = [
        {"id": f"q{i}", "question": f"Who directed film {i}?", "golden_answers": [f"Ada {i}"]}
        for i in range(3)
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"model": model_dir, "index": root / "index", "questions": questions}


def ask(setup: dict[str, Path], *args: str):
    common = ["--model", str(setup["model"]), "--index", str(setup["index"]), "--max-new-tokens", "4"]
    return runner.invoke(app, ["ask", *args, *common])


def test_one_question_as_json(setup: dict[str, Path]) -> None:
    result = ask(setup, "Who directed film 3?", "--json", "--max-format-retries", "1")
    assert result.exit_code == 0, result.output
    trajectory = Trajectory.from_dict(json.loads(result.stdout))  # the view went to stderr
    assert trajectory.question == "Who directed film 3?"
    assert trajectory.status is TrajectoryStatus.FORMAT_ERROR  # a random model writes no valid step
    assert trajectory.metadata["regenerations"] == 1
    assert trajectory.completion_tokens <= 2 * 4


def test_one_question_prints_the_steps(setup: dict[str, Path]) -> None:
    result = ask(setup, "Who directed film 3?")
    assert result.exit_code == 0, result.output
    assert "Step 1" in result.output and "format error" in result.output and "format-error" in result.output


def test_a_question_file_is_written_incrementally_and_resumed(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "trajectories.jsonl"
    first = ask(setup, "--questions", str(setup["questions"]), "--out", str(out), "--limit", "2")
    assert first.exit_code == 0, first.output
    assert [r["example_id"] for _, r in iter_jsonl(out)] == ["q0", "q1"]
    second = ask(setup, "--questions", str(setup["questions"]), "--out", str(out), "--batch-size", "2")
    assert second.exit_code == 0, second.output
    assert "resuming: 2 already" in second.output
    assert [r["example_id"] for _, r in iter_jsonl(out)] == ["q0", "q1", "q2"]
    third = ask(setup, "--questions", str(setup["questions"]), "--out", str(out))
    assert third.exit_code == 0 and "nothing to do" in third.output
    assert len(list(iter_jsonl(out))) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either a question or --questions"),
        (("--questions", "x.jsonl"), "--questions needs --out"),
        (("Who?", "--out", "o.jsonl"), "--out is for --questions"),
    ],
)
def test_usage_errors(setup: dict[str, Path], args: tuple[str, ...], message: str) -> None:
    result = ask(setup, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_missing_index_is_a_clear_error(setup: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["ask", "Who?", "--model", str(setup["model"]), "--index", str(tmp_path / "none")]
    )
    assert result.exit_code == 2
    assert "no such index folder" in result.output


def test_a_gpu_asked_for_on_a_machine_without_one_is_one_clear_line(
    setup: dict[str, Path], monkeypatch
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = ask(setup, "Who directed film 3?", "--device", "cuda")
    assert result.exit_code == 2
    assert "device 'cuda'" in result.output and "sees no CUDA GPU" in result.output
    assert "Traceback" not in result.output


def test_the_device_and_precision_settings_reach_the_loader(setup: dict[str, Path], monkeypatch) -> None:
    """`--device cpu --bf16`: the weights are read in bf16 onto the CPU (`auto` picks a GPU the same way).
    Without `--bf16`, the precision is the device's: bf16 where it computes bf16 natively, else fp32."""
    import torch

    from r3rag import device as dev
    from r3rag.llm import models

    placed = []
    load = models.load_model

    def spy(name, dtype=None, device=None):
        placed.append((device, dtype))
        return load(name, dtype=dtype, device=device)

    monkeypatch.setattr(models, "load_model", spy)  # HFGenerator.from_name imports it when called
    result = ask(setup, "Who directed film 3?", "--device", "cpu", "--bf16")
    assert result.exit_code == 0, result.output
    assert placed == [(torch.device("cpu"), torch.bfloat16)]
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(dev, "native_bf16", lambda device, native=native: native)
        placed.clear()
        assert ask(setup, "Who directed film 3?", "--device", "cpu").exit_code == 0
        assert placed == [(torch.device("cpu"), dtype)]


def test_a_question_file_through_an_endpoint_sets_failed_questions_aside(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """Each question on its own through the endpoint; one whose calls keep failing goes to OUT.failed.jsonl,
    and the next run asks it again."""
    from openai_stub import Reply, ScriptedOpenAIServer

    step = "Step 1:\nThe problem analysis: known.\nThe final answer: Ada"
    out = tmp_path / "trajectories.jsonl"
    flags = ["--questions", str(setup["questions"]), "--out", str(out), "--index", str(setup["index"])]
    flags += ["--model", "served", "--retries", "1", "--backoff-s", "0.01"]
    down: dict[str, Reply | list[Reply]] = {"film 1?": Reply(status=503), "Who directed": Reply(text=step)}
    with ScriptedOpenAIServer(down) as server:
        first = runner.invoke(app, ["ask", *flags, "--base-url", server.base_url])
        assert first.exit_code == 0, first.output
        assert sorted(r["example_id"] for _, r in iter_jsonl(out)) == ["q0", "q2"]
        failed = tmp_path / "trajectories.jsonl.failed.jsonl"
        assert [r["example_id"] for _, r in iter_jsonl(failed)] == ["q1"]
        assert "1 questions failed on model calls" in first.output
        del server.rules["film 1?"]  # the outage is over
        before = len(server.prompts)
        second = runner.invoke(app, ["ask", *flags, "--base-url", server.base_url])
        asked = server.prompts[before:]
    assert second.exit_code == 0, second.output
    assert sorted(r["example_id"] for _, r in iter_jsonl(out)) == ["q0", "q1", "q2"]
    assert len(asked) == 1 and "film 1?" in asked[0]
