"""``r3rag verl prepare``: everything veRL needs to run R3-RAG's PPO, written into one folder.

- ``train.parquet`` / ``dev.parquet``: the questions as veRL's rows (:mod:`~r3rag.integrations.verl.data`);
- ``overrides.txt``: the hydra overrides, one a line: the paper's recipe in veRL's keys and the ``r3rag``
  section the agent loop reads on every worker;
- ``run_verl.sh``: ``python -m verl.trainer.main_ppo`` with those overrides (extra arguments are appended,
  so ``trainer.nnodes=4`` or ``trainer.total_training_steps=3`` can be added at launch).

The gold-matching rule of the reference relevance judge is decided here, where the question files and the
index are both at hand (the workers see neither whole).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from r3rag.config import RetrievalConfig, VerlLoopConfig, VerlPrepareConfig
from r3rag.data.datasets import load_dataset, of_types
from r3rag.gold import resolve_gold_match
from r3rag.integrations.verl.data import write_parquet
from r3rag.integrations.verl.overrides import r3rag_overrides, trainer_overrides
from r3rag.retrieval import open_retriever
from r3rag.rewards.scoring import check_bonus_annotations
from r3rag.schema import QAExample

SCRIPT = "run_verl.sh"


@dataclass(frozen=True, slots=True)
class Prepared:
    """What ``prepare`` wrote, and the agent loop's settings it chose."""

    train: Path
    dev: Path | None
    overrides: list[str]
    script: Path
    loop: VerlLoopConfig


def loop_settings(config: VerlPrepareConfig, sources: dict[str, list[QAExample]]) -> VerlLoopConfig:
    """The agent loop's config: the command's rollout (recording the server's log-probs with
    ``old_logprobs: rollout``), reward, judges and temperatures, the index as its retriever, and the
    gold-matching rule resolved against that index (for the reference relevance judge and the gold-recall
    reward)."""
    retrieval = RetrievalConfig(source=config.index)
    judges = config.judges
    reference = judges.relevance == "reference" and config.reward.mode != "outcome"
    if reference or config.reward.gold_recall:
        rule = resolve_gold_match(judges.reference_match, sources, open_retriever(retrieval)).rule
        judges = judges.model_copy(update={"reference_match": rule})
    return VerlLoopConfig(
        retrieval=retrieval,
        rollout=config.rollout.model_copy(
            update={"record_token_ids": True, "record_logprobs": config.old_logprobs == "rollout"}
        ),
        reward=config.reward,
        judges=judges,
        temperatures=config.temperatures,
        advantage=config.advantage,
    )


def prepare(config: VerlPrepareConfig) -> Prepared:
    """Write the folder the module describes into ``config.out``."""
    out = config.out
    train_examples = of_types(load_dataset(config.train), config.train_types, config.train)
    sources = {str(config.train): train_examples}
    if config.dev is not None:
        sources[str(config.dev)] = load_dataset(config.dev)
    check_bonus_annotations(config.reward, sources)  # before anything is written into the folder
    system = config.rollout.system_prompt
    train = write_parquet(train_examples, out / "train.parquet", system)
    dev = None
    if config.dev is not None:
        dev = write_parquet(sources[str(config.dev)], out / "dev.parquet", system)
    loop = loop_settings(config, sources)
    dev_file = dev.resolve() if dev else None
    overrides = trainer_overrides(config, train.resolve(), dev_file, loop.rollout.max_new_tokens)
    overrides += r3rag_overrides(loop)
    (out / "overrides.txt").write_text("\n".join(overrides) + "\n", encoding="utf-8")
    script = out / SCRIPT
    lines = [
        "#!/usr/bin/env bash",
        "# R3-RAG's PPO on veRL, written by `r3rag verl prepare`. Needs r3rag[verl], vLLM (or SGLang) and",
        "# GPUs; on a Ray cluster, run it on the head node (`ray start --head` there, `ray start",
        "# --address=...` on the others). Extra arguments are appended as further hydra overrides.",
        "# See docs/verl.md.",
        "set -euo pipefail",
        "exec python3 -m verl.trainer.main_ppo \\",
        *(f"  {shlex.quote(o)} \\" for o in overrides),
        '  "$@"',
    ]
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    script.chmod(0o755)
    return Prepared(train, dev, overrides, script, loop)
