"""The suite's own rules: tests that need the real dataset samples skip without them on a laptop and fail
without them in CI; property tests are seeded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sample_data import sample_file


def test_a_missing_sample_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-sample.jsonl is absent"):
        sample_file("no-such-sample.jsonl")


def test_a_missing_sample_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI runs every test"):
        sample_file("no-such-sample.jsonl")


def test_a_present_sample_is_its_path(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sample_data.SAMPLE_DATA", tmp_path)
    (tmp_path / "hotpotqa").mkdir()
    (tmp_path / "hotpotqa" / "x.jsonl").write_text("{}\n")
    assert sample_file("hotpotqa/x.jsonl") == tmp_path / "hotpotqa" / "x.jsonl"


DRAWN: list[int] = []


@settings(max_examples=5)
@given(st.integers())
def _draw(x: int) -> None:
    DRAWN.append(x)


def test_property_tests_draw_the_same_examples_every_run() -> None:
    """The conftest profile derandomizes Hypothesis, and a test's own @settings keep it (they inherit)."""
    assert settings.default.derandomize and settings.default.database is None
    _draw()
    first = list(DRAWN)
    DRAWN.clear()
    _draw()
    assert first == DRAWN and len(first) == 5
