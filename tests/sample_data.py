"""The real dataset samples (official formats) that some tests read, and what such a test does without them.

The project ships no copy of them (DESIGN.md): they are in ``../shared/data`` next to a checkout, or wherever
``R3RAG_SAMPLE_DATA`` points. Outside CI a missing sample skips its test (a contributor without the folder can
still run the suite); in CI (``CI`` set, as every CI service does) it fails the test, so a CI run that lost
the data cannot pass with those tests silently skipped.
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
    skips the calling test when it is absent, or fails it in CI."""
    path = SAMPLE_DATA / relative
    if not path.is_file():
        missing(path)
    return path


def missing(path: Path) -> NoReturn:
    message = f"{path} is absent (R3RAG_SAMPLE_DATA names the folder of the real dataset samples)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI runs every test, so it must be there", pytrace=False)
    pytest.skip(message)
