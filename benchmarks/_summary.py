"""Headline figures in a machine-readable line, so `make bench` can gather them into one table.

Each benchmark prints its own tables for a reader; `run_all.py` cannot parse those, so each benchmark also
calls `report` for its few headline figures. The line is tab-separated with a fixed first field, which
`run_all.py` picks out of the benchmark's stdout; a benchmark run alone just shows the lines at its end.
"""

from __future__ import annotations

PREFIX = "SUMMARY"


def report(figure: str, value: str, target: str = "") -> None:
    """Print one headline figure: what it is, its value with its unit, and the reference or target it is
    read against (empty when there is none)."""
    fields = (figure, value, target)
    if any("\t" in f or "\n" in f for f in fields):
        raise ValueError(f"a summary field cannot hold a tab or a newline: {fields!r}")
    print("\t".join((PREFIX, *fields)), flush=True)


def parse(line: str) -> tuple[str, str, str] | None:
    """The (figure, value, target) of a line `report` printed, or None for any other line."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 4 or fields[0] != PREFIX:
        return None
    return fields[1], fields[2], fields[3]
