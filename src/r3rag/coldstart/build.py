"""A cold-start data run: teacher trajectories, then the SFT examples and statistics, in one folder.

The folder holds ``coldstart.yaml`` (the config, whose ``agent`` section is how R3-RAG-CS must be run),
``trajectories.jsonl`` (the teacher output, appended and resumable), ``sft.jsonl`` (one chat example per
step of every kept trajectory, rewritten from the whole trajectory file on each run) and ``stats.json``.
Resuming under other policy settings would mix trajectories written for different prompts, so it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from r3rag.coldstart.dataset import coldstart_stats, sft_records
from r3rag.coldstart.records import RunSummary, Teacher, TeacherResult, read_records, run_teacher
from r3rag.config import ColdStartConfig
from r3rag.gold import GoldMatch
from r3rag.jsonl import write_jsonl
from r3rag.schema import QAExample

CONFIG_FILE = "coldstart.yaml"
TRAJECTORIES_FILE = "trajectories.jsonl"
SFT_FILE = "sft.jsonl"
STATS_FILE = "stats.json"


def check_resumable(config: ColdStartConfig, out: Path) -> None:
    """Refuse to add to a folder whose trajectories were written for other agent settings or teacher."""
    saved = out / CONFIG_FILE
    if not saved.is_file() or not (out / TRAJECTORIES_FILE).is_file():
        return
    before = ColdStartConfig.from_yaml(saved)
    for name in ("teacher", "agent"):
        if getattr(before, name) != getattr(config, name):
            raise ValueError(
                f"{saved}: {out / TRAJECTORIES_FILE} was written with another '{name}' setting; use the same "
                "settings or another --out"
            )


def build(
    config: ColdStartConfig,
    teacher: Teacher,
    examples: Sequence[QAExample],
    out: str | Path,
    on_result: Callable[[TeacherResult], None] | None = None,
    gold: GoldMatch | None = None,
) -> tuple[RunSummary, dict[str, Any]]:
    """Run the teacher on the questions not yet done, then rebuild the SFT examples and statistics.

    ``gold``, how the teacher recognised gold passages (the oracle's), is recorded in the statistics.
    """
    out = Path(out)
    check_resumable(config, out)
    config.to_yaml(out / CONFIG_FILE)
    summary = run_teacher(teacher, examples, out / TRAJECTORIES_FILE, config.batch_size, on_result)
    records = list(read_records(out / TRAJECTORIES_FILE))
    sft, dropped = sft_records(records, config.agent)
    write_jsonl(out / SFT_FILE, sft)
    stats = coldstart_stats(records, sft, dropped)
    if gold is not None:
        stats["gold_match"] = gold.to_dict()
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return summary, stats
