"""Suite-wide settings: property tests draw the same examples on every run and every machine.

An unseeded property test can fail once in CI and pass on the rerun, and nobody can reproduce the failure.
With ``derandomize`` Hypothesis seeds each test from the test itself, and no example database carries state
from one run to the next. ``HYPOTHESIS_PROFILE=explore`` draws fresh examples (to look for new failures on
purpose; a failure prints the ``@reproduce_failure`` blob to pin it).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from hypothesis import settings

import sample_data

# tests/verl_integration/ runs in .venv-verl (`make test`), which has veRL; r3rag's own venv cannot import it.
collect_ignore = [] if importlib.util.find_spec("verl") else ["verl_integration"]

settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line saying that the tests of the real samples were skipped for want of their folder."""
    if sample_data.ABSENT:
        terminalreporter.write_line(
            f"{len(sample_data.ABSENT)} tests of the real dataset samples skipped: "
            f"no {sample_data.SAMPLE_DATA} (set R3RAG_SAMPLE_DATA to the samples folder to run them)",
            yellow=True,
        )
