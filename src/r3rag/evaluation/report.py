"""The report of an evaluation run: the paper's Table 1 in markdown, a csv, a json, and two plots.

Files written into the run directory:

- ``results.md``: the setting (from the manifest), then Table 1's shape (method x dataset, Acc / F1 / EM,
  average Acc over datasets), then efficiency and retrieval (cover-EM, gold-passage recall, retrievals, steps
  and generated tokens per question, tokens per correct answer, how trajectories ended), accuracy at every
  step budget, and accuracy at every top-k of the sweep;
- ``results.csv``: one row per (method, dataset, top-k) with every averaged metric (``acc@t`` per budget);
- ``results.json``: the same rows, for scripts;
- ``accuracy_vs_steps.png``: Acc against the step budget, one panel per dataset (the paper's Fig. 3);
- ``accuracy_vs_top_k.png``: Acc against top-k, when a sweep ran (the paper's Fig. 4).

Percentages have one decimal, as in the paper. Average Acc is the unweighted mean of the datasets' Acc, as
in the paper, and is left out when a method lacks a dataset.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import Any

from r3rag.evaluation.config import EvalConfigBase
from r3rag.evaluation.methods.registry import method_classes, method_names
from r3rag.evaluation.runner import main_top_k
from r3rag.evaluation.scoring import Summary, summarize

DATASET_NAMES = {"hotpotqa": "HotpotQA", "2wiki": "2Wiki", "musique": "MuSiQue", "world": "World"}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def method_title(method: str) -> str:
    """A method's row name: its registered title, else the name recorded in the predictions."""
    return next((cls.title for cls in method_classes() if cls.name == method), method)


def _method_order(summaries: Sequence[Summary]) -> list[str]:
    present = {s.method for s in summaries}
    return [m for m in method_names() if m in present] + sorted(present - set(method_names()))


def _dataset_order(summaries: Sequence[Summary], manifest: dict[str, Any]) -> list[str]:
    present = {s.dataset for s in summaries}
    listed = [d for d in manifest.get("datasets", {}) if d in present]
    return listed + sorted(present - set(listed))


def main_table(summaries: Sequence[Summary], config: EvalConfigBase) -> dict[tuple[str, str], Summary]:
    """The cells of Table 1: each method at its main top-k, by (method, dataset)."""
    return {(s.method, s.dataset): s for s in summaries if s.top_k == main_top_k(s.method, config)}


def average_acc(cells: dict[tuple[str, str], Summary], method: str, datasets: Sequence[str]) -> float | None:
    accs = [cells[(method, d)].acc for d in datasets if (method, d) in cells]
    return fmean(accs) if accs and len(accs) == len(datasets) else None


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table's lines, without a trailing newline (cells as given: escape them first if needed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _own_top_ks(config: EvalConfigBase) -> str:
    """The methods with a top-k of their own, e.g. `` (RAG with CoT: 16)``."""
    own = [
        f"{cls.title}: {cls.main_top_k(config)}"
        for cls in method_classes()
        if "top_k" in cls.Settings.model_fields
    ]
    return f" ({', '.join(own)})" if own else ""


def _setting(manifest: dict[str, Any], config: EvalConfigBase) -> str:
    model, retriever = manifest.get("model", {}), manifest.get("retriever", {})
    fingerprint = model.get("fingerprint")
    lines = [
        f"- model: `{model.get('name')}` ({model.get('backend')}"
        + (f", fingerprint `{fingerprint[:12]}`" if fingerprint else "")
        + ")",
        f"- retriever: {retriever.get('kind')} `{retriever.get('source')}`"
        + (
            f", {retriever['passages']:,} passages, corpus sha256 `{retriever['corpus_sha256'][:12]}`"
            if retriever.get("corpus_sha256")
            else ""
        ),
        f"- top-k {config.top_k}{_own_top_ks(config)}, max steps {config.max_steps}, "
        f"temperature {config.temperature}, seed {config.seed}",
        f"- Acc judge: {manifest.get('judge')}",
    ]
    gold = manifest.get("gold_match", {}) if retriever.get("kind") != "none" else {}
    for name, entry in manifest.get("datasets", {}).items():
        files = ", ".join(f"`{Path(f['path']).name}` (sha256 `{f['sha256'][:12]}`)" for f in entry["files"])
        matched = f"; {gold[name]['description']}" if name in gold else ""
        title = DATASET_NAMES.get(name, name)
        lines.append(f"- {title}: {entry['questions']} questions from {files}{matched}")
    lines.append(f"- r3rag {manifest.get('r3rag_version')}; full setting in `manifest.json`")
    return "\n".join(lines)


def render_markdown(summaries: Sequence[Summary], config: EvalConfigBase, manifest: dict[str, Any]) -> str:
    methods, datasets = _method_order(summaries), _dataset_order(summaries, manifest)
    cells = main_table(summaries, config)
    titles = [DATASET_NAMES.get(d, d) for d in datasets]
    counts = {d: max((s.n for s in summaries if s.dataset == d), default=0) for d in datasets}

    header = ["Method", "top-k"]
    for title, d in zip(titles, datasets, strict=True):
        header += [f"{title} (n={counts[d]}) Acc", "F1", "EM"]
    header.append("Avg Acc")
    rows = []
    for m in methods:
        row = [method_title(m), num(main_top_k(m, config), 0)]
        for d in datasets:
            cell = cells.get((m, d))
            row += [pct(cell.acc), pct(cell.f1), pct(cell.em)] if cell else ["-", "-", "-"]
        row.append(pct(average_acc(cells, m, datasets)))
        rows.append(row)

    efficiency_rows = []
    for m in methods:
        for d in datasets:
            cell = cells.get((m, d))
            if cell is None:
                continue
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(cell.statuses.items()))
            efficiency_rows.append(
                [
                    method_title(m),
                    DATASET_NAMES.get(d, d),
                    pct(cell.cover_em),
                    pct(cell.recall),
                    num(cell.retrievals, 2),
                    num(cell.steps, 2),
                    num(cell.completion_tokens),
                    num(cell.tokens_per_correct),
                    statuses,
                ]
            )

    budgets = max((len(s.budget_acc) for s in summaries), default=0)
    budget_rows = []
    for m in methods:
        per_dataset = [cells[(m, d)].budget_acc for d in datasets if (m, d) in cells]
        if per_dataset:
            budget_rows.append(
                [method_title(m), *(pct(fmean(b[t] for b in per_dataset)) for t in range(budgets))]
            )

    parts = [
        "# Evaluation results",
        "## Setting\n\n" + _setting(manifest, config),
        "## Table 1: Acc / F1 / EM (%)\n\n"
        + markdown_table(header, rows)
        + "\n\nAcc: the correctness judge (see the setting). EM and F1: SQuAD exact match and token F1 of "
        "the raw final answer against every gold alias (the paper's EM/F1 are after an LLM extracts a short "
        "answer, so they are higher for wordy answers). Average Acc: mean over the datasets.",
        "## Efficiency and retrieval\n\n"
        + markdown_table(
            [
                "Method",
                "Dataset",
                "cover-EM %",
                "gold recall %",
                "retrievals/q",
                "steps/q",
                "gen tokens/q",
                "tokens/correct",
                "ended",
            ],
            efficiency_rows,
        )
        + "\n\ngold recall: share of the gold supporting passages among all passages a question retrieved; "
        "the setting says how each dataset's gold passages were matched (by default by id when the index "
        "holds every gold passage id of the dataset, else by title). "
        "tokens/correct: mean generated tokens of the correctly answered questions (the paper's Table 4).",
        "## Acc (%) by step budget (mean over datasets; `accuracy_vs_steps.png`)\n\n"
        + markdown_table(["Method", *(f"{t}" for t in range(1, budgets + 1))], budget_rows)
        + "\n\nAn answer counts at budget t only if it came within t steps; all budgets come from one run.",
    ]
    sweep = _sweep_table(summaries, methods, datasets)
    if sweep:
        parts.append("## Acc (%) by top-k (mean over datasets; `accuracy_vs_top_k.png`)\n\n" + sweep)
    return "\n\n".join(parts) + "\n"


def _top_k_curves(summaries: Sequence[Summary], datasets: Sequence[str]) -> dict[str, dict[int, float]]:
    """Mean Acc over datasets for each (method, k), for methods run at two or more k on every dataset."""
    curves: dict[str, dict[int, float]] = {}
    for m in {s.method for s in summaries if s.top_k is not None}:
        ks = sorted({s.top_k for s in summaries if s.method == m and s.top_k is not None})
        points = {}
        for k in ks:
            accs = [s.acc for s in summaries if s.method == m and s.top_k == k and s.dataset in datasets]
            if len(accs) == len(datasets):
                points[k] = fmean(accs)
        if len(points) >= 2:
            curves[m] = points
    return curves


def _sweep_table(summaries: Sequence[Summary], methods: Sequence[str], datasets: Sequence[str]) -> str:
    curves = _top_k_curves(summaries, datasets)
    if not curves:
        return ""
    ks = sorted({k for points in curves.values() for k in points})
    rows = [[method_title(m), *(pct(curves[m].get(k)) for k in ks)] for m in methods if m in curves]
    return markdown_table(["Method", *(f"k={k}" for k in ks)], rows)


CSV_FIELDS: tuple[str, ...] = (
    "method",
    "dataset",
    "top_k",
    "n",
    "acc",
    "f1",
    "em",
    "cover_em",
    "recall",
    "retrievals",
    "steps",
)
CSV_FIELDS += ("completion_tokens", "tokens_per_correct")


def write_csv(path: Path, summaries: Sequence[Summary]) -> None:
    """One row per (method, dataset, top-k); empty cells for undefined values; ``acc@t`` per step budget."""
    budgets = max((len(s.budget_acc) for s in summaries), default=0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*CSV_FIELDS, *(f"acc@{t}" for t in range(1, budgets + 1))])
        for s in summaries:
            row = asdict(s)
            writer.writerow([("" if row[k] is None else row[k]) for k in CSV_FIELDS] + list(s.budget_acc))


def _percent_axis(ax: Any) -> None:
    """Acc from 0, with room above the highest point (a flat 0% line stays visible above the axis)."""
    top = max((max(line.get_ydata(), default=0) for line in ax.get_lines()), default=0)
    ax.set_ylim(-1, max(5.0, 1.15 * float(top)))
    ax.set_ylabel("Acc (%)")
    ax.grid(alpha=0.3)


def plot_steps(
    path: Path, summaries: Sequence[Summary], config: EvalConfigBase, datasets: Sequence[str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = main_table(summaries, config)
    methods = _method_order(summaries)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        for m in methods:
            if (m, d) in cells:
                curve = cells[(m, d)].budget_acc
                ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker="o", label=method_title(m))
        _percent_axis(ax)
        ax.set_title(DATASET_NAMES.get(d, d))
        ax.set_xlabel("step budget")
        ax.set_xticks(range(1, config.max_steps + 1))
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_top_k(path: Path, summaries: Sequence[Summary], datasets: Sequence[str]) -> bool:
    """Acc against top-k per dataset, for the methods that ran at two or more k; False when none did."""
    if not _top_k_curves(summaries, datasets):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        for m in _method_order(summaries):
            points = sorted(
                (s.top_k, s.acc) for s in summaries if s.method == m and s.dataset == d and s.top_k
            )
            if len(points) >= 2:
                ax.plot(
                    [k for k, _ in points], [100 * a for _, a in points], marker="o", label=method_title(m)
                )
        _percent_axis(ax)
        ax.set_title(DATASET_NAMES.get(d, d))
        ax.set_xlabel("top-k")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(
    out: str | Path, records: Sequence[dict[str, Any]], config: EvalConfigBase, manifest: dict[str, Any]
) -> dict[str, Path]:
    """Write every report file into ``out``; return them by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(records)
    datasets = _dataset_order(summaries, manifest)
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    paths["markdown"].write_text(render_markdown(summaries, config, manifest), encoding="utf-8")
    write_csv(paths["csv"], summaries)
    cells = main_table(summaries, config)
    table = {
        "rows": [asdict(s) for s in summaries],
        "average_acc": {m: average_acc(cells, m, datasets) for m in _method_order(summaries)},
    }
    paths["json"].write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    if summaries:
        paths["steps_plot"] = out / "accuracy_vs_steps.png"
        plot_steps(paths["steps_plot"], summaries, config, datasets)
        if plot_top_k(out / "accuracy_vs_top_k.png", summaries, datasets):
            paths["top_k_plot"] = out / "accuracy_vs_top_k.png"
    return paths
