"""One evaluation run folder, from opening it to its report: what ``r3rag eval`` and the quickstart share.

A folder is bound to one setting (model, retriever, questions, protocol): :func:`open_run` builds the
manifest of the setting asked for and refuses a folder whose results come from another one, so a resumed
run never mixes two settings in one table. :func:`run_and_report` then runs only the missing predictions and
rewrites the report from the whole predictions file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from r3rag.config import EvalConfig, RetrievalConfig
from r3rag.evaluation.manifest import (
    build_manifest,
    describe_retriever,
    differences,
    merge_manifests,
    read_run_manifest,
    write_run_manifest,
)
from r3rag.evaluation.report import write_report
from r3rag.evaluation.runner import NO_RETRIEVAL, EvalDataset, EvalRunner, Progress
from r3rag.gold import resolve_gold_match
from r3rag.llm.base import Generator
from r3rag.retrieval import open_retriever
from r3rag.retrieval.base import Retriever
from r3rag.rewards.judges import CorrectnessJudge, endpoint_generator


def open_run(
    config: EvalConfig,
    datasets: Sequence[EvalDataset],
    model: dict[str, Any],
    index: str | None,
    out: Path,
) -> tuple[dict[str, Any], Retriever | None]:
    """The run's manifest and retriever (None when no method retrieves), after checking ``out``.

    ``model`` is :func:`~r3rag.evaluation.manifest.describe_model`'s description. This is where the questions
    meet the index, so it decides, per dataset, how gold passages are recognised
    (:func:`~r3rag.gold.resolve_gold_match`) and records it in the manifest. Raises ValueError, naming the
    fields that differ, when ``out`` holds results of another setting, and naming the question file when
    ``reference_match: id`` finds none of its gold ids in the index; otherwise writes the (merged) manifest
    and the config into ``out``, before any model is loaded.
    """
    retrieving = any(m not in NO_RETRIEVAL for m in config.methods)
    retriever = open_retriever(RetrievalConfig(source=index)) if index is not None and retrieving else None
    gold = {d.name: resolve_gold_match(config.judge.reference_match, d.sources, retriever) for d in datasets}
    manifest = build_manifest(
        config,
        model,
        describe_retriever(index) if index is not None else {"kind": "none", "source": None},
        {d.name: d.describe() for d in datasets},
        {name: match.to_dict() for name, match in gold.items()},
    )
    old = read_run_manifest(out)
    if old is not None:
        changed = differences(old, manifest)
        if changed:
            raise ValueError(
                f"{out} holds results of another setting ({'; '.join(changed)}); use another --out"
            )
        manifest = merge_manifests(old, manifest)
    write_run_manifest(out, manifest)
    config.to_yaml(out / "config.yaml")
    return manifest, retriever


def run_and_report(
    config: EvalConfig,
    generator: Generator,
    retriever: Retriever | None,
    manifest: dict[str, Any],
    datasets: Sequence[EvalDataset],
    out: Path,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Path]:
    """Run the predictions still missing from ``out``, then write the report; return its files by kind."""
    judge = CorrectnessJudge(config.judge, endpoint_generator(config.judge))
    gold = {name: entry["rule"] for name, entry in manifest["gold_match"].items()}
    runner = EvalRunner(config, generator, retriever, judge, out, gold, on_progress=on_progress)
    records = runner.run(datasets)
    return write_report(out, records, config, manifest)
