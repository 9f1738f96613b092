"""Dataset loading: official formats -> QAExample, FlashRAG round trip, clear errors on malformed records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r3rag.data.datasets import (
    detect_format,
    iter_dataset,
    load_dataset,
    of_types,
    to_flashrag,
    write_flashrag,
)
from r3rag.jsonl import RecordError
from r3rag.schema import QAExample, SubQuestion, passage_id_for
from sample_data import sample_file

HOTPOT = {
    "_id": "h1",
    "question": "Were Ann and Bob born in the same city?",
    "answer": "yes",
    "type": "comparison",
    "level": "hard",
    "supporting_facts": [["Ann", 0], ["Bob", 1], ["Ann", 1]],
    "context": [
        ["Ann", ["Ann was born in Oslo.", " She paints."]],
        ["Bob", ["Bob sings.", " Born in Oslo."]],
        ["Cid", ["Cid is a dog."]],
    ],
}
WIKI = {
    "_id": "w1",
    "type": "compositional",
    "question": "When did Lothair's mother die?",
    "context": [["Lothair", ["Lothair was a king.", "His mother was Erm."]], ["Erm", ["Erm died in 851."]]],
    "supporting_facts": [["Lothair", 1], ["Erm", 0]],
    "evidences": [["Lothair", "mother", "Erm"], ["Erm", "date of death", "851"]],
    "answer": "851",
    "entity_ids": "Q1_Q2",
}
MUSIQUE = {
    "id": "2hop__1_2",
    "paragraphs": [
        {"idx": 0, "title": "Ken", "paragraph_text": "Ken is in the Blue Party. ", "is_supporting": True},
        {"idx": 1, "title": "Noise", "paragraph_text": "Unrelated.", "is_supporting": False},
        {"idx": 2, "title": "Blue Party", "paragraph_text": "Its leader is Andy.", "is_supporting": True},
    ],
    "question": "Who leads Ken's party?",
    "question_decomposition": [
        {
            "id": 1,
            "question": "Ken >> member of political party",
            "answer": "Blue Party",
            "paragraph_support_idx": 0,
        },
        {"id": 2, "question": "leader of #1", "answer": "Andy", "paragraph_support_idx": 2},
    ],
    "answer": "Andy",
    "answer_aliases": ["Andrew", "Andy"],
    "answerable": True,
}


def _write(tmp_path: Path, name: str, records: list[dict], jsonl: bool) -> Path:
    path = tmp_path / name
    text = "\n".join(json.dumps(r) for r in records) + "\n" if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("jsonl", [False, True])
def test_hotpotqa(tmp_path, jsonl):
    path = _write(tmp_path, "h.json", [HOTPOT], jsonl)
    assert detect_format(path) == "hotpotqa"
    [(example, contexts)] = list(iter_dataset(path))
    assert [p.title for p in contexts] == ["Ann", "Bob", "Cid"]
    assert contexts[0].text == "Ann was born in Oslo. She paints."
    assert example.answers == ["yes"] and example.type == "comparison" and example.dataset == "hotpotqa"
    assert example.supporting_titles == ["Ann", "Bob"]
    assert example.supporting_ids == [
        passage_id_for("Ann", contexts[0].text),
        passage_id_for("Bob", contexts[1].text),
    ]
    assert example.metadata["level"] == "hard"


def test_2wiki_evidences_become_the_decomposition(tmp_path):
    path = _write(tmp_path, "w.jsonl", [WIKI], jsonl=True)
    assert detect_format(path) == "2wiki"
    [(example, contexts)] = list(iter_dataset(path))
    assert [(h.question, h.answer) for h in example.decomposition] == [
        ("Lothair >> mother", "Erm"),
        ("Erm >> date of death", "851"),
    ]
    assert example.decomposition[1].supporting_ids == [contexts[1].id]
    assert example.metadata["entity_ids"] == "Q1_Q2"


def test_musique(tmp_path):
    path = _write(tmp_path, "m.jsonl", [MUSIQUE], jsonl=True)
    [(example, contexts)] = list(iter_dataset(path))
    assert example.answers == ["Andy", "Andrew"]  # canonical first, aliases deduplicated
    assert example.type == "2hop"
    assert example.supporting_titles == ["Ken", "Blue Party"]
    assert example.supporting_ids == [contexts[0].id, contexts[2].id]
    assert contexts[0].text == "Ken is in the Blue Party."
    assert [h.supporting_titles for h in example.decomposition] == [["Ken"], ["Blue Party"]]


def test_flashrag_round_trip(tmp_path):
    example = QAExample(
        id="q1",
        question="Q?",
        answers=["A", "a1"],
        supporting_ids=["p1"],
        supporting_titles=["T"],
        decomposition=[SubQuestion("sub?", "A", ["p1"], ["T"])],
        dataset="world",
        type="chain",
        metadata={"hops": 1},
    )
    path = tmp_path / "out.jsonl"
    write_flashrag(path, [example])
    record = json.loads(path.read_text())
    assert set(record) == {"id", "question", "golden_answers", "metadata"}
    assert record["golden_answers"] == ["A", "a1"]
    assert detect_format(path) == "flashrag"
    assert load_dataset(path) == [example]


def test_flashrag_hotpot_style_metadata(tmp_path):
    record = {
        "id": "f1",
        "question": "Q?",
        "golden_answers": ["x"],
        "metadata": {
            "type": "bridge",
            "supporting_facts": {"title": ["A", "A", "B"], "sent_id": [0, 1, 0]},
            "context": {"title": ["A", "B"], "sentences": [["a1.", " a2."], ["b1."]]},
        },
    }
    path = _write(tmp_path, "f.jsonl", [record], jsonl=True)
    [(example, contexts)] = list(iter_dataset(path))
    assert example.supporting_titles == ["A", "B"] and example.type == "bridge"
    assert example.supporting_ids == [contexts[0].id, contexts[1].id] and contexts[0].text == "a1. a2."


def test_to_flashrag_keeps_extra_metadata():
    example = QAExample(id="1", question="q", answers=["a"], metadata={"level": "easy"})
    assert to_flashrag(example)["metadata"]["level"] == "easy"


@pytest.mark.parametrize(
    ("fmt", "record", "field"),
    [
        ("hotpotqa", {**HOTPOT, "question": 3}, "question"),
        ("hotpotqa", {k: v for k, v in HOTPOT.items() if k != "answer"}, "answer"),
        ("hotpotqa", {**HOTPOT, "context": [["Ann", "not a list"]]}, "context[0]"),
        ("hotpotqa", {**HOTPOT, "supporting_facts": [[1, 0]]}, "supporting_facts[0]"),
        ("2wiki", {**WIKI, "evidences": [["a", "b"]]}, "evidences[0]"),
        ("musique", {**MUSIQUE, "paragraphs": [{"title": "x"}]}, "paragraphs[0].paragraph_text"),
        ("musique", {**MUSIQUE, "answer_aliases": [1]}, "answer_aliases"),
        ("flashrag", {"id": "1", "question": "q", "golden_answers": []}, "golden_answers"),
        ("flashrag", {"id": "1", "question": "q"}, "golden_answers"),
    ],
)
def test_malformed_record_names_file_record_and_field(tmp_path, fmt, record, field):
    good = {
        "hotpotqa": HOTPOT,
        "2wiki": WIKI,
        "musique": MUSIQUE,
        "flashrag": {"id": "0", "question": "q", "golden_answers": ["a"]},
    }[fmt]
    path = _write(tmp_path, "bad.jsonl", [good, record], jsonl=True)
    with pytest.raises(RecordError) as info:
        list(iter_dataset(path, fmt))
    assert (info.value.path, info.value.record, info.value.field) == (str(path), 2, field)
    assert str(path) in str(info.value) and "record 2" in str(info.value) and field in str(info.value)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": "1", "question": "q", "golden_answers": ["a"]}\n{"id": \n')
    with pytest.raises(RecordError, match=r"broken.jsonl: record 2: not valid JSON"):
        load_dataset(path)


def test_duplicate_ids_are_refused(tmp_path):
    record = {"id": "1", "question": "q", "golden_answers": ["a"]}
    path = _write(tmp_path, "dup.jsonl", [record, record], jsonl=True)
    with pytest.raises(RecordError, match="duplicate id '1'"):
        load_dataset(path)


def test_unknown_format_is_explained(tmp_path):
    path = _write(tmp_path, "x.jsonl", [{"foo": 1}], jsonl=True)
    with pytest.raises(RecordError, match="cannot tell the format"):
        detect_format(path)


# ------------------------------------------------------------------------------------- the real samples

REAL = [
    ("hotpotqa/hotpot_dev_distractor_v1.first53.json", "hotpotqa", 53),
    ("hotpotqa/hotpotqa_dev_distractor_10.hoprag.jsonl", "hotpotqa", 10),
    ("2wikimultihopqa/2wikimultihopqa_dev_10.hoprag.jsonl", "2wiki", 10),
    ("2wikimultihopqa/2wikimultihopqa_dev_2.kag_qa_sub.json", "2wiki", 2),
    ("musique/musique_ans_dev_10.hoprag.jsonl", "musique", 10),
]


@pytest.mark.parametrize(("name", "fmt", "count"), REAL)
def test_real_samples_load_with_their_evidence(name, fmt, count, tmp_path):
    path = sample_file(name)
    assert detect_format(path) == fmt
    loaded = list(iter_dataset(path))
    assert len(loaded) == count
    for example, contexts in loaded:
        assert example.question and example.answers and example.answers[0]
        by_id = {p.id: p for p in contexts}
        assert example.supporting_ids and set(example.supporting_ids) <= set(by_id)
        assert {by_id[i].title for i in example.supporting_ids} == set(example.supporting_titles)
        if fmt in ("2wiki", "musique"):
            assert example.decomposition
    # and they survive the trip through FlashRAG jsonl
    out = tmp_path / "out.jsonl"
    write_flashrag(out, [e for e, _ in loaded])
    assert load_dataset(out) == [e for e, _ in loaded]


def test_of_types_keeps_the_named_types_in_file_order_and_names_a_type_the_file_lacks() -> None:
    kinds = ["chain", "comparison", "", "chain"]
    examples = [QAExample(f"q{i}", "?", ["a"], type=t) for i, t in enumerate(kinds)]
    assert of_types(examples, [], "f.jsonl") == examples
    assert [e.id for e in of_types(examples, ["chain"], "f.jsonl")] == ["q0", "q3"]
    assert [e.id for e in of_types(examples, ["comparison", "chain"], "f.jsonl")] == ["q0", "q1", "q3"]
    with pytest.raises(ValueError) as error:
        of_types(examples, ["chain", "bridge"], "f.jsonl")
    expected = "f.jsonl: no question of type 'bridge' (it has: (none) 1, chain 2, comparison 1)"
    assert str(error.value) == expected
