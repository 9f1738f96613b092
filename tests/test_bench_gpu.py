"""benchmarks/gpu.py, the GPU check, runs end to end with ``--tiny`` on the CPU: every part, the same code
paths as on an H200 (random Qwen2-shaped models, r3rag's SFT loss, decode loop and PPO iteration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_gpu_check_runs_every_part_with_tiny_shapes(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "gpu.py", "--tiny", "--device", "cpu", "--json", str(out)],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["tiny"] and results["device"].startswith("cpu")
    assert results["greedy"] == [{"check": "greedy tokens, CPU vs cpu", "rows identical": "4/4"}]
    assert [row["model"] for row in results["sft"]] == [
        "qwen2.5-1.5b full",
        "qwen2.5-7b LoRA r16",
        "qwen2.5-7b full",
    ]
    assert all(row["tokens/s"] > 0 and row["MFU"].endswith("%") for row in results["sft"])
    decoders = [row["decoder"] for row in results["rollout"]]
    assert decoders == [
        "r3rag HFGenerator, batch 1",
        "r3rag HFGenerator, batch 4",
        "transformers generate, dynamic cache, batch 1",
    ]
    assert all(row["tokens/s"] > 0 for row in results["rollout"])
    (ppo,) = results["ppo"]
    assert ppo["samples"] == 8  # 2 questions x 4 samples, one (malformed) step each
    assert {"rollout s", "scoring s", "policy_pass s", "reference_pass s", "update s"} <= ppo.keys()
    assert "| qwen2.5-1.5b full |" in done.stdout and "SUMMARY\t" in done.stdout


def test_the_gpu_check_refuses_unknown_parts() -> None:
    done = subprocess.run(
        [sys.executable, "gpu.py", "--tiny", "--parts", "sft,warp"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown parts ['warp']" in done.stderr
