"""benchmarks/rl_gain.py end to end on the tiny preset: the base (world to R3-RAG-CS, its evaluations and the
forced-answer control), an RL run from that R3-RAG-CS with settings changed by --set, and a report whose
paired counts match the predictions; and the arguments rl_gain refuses."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from r3rag.config import SFTConfig
from r3rag.data.datasets import load_dataset
from r3rag.evaluation.runner import read_records
from r3rag.jsonl import iter_jsonl
from r3rag.pipeline_config import PipelineConfig
from r3rag.schema import Passage, QAExample, Step, SubQuestion, Trajectory, TrajectoryStatus

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUN = "rloo-hybrid-kl0.05-mean-e1-0.01min-s0"


def run(out: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "rl_gain.py", "--tiny", "--quiet", "--out", str(out), "--dev-questions", "4", *args],
        cwd=BENCHMARKS,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_experiment_runs_the_base_an_rl_run_and_reports_them_paired(tmp_path: Path) -> None:
    run(tmp_path, "--world-seed", "3")
    rl_args = (
        *("--world-seed", "3", "--variant", "rloo", "--rl-minutes", "0.01", "--rl-iterations", "3"),
        *("--kl-target", "0.05", "--snapshot-minutes", "0.001"),
        *("--set", "reward.scale=trajectory", "--set", "ppo_epochs=1", "--tag", "mean-e1"),
    )
    before = run(tmp_path, *rl_args, "--no-train")  # nothing trained yet: nothing to evaluate
    assert "R3-RAG rloo" not in before and not (tmp_path / "rl" / RUN / "ppo" / "final").exists()
    table = run(tmp_path, *rl_args)
    assert table == (tmp_path / "report.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0  # KL, beta, format errors, reward per run
    assert run(tmp_path, "--world-seed", "3", "--report-only") == table  # runs nothing, reads what is there
    assert "world seed 3" in table
    systems, runs = table.split("\n\n")[1:3]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in systems.splitlines() if line.startswith("| ")}
    assert list(rows)[1:] == [
        "untrained rag-cot",
        "untrained ircot",
        "R3-RAG-CS",
        "R3-RAG-CS, forced answer",
        f"R3-RAG {RUN}",
        f"R3-RAG {RUN} @0.001min",  # the model after its first iteration, the snapshot of a shorter budget
    ]
    # the paired counts are those of the two prediction files
    cs = {r["id"]: r["acc"] for r in read_records(tmp_path / "base" / "eval-cs" / "predictions.jsonl")}
    rl = {r["id"]: r["acc"] for r in read_records(tmp_path / "rl" / RUN / "eval" / "predictions.jsonl")}
    assert len(cs) == len(rl) == 4
    gained = sum(1 for q in cs if rl[q] and not cs[q])
    lost = sum(1 for q in cs if cs[q] and not rl[q])
    assert f"+{gained} / -{lost}" in rows[f"R3-RAG {RUN}"]
    metrics = tmp_path / "rl" / RUN / "ppo" / "metrics.jsonl"
    iterations = len(metrics.read_text().splitlines())  # no dev evaluation: one record per iteration
    # a configuration per budget: the snapshot counts as the 0.001-minute run's model
    snapshot, whole = runs.splitlines()[2:4]
    assert snapshot.startswith(
        f"| rloo-hybrid-kl0.05-mean-e1-0.001min | 1 | {rows[f'R3-RAG {RUN} @0.001min'].split(' | ')[2]} |"
    )
    assert " | 1 | " in snapshot.split(" | ", 3)[3]  # its iterations: the first
    whole_acc = rows[f"R3-RAG {RUN}"].split(" | ")[2]
    assert whole.startswith(f"| rloo-hybrid-kl0.05-mean-e1-0.01min | 1 | {whole_acc} |")
    assert f"| {iterations} | " in whole
    # what the rollouts gave the updates: correct / sampled trajectories, counted here from the rollout files
    rollouts = (tmp_path / "rl" / RUN / "ppo" / "rollouts").glob("*.jsonl")
    sampled = [r for path in rollouts for _, r in iter_jsonl(path)]
    correct = sum(bool(r["reward"]["correct"]) for r in sampled)
    signal = next(line for line in table.splitlines() if line.startswith(f"| {RUN} | "))
    assert sampled and signal.endswith(f" | {correct} / {len(sampled)} |")
    per_type = [cell.split(" / ") for cell in signal.split(" | ")[1:-1] if cell != "-"]
    assert sum(int(n) for _, n in per_type) == len(sampled)
    forced = read_records(tmp_path / "base" / "eval-cs-forced" / "predictions.jsonl")
    assert forced and all(r["trajectory"]["steps"] for r in forced)
    config = (tmp_path / "rl" / RUN / "ppo" / "config.yaml").read_text()
    assert "advantage: rloo" in config and "seed: 0" in config and "kl_target: 0.05" in config
    assert "ppo_epochs: 1" in config and "scale: trajectory" in config  # the --set values


def test_transfer_evaluates_the_trained_models_on_another_world_s_dev_questions(tmp_path: Path) -> None:
    run(tmp_path, "--world-seed", "3")
    rl_args = ("--world-seed", "3", "--variant", "rloo", "--rl-minutes", "0.01", "--rl-iterations", "1")
    trained = run(tmp_path, *rl_args)
    name = "rloo-hybrid-0.01min-s0"
    table = run(tmp_path, "--world-seed", "3", "--transfer-world", "4", "--runs", "rloo-*")
    # the rollout table counts the run's own (world 3) questions by their types, not world 4's same ids
    signal = [line for line in table.splitlines() if line.startswith(f"| {name} | ")]
    assert signal and signal == [line for line in trained.splitlines() if line.startswith(f"| {name} | ")]
    target = tmp_path / "transfer-4"
    assert table == (target / "report.md").read_text() and "world seed 4" in table
    assert run(tmp_path, "--world-seed", "3", "--transfer-world", "4", "--report-only") == table
    with pytest.raises(AssertionError, match=r"--runs 'gae-\*' matches no RL run .*RL runs: rloo-hybrid"):
        run(tmp_path, "--world-seed", "3", "--transfer-world", "4", "--report-only", "--runs", "gae-*")
    systems = table.split("\n\n")[2]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in systems.splitlines() if line.startswith("| ")}
    assert list(rows)[1:] == ["R3-RAG-CS", f"R3-RAG {name}"]  # no baselines, no forced answer
    # the questions are world 4's, asked of the models trained on world 3
    questions = {
        world: [e.question for e in load_dataset(folder / "base" / "world" / "dev.jsonl")][:4]
        for world, folder in ((3, tmp_path), (4, target))
    }
    assert questions[3] != questions[4]
    for folder, model in (
        (target / "base" / "eval-cs", tmp_path / "base" / "sft" / "final"),
        (target / "rl" / name / "eval", tmp_path / "rl" / name / "ppo" / "final"),
    ):
        assert [r["question"] for r in read_records(folder / "predictions.jsonl")] == questions[4]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["model"]["path"] == str(model.resolve())
        assert manifest["retriever"]["source"] == str((target / "base" / "index").resolve())
    cs = {r["id"]: r["acc"] for r in read_records(target / "base" / "eval-cs" / "predictions.jsonl")}
    rl = {r["id"]: r["acc"] for r in read_records(target / "rl" / name / "eval" / "predictions.jsonl")}
    gained = sum(1 for q in cs if rl[q] and not cs[q])
    lost = sum(1 for q in cs if cs[q] and not rl[q])
    assert f"+{gained} / -{lost}" in rows[f"R3-RAG {name}"]


@pytest.fixture
def rl_gain(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("rl_gain")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "ppo_epochs=1"], "--set and --tag go together"),
        (["--tag", "e1"], "--set and --tag go together"),
        (["--set", "ppo_epochs", "--tag", "e1"], "expected KEY=VALUE, got 'ppo_epochs'"),
        (["--set", "ppo_epochs=1", "--tag", "E1 x"], "use lowercase letters"),
        (["--transfer-world", "0"], "is the world the models were trained on"),
        (["--transfer-world", "4", "--variant", "rloo"], "--transfer-world trains nothing"),
        (["--sft-epochs", "0"], "the base's configuration: sft.epochs: Input should be greater than 0"),
        (
            ["--sft-examples", "0"],
            "the base's configuration: sft.max_examples: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    rl_gain: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        rl_gain.main(["--out", str(tmp_path), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_sft_seed_reaches_the_base_and_defaults_to_the_sft_configs(rl_gain: ModuleType) -> None:
    assert rl_gain.base_config(0, 200, 768, tiny=False, sft_seed=43).sft.seed == 43
    assert rl_gain.base_config(0, 200, 768, tiny=False).sft.seed == SFTConfig.model_fields["seed"].default


def test_sft_epochs_reach_the_base_and_default_to_the_presets_one(rl_gain: ModuleType) -> None:
    assert rl_gain.base_config(0, 200, None, tiny=False, sft_epochs=2.0).sft.epochs == 2.0
    assert (
        rl_gain.base_config(0, 200, None, tiny=False).sft.epochs
        == PipelineConfig.preset("small").sft.epochs
        == 1
    )


def test_sft_trains_two_epochs_on_every_cold_start_example_unless_told_otherwise(
    rl_gain: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rl_gain.base_config(0, 200, None, tiny=False).sft.max_examples is None  # not the quickstart's 384
    assert rl_gain.base_config(0, 200, 768, tiny=False).sft.max_examples == 768

    class Built(Exception):
        """Raised with the examples and epochs main asked for: the configuration is all this test needs."""

    def build(*args: object) -> None:
        raise Built(args[2], args[5])  # the examples, the epochs

    monkeypatch.setattr(rl_gain, "base_config", build)
    asked = []
    for flags in ([], ["--sft-examples", "768"], ["--sft-epochs", "1"]):
        with pytest.raises(Built) as built:
            rl_gain.main(["--out", str(tmp_path), "--report-only", *flags])
        asked.append(built.value.args)
    assert asked == [(None, 2.0), (768, 2.0), (None, 1.0)]


def test_set_reaches_nested_fields_and_names_a_missing_one(rl_gain: ModuleType, tmp_path: Path) -> None:
    config = rl_gain.base_config(0, 4, 8, tiny=True)
    (tmp_path / "base").mkdir()
    overrides = (("reward.scale", "trajectory"), ("questions_per_iteration", 8))
    settings = rl_gain.RLSettings("grpo", "outcome", 5, 10, overrides=overrides, tag="mean-q8")
    run = rl_gain.rl_config(config, tmp_path / "base", tmp_path / "run", settings, seed=2)
    chosen = (run.reward.scale, run.reward.mode, run.questions_per_iteration)
    assert chosen == ("trajectory", "outcome", 8)
    assert (run.advantage, run.seed, settings.configuration()) == ("grpo", 2, "grpo-outcome-mean-q8-5min")
    typo = rl_gain.RLSettings("rloo", "hybrid", 5, 10, overrides=(("reward.scal", "x"),), tag="t")
    with pytest.raises(ValueError, match="--set reward.scal: PPOConfig has no field"):
        rl_gain.rl_config(config, tmp_path / "base", tmp_path / "run", typo, seed=0)


def test_the_iterations_table_shows_each_iteration_at_the_minute_it_ended(rl_gain: ModuleType) -> None:
    first = {
        "iteration": 1,
        "time/iteration": 310.0,
        "rollout/accuracy": 0.21875,
        "rollout/answered": 0.90625,
        "rollout/format_error": 0.03125,
        "rollout/retrievals_per_trajectory": 2.59375,
        "reward/trajectory_mean": 0.8,
        "ppo/kl": 0.0,
    }
    second = {**first, "iteration": 2, "time/iteration": 300.0, "ppo/kl": 0.012}
    del second["rollout/format_error"]  # a key a record lacks (a run from before it was logged)
    table = rl_gain.iterations_table(
        {"rloo-a": [first, second], "gae-b": [{**first, "time/iteration": 40.0}]}
    )
    assert table.splitlines()[2:] == [
        "| RL run | iteration | minutes | rollout Acc | answered | format errors | searches/trajectory"
        " | reward/trajectory | KL/token |",
        "|---|---|---|---|---|---|---|---|---|",
        "| rloo-a | 1 | 5 | 22% | 91% | 3% | 2.59 | 0.80 | 0.000 |",  # 310 s
        "| rloo-a | 2 | 10 | 22% | 91% | - | 2.59 | 0.80 | 0.012 |",  # 610 s: minutes add up over a run
        "| gae-b | 1 | 1 | 22% | 91% | 3% | 2.59 | 0.80 | 0.000 |",  # 40 s: each run counts from 0
    ]


def test_the_evidence_table_averages_recall_per_type_and_counts_questions_with_all_gold(
    rl_gain: ModuleType,
) -> None:
    types = {"c1": "chain", "c2": "chain", "b1": "bridge", "n1": "chain"}
    cs = {
        "c1": {"recall": 0.25},  # one hop of four
        "c2": {"recall": 1.0},  # every hop
        "b1": {"recall": 0.5},
        "n1": {"recall": None},  # no gold passages: left out
    }
    untrained = {i: {"recall": None} for i in types}  # a method that never retrieves: no row
    table = rl_gain.evidence_table({"R3-RAG-CS": cs, "untrained cot": untrained}, types)
    assert table.splitlines()[2:] == [
        "| system | bridge | chain | all | all gold found |",
        "|---|---|---|---|---|",
        "| R3-RAG-CS | 50.0 | 62.5 | 58.3 | 33.3 |",  # chain (0.25 + 1) / 2; all 1.75 / 3; 1 of 3 whole
    ]


def queried(*queries: str) -> dict[str, object]:
    """A prediction record whose trajectory searched ``queries`` and then answered."""
    steps = [Step(index=n, analysis="a", query=q) for n, q in enumerate(queries, start=1)]
    steps.append(Step(index=len(steps) + 1, analysis="so", answer="x"))
    return {"trajectory": Trajectory("?", "Q?", steps, "x", TrajectoryStatus.ANSWERED).to_dict()}


def test_the_bridge_table_averages_the_share_of_bridges_named_per_type(rl_gain: ModuleType) -> None:
    """A chain with bridges Ann and Bo, a compositional question with bridge Cy, a comparison (no bridges:
    left out). R3-RAG-CS named Ann (1/2) and Cy (1/1): chain 50.0, compositional 100.0, all 75.0; a
    system without recorded trajectories has no row."""

    def question(i: str, kind: str, *hops: tuple[str, str]) -> QAExample:
        return QAExample(i, "Q?", ["x"], decomposition=[SubQuestion(q, a) for q, a in hops], type=kind)

    dev = {
        "c1": question("c1", "chain", ("q1?", "Ann"), ("Who hired Ann?", "Bo"), ("Where was Bo born?", "x")),
        "k1": question("k1", "compositional", ("q1?", "Cy"), ("When was Cy born?", "x")),
        "m1": question("m1", "comparison", ("A's year?", "1901"), ("B's year?", "1902")),
    }
    cs = {
        "c1": queried("first hop?", "Who hired Ann?"),
        "k1": queried("When was Cy born?"),
        "m1": queried("a"),
    }
    untrained = {i: {"trajectory": None} for i in dev}
    table = rl_gain.bridge_table({"R3-RAG-CS": cs, "untrained cot": untrained}, dev)
    assert table.splitlines()[2:] == [
        "| system | chain | compositional | all |",
        "|---|---|---|---|",
        "| R3-RAG-CS | 50.0 | 100.0 | 75.0 |",
    ]


def hop_question(i: str, kind: str, *hops: tuple[str, list[str]]) -> QAExample:
    """A question of ``kind`` whose gold hops are (answer, gold passage ids), the last answer its gold."""
    decomposition = [SubQuestion(f"hop {a}?", a, supporting_ids=ids) for a, ids in hops]
    return QAExample(i, "Q?", [hops[-1][0]], decomposition=decomposition, type=kind)


def walked(
    *steps: tuple[str, list[str], str | None], texts: dict[str, str] | None = None, done: bool = True
) -> dict[str, object]:
    """A prediction record whose trajectory has these (analysis, passage ids retrieved, answer) steps; each
    passage's text from ``texts`` ("x" without)."""
    built = [
        Step(
            index=n,
            analysis=text,
            query=None if answer else "q",
            answer=answer,
            passages=[Passage(pid, "t", (texts or {}).get(pid, "x")) for pid in ids],
        )
        for n, (text, ids, answer) in enumerate(steps, start=1)
    ]
    status = TrajectoryStatus.ANSWERED if done else TrajectoryStatus.OUT_OF_STEPS
    return {"trajectory": Trajectory("?", "Q?", built, built[-1].answer, status).to_dict()}


def test_the_hops_table_follows_each_reading_question_to_the_first_hop_not_read(rl_gain: ModuleType) -> None:
    """k1 reads hop 1 (Ann, after retrieving p1) and never retrieves hop 2's passage (its answer a guess);
    k2 retrieves hop 1's passage but names Bo only before it ("Boston" after it is not Bo); c1 reads all
    three hops. A comparison and a question with a hop lacking gold passages are left out: hop 1 3 / 3 / 2,
    hop 2 2 / 1 / 1, hop 3 1 / 1 / 1."""
    dev = {
        "k1": hop_question("k1", "compositional", ("Ann", ["p1"]), ("Rome", ["p2"])),
        "k2": hop_question("k2", "compositional", ("Bo", ["p3"]), ("Oslo", ["p4"])),
        "c1": hop_question("c1", "chain", ("Cy", ["p5"]), ("Dee", ["p6"]), ("Paris", ["p7"])),
        "m1": hop_question("m1", "comparison", ("1901", ["p8"]), ("1902", ["p9"])),
        "n1": hop_question("n1", "compositional", ("Eve", ["p1"]), ("Lima", [])),
    }
    cs = {
        "k1": walked(("search", ["p1"], None), ("Ann founded it.", ["p0"], None), ("so", [], "Rome")),
        "k2": walked(("Bo, I think.", ["p3"], None), ("Boston is near.", [], "Boston")),
        "c1": walked(
            ("s", ["p5"], None), ("Cy.", ["p6"], None), ("then Dee", ["p7"], None), ("so", [], "Paris")
        ),
        "m1": walked(("s", ["p8"], None), ("1901", [], "A")),
        "n1": walked(("s", ["p1"], None), ("Eve", [], "Lima")),
    }
    untrained = {i: {"trajectory": None} for i in dev}
    table = rl_gain.hops_table({"R3-RAG-CS": cs, "untrained cot": untrained}, dev)
    assert table.splitlines()[2:] == [
        "| system | hop 1 | hop 2 | hop 3 |",
        "|---|---|---|---|",
        "| R3-RAG-CS | 3 / 3 / 2 | 2 / 1 / 1 | 1 / 1 / 1 |",
    ]


def test_the_quotes_table_says_which_sentence_the_step_after_a_hop_passage_quoted(
    rl_gain: ModuleType,
) -> None:
    """k1 quotes its sub-question (not a sentence), then "Annex is big.": another sentence of hop 1's passage
    (Ann not a whole word), not its first; k2 quotes hop 1's answer sentence, its passage's first, then for
    hop 2 a sentence of the other passage retrieved with it; k3 retrieves its hop passage at its last step
    (no step after: left out); k4 quotes nothing; k5 quotes a year of its hop's passage for a name, k6 another
    year for a year (not a year for a name); the comparison is left out. 6 hops: the answer's sentence once
    (a first one), another sentence of the hop's passage three times (none first), one of them a year for a
    name; the answer in the first sentence of 3 of 6 (k2's hop 1, k5, k6)."""
    texts = {
        "p0": "Zed lives here.",
        "p1": "It is old. Annex is big. Ann founded it.",
        "p3": "Bo wrote it. Bo was born in 1950.",
        "p4": "It is cold. Its capital is Oslo.",
        "p9": "Lima is warm.",
        "p5": "Cy sings.",
        "p6": "Cy is tall. Cy met Dee.",
        "p8": "A was founded in 1901.",
        "p10": "Kim sang it. It came out in 1977.",
        "p11": "It came out in 1977. It sold well in 1980.",
    }
    quoting = partial(walked, texts=texts)

    dev = {
        "k1": hop_question("k1", "compositional", ("Ann", ["p1"]), ("Rome", ["p2"])),
        "k2": hop_question("k2", "compositional", ("Bo", ["p3"]), ("Oslo", ["p4"])),
        "k3": hop_question("k3", "compositional", ("Cy", ["p5"]), ("Pisa", ["p7"])),
        "k4": hop_question("k4", "inference", ("Dee", ["p6"]), ("Eve", ["p7"])),
        "k5": hop_question("k5", "compositional", ("Kim", ["p10"]), ("Rome", ["p2"])),
        "k6": hop_question("k6", "compositional", ("1977", ["p11"]), ("Rome", ["p2"])),
        "m1": hop_question("m1", "comparison", ("1901", ["p8"]), ("1902", ["p9"])),
    }
    cs = {
        "k1": quoting(
            ("s", ["p1", "p0"], None),
            ('For "hop Ann?" the passage says: "Annex is big."', [], None),
            ("so", [], "Rome"),
        ),
        "k2": quoting(
            ("s", ["p3"], None),
            ('The first document answers it: "Bo wrote it." So it is Bo.', ["p4", "p9"], None),
            ('I found what I needed: "Lima is warm." Hence the answer is Lima.', [], "Lima"),
        ),
        "k3": quoting(("s", ["p0"], None), ('"Zed lives here."', ["p5"], None), done=False),
        "k4": quoting(("s", ["p6"], None), ("No luck.", [], None), ("so", [], "x")),
        "k5": quoting(("s", ["p10"], None), ('It says "It came out in 1977." So 1977.', [], "1977")),
        "k6": quoting(("s", ["p11"], None), ('It says "It sold well in 1980." So 1980.', [], "1980")),
        "m1": quoting(("s", ["p8"], None), ('"A was founded in 1901."', [], "A")),
    }
    untrained = {i: {"trajectory": None} for i in dev}
    table = rl_gain.quotes_table({"R3-RAG-CS": cs, "untrained cot": untrained}, dev)
    assert table.splitlines()[-1] == "| R3-RAG-CS | 6 | 1 / 0 | 0 / 3 | 1 | 1 | 1 | 3 (50%) |"
    assert len(table.splitlines()) == 5  # no row for the system without trajectories


def test_the_time_table_gives_each_phase_its_share_of_a_runs_iterations(rl_gain: ModuleType) -> None:
    first = {"iteration": 1, "time/iteration": 500.0, "time/rollout": 150.0, "time/update": 240.0}
    first.update({"time/policy_pass": 60.0, "time/reference_pass": 30.0})
    second = {**first, "iteration": 2, "time/iteration": 700.0, "time/rollout": 330.0}
    untimed = {"iteration": 3, "time/iteration": 900.0}  # lacks the phases: left out
    table = rl_gain.time_table({"rloo-a": [first, second, untimed], "old": [untimed]})
    assert table.splitlines()[2:] == [
        "| RL run | iterations | minutes/iteration | generation | log-prob passes | update | other |",
        "|---|---|---|---|---|---|---|",
        # 1,200 s over 2 iterations; generation (150 + 330) / 1200; passes 180 / 1200; update 480 / 1200
        "| rloo-a | 2 | 10.0 | 40% | 15% | 40% | 5% |",
    ]


def test_the_sides_table_counts_the_side_each_answer_takes_on_two_way_questions(rl_gain: ModuleType) -> None:
    """Gold: second, second, first, no, no (the chain question counts in the last column only): always
    "the second" and "no" would score 4 of 5. R3-RAG-CS answers the first, the first again (equal up to
    case and articles), something else, yes, and nothing; the RL run "the second" and "no" everywhere. Right
    by gold side (as the evaluation's acc says): R3-RAG-CS none; the RL run both "second" questions (w1, w2)
    and both "no" (y1, y2), not the "first" one (w3). On the chain question R3-RAG-CS answered "no" (a two-way
    form: 100%), the RL run nothing (0%), the gold "Zed" (0%)."""
    dev = {
        "w1": QAExample("w1", "Who was born first, Ann Lee or Bo Ma?", ["Bo Ma"], type="comparison"),
        "w2": QAExample("w2", "Which came out first, The Sea or Rain?", ["Rain"], type="comparison"),
        "w3": QAExample("w3", "Whose creator was born later: X or Y?", ["X"], type="bridge_comparison"),
        "y1": QAExample("y1", "Do A and B have the same creator?", ["no"], type="comparison"),
        "y2": QAExample(
            "y2", "Were the founders of A and B born in the same city?", ["no"], type="bridge_comparison"
        ),
        "c1": QAExample("c1", "Where was the founder of A born?", ["Zed"], type="chain"),
    }
    cs = {
        "w1": {"prediction": "Ann Lee"},
        "w2": {"prediction": "the sea"},
        "w3": {"prediction": "Zed"},
        "y1": {"prediction": "Yes."},
        "y2": {"prediction": None},
        "c1": {"prediction": "no"},
    }
    rl = {"w1": {"prediction": "Bo Ma", "acc": 1.0}, "w2": {"prediction": "Rain", "acc": 1.0}, "c1": {}}
    rl.update({"w3": {"prediction": "Y", "acc": 0.0}})
    rl.update({"y1": {"prediction": "no", "acc": 1.0}, "y2": {"prediction": "no", "acc": 1.0}})
    table = rl_gain.sides_table({"R3-RAG-CS": cs, "rloo": rl}, dev)
    lines = table.splitlines()
    assert "would score 80.0% of them" in lines[0]
    assert lines[2:] == [
        "| answers | n | first | second | yes | no | other | right by gold side: first / second / yes / no "
        "| two-way form on the other types (%) |",
        "|---|---|---|---|---|---|---|---|---|",
        "| gold answers | 5 | 1 | 2 | 0 | 2 | 0 | - | 0.0 |",
        "| R3-RAG-CS | 5 | 2 | 0 | 1 | 0 | 2 | 0 / 0 / 0 / 0 | 100.0 |",
        "| rloo | 5 | 0 | 3 | 0 | 2 | 0 | 0 / 2 / 0 / 2 | 0.0 |",
    ]


def test_the_comparing_table_checks_the_answer_against_the_years_the_final_step_states(
    rl_gain: ModuleType,
) -> None:
    """Four dated comparisons (the yes / no one and the chain question are not asked). The run's final steps:
    w1 (born first) states Ann Lee 1950 and Bo Ma 1930, that 1950 is later than 1930 (true), and answers Ann
    Lee: its years make Bo Ma right, so it inverts them after a right order; w2 (newer) states The Sea 2001,
    Rain 1990, that 2001 comes before 1990 (false), and answers "the sea": it follows them (equal once
    normalised); w3 (born later) states one year only; w4 (later) states Moon 1980, Sun 1990, that 1980 comes
    after 1990 (false), and answers Moon: it inverts them after a wrong order. R3-RAG-CS states both years on
    w1 ("Ann Lee: 1900; Bo Ma: 1920."), a false order and then a true one (the last counts), and answers Ann
    Lee (follows); on w2 Rain's year is further than a few words away ("Rain was, as everyone knows from the
    records, 1990"), so not stated; on w3 it states both, a false order, and answers neither entity. A system
    without trajectories states none."""
    dev = {
        "w1": QAExample("w1", "Who was born first, Ann Lee or Bo Ma?", ["Bo Ma"], type="comparison"),
        "w2": QAExample("w2", "Which is newer, The Sea or Rain?", ["The Sea"], type="comparison"),
        "w3": QAExample("w3", "Whose creator was born later: X or Y?", ["X"], type="bridge_comparison"),
        "w4": QAExample("w4", "Which was released later, Moon or Sun?", ["Sun"], type="comparison"),
        "y1": QAExample("y1", "Do A and B have the same creator?", ["no"], type="comparison"),
        "c1": QAExample("c1", "Who was born first, the writer of A or B?", ["A"], type="chain"),
    }

    def record(prediction: str, final: str) -> dict[str, Any]:
        return {
            "prediction": prediction,
            "trajectory": {"steps": [{"analysis": "Search."}, {"analysis": final}]},
        }

    rl = {
        "w1": record(
            "Ann Lee", "Ann Lee gives 1950, while Bo Ma gives 1930. 1950 is later than 1930. Ann Lee."
        ),
        "w2": record("the sea", "So The Sea has 2001 and Rain has 1990. 2001 comes before 1990."),
        "w3": record("Y", "X has 1900."),
        "w4": record("Moon", "Moon: 1980; Sun: 1990. 1980 comes after 1990. So the answer is Moon."),
        "y1": record("no", "A: 1900; B: 1950."),
        "c1": record("A", "A: 1900; B: 1950."),
    }
    cs = {
        "w1": record(
            "Ann Lee", "Ann Lee: 1900; Bo Ma: 1920. 1920 is earlier than 1900. 1900 comes before 1920."
        ),
        "w2": record("Rain", "The Sea: 2001. Rain was, as everyone knows from the records, 1990"),
        "w3": record("Zed", "X has 1900 and Y has 1950. 1900 is later than 1950."),
    }
    untrained = {i: {"prediction": "X", "trajectory": None} for i in dev}
    table = rl_gain.comparing_table({"R3-RAG-CS": cs, "rloo": rl, "untrained cot": untrained}, dev)
    assert table.splitlines()[2:] == [
        "| system | questions | final step states both years | their order stated: right / wrong "
        "| answer follows them | answer inverts them | inverts after a right order |",
        "|---|---|---|---|---|---|---|",
        "| R3-RAG-CS | 3 | 2 | 1 / 1 | 1 | 0 | 0 |",
        "| rloo | 4 | 3 | 1 / 2 | 1 | 2 | 1 |",
        "| untrained cot | 4 | 0 | 0 / 0 | 0 | 0 | 0 |",
    ]
    assert rl_gain.comparing_table({"rloo": rl}, {"c1": dev["c1"]}) == ""


@pytest.mark.parametrize(
    ("analysis", "right"),
    [
        ("So the answer is A.", None),
        ("A: 1939; B: 1922. 1939 is later than 1922. The answer is B.", True),
        ("1922 comes after 1939.", False),
        ("1939 is earlier than 1939.", False),
        ("1800 comes before 1900. Then 1950 is earlier than 1930.", False),
        ("1950 is earlier than 1930, and so 1930 comes before 1950.", True),
    ],
)
def test_an_order_claim_is_checked_against_its_own_years(
    rl_gain: ModuleType, analysis: str, right: bool | None
) -> None:
    """The last claim of the teacher's four order phrasings counts; equal years are never in order."""
    assert rl_gain.stated_order_right(analysis) is right


def test_which_end_a_comparison_asks_for_is_read_without_the_names(rl_gain: ModuleType) -> None:
    names = ("The First Summer", "Ada Last")
    assert rl_gain.asks_earlier("Who was born first, Ada Moss or Bo Lind?", ("Ada Moss", "Bo Lind")) is True
    assert rl_gain.asks_earlier("Which is younger, The First Summer or Ada Last?", names) is False
    assert rl_gain.asks_earlier("Which of The First Summer and Ada Last is older?", names) is True
    assert rl_gain.asks_earlier("Were The First Summer and Ada Last born in the same year?", names) is None
    assert rl_gain.asks_earlier("Which came first and which came later, X or Y?", ("X", "Y")) is None


def test_the_reading_table_counts_year_answers_and_the_commonest_phrasing_of_a_found_fact(
    rl_gain: ModuleType,
) -> None:
    """Reading questions whose gold is not a year: r1 (Rograd) and r3 (Zed); r2's gold is a year and the
    two-way w1 is not a reading question, so neither counts. R3-RAG-CS answers r1 right and r3 with "1900"
    (1 of 2 a year); the run answers r1 with "1950" and r3 with "1961." (a year once normalised): 2 of 2.
    Phrasings, over every question's steps: R3-RAG-CS states three facts, two in the teacher's first phrasing
    (67%) and one in the third; a step that states none ("I will search.") is not counted; the run states
    two, both in the third (100%). A system without trajectories states none."""
    dev = {
        "r1": QAExample("r1", "Where was the writer of Garden born?", ["Rograd"], type="compositional"),
        "r2": QAExample("r2", "When was the director of Sea born?", ["1961"], type="compositional"),
        "r3": QAExample("r3", "Where is the capital of the country of Bo?", ["Zed"], type="chain"),
        "w1": QAExample("w1", "Which came out first, The Sea or Rain?", ["Rain"], type="comparison"),
    }
    fill = {"t": "Garden", "s": "Ann was born in Rograd in 1950.", "q": "Where was Ann born?", "nth": "first"}

    def record(prediction: str, *phrasings: int) -> dict[str, Any]:
        analyses = [rl_gain.FOUND[n].format(**fill, ans=prediction) for n in phrasings]
        steps = [{"analysis": "I will search."}, *({"analysis": a} for a in analyses)]
        return {"prediction": prediction, "trajectory": {"steps": steps}}

    cs = {"r1": record("Rograd", 0, 0), "r2": record("1961", 2), "r3": record("1900"), "w1": record("Rain")}
    rl = {"r1": record("1950", 2), "r2": record("1961"), "r3": record("1961.", 2), "w1": record("Rain")}
    untrained = {i: {"prediction": "Zed", "trajectory": None} for i in dev}
    table = rl_gain.reading_table({"R3-RAG-CS": cs, "rloo": rl, "untrained cot": untrained}, dev)
    first, third = (f"`{rl_gain.FOUND[n]}`" for n in (0, 2))
    assert table.splitlines()[2:] == [
        "| system | reading questions, gold not a year | answered with a year | steps stating a found fact "
        "| in the commonest phrasing | commonest phrasing |",
        "|---|---|---|---|---|---|",
        f"| R3-RAG-CS | 2 | 1 (50%) | 3 | 67% | {first} |",
        f"| rloo | 2 | 2 (100%) | 2 | 100% | {third} |",
        "| untrained cot | 2 | 0 (0%) | 0 | - | - |",
    ]


def test_the_halves_table_pairs_each_run_with_r3rag_cs_on_the_reading_and_the_two_way_questions(
    rl_gain: ModuleType,
) -> None:
    """R3-RAG-CS gets r2 (chain), w1 and w2 right. The run ``up`` gains r1 and r3 and loses w1: reading
    +2 / -0 (McNemar: 2 x (1/2)^2 = 0.5), two-way +0 / -1 (p = 1). The run ``down`` loses r2 and has no
    verdict on w2 (not paired): reading +0 / -1, two-way +0 / -0. The forced-answer row has no budget: not an
    RL run."""
    types = {"r1": "compositional", "r2": "chain", "r3": "inference", "w1": "comparison"}
    types["w2"] = "bridge_comparison"

    def verdicts(right: str, ids: str = "r1 r2 r3 w1 w2") -> dict[str, dict[str, float]]:
        return {i: {"acc": float(i in right.split())} for i in ids.split()}

    by_system = {
        "R3-RAG-CS": verdicts("r2 w1 w2"),
        "R3-RAG-CS, forced answer": verdicts(""),
        "up": verdicts("r1 r2 r3 w2"),
        "down": verdicts("w1", "r1 r2 r3 w1"),
    }
    budgets = {name: rl_gain.Budget("rloo", 9, 60.0) for name in ("up", "down")}
    lines = rl_gain.halves_table(by_system, budgets, types).splitlines()
    assert lines[2:] == [
        "| against R3-RAG-CS | reading questions (3) | two-way questions (2) |",
        "|---|---|---|",
        "| up | +2 / -0 (p = 0.5) | +0 / -1 (p = 1) |",
        "| down | +0 / -1 (p = 1) | +0 / -0 (p = 1) |",
    ]
    assert rl_gain.halves_table(by_system, {}, types) == ""
    only_reading = {i: "chain" for i in types}
    assert rl_gain.halves_table(by_system, budgets, only_reading) == ""


def test_transfer_without_a_trained_base_is_refused_before_building_anything(
    rl_gain: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="no R3-RAG-CS to transfer; build the base first"):
        rl_gain.main(["--out", str(tmp_path), "--transfer-world", "4", "--tiny"])
    assert not any(tmp_path.iterdir())


def test_runs_picks_the_finished_runs_its_patterns_match_and_refuses_one_matching_none(
    rl_gain: ModuleType, tmp_path: Path
) -> None:
    for name in (
        "rloo-hybrid-60min-s0",
        "rloo-hybrid-60min-s1",
        "gae-hybrid-60min-s0",
        "grpo-hybrid-60min-s0",
    ):
        ppo = tmp_path / "rl" / name / "ppo"
        (ppo / "final").mkdir(parents=True)
        if name != "grpo-hybrid-60min-s0":  # still training: no final model yet
            (ppo / "final" / "config.json").write_text("{}")

    def names(*patterns: str) -> list[str]:
        return [r.name for r in rl_gain.finished_runs(tmp_path, patterns)]

    assert names() == ["gae-hybrid-60min-s0", "rloo-hybrid-60min-s0", "rloo-hybrid-60min-s1"]
    assert names("rloo-*") == ["rloo-hybrid-60min-s0", "rloo-hybrid-60min-s1"]
    assert names("*-s0", "rloo-*-s1") == [
        "gae-hybrid-60min-s0",
        "rloo-hybrid-60min-s0",
        "rloo-hybrid-60min-s1",
    ]
    assert names("gae-hybrid-60min-s0") == ["gae-hybrid-60min-s0"]
    with pytest.raises(
        SystemExit, match=r"--runs 'grpo-\*' matches no finished RL run .*finished RL runs: gae-hybrid"
    ):
        names("rloo-*", "grpo-*")  # grpo's run has not finished


def test_the_curves_name_the_runs_when_none_logs_a_kl(rl_gain: ModuleType, tmp_path: Path) -> None:
    records = [
        {"iteration": i, "time/iteration": 60.0, "rollout/format_error": 0.0, "reward/trajectory_mean": 0.5}
        for i in (1, 2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of a legend over a panel without lines
        rl_gain.plot_curves({"rloo-kl0-60min-s0": records}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_report_takes_the_runs_its_patterns_match_and_refuses_one_matching_none(
    rl_gain: ModuleType, tmp_path: Path
) -> None:
    for name, lines in (
        ("rloo-hybrid-60min-s0", ['{"iteration": 1}', '{"iteration": 2}']),
        ("gae-hybrid-60min-s0", ['{"iteration": 1}']),
        ("grpo-hybrid-60min-s0", []),  # started, no iteration recorded yet
    ):
        ppo = tmp_path / "rl" / name / "ppo"
        ppo.mkdir(parents=True)
        (ppo / "metrics.jsonl").write_text("".join(f"{line}\n" for line in lines))

    assert rl_gain.run_records(tmp_path) == {
        "gae-hybrid-60min-s0": [{"iteration": 1}],
        "rloo-hybrid-60min-s0": [{"iteration": 1}, {"iteration": 2}],
    }
    assert list(rl_gain.run_records(tmp_path, ["rloo-*"])) == ["rloo-hybrid-60min-s0"]
    assert list(rl_gain.run_records(tmp_path, ["*-s0", "gae-*"])) == [
        "gae-hybrid-60min-s0",
        "rloo-hybrid-60min-s0",
    ]
    with pytest.raises(SystemExit, match=r"--runs 'grpo-\*' matches no RL run .*RL runs: gae-hybrid"):
        rl_gain.run_records(tmp_path, ["grpo-*"])  # grpo's run has no record to report
