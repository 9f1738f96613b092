"""Fuzzing every command's config file and input files: whatever is wrong with them (cut short, not UTF-8,
a value of the wrong type, an unknown field), the command answers with exit status 2 and one line naming the
file, and leaves nothing behind that a corrected rerun would be refused by or would resume from.

The oracle for config files is the settings validator itself (:func:`r3rag.flags.build_config`): a generated
file is kept only if it is invalid, so no case can start real work.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from r3rag.cli import CONFIG_COMMANDS, app
from r3rag.config import (
    AgentConfig,
    AgentServerConfig,
    IndexBuildConfig,
    PPOConfig,
    RetrieverServerConfig,
    SFTConfig,
    VerlPrepareConfig,
    ViewerConfig,
    WorldConfig,
)
from r3rag.flags import SettingsError, build_config, config_fields
from r3rag.pipeline_config import PipelineConfig
from reliability_fixtures import make_files, one_line_error

runner = CliRunner()
FUZZ = settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RESULTS = {
    "trajectories.jsonl",
    "predictions.jsonl",
    "manifest.json",
    "checkpoints",
    "final",
    "metrics.jsonl",
    "sft.jsonl",
    "done",
    "corpus.jsonl",
}
"""What a run writes once it has started for real: none of it may be left by a refused start."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("fuzz"))


def valid_settings(command: tuple[str, ...], files: dict[str, Path], out: Path) -> dict[str, Any]:
    """A valid config file's content for ``command`` (the flags name nothing: the file says it all)."""
    configs = {
        ("ask",): AgentConfig(max_steps=1),
        ("eval",): None,
        ("coldstart",): None,
        ("sft",): SFTConfig(data=files["sft"], out=out, model=str(files["model"])),
        ("train",): PPOConfig.small_model(
            model=str(files["model"]), train=files["train"], index=str(files["index"]), out=out
        ),
        ("quickstart",): PipelineConfig.preset("tiny"),
        ("data", "world"): WorldConfig(people=100, cities=10, countries=3, organisations=12, works=24),
        ("index", "build"): IndexBuildConfig(corpus=files["root"] / "half.jsonl", out=out),
        ("serve", "retriever"): RetrieverServerConfig(),
        ("serve", "agent"): AgentServerConfig(),
        ("view",): ViewerConfig(),
        ("verl", "prepare"): VerlPrepareConfig(
            model=str(files["model"]), train=files["train"], index=str(files["index"]), out=out
        ),
    }
    config = configs[command]
    if config is None:  # eval and coldstart: their config's defaults, with one setting written out
        return {"max_steps": 2} if command == ("eval",) else {"batch_size": 4}
    return config.model_dump(mode="json")


def invocation(command: tuple[str, ...], files: dict[str, Path], out: Path) -> list[str]:
    """The command's words and the inputs it needs besides its config file."""
    extra = {
        ("ask",): [
            "--questions",
            str(files["dev"]),
            "--index",
            str(files["index"]),
            "--out",
            str(out / "a.jsonl"),
        ],
        ("eval",): ["-d", str(files["dev"]), "--index", str(files["index"]), "--out", str(out)],
        ("coldstart",): [
            "--questions",
            str(files["train"]),
            "--index",
            str(files["index"]),
            "--out",
            str(out),
        ],
        ("quickstart",): ["--out", str(out)],
        ("data", "world"): ["--out", str(out), "--no-report"],
        ("serve", "retriever"): [str(files["index"])],
        ("serve", "agent"): [str(files["index"])],
        ("view",): [str(files["root"])],
    }
    return [*command, *extra.get(command, [])]


WRONG_VALUES = ["not-a-number", {"a": 1}, [1, 2], "no-such-choice", -7, 1e9, "maybe", True]


def corrupt_config(data: st.DataObject, command: tuple[str, ...], valid: dict[str, Any]) -> bytes:
    """One corruption of a valid config file, drawn by hypothesis."""
    text = yaml.safe_dump(valid, sort_keys=False)
    kind = data.draw(
        st.sampled_from(["encoding", "truncation", "wrong type", "unknown field", "not a mapping"])
    )
    if kind == "encoding":
        at = data.draw(st.integers(0, len(text)))
        return text[:at].encode() + b"\xff\xfe" + text[at:].encode()
    if kind == "truncation":
        return text[: data.draw(st.integers(1, max(1, len(text) - 1)))].encode() + b"\n  - {unclosed"
    if kind == "not a mapping":
        return b"- just\n- a list\n"
    if kind == "unknown field":
        return (text + "no_such_setting: 3\n").encode()
    flags = config_fields(CONFIG_COMMANDS[command].model)
    flag = data.draw(st.sampled_from(flags))
    value = data.draw(st.sampled_from(WRONG_VALUES))
    adapter = TypeAdapter(flag.annotation)
    try:
        adapter.validate_python(value)
        assume(False)  # the field takes this value: not a corruption of this field
    except ValidationError:
        pass
    node = valid
    for part in flag.path[:-1]:
        node = node.setdefault(part, {})
    node[flag.path[-1]] = value
    return yaml.safe_dump(valid, sort_keys=False).encode()


def leaves_nothing_bound(out: Path) -> None:
    if out.is_dir():
        assert not RESULTS & {p.name for p in out.iterdir()}, sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS), ids=" ".join)
@FUZZ
@given(data=st.data())
def test_a_bad_config_file_is_one_line_and_starts_nothing(
    files: dict[str, Path], command: tuple[str, ...], data
) -> None:
    root = files["root"] / ("config-" + "-".join(command))  # the same paths in every example: hypothesis
    root.mkdir(exist_ok=True)  # replays a case only if the valid file it corrupts is the same
    out = root / "out"
    content = corrupt_config(data, command, valid_settings(command, files, out))
    config = root / "config.yaml"
    config.write_bytes(content)
    try:  # the oracle: only settings the validator refuses are a case
        build_config(CONFIG_COMMANDS[command], {}, config, None)
        assume(False)
    except SettingsError:
        pass
    result = runner.invoke(app, [*invocation(command, files, out), "--config", str(config)])
    assert str(config) in one_line_error(result)
    leaves_nothing_bound(out)


# ----------------------------------------------------------------------------------------- input files


def input_cases(files: dict[str, Path], bad: Path, out: Path) -> dict[str, list[str]]:
    """Each command that reads a data file, reading ``bad`` instead."""
    model = ["--model", str(files["model"])]
    return {
        "ask": [
            "ask",
            "--questions",
            str(bad),
            "--index",
            str(files["index"]),
            "--out",
            str(out / "a.jsonl"),
        ],
        "eval": [
            "eval",
            "-d",
            str(bad),
            "--index",
            str(files["index"]),
            "-m",
            "cot",
            "--out",
            str(out),
            *model,
        ],
        "coldstart": [
            "coldstart",
            "--questions",
            str(bad),
            "--index",
            str(files["index"]),
            "--out",
            str(out),
        ],
        "sft": ["sft", "--data", str(bad), "--out", str(out), "--max-steps", "1", *model],
        "train": ["train", "--train", str(bad), "--index", str(files["index"]), "--out", str(out), *model],
        "index build": ["index", "build", "--corpus", str(bad), "--out", str(out)],
        "data convert": ["data", "convert", str(bad), "--out", str(out)],
    }


SOURCES = {
    "ask": "dev",
    "eval": "dev",
    "coldstart": "train",
    "sft": "sft",
    "train": "train",
    "index build": "corpus",
    "data convert": "train",
}


def corrupt_jsonl(data: st.DataObject, text: str, typed: frozenset[str]) -> bytes:
    """A JSON-lines file cut inside a line, with a byte that is not UTF-8, or with a field of the wrong type
    (every field of a record is required by its reader or typed: a list or number where text belongs)."""
    lines = text.splitlines(keepends=True)
    kind = data.draw(st.sampled_from(["truncation", "encoding", "wrong type"]))
    number = data.draw(st.integers(0, len(lines) - 1))
    line = lines[number]
    if kind == "truncation":  # cut strictly inside the record: what is left of it is no JSON object
        return (
            "".join(lines[:number]).encode()
            + line[: data.draw(st.integers(1, len(line.rstrip()) - 1))].encode()
        )
    if kind == "encoding":
        at = data.draw(st.integers(0, len(line) - 1))
        damaged = line[:at].encode() + b"\xc3\x28" + line[at:].encode()
        return "".join(lines[:number]).encode() + damaged + "".join(lines[number + 1 :]).encode()
    record = json.loads(line)
    key = data.draw(st.sampled_from(sorted(k for k in record if k in typed)))
    record[key] = {"not": "this"}  # an object where text or a list belongs
    lines[number] = json.dumps(record) + "\n"
    return "".join(lines).encode()


QUESTION_FIELDS = frozenset({"id", "question", "golden_answers"})
TYPED_FIELDS = {
    "train": QUESTION_FIELDS,
    "dev": QUESTION_FIELDS,
    "corpus": frozenset({"id", "contents"}),
    "sft": frozenset({"messages", "example_id"}),
}
"""The fields each kind of file's reader uses, and refuses a JSON object in place of."""


@pytest.mark.parametrize("command", sorted(SOURCES))
@FUZZ
@given(data=st.data())
def test_a_damaged_input_file_is_one_line_naming_it(files: dict[str, Path], command: str, data) -> None:
    root = Path(tempfile.mkdtemp(dir=files["root"]))
    source = files[SOURCES[command]]
    bad = root / f"bad{source.suffix}"
    bad.write_bytes(corrupt_jsonl(data, source.read_text(encoding="utf-8"), TYPED_FIELDS[SOURCES[command]]))
    out = root / "out"
    result = runner.invoke(app, input_cases(files, bad, out)[command])
    assert str(bad) in one_line_error(result)
    leaves_nothing_bound(out)
