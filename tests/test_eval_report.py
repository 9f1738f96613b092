"""The report files: Table 1's shape in markdown, a csv and json of every cell, and the two plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from r3rag.evaluation.config import EvalConfig
from r3rag.evaluation.manifest import build_manifest
from r3rag.evaluation.report import write_report
from r3rag.gold import GoldMatch

CONFIG = EvalConfig(methods=["cot", "r3rag"], top_k=5, max_steps=2)
PNG = b"\x89PNG\r\n\x1a\n"


def record(method: str, dataset: str, top_k: int | None, acc: float, tokens: int = 10) -> dict:
    return {
        "method": method,
        "dataset": dataset,
        "top_k": top_k,
        "acc": acc,
        "em": acc,
        "f1": acc,
        "cover_em": acc,
        "budget_acc": [0.0, acc],
        "recall": 0.5,
        "retrievals": 0 if top_k is None else 2,
        "steps": 2,
        "completion_tokens": tokens,
        "status": "answered",
    }


@pytest.fixture
def manifest() -> dict:
    files = {"files": [{"path": "/data/x.jsonl", "sha256": "ab" * 32}], "questions": 2}
    return build_manifest(
        CONFIG,
        {"backend": "local", "name": "smollm2-135m-instruct", "fingerprint": "cd" * 32},
        {"kind": "bm25", "source": "/index", "passages": 939, "corpus_sha256": "ef" * 32, "fingerprint": "x"},
        {"hotpotqa": files, "2wiki": files},
        {
            "hotpotqa": GoldMatch("title", "auto", 128, 0).to_dict(),
            "2wiki": GoldMatch("id", "auto", 40, 40).to_dict(),
        },
    )


RECORDS = [
    record("r3rag", "2wiki", 5, 1.0),
    record("r3rag", "2wiki", 5, 0.0),
    record("r3rag", "hotpotqa", 5, 1.0),
    record("r3rag", "hotpotqa", 5, 1.0),
    record("cot", "hotpotqa", None, 0.0),
    record("cot", "hotpotqa", None, 1.0),
    record("cot", "2wiki", None, 0.0),
    record("cot", "2wiki", None, 0.0),
    record("r3rag", "hotpotqa", 1, 0.0),  # the sweep
    record("r3rag", "hotpotqa", 1, 0.0),
    record("r3rag", "2wiki", 1, 1.0),
    record("r3rag", "2wiki", 1, 1.0),
]


def test_table_one_has_the_papers_shape(tmp_path: Path, manifest: dict) -> None:
    paths = write_report(tmp_path, RECORDS, CONFIG, manifest)
    text = paths["markdown"].read_text()
    table = text.split("## Table 1")[1].split("\n## ")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert (
        lines[0] == "| Method | top-k | HotpotQA (n=2) Acc | F1 | EM | 2Wiki (n=2) Acc | F1 | EM | Avg Acc |"
    )
    assert lines[2] == "| CoT | - | 50.0 | 50.0 | 50.0 | 0.0 | 0.0 | 0.0 | 25.0 |"  # methods in Table 1 order
    assert lines[3] == "| R3-RAG | 5 | 100.0 | 100.0 | 100.0 | 50.0 | 50.0 | 50.0 | 75.0 |"
    assert "- model: `smollm2-135m-instruct` (local, fingerprint `cdcdcdcdcdcd`)" in text
    assert "939 passages, corpus sha256 `efefefefefef`" in text
    assert (  # how gold recall matched each dataset's gold passages
        "questions from `x.jsonl` (sha256 `abababababab`); gold passages matched by title "
        "(auto: 0 of 128 gold passage ids are in the index)" in text
    )
    assert "gold passages matched by id (auto: 40 of 40 gold passage ids are in the index)" in text
    budgets, sweep = text.split("by step budget")[1].split("by top-k")
    assert "| R3-RAG | 0.0 | 75.0 |" in budgets  # mean over datasets at budgets 1 and 2
    assert "| Method | k=1 | k=5 |" in sweep and "| R3-RAG | 50.0 | 75.0 |" in sweep  # k=1: (0 + 100) / 2


def test_csv_and_json_hold_every_cell(tmp_path: Path, manifest: dict) -> None:
    paths = write_report(tmp_path, RECORDS, CONFIG, manifest)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6  # (r3rag at 5 and 1, cot) x 2 datasets
    cot = next(r for r in rows if r["method"] == "cot" and r["dataset"] == "hotpotqa")
    assert cot["top_k"] == "" and cot["recall"] == "" and float(cot["acc"]) == 0.5
    assert float(cot["acc@1"]) == 0.0 and float(cot["acc@2"]) == 0.5
    data = json.loads(paths["json"].read_text())
    assert data["average_acc"] == {"cot": 0.25, "r3rag": 0.75}
    assert len(data["rows"]) == 6


def test_plots_are_pngs_and_the_top_k_plot_needs_a_sweep(tmp_path: Path, manifest: dict) -> None:
    paths = write_report(tmp_path / "sweep", RECORDS, CONFIG, manifest)
    assert paths["steps_plot"].read_bytes()[:8] == PNG
    assert paths["top_k_plot"].read_bytes()[:8] == PNG
    no_sweep = write_report(tmp_path / "plain", [r for r in RECORDS if r["top_k"] != 1], CONFIG, manifest)
    assert "top_k_plot" not in no_sweep and not (tmp_path / "plain" / "accuracy_vs_top_k.png").exists()
    assert "by top-k" not in no_sweep["markdown"].read_text()


def test_average_acc_is_left_out_when_a_dataset_is_missing(tmp_path: Path, manifest: dict) -> None:
    partial = [r for r in RECORDS if not (r["method"] == "cot" and r["dataset"] == "2wiki")]
    text = write_report(tmp_path, partial, CONFIG, manifest)["markdown"].read_text()
    assert "| CoT | - | 50.0 | 50.0 | 50.0 | - | - | - | - |" in text
