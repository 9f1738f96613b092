"""The run's record: one metrics line per iteration (jsonl and TensorBoard) and the curve png.

The jsonl file is the source of truth (a person or a plot reads it); TensorBoard gets the same numbers. A
resumed run first drops the lines of iterations after its checkpoint, which it is about to redo, so the file
of a resumed run is the file an uninterrupted run would have written (timings aside).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r3rag.jsonl import JsonlAppender, rewind

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curve.png"


class MetricsLog:
    """Appends one record per iteration to ``run_dir/metrics.jsonl`` and, optionally, TensorBoard."""

    def __init__(self, run_dir: Path, resume_after: int, tensorboard: bool) -> None:
        self.path = run_dir / METRICS_FILE
        self.records = rewind(self.path, "iteration", resume_after)
        self._file = JsonlAppender(self.path)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(
                    "TensorBoard logging needs the tensorboard package (pip install tensorboard), "
                    "or turn it off with tensorboard: false"
                ) from e
            # purge_step drops events a crashed session wrote after the checkpoint being resumed
            self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_after + 1)

    def log(self, record: dict[str, Any]) -> None:
        """Append one iteration's metrics; a value that is not a finite number (a mean over nothing, say)
        is written as null, since NaN is not JSON."""
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        self.records.append(record)
        self._file.write(record)
        if self._writer is not None:
            for key, value in record.items():
                if key != "iteration" and value is not None:
                    self._writer.add_scalar(key, value, record["iteration"])
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def plot_curve(records: list[dict[str, Any]], path: Path) -> None:
    """Reward (rollout) and dev accuracy per iteration, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _plot_series(
        left,
        records,
        {"reward/trajectory_mean": "reward per trajectory", "reward/step_mean": "reward per step"},
    )
    left.set(xlabel="iteration", ylabel="reward", title="rollout reward")
    _plot_series(
        right,
        records,
        {"dev/accuracy": "dev accuracy (greedy)", "rollout/accuracy": "rollout accuracy (sampled)"},
    )
    right.set(xlabel="iteration", ylabel="accuracy", title="accuracy (iteration 0: the cold-start model)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_series(ax: Any, records: Sequence[dict[str, Any]], series: dict[str, str]) -> None:
    """One line per metric key, over the iterations where it has a value (dev accuracy is only measured on
    some iterations), with a legend."""
    for key, label in series.items():
        points = [(r["iteration"], r[key]) for r in records if _finite(r.get(key))]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.legend()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
