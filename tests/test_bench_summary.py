"""`make bench`'s summary: run_all collects the figures benchmarks report and shows failures.

The real benchmarks take minutes, so run_all runs two tiny scripts here instead: one that reports figures
through `_summary.report` among its own output, and one that fails after printing a line.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

REPORTS = f"""
import sys
sys.path.insert(0, {str(BENCHMARKS)!r})
from _summary import report

print("| its own table |")
report("throughput", "1,234 q/s", ">= 1,000 q/s")
report("ratio", "5.7x")
"""

FAILS = """
import sys

print("about to fail")
sys.exit(3)
"""


@pytest.fixture
def run_all(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # run_all imports _summary as a sibling, as scripts do
    return importlib.import_module("run_all")


def test_table_has_figures_and_failures(
    run_all: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_reports.py").write_text(REPORTS)
    (tmp_path / "b_fails.py").write_text(FAILS)
    (tmp_path / "_helper.py").write_text("raise SystemExit('helpers are not benchmarks')")

    code = run_all.main(tmp_path)

    out = capsys.readouterr().out
    assert code == 3
    assert "| its own table |" in out and "about to fail" in out  # the scripts' own output streams through
    assert "SUMMARY" not in out  # summary lines are gathered into the table, not echoed
    table = out[out.index("| benchmark |") :].splitlines()
    assert table[0] == "| benchmark | figure | value | reference / target | status | wall time |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[:5] for row in rows] == [
        ["a_reports.py", "throughput", "1,234 q/s", ">= 1,000 q/s", "ok"],
        ["a_reports.py", "ratio", "5.7x", "", ""],
        ["b_fails.py", "-", "", "", "FAILED (3)"],
    ]
    assert rows[0][5].endswith(" s") and rows[1][5] == "" and rows[2][5].endswith(" s")


def test_summary_line_round_trip(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    summary = importlib.import_module("_summary")
    summary.report("speed vs rank_bm25", "34x", ">= 20x")
    assert summary.parse(capsys.readouterr().out) == ("speed vs rank_bm25", "34x", ">= 20x")
    assert summary.parse("| a table row |\n") is None
    with pytest.raises(ValueError, match="tab"):
        summary.report("a\tb", "1")


def test_exit_code_of_a_killed_benchmark(run_all: ModuleType, tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert run_all.run(script, ()).code == 128 + 9  # as a shell reports it, so main's max() sees a failure
