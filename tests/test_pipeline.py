"""`r3rag quickstart --preset tiny` end to end: every stage's artifacts, a crash resumed where it happened, a
finished folder rerun as a no-op, one stage redone alone, and folders that refuse another config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from r3rag.cli import app
from r3rag.pipeline import PipelineError, bind_folder, run_pipeline
from r3rag.pipeline_config import PipelineConfig
from r3rag.rl.ppo import PPOTrainer

runner = CliRunner()
BEFORE_PPO = ["world", "index", "base-model", "coldstart", "sft"]
FROM_PPO = ["ppo", "eval-base", "eval-cs", "eval-r3rag"]
SYSTEMS = ["untrained CoT", "untrained RAG with CoT", "untrained IRCoT", "R3-RAG-CS", "R3-RAG"]
ARTIFACTS = [
    "quickstart.yaml",
    "world/corpus.jsonl",
    "world/train.jsonl",
    "world/dev.jsonl",
    "index/manifest.json",
    "tiny-model/config.json",
    "tiny-model/tokenizer.json",
    "coldstart/trajectories.jsonl",
    "coldstart/sft.jsonl",
    "coldstart/stats.json",
    "sft/final/config.json",
    "sft/final/agent.yaml",
    "ppo/final/config.json",
    "ppo/curve.png",
    "ppo/metrics.jsonl",
    *(
        f"{folder}/{name}"
        for folder in ("eval-base", "eval-cs", "eval-r3rag")
        for name in (
            "results.md",
            "results.json",
            "accuracy_vs_steps.png",
            "predictions.jsonl",
            "manifest.json",
        )
    ),
    "timings.json",
    "results.md",
    "results.json",
]


def quickstart(out: Path, *args: str) -> Any:
    return runner.invoke(app, ["quickstart", "--out", str(out), *args])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def ran(out: Path) -> list[str]:
    """The stages the latest run did (the others it skipped)."""
    return [s["name"] for s in read_json(out / "results.json")["stages"] if s["ran"]]


def copy_of(resumed: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the finished quickstart folder for a test that reruns or changes it: the module fixture is
    shared, and a test that changed it would change what the tests after it see."""
    copy = tmp_path / "copy"
    shutil.copytree(resumed["out"], copy)
    return copy


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny quickstart that crashes in PPO, then the same command run again to the end."""
    out = tmp_path_factory.mktemp("quickstart") / "run"

    def crash(self: PPOTrainer, progress: bool = True) -> list[dict]:
        raise RuntimeError("simulated crash")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PPOTrainer, "train", crash)
        with pytest.raises(PipelineError, match=r"\[6/9\] PPO \(R3-RAG\) failed: simulated crash"):
            run_pipeline(PipelineConfig.preset("tiny"), out, progress=False)
    crashed = read_json(out / "timings.json")
    result = quickstart(out, "--preset", "tiny")
    return {"out": out, "crashed": crashed, "result": result}


def test_a_crash_resumes_at_the_stage_that_crashed(resumed: dict[str, Any]) -> None:
    out, result = resumed["out"], resumed["result"]
    assert result.exit_code == 0, result.output
    assert list(resumed["crashed"]["stages"]) == BEFORE_PPO
    assert ran(out) == FROM_PPO
    timings = read_json(out / "timings.json")["stages"]
    assert list(timings) == BEFORE_PPO + FROM_PPO
    assert {name: timings[name] for name in BEFORE_PPO} == resumed["crashed"]["stages"]
    assert "[5/9] SFT (R3-RAG-CS): done earlier" in result.stderr
    assert "[6/9] PPO (R3-RAG): done in" in result.stderr


def test_every_stage_leaves_its_artifacts_and_the_table_has_five_rows(resumed: dict[str, Any]) -> None:
    out, result = resumed["out"], resumed["result"]
    missing = [name for name in ARTIFACTS if not (out / name).exists()]
    assert not missing
    rows = read_json(out / "results.json")["rows"]
    assert [r["system"] for r in rows] == SYSTEMS
    for row in rows:
        assert row["questions"] == 4
        for key in ("acc", "f1", "em"):
            assert 0.0 <= row[key] <= 1.0
        assert row["retrievals"] >= 0.0
    assert [r["folder"] for r in rows] == ["eval-base"] * 3 + ["eval-cs", "eval-r3rag"]
    assert rows[-1]["model"] == str(out.resolve() / "ppo" / "final")
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert all(f"| {system} |" in markdown for system in SYSTEMS)
    assert all(system in result.stdout for system in SYSTEMS)
    assert "ppo/final" in result.stdout and "eval-r3rag/results.md" in result.stdout
    cs_eval = read_json(out / "eval-cs" / "manifest.json")
    assert cs_eval["top_k"] == 2 and cs_eval["settings"]["r3rag"]["max_doc_chars"] == 512  # trained settings
    assert cs_eval["settings"]["r3rag"]["format_retries"] == 3  # as the cold start's agent re-generates


def test_a_finished_quickstart_reruns_as_a_no_op(
    resumed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = copy_of(resumed, tmp_path)
    timings = (out / "timings.json").read_text(encoding="utf-8")

    def no_stage_runs(*args: object) -> None:
        raise AssertionError("a finished quickstart ran a stage")

    monkeypatch.setattr("r3rag.pipeline._run", no_stage_runs)
    again = quickstart(out, "--preset", "tiny")
    assert again.exit_code == 0, again.output
    assert ran(out) == []
    assert (out / "timings.json").read_text(encoding="utf-8") == timings
    assert "every stage" in again.stderr and "tip:" not in again.stderr
    assert all(system in again.stdout for system in SYSTEMS)


def test_a_deleted_stage_folder_is_redone_alone(resumed: dict[str, Any], tmp_path: Path) -> None:
    out = copy_of(resumed, tmp_path)
    before = read_json(out / "timings.json")["stages"]
    shutil.rmtree(out / "eval-r3rag")
    result = quickstart(out, "--preset", "tiny")
    assert result.exit_code == 0, result.output
    assert ran(out) == ["eval-r3rag"]
    after = read_json(out / "timings.json")["stages"]
    assert {k: v for k, v in after.items() if k != "eval-r3rag"} == {
        k: v for k, v in before.items() if k != "eval-r3rag"
    }


def test_a_stage_redone_under_finished_dependents_is_refused(resumed: dict[str, Any], tmp_path: Path) -> None:
    copy = copy_of(resumed, tmp_path)
    (copy / "done" / "ppo.json").unlink()
    result = quickstart(copy, "--preset", "tiny")
    assert result.exit_code == 2
    assert "'PPO (R3-RAG)' is not done" in result.output and "eval-r3rag" in result.output
    assert "eval-cs" not in result.output.split("delete", 1)[1]  # R3-RAG-CS's evaluation does not read PPO


def test_a_folder_refuses_another_preset_naming_the_fields(tmp_path: Path) -> None:
    bind_folder(PipelineConfig.preset("tiny"), tmp_path)
    result = quickstart(tmp_path, "--preset", "small")
    assert result.exit_code == 2
    assert "other settings (based_on: 'tiny' -> 'small'; world.people: 100 -> 700" in result.output
    assert "use another --out" in result.output


def test_bad_options_and_configs_are_one_line_errors(tmp_path: Path) -> None:
    assert "--preset must be small or tiny" in quickstart(tmp_path, "--preset", "huge").output
    config = PipelineConfig.preset("tiny").model_dump(mode="json")
    config["ppo"]["rollout"]["top_k"] = 5
    path = tmp_path / "mine.yaml"  # JSON is YAML
    path.write_text(json.dumps(config), encoding="utf-8")
    result = quickstart(tmp_path / "run", "--config", str(path))
    assert (
        result.exit_code == 2 and "ppo.rollout.top_k (5) must be coldstart.agent.top_k (2)" in result.output
    )
    config["ppo"]["rollout"]["top_k"] = 2
    config["sft"]["data"] = "elsewhere.jsonl"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = quickstart(tmp_path / "run", "--config", str(path))
    assert result.exit_code == 2 and "sft.data must be coldstart/sft.jsonl" in result.output
    assert not (tmp_path / "run").exists()
