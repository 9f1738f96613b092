"""Schema JSON round trips, jsonl reading/appending/resuming, corpus files."""

from __future__ import annotations

import hashlib
import json

import pytest

from r3rag.data.corpus import (
    corpus_checksum,
    dedupe_passages,
    iter_corpus,
    read_corpus,
    read_title_text_json,
    write_corpus,
)
from r3rag.jsonl import JsonlAppender, RecordError, iter_jsonl, read_ids, write_jsonl
from r3rag.schema import Passage, QAExample, Step, SubQuestion, Trajectory, TrajectoryStatus, passage_id_for


def test_every_schema_type_round_trips_through_json():
    passage = Passage("p1", "Title", "Text ü", score=1.5)
    example = QAExample(
        "q1",
        "Q?",
        ["A", "alias"],
        ["p1"],
        ["Title"],
        [SubQuestion("s?", "A", ["p1"], ["Title"])],
        "world",
        "chain",
        {"hops": 1},
    )
    step = Step(2, "analysis", query="q", passages=[passage], raw="raw", valid=False, issues=["x"])
    trajectory = Trajectory(
        "q1",
        "Q?",
        [step, Step(3, "a", answer="A")],
        "A",
        TrajectoryStatus.ANSWERED,
        10,
        20,
        {"temperature": 0.4},
    )
    for obj in (passage, example, step, trajectory):
        assert type(obj).from_dict(json.loads(json.dumps(obj.to_dict()))) == obj


def test_passage_without_score_omits_it_and_contents_splits_title():
    assert "score" not in Passage("1", "T", "x").to_dict()
    assert Passage.from_contents("9", "Title line\nbody\nmore") == Passage("9", "Title line", "body\nmore")


def test_passage_ids_are_content_derived_and_stable():
    assert passage_id_for("T", "x") == passage_id_for("T", "x") != passage_id_for("T", "y")
    assert passage_id_for("T", "x") == "p" + hashlib.sha1(b"T\nx").hexdigest()[:15]


def test_trajectory_helpers():
    retrieval = Step(1, "a", query="q")
    trajectory = Trajectory(
        "1", "Q", [retrieval, Step(2, "a", query="q2", valid=False), Step(3, "a", answer="x")]
    )
    assert trajectory.retrieval_steps == [retrieval]


def test_iter_jsonl_skips_blank_lines_and_names_bad_ones(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"a.jsonl: record 3: expected a JSON object, got list"):
        list(iter_jsonl(path))


def test_write_jsonl_is_atomic_and_counts(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(path, [{"a": 1}, {"b": "é"}]) == 2
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_appender_resumes_after_a_crash_mid_line(tmp_path):
    path = tmp_path / "results.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": "a"})
        out.write({"id": "b"})
    with open(path, "a") as f:  # a crash in the middle of writing the third record
        f.write('{"id": "c", "val')
    assert read_ids(path) == {"a", "b"}
    with JsonlAppender(path) as out:
        out.write({"id": "c"})
    assert [r["id"] for _, r in iter_jsonl(path)] == ["a", "b", "c"]


def test_read_ids_of_a_missing_file_is_empty(tmp_path):
    assert read_ids(tmp_path / "none.jsonl") == set()


def test_corpus_round_trip_and_both_record_shapes(tmp_path):
    passages = [Passage("1", "A", "alpha"), Passage("2", "B", "beta\ngamma")]
    path = tmp_path / "corpus.jsonl"
    assert write_corpus(path, passages) == 2
    assert json.loads(path.read_text().splitlines()[0]) == {"id": "1", "contents": "A\nalpha"}
    assert read_corpus(path) == passages
    other = tmp_path / "tt.jsonl"
    other.write_text('{"id": 7, "title": "T", "text": "x"}\n')
    assert list(iter_corpus(other)) == [Passage("7", "T", "x")]


def test_corpus_errors_name_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "contents": "A\\na"}\n{"contents": "B\\nb"}\n')
    with pytest.raises(RecordError, match=r"record 2, field 'id'"):
        read_corpus(path)
    path.write_text('{"id": "1", "contents": "A\\na"}\n{"id": "1", "contents": "B\\nb"}\n')
    with pytest.raises(RecordError, match="duplicate id '1'"):
        read_corpus(path)
    path.write_text('{"id": "1", "body": "x"}\n')
    with pytest.raises(RecordError, match="field 'contents'"):
        read_corpus(path)


def test_iter_corpus_is_lazy(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "contents": "A\\na"}\nnot json\n')
    first = next(iter_corpus(path))  # the broken second line is not read yet
    assert first.id == "1"


def test_dedupe_by_title_and_text_with_stable_ids():
    passages = [Passage("", "A", "x"), Passage("", "A", "x"), Passage("", "A", "y"), Passage("", "B", "x")]
    deduped = list(dedupe_passages(passages))
    assert [(p.title, p.text) for p in deduped] == [("A", "x"), ("A", "y"), ("B", "x")]
    assert [p.id for p in deduped] == [passage_id_for(p.title, p.text) for p in deduped]


def test_title_text_json_and_checksum(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": "A", "text": "a"}, {"title": "B"}]))
    with pytest.raises(RecordError, match=r"record 2, field 'text'"):
        list(read_title_text_json(path))
    path.write_text(json.dumps([{"title": "A", "text": "a"}]))
    assert [p.title for p in read_title_text_json(path)] == ["A"]
    assert corpus_checksum(path) == hashlib.sha256(path.read_bytes()).hexdigest()
