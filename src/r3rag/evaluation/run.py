"""One evaluation run folder, from opening it to its report: what ``r3rag eval`` and the quickstart share.

A folder is bound to one setting (model, retriever, questions, protocol): :func:`open_run` builds the
manifest of the setting asked for and refuses a folder whose results come from another one, so a resumed
run never mixes two settings in one table. :func:`run_and_report` then binds the folder (once the model has
loaded: a run that fails to start binds nothing), runs only the missing predictions, holding the folder's
lock, and rewrites the report from the whole predictions file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from r3rag import runs
from r3rag.config import RetrievalConfig
from r3rag.evaluation.config import EvalConfigBase
from r3rag.evaluation.manifest import (
    build_manifest,
    differences,
    merge_manifests,
    read_run_manifest,
    write_run_manifest,
)
from r3rag.evaluation.methods.registry import retrieving
from r3rag.evaluation.report import write_report
from r3rag.evaluation.runner import EvalDataset, EvalRunner, Progress
from r3rag.gold import resolve_gold_match
from r3rag.llm.base import Generator
from r3rag.retrieval import open_retriever
from r3rag.retrieval.base import Retriever
from r3rag.retrieval.index import describe_retriever
from r3rag.rewards.judges import CorrectnessJudge, endpoint_generator


def open_run(
    config: EvalConfigBase,
    datasets: Sequence[EvalDataset],
    model: dict[str, Any],
    index: str | None,
    out: Path,
) -> tuple[dict[str, Any], Retriever | None]:
    """The run's manifest and retriever (None when no method retrieves), after checking ``out``.

    ``model`` is :func:`~r3rag.llm.models.describe_model`'s description. This is where the questions
    meet the index, so it decides, per dataset, how gold passages are recognised
    (:func:`~r3rag.gold.resolve_gold_match`) and records it in the manifest. Raises
    :class:`~r3rag.runs.RunFolderError`, naming the fields that differ, when ``out`` holds results of another
    setting, and ValueError naming the question file when ``reference_match: id`` finds none of its gold ids
    in the index. Writes nothing: the caller loads the model, then :func:`run_and_report` binds ``out``.
    """
    needed = index is not None and retrieving(config.methods)
    retriever = open_retriever(RetrievalConfig(source=index)) if index is not None and needed else None
    gold = {d.name: resolve_gold_match(config.judge.reference_match, d.sources, retriever) for d in datasets}
    manifest = build_manifest(
        config,
        model,
        describe_retriever(index) if index is not None else {"kind": "none", "source": None},
        {d.name: d.describe() for d in datasets},
        {name: match.to_dict() for name, match in gold.items()},
    )
    return _resumed(out, manifest), retriever


def _resumed(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a run in ``out``: ``manifest`` merged into the one there; refused if they differ."""
    old = read_run_manifest(out)
    if old is None:
        return manifest
    runs.refuse_differences(out, differences(old, manifest), "use another --out")
    return merge_manifests(old, manifest)


def run_and_report(
    config: EvalConfigBase,
    generator: Generator,
    retriever: Retriever | None,
    manifest: dict[str, Any],
    datasets: Sequence[EvalDataset],
    out: Path,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Path]:
    """Bind ``out`` to ``manifest``, run the predictions still missing, then write the report; return its
    files by kind. One process at a time runs in a folder."""
    with runs.locked(out):
        manifest = _resumed(out, manifest)  # again, under the lock: another run may have bound it since
        write_run_manifest(out, manifest)
        runs.write_text(out / "config.yaml", config.yaml_text())
        judge = CorrectnessJudge(config.judge, endpoint_generator(config.judge))
        gold = {name: entry["rule"] for name, entry in manifest["gold_match"].items()}
        runner = EvalRunner(config, generator, retriever, judge, out, gold, on_progress=on_progress)
        records = runner.run(datasets)
        return write_report(out, records, config, manifest)
