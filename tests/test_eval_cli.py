"""`r3rag eval` as a user runs it: a saved (tiny) model, a dataset file with contexts, a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.jsonl import iter_jsonl
from tiny_llm import tiny_model, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    model_dir = root / "model"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    records = [
        {
            "_id": f"h{i}",
            "question": f"Who founded the studio that made film {i}?",
            "answer": f"Founder {i}",
            "type": "bridge",
            "level": "easy",
            "supporting_facts": [[f"Film {i}", 0], [f"Studio {i}", 0]],
            "context": [
                [f"Film {i}", [f"Film {i} was made by Studio {i}."]],
                [f"Studio {i}", [f"Studio {i} was founded by Founder {i}."]],
            ],
        }
        for i in range(3)
    ]
    questions = root / "hotpot.json"
    questions.write_text(json.dumps(records))
    return {"model": model_dir, "questions": questions, "root": root}


def evaluate(setup: dict[str, Path], out: Path, *args: str):
    common = ["--model", str(setup["model"]), "-d", str(setup["questions"]), "--out", str(out)]
    common += ["-m", "cot", "-m", "ircot", "-m", "r3rag", "--max-steps", "2"]
    common += ["--cot.max-new-tokens", "3", "--ircot.max-new-tokens", "3", "--r3rag.max-new-tokens", "3"]
    return runner.invoke(app, ["eval", *common, *args])


def test_a_run_writes_the_report_and_resumes_to_a_no_op(setup: dict[str, Path]) -> None:
    out = setup["root"] / "run"
    result = evaluate(setup, out, "--corpus-from-datasets", "--top-k-sweep", "1", "--sweep-methods", "r3rag")
    assert result.exit_code == 0, result.output
    for name in (
        "results.md",
        "results.csv",
        "results.json",
        "accuracy_vs_steps.png",
        "accuracy_vs_top_k.png",
    ):
        assert (out / name).is_file(), name
    assert "| Method | top-k | HotpotQA (n=3) Acc |" in result.stdout
    keys = [r["key"] for _, r in iter_jsonl(out / "predictions.jsonl")]
    assert len(keys) == 4 * 3  # cot, ircot@5, r3rag@5, r3rag@1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] and manifest["retriever"]["passages"] == 6
    assert manifest["datasets"]["hotpotqa"]["questions"] == 3 and manifest["max_steps"] == 2

    again = evaluate(setup, out, "--corpus-from-datasets", "--top-k-sweep", "1", "--sweep-methods", "r3rag")
    assert again.exit_code == 0, again.output
    assert len(list(iter_jsonl(out / "predictions.jsonl"))) == len(keys)
    assert again.stdout == result.stdout

    other = evaluate(setup, out, "--corpus-from-datasets", "--top-k", "3")
    assert other.exit_code == 2
    assert "holds a run with other settings" in other.output and "top_k: 5 -> 3" in other.output


def test_bad_flags_are_one_line_errors(setup: dict[str, Path]) -> None:
    out = setup["root"] / "bad"
    assert "--cot.max-new-tokens: 'x'" in evaluate(setup, out, "--cot.max-new-tokens", "x").output
    missing = evaluate(setup, out)
    assert missing.exit_code == 2 and "--index" in missing.output
    unknown = runner.invoke(app, ["eval", "-d", str(setup["questions"]), "-m", "magic", "--out", str(out)])
    assert unknown.exit_code == 2 and "magic" in unknown.output


def test_per_method_flags_set_their_methods_sections_over_a_config_file(setup: dict[str, Path]) -> None:
    out = setup["root"] / "sections"
    config = setup["root"] / "eval.yaml"
    config.write_text("ircot: {max_passages: 3}\nr3rag: {format_retries: 2}\nflare: {threshold: 0.2}\n")
    args = ["--config", str(config), "--limit", "1", "--rag-cot.top-k", "4", "--ircot.max-passages", "5"]
    args += ["--r3rag.max-doc-chars", "256", "--cot.max-new-tokens", "2", "--r3rag.max-new-tokens", "2"]
    args += ["--search-r1.max-new-tokens", "7"]
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(setup["model"]),
            "-d",
            str(setup["questions"]),
            "--out",
            str(out),
            "-m",
            "cot",
        ]
        + args,
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rag_cot"]["top_k"] == 4 and saved["ircot"]["max_passages"] == 5  # flags win
    assert saved["r3rag"] == {  # the file's values kept
        "max_new_tokens": 2,
        "format_retries": 2,
        "max_doc_chars": 256,
        "force_answer": False,
    }
    assert saved["flare"]["threshold"] == 0.2
    assert saved["search_r1"]["max_new_tokens"] == 7 and saved["cot"]["max_new_tokens"] == 2


def test_the_method_flag_lists_the_registered_methods() -> None:
    result = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    text = "".join(result.output.split())  # help lines are wrapped, at spaces and hyphens
    assert "ofcot,rag-cot,react,self-ask,iter-retgen,ircot,flare,search-r1,r3rag" in text
    assert "everyonebutsearch-r1" in text
