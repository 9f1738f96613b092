"""What RL adds to the cold start, on any synthetic world: one command, one table.

Runs, into one folder (every part resumes, every finished part is skipped on a rerun):

1. the base, with the quickstart's own stages: the world (``--world-seed``: a world the code was never tuned
   on), its BM25 index, the oracle cold-start data, SFT of the embedded SmolLM2 for two epochs on every
   cold-start example (R3-RAG-CS; about 70 minutes alone on two cores; on world seed 0 it scores 57.0%, where
   one epoch, the default up to commit 47abb9c, takes 35 and scores 42.5%, and ``--sft-examples 768`` of one
   epoch, a quarter of the examples and the default up to commit abda86d, takes 11 and scores 21.0%), and the
   evaluations of the untrained model (RAG with CoT, IRCoT), of R3-RAG-CS, and of R3-RAG-CS made to answer
   when its steps run out (the control that separates reading better from stopping sooner);
2. one RL run per variant x reward mode x seed from that R3-RAG-CS, each on the same budget of minutes
   (``--rl-minutes``; the CPU preset :meth:`~r3rag.config.PPOConfig.small_model`, the variant's switches on
   top), then its evaluation in R3-RAG-CS's settings;
3. the table: accuracy per question type, answered share, steps and searches per question for every system,
   and each RL run against R3-RAG-CS paired by question (exact McNemar; in all, then on the questions that
   need reading and on the two-way ones), written to ``report.md``; then each RL configuration at each
   budget over its seeds, and the correct share of each run's sampled trajectories
   per question type (a type no sample answers gives no update a signal), and every run iteration by
   iteration (what its rollouts did, what its update cost in KL), where each run's time went (generation,
   the log-prob passes, the update), where the questions that need reading break along their gold hops
   (each hop's passage retrieved, then its answer named) and which sentence the step after a hop's passage
   quoted (the answer's, another of that passage and whether it holds a year for a name, its first), and
   the side each system's answers take on the comparisons (yes / no, first / second entity) against the
   gold's sides and the best constant answer, and on the dated ones whether the final step's order claim
   ("1939 is later than 1922.") is true and the answer takes the entity its years make right;
   ``curves.png``: KL, beta, format errors and reward of every run against its minutes.

A run is named by its configuration, budget and seed (``rloo-hybrid-kl0.03-60min-s1``). ``--kl-target``
switches on the adaptive KL penalty; ``--snapshot-minutes 60`` makes each run also keep, and the experiment
evaluate, the model it had after 60 of its minutes (a row ``@60min``, counted as the 60-minute
configuration): one 100-minute run gives a long curve and a 60-minute seed at once.

    .venv/bin/python benchmarks/rl_gain.py --out runs/rl-gain --world-seed 7     # the base and its rows
    .venv/bin/python benchmarks/rl_gain.py --out runs/rl-gain --world-seed 7 --variant rloo --seed 0
    .venv/bin/python benchmarks/rl_gain.py --out runs/rl-gain --world-seed 7 --variant gae \\
        --reward hybrid --reward outcome --reward process --seed 0 --seed 1 --rl-minutes 60
    .venv/bin/python benchmarks/rl_gain.py --out runs/rl-gain --world-seed 7 --variant rloo \\
        --kl-target 0.03 --rl-minutes 100 --snapshot-minutes 60

An invocation without ``--variant`` builds and evaluates the base; one with variants builds the base's
models if they are missing, then its RL runs. Invocations on the same folder may run at once once R3-RAG-CS
exists (the base's evaluations in one, RL runs in others; ``--threads 1`` gives each its own core, where
alone on an idle machine the default, a thread per core, does 1.6-1.7x the work); the report lists every
system evaluated so far. ``--transfer-world 11`` trains nothing: it evaluates the folder's
R3-RAG-CS and every finished RL run's final model on another world's dev questions (entities the models never
saw; its own world and BM25 index, in ``<out>/transfer-11``) and reports them the same way. ``--runs
'rloo-to-go-*'`` (shell-style patterns on the run names, repeatable) reports only the runs it names (with
``--report-only``, a short table of a folder that holds many; the ``report.md`` written is the one
printed) and transfers only those.
``--sft-seed 43`` builds the base with another SFT seed (which cold-start examples SFT draws, and their
order), in its own ``--out`` folder: R3-RAG-CS moves with it (on world seed 0 with ``--sft-examples 768``,
21.0% with seed 42 and 19.5% with 43, the comparisons 67.5% and 37.5%), so a gain over one R3-RAG-CS holds
for that draw.
``--tiny`` runs the whole thing on the tiny quickstart preset (a random 2-layer model: the plumbing, in about
a minute; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from r3rag.coldstart.phrasing import EARLIER, FOUND, LATER  # noqa: E402
from r3rag.config import PPOConfig, WorldConfig  # noqa: E402
from r3rag.data.datasets import load_dataset  # noqa: E402
from r3rag.evaluation.config import EvalConfigBase  # noqa: E402
from r3rag.evaluation.paired import compare  # noqa: E402
from r3rag.evaluation.report import markdown_table  # noqa: E402
from r3rag.evaluation.runner import PREDICTIONS_FILE, main_top_k, read_records  # noqa: E402
from r3rag.flags import config_fields, flatten, nest, settings_errors, yaml_or_text  # noqa: E402
from r3rag.jsonl import iter_jsonl  # noqa: E402
from r3rag.pipeline import (  # noqa: E402
    Context,
    evaluate_model,
    pipeline_stages,
    ppo_config,
    run_pipeline,
    stage_done,
)
from r3rag.pipeline_config import PipelineConfig  # noqa: E402
from r3rag.rewards.metrics import normalize_answer  # noqa: E402
from r3rag.rewards.scoring import bridge_entities, bridge_query_gains, names_entity  # noqa: E402
from r3rag.rl.ppo import (  # noqa: E402
    FINAL_DIR,
    ROLLOUTS_DIR,
    SNAPSHOT_FILE,
    SNAPSHOTS_DIR,
    PPOTrainer,
)
from r3rag.runs import CONFIG_FILE  # noqa: E402
from r3rag.schema import Passage, QAExample, Step, SubQuestion, Trajectory  # noqa: E402
from r3rag.sentences import split_sentences  # noqa: E402

BASE_DIR = "base"
RUNS_DIR = "rl"
FORCED_DIR = "eval-cs-forced"
CS_MODEL = Path("sft") / FINAL_DIR
"""R3-RAG-CS in the base's folder (the pipeline's SFT stage's final model)."""
REPORT = "report.md"
CURVES = "curves.png"
CURVE_PANELS = {
    "ppo/kl": "KL to R3-RAG-CS per action token",
    "ppo/kl_coef": "KL coefficient beta (logged by runs since the adaptive controller)",
    "rollout/format_error": "rollout trajectories ended by a format error",
    "reward/trajectory_mean": "rollout reward per trajectory",
}
"""The panels of ``curves.png``: per iteration of every RL run, against its minutes of training."""
TRAIN_STAGES = ("world", "index", "base-model", "coldstart", "sft")
VARIANTS: dict[str, dict[str, Any]] = {
    "gae": {"advantage": "gae"},
    "gae-trajectory": {"advantage": "gae-trajectory"},
    "rloo": {"advantage": "rloo"},
    "grpo": {"advantage": "grpo"},
    "rloo-to-go": {"advantage": "rloo-to-go"},
}
"""Each variant's switches over the CPU preset: the paper's step-level GAE, GAE over returns-to-go across the
steps, the two critic-free group baselines, and returns-to-go against the group's (see
``PPOConfig.advantage``)."""
REWARD_MODES = ("hybrid", "outcome", "process")


def base_config(
    world_seed: int,
    dev_questions: int,
    sft_examples: int | None,
    tiny: bool,
    sft_seed: int | None = None,
    sft_epochs: float | None = None,
) -> PipelineConfig:
    """The quickstart's ``small`` preset on the default world's full question mix (every type: 2-hop,
    chains, inference, comparisons), seeded; SFT on ``sft_examples`` examples (None: every one; the
    quickstart's 384 is its time budget), drawn and ordered by ``sft_seed`` (None: the SFT config's own),
    for ``sft_epochs`` passes (None: the preset's one); the baselines are RAG with CoT and IRCoT, every
    evaluation on the first ``dev_questions`` dev questions."""
    preset = PipelineConfig.preset("tiny" if tiny else "small").model_dump()
    world = preset["world"] | {"seed": world_seed}
    if not tiny:
        world["type_mix"] = WorldConfig().type_mix  # the default world's mix, not the quickstart's 2-hop one
        world["dev_questions"] = max(world["dev_questions"], dev_questions)
    preset |= {
        "based_on": "custom",
        "world": world,
        "sft": preset["sft"]
        | ({} if tiny else {"max_examples": sft_examples})
        | ({} if sft_seed is None else {"seed": sft_seed})
        | ({} if sft_epochs is None else {"epochs": sft_epochs}),
        "eval": preset["eval"] | {"methods": ["rag-cot", "ircot"]},
        "eval_questions": dev_questions,
    }
    return PipelineConfig.model_validate(preset)


def forced_config(config: PipelineConfig) -> EvalConfigBase:
    """R3-RAG-CS's evaluation with one more step that must answer when the steps run out."""
    r3rag_eval = config.r3rag_eval()
    forced = r3rag_eval.settings("r3rag").model_copy(update={"force_answer": True})
    return r3rag_eval.model_copy(update={"r3rag": forced})


@dataclass(frozen=True, slots=True)
class RLSettings:
    """What one RL run of the experiment sets over the CPU preset (its seed aside)."""

    variant: str
    reward: str
    minutes: float
    iterations: int
    kl_target: float | None = None
    snapshot_minutes: tuple[float, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    tag: str = ""

    def configuration(self) -> str:
        """The configuration's name with its budget, as runs are named (their seed after it)."""
        kl = "" if self.kl_target is None else f"-kl{self.kl_target:g}"
        tag = f"-{self.tag}" if self.tag else ""
        return f"{self.variant}-{self.reward}{kl}{tag}-{self.minutes:g}min"


def rl_config(base: PipelineConfig, base_out: Path, out: Path, settings: RLSettings, seed: int) -> PPOConfig:
    """The CPU preset from the base's R3-RAG-CS with the run's switches, for its minutes of training. Its
    ``iterations`` are the learning-rate schedule's horizon (warmup and cosine are fractions of it); the time
    budget is meant to stop the run before them."""
    paths = ppo_config(base, base_out)
    preset = PPOConfig.small_model_settings()
    if base.tiny_model is not None:  # the tiny preset: its short rollouts and small groups
        preset |= {
            k: getattr(paths, k) for k in ("rollout", "questions_per_iteration", "samples_per_question")
        }
    values = {
        **preset,
        **VARIANTS[settings.variant],
        "model": paths.model,
        "train": paths.train,
        "index": paths.index,
        "out": out,
        "dev": None,
        "reward": paths.reward.model_copy(update={"mode": settings.reward}),
        "seed": seed,
        "iterations": settings.iterations,
        "max_minutes": settings.minutes,
        "kl_target": settings.kl_target,
        "snapshot_minutes": list(settings.snapshot_minutes),
        "tensorboard": False,
    }
    config = PPOConfig.model_validate(values)
    if not settings.overrides:
        return config
    fields = {flag.dotted for flag in config_fields(PPOConfig)}  # what r3rag train has a flag for
    for key, _ in settings.overrides:
        if key not in fields:
            raise ValueError(f"--set {key}: PPOConfig has no field {key!r}")
    return PPOConfig.model_validate(nest(flatten(config.model_dump(), fields) | dict(settings.overrides)))


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: a PPOConfig field (dotted into its sections) and its value, read as the
    flags of ``r3rag train`` read theirs."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml_or_text(value)


@dataclass(frozen=True, slots=True)
class Budget:
    """What an RL row's model is: its configuration at a budget, and what the budget bought."""

    configuration: str
    iterations: int
    minutes: float


@dataclass(frozen=True, slots=True)
class System:
    """One row of the table: a model evaluated with one method into one folder (an RL model: its budget)."""

    name: str
    folder: Path
    method: str
    config: EvalConfigBase
    budget: Budget | None = None


def train_base(config: PipelineConfig, out: Path, console: Console, progress: bool) -> Context:
    """The quickstart's stages up to R3-RAG-CS (skipped without taking the folder's lock once they are
    done, so that RL runs can start while another invocation still evaluates the base)."""
    stages = [s for s in pipeline_stages(config) if s.name in TRAIN_STAGES]
    if not all(stage_done(out, s) for s in stages):
        run_pipeline(config, out, console, progress, only=TRAIN_STAGES)
    return Context(config, out.resolve(), console, progress)


def evaluate_base(ctx: Context) -> None:
    """R3-RAG-CS first (the row every RL run is paired with), then R3-RAG-CS with a forced answer, then the
    untrained baselines (the longest: IRCoT's untrained model searches until its steps run out)."""
    run_pipeline(ctx.config, ctx.out, ctx.console, ctx.progress, only=(*TRAIN_STAGES, "eval-cs"))
    if not (ctx.out / FORCED_DIR / "results.json").is_file():
        ctx.console.print("evaluation: R3-RAG-CS with a forced final answer ...")
        evaluate_model(ctx, str(ctx.out / CS_MODEL), forced_config(ctx.config), ctx.out / FORCED_DIR)
    run_pipeline(ctx.config, ctx.out, ctx.console, ctx.progress, only=(*TRAIN_STAGES, "eval-base"))


def run_rl(ctx: Context, name: str, config: PPOConfig, progress: bool, train: bool = True) -> None:
    """Train one RL run (resumed if interrupted; skipped once its final actor exists), then evaluate it and
    the snapshots of its shorter budgets (into ``eval-<M>min``). ``train`` False: only evaluate the models
    the run has saved so far."""
    run, ppo = Path(config.out).parent, Path(config.out)
    if train and not (ppo / FINAL_DIR / "config.json").is_file():
        ctx.console.print(f"RL run {name}: {config.max_minutes:g} minutes ...")
        PPOTrainer.from_config(config).train(progress=progress)
    models = [(ppo / FINAL_DIR, run / "eval")]
    models += [(s, run / f"eval-{s.name}") for s in sorted((ppo / SNAPSHOTS_DIR).glob("*min"))]
    for model, folder in models:
        if (model / "config.json").is_file() and not (folder / "results.json").is_file():
            ctx.console.print(f"evaluation: {name}, {model.name} ...")
            evaluate_model(ctx, str(model), ctx.config.r3rag_eval(), folder)


def picked(names: Sequence[str], patterns: Sequence[str], what: str, out: Path) -> list[str]:
    """The ``names`` some shell-style pattern matches, in their order (all of them without ``patterns``). A
    pattern that matches none is refused, naming what there is: a typo would otherwise drop what was asked
    for, silently."""
    if not patterns:
        return list(names)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise SystemExit(
                f"--runs {pattern!r} matches no {what} of {out} ({what}s: {', '.join(names) or 'none'})"
            )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def finished_runs(out: Path, patterns: Sequence[str] = ()) -> list[Path]:
    """The RL runs of ``out`` that saved a final model, in name order; with ``patterns`` only those some
    pattern matches (:func:`picked`)."""
    finished = [
        r.name
        for r in sorted((out / RUNS_DIR).glob("*"))
        if (r / "ppo" / FINAL_DIR / "config.json").is_file()
    ]
    return [out / RUNS_DIR / n for n in picked(finished, patterns, "finished RL run", out)]


def transfer(
    config: PipelineConfig, out: Path, target: Path, console: Console, progress: bool, patterns: Sequence[str]
) -> None:
    """Evaluate ``out``'s R3-RAG-CS and the final model of each of its finished RL runs (those ``patterns``
    match, when given: :func:`finished_runs`) on the dev questions of ``config``'s world, into ``target``
    laid out as an experiment folder (the world and its index under ``base``; each run's ``ppo`` a link to the
    trained one, so the report reads its records); an evaluation already done is skipped."""
    if not (out / BASE_DIR / CS_MODEL / "config.json").is_file():
        raise SystemExit(f"{out / BASE_DIR / CS_MODEL}: no R3-RAG-CS to transfer; build the base first")
    runs = finished_runs(out, patterns)  # refused before the world is built
    base = target / BASE_DIR
    run_pipeline(config, base, console, progress, only=("world", "index"))
    ctx = Context(config, base.resolve(), console, progress)
    models = [("R3-RAG-CS", out / BASE_DIR / CS_MODEL, base / "eval-cs")]
    for run in runs:
        ppo = run / "ppo"
        link = target / RUNS_DIR / run.name / "ppo"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ppo.resolve(), target_is_directory=True)
        models.append((run.name, ppo / FINAL_DIR, link.parent / "eval"))
    for name, model, folder in models:
        if not (folder / "results.json").is_file():
            console.print(f"evaluation on world seed {config.world.seed}: {name} ...")
            evaluate_model(ctx, str(model), config.r3rag_eval(), folder)


# ---------------------------------------------------------------------------------------------- the report


def run_records(out: Path, patterns: Sequence[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Each RL run's metrics records, by run name; a run without a record yet is left out, and with
    ``patterns`` so is a run none matches (:func:`picked`)."""
    runs = {}
    for run in sorted((out / RUNS_DIR).glob("*")):
        metrics = run / "ppo" / "metrics.jsonl"
        records = [r for _, r in iter_jsonl(metrics)] if metrics.is_file() else []
        if records:
            runs[run.name] = records
    return {n: runs[n] for n in picked(list(runs), patterns, "RL run", out)}


def systems(config: PipelineConfig, out: Path, runs: dict[str, list[dict[str, Any]]]) -> list[System]:
    """Every evaluated system in the folder, baselines first, then R3-RAG-CS (plain and forced), then the RL
    runs in name order."""
    found = [
        System(f"untrained {m}", out / BASE_DIR / "eval-base", m, config.eval) for m in config.eval.methods
    ]
    found += [
        System("R3-RAG-CS", out / BASE_DIR / "eval-cs", "r3rag", config.r3rag_eval()),
        System("R3-RAG-CS, forced answer", out / BASE_DIR / FORCED_DIR, "r3rag", forced_config(config)),
    ]
    for name, records in runs.items():
        run = out / RUNS_DIR / name
        configuration = name.rsplit("-s", 1)[0]
        final = Budget(
            configuration,
            max(r["iteration"] for r in records),
            sum(r.get("time/iteration", 0.0) for r in records) / 60,
        )
        found.append(System(f"R3-RAG {name}", run / "eval", "r3rag", config.r3rag_eval(), final))
        for snapshot in sorted((run / "ppo" / SNAPSHOTS_DIR).glob("*min")):
            done = json.loads((snapshot / SNAPSHOT_FILE).read_text(encoding="utf-8"))
            budget = Budget(
                f"{configuration.rsplit('-', 1)[0]}-{snapshot.name}", done["iteration"], done["minutes"]
            )
            row = f"R3-RAG {name} @{snapshot.name}"
            found.append(System(row, run / f"eval-{snapshot.name}", "r3rag", config.r3rag_eval(), budget))
    return [s for s in found if (s.folder / "results.json").is_file()]


def records_of(system: System) -> dict[str, dict[str, Any]]:
    """The system's prediction records at its method's main top-k, by question id."""
    top_k = main_top_k(system.method, system.config)
    records = read_records(system.folder / PREDICTIONS_FILE)
    return {r["id"]: r for r in records if r["method"] == system.method and r["top_k"] == top_k}


def report(config: PipelineConfig, out: Path, runs: dict[str, list[dict[str, Any]]]) -> str:
    """The markdown table of every evaluated system, and each RL run against R3-RAG-CS paired by question."""
    dev = {ex.id: ex for ex in load_dataset(out / BASE_DIR / "world" / "dev.jsonl")}
    types = {i: ex.type or "?" for i, ex in dev.items()}
    found = systems(config, out, runs)
    by_system = {s.name: records_of(s) for s in found}
    budgets = {s.name: s.budget for s in found if s.budget is not None}
    type_names = sorted({types[i] for records in by_system.values() for i in records})
    header = ["system", "n", "Acc", *type_names, "answered", "steps/q", "searches/q", "vs CS", "p"]
    rows = []
    cs = {i: bool(r["acc"]) for i, r in by_system.get("R3-RAG-CS", {}).items()}
    for name, records in by_system.items():
        per_type: dict[str, list[float]] = defaultdict(list)
        for i, r in records.items():
            per_type[types[i]].append(r["acc"])
        values = list(records.values())
        paired = ["", ""]
        if name in budgets and cs:
            c = compare(cs, {i: bool(r["acc"]) for i, r in records.items()})
            paired = [f"+{c.gained} / -{c.lost} ({100 * c.difference:+.1f})", f"{c.p_value:.3g}"]
        row = [
            name,
            str(len(values)),
            f"{100 * statistics.fmean(r['acc'] for r in values):.1f}",
            *(f"{100 * statistics.fmean(per_type[t]):.1f}" if per_type[t] else "-" for t in type_names),
            f"{100 * statistics.fmean(r['status'] == 'answered' for r in values):.0f}%",
            f"{statistics.fmean(r['steps'] for r in values):.2f}",
            f"{statistics.fmean(r['retrievals'] for r in values):.2f}",
            *paired,
        ]
        rows.append(row)
    counts: dict[str, int] = defaultdict(int)
    for i in next(iter(by_system.values()), {}):
        counts[types[i]] += 1
    legend = ", ".join(f"{t} {counts[t]}" for t in type_names)
    return (
        f"Accuracy (%) on the first {config.eval_questions} dev questions of world seed {config.world.seed} "
        f"(per type: {legend}); vs CS: questions gained / lost against R3-RAG-CS (points), p: exact "
        "McNemar; `@<M>min`: the model a run had after M of its minutes (its snapshot).\n\n"
        + markdown_table(header, rows)
        + "\n\n"
        + runs_table(by_system, budgets)
        + "\n\n"
        + halves_table(by_system, budgets, types)
        + "\n\n"
        + evidence_table(by_system, types)
        + "\n\n"
        + bridge_table(by_system, dev)
        + "\n\n"
        + hops_table(by_system, dev)
        + "\n\n"
        + quotes_table(by_system, dev)
        + "\n\n"
        + sides_table(by_system, dev)
        + "\n\n"
        + comparing_table(by_system, dev)
        + "\n\n"
        + reading_table(by_system, dev)
        + "\n\n"
        + rollout_signal_table(out, runs)
        + "\n\n"
        + iterations_table(runs)
        + "\n\n"
        + time_table(runs)
        + "\n"
    )


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """``curves.png``: :data:`CURVE_PANELS` for every RL run, one line per run, against the minutes of
    training (runs of one budget end at the same x); nothing before a run has a record."""
    if not runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, title) in zip(axes.flat, CURVE_PANELS.items(), strict=True):
        for colour, (name, records) in enumerate(runs.items()):  # a run keeps its colour in every panel
            minutes = [t / 60 for t in accumulate(r.get("time/iteration", 0.0) for r in records)]
            points = [(m, r[key]) for m, r in zip(minutes, records, strict=True) if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=name, color=f"C{colour}")
        ax.set(xlabel="minutes of RL", title=title)
        ax.grid(alpha=0.3)
    # the first panel with a line names the runs (a run without the KL penalty logs no KL, no beta)
    next((ax for ax in axes.flat if ax.lines), axes.flat[0]).legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def runs_table(by_system: dict[str, dict[str, dict[str, Any]]], budgets: dict[str, Budget]) -> str:
    """Each RL configuration at each budget over its seeds (a long run's snapshot counts at its budget):
    accuracy of every seed and their mean, and what each run's budget bought (iterations, minutes)."""
    configurations: dict[str, list[str]] = defaultdict(list)
    for name, budget in budgets.items():
        configurations[budget.configuration].append(name)
    header = [
        "RL configuration",
        "seeds",
        "Acc per seed",
        "mean Acc",
        "iterations per seed",
        "minutes per seed",
    ]
    rows = []
    for configuration, names in sorted(configurations.items()):
        accs = [100 * statistics.fmean(r["acc"] for r in by_system[n].values()) for n in names]
        rows.append(
            [
                configuration,
                str(len(names)),
                " / ".join(f"{a:.1f}" for a in accs),
                f"{statistics.fmean(accs):.1f}",
                " / ".join(str(budgets[n].iterations) for n in names),
                " / ".join(f"{budgets[n].minutes:.0f}" for n in names),
            ]
        )
    return markdown_table(header, rows)


def evidence_table(by_system: dict[str, dict[str, dict[str, Any]]], types: dict[str, str]) -> str:
    """How much of the gold evidence each system retrieved on the dev questions: its mean recall of the gold
    passages per question type, and the share of questions whose every gold passage it retrieved (for a chain
    question, every hop). A model that answers a type no better may still reach further into its evidence,
    which is what a retrieval reward can teach before accuracy shows it. Questions without a recall (no gold
    passages) are left out."""
    type_names = sorted({types[i] for records in by_system.values() for i in records})
    rows = []
    for name, records in by_system.items():
        recalls: dict[str, list[float]] = defaultdict(list)
        for i, record in records.items():
            if record.get("recall") is not None:
                recalls[types[i]].append(record["recall"])
                recalls["all"].append(record["recall"])
        if not recalls["all"]:
            continue
        rows.append(
            [
                name,
                *(f"{100 * statistics.fmean(recalls[t]):.1f}" if recalls[t] else "-" for t in type_names),
                f"{100 * statistics.fmean(recalls['all']):.1f}",
                f"{100 * statistics.fmean(r == 1.0 for r in recalls['all']):.1f}",
            ]
        )
    return (
        "Gold evidence retrieved on the dev questions: recall of the gold passages (%) per question type, "
        "and the share of questions with every gold passage retrieved (%):\n\n"
        + markdown_table(["system", *type_names, "all", "all gold found"], rows)
    )


def bridge_table(by_system: dict[str, dict[str, dict[str, Any]]], dev: dict[str, QAExample]) -> str:
    """How far along each dev question's chain each system searched: the mean share of the question's bridge
    entities (:func:`~r3rag.rewards.scoring.bridge_entities`) its queries named, per question type. Gold
    recall also credits a first hop found with the wrong question; naming a bridge needs the hop read. Types
    without bridges (comparisons) and systems without recorded queries are left out."""
    shares: dict[str, dict[str, list[float]]] = {}
    for name, records in by_system.items():
        per_type: dict[str, list[float]] = defaultdict(list)
        for i, record in records.items():
            example, trajectory = dev[i], record.get("trajectory")
            if trajectory is None or not example.decomposition or not bridge_entities(example):
                continue
            share = sum(bridge_query_gains(example, Trajectory.from_dict(trajectory)))
            per_type[example.type or "?"].append(share)
            per_type["all"].append(share)
        if per_type:
            shares[name] = per_type
    type_names = sorted({t for per_type in shares.values() for t in per_type} - {"all"})
    rows = [
        [name, *(f"{100 * statistics.fmean(v[t]):.1f}" if v[t] else "-" for t in (*type_names, "all"))]
        for name, v in shares.items()
    ]
    return (
        "Bridge entities named in the queries on the dev questions (%): the share of each question's "
        "bridges (answers of its gold hops that a later hop asks about) some query of the system named:\n\n"
        + markdown_table(["system", *type_names, "all"], rows)
    )


def retrieving_step(hop: SubQuestion, steps: Sequence[Step]) -> int | None:
    """The index of the first step that retrieved one of the hop's gold passages, None if none did."""
    gold = set(hop.supporting_ids)
    return next((n for n, s in enumerate(steps) if gold & {p.id for p in s.passages}), None)


def walkable(dev: dict[str, QAExample]) -> set[str]:
    """The questions that need reading (every type but :data:`TWO_WAY_TYPES`) whose every gold hop names
    its gold passages: those the hops and quotes tables follow."""
    return {
        i
        for i, ex in dev.items()
        if ex.type not in TWO_WAY_TYPES
        and ex.decomposition
        and all(h.supporting_ids for h in ex.decomposition)
    }


def hops_read(example: QAExample, trajectory: Trajectory) -> list[tuple[bool, bool]]:
    """How far a trajectory got along a question's gold hops, in order: for each hop it reached (every
    earlier hop read), whether some step retrieved one of the hop's gold passages, and whether a later step
    then named the hop's answer (in its analysis, which may be the next sub-question, or as its answer: a
    bridge asked about counts, as the bridge-query reward counts it). The walk stops at the first hop not
    read, so the last pair is where the chain broke, or every hop read."""
    walked = []
    steps = trajectory.steps
    for hop in example.decomposition:
        found = retrieving_step(hop, steps)
        answer = normalize_answer(hop.answer)
        later = steps[found + 1 :] if found is not None else []
        read = any(names_entity(normalize_answer(f"{s.analysis} {s.answer or ''}"), answer) for s in later)
        walked.append((found is not None, read))
        if not read:
            break
    return walked


def hops_table(by_system: dict[str, dict[str, dict[str, Any]]], dev: dict[str, QAExample]) -> str:
    """Where the questions that need reading (every type but :data:`TWO_WAY_TYPES`) break along their gold
    hops (:func:`hops_read`): per hop, the questions that reached it, those whose hop passage some step
    retrieved, and those whose hop answer a later step then named. Gold recall says whether the evidence
    was found; this says whether it was read: a model that retrieves a hop's passage and states another
    entity from it fails at reading, which gold recall counts as found."""
    asked = walkable(dev)
    depth = max((len(dev[i].decomposition) for i in asked), default=0)
    rows = []
    for name, records in by_system.items():
        counts = [[0, 0, 0] for _ in range(depth)]
        walked_any = False
        for i in asked & records.keys():
            trajectory = records[i].get("trajectory")
            if trajectory is None:
                continue
            walked_any = True
            for hop, (retrieved, read) in enumerate(hops_read(dev[i], Trajectory.from_dict(trajectory))):
                counts[hop][0] += 1
                counts[hop][1] += retrieved
                counts[hop][2] += read
        if walked_any:
            rows.append([name, *(" / ".join(map(str, c)) for c in counts)])
    if not rows:
        return ""
    return (
        "The questions that need reading along their gold hops: per hop, the questions that reached it "
        "(every earlier hop read) / whose hop passage a step retrieved / whose hop answer a later step then "
        "named:\n\n" + markdown_table(["system", *(f"hop {n + 1}" for n in range(depth))], rows)
    )


QUOTED = re.compile(r'"([^"]+)"')
"""A quotation in a step's analysis: the oracle teacher quotes the sentence it read (and sub-questions)."""


YEAR = re.compile(r"\b\d{3,4}\b")
"""A year, the synthetic world's dates (founded, released, born in...): ``fullmatch`` for a normalised
answer that is one, ``search`` for one within a sentence."""


class Quote(NamedTuple):
    """The sentence a step quoted from the passages just retrieved (:func:`hop_quote`)."""

    kind: str
    """"answer" (the gold passage's sentence naming the hop's answer), "other" (another sentence of the
    gold passage) or "elsewhere" (a sentence of another passage)."""
    first: bool
    """Whether it is its passage's first sentence."""
    sentence: str


def hop_quote(hop: SubQuestion, retrieved: Sequence[Passage], analysis: str) -> Quote | None:
    """Which sentence a step read after the step that retrieved a hop's gold passage: the first quotation in
    its analysis that is a whole sentence of one of those passages. None when it quoted no sentence of
    them."""
    answer = normalize_answer(hop.answer)
    for quote in (q.strip() for q in QUOTED.findall(analysis)):
        for passage in retrieved:
            sentences = split_sentences(passage.text)
            if quote not in sentences:
                continue
            first = sentences.index(quote) == 0
            if passage.id not in hop.supporting_ids:
                return Quote("elsewhere", first, quote)
            return Quote("answer" if names_entity(normalize_answer(quote), answer) else "other", first, quote)
    return None


def quotes_table(by_system: dict[str, dict[str, dict[str, Any]]], dev: dict[str, QAExample]) -> str:
    """Which sentence each system quotes once it has a hop's passage: along the reading questions' gold hops
    as far as :func:`hops_read` walks them, at the step after the one that first retrieved the hop's gold
    passage (:func:`hop_quote`). Retrieved but not read (the hops table) is mostly a wrong sentence of the
    right passage. The quotes of that passage are split by whether they are its first sentence: beside the
    share of those hops whose answer is in the first sentence, a run whose right quotes grew only among
    first sentences learnt a position, not to read the relation. The other sentences of that passage that
    hold a year where the hop's answer is not one tell a misread value's kind (a release year for a label)
    from a misread relation of the same kind (the director for the producer)."""
    asked = walkable(dev)
    rows = []
    for name, records in by_system.items():
        counts: dict[tuple[str, bool] | None, int] = defaultdict(int)
        first_answers = years_for_names = 0
        for i in asked & records.keys():
            if records[i].get("trajectory") is None:
                continue
            example, trajectory = dev[i], Trajectory.from_dict(records[i]["trajectory"])
            steps = trajectory.steps
            for hop in example.decomposition[: len(hops_read(example, trajectory))]:
                found = retrieving_step(hop, steps)
                if found is None or found + 1 == len(steps):
                    continue
                passages = steps[found].passages
                quote = hop_quote(hop, passages, steps[found + 1].analysis)
                # another passage's sentence is counted whatever its place
                place = None if quote is None else (quote.kind, quote.kind != "elsewhere" and quote.first)
                counts[place] += 1
                years_for_names += (
                    quote is not None
                    and quote.kind == "other"
                    and YEAR.search(quote.sentence) is not None
                    and not YEAR.fullmatch(normalize_answer(hop.answer))
                )
                gold = next(p for p in passages if p.id in hop.supporting_ids)
                sentences = split_sentences(gold.text)
                first_answers += bool(sentences) and names_entity(
                    normalize_answer(sentences[0]), normalize_answer(hop.answer)
                )
        hops = sum(counts.values())
        if not hops:
            continue
        rows.append(
            [
                name,
                str(hops),
                *(f"{counts[(kind, True)]} / {counts[(kind, False)]}" for kind in ("answer", "other")),
                str(years_for_names),
                str(counts[("elsewhere", False)]),
                str(counts[None]),
                f"{first_answers} ({100 * first_answers / hops:.0f}%)",
            ]
        )
    if not rows:
        return ""
    header = ["system", "hop passages retrieved, a step after", "the answer's sentence: first / later"]
    header += ["another sentence of it: first / later", "of them, a year for an answer that is not one"]
    header += ["another passage's sentence", "none quoted"]
    header += ["hops whose answer is in the first sentence"]
    return (
        "What the step after a hop's gold passage came quoted, along the reading questions' hops as far as "
        "the hops table walks them (first / later: the passage's first sentence or another):\n\n"
        + markdown_table(header, rows)
    )


TWO_WAY_TYPES = frozenset({"comparison", "bridge_comparison"})
"""Question types answered by one of two sides: "yes" / "no", or one of the two entities named."""
TWO_OPTIONS = re.compile(r"[,:] (?P<first>[^,:]+) or (?P<second>[^,:]+)\?$")
"""The two entities a comparison of the synthetic world names last: "Who was born first, A or B?"."""
SIDES = ("first", "second", "yes", "no", "other")


def answer_side(question: str, answer: str | None) -> str:
    """The side of a two-way question an answer takes (:data:`SIDES`): "yes" or "no", the "first" or
    "second" of the two entities the question ends with, else "other" (no answer, anything else)."""
    text = normalize_answer(answer or "")
    if text in ("yes", "no"):
        return text
    options = TWO_OPTIONS.search(question)
    for side in ("first", "second"):
        if options is not None and text == normalize_answer(options[side]):
            return side
    return "other"


def two_way_answer(question: str, answer: str | None) -> bool:
    """Whether an answer has a two-way question's form: "yes", "no", or words the question names."""
    text = normalize_answer(answer or "")
    return text in ("yes", "no") or (bool(text) and text in normalize_answer(question))


def sides_table(by_system: dict[str, dict[str, dict[str, Any]]], dev: dict[str, QAExample]) -> str:
    """Which side the gold answers and each system's answers take on the two-way dev questions, and what
    the best constant answer (always the commoner gold side of each form) would score: a system that answers
    more often with the side the gold favours gains without reading anything. Then how many of the questions
    of each gold side the system got right: a side preference gains on one side what it loses on the other.
    The last column: how often the answers to every other question have a two-way answer's form
    (:func:`two_way_answer`; the gold row: how often the gold answers themselves do)."""
    evaluated = {i for records in by_system.values() for i in records}
    asked = {i for i in evaluated if dev[i].type in TWO_WAY_TYPES}
    if not asked:
        return ""
    others = evaluated - asked
    gold_side = {i: answer_side(dev[i].question, dev[i].answers[0]) for i in asked}

    def row(name: str, answers: dict[str, str | None], right: str) -> tuple[list[str], dict[str, int]]:
        sides = {side: 0 for side in SIDES}
        for i in asked & set(answers):
            sides[answer_side(dev[i].question, answers[i])] += 1
        rest = [two_way_answer(dev[i].question, answers[i]) for i in others & set(answers)]
        shape = f"{100 * statistics.fmean(rest):.1f}" if rest else "-"
        return [name, str(sum(sides.values())), *(str(sides[side]) for side in SIDES), right, shape], sides

    def right_by_gold_side(records: dict[str, dict[str, Any]]) -> str:
        right = {side: 0 for side in SIDES[:-1]}
        for i in asked & set(records):
            if records[i].get("acc") and gold_side[i] in right:
                right[gold_side[i]] += 1
        return " / ".join(str(count) for count in right.values())

    gold, sides = row("gold answers", {i: dev[i].answers[0] for i in asked | others}, "-")
    constant = max(sides["first"], sides["second"]) + max(sides["yes"], sides["no"])
    rows = [gold]
    for name, records in by_system.items():
        answers = {i: r.get("prediction") for i, r in records.items()}
        rows.append(row(name, answers, right_by_gold_side(records))[0])
    header = ["answers", "n", *SIDES, "right by gold side: first / second / yes / no"]
    header.append("two-way form on the other types (%)")
    return (
        "Sides taken on the two-way dev questions (comparisons: yes / no, or the first / second of the two "
        "entities named): always answering the commoner gold side of each form would score "
        f"{100 * constant / len(asked):.1f}% of them; last column: the share of the answers to the other "
        "questions that are yes, no, or words of the question:\n\n" + markdown_table(header, rows)
    )


EARLIER_WORDS = re.compile(r"\b(first|earlier|earliest|older|oldest|before)\b", re.IGNORECASE)
LATER_WORDS = re.compile(r"\b(later|latest|last|younger|youngest|newer|newest|after)\b", re.IGNORECASE)
"""The words of a dated comparison ("Who was born first", "Which is younger") that say which of two years
wins."""


def asks_earlier(question: str, names: tuple[str, str]) -> bool | None:
    """Whether a comparison question asks for the earlier of two dates (True) or the later (False), read from
    its words with the compared names taken out (a title like "The First Summer" says nothing); None when
    it has words for neither end or for both (a yes / no question, an unclear one)."""
    text = question
    for name in names:
        text = re.sub(re.escape(name), " ", text, flags=re.IGNORECASE)
    earlier, later = bool(EARLIER_WORDS.search(text)), bool(LATER_WORDS.search(text))
    return earlier if earlier != later else None


def stated_year(analysis: str, entity: str) -> int | None:
    """The year a step states for an entity: the first mention of it followed, within a few words and no other
    number, by a year ("A gives 1938", "A: 1938", "A has 1938")."""
    match = re.search(re.escape(entity) + rf"[^0-9]{{0,25}}?({YEAR.pattern})", analysis)
    return int(match[1]) if match else None


def phrasing_pattern(template: str, **groups: str) -> re.Pattern[str]:
    """A teacher phrasing (:data:`~r3rag.coldstart.phrasing.FOUND`, ``EARLIER``...) as a pattern: its own
    words, any text for each placeholder, or for a placeholder named in ``groups`` a group of that name
    matching the pattern given."""

    def placeholder(match: re.Match[str]) -> str:
        name = match[1]
        return f"(?P<{name}>{groups[name]})" if name in groups else ".+?"

    return re.compile(re.sub(r"\\\{(\w+)\\\}", placeholder, re.escape(template)), re.DOTALL)


ORDER_CLAIMS = tuple(
    (phrasing_pattern(template, va=YEAR.pattern, vb=YEAR.pattern), earlier)
    for templates, earlier in ((EARLIER, True), (LATER, False))
    for template in templates
)
"""Each order claim's pattern, and whether it says its first year is the earlier one."""


def stated_order_right(analysis: str) -> bool | None:
    """Whether the last order claim of a step ("1939 is later than 1922.") is true of the two years it names;
    None when the step makes none. A final step can state both years and then get their order wrong, or get
    it right and still answer the other entity: the two failures want different fixes."""
    claims = [
        (m.start(), m, earlier) for pattern, earlier in ORDER_CLAIMS for m in pattern.finditer(analysis)
    ]
    if not claims:
        return None
    _, match, earlier = max(claims, key=lambda claim: claim[0])
    first, second = int(match["va"]), int(match["vb"])
    return first != second and (first < second) == earlier


def comparing_table(by_system: dict[str, dict[str, dict[str, Any]]], dev: dict[str, QAExample]) -> str:
    """The last step of the two-way questions that ask which of two named entities has the earlier or the
    later date ("Who was born first, A or B?"): how often a system's final step states a year for each
    entity, whether its order claim holds (:func:`stated_order_right`), and how often its answer is the
    entity those years make right or the other one. A run can learn to find both years and lose the question
    at the comparison, which the sides table alone does not tell from not finding them."""
    asked: dict[str, tuple[str, str, bool]] = {}
    for i, example in dev.items():
        options = TWO_OPTIONS.search(example.question) if example.type in TWO_WAY_TYPES else None
        if options is None:
            continue
        earlier = asks_earlier(example.question, (options["first"], options["second"]))
        if earlier is not None:
            asked[i] = (options["first"], options["second"], earlier)
    if not asked:
        return ""
    rows = []
    for name, records in by_system.items():
        stated = follows = inverts = order_right = order_wrong = inverts_after_right = 0
        for i in asked.keys() & records.keys():
            first, second, earlier_wins = asked[i]
            steps = (records[i].get("trajectory") or {}).get("steps") or [{}]
            final = steps[-1].get("analysis") or ""
            years = stated_year(final, first), stated_year(final, second)
            if years[0] is None or years[1] is None or years[0] == years[1]:
                continue
            stated += 1
            right_side = "first" if (years[0] < years[1]) == earlier_wins else "second"
            side = answer_side(dev[i].question, records[i].get("prediction"))
            order = stated_order_right(final)
            order_right += order is True
            order_wrong += order is False
            follows += side == right_side
            inverted = side in ("first", "second") and side != right_side
            inverts += inverted
            inverts_after_right += inverted and order is True
        counts = (stated, f"{order_right} / {order_wrong}", follows, inverts, inverts_after_right)
        rows.append([name, str(len(asked.keys() & records.keys())), *map(str, counts)])
    header = ["system", "questions", "final step states both years", "their order stated: right / wrong"]
    header += ["answer follows them", "answer inverts them", "inverts after a right order"]
    return (
        "The comparisons of two dates between two named entities (first / older: the earlier wins; later / "
        "younger / newer: the later): final steps that state a year for each entity, whether their order "
        'claim ("1939 is later than 1922.") is true of the two years, and the answers that take the entity '
        "those years make right, or the other one; an inversion after a right order lost the question in "
        "mapping the asked end to an entity, not in comparing the years:\n\n" + markdown_table(header, rows)
    )


FOUND_PATTERNS = tuple(phrasing_pattern(template) for template in FOUND)


def reading_table(by_system: dict[str, dict[str, dict[str, Any]]], dev: dict[str, QAExample]) -> str:
    """How each system reads: on the questions that need reading (every type but :data:`TWO_WAY_TYPES`) whose
    gold answer is not a year, how often it answers with a year; and, over every dev question, how its steps
    state a fact they found: which of the oracle teacher's six phrasings of it
    (:data:`~r3rag.coldstart.phrasing.FOUND`, all in the cold start's data) is the commonest, and its share.
    A run that learnt to compare years on the two-way questions can carry that habit to a birthplace
    question ("born in Rograd in 1950" read as 1950); a run whose steps all take one phrasing has traded the
    teacher's variety for it."""
    asked = {
        i
        for i, ex in dev.items()
        if ex.type not in TWO_WAY_TYPES and not any(YEAR.fullmatch(normalize_answer(a)) for a in ex.answers)
    }
    rows = []
    for name, records in by_system.items():
        answers = [records[i].get("prediction") for i in asked & set(records)]
        years = sum(bool(YEAR.fullmatch(normalize_answer(a or ""))) for a in answers)
        phrasings: dict[int, int] = defaultdict(int)
        for record in records.values():
            steps = (record.get("trajectory") or {}).get("steps", [])
            for step in steps:
                analysis = step.get("analysis") or ""
                found = next((n for n, p in enumerate(FOUND_PATTERNS) if p.search(analysis)), None)
                if found is not None:
                    phrasings[found] += 1
        stated = sum(phrasings.values())
        commonest = max(phrasings, key=lambda n: phrasings[n]) if stated else None
        rows.append(
            [
                name,
                str(len(answers)),
                f"{years} ({100 * years / len(answers):.0f}%)" if answers else "-",
                str(stated),
                "-" if commonest is None else f"{100 * phrasings[commonest] / stated:.0f}%",
                "-" if commonest is None else f"`{FOUND[commonest]}`",
            ]
        )
    header = ["system", "reading questions, gold not a year", "answered with a year"]
    header += ["steps stating a found fact", "in the commonest phrasing", "commonest phrasing"]
    return (
        "How each system reads: on the questions that need reading whose gold answer is not a year, the "
        "answers that are a year; over every dev question, the steps that state a fact they found in one of "
        f"the teacher's {len(FOUND)} phrasings, and the share of the commonest:\n\n"
        + markdown_table(header, rows)
    )


def halves_table(
    by_system: dict[str, dict[str, dict[str, Any]]], budgets: dict[str, Budget], types: dict[str, str]
) -> str:
    """Each RL run against R3-RAG-CS on the two halves of the dev set, paired by question (exact McNemar on
    each): the questions that need reading (every type but :data:`TWO_WAY_TYPES`) and the two-way ones. A run
    can gain on one half what it loses on the other (a side learnt on the comparisons, a plan learnt on the
    chains and applied to every question); the total's test hides both."""
    cs = {i: bool(r["acc"]) for i, r in by_system.get("R3-RAG-CS", {}).items()}
    halves = {"reading": [i for i in cs if types[i] not in TWO_WAY_TYPES]}
    halves["two-way"] = [i for i in cs if types[i] in TWO_WAY_TYPES]
    if not cs or not budgets or not all(halves.values()):
        return ""
    rows = []
    for name in budgets:
        verdicts = {i: bool(r["acc"]) for i, r in by_system[name].items()}
        cells = []
        for ids in halves.values():
            c = compare({i: cs[i] for i in ids}, verdicts)
            cells.append(f"+{c.gained} / -{c.lost} (p = {c.p_value:.3g})")
        rows.append([name, *cells])
    header = ["against R3-RAG-CS", *(f"{half} questions ({len(ids)})" for half, ids in halves.items())]
    return (
        "Each RL run against R3-RAG-CS on the questions that need reading (every type but the two-way ones) "
        "and on the two-way questions (comparison, bridge comparison): questions gained / lost, exact "
        "McNemar on each half:\n\n" + markdown_table(header, rows)
    )


def rollout_signal_table(out: Path, runs: dict[str, list[dict[str, Any]]]) -> str:
    """What each RL run's rollouts gave its updates, per question type: correct sampled trajectories out of
    those sampled. A type no sample answers carries no outcome signal, whatever the credit scheme: this is
    where a type that stays at 0% after RL is explained, or not. A question's type is looked up in the file
    the run trained on (its config's ``train``), not in the folder's world: in a transfer folder that world
    is another one, whose question ids name other questions."""
    counts: dict[str, dict[str, list[int]]] = {}
    types_of: dict[str, dict[str, str]] = {}  # training file -> question id -> type (runs share their file)
    for name in runs:
        ppo = out / RUNS_DIR / name / "ppo"
        train = yaml.safe_load((ppo / CONFIG_FILE).read_text(encoding="utf-8"))["train"]
        if train not in types_of:
            types_of[train] = {ex.id: ex.type or "?" for ex in load_dataset(train)}
        types = types_of[train]
        sampled: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for path in sorted((ppo / ROLLOUTS_DIR).glob("iter-*.jsonl")):
            for _, record in iter_jsonl(path):
                for key in (types[record["example_id"]], "all"):
                    sampled[key][0] += bool(record["reward"]["correct"])
                    sampled[key][1] += 1
        counts[name] = sampled
    type_names = sorted({t for sampled in counts.values() for t in sampled} - {"all"})
    rows = [
        [
            name,
            *(f"{sampled[t][0]} / {sampled[t][1]}" if sampled[t][1] else "-" for t in (*type_names, "all")),
        ]
        for name, sampled in counts.items()
    ]
    return (
        "Correct / sampled rollout trajectories per question type (what the updates learned from):\n\n"
        + markdown_table(["RL run", *type_names, "all"], rows)
    )


ITERATION_COLUMNS = {
    "rollout/accuracy": ("rollout Acc", "{:.0%}"),
    "rollout/answered": ("answered", "{:.0%}"),
    "rollout/format_error": ("format errors", "{:.0%}"),
    "rollout/retrievals_per_trajectory": ("searches/trajectory", "{:.2f}"),
    "reward/trajectory_mean": ("reward/trajectory", "{:.2f}"),
    "ppo/kl": ("KL/token", "{:.3f}"),
}
"""The columns of :func:`iterations_table`: a metrics key, its header and its format."""


def iterations_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Every RL run iteration by iteration: the minute it ended at, then :data:`ITERATION_COLUMNS` (its
    sampled rollouts, and the KL to R3-RAG-CS its update started from); a key a record lacks shows as "-"."""
    rows = []
    for name, records in runs.items():
        minutes = accumulate(r.get("time/iteration", 0.0) / 60 for r in records)
        for record, minute in zip(records, minutes, strict=True):
            cells = [
                fmt.format(record[key]) if key in record else "-"
                for key, (_, fmt) in ITERATION_COLUMNS.items()
            ]
            rows.append([name, str(record["iteration"]), f"{minute:.0f}", *cells])
    header = ["RL run", "iteration", "minutes", *(title for title, _ in ITERATION_COLUMNS.values())]
    return (
        "Every RL run per iteration (its sampled trajectories; KL per action token to R3-RAG-CS):\n\n"
        + markdown_table(header, rows)
    )


PHASES = {
    "generation": ("time/rollout",),
    "log-prob passes": ("time/policy_pass", "time/reference_pass"),
    "update": ("time/update",),
}
"""The columns of :func:`time_table`: a phase of an iteration and the ``time/*`` keys it adds up (the
passes without gradients: the old and the reference log-probs)."""


def time_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Where each RL run's minutes went: its mean iteration and each :data:`PHASES`' share of the time of its
    iterations (the rest, "other": scoring, dev evaluations, checkpoints, the curve); iterations lacking a key
    are left out."""
    keys = ["time/iteration", *(key for phase in PHASES.values() for key in phase)]
    rows = []
    for name, records in runs.items():
        timed = [r for r in records if all(key in r for key in keys)]
        if not timed:
            continue
        total = sum(r["time/iteration"] for r in timed)
        shares = [sum(r[key] for r in timed for key in phase) / total for phase in PHASES.values()]
        rows.append(
            [
                name,
                str(len(timed)),
                f"{total / len(timed) / 60:.1f}",
                *(f"{share:.0%}" for share in shares),
                f"{1 - sum(shares):.0%}",
            ]
        )
    header = ["RL run", "iterations", "minutes/iteration", *PHASES, "other"]
    title = "Where an iteration's time went (share of each run's iterations):\n\n"
    return title + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="The experiment's folder.")
    parser.add_argument("--world-seed", type=int, default=0, help="Seed of the synthetic world.")
    parser.add_argument("--dev-questions", type=int, default=200, help="Dev questions every evaluation runs.")
    parser.add_argument(
        "--sft-examples",
        type=int,
        default=None,
        help="Cold-start examples SFT trains on (default: all; up to commit abda86d the default was 768, "
        "about a quarter, which every base measured before the full-SFT base of 2026-12-07 used).",
    )
    parser.add_argument(
        "--sft-seed",
        type=int,
        default=None,
        help="Seed of the SFT stage (which examples it draws, their order; default: the SFT config's). "
        "R3-RAG-CS moves with it: another base to measure RL from, in its own --out folder.",
    )
    parser.add_argument(
        "--sft-epochs",
        type=float,
        default=2.0,
        help="Passes of the SFT stage over its examples (the CPU preset has 1, the default up to commit "
        "47abb9c: R3-RAG-CS 42.5%% against 57.0%% with 2 on world seed 0, its chains stopping after two "
        "searches). Another base, in its own --out folder.",
    )
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), default=[], help="RL variant."
    )
    parser.add_argument("--reward", action="append", choices=REWARD_MODES, default=[], help="Reward mode.")
    parser.add_argument("--seed", action="append", type=int, default=[], help="Seed of an RL run.")
    parser.add_argument("--rl-minutes", type=float, default=60.0, help="Wall-clock minutes of each RL run.")
    parser.add_argument(
        "--rl-iterations",
        type=int,
        default=40,
        help="Iterations the learning-rate schedule spans (the README's 50-minute run: 40, of which the time "
        "budget let 10 run); a run that reaches them stops before its minutes are spent.",
    )
    parser.add_argument(
        "--kl-target",
        type=float,
        default=None,
        help="Adapt the KL penalty towards this KL per token (PPOConfig.kl_target); default: fixed beta.",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        type=parse_override,
        default=[],
        help="Set a PPOConfig field of every run over the preset (repeatable; dotted into sections: "
        "questions_per_iteration=8, reward.scale=trajectory). Needs --tag.",
    )
    parser.add_argument(
        "--tag",
        default="",
        help="Name of the --set changes in the runs' names (rloo-hybrid-<tag>-60min-s0).",
    )
    parser.add_argument(
        "--snapshot-minutes",
        action="append",
        type=float,
        default=[],
        help="Also evaluate the model each run had after this many of its minutes (repeatable): one long "
        "run gives the shorter budget's row too.",
    )
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="Train nothing: evaluate the models the named runs have saved so far (a snapshot while its run "
        "still trains, on another core) and report. Not while another invocation evaluates the same model.",
    )
    parser.add_argument(
        "--transfer-world",
        type=int,
        default=None,
        metavar="SEED",
        help="Train nothing: evaluate R3-RAG-CS and every finished RL run's final model on the dev questions "
        "of world SEED (entities the models never saw), into <out>/transfer-SEED, and report them.",
    )
    parser.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Report only the RL runs whose names match PATTERN (shell-style, repeatable: --runs "
        "'rloo-to-go-*' --runs '*-s0'), and with --transfer-world transfer only those; default: every run.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--tiny", action="store_true", help="The tiny preset: checks the plumbing only.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Write and print the table of what is evaluated; run nothing.",
    )
    args = parser.parse_args(argv)
    if bool(args.overrides) != bool(args.tag):
        parser.error("--set and --tag go together: runs with changed settings need a name of their own")
    if args.tag and not re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", args.tag):
        parser.error(f"--tag {args.tag!r}: use lowercase letters, digits, dots and single dashes")
    if args.transfer_world is not None and args.variant:
        parser.error("--transfer-world trains nothing: run the RL runs first, then transfer their models")
    if args.transfer_world == args.world_seed:
        parser.error(f"--transfer-world {args.transfer_world} is the world the models were trained on")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def base(world_seed: int) -> PipelineConfig:
        """The base's configuration on ``world_seed``, a value no field takes refused as a usage error."""
        try:
            return base_config(
                world_seed, args.dev_questions, args.sft_examples, args.tiny, args.sft_seed, args.sft_epochs
            )
        except ValidationError as error:
            parser.error(settings_errors(error, {}, "the base's configuration"))

    config = base(args.world_seed)
    out: Path = args.out
    preface = ""
    if args.transfer_world is not None:
        trained_in, out = out, out / f"transfer-{args.transfer_world}"
        config = base(args.transfer_world)
        preface = (
            f"The models of `{trained_in}` (trained on world seed {args.world_seed}) on another world's "
            "questions; the rollout, iteration and time tables are their training's.\n\n"
        )
        if not args.report_only:
            transfer(config, trained_in, out, console, not args.quiet, args.runs)
    elif not args.report_only:
        run_all(args, config, out, console)
    runs = run_records(out, args.runs)
    table = preface + report(config, out, runs)
    (out / REPORT).write_text(table, encoding="utf-8")
    plot_curves(runs, out / CURVES)
    print(table, end="")
    return 0


def run_all(args: argparse.Namespace, config: PipelineConfig, out: Path, console: Console) -> None:
    """The base, then the RL runs the arguments name, each with its evaluation."""
    ctx = train_base(config, out / BASE_DIR, console, not args.quiet)
    if not args.variant:
        evaluate_base(ctx)
    for variant in args.variant:
        for reward in args.reward or ["hybrid"]:
            settings = RLSettings(
                variant,
                reward,
                args.rl_minutes,
                args.rl_iterations,
                args.kl_target,
                tuple(m for m in args.snapshot_minutes if m < args.rl_minutes),
                tuple(args.overrides),
                args.tag,
            )
            for seed in args.seed or [0]:
                name = f"{settings.configuration()}-s{seed}"
                run = rl_config(config, ctx.out, out / RUNS_DIR / name / "ppo", settings, seed)
                run_rl(ctx, name, run, not args.quiet, train=not args.no_train)


if __name__ == "__main__":
    sys.exit(main())
