"""``r3rag data convert``: dataset files to FlashRAG question files, their context paragraphs to one corpus.

Each question file becomes ``<out>/<name>.jsonl``; every input's context paragraphs (and any ``{title,
text}`` corpus list given) become one deduplicated ``corpus.jsonl``. A conversion that would lose data is
refused before anything is written: two inputs with one name (the second would replace the first), or an
output that is one of the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from r3rag import runs
from r3rag.data.corpus import dedupe_passages, read_title_text_json, write_corpus
from r3rag.data.datasets import CORPUS_FORMAT, FORMATS, detect_format, iter_dataset, write_flashrag
from r3rag.schema import Passage

CORPUS_FILE = "corpus.jsonl"


@dataclass(frozen=True, slots=True)
class Converted:
    """One input: its format, how many questions and paragraphs it held, the file its questions went to."""

    source: Path
    format: str
    questions: int | None
    paragraphs: int
    written: Path | None


@dataclass(frozen=True, slots=True)
class Conversion:
    """What a conversion wrote: every input, and the corpus (None when none was written)."""

    inputs: list[Converted]
    corpus_passages: int | None
    duplicate_paragraphs: int


def question_file(source: Path, out: Path) -> Path:
    """Where the questions of ``source`` go: ``<out>/<name>.jsonl``."""
    return out / f"{source.name.removesuffix('.jsonl').removesuffix('.json')}.jsonl"


def convert(inputs: Sequence[Path], out: Path, format: str | None = None, corpus: bool = True) -> Conversion:
    """Convert ``inputs`` (each in ``format``, or the format detected from its first record) into ``out``."""
    if format is not None and format not in (*FORMATS, CORPUS_FORMAT):
        raise ValueError(f"--format must be one of {', '.join((*FORMATS, CORPUS_FORMAT))}, not {format!r}")
    formats = {path: format or detect_format(path) for path in inputs}
    targets = {path: question_file(path, out) for path, fmt in formats.items() if fmt != CORPUS_FORMAT}
    _refuse_losses(targets, inputs, out / CORPUS_FILE if corpus else None)
    converted: list[Converted] = []
    paragraphs: list[Passage] = []
    with runs.locked_beside(out):
        for path, fmt in formats.items():
            if fmt == CORPUS_FORMAT:
                found = list(read_title_text_json(path))
                paragraphs += found
                converted.append(Converted(path, fmt, None, len(found), None))
                continue
            examples, before = [], len(paragraphs)
            for example, contexts in iter_dataset(path, fmt):
                examples.append(example)
                paragraphs += contexts
            write_flashrag(targets[path], examples)
            converted.append(Converted(path, fmt, len(examples), len(paragraphs) - before, targets[path]))
        written = (
            write_corpus(out / CORPUS_FILE, dedupe_passages(paragraphs)) if corpus and paragraphs else None
        )
    return Conversion(converted, written, len(paragraphs) - (written or 0) if written is not None else 0)


def _refuse_losses(targets: dict[Path, Path], inputs: Sequence[Path], corpus: Path | None) -> None:
    """Refuse a conversion that would lose data: two inputs written to one file, or an input replaced by
    its conversion (or by the corpus)."""
    written: dict[Path, Path] = {}
    for source, target in targets.items():
        earlier = written.setdefault(target.resolve(), source)
        if earlier != source:
            raise ValueError(
                f"{earlier} and {source} would both be written to {target}; convert them into separate --out "
                "folders, or rename one"
            )
    read = {path.resolve(): path for path in inputs}
    for target in [*targets.values(), *([corpus] if corpus is not None else [])]:
        if target.resolve() in read:
            raise ValueError(
                f"{target} would replace the input {read[target.resolve()]}; choose another --out"
            )
