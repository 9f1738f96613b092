"""Gold matching decided from the data: questions converted with our content-hash ids against a corpus
with its own ids (FlashRAG's "0", "1", ...), with the same ids, and with only some of them; for evaluation's
gold recall, the PPO reference relevance reward, the oracle teacher and the world's gauge.

The toy corpus is eval_fixtures' film / studio / noise passages; the question's gold passages are the film
and the studio, named as ``r3rag data convert --no-corpus`` names them: ``passage_id_for(title, text)`` and
titles.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from eval_fixtures import FILM, NOISE, QUESTION, STUDIO, RuleGenerator
from r3rag.coldstart.oracle import OracleTeacher
from r3rag.config import ColdStartConfig, IndexBuildConfig, JudgeConfig
from r3rag.data.corpus import write_corpus
from r3rag.data.datasets import write_flashrag
from r3rag.data.world import hop_hit_rates
from r3rag.evaluation.config import EvalConfig
from r3rag.evaluation.run import open_run, run_and_report
from r3rag.evaluation.runner import load_datasets, read_records
from r3rag.gold import GoldMatch, GoldSet, gold_ids, resolve_gold_match, title_key
from r3rag.retrieval.index import build_index, load_index
from r3rag.rl.ppo import PPOTrainer
from r3rag.schema import Passage, QAExample, Step, SubQuestion, Trajectory, TrajectoryStatus, passage_id_for
from rl_fixtures import tiny_config
from test_eval_baselines import r3rag_rule
from tiny_llm import tiny_model, tiny_tokenizer

FILM_ID, STUDIO_ID = passage_id_for(FILM.title, FILM.text), passage_id_for(STUDIO.title, STUDIO.text)
LAYOUTS = {  # corpus id of film, studio, noise
    "flashrag": ("0", "1", "2"),  # another numbering: none of the gold ids is in the index
    "same": (FILM_ID, STUDIO_ID, "noise"),  # the corpus built from the same contexts
    "partial": (FILM_ID, "1", "2"),  # one gold id of two
}


def converted_question(example_id: str = "q1") -> QAExample:
    """The two-hop question as `r3rag data convert --no-corpus` writes it (ids from the contexts)."""
    return QAExample(
        id=example_id,
        question=QUESTION,
        answers=["Ada Vale"],
        supporting_ids=[FILM_ID, STUDIO_ID],
        supporting_titles=[FILM.title, STUDIO.title],
        decomposition=[
            SubQuestion("Which studio made Silver Harbour?", "Vale Studio", [FILM_ID], [FILM.title]),
            SubQuestion("Who founded Vale Studio?", "Ada Vale", [STUDIO_ID], [STUDIO.title]),
        ],
        dataset="toy",
        type="compositional",
    )


def corpus(layout: str) -> list[Passage]:
    ids = LAYOUTS[layout]
    return [Passage(i, p.title, p.text) for i, p in zip(ids, (FILM, STUDIO, NOISE), strict=True)]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A BM25 index of the toy corpus under each id layout."""
    root = tmp_path_factory.mktemp("gold")
    out = {}
    for layout in LAYOUTS:
        write_corpus(root / f"{layout}.jsonl", corpus(layout))
        config = IndexBuildConfig(corpus=root / f"{layout}.jsonl", out=root / layout)
        build_index(config, progress=False)
        out[layout] = root / layout
    return out


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("questions") / "toy_dev.jsonl"
    write_flashrag(path, [converted_question()])
    return path


# ------------------------------------------------------------------------------------------- the decision


@dataclass
class IdIndex:
    """An index that knows its ids (``known_ids`` None: one that cannot tell, as an old server)."""

    ids: set[str] | None

    def known_ids(self, ids: Iterable[str]) -> set[str] | None:
        return None if self.ids is None else set(ids) & self.ids


def test_auto_decides_from_the_index() -> None:
    sources = {"toy_dev.jsonl": [converted_question()]}
    flashrag = resolve_gold_match("auto", sources, IdIndex({"0", "1", "2"}))
    assert (flashrag.rule, flashrag.gold_ids, flashrag.in_index) == ("title", 2, 0)
    assert (
        flashrag.describe()
        == "gold passages matched by title (auto: 0 of 2 gold passage ids are in the index)"
    )
    assert resolve_gold_match("auto", sources, IdIndex({FILM_ID, STUDIO_ID, "x"})).rule == "id"
    partial = resolve_gold_match("auto", sources, IdIndex({FILM_ID, "1"}))
    assert (partial.rule, partial.in_index) == ("title", 1)  # some present: titles still find the rest
    unknown = resolve_gold_match("auto", sources, IdIndex(None))
    assert (unknown.rule, unknown.in_index) == ("title", None)
    assert "cannot tell" in unknown.describe()
    assert resolve_gold_match("auto", sources, object()).rule == "title"  # no known_ids at all
    titles_only = [QAExample("t", "?", ["x"], supporting_titles=["Silver Harbour"])]
    no_ids = resolve_gold_match("auto", {"f": titles_only}, IdIndex(set()))
    assert no_ids.rule == "title" and no_ids.describe().endswith(
        "(auto: the questions carry no gold passage ids)"
    )
    assert resolve_gold_match("title", sources, IdIndex({FILM_ID, STUDIO_ID})).rule == "title"


def test_gold_ids_include_the_decomposition() -> None:
    example = QAExample("q", "?", ["x"], supporting_ids=["a"], decomposition=[SubQuestion("s", "x", ["b"])])
    assert gold_ids([example]) == {"a", "b"}


def test_explicit_id_with_absent_ids_is_an_error_naming_the_file(caplog: pytest.LogCaptureFixture) -> None:
    sources = {"hotpot_dev.jsonl": [converted_question()], "world_dev.jsonl": [converted_question("w")]}
    with pytest.raises(
        ValueError, match=r"none of the gold passage ids of hotpot_dev\.jsonl, world_dev\.jsonl"
    ):
        resolve_gold_match("id", sources, IdIndex({"0", "1"}))
    world = [QAExample("w", "?", ["x"], supporting_ids=["w1"])]
    mixed = {"hotpot_dev.jsonl": [converted_question()], "world_dev.jsonl": world}
    with pytest.raises(ValueError, match=r"ids of hotpot_dev\.jsonl \(2 ids, e\.g\. p") as error:
        resolve_gold_match("id", mixed, IdIndex({"w1"}))
    assert "world_dev" not in str(error.value)
    with caplog.at_level(logging.WARNING, logger="r3rag.gold"):
        partial = resolve_gold_match("id", {"f": [converted_question()]}, IdIndex({FILM_ID}))
    assert (partial.rule, partial.in_index) == ("id", 1)  # as configured, with a warning and the counts
    assert "1 of 2 gold passage ids" in caplog.text
    assert resolve_gold_match("id", {"f": [converted_question()]}, IdIndex(None)).rule == "id"


def test_titles_match_case_unicode_and_spacing_insensitively() -> None:
    assert title_key("  Ｓilver   HARBOUR ") == title_key("silver harbour") == "silver harbour"
    by_title = GoldSet.of([FILM_ID], ["Silver Harbour"], "title")
    assert Passage("0", "silver  harbour", "") in by_title and Passage(FILM_ID, "Other", "") not in by_title
    by_id = GoldSet.of([FILM_ID], ["Silver Harbour"], "id")
    assert Passage(FILM_ID, "Other", "") in by_id and Passage("0", "Silver Harbour", "") not in by_id
    assert GoldSet.of([], ["Silver Harbour"], "id").field == "title"  # no ids: the titles


def test_local_indexes_know_their_ids(indexes: dict[str, Path]) -> None:
    assert load_index(indexes["flashrag"]).known_ids([FILM_ID, "1", "7"]) == {"1"}  # type: ignore[attr-defined]
    assert load_index(indexes["same"]).known_ids([FILM_ID, STUDIO_ID]) == {FILM_ID, STUDIO_ID}  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- evaluation's recall


def evaluate(
    index: Path, questions: Path, out: Path, reference_match: str = "auto"
) -> tuple[dict, list[dict]]:
    config = EvalConfig(
        methods=["r3rag"],
        top_k=1,
        top_k_sweep=[],
        max_steps=3,
        judge=JudgeConfig(correctness_llm=False, relevance="reference", reference_match=reference_match),
    )
    datasets = load_datasets([str(questions)])
    model = {"backend": "local", "name": "rules", "fingerprint": None}
    manifest, retriever = open_run(config, datasets, model, str(index), out)
    run_and_report(config, RuleGenerator(r3rag_rule), retriever, manifest, datasets, out)
    return manifest, read_records(out / "predictions.jsonl")


@pytest.mark.parametrize(
    ("layout", "rule", "described"),
    [
        (
            "flashrag",
            "title",
            "gold passages matched by title (auto: 0 of 2 gold passage ids are in the index)",
        ),
        ("same", "id", "gold passages matched by id (auto: 2 of 2 gold passage ids are in the index)"),
        (
            "partial",
            "title",
            "gold passages matched by title (auto: 1 of 2 gold passage ids are in the index)",
        ),
    ],
)
def test_eval_gold_recall_under_each_id_layout(
    indexes: dict[str, Path], questions: Path, tmp_path: Path, layout: str, rule: str, described: str
) -> None:
    """R3-RAG searches the film (step 1) then the studio (step 2), one passage each, and answers: both gold
    passages retrieved, recall 2/2 = 1.0 whichever ids the corpus uses (it was 0.0 on the FlashRAG layout
    when ids were preferred)."""
    manifest, (record,) = evaluate(indexes[layout], questions, tmp_path)
    retrieved = [p["id"] for s in record["trajectory"]["steps"] for p in s["passages"]]
    assert retrieved == list(LAYOUTS[layout][:2])  # the corpus's own ids
    assert record["acc"] == 1.0 and record["recall"] == 1.0
    assert manifest["gold_match"]["toy"]["rule"] == rule
    assert (
        json.loads((tmp_path / "manifest.json").read_text())["gold_match"]["toy"]["description"] == described
    )
    report = (tmp_path / "results.md").read_text()
    assert "1 questions from `toy_dev.jsonl` (sha256 " in report and f"; {described}" in report


def test_eval_explicit_id_against_other_ids_fails_naming_the_file(
    indexes: dict[str, Path], questions: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=f"gold passage ids of {questions}"):
        evaluate(indexes["flashrag"], questions, tmp_path, reference_match="id")
    assert not (tmp_path / "manifest.json").exists()  # refused before anything was written
    _, (record,) = evaluate(indexes["same"], questions, tmp_path / "ok", reference_match="id")
    assert record["recall"] == 1.0


# ------------------------------------------------------------------------------ the PPO process reward


def step(index: int, passages: list[Passage]) -> Step:
    return Step(index=index, analysis="look", query=f"query {index}", passages=passages)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("policy")
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("layout", "decided"), [("flashrag", "gold_by_title"), ("same", "gold_by_id")])
def test_ppo_process_reward_is_title_matched_on_the_flashrag_layout(
    indexes: dict[str, Path], questions: Path, policy_dir: Path, tmp_path: Path, layout: str, decided: str
) -> None:
    """``r3rag train``'s default reward (hybrid, reference relevance judge, reference_match auto) on a
    trajectory that retrieves [film, noise], then [studio], then answers correctly: Rel 1/2 and 1/1, so the
    rewards are 1.6 x 0.5, 1.6 x 1.0 and 2.0 under either layout (the FlashRAG layout gave Rel 0 before)."""
    config = tiny_config(tmp_path, model=str(policy_dir), train=questions, index=str(indexes[layout]))
    trainer = PPOTrainer.from_config(config)
    film, studio, noise = corpus(layout)
    trajectory = Trajectory(
        "q1",
        QUESTION,
        [step(1, [film, noise]), step(2, [studio]), Step(3, "so", answer="Ada Vale")],
        "Ada Vale",
        TrajectoryStatus.ANSWERED,
    )
    (reward,) = trainer.scorer.score(trainer.train_examples, [trajectory])
    assert [s.relevance for s in reward.steps[:2]] == [0.5, 1.0]
    assert list(reward.rewards) == pytest.approx([0.8, 1.6, 2.0])
    assert trainer.scorer.stats()[f"relevance/decided/{decided}"] == 2  # the training log says which rule


@pytest.mark.parametrize("layout", ["flashrag", "same"])
def test_ppo_gold_recall_reward_is_matched_by_the_resolved_rule_in_outcome_mode(
    indexes: dict[str, Path], questions: Path, policy_dir: Path, tmp_path: Path, layout: str
) -> None:
    """Outcome mode asks for no relevance judge, but ``reward.gold_recall`` still needs the gold rule: the
    trainer resolves it against the index (titles on the FlashRAG layout). The same trajectory reaches the
    film's passage, then the studio's (the question's two gold passages): 2.0 on every valid step, plus
    0.5 x 1.0 on each search."""
    reward_config = {"mode": "outcome", "gold_recall": 1.0}
    config = tiny_config(
        tmp_path, model=str(policy_dir), train=questions, index=str(indexes[layout]), reward=reward_config
    )
    trainer = PPOTrainer.from_config(config)
    assert trainer.scorer.relevance is None
    film, studio, noise = corpus(layout)
    trajectory = Trajectory(
        "q1",
        QUESTION,
        [step(1, [film, noise]), step(2, [studio, film]), Step(3, "so", answer="Ada Vale")],
        "Ada Vale",
        TrajectoryStatus.ANSWERED,
    )
    (reward,) = trainer.scorer.score(trainer.train_examples, [trajectory])
    assert list(reward.rewards) == pytest.approx([2.5, 2.5, 2.0])


def test_ppo_refuses_bridge_queries_on_questions_without_a_decomposition(
    indexes: dict[str, Path], questions: Path, policy_dir: Path, tmp_path: Path
) -> None:
    """Before any rollout, naming the file and the question, not at the first rollout that samples it. The
    toy question has its decomposition (the run builds); a HotpotQA-like one, without it, does not."""
    reward_config = {"mode": "outcome", "bridge_queries": 1.0}
    flashrag = str(indexes["flashrag"])
    config = tiny_config(
        tmp_path, model=str(policy_dir), train=questions, index=flashrag, reward=reward_config
    )
    assert PPOTrainer.from_config(config).scorer.config.bridge_queries == 1.0
    hotpot = tmp_path / "hotpot.jsonl"
    write_flashrag(hotpot, [dataclasses.replace(converted_question("h7"), decomposition=[])])
    config = config.model_copy(update={"train": hotpot})
    with pytest.raises(ValueError, match=f"{hotpot}: question 'h7' has no gold decomposition, which reward"):
        PPOTrainer.from_config(config)


def test_train_types_leave_the_trainer_and_verl_prepare_only_those_questions(
    indexes: dict[str, Path], policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train_types``: the in-process trainer samples, and veRL's train.parquet gets, only those types
    (the parquet writer is recorded: pyarrow lives in the veRL environment, not this one)."""
    from r3rag.config import VerlPrepareConfig
    from r3rag.integrations.verl import prepare as verl_prepare

    written: dict[str, list[str]] = {}

    def record(examples: list[QAExample], path: Path, system: str | None) -> Path:
        written[path.name] = [e.id for e in examples]
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    monkeypatch.setattr(verl_prepare, "write_parquet", record)

    train = tmp_path / "mixed.jsonl"
    kinds = ["compositional", "comparison", "chain", "comparison"]
    mixed = [dataclasses.replace(converted_question(f"m{i}"), type=t) for i, t in enumerate(kinds)]
    write_flashrag(train, mixed)
    index = str(indexes["flashrag"])
    config = tiny_config(tmp_path / "ppo", model=str(policy_dir), train=train, index=index)
    config = config.model_copy(update={"train_types": ["chain", "compositional"]})
    assert [e.id for e in PPOTrainer.from_config(config).train_examples] == ["m0", "m2"]
    verl = VerlPrepareConfig(
        model="any", train=train, index=index, out=tmp_path / "verl", train_types=["comparison"]
    )
    verl_prepare.prepare(verl)
    assert written == {"train.parquet": ["m1", "m3"]}


def test_balance_sides_draws_each_iteration_s_two_way_questions_in_pairs_of_opposite_sides(
    indexes: dict[str, Path], policy_dir: Path, tmp_path: Path
) -> None:
    """Three comparisons answered "first", three "second", one iteration of six: the plain shuffle puts two
    of one side together (this seed), ``balance_sides`` makes every pair of the draw one of each side."""
    train = tmp_path / "sides.jsonl"
    sides = ["first", "first", "first", "second", "second", "second"]
    comparisons = [
        dataclasses.replace(converted_question(f"c{i}"), type="comparison", metadata={"side": side})
        for i, side in enumerate(sides)
    ]
    write_flashrag(train, comparisons)
    config = tiny_config(tmp_path / "ppo", model=str(policy_dir), train=train, index=str(indexes["flashrag"]))

    def drawn_pairs(balance: bool) -> list[set[str]]:
        trainer = PPOTrainer.from_config(config.model_copy(update={"balance_sides": balance}))
        drawn = [e.metadata["side"] for e in trainer._questions(1)]
        assert len(drawn) == 6
        return [set(drawn[i : i + 2]) for i in range(0, 6, 2)]

    assert drawn_pairs(False) != [{"first", "second"}] * 3
    assert drawn_pairs(True) == [{"first", "second"}] * 3


def test_verl_prepare_refuses_bridge_queries_before_writing_anything(
    indexes: dict[str, Path], questions: Path, tmp_path: Path
) -> None:
    """The dev file lacks decompositions: the error names it and the folder gets no parquet files."""
    from r3rag.config import RewardConfig, VerlPrepareConfig
    from r3rag.integrations.verl.prepare import prepare

    dev = tmp_path / "hotpot_dev.jsonl"
    write_flashrag(dev, [dataclasses.replace(converted_question("h8"), decomposition=[])])
    out = tmp_path / "verl"
    config = VerlPrepareConfig(
        model="any",
        train=questions,
        dev=dev,
        index=str(indexes["flashrag"]),
        out=out,
        reward=RewardConfig(bridge_queries=1.0),
    )
    with pytest.raises(ValueError, match=f"{dev}: question 'h8' has no gold decomposition"):
        prepare(config)
    assert not list(out.glob("*.parquet"))


def test_ppo_explicit_id_against_other_ids_fails_naming_the_train_file(
    indexes: dict[str, Path], questions: Path, policy_dir: Path, tmp_path: Path
) -> None:
    judges = {"correctness_llm": False, "relevance": "reference", "reference_match": "id"}
    flashrag = str(indexes["flashrag"])
    config = tiny_config(tmp_path, model=str(policy_dir), train=questions, index=flashrag, judges=judges)
    with pytest.raises(ValueError, match=f"gold passage ids of {questions}"):
        PPOTrainer.from_config(config)


# ------------------------------------------------------------------------------- oracle and world gauge


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_oracle_finds_each_hop_whichever_ids_the_corpus_uses(
    indexes: dict[str, Path], layout: str
) -> None:
    retriever = load_index(indexes[layout])
    example = converted_question()
    gold = resolve_gold_match("auto", {"toy_dev.jsonl": [example]}, retriever)
    (result,) = OracleTeacher(retriever, ColdStartConfig(), gold).solve([example])
    assert result.kept is not None and result.kept.final_answer == "Ada Vale"
    film, studio, _ = LAYOUTS[layout]
    assert [fact["passage_id"] for fact in result.kept.metadata["evidence"]] == [film, studio]
    if layout == "flashrag":  # matched by the ids the corpus does not have, no hop would ever be found
        by_id = GoldMatch("id", "id", 2, 0)
        (rejected,) = OracleTeacher(retriever, ColdStartConfig(), by_id).solve([example])
        assert rejected.kept is None and "hop 1" in rejected.attempts[-1].reason


def test_the_world_gauge_counts_hops_by_the_rule(indexes: dict[str, Path]) -> None:
    retriever = load_index(indexes["flashrag"])
    examples = [converted_question()]
    rule = resolve_gold_match("auto", {"world": examples}, retriever).rule
    ((_, rate),) = hop_hit_rates(examples, retriever.search, k=1, rule=rule).items()
    assert (rate.hops, rate.hops_found) == (2, 2)
    ((_, by_id),) = hop_hit_rates(examples, retriever.search, k=1, rule="id").items()
    assert by_id.hops_found == 0
