"""The allocator a command runs with: detected, chosen, and put in place by one re-execution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from r3rag import allocator


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Pretend exactly these allocators are installed (each preloading one fake library)."""

    def install(*names: str) -> None:
        def preloads(name: str):
            if name in ("glibc", "tuned-glibc"):
                return []
            return [Path(f"/lib/lib{name}.so")] if name in names else None

        monkeypatch.setattr(allocator, "preloads", preloads)

    return install


def test_auto_takes_the_first_preferred_allocator_installed(installed) -> None:
    installed("tcmalloc")
    assert allocator.choose("auto") == "tcmalloc"
    installed()
    assert allocator.choose("auto") == "tuned-glibc"
    assert allocator.choose("glibc") == "glibc"
    with pytest.raises(ValueError, match="R3RAG_ALLOCATOR=tcmalloc: not installed here"):
        allocator.choose("tcmalloc")


def test_the_environment_preloads_the_library_before_what_the_user_preloads(
    installed, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed("tcmalloc")
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    assert allocator.allocator_environment("tcmalloc") == {"LD_PRELOAD": "/lib/libtcmalloc.so:/opt/mine.so"}
    tuned = allocator.allocator_environment("tuned-glibc")
    assert tuned["MALLOC_MMAP_MAX_"] == "0" and "LD_PRELOAD" not in tuned


@pytest.fixture
def executions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """What ``os.execve`` would have been asked to run (nothing is run)."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((argv, env)))
    for name in (allocator.ALLOCATOR_ENV, "_R3RAG_ALLOCATOR_CHOSEN", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_a_model_command_is_reexecuted_once_under_the_chosen_allocator(
    installed, executions, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    installed("tcmalloc")
    command_line = ["/venv/bin/python", "/venv/bin/r3rag", "train", "--config", "p.yaml"]  # sys.orig_argv
    allocator.reexecute(["train", "--config", "p.yaml"], command_line)
    ((argv, env),) = executions
    assert argv == [sys.executable, "/venv/bin/r3rag", "train", "--config", "p.yaml"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc.so" and env["R3RAG_ALLOCATOR"] == "tcmalloc"
    notice = capsys.readouterr().err
    assert (
        "allocator: tcmalloc (/lib/libtcmalloc.so)" in notice
        and "R3RAG_ALLOCATOR=glibc turns it off" in notice
    )
    monkeypatch.setenv("R3RAG_ALLOCATOR", "tcmalloc")  # the re-executed process: nothing more to do
    monkeypatch.setenv("_R3RAG_ALLOCATOR_CHOSEN", "tcmalloc")
    allocator.reexecute(["train"])
    assert len(executions) == 1


@pytest.mark.parametrize(
    ("argv", "environment"),
    [
        (["data", "world", "--out", "w"], {}),  # runs no model
        (["train"], {"R3RAG_ALLOCATOR": "glibc"}),  # turned off
        (["train"], {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}),  # the user chose one already
    ],
)
def test_no_reexecution_when_it_is_not_wanted(
    installed, executions, monkeypatch: pytest.MonkeyPatch, argv: list[str], environment: dict[str, str]
) -> None:
    installed("tcmalloc")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    allocator.reexecute(argv)
    assert executions == []


def test_an_allocator_that_is_not_installed_is_one_line(
    installed, executions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed()
    monkeypatch.setenv("R3RAG_ALLOCATOR", "tcmalloc")
    with pytest.raises(SystemExit) as exit_:
        allocator.reexecute(["sft"])
    assert exit_.value.code == 2 and "R3RAG_ALLOCATOR=tcmalloc: not installed here" in capsys.readouterr().err


def test_an_unknown_allocator_is_named_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match="R3RAG_ALLOCATOR=mimalloc: unknown; use auto, glibc, tcmalloc, tuned"
    ):
        allocator.choose("mimalloc")


def test_the_reexecuted_process_runs_with_the_settings_it_announces() -> None:
    """End to end, in real processes: the same command line runs again, once, with the settings announced."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_R3RAG_ALLOCATOR_CHOSEN")}
    env["R3RAG_ALLOCATOR"] = "tuned-glibc"
    probe = "import os, sys; from r3rag.allocator import reexecute; reexecute(sys.argv[1:]); "
    probe += "print(os.environ['MALLOC_MMAP_MAX_'], os.environ['R3RAG_ALLOCATOR'])"
    child = subprocess.run([sys.executable, "-c", probe, "sft"], env=env, capture_output=True, text=True)
    assert child.returncode == 0 and child.stdout.split() == ["0", "tuned-glibc"], child.stderr
    assert child.stderr.count("allocator: tuned-glibc") == 1
    cli = subprocess.run(
        [sys.executable, "-m", "r3rag", "sft", "--help"], env=env, capture_output=True, text=True, check=True
    )
    assert "allocator: tuned-glibc" in cli.stderr and "Usage: r3rag sft" in cli.stdout
