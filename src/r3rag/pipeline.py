"""The whole R3-RAG chain in one folder: world, index, base model, cold start, SFT, PPO and the evaluations.

Each stage calls the library function its own command calls (nothing is shelled out) and writes its
artifacts under the quickstart folder, then its marker ``done/<stage>.json`` (wall time and a one-line
summary), last. A stage whose marker and outputs exist is skipped; a stage without them is run again and
resumes with its own resume support: the teacher skips the questions already in ``trajectories.jsonl``, SFT
and PPO restart from their last checkpoint, an evaluation runs only the predictions it is missing. So an
interrupted quickstart finishes where it stopped, and a finished one only prints its table.

The folder is bound to one :class:`~r3rag.pipeline_config.PipelineConfig` (``quickstart.yaml``): running
another config there is refused, naming the fields that differ, because its stages would resume from
artifacts made under the first one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from r3rag import runs
from r3rag.config import IndexBuildConfig, PPOConfig, SFTConfig
from r3rag.evaluation.config import EvalConfigBase
from r3rag.pipeline_config import TINY_MODEL_DIR, PipelineConfig

CONFIG_FILE = "quickstart.yaml"
DONE_DIR = "done"
TIMINGS_FILE = "timings.json"
RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"


class PipelineError(ValueError):
    """A quickstart folder that cannot run as asked; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class Context:
    """What every stage gets: the config, the (absolute) quickstart folder, and where to report progress."""

    config: PipelineConfig
    out: Path
    console: Console
    progress: bool

    def say(self, text: str) -> None:
        """One progress line, neither wrapped nor highlighted (paths and numbers stay as written)."""
        self.console.print(text, highlight=False, soft_wrap=True)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of the chain: ``outputs`` (relative to the folder) must exist for it to count as done;
    ``needs`` names the stages whose outputs it reads; ``run`` does the work and returns a summary line."""

    name: str
    title: str
    outputs: tuple[str, ...]
    needs: tuple[str, ...]
    run: Callable[[Context], str]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluation folder (bound to one model): its model, its config, and the label of its rows (None:
    ``untrained <method>``, one row per baseline method)."""

    folder: str
    title: str
    system: str | None
    needs: str
    model_of: Callable[[Path, PipelineConfig], str]
    config_of: Callable[[PipelineConfig], EvalConfigBase]


@dataclass(frozen=True, slots=True)
class StageReport:
    """How a stage went: its wall time (from the run that finished it), and whether this run did it."""

    name: str
    title: str
    seconds: float
    ran: bool
    summary: str


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One row of the final table: a model with a method on the dev questions. Rates are in [0, 1]."""

    system: str
    method: str
    model: str
    folder: str
    questions: int
    acc: float
    f1: float
    em: float
    retrievals: float


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What a run ends with: the table's rows, every stage's report, and where the artifacts are."""

    rows: list[ResultRow]
    stages: list[StageReport]
    paths: dict[str, str]


# ------------------------------------------------------------------------------------------------ the run


def run_pipeline(
    config: PipelineConfig,
    out: str | Path,
    console: Console | None = None,
    progress: bool = True,
    only: Collection[str] | None = None,
) -> PipelineResult:
    """Run every stage not yet done into ``out``; write the results table; return it.

    ``console`` receives one line per stage (and the evaluations' progress); ``progress`` also shows the
    stages' own progress bars (SFT, PPO, index). ``only`` names the stages to run (default: all of them):
    the table then has the rows of the evaluations done. Raises :class:`PipelineError` when ``out`` holds
    another config, a later stage is done while an earlier one is not, or a stage asked for needs one that is
    neither done nor asked for.
    """
    ctx = Context(config, Path(out).resolve(), console or Console(stderr=True, quiet=True), progress)
    try:
        with runs.locked(ctx.out):
            return _run_stages(ctx, only)
    except runs.RunFolderError as e:
        raise PipelineError(str(e)) from None


def _run_stages(ctx: Context, only: Collection[str] | None) -> PipelineResult:
    config = ctx.config
    bind_folder(config, ctx.out)
    stages = pipeline_stages(config)
    done = [stage_done(ctx.out, stage) for stage in stages]
    _check_dependents(ctx.out, stages, done)
    chosen = _chosen_stages(stages, done, only)
    if all(done):
        ctx.say(f"every stage of {ctx.out} is done; delete a stage's folder to redo it")
    reports = []
    for number, (stage, finished) in enumerate(zip(stages, done, strict=True), start=1):
        if stage.name not in chosen:
            continue
        label = f"[{number}/{len(stages)}] {stage.title}"
        reports.append(_skip(ctx, stage, label, quiet=all(done)) if finished else _run(ctx, stage, label))
    rows = collect_results(ctx.out, config)
    result = PipelineResult(rows, reports, artifact_paths(ctx.out, config))
    write_results(ctx.out, result)
    return result


def _chosen_stages(stages: list[Stage], done: list[bool], only: Collection[str] | None) -> set[str]:
    """The names of the stages to run: ``only``, checked (every name a stage, every stage it needs either
    done or chosen too), or all of them."""
    if only is None:
        return {stage.name for stage in stages}
    names = [stage.name for stage in stages]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise PipelineError(f"no stage named {', '.join(unknown)}; the stages are {', '.join(names)}")
    finished = {stage.name for stage, d in zip(stages, done, strict=True) if d}
    for stage in stages:
        missing = [n for n in stage.needs if stage.name in only and n not in only and n not in finished]
        if missing:
            raise PipelineError(f"stage {stage.name} needs {', '.join(missing)}: not done, and not asked for")
    return set(only)


def _run(ctx: Context, stage: Stage, label: str) -> StageReport:
    """Run one stage, then write its marker (last: a crash before it leaves the stage to be resumed)."""
    ctx.say(f"{label} ...")
    started = time.perf_counter()
    try:
        summary = stage.run(ctx)
    except (ValueError, OSError, RuntimeError) as e:
        raise PipelineError(f"{label} failed: {e}") from e
    seconds = time.perf_counter() - started
    marker = {
        "stage": stage.name,
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": summary,
    }
    runs.write_text(ctx.out / DONE_DIR / f"{stage.name}.json", json.dumps(marker, indent=2) + "\n")
    _write_timings(ctx.out, [s.name for s in pipeline_stages(ctx.config)])
    ctx.say(f"{label}: done in {_duration(seconds)}; {summary}")
    return StageReport(stage.name, stage.title, seconds, True, summary)


def _skip(ctx: Context, stage: Stage, label: str, quiet: bool) -> StageReport:
    marker = read_marker(ctx.out, stage.name)
    if not quiet:
        ctx.say(f"{label}: done earlier ({_duration(marker['seconds'])}), skipped")
    return StageReport(stage.name, stage.title, marker["seconds"], False, marker["summary"])


def _duration(seconds: float) -> str:
    """Seconds for the short stages, minutes for SFT and PPO."""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def bind_folder(config: PipelineConfig, out: Path) -> None:
    """Save the config in ``out``, or refuse if ``out`` already holds a quickstart of another config."""
    hint = f"resume it with the same preset (or --config {out / CONFIG_FILE}), or use another --out"
    try:
        runs.bind(out, config, holds_results=True, file=CONFIG_FILE, hint=hint)
    except runs.RunFolderError as e:
        raise PipelineError(str(e)) from None


def stage_done(out: Path, stage: Stage) -> bool:
    """Done = the marker is there and so is every output (deleting a stage's folder redoes the stage)."""
    return (out / DONE_DIR / f"{stage.name}.json").is_file() and all(
        (out / p).exists() for p in stage.outputs
    )


def read_marker(out: Path, name: str) -> dict[str, Any]:
    """A finished stage's marker: its wall time and summary, kept for the runs that skip it."""
    return json.loads((out / DONE_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _check_dependents(out: Path, stages: list[Stage], done: list[bool]) -> None:
    """A stage redone under finished stages that read its outputs would leave them built on what it
    replaced: refuse, naming the folders to delete so that they are redone too."""
    finished = {stage.name for stage, d in zip(stages, done, strict=True) if d}
    needs = {stage.name: set(stage.needs) for stage in stages}
    for stage in stages:  # stages come in order, so one pass makes ``needs`` transitive
        for name in list(needs[stage.name]):
            needs[stage.name] |= needs[name]
    for stage, d in zip(stages, done, strict=True):
        stale = [s for s in stages if s.name in finished and stage.name in needs[s.name]]
        if not d and stale:
            folders = ", ".join(sorted({str(out / s.outputs[0].split("/")[0]) for s in stale}))
            raise PipelineError(
                f"stage '{stage.title}' is not done, but stages built on its outputs are "
                f"({', '.join(s.title for s in stale)}); delete {folders} to redo them too"
            )


def _write_timings(out: Path, order: list[str]) -> None:
    """``timings.json``: each finished stage's wall time (from its marker, in stage order) and their total."""
    stages = {
        name: read_marker(out, name)["seconds"]
        for name in order
        if (out / DONE_DIR / f"{name}.json").is_file()
    }
    timings = {"stages": stages, "total_seconds": round(sum(stages.values()), 3)}
    runs.write_text(out / TIMINGS_FILE, json.dumps(timings, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- the stages


def base_model(out: Path, config: PipelineConfig) -> str:
    """The untrained model the chain starts from: the tiny model's folder, or ``sft.model`` as named."""
    return str(out / TINY_MODEL_DIR) if config.tiny_model is not None else config.sft.model


def _cs_model(out: Path, config: PipelineConfig) -> str:
    """R3-RAG-CS, the SFT stage's final model."""
    return str(out / "sft" / "final")


def _r3rag_model(out: Path, config: PipelineConfig) -> str:
    """R3-RAG, the PPO stage's final actor."""
    return str(out / "ppo" / "final")


def _baselines(config: PipelineConfig) -> EvalConfigBase:
    """The untrained model's evaluation: the baseline methods in the paper's evaluation setting."""
    return config.eval


EVALUATIONS = (
    Evaluation("eval-base", "evaluation: untrained model", None, "base-model", base_model, _baselines),
    Evaluation("eval-cs", "evaluation: R3-RAG-CS", "R3-RAG-CS", "sft", _cs_model, PipelineConfig.r3rag_eval),
    Evaluation("eval-r3rag", "evaluation: R3-RAG", "R3-RAG", "ppo", _r3rag_model, PipelineConfig.r3rag_eval),
)
"""The table's rows come from these folders, in this order."""


def pipeline_stages(config: PipelineConfig) -> list[Stage]:
    """The chain, in order. Each evaluation is a stage of its own: a folder is bound to one model."""
    base = (f"{TINY_MODEL_DIR}/config.json",) if config.tiny_model is not None else ()
    return [
        Stage("world", "world", ("world/corpus.jsonl", "world/train.jsonl", "world/dev.jsonl"), (), _world),
        Stage("index", "BM25 index", ("index/manifest.json",), ("world",), _index),
        Stage("base-model", "base model", base, (), _base_model),
        Stage(
            "coldstart",
            "cold-start data",
            ("coldstart/sft.jsonl", "coldstart/stats.json"),
            ("world", "index"),
            _coldstart,
        ),
        Stage("sft", "SFT (R3-RAG-CS)", ("sft/final/config.json",), ("coldstart", "base-model"), _sft),
        Stage("ppo", "PPO (R3-RAG)", ("ppo/final/config.json",), ("sft", "index"), _ppo),
        *(
            Stage(e.folder, e.title, (f"{e.folder}/results.json",), (e.needs, "index"), partial(_evaluate, e))
            for e in EVALUATIONS
        ),
    ]


def _world(ctx: Context) -> str:
    """Generate the synthetic world (deterministic: a rerun writes the same files)."""
    from r3rag.data.world import generate_world, write_world

    world = generate_world(ctx.config.world)
    write_world(world, ctx.out / "world")
    stats = world.stats()
    return (
        f"{stats['passages']:,} passages, {stats['train']['questions']:,} train and "
        f"{stats['dev']['questions']:,} dev questions"
    )


def _index(ctx: Context) -> str:
    """The BM25 index of the world's corpus (built aside and moved into place)."""
    from r3rag.retrieval.index import build_index

    config = IndexBuildConfig(
        corpus=ctx.out / "world" / "corpus.jsonl", out=ctx.out / "index", bm25=ctx.config.bm25
    )
    manifest = build_index(config, progress=ctx.progress)
    return f"{manifest.passages:,} passages"


def _base_model(ctx: Context) -> str:
    """Build the tiny model, or make sure the named one loads (the embedded GGUF is converted once, here)."""
    from r3rag.llm.models import build_tiny_model, resolve_model

    tiny = ctx.config.tiny_model
    if tiny is not None:
        build_tiny_model(tiny, ctx.out / TINY_MODEL_DIR)
        return f"random {tiny.layers}-layer model, hidden size {tiny.hidden_size} -> {TINY_MODEL_DIR}/"
    return f"{ctx.config.sft.model} ({resolve_model(ctx.config.sft.model)})"


def _coldstart(ctx: Context) -> str:
    """Oracle trajectories for every train question, then the SFT examples; a rerun skips finished ones."""
    from r3rag.coldstart.build import build
    from r3rag.coldstart.oracle import OracleTeacher
    from r3rag.data.datasets import load_dataset
    from r3rag.gold import resolve_gold_match
    from r3rag.retrieval.index import load_index

    cold = ctx.config.coldstart
    questions = ctx.out / "world" / "train.jsonl"
    examples = load_dataset(questions)
    index = ctx.out / "index"
    retriever = load_index(index)
    gold = resolve_gold_match(cold.judge.reference_match, {str(questions): examples}, retriever)
    teacher = OracleTeacher(retriever, cold, gold)
    _, stats = build(cold, teacher, examples, ctx.out / "coldstart", gold=gold, index=str(index))
    return (
        f"{stats['kept']:,} of {stats['questions']:,} questions kept, {stats['sft_examples']:,} SFT examples"
    )


def sft_config(config: PipelineConfig, out: Path) -> SFTConfig:
    """The SFT stage's config with the layout's paths under ``out``."""
    sft = config.sft
    return sft.model_copy(
        update={"data": out / sft.data, "out": out / sft.out, "model": base_model(out, config)}
    )


def ppo_config(config: PipelineConfig, out: Path) -> PPOConfig:
    """The PPO stage's config with the layout's paths under ``out``."""
    ppo = config.ppo
    return ppo.model_copy(
        update={
            "model": str(out / ppo.model),
            "train": out / ppo.train,
            "index": str(out / ppo.index),
            "out": out / ppo.out,
        }
    )


def _sft(ctx: Context) -> str:
    """Train R3-RAG-CS; a ``final/`` already there means training ended but the marker was not yet written."""
    from r3rag.coldstart.sft import FINAL, train

    config = sft_config(ctx.config, ctx.out)
    if (config.out / FINAL).is_dir():
        return f"{config.out / FINAL} was already complete"
    result = train(config, progress=ctx.progress)
    return (
        f"{result.steps} steps on {result.train_examples:,} examples ({result.train_tokens:,} tokens), "
        f"train loss {result.last_loss:.3f}"
    )


def _ppo(ctx: Context) -> str:
    """Train R3-RAG from R3-RAG-CS (a rerun resumes from the last checkpoint and rewrites ``final/``)."""
    from r3rag.rl.ppo import PPOTrainer

    config = ppo_config(ctx.config, ctx.out)
    records = PPOTrainer.from_config(config).train(progress=ctx.progress)
    rewards = [r["reward/trajectory_mean"] for r in records if "reward/trajectory_mean" in r]
    trend = f", mean trajectory reward {rewards[0]:.2f} -> {rewards[-1]:.2f}" if rewards else ""
    return f"{config.iterations} iterations{trend}"


def _evaluate(evaluation: Evaluation, ctx: Context) -> str:
    """Evaluate one model on the first dev questions into its own folder (resumed if interrupted)."""
    config, model = evaluation.config_of(ctx.config), evaluation.model_of(ctx.out, ctx.config)
    evaluate_model(ctx, model, config, ctx.out / evaluation.folder)
    return ", ".join(f"{r.method} Acc {r.acc:.1%}" for r in _rows(ctx.out, ctx.config, evaluation))


def evaluate_model(ctx: Context, model: str, config: EvalConfigBase, out: Path) -> None:
    """Evaluate ``model`` with ``config`` on the first ``eval_questions`` dev questions of the folder's world,
    against its index, into ``out`` (an evaluation folder: resumed if interrupted, bound to this model)."""
    from r3rag.evaluation.run import open_run, run_and_report
    from r3rag.evaluation.runner import Progress, load_datasets
    from r3rag.llm.hf import HFGenerator
    from r3rag.llm.models import describe_model

    datasets = load_datasets([str(ctx.out / "world" / "dev.jsonl")], ctx.config.eval_questions)
    manifest, retriever = open_run(config, datasets, describe_model(model), str(ctx.out / "index"), out)
    generator = HFGenerator.from_name(
        model, batch_size=config.batch_size, bf16=ctx.config.eval_bf16, device=ctx.config.eval_device
    )

    def show(p: Progress) -> None:
        ctx.say(f"    {p.method}: {p.done}/{p.total} questions ({p.seconds:.0f} s)")

    run_and_report(config, generator, retriever, manifest, datasets, out, on_progress=show)


# ------------------------------------------------------------------------------------------- the results


def collect_results(out: Path, config: PipelineConfig) -> list[ResultRow]:
    """The table's rows, from each finished evaluation's ``results.json``: the untrained model with each
    baseline method, then R3-RAG-CS and R3-RAG with method r3rag."""
    return [
        row
        for evaluation in EVALUATIONS
        if (out / evaluation.folder / "results.json").is_file()
        for row in _rows(out, config, evaluation)
    ]


def _rows(out: Path, config: PipelineConfig, evaluation: Evaluation) -> list[ResultRow]:
    """Each method of one evaluation at its main top-k (the report's Table 1 cell; one dataset, world)."""
    from r3rag.evaluation.report import method_title
    from r3rag.evaluation.runner import main_top_k

    eval_config = evaluation.config_of(config)
    report = json.loads((out / evaluation.folder / "results.json").read_text(encoding="utf-8"))
    rows = []
    for method in eval_config.methods:
        (cell,) = [
            r
            for r in report["rows"]
            if r["method"] == method and r["top_k"] == main_top_k(method, eval_config)
        ]
        rows.append(
            ResultRow(
                system=evaluation.system or f"untrained {method_title(method)}",
                method=method,
                model=evaluation.model_of(out, config),
                folder=evaluation.folder,
                questions=cell["n"],
                acc=cell["acc"],
                f1=cell["f1"],
                em=cell["em"],
                retrievals=cell["retrievals"],
            )
        )
    return rows


def artifact_paths(out: Path, config: PipelineConfig) -> dict[str, str]:
    """Where a person finds the models, reports and plots of the run."""
    paths = {"config": out / CONFIG_FILE, "world": out / "world", "index": out / "index"}
    if config.tiny_model is not None:
        paths["base model"] = out / TINY_MODEL_DIR
    paths |= {
        "cold-start data": out / "coldstart" / "sft.jsonl",
        "R3-RAG-CS model": out / "sft" / "final",
        "R3-RAG model": out / "ppo" / "final",
        "PPO curve": out / "ppo" / "curve.png",
    }
    for evaluation in EVALUATIONS:
        paths[f"{evaluation.folder} report"] = out / evaluation.folder / "results.md"
        paths[f"{evaluation.folder} plot"] = out / evaluation.folder / "accuracy_vs_steps.png"
    paths["timings"] = out / TIMINGS_FILE
    return {name: str(path) for name, path in paths.items()}


def write_results(out: Path, result: PipelineResult) -> None:
    """``results.md`` (the table, the stage times, the paths) and ``results.json`` (the same as data)."""
    data = {
        "rows": [asdict(r) for r in result.rows],
        "stages": [asdict(s) for s in result.stages],
        "total_seconds": round(sum(s.seconds for s in result.stages), 3),
        "paths": result.paths,
    }
    runs.write_text(out / RESULTS_JSON, json.dumps(data, indent=2) + "\n")
    runs.write_text(out / RESULTS_MD, render_markdown(result))


def render_markdown(result: PipelineResult) -> str:
    """The final table as markdown (rates in %), then the stage times and the paths."""
    questions = result.rows[0].questions if result.rows else 0
    lines = [
        "# R3-RAG quickstart",
        "",
        f"Dev questions of the synthetic world: {questions}. Acc, F1, EM in %; retrievals per question.",
        "",
        "| system | Acc | F1 | EM | retrievals/q |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.system} | {100 * r.acc:.1f} | {100 * r.f1:.1f} | {100 * r.em:.1f} | {r.retrievals:.2f} |"
        for r in result.rows
    ]
    lines += ["", "| stage | wall time |", "|---|---|"]
    lines += [f"| {s.title} | {_duration(s.seconds)} |" for s in result.stages]
    lines += [
        f"| total | {_duration(sum(s.seconds for s in result.stages))} |",
        "",
        "| what | where |",
        "|---|---|",
    ]
    lines += [f"| {name} | `{path}` |" for name, path in result.paths.items()]
    return "\n".join(lines) + "\n"


def print_results(console: Console, result: PipelineResult) -> None:
    """The final table (systems x Acc, F1, EM, retrievals per question), the stage times, the paths."""
    questions = result.rows[0].questions if result.rows else 0
    table = Table(title=f"R3-RAG quickstart: {questions} dev questions of the synthetic world")
    for column in ("system", "Acc", "F1", "EM", "retrievals/q"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for r in result.rows:
        table.add_row(r.system, f"{r.acc:.1%}", f"{r.f1:.1%}", f"{r.em:.1%}", f"{r.retrievals:.2f}")
    console.print(table)
    times = Table(title="stages")
    for column in ("stage", "wall time", "this run"):
        times.add_column(column, justify="left" if column == "stage" else "right")
    for s in result.stages:
        times.add_row(s.title, _duration(s.seconds), "ran" if s.ran else "skipped")
    times.add_row("total", _duration(sum(s.seconds for s in result.stages)), "")
    console.print(times)
    for name, path in result.paths.items():
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True)
