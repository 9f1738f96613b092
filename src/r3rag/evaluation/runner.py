"""Run methods x datasets x top-k over one model and retriever, resumably, scoring predictions as they land.

The unit of work is (method, top-k): every question of every dataset still missing for it is run in chunks of
``batch_size`` questions. Questions of different datasets share a chunk, since a method does not care which
dataset a question came from, and a fuller batch is a faster one. After each chunk its predictions are scored
and appended to ``predictions.jsonl``, one record per (method, dataset, top-k, question), with the whole
trajectory. A rerun reads the keys already there and runs only the rest; the table is computed from the file,
so an interrupted run, once finished, reports exactly what an uninterrupted one would.

Through an endpoint (an :class:`~r3rag.llm.base.AsyncGenerator`) the (method, top-k) runs do not wait for one
another: each runs its chunks on a thread of its own, and all their requests share the endpoint's scheduler
(``concurrency`` in flight, retries, timeouts); R3-RAG's questions also advance each on its own within a
chunk. A question any of whose model calls (or judge calls) still failed after their retries is not a
prediction: it is appended to ``failed.jsonl`` with its errors, and a rerun runs it again.

Datasets are question files (any format :func:`~r3rag.data.datasets.load_dataset` reads). Files may share a
dataset name (``hotpotqa=a.json hotpotqa=b.jsonl``); by default a file's name is the ``dataset`` its loader
sets (``hotpotqa``, ``2wiki``, ``musique``, ``world``), else the file name. A question id seen twice within
one dataset is run once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r3rag import runs
from r3rag.config import IndexBuildConfig
from r3rag.evaluation.config import EvalConfigBase
from r3rag.evaluation.methods.registry import build_method, method_class, method_classes
from r3rag.evaluation.scoring import score_trajectories
from r3rag.gold import MatchRule
from r3rag.jsonl import JsonlAppender, iter_jsonl, read_ids
from r3rag.llm.base import AsyncGenerator, Generator
from r3rag.retrieval.base import Retriever
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.schema import Passage, QAExample

PREDICTIONS_FILE = "predictions.jsonl"
FAILED_FILE = "failed.jsonl"


@dataclass(slots=True)
class EvalDataset:
    """One column of the table: the questions of one or more files under one name."""

    name: str
    files: list[Path] = field(default_factory=list)
    examples: list[QAExample] = field(default_factory=list)
    duplicates: int = 0
    sources: dict[str, list[QAExample]] = field(default_factory=dict)
    """Each file's questions (before duplicates are dropped): gold matching is checked file by file."""

    def describe(self) -> dict[str, Any]:
        """The manifest entry: each file with its checksum, and the questions kept."""
        return {
            "files": [{"path": str(f.resolve()), "sha256": runs.file_sha256(f)} for f in self.files],
            "questions": len(self.examples),
            "duplicates_dropped": self.duplicates,
        }


def parse_dataset_spec(spec: str) -> tuple[str | None, Path]:
    """``NAME=FILE`` or ``FILE``. A path that contains ``=`` but exists as a file is taken as a file."""
    name, sep, path = spec.partition("=")
    if not sep or Path(spec).is_file():
        return None, Path(spec)
    return name.strip() or None, Path(path)


def load_datasets(specs: Sequence[str], limit: int | None = None) -> list[EvalDataset]:
    """The datasets named by ``specs`` in order of first appearance; ``limit`` keeps each file's first N."""
    from r3rag.data.datasets import load_dataset

    datasets: dict[str, EvalDataset] = {}
    for spec in specs:
        name, path = parse_dataset_spec(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such question file")
        examples = load_dataset(path)[:limit]
        labels = {ex.dataset for ex in examples}
        name = name or (labels.pop() if len(labels) == 1 and "" not in labels else path.stem)
        dataset = datasets.setdefault(name, EvalDataset(name))
        dataset.files.append(path)
        dataset.sources[str(path)] = examples
        seen = {ex.id for ex in dataset.examples}
        for example in examples:
            if example.id in seen:
                dataset.duplicates += 1
            else:
                seen.add(example.id)
                dataset.examples.append(example)
    return list(datasets.values())


def build_context_index(files: Sequence[Path], out: Path) -> Path:
    """A BM25 index over the context paragraphs of the question files (the distractor setting: one pool of
    every question's gold and distractor paragraphs, deduplicated). Reused when its corpus is unchanged."""
    from r3rag.data.corpus import corpus_checksum, dedupe_passages, write_corpus
    from r3rag.data.datasets import iter_dataset
    from r3rag.retrieval.index import build_index, read_manifest

    paragraphs = [p for path in files for _, contexts in iter_dataset(path) for p in contexts]
    if not paragraphs:
        raise ValueError(
            "the question files carry no context paragraphs (converted FlashRAG files drop them); pass the "
            "original dataset files, or an index built with `r3rag index build`"
        )
    corpus, index = out / "corpus.jsonl", out / "index"
    write_corpus(corpus, dedupe_passages(paragraphs))
    built = (index / "manifest.json").is_file() and read_manifest(index).corpus_sha256 == corpus_checksum(
        corpus
    )
    if not built:
        build_index(IndexBuildConfig(corpus=corpus, out=index), progress=False)
    return index


@dataclass(frozen=True, slots=True)
class CutPassages:
    """A Retriever whose passages keep at most ``chars`` characters of text (cut at a word boundary; id and
    title kept), so that every method, R3-RAG included, reads the same shortened documents."""

    retriever: Retriever
    chars: int

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[self._cut(p) for p in hits] for hits in self.retriever.search(queries, k)]

    def _cut(self, passage: Passage) -> Passage:
        if len(passage.text) <= self.chars:
            return passage
        text = passage.text[: self.chars + 1].rsplit(" ", 1)[0] or passage.text[: self.chars]
        return Passage(passage.id, passage.title, text, passage.score)


def main_top_k(method: str, config: EvalConfigBase) -> int | None:
    """The top-k of a method's row in the main table: its own (see the method), none if it does not retrieve;
    the shared one for a method no longer registered (the predictions of a removed method keep their row)."""
    registered = next((cls for cls in method_classes() if cls.name == method), None)
    return config.top_k if registered is None else registered.main_top_k(config)


def planned_runs(config: EvalConfigBase) -> list[tuple[str, int | None]]:
    """Every (method, top-k) to run: each method at its main top-k, then the sweep."""
    runs = [(method, main_top_k(method, config)) for method in config.methods]
    sweep = config.sweep_methods if config.sweep_methods is not None else config.methods
    for k in config.top_k_sweep:
        runs += [(m, k) for m in sweep if method_class(m).retrieves and (m, k) not in runs]
    return runs


def record_key(method: str, dataset: str, top_k: int | None, example_id: str) -> str:
    return f"{method}|{dataset}|{'-' if top_k is None else top_k}|{example_id}"


@dataclass(frozen=True, slots=True)
class Progress:
    """What a finished chunk reports: which run, how far it is, and how fast it went."""

    method: str
    top_k: int | None
    done: int
    total: int
    seconds: float
    failed: int = 0
    """Questions of the chunk whose model calls failed after their retries (in failed.jsonl, to rerun)."""


class EvalRunner:
    """Runs the planned (method, top-k) pairs over the datasets into ``out/predictions.jsonl``.

    ``gold`` maps each dataset to how its gold passages are recognised (the rule
    :func:`~r3rag.gold.resolve_gold_match` decided for it, which :func:`~r3rag.evaluation.run.open_run`
    records in the manifest).
    """

    def __init__(
        self,
        config: EvalConfigBase,
        generator: Generator,
        retriever: Retriever | None,
        judge: CorrectnessJudge,
        out: str | Path,
        gold: Mapping[str, MatchRule],
        on_progress: Callable[[Progress], None] | None = None,
    ):
        self.config = config
        self.gold = dict(gold)
        self.generator = generator
        self.retriever = (
            CutPassages(retriever, config.passage_chars)
            if retriever is not None and config.passage_chars is not None
            else retriever
        )
        self.judge = judge
        self.path = Path(out) / PREDICTIONS_FILE
        self.on_progress = on_progress

    def run(self, datasets: Sequence[EvalDataset]) -> list[dict[str, Any]]:
        """Run what is missing; return the records of this run's questions and methods (the predictions file
        may hold more, from an earlier run over more questions: they are kept, not reported)."""
        unmatched = [d.name for d in datasets if d.name not in self.gold]
        if unmatched:
            raise ValueError(f"no gold-matching rule for dataset(s) {', '.join(unmatched)}")
        done = read_ids(self.path, key="key")
        planned: set[str] = set()
        work = []
        for method, top_k in planned_runs(self.config):
            keys = {
                (d.name, ex.id): record_key(method, d.name, top_k, ex.id)
                for d in datasets
                for ex in d.examples
            }
            planned |= set(keys.values())
            todo = [(d.name, ex) for d in datasets for ex in d.examples if keys[d.name, ex.id] not in done]
            if todo:
                work.append((method, top_k, todo))
        with (
            JsonlAppender(self.path) as writer,
            JsonlAppender(self.path.with_name(FAILED_FILE)) as failures,
        ):
            outputs = _Outputs(writer, failures)
            if isinstance(self.generator, AsyncGenerator) and len(work) > 1:
                with ThreadPoolExecutor(len(work), thread_name_prefix="eval-run") as runs:
                    for finished in [runs.submit(self._run_one, *item, outputs) for item in work]:
                        finished.result()
            else:
                for item in work:
                    self._run_one(*item, outputs)
        return [record for record in read_records(self.path) if record["key"] in planned]

    def _run_one(
        self, method_name: str, top_k: int | None, todo: list[tuple[str, QAExample]], outputs: _Outputs
    ) -> None:
        method = build_method(method_name, self.generator, self.retriever, self.config, top_k)
        size = self.config.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            examples = [ex for _, ex in chunk]
            started = time.perf_counter()
            trajectories = method.run(examples)
            rules = [self.gold[dataset] for dataset, _ in chunk]
            scores = score_trajectories(examples, trajectories, self.judge, self.config.max_steps, rules)
            failed = 0
            for (dataset, example), trajectory, score in zip(chunk, trajectories, scores, strict=True):
                key = record_key(method_name, dataset, top_k, example.id)
                errors = list(trajectory.metadata.get("errors", []))
                if score.pop("judge_failed"):
                    errors.append("the correctness judge could not be asked")
                if errors:
                    failed += 1
                    outputs.failure({"key": key, "method": method_name, "id": example.id, "errors": errors})
                    continue
                outputs.prediction(
                    {
                        "key": key,
                        "method": method_name,
                        "dataset": dataset,
                        "top_k": top_k,
                        "id": example.id,
                        "question": example.question,
                        "golds": list(example.answers),
                        **score,
                        "trajectory": trajectory.to_dict(),
                    }
                )
            if self.on_progress is not None:
                elapsed = time.perf_counter() - started
                self.on_progress(Progress(method_name, top_k, start + len(chunk), len(todo), elapsed, failed))


@dataclass(slots=True)
class _Outputs:
    """The predictions file and the failures file, written by the runs of several threads."""

    predictions: JsonlAppender
    failures: JsonlAppender
    lock: threading.Lock = field(default_factory=threading.Lock)

    def prediction(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.predictions.write(record)

    def failure(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.failures.write(record)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a predictions file (the last one wins if a key was written twice)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = {record["key"]: record for _, record in iter_jsonl(path)}
    return list(records.values())
