"""The memory allocator r3rag's commands run with, chosen before the process does any work.

Training on a CPU allocates and frees the same large tensors every step. glibc's malloc hands the large ones
back to the kernel and faults them in again the next step; a caching allocator keeps them. Measured on the
project's machines (``benchmarks/allocators.py``), that makes an SFT or PPO step 1.5-2.5x faster depending on
the CPU. An allocator can only be chosen before a process starts (``LD_PRELOAD``, malloc's environment), so
the ``r3rag`` command re-executes itself once with it set, before importing anything heavy, and says so in
one line. ``R3RAG_ALLOCATOR`` chooses: ``auto`` (the default: the best one found, in :data:`PREFERENCE`
order), one by name, or ``glibc`` for the system's malloc untouched. The child process sees the variable
set to what was chosen, which is also how it knows not to re-execute again.

Nothing here is needed for correctness: a run is the same under any allocator, only faster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

ALLOCATOR_ENV = "R3RAG_ALLOCATOR"
_CHOSEN_ENV = "_R3RAG_ALLOCATOR_CHOSEN"
"""Set in the re-executed process: it runs under the allocator it names and must not re-execute again."""
PREFERENCE = ("tcmalloc", "tuned-glibc")
"""Preferred first, as measured (docs/results.md, "Speed on a CPU"): tcmalloc where the system has it (SFT
step 1.73x glibc's on a Zen 4 EPYC, 2.5x on a Xeon with AMX), else glibc's malloc tuned to keep what it
frees (1.54x on the EPYC), which needs nothing installed. ``glibc`` (untouched) is never chosen by ``auto``.
jemalloc (default options) was no faster than glibc and the ``tbb`` wheel's allocator slower: not offered."""

_TCMALLOC = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
_TUNED_GLIBC = {
    # Never hand freed memory back by unmapping or trimming: a step's buffers are reused by the next step.
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 62),
    "MALLOC_TOP_PAD_": str(1 << 30),
}
RUNS_MODELS = frozenset({"ask", "eval", "coldstart", "sft", "train", "quickstart", "serve"})
"""The commands that run a model or an index on the CPU: only these are re-executed."""


def _system_library(names: Sequence[str]) -> Path | None:
    for folder in _LIBRARY_DIRS:
        for name in names:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def preloads(name: str) -> list[Path] | None:
    """The libraries ``name`` preloads (empty for the glibc variants), or None when it is not installed."""
    if name in ("glibc", "tuned-glibc"):
        return [] if sys.platform.startswith("linux") else None
    if name != "tcmalloc":
        raise ValueError(f"{ALLOCATOR_ENV}={name}: unknown; use auto, {', '.join(('glibc', *PREFERENCE))}")
    library = _system_library(_TCMALLOC)
    return None if library is None else [library]


def available_allocators() -> list[str]:
    """Every allocator this machine has, ``glibc`` first, then in :data:`PREFERENCE` order."""
    return [name for name in ("glibc", *PREFERENCE) if preloads(name) is not None]


def allocator_environment(name: str) -> dict[str, str]:
    """The environment a process must start with to run under ``name``."""
    libraries = preloads(name)
    if libraries is None:
        raise ValueError(
            f"{ALLOCATOR_ENV}={name}: not installed here (found: {', '.join(available_allocators())})"
        )
    environment = dict(_TUNED_GLIBC) if name == "tuned-glibc" else {}
    if libraries:
        present = os.environ.get("LD_PRELOAD", "")
        environment["LD_PRELOAD"] = ":".join([*map(str, libraries), *([present] if present else [])])
    return environment


def choose(requested: str) -> str:
    """The allocator to run with: ``auto`` picks the first of :data:`PREFERENCE` that is installed."""
    if requested != "auto":
        allocator_environment(requested)  # refuses one that is not installed
        return requested
    found = available_allocators()
    return next((name for name in PREFERENCE if name in found), "glibc")


def reexecute(argv: Sequence[str], command_line: Sequence[str] | None = None) -> None:
    """Re-execute this process's command line (``sys.orig_argv``: ``r3rag ...`` or ``python -m r3rag ...``)
    under the chosen allocator, once, if ``argv`` (the arguments of ``r3rag``) names a command that runs a
    model; return when that is done already or not needed.

    Does nothing when ``LD_PRELOAD`` already names a malloc, when this process was started by the
    re-execution, or when the user chose ``glibc``.
    """
    command = next((word for word in argv if not word.startswith("-")), None)
    if os.environ.get(_CHOSEN_ENV) or command not in RUNS_MODELS:
        return  # re-executed already (whatever happens, never twice), or nothing to gain
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return
    requested = os.environ.get(ALLOCATOR_ENV, "auto")
    try:
        name = choose(requested)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if name == "glibc":
        return
    environment = {
        **os.environ,
        **allocator_environment(name),
        ALLOCATOR_ENV: name,
        _CHOSEN_ENV: name,
    }
    what = environment.get("LD_PRELOAD", "") if name != "tuned-glibc" else "malloc's caching settings"
    print(f"allocator: {name} ({what}); {ALLOCATOR_ENV}=glibc turns it off", file=sys.stderr, flush=True)
    line = list(sys.orig_argv if command_line is None else command_line)
    os.execve(sys.executable, [sys.executable, *line[1:]], environment)
