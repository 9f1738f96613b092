"""The manifest of an evaluation run: everything that defines its setting, with checksums.

Two result tables are comparable only if they come from the same model, retriever, index, questions and
protocol (budgets, top-k, decoding, judge). The manifest records each of them in a form that can be compared:
a fingerprint of the model's files, the index's corpus checksum and settings (from the index manifest), the
sha256 of every question file, the evaluation config and the judge. A run directory refuses to resume under
a different setting (:func:`differences`), so one table never mixes two settings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r3rag import __version__, runs
from r3rag.config import JUDGE_CALL_FIELDS
from r3rag.evaluation.config import EvalConfigBase

MANIFEST_FILE = "manifest.json"
RUN_ONLY_FIELDS = ("methods", "top_k_sweep", "sweep_methods", "batch_size")
"""Config fields that choose what to run, not how: a run may be resumed with more methods or top-k values."""


def describe_judge(config: EvalConfigBase) -> str:
    """One line saying how Acc was decided."""
    judge = config.judge
    match = "exact match" if judge.correctness_match == "em" else "cover-EM"
    if not judge.correctness_llm:
        return f"{match} only (no LLM judge)"
    return f"{match}, then LLM judge {judge.model} at {judge.endpoint}"


def build_manifest(
    config: EvalConfigBase,
    model: dict[str, Any],
    retriever: dict[str, Any],
    datasets: dict[str, dict[str, Any]],
    gold_match: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of a run. ``datasets`` maps each dataset name to its files (path, sha256, questions),
    ``gold_match`` to how its gold passages are recognised (:meth:`~r3rag.gold.GoldMatch.to_dict`)."""
    settings = config.model_dump(mode="json")
    return {
        "r3rag_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "retriever": retriever,
        "datasets": datasets,
        "gold_match": gold_match,
        "judge": describe_judge(config),
        "top_k": config.top_k,
        "max_steps": config.max_steps,
        "seed": config.seed,
        "settings": {k: v for k, v in settings.items() if k not in RUN_ONLY_FIELDS},
        "run": {k: settings[k] for k in RUN_ONLY_FIELDS},
    }


def _identity(part: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: part.get(k) for k in keys}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What makes ``new`` a different setting from ``old`` (empty when results may share a table).

    Model and retriever are compared by fingerprint (by name or URL when there is none), settings field by
    field, and datasets by the checksums of the files of every dataset both runs have.
    """
    found = []
    model_keys = (
        ("backend", "fingerprint") if new["model"].get("fingerprint") else ("backend", "name", "base_url")
    )
    if _identity(old["model"], model_keys) != _identity(new["model"], model_keys):
        found.append(f"model: {old['model'].get('name')} -> {new['model'].get('name')}")
    retriever_keys = ("kind", "fingerprint") if new["retriever"].get("fingerprint") else ("kind", "source")
    if _identity(old["retriever"], retriever_keys) != _identity(new["retriever"], retriever_keys):
        found.append(f"retriever: {old['retriever'].get('source')} -> {new['retriever'].get('source')}")
    found += runs.config_differences(_compared(old["settings"]), _compared(new["settings"]))
    for name in sorted(set(old["datasets"]) & set(new["datasets"])):
        old_sums = sorted(f["sha256"] for f in old["datasets"][name]["files"])
        new_sums = sorted(f["sha256"] for f in new["datasets"][name]["files"])
        if old_sums != new_sums:
            found.append(f"dataset {name}: other question files (sha256 differs)")
        was, now = _gold_rule(old, name), _gold_rule(new, name)
        if was != now:
            found.append(f"dataset {name}: gold passages matched by {was}, now by {now} (other gold recall)")
    return found


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that define the results: without how the judge's endpoint is called."""
    judge = {k: v for k, v in settings.get("judge", {}).items() if k not in JUDGE_CALL_FIELDS}
    return {**settings, "judge": judge} if "judge" in settings else settings


def _gold_rule(manifest: dict[str, Any], dataset: str) -> str:
    """How a run matched a dataset's gold passages. Manifests written before the rule was recorded matched
    by id whenever a question had ids, unless the config said ``title``: the rule ``id`` is today."""
    entry = manifest.get("gold_match", {}).get(dataset)
    if entry is not None:
        return entry["rule"]
    return "title" if manifest["settings"].get("judge", {}).get("reference_match") == "title" else "id"


def merge_manifests(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a resumed run: the new one, keeping the first creation time and every dataset."""
    return {
        **new,
        "created": old["created"],
        "datasets": {**old["datasets"], **new["datasets"]},
        "gold_match": {**old.get("gold_match", {}), **new["gold_match"]},
    }


def read_run_manifest(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_run_manifest(out: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(out) / MANIFEST_FILE
    runs.write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path
