"""`r3rag data world` and `r3rag data convert` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.data.datasets import load_dataset
from sample_data import sample_file

runner = CliRunner()


def test_help_lists_the_data_commands():
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "world" in result.output and "convert" in result.output


def test_data_world_writes_a_small_world_and_reports(tmp_path):
    result = runner.invoke(
        app,
        [
            "data",
            "world",
            "--out",
            str(tmp_path),
            "--scale",
            "0.25",
            "--train-questions",
            "40",
            "--dev-questions",
            "10",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {"corpus.jsonl", "train.jsonl", "dev.jsonl", "world.yaml"}
    assert (
        len(load_dataset(tmp_path / "train.jsonl")) == 40 and len(load_dataset(tmp_path / "dev.jsonl")) == 10
    )
    assert "gold passage found" in result.output and "compositional" in result.output


def test_data_world_takes_a_config_file_and_refuses_bad_values(tmp_path):
    config = tmp_path / "w.yaml"
    config.write_text(
        "people: 120\ncities: 20\ncountries: 4\norganisations: 30\nworks: 60\n"
        "train_questions: 5\ndev_questions: 2\n"
    )
    result = runner.invoke(
        app, ["data", "world", "--out", str(tmp_path / "w"), "--config", str(config), "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert "people: 120" in (tmp_path / "w" / "world.yaml").read_text()

    config.write_text("peple: 120\n")
    result = runner.invoke(app, ["data", "world", "--out", str(tmp_path / "x"), "--config", str(config)])
    assert result.exit_code == 2 and "peple" in result.output
    result = runner.invoke(app, ["data", "world", "--out", str(tmp_path / "x"), "--difficulty", "extreme"])
    assert result.exit_code == 2 and "easy, standard or hard" in result.output


def test_the_documented_big_world_example_works(tmp_path):
    """`--scale 4 --train-questions 8000 --dev-questions 500` ran out of organisation names (~15 s here)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    [line] = [ln for ln in page.splitlines() if ln.startswith("r3rag data world") and "--scale 4" in ln]
    args = line.split("#")[0].split()[1:]
    args[args.index("--out") + 1] = str(tmp_path)
    result = runner.invoke(app, [*args, "--no-report"])
    assert result.exit_code == 0, result.output
    assert len(load_dataset(tmp_path / "train.jsonl")) == 8000
    assert len(load_dataset(tmp_path / "dev.jsonl")) == 500


def test_more_questions_than_the_world_can_make_is_one_line(tmp_path):
    result = runner.invoke(
        app, ["data", "world", "--out", str(tmp_path), "--scale", "0.25", "--train-questions", "100000"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: this world can make at most" in result.output and "--scale" in result.output
    assert not (tmp_path / "train.jsonl").exists()


def test_data_convert_names_the_bad_record(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "1", "question": "q", "golden_answers": ["a"]}\n'
        '{"id": "2", "question": 5, "golden_answers": ["a"]}\n'
    )
    result = runner.invoke(app, ["data", "convert", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "bad.jsonl: record 2, field 'question'" in result.output
    result = runner.invoke(app, ["data", "convert", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no such file" in result.output


def test_data_convert_every_shared_sample(tmp_path):
    expected = {
        "hotpotqa/hotpot_dev_distractor_v1.first53.json": 53,
        "hotpotqa/hotpotqa_dev_distractor_10.hoprag.jsonl": 10,
        "2wikimultihopqa/2wikimultihopqa_dev_10.hoprag.jsonl": 10,
        "2wikimultihopqa/2wikimultihopqa_dev_2.kag_qa_sub.json": 2,
        "musique/musique_ans_dev_10.hoprag.jsonl": 10,
    }
    for name, count in expected.items():
        out = tmp_path / name.split("/")[1]
        result = runner.invoke(app, ["data", "convert", str(sample_file(name)), "--out", str(out)])
        assert result.exit_code == 0, result.output
        [questions] = [p for p in out.iterdir() if p.name != "corpus.jsonl"]
        records = [json.loads(line) for line in questions.read_text().splitlines()]
        assert len(records) == count and all(
            set(r) == {"id", "question", "golden_answers", "metadata"} for r in records
        )
        corpus = (out / "corpus.jsonl").read_text().splitlines()
        assert corpus and all(set(json.loads(line)) == {"id", "contents"} for line in corpus)

    out = tmp_path / "wiki-corpus"
    result = runner.invoke(
        app,
        [
            "data",
            "convert",
            str(sample_file("2wikimultihopqa/2wikimultihopqa_corpus.hipporag.json")),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len((out / "corpus.jsonl").read_text().splitlines()) == 6119
