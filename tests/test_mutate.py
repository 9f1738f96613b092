"""tools/mutate.py: the catalogue cannot rot silently, and a mutant runs in a copy, never in src/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutate.py"


@pytest.fixture(scope="module")
def mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate_tool"] = module
    spec.loader.exec_module(module)
    return module


def test_the_catalogue_matches_the_code(mutate: ModuleType) -> None:
    assert mutate.check(mutate.MUTATIONS, mutate.ROOT / mutate.PACKAGE) == []
    assert len(mutate.MUTATIONS) >= 40
    assert len({(m.file, m.original, m.replacement) for m in mutate.MUTATIONS}) == len(mutate.MUTATIONS)


def test_a_snippet_not_found_exactly_once_is_an_error(mutate: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text("x = 1\ny = 1\n")
    missing = mutate.Mutation("steps.py", "z = 1", "z = 2", "gone")
    twice = mutate.Mutation("steps.py", " = 1", " = 2", "ambiguous")
    unmapped = mutate.Mutation("nowhere.py", "x", "y", "no tests")
    errors = mutate.check([missing, twice, unmapped], tmp_path)
    assert any("occurs 0 times" in e and "gone" in e for e in errors)
    assert any("occurs 2 times" in e and "ambiguous" in e for e in errors)
    assert any("no test files mapped" in e for e in errors) and any("no such file" in e for e in errors)


def test_a_mutant_is_written_to_the_copy_and_undone(
    mutate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "r3rag").mkdir()
    target = tmp_path / "r3rag" / "steps.py"
    target.write_text("limit = 1\n")
    seen = []

    def tests_see(src: Path, files: object, timeout: float) -> tuple[bool, str]:
        seen.append(target.read_text())
        return False, "t::x"

    monkeypatch.setattr(mutate, "run_tests", tests_see)
    outcome = mutate.mutate_one(mutate.Mutation("steps.py", "= 1", "= 2", "d"), tmp_path, 1.0)
    assert seen == ["limit = 2\n"] and target.read_text() == "limit = 1\n"
    assert outcome.killed and outcome.detail == "t::x"


def test_the_first_failing_test_keeps_its_parameters(mutate: ModuleType) -> None:
    summary = "x\nFAILED tests/t.py::test_a[I said in step 4: x] - AssertionError: no\nFAILED tests/t.py::b\n"
    assert mutate._FAILED.search(summary).group(1) == "tests/t.py::test_a[I said in step 4: x]"
