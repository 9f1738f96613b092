"""Questions as veRL's dataset rows (parquet), one per question, read back by the agent loop.

veRL's ``RLHFDataset`` reads ``prompt`` (chat messages: here the first step's, which veRL uses only to filter
over-long prompts; the loop rebuilds every step's prompt itself), ``data_source``, ``reward_model`` and
``extra_info`` (its ``index`` groups a question's samples), and passes every column to the agent loop. The
column ``agent_name`` picks our loop. The question itself travels as JSON in ``extra_info["example"]``: a
parquet schema cannot hold the free-form ``metadata`` of every dataset, and the loop needs it whole.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r3rag.schema import QAExample
from r3rag.steps import build_messages

AGENT_NAME = "r3rag"
"""The name the agent loop is registered under (veRL's ``agent_name`` column)."""


def dataset_row(index: int, example: QAExample, system_prompt: str | None) -> dict[str, Any]:
    """veRL's row for ``example``, the ``index``-th question of its file."""
    return {
        "data_source": example.dataset or "r3rag",
        "agent_name": AGENT_NAME,
        "prompt": build_messages(example.question, (), system_prompt),
        "reward_model": {"style": "r3rag", "ground_truth": list(example.answers)},
        "extra_info": {"index": index, "example": json.dumps(example.to_dict(), ensure_ascii=False)},
    }


def row_example(extra_info: Any) -> QAExample:
    """The question a row's ``extra_info`` holds; an error says which file format is expected."""
    if not isinstance(extra_info, dict) or not isinstance(extra_info.get("example"), str):
        raise ValueError(
            f"extra_info {extra_info!r} holds no r3rag question (extra_info.example): write the parquet "
            "files with `r3rag verl prepare`"
        )
    return QAExample.from_dict(json.loads(extra_info["example"]))


def write_parquet(examples: Sequence[QAExample], path: Path, system_prompt: str | None) -> Path:
    """One row per question (see the module), written atomically: veRL never reads a half-written file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dataset_row(i, ex, system_prompt) for i, ex in enumerate(examples)]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(pa.Table.from_pylist(rows), partial)
    partial.replace(path)
    return path
