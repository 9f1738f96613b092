"""Multi-hop QA datasets in their official formats -> QAExample, and QAExample <-> FlashRAG jsonl.

Supported inputs (the format is detected from the first record, or named):

- ``hotpotqa``: the official distractor / fullwiki json (``_id, question, answer, supporting_facts,
  context, type, level``), as a JSON list or one record per line.
- ``2wiki``: the official 2WikiMultiHopQA json (``_id, type, question, context, supporting_facts,
  evidences, answer``; v1.1 extras kept in metadata). Evidence triples become the gold decomposition.
- ``musique``: the official MuSiQue jsonl (``paragraphs, question_decomposition, answer,
  answer_aliases``).
- ``flashrag``: FlashRAG jsonl (``id, question, golden_answers, metadata``), including the files this module
  writes, whose metadata carries supporting passages and decompositions.

Each record also yields its context paragraphs as passages with content-derived ids, so the supporting-
passage ids of a question match the ids of the corpus later built from the same contexts.
A malformed record is a :class:`~r3rag.jsonl.RecordError` naming the file, the record and the field.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from r3rag.jsonl import RecordError, iter_jsonl, read_text, write_jsonl
from r3rag.schema import Passage, QAExample, SubQuestion, passage_id_for

Item = TypeVar("Item")

FORMATS = ("hotpotqa", "2wiki", "musique", "flashrag")
CORPUS_FORMAT = "corpus"  # a JSON list of {title, text}: a corpus, not a question file

# Keys of FlashRAG metadata that this module reads back into QAExample fields.
_OWN_METADATA = ("dataset", "type", "supporting_ids", "supporting_titles", "decomposition")


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(record_number, record)`` from a JSON list or a JSON-lines file; records are numbered from 1."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        try:
            records = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise RecordError(path, 0, f"not valid JSON ({e.msg} at line {e.lineno})") from None
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise RecordError(path, number, f"expected a JSON object, got {type(record).__name__}")
            yield number, record
    else:
        yield from iter_jsonl(path)


def detect_format(path: str | Path) -> str:
    """Name the format of a dataset file from the keys of its first record."""
    for _, record in iter_records(path):
        if "golden_answers" in record:
            return "flashrag"
        if "question_decomposition" in record or "paragraphs" in record:
            return "musique"
        if "evidences" in record:
            return "2wiki"
        if "context" in record and "question" in record:
            return "hotpotqa"
        if set(record) >= {"title", "text"} and "question" not in record:
            return CORPUS_FORMAT
        raise RecordError(
            path, 1, f"cannot tell the format from keys {sorted(record)}; pass one of {', '.join(FORMATS)}"
        )
    raise RecordError(path, 0, "the file holds no records")


class _Fields:
    """Typed access to one record's fields, raising errors that name the file, record and field."""

    def __init__(self, path: Path, number: int, record: dict[str, Any]):
        self.path, self.number, self.record = path, number, record

    def error(self, field: str, message: str) -> RecordError:
        return RecordError(self.path, self.number, message, field=field)

    def get(self, field: str, kind: type | tuple[type, ...], default: Any = ..., check: Any = None) -> Any:
        value = self.record.get(field, default)
        if value is ...:
            raise self.error(field, "missing")
        if value is not default and not isinstance(value, kind):
            raise self.error(field, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        if check is not None and value is not default:
            check(field, value)
        return value

    def str_list(self, field: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(field, "expected a list of strings")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _join_sentences(sentences: Iterable[str]) -> str:
    return " ".join(s.strip() for s in sentences if s.strip())


def _title_sentence_contexts(f: _Fields, field: str) -> list[Passage]:
    """HotpotQA/2Wiki ``context``: a list of ``[title, [sentence, ...]]`` pairs."""
    passages = []
    for i, item in enumerate(f.get(field, list)):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], list)
            or not all(isinstance(s, str) for s in item[1])
        ):
            raise f.error(f"{field}[{i}]", "expected [title, [sentence, ...]]")
        text = _join_sentences(item[1])
        passages.append(Passage(id=passage_id_for(item[0], text), title=item[0], text=text))
    return passages


def _supporting_titles(f: _Fields, field: str) -> list[str]:
    """HotpotQA/2Wiki ``supporting_facts``: ``[title, sentence_index]`` pairs -> distinct titles, in order."""
    titles: list[str] = []
    for i, fact in enumerate(f.get(field, list, default=[])):
        if not isinstance(fact, list) or not fact or not isinstance(fact[0], str):
            raise f.error(f"{field}[{i}]", "expected [title, sentence_index]")
        if fact[0] not in titles:
            titles.append(fact[0])
    return titles


def _ids_for_titles(titles: Iterable[str], contexts: list[Passage]) -> list[str]:
    by_title = {p.title: p.id for p in contexts}
    return [by_title[t] for t in titles if t in by_title]


def _answer(f: _Fields, field: str = "answer") -> str:
    answer = f.get(field, (str, int, float))
    return str(answer)


def _title_sentence_example(
    f: _Fields,
    dataset: str,
    metadata_keys: tuple[str, ...],
    contexts: list[Passage],
    decomposition: list[SubQuestion] | None = None,
) -> tuple[QAExample, list[Passage]]:
    """HotpotQA and 2Wiki share a layout: ``_id``, ``question``, ``answer``, ``type``, ``context`` and
    ``supporting_facts``; they differ in their extra keys and 2Wiki's evidence triples."""
    titles = _supporting_titles(f, "supporting_facts")
    example = QAExample(
        id=str(f.get("_id", (str, int))),
        question=f.get("question", str),
        answers=[_answer(f)],
        supporting_ids=_ids_for_titles(titles, contexts),
        supporting_titles=titles,
        decomposition=decomposition or [],
        dataset=dataset,
        type=f.get("type", str, default=""),
        metadata={k: f.record[k] for k in metadata_keys if k in f.record},
    )
    return example, contexts


def _parse_hotpotqa(f: _Fields) -> tuple[QAExample, list[Passage]]:
    contexts = _title_sentence_contexts(f, "context")
    return _title_sentence_example(f, "hotpotqa", ("level", "supporting_facts"), contexts)


def _parse_2wiki(f: _Fields) -> tuple[QAExample, list[Passage]]:
    """2Wiki's evidence triples become the gold decomposition, one ``"subject >> relation"`` hop each."""
    contexts = _title_sentence_contexts(f, "context")
    decomposition = []
    for i, triple in enumerate(f.get("evidences", list, default=[])):
        if not isinstance(triple, list) or len(triple) != 3 or not all(isinstance(t, str) for t in triple):
            raise f.error(f"evidences[{i}]", "expected [subject, relation, object]")
        subject, relation, obj = triple
        decomposition.append(
            SubQuestion(
                question=f"{subject} >> {relation}",
                answer=obj,
                supporting_ids=_ids_for_titles([subject], contexts),
                supporting_titles=[subject],
            )
        )
    extras = ("supporting_facts", "evidences", "entity_ids", "evidences_id", "answer_id")
    return _title_sentence_example(f, "2wiki", extras, contexts, decomposition)


def _parse_musique(f: _Fields) -> tuple[QAExample, list[Passage]]:
    contexts, supporting = [], []
    by_idx: dict[int, Passage] = {}
    for i, para in enumerate(f.get("paragraphs", list)):
        where = f"paragraphs[{i}]"
        if not isinstance(para, dict):
            raise f.error(where, "expected an object")
        for key, kind in (("title", str), ("paragraph_text", str)):
            if not isinstance(para.get(key), kind):
                raise f.error(f"{where}.{key}", "missing or not a string")
        passage = Passage(
            id=passage_id_for(para["title"], para["paragraph_text"].strip()),
            title=para["title"],
            text=para["paragraph_text"].strip(),
        )
        contexts.append(passage)
        by_idx[para.get("idx", i)] = passage
        if para.get("is_supporting"):
            supporting.append(passage)
    decomposition = []
    for i, hop in enumerate(f.get("question_decomposition", list, default=[])):
        where = f"question_decomposition[{i}]"
        if not isinstance(hop, dict) or not isinstance(hop.get("question"), str):
            raise f.error(f"{where}.question", "missing or not a string")
        support = by_idx.get(hop.get("paragraph_support_idx"))  # type: ignore[arg-type]  # any value: None if absent
        decomposition.append(
            SubQuestion(
                question=hop["question"],
                answer=str(hop.get("answer", "")),
                supporting_ids=[support.id] if support else [],
                supporting_titles=[support.title] if support else [],
            )
        )
    aliases = f.get("answer_aliases", list, default=[], check=f.str_list)
    example_id = str(f.get("id", (str, int)))
    answer = _answer(f)
    example = QAExample(
        id=example_id,
        question=f.get("question", str),
        answers=[answer, *[a for a in aliases if a != answer]],
        supporting_ids=[p.id for p in supporting],
        supporting_titles=list(dict.fromkeys(p.title for p in supporting)),
        decomposition=decomposition,
        dataset="musique",
        type=example_id.split("__", 1)[0] if "__" in example_id else "",
        metadata={k: f.record[k] for k in ("answerable",) if k in f.record},
    )
    return example, contexts


def _flashrag_contexts(f: _Fields, metadata: dict[str, Any]) -> list[Passage]:
    """FlashRAG's HotpotQA-style metadata keeps contexts as ``{"title": [...], "sentences": [[...]]}``."""
    context = metadata.get("context")
    if not isinstance(context, dict):
        return []
    titles, sentences = context.get("title"), context.get("sentences")
    if not isinstance(titles, list) or not isinstance(sentences, list) or len(titles) != len(sentences):
        raise f.error(
            "metadata.context", "expected {'title': [...], 'sentences': [[...], ...]} of equal length"
        )
    passages = []
    for title, sents in zip(titles, sentences, strict=True):
        text = _join_sentences(sents)
        passages.append(Passage(id=passage_id_for(title, text), title=title, text=text))
    return passages


def _parse_flashrag(f: _Fields) -> tuple[QAExample, list[Passage]]:
    metadata = dict(f.get("metadata", dict, default={}))
    contexts = _flashrag_contexts(f, metadata)
    supporting_titles = metadata.get("supporting_titles")
    if supporting_titles is None:
        facts = metadata.get("supporting_facts")
        if isinstance(facts, dict):  # FlashRAG HotpotQA: {"title": [...], "sent_id": [...]}
            supporting_titles = list(dict.fromkeys(facts.get("title", [])))
        elif isinstance(facts, list):  # official pairs kept as they were
            supporting_titles = list(dict.fromkeys(x[0] for x in facts if isinstance(x, list) and x))
        else:
            supporting_titles = []
    supporting_ids = metadata.get("supporting_ids") or _ids_for_titles(supporting_titles, contexts)
    try:
        decomposition = [SubQuestion.from_dict(h) for h in metadata.get("decomposition", [])]
    except (KeyError, TypeError, AttributeError) as e:
        raise f.error("metadata.decomposition", f"malformed hop ({e})") from None
    answers = f.get("golden_answers", list)
    if not answers:
        raise f.error("golden_answers", "empty")
    example = QAExample(
        id=str(f.get("id", (str, int))),
        question=f.get("question", str),
        answers=[str(a) for a in answers],
        supporting_ids=list(supporting_ids),
        supporting_titles=list(supporting_titles),
        decomposition=decomposition,
        dataset=str(metadata.get("dataset", "")),
        type=str(metadata.get("type", "")),
        metadata={k: v for k, v in metadata.items() if k not in _OWN_METADATA},
    )
    return example, contexts


_PARSERS: dict[str, Callable[[_Fields], tuple[QAExample, list[Passage]]]] = {
    "hotpotqa": _parse_hotpotqa,
    "2wiki": _parse_2wiki,
    "musique": _parse_musique,
    "flashrag": _parse_flashrag,
}


def iter_dataset(path: str | Path, format: str | None = None) -> Iterator[tuple[QAExample, list[Passage]]]:
    """Yield ``(example, context passages)`` for each record of a dataset file."""
    path = Path(path)
    format = format or detect_format(path)
    if format not in _PARSERS:
        raise ValueError(f"{path}: unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    parse = _PARSERS[format]
    for number, record in iter_records(path):
        yield parse(_Fields(path, number, record))


def load_dataset(path: str | Path, format: str | None = None) -> list[QAExample]:
    """All questions of a dataset file; duplicate ids are an error (results are keyed by id)."""
    examples, seen = [], set()
    for number, (example, _) in enumerate(iter_dataset(path, format), start=1):
        if example.id in seen:
            raise RecordError(path, number, f"duplicate id {example.id!r}", field="id")
        seen.add(example.id)
        examples.append(example)
    return examples


def of_types(examples: Sequence[QAExample], types: Sequence[str], source: str | Path) -> list[QAExample]:
    """The questions whose ``type`` is one of ``types`` (none given: all of them); :func:`by_type`."""
    return by_type(examples, types, source, lambda example: example.type)


def by_type(
    items: Sequence[Item], types: Sequence[str], source: str | Path, type_of: Callable[[Item], str]
) -> list[Item]:
    """The items of ``source`` (its questions, or its SFT records, each with its question's type) whose
    ``type_of`` is one of ``types`` (none given: all of them). A type no item has is an error naming the
    types it does have: a misspelt type would otherwise train on fewer questions than asked, silently."""
    if not types:
        return list(items)
    counts = Counter(type_of(item) for item in items)
    missing = [t for t in types if t not in counts]
    if missing:
        found = ", ".join(f"{t or '(none)'} {n}" for t, n in sorted(counts.items())) or "no questions"
        raise ValueError(f"{source}: no question of type {', '.join(map(repr, missing))} (it has: {found})")
    wanted = set(types)
    return [item for item in items if type_of(item) in wanted]


def load_question_files(paths: Sequence[Path], limit: int | None = None) -> dict[str, list[QAExample]]:
    """The questions of several files (each file's first ``limit``), by file. An id in two files is an error
    naming both: a run that keys its results by id would take the second file's question for done."""
    found: dict[str, list[QAExample]] = {}
    first_file: dict[str, Path] = {}
    for path in paths:
        examples = load_dataset(path)[:limit]
        for example in examples:
            earlier = first_file.setdefault(example.id, path)
            if earlier != path:
                raise ValueError(
                    f"{path}: question id {example.id!r} is also in {earlier}; ids must be unique across "
                    "the question files of one run (give each world or dataset its own ids, or run them "
                    "into separate folders)"
                )
        found[str(path)] = examples
    return found


def to_flashrag(example: QAExample) -> dict[str, Any]:
    """A QAExample as a FlashRAG question record; our extra fields travel in ``metadata``."""
    metadata = dict(example.metadata)
    metadata.update(
        dataset=example.dataset,
        type=example.type,
        supporting_ids=list(example.supporting_ids),
        supporting_titles=list(example.supporting_titles),
        decomposition=[h.to_dict() for h in example.decomposition],
    )
    return {
        "id": example.id,
        "question": example.question,
        "golden_answers": list(example.answers),
        "metadata": metadata,
    }


def write_flashrag(path: str | Path, examples: Iterable[QAExample]) -> int:
    """Write questions as FlashRAG jsonl; return how many."""
    return write_jsonl(path, (to_flashrag(e) for e in examples))
