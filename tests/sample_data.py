"""The real dataset samples (official formats) that some tests read, and what such a test does without them.

The project ships no copy of them (DESIGN.md): they are in ``../shared/data`` next to a checkout, or wherever
``R3RAG_SAMPLE_DATA`` points. Where the folder is absent, their tests skip (DESIGN.md: a contributor or a CI
clone without it still runs the suite), and the end of the run says so in one line naming the folder, so the
skip is never silent. Where the folder is there but a sample is missing from it, the data was lost: the test
skips outside CI and fails in CI (``CI`` set, as every CI service does), so a CI run cannot pass on damaged
data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

SAMPLE_DATA = Path(
    os.environ.get("R3RAG_SAMPLE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def sample_file(relative: str) -> Path:
    """The sample at ``relative`` (e.g. ``musique/musique_ans_dev_10.hoprag.jsonl``) in the sample folder;
    skips the calling test when it is absent, or fails it in CI when the folder is there (a lost sample)."""
    path = SAMPLE_DATA / relative
    if not path.is_file():
        missing(path)
    return path


ABSENT: list[str] = []
"""The samples whose tests skipped because the whole folder is absent (counted at the end of the run)."""


def missing(path: Path) -> NoReturn:
    message = f"{path} is absent (R3RAG_SAMPLE_DATA names the folder of the real dataset samples)"
    if not SAMPLE_DATA.is_dir():
        ABSENT.append(str(path))
        pytest.skip(message)
    if os.environ.get("CI"):
        pytest.fail(f"{message}; the folder is there but this sample was lost", pytrace=False)
    pytest.skip(message)
