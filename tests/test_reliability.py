"""Nothing lost, nothing doubled, one clear line for every bad input: the defects a careful new user found
(issue 22), each pinned by a test, plus one concurrency test per folder-writing command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from r3rag import runs
from r3rag.cli import app
from r3rag.coldstart.build import TRAJECTORIES_FILE
from r3rag.config import SFTConfig
from r3rag.jsonl import iter_jsonl
from reliability_fixtures import make_files, one_line_error

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("reliability"))


# ------------------------------------------------------------------------------- 1. data convert loses data


def test_convert_refuses_two_inputs_that_would_write_one_file(files, tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(files["train"], tmp_path / folder / "questions.jsonl")
    args = [str(tmp_path / "a" / "questions.jsonl"), str(tmp_path / "b" / "questions.jsonl")]
    error = one_line_error(runner.invoke(app, ["data", "convert", *args, "--out", str(tmp_path / "out")]))
    assert "questions.jsonl" in error and str(tmp_path / "a") in error and str(tmp_path / "b") in error
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_convert_refuses_to_replace_its_own_input(files, tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    shutil.copy(files["train"], source)
    before = source.read_bytes()
    error = one_line_error(runner.invoke(app, ["data", "convert", str(source), "--out", str(tmp_path)]))
    assert "would replace the input" in error and source.read_bytes() == before


# ------------------------------------------------------------------------- 3. ids repeated across files


def test_question_ids_repeated_across_files_are_an_error_naming_both(files, tmp_path: Path) -> None:
    twin = tmp_path / "twin.jsonl"
    shutil.copy(files["train"], twin)
    args = ["coldstart", "--questions", str(files["train"]), "--questions", str(twin)]
    error = one_line_error(
        runner.invoke(app, [*args, "--index", str(files["index"]), "--out", str(tmp_path / "o")])
    )
    assert str(twin) in error and str(files["train"]) in error and "unique" in error
    assert not (tmp_path / "o" / TRAJECTORIES_FILE).exists()


# ------------------------------------------------------------------------- 4. cold start bound to its index


def test_a_cold_start_folder_is_bound_to_its_index(files, tmp_path: Path) -> None:
    args = ["coldstart", "--questions", str(files["train"]), "--out", str(tmp_path / "cs"), "--limit", "2"]
    assert runner.invoke(app, [*args, "--index", str(files["index"])]).exit_code == 0
    error = one_line_error(runner.invoke(app, [*args, "--index", str(files["other_index"])]))
    assert "holds a run with other settings (index:" in error and "another index" in error
    again = runner.invoke(app, [*args, "--index", str(files["index"])])
    assert again.exit_code == 0 and "2 already done" in again.output


# ----------------------------------------------------------------------------- 8. tracebacks, one line each


def test_a_yaml_syntax_error_names_the_file_and_line(files, tmp_path: Path) -> None:
    config = tmp_path / "sft.yaml"
    config.write_text("learning_rate: 1e-4\nepochs: [1\n")
    error = one_line_error(runner.invoke(app, ["sft", "--config", str(config)]))
    assert f"{config}: not valid YAML at line 3" in error


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "1", "question": "caf\xe9?", "golden_answers": ["x"]}\n')
    error = one_line_error(runner.invoke(app, ["data", "convert", str(bad), "--out", str(tmp_path / "out")]))
    assert f"{bad}: record 1: not UTF-8 text" in error


def unwritable_commands(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """Each folder-writing command, with ``out`` as its output folder."""
    return {
        "coldstart": ["coldstart", "--questions", str(files["train"]), "--index", str(files["index"])]
        + ["--out", str(out)],
        "sft": ["sft", "--data", str(files["sft"]), "--model", str(files["model"]), "--out", str(out)],
        "train": ["train", "--model", str(files["model"]), "--train", str(files["train"])]
        + ["--index", str(files["index"]), "--out", str(out)],
        "eval": ["eval", "-d", str(files["dev"]), "--index", str(files["index"]), "-m", "cot"]
        + ["--model", str(files["model"]), "--out", str(out)],
        "data world": ["data", "world", "--out", str(out), "--no-report", "--people", "100", "--cities", "10"]
        + ["--countries", "3", "--organisations", "12", "--works", "24"],
        "index build": ["index", "build", "--corpus", str(files["root"] / "half.jsonl"), "--out", str(out)],
        "quickstart": ["quickstart", "--preset", "tiny", "--out", str(out)],
        "data convert": ["data", "convert", str(files["train"]), "--out", str(out)],
    }


COMMANDS = ["coldstart", "sft", "train", "eval", "data world", "index build", "quickstart", "data convert"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_folder_that_cannot_be_written_is_one_line(files, tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    error = one_line_error(runner.invoke(app, unwritable_commands(files, blocker / "out")[command]))
    assert "a-file" in error and "Not a directory" in error


def test_a_section_given_a_wrong_type_is_one_line(files, tmp_path: Path) -> None:
    config = tmp_path / "ppo.yaml"
    config.write_text("rollout: 5\n")
    args = ["train", "--config", str(config), "--model", str(files["model"]), "--train", str(files["train"])]
    error = one_line_error(
        runner.invoke(app, [*args, "--index", str(files["index"]), "--out", str(tmp_path)])
    )
    assert "rollout" in error and str(config) in error


def test_a_retrieval_server_that_is_down_is_one_line(files, tmp_path: Path) -> None:
    args = ["eval", "-d", str(files["dev"]), "-m", "rag-cot", "--model", str(files["model"])]
    result = runner.invoke(app, [*args, "--index", "http://127.0.0.1:9/", "--out", str(tmp_path / "e")])
    assert "127.0.0.1:9" in one_line_error(result)


def test_a_bad_top_k_sweep_is_refused_before_any_work(files, tmp_path: Path) -> None:
    args = ["eval", "-d", str(files["dev"]), "--index", str(files["index"]), "--model", str(files["model"])]
    error = one_line_error(runner.invoke(app, [*args, "--top-k-sweep", "0,-3", "--out", str(tmp_path / "e")]))
    assert "--top-k-sweep" in error and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- 9. a failed start binds nothing


def test_a_failed_start_binds_nothing(files, tmp_path: Path) -> None:
    out = tmp_path / "e"
    args = ["eval", "-d", str(files["dev"]), "--index", str(files["index"]), "-m", "cot", "--max-steps", "1"]
    args += ["--cot.max-new-tokens", "2", "--out", str(out)]
    error = one_line_error(runner.invoke(app, [*args, "--model", str(tmp_path / "typo-model")]))
    assert "typo-model" in error and not (out / "manifest.json").exists()
    result = runner.invoke(app, [*args, "--model", str(files["model"])])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------ 10. messages that mislead


def test_train_into_a_folder_of_another_command_says_so_in_one_line(files, tmp_path: Path) -> None:
    sft = tmp_path / "sft"
    runs.bind(sft, SFTConfig(data=files["sft"], out=sft), holds_results=True)
    args = ["train", "--model", str(files["model"]), "--train", str(files["train"]), "--index"]
    error = one_line_error(runner.invoke(app, [*args, str(files["index"]), "--out", str(sft)]))
    assert "holds another kind of run" in error


def test_an_eval_rerun_with_a_smaller_limit_reports_its_own_questions(files, tmp_path: Path) -> None:
    out = tmp_path / "e"
    args = ["eval", "-d", str(files["dev"]), "-m", "cot", "--cot.max-new-tokens", "2", "--out", str(out)]
    args += ["--model", str(files["model"])]
    assert runner.invoke(app, [*args, "--limit", "3"]).exit_code == 0
    result = runner.invoke(app, [*args, "--limit", "1"])
    assert result.exit_code == 0 and "(n=1)" in result.stdout
    report = json.loads((out / "results.json").read_text())
    assert {row["n"] for row in report["rows"]} == {1}
    assert json.loads((out / "manifest.json").read_text())["datasets"]
    assert len(list(iter_jsonl(out / "predictions.jsonl"))) == 3  # nothing lost


def test_ask_into_a_file_of_another_model_is_refused(files, tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    args = ["ask", "--questions", str(files["dev"]), "--index", str(files["index"]), "--out", str(out)]
    args += ["--max-new-tokens", "2", "--max-steps", "1"]
    assert runner.invoke(app, [*args, "--model", str(files["model"])]).exit_code == 0
    other = tmp_path / "other-model"
    shutil.copytree(files["model"], other)
    (other / "generation_config.json").write_text("{}")  # another model: its files differ
    error = one_line_error(runner.invoke(app, [*args, "--model", str(other)]))
    assert "holds a run with other settings (model" in error


# ---------------------------------------------------------------------------------- concurrency: one writer


CONCURRENT = [*COMMANDS, "ask"]


@pytest.mark.parametrize("command", CONCURRENT)
def test_a_folder_in_use_by_another_process_is_refused(files, tmp_path: Path, command: str) -> None:
    """A second writer is refused at once, naming the first (the lock is held here, as another process
    would hold it: flock locks of two open files conflict within one process too)."""
    out = tmp_path / "out"
    if command == "ask":
        out = tmp_path / "answers.jsonl"
        args = ["ask", "--questions", str(files["dev"]), "--index", str(files["index"]), "--out", str(out)]
        args += ["--model", str(files["model"])]
    else:
        args = unwritable_commands(files, out)[command]
    beside = command in ("ask", "index build", "data world", "data convert")  # data: the lock lies beside
    lock = runs.locked_beside(out) if beside else runs.locked(out)
    with lock:
        error = one_line_error(runner.invoke(app, args))
    assert "in use by another r3rag process" in error
    leftovers = {p.name for p in out.iterdir()} if out.is_dir() else set()
    assert leftovers <= {runs.LOCK_FILE}  # nothing written, nothing bound


def test_yaml_config_file_keeps_its_order_and_reads_back(files, tmp_path: Path) -> None:
    """The config a folder is bound to is the --config of a rerun: it reads back to the same settings."""
    out = tmp_path / "cs"
    args = ["coldstart", "--questions", str(files["train"]), "--index", str(files["index"]), "--limit", "1"]
    assert runner.invoke(app, [*args, "--out", str(out), "--agent.top-k", "3"]).exit_code == 0
    saved = out / "coldstart.yaml"
    assert yaml.safe_load(saved.read_text())["agent"]["top_k"] == 3
    result = runner.invoke(app, [*args, "--out", str(out), "--config", str(saved)])
    assert result.exit_code == 0 and "1 already done" in result.output
