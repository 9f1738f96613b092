"""The ``r3rag`` command line: one sub-command per stage, each usable alone on files a person can open."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from r3rag import __version__

app = typer.Typer(
    help="R3-RAG: train a language model to reason and retrieve step by step, run it, and evaluate it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Make and convert data: the synthetic world, and HotpotQA/2Wiki/MuSiQue -> FlashRAG jsonl.")
app.add_typer(data_app, name="data")

console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"r3rag {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """R3-RAG: train a language model to reason and retrieve step by step, run it, and evaluate it."""


def fail(message: str) -> typer.Exit:
    """Print a one-line error (no traceback: the message names the file and field) and exit with status 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def existing_file(path: Path) -> Path:
    if not path.is_file():
        raise fail(f"{path}: no such file")
    return path
