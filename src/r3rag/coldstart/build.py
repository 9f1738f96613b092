"""A cold-start data run: teacher trajectories, then the SFT examples and statistics, in one folder.

The folder holds ``coldstart.yaml`` (the config, whose ``agent`` section is how R3-RAG-CS must be run),
``trajectories.jsonl`` (the teacher output, appended and resumable), ``trajectories.failed.jsonl``
(questions whose model calls failed after their retries: the next run retries them), ``sft.jsonl`` (one chat
example per step of every kept trajectory, rewritten from the whole trajectory file on each run) and
``stats.json``.
Resuming under other settings would mix trajectories written for different prompts or by another teacher, so
it is refused (naming the fields), and one process writes the folder at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from r3rag import runs
from r3rag.coldstart.dataset import coldstart_stats, sft_records
from r3rag.coldstart.records import RunSummary, Teacher, TeacherResult, read_records, run_teacher
from r3rag.config import JUDGE_CALL_FIELDS, ColdStartConfig
from r3rag.gold import GoldMatch
from r3rag.jsonl import write_jsonl
from r3rag.retrieval.index import describe_retriever
from r3rag.schema import QAExample

CONFIG_FILE = "coldstart.yaml"
TRAJECTORIES_FILE = "trajectories.jsonl"
SFT_FILE = "sft.jsonl"
STATS_FILE = "stats.json"
INPUTS_FILE = "inputs.yaml"
RESUMABLE_CHANGES = frozenset({"batch_size", *(f"judge.{name}" for name in JUDGE_CALL_FIELDS)})
"""Settings a resumed cold start may change: how many questions are in flight, or how the judge's endpoint is
called, changes no trajectory."""


def build(
    config: ColdStartConfig,
    teacher: Teacher,
    examples: Sequence[QAExample],
    out: str | Path,
    on_result: Callable[[TeacherResult], None] | None = None,
    gold: GoldMatch | None = None,
    index: str | None = None,
) -> tuple[RunSummary, dict[str, Any]]:
    """Run the teacher on the questions not yet done, then rebuild the SFT examples and statistics.

    ``gold``, how the teacher recognised gold passages (the oracle's), is recorded in the statistics.
    ``index`` (the folder or URL the teacher retrieves from) binds the folder to that index: trajectories
    retrieved from another one would be mixed with these, or wrongly skipped as done.
    """
    out = Path(out)
    with runs.locked(out):
        started = (out / TRAJECTORIES_FILE).is_file()
        runs.bind(out, config, holds_results=started, may_change=RESUMABLE_CHANGES, file=CONFIG_FILE)
        if index is not None:
            identity = describe_retriever(index)
            inputs = {"index": identity["fingerprint"] or identity["source"]}
            hint = f"its trajectories come from another index ({INPUTS_FILE}); use it, or another --out"
            runs.bind(out, inputs, holds_results=started, file=INPUTS_FILE, hint=hint)
        summary = run_teacher(teacher, examples, out / TRAJECTORIES_FILE, on_result)
        records = list(read_records(out / TRAJECTORIES_FILE))
        sft, dropped = sft_records(records, config.agent)
        write_jsonl(out / SFT_FILE, sft)
        stats = coldstart_stats(records, sft, dropped)
        if gold is not None:
            stats["gold_match"] = gold.to_dict()
        runs.write_text(out / STATS_FILE, json.dumps(stats, indent=2) + "\n")
    return summary, stats
