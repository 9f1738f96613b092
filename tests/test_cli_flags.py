"""Flags generated from the configs: every field reachable and documented, one precedence rule, values read
as their fields read them, and one-line errors that name the flag or the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from r3rag.cli import CONFIG_COMMANDS, app
from r3rag.config import AgentConfig, PPOConfig, WorldConfig
from r3rag.flags import (
    ConfigOptions,
    Presets,
    SettingsError,
    build_config,
    config_fields,
    iter_options,
    parse_flag,
)


def click_command(path: tuple[str, ...]):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


@pytest.mark.parametrize("path", sorted(CONFIG_COMMANDS), ids=" ".join)
def test_every_config_field_is_a_documented_flag(path: tuple[str, ...]) -> None:
    options = CONFIG_COMMANDS[path]
    command = click_command(path)
    by_name = {name: option for option in iter_options(command) for name in option.opts}
    models = [options.model, *options.extra.values()]
    for model in models:
        for flag in config_fields(model):
            option = by_name.get(flag.option)
            assert option is not None, f"r3rag {' '.join(path)}: {flag.dotted} has no {flag.option}"
            assert flag.info.description, f"{model.__name__}.{flag.dotted} has no description"
            assert option.help and option.help.startswith(flag.info.description), flag.option
    assert "--config" in by_name


def test_the_config_commands_are_the_stage_commands() -> None:
    assert set(CONFIG_COMMANDS) == {
        ("ask",),
        ("eval",),
        ("coldstart",),
        ("sft",),
        ("train",),
        ("quickstart",),
        ("data", "world"),
        ("index", "build"),
        ("serve", "retriever"),
        ("serve", "agent"),
        ("view",),
        ("verl", "prepare"),
    }


PPO = ConfigOptions(
    PPOConfig,
    presets=Presets("--preset", {"paper": dict, "small": PPOConfig.small_model_settings}, "paper", "presets"),
)
REQUIRED = {"model": "m", "train": "t.jsonl", "index": "i", "out": "o"}


def test_precedence_defaults_preset_file_flags_each_setting_only_what_it_names(tmp_path: Path) -> None:
    config_file = tmp_path / "ppo.yaml"
    config_file.write_text("actor_lr: 3.0e-5\nrollout:\n  top_k: 3\n  temperature: 0.5\n")
    config = build_config(PPO, {**REQUIRED, "rollout.top_k": 4}, config_file, "small")
    assert isinstance(config, PPOConfig)
    assert config.rollout.top_k == 4  # the flag beats the file
    assert config.rollout.temperature == 0.5  # the file beats the defaults
    assert config.actor_lr == 3e-5  # the file beats the preset (2e-5)
    assert config.critic == "shared" and config.minibatch_size == 8  # the preset beats the defaults
    assert config.rollout.max_doc_chars == 512  # PPO's rollout default, not an agent's (None), survives
    assert config.kl_coef == 0.01  # nothing set it: the default
    paper = build_config(PPO, REQUIRED, None, None)
    assert isinstance(paper, PPOConfig) and paper.actor_lr == 5e-7 and paper.critic == "separate"


def test_a_mapping_field_is_replaced_whole_not_merged() -> None:
    world = ConfigOptions(
        WorldConfig,
        presets=Presets(
            "--difficulty", {"easy": lambda: WorldConfig.difficulty_settings("easy")}, "easy", "x"
        ),
    )
    config = build_config(world, {}, None, None)
    assert isinstance(config, WorldConfig) and config.type_mix == {"compositional": 1.0}
    config = build_config(world, {"type_mix": {"chain": 1.0}}, None, None)
    assert isinstance(config, WorldConfig) and config.type_mix == {"chain": 1.0}


def flag(model, dotted: str):
    (found,) = [f for f in config_fields(model) if f.dotted == dotted]
    return found


def test_values_are_read_as_their_fields_read_them() -> None:
    assert parse_flag(flag(PPOConfig, "actor_lr"), "1e-5") == 1e-5
    assert parse_flag(flag(PPOConfig, "rollout.max_doc_chars"), "null") is None
    assert parse_flag(flag(PPOConfig, "rollout.max_doc_chars"), "none") is None
    assert parse_flag(flag(PPOConfig, "temperatures"), ("0.1,0.4", "1.0")) == [0.1, 0.4, 1.0]
    assert parse_flag(flag(PPOConfig, "temperatures"), ("[0.2, 0.3]",)) == [0.2, 0.3]
    assert parse_flag(flag(PPOConfig, "adam_betas"), "0.9,0.99") == (0.9, 0.99)
    assert parse_flag(flag(WorldConfig, "type_mix"), ("chain=2", "comparison=0.5")) == {
        "chain": 2.0,
        "comparison": 0.5,
    }
    assert parse_flag(flag(WorldConfig, "type_mix"), ("{chain: 1}",)) == {"chain": 1.0}
    assert parse_flag(flag(AgentConfig, "system_prompt"), "yes") == "yes"  # text stays text, not YAML's True
    assert parse_flag(flag(AgentConfig, "stop"), ("END",)) == ["END"]


def test_bad_values_name_the_flag() -> None:
    with pytest.raises(
        SettingsError, match=r"--rollout\.top-k: '0': Input should be greater than or equal to 1"
    ):
        parse_flag(flag(PPOConfig, "rollout.top_k"), "0")
    with pytest.raises(SettingsError, match=r"--critic must be 'separate' or 'shared', not 'both'"):
        parse_flag(flag(PPOConfig, "critic"), "both")
    with pytest.raises(SettingsError, match=r"--type-mix: 'chain'"):
        parse_flag(flag(WorldConfig, "type_mix"), ("chain",))


def test_file_errors_are_one_line_naming_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor_lr: [1\nrollout: 2\n")
    with pytest.raises(SettingsError, match=rf"{bad}: not valid YAML at line 2, column 8"):
        build_config(PPO, REQUIRED, bad, None)
    bad.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="expected a mapping of PPOConfig fields, got list"):
        build_config(PPO, REQUIRED, bad, None)
    bad.write_text("actor_lr: 1e-6\nrollout: 5\nkl_coeff: 0.1\n")
    with pytest.raises(SettingsError) as error:
        build_config(PPO, REQUIRED, bad, None)
    message = str(error.value)
    assert message.startswith(f"{bad} and flags: ") and "\n" not in message
    assert "kl_coeff: unknown field" in message and "rollout" in message
    with pytest.raises(
        SettingsError, match=r"--model \(model\): required: give --model or set model in --config"
    ):
        build_config(PPO, {"train": "t", "index": "i", "out": "o"}, None, None)
    bad.write_bytes(b"actor_lr: \xff\n")
    with pytest.raises(SettingsError, match="not UTF-8 text"):
        build_config(PPO, REQUIRED, bad, None)
