"""`make bench`: run every benchmark script in this folder, one after another, then one summary table.

Each script prints its own tables as it runs (echoed here as they stream); the final table gathers the
headline figures each one reports with `_summary.report`, with its status and wall time, so all key results
can be read at once. Files starting with `_` are helpers, not benchmarks; `rl_gain.py` is an experiment of
hours, run on its own. Arguments are passed on to every script.

Benchmarks compare ratios measured in one run (ours vs a reference on the same machine) and report
medians: the machines are shared and noisy, so absolute seconds are only indicative.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _summary import parse

HERE = Path(__file__).resolve().parent
EXPERIMENTS = frozenset({"rl_gain.py"})
"""Scripts in this folder that are experiments of hours (cold start, RL runs, evaluations), not benchmarks:
they are run on their own, with their own arguments."""


@dataclass
class Outcome:
    """One benchmark's run: its exit code, wall time, and the (figure, value, target) lines it reported."""

    name: str
    code: int
    seconds: float
    figures: list[tuple[str, str, str]] = field(default_factory=list)


def run(script: Path, args: Sequence[str]) -> Outcome:
    """Run one script, echoing its stdout as it streams except the summary lines, which are collected."""
    start = time.perf_counter()
    figures: list[tuple[str, str, str]] = []
    # Unbuffered, or a child writing to a pipe holds its tables back until it exits.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            parsed = parse(line)
            if parsed is None:
                print(line, end="", flush=True)
            else:
                figures.append(parsed)
    code = process.returncode
    # As a shell reports it: killed by signal N is 128 + N (Popen gives -N, which main's max() would hide).
    return Outcome(script.name, code if code >= 0 else 128 - code, time.perf_counter() - start, figures)


def table(outcomes: Sequence[Outcome]) -> str:
    """The markdown summary: a row per figure; status and wall time on each benchmark's first row."""
    lines = [
        "| benchmark | figure | value | reference / target | status | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        status = "ok" if outcome.code == 0 else f"FAILED ({outcome.code})"
        for i, (figure, value, target) in enumerate(outcome.figures or [("-", "", "")]):
            tail = (status, f"{outcome.seconds:.0f} s") if i == 0 else ("", "")
            lines.append(f"| {' | '.join((outcome.name, figure, value, target, *tail))} |")
    return "\n".join(lines)


def main(folder: Path = HERE, args: Sequence[str] = ()) -> int:
    """Run every benchmark in ``folder`` and print the summary table; the exit code is the largest one."""
    scripts = sorted(
        p
        for p in folder.glob("*.py")
        if p.name != Path(__file__).name and not p.name.startswith("_") and p.name not in EXPERIMENTS
    )
    outcomes: list[Outcome] = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        outcomes.append(run(script, args))
    print(f"\n{table(outcomes)}")
    return max((o.code for o in outcomes), default=0)


if __name__ == "__main__":
    sys.exit(main(HERE, sys.argv[1:]))
