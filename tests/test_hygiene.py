"""The suite's own rules: tests that need the real dataset samples skip without their folder (and the run
says so), and fail in CI when a sample is lost from a present folder; property tests are seeded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sample_data
from sample_data import sample_file


def test_a_missing_sample_skips_outside_ci(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sample_data.SAMPLE_DATA", tmp_path)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-sample.jsonl is absent"):
        sample_file("no-such-sample.jsonl")


def test_a_sample_lost_from_a_present_folder_fails_in_ci(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sample_data.SAMPLE_DATA", tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="the folder is there but this sample was lost"):
        sample_file("no-such-sample.jsonl")


def test_without_the_sample_folder_ci_skips_and_the_run_says_so(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sample_data.SAMPLE_DATA", tmp_path / "absent")
    monkeypatch.setattr("sample_data.ABSENT", [])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.skip.Exception, match="x.jsonl is absent"):
        sample_file("hotpotqa/x.jsonl")
    assert [str(tmp_path / "absent" / "hotpotqa" / "x.jsonl")] == sample_data.ABSENT


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
