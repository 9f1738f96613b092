"""The ``r3rag`` command line: one sub-command per stage, each usable alone on files a person can open.

A stage command's flags are generated from its config (:mod:`r3rag.flags`): ``--field`` for each field,
``--section.field`` for nested ones, with one precedence rule (defaults < preset < ``--config FILE`` < flags).
Every command runs inside one error boundary: an expected failure (bad input, a folder holding another run,
a full disk) is one line naming the file, record or field, with exit status 2; set ``R3RAG_TRACEBACK=1`` to
see the traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from r3rag import __version__, runs
from r3rag.config import (
    AgentConfig,
    AgentServerConfig,
    ColdStartConfig,
    GeneratorConfig,
    IndexBuildConfig,
    PPOConfig,
    RetrieverServerConfig,
    SFTConfig,
    VerlPrepareConfig,
    ViewerConfig,
    WorldConfig,
)
from r3rag.evaluation.config import EvalConfig, EvalConfigBase
from r3rag.flags import ConfigOptions, Presets, with_config
from r3rag.pipeline_config import PipelineConfig

if TYPE_CHECKING:
    from rich.progress import Progress as ProgressBar

    from r3rag.coldstart.records import RunSummary, Teacher
    from r3rag.data.world import World
    from r3rag.llm.base import Generator
    from r3rag.retrieval.base import Retriever

# Plain (click) help: option names are never cut to the terminal's width, and help text is not rich markup.
app = typer.Typer(
    help="R3-RAG: train a language model to reason and retrieve step by step, run it, and evaluate it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Make and convert data: the synthetic world, and HotpotQA/2Wiki/MuSiQue -> FlashRAG jsonl.",
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")
index_app = typer.Typer(
    help="Build a BM25 or dense index from a corpus jsonl, and search it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(index_app, name="index")
serve_app = typer.Typer(
    help="Serve over HTTP: the retriever, for many rollout workers; the agent, for applications.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(serve_app, name="serve")
verl_app = typer.Typer(
    help="Scale out on veRL (pip install r3rag[verl]): the data and launch script of R3-RAG's PPO there.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(verl_app, name="verl")

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
_GROUP_PATHS = {
    id(app): (),
    id(data_app): ("data",),
    id(index_app): ("index",),
    id(serve_app): ("serve",),
    id(verl_app): ("verl",),
}
CONFIG_COMMANDS: dict[tuple[str, ...], ConfigOptions] = {}
"""The commands whose flags come from a config, by their words (``("data", "world")``), for the reference
docs and the test that every field is a documented flag."""


def _version(value: bool) -> None:
    if value:
        print(f"r3rag {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """R3-RAG: train a language model to reason and retrieve step by step, run it, and evaluate it."""


# ------------------------------------------------------------------------------------ the error boundary


def fail(message: str) -> typer.Exit:
    """Print a one-line error (no traceback: the message names the file and field) and exit with status 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def error_message(error: BaseException) -> str:
    """The one line an expected failure is reported with: the message, with the file an OS error names."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return str(error)


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
"""Failures a user can fix (bad input: ValueError and its kind, RecordError, pydantic's ValidationError,
UnicodeDecodeError, the settings and run-folder errors; the file system: a missing file, a full disk, a
read-only folder). Anything else is a bug, and keeps its traceback."""


def command(
    group: typer.Typer, name: str | None = None, options: ConfigOptions | None = None
) -> Callable[[F], F]:
    """Register ``function`` as a command of ``group``: with its config's flags when ``options`` is given,
    inside the error boundary."""

    def decorate(function: F) -> F:
        body = with_config(options)(function) if options is not None else function

        @functools.wraps(body)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return body(*args, **kwargs)
            except EXPECTED_ERRORS as e:
                if os.environ.get("R3RAG_TRACEBACK"):
                    raise
                raise fail(error_message(e)) from None

        guarded.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]  # for typer
        group.command(name)(guarded)
        if options is not None:
            CONFIG_COMMANDS[(*_GROUP_PATHS[id(group)], name or function.__name__)] = options
        return function

    return decorate


def existing_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    return path


def _generator(settings: GeneratorConfig, batch_size: int) -> Generator:
    """An OpenAI-compatible client when ``base_url`` is set, else the local model, batched ``batch_size``."""
    if settings.base_url is not None:
        from r3rag.llm.openai import OpenAIGenerator

        return OpenAIGenerator(
            settings.base_url,
            settings.model,
            api_key_env=settings.api_key_env,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            max_retries=settings.retries,
            backoff_s=settings.backoff_s,
        )
    from r3rag.llm.hf import HFGenerator

    return HFGenerator.from_name(
        settings.model, batch_size=batch_size, bf16=settings.bf16, device=settings.device
    )


# ------------------------------------------------------------------------------------------------ r3rag data


def _world_presets() -> Presets:
    return Presets(
        "--difficulty",
        {
            name: functools.partial(WorldConfig.difficulty_settings, name)
            for name in ("easy", "standard", "hard")
        },
        "standard",
        "Preset: easy (2-hop templated; a cold start alone solves it), standard, hard.",
    )


_WORLD_SIZES = ("people", "cities", "countries", "organisations", "works")


@command(data_app, "world", ConfigOptions(WorldConfig, presets=_world_presets()))
def data_world(
    config: WorldConfig,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for corpus.jsonl, train.jsonl, dev.jsonl, world.yaml.")
    ],
    scale: Annotated[
        float, typer.Option(min=0.0, help="Multiply the number of people, places, organisations and works.")
    ] = 1.0,
    report: Annotated[
        bool,
        typer.Option(help="Measure how often BM25 finds each gold hop's passage with the gold sub-question."),
    ] = True,
    k: Annotated[
        int, typer.Option(min=1, help="Top-k of the difficulty report (the paper's RL uses 2).")
    ] = 2,
) -> None:
    """Generate the synthetic multi-hop world: a corpus of fictional passages and train/dev questions."""
    from r3rag.data.world import generate_world, write_world

    if scale != 1.0:
        sizes = {field: round(getattr(config, field) * scale) for field in _WORLD_SIZES}
        config = WorldConfig.model_validate({**config.model_dump(), **sizes})
    with runs.locked_beside(out), console.status("generating the world"):
        world = generate_world(config)
        paths = write_world(world, out)
    stats = world.stats()
    console.print(
        f"[green]wrote[/] {stats['passages']:,} passages, {stats['train']['questions']:,} train and "
        f"{stats['dev']['questions']:,} dev questions to {out}/ ({', '.join(p.name for p in paths.values())})"
    )
    if report:
        _print_world_report(world, k)


def _print_world_report(world: World, k: int) -> None:
    from rich.table import Table

    from r3rag.config import BM25Config
    from r3rag.data.world import hop_hit_rates
    from r3rag.gold import resolve_gold_match
    from r3rag.retrieval.bm25 import BM25Retriever
    from r3rag.retrieval.store import PassageStore

    retriever = BM25Retriever.build(PassageStore(world.passages), BM25Config(), progress=False)
    examples = world.train + world.dev
    gold = resolve_gold_match("auto", {"world": examples}, retriever)
    rates = hop_hit_rates(examples, retriever.search, k=k, rule=gold.rule)
    table = Table(title=f"BM25 top-{k} with the gold sub-question: is the gold passage found?")
    for column in ("type", "questions", "hops", "hop found", "all hops found"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for qtype, rate in rates.items():
        table.add_row(
            qtype, str(rate.questions), str(rate.hops), f"{rate.hop_rate:.0%}", f"{rate.question_rate:.0%}"
        )
    console.print(table)


@command(data_app, "convert")
def data_convert(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Dataset files (HotpotQA, 2Wiki, MuSiQue, FlashRAG) or {title, text} corpus lists."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for <name>.jsonl question files and corpus.jsonl.")
    ],
    format: Annotated[
        str | None, typer.Option(help="hotpotqa, 2wiki, musique, flashrag or corpus; detected when omitted.")
    ] = None,
    corpus: Annotated[
        bool, typer.Option(help="Also write corpus.jsonl from the inputs' context paragraphs (deduplicated).")
    ] = True,
) -> None:
    """Convert datasets to FlashRAG jsonl questions, and their context paragraphs to one corpus jsonl."""
    from rich.table import Table

    from r3rag.data.convert import CORPUS_FILE, convert

    conversion = convert([existing_file(path) for path in inputs], out, format, corpus)
    table = Table(title=f"converted into {out}/")
    for column in ("input", "format", "questions", "paragraphs", "written"):
        table.add_column(column, justify="left" if column in ("input", "format", "written") else "right")
    for item in conversion.inputs:
        questions = "-" if item.questions is None else f"{item.questions:,}"
        written = item.written.name if item.written else (CORPUS_FILE if corpus else "-")
        table.add_row(item.source.name, item.format, questions, f"{item.paragraphs:,}", written)
    console.print(table)
    if conversion.corpus_passages is not None:
        console.print(
            f"[green]{CORPUS_FILE}[/]: {conversion.corpus_passages:,} passages "
            f"({conversion.duplicate_paragraphs:,} duplicates dropped)"
        )


@command(app, options=ConfigOptions(AgentConfig, extra={"generator": GeneratorConfig}))
def ask(
    config: AgentConfig,
    generator: GeneratorConfig,
    question: Annotated[str | None, typer.Argument(help="A question to answer (or use --questions).")] = None,
    index: Annotated[Path, typer.Option(help="Index folder built by `r3rag index build`.")] = Path("index"),
    questions: Annotated[
        Path | None, typer.Option(help="Question file (FlashRAG jsonl or a dataset).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="With --questions: trajectories jsonl, appended and resumed.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the trajectory as JSON instead.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="With --questions: only the first N questions.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions advanced together (one batch).")] = 16,
) -> None:
    """Answer a question (or a file of questions) step by step: reason, retrieve, repeat, answer.

    ``--config`` takes an agent.yaml, such as the one a trained model's folder carries."""
    import json

    from r3rag.agent import Agent
    from r3rag.schema import QAExample
    from r3rag.view import print_outcome, step_panel

    if (question is None) == (questions is None):
        raise fail("give either a question or --questions FILE")
    if questions is not None and (out is None or json_output):
        raise fail("--questions needs --out FILE (and prints no --json)")
    if questions is None and out is not None:
        raise fail("--out is for --questions runs")
    if not index.is_dir():
        raise fail(f"{index}: no such index folder (build one with `r3rag index build`)")
    if question is not None:
        console.print(f"[bold]Question:[/] {question}", highlight=False)
        agent = Agent(_generator(generator, batch_size), _open_index(index), config)
        show = None if json_output else (lambda trajectory, step: console.print(step_panel(step)))
        (trajectory,) = agent.run([QAExample(id="question", question=question, answers=[])], on_step=show)
        if json_output:
            print(json.dumps(trajectory.to_dict(), ensure_ascii=False, indent=2))
        else:
            print_outcome(console, trajectory)
        return
    assert questions is not None and out is not None
    with runs.locked_beside(out):
        _ask_file(config, generator, questions, out, index, limit, batch_size)


def _ask_file(
    config: AgentConfig,
    generator: GeneratorConfig,
    questions: Path,
    out: Path,
    index: Path,
    limit: int | None,
    batch_size: int,
) -> None:
    """Answer a question file into ``out``, skipping the questions already there. The file is bound to the
    model and agent settings that wrote it (``<out>.settings.yaml``): answers of another model are not
    mixed in, nor its questions taken for done. Through an endpoint each question runs on its own, and one
    ended by a model call that failed after its retries goes to ``<out>.failed.jsonl``, not ``out``: the next
    run asks it again."""
    import time
    from collections.abc import Iterator

    from r3rag.agent import Agent, failed_call
    from r3rag.data.datasets import load_dataset
    from r3rag.jsonl import JsonlAppender, read_ids
    from r3rag.llm.base import AsyncGenerator
    from r3rag.llm.models import model_identity
    from r3rag.schema import Trajectory
    from r3rag.view import status_counts

    settings = {
        "model": model_identity(generator.model, generator.base_url),
        "agent": config.model_dump(mode="json"),
    }
    runs.bind(out.parent, settings, holds_results=out.is_file(), file=f"{out.name}.settings.yaml")
    done = read_ids(out, key="example_id")
    examples = [
        example for example in load_dataset(existing_file(questions))[:limit] if example.id not in done
    ]
    if done:
        console.print(f"resuming: {len(done)} already in {out}, {len(examples)} to go", highlight=False)
    if not examples:
        console.print(f"nothing to do: every question is already in {out}", highlight=False)
        return
    llm = _generator(generator, batch_size)
    agent = Agent(llm, _open_index(index), config)

    def trajectories() -> Iterator[Trajectory]:
        if isinstance(llm, AsyncGenerator):
            yield from (t for _, t in llm.scheduler.map(examples, agent.arun, generator.in_flight()))
        else:
            for start in range(0, len(examples), batch_size):
                yield from agent.run(examples[start : start + batch_size])

    started, finished, failed = time.perf_counter(), [], 0
    failures_file = out.with_name(f"{out.name}.failed.jsonl")
    with JsonlAppender(out) as writer, JsonlAppender(failures_file) as failures, _progress(llm) as progress:
        task = progress.add_task("questions", total=len(examples))
        for trajectory in trajectories():
            error = failed_call(trajectory)
            if error is None:
                writer.write(trajectory.to_dict())
                finished.append(trajectory)
            else:
                failures.write({"example_id": trajectory.example_id, "error": error})
                failed += 1
            progress.advance(task)
    minutes = (time.perf_counter() - started) / 60
    console.print(
        f"{len(finished)} trajectories -> {out} "
        f"({status_counts(finished)}; {len(finished) / minutes:.1f}/min)",
        highlight=False,
    )
    if failed:
        console.print(
            f"{failed} questions failed on model calls after their retries ({failures_file}): run again to "
            "retry them",
            highlight=False,
        )


def _progress(generator: Generator | None) -> ProgressBar:
    """A progress bar of questions (done/total, questions/s, time left) and, when the questions go to an
    endpoint, its calls in flight, retries, failed calls and tokens used, read live from its scheduler."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from r3rag.llm.base import AsyncGenerator

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:.2f} q/s")

    columns: list[Any] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        TimeRemainingColumn(),
    ]
    if isinstance(generator, AsyncGenerator):
        stats = generator.scheduler.stats

        class Calls(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(
                    f"{stats.in_flight} in flight, {stats.retried} retried, {stats.failed} failed, "
                    f"{stats.tokens:,} tokens"
                )

        columns.append(Calls())
    return Progress(*columns, console=console, transient=True)


def _open_index(index: Path) -> Retriever:
    from r3rag.retrieval.index import load_index

    try:
        return load_index(index)
    except (OSError, ValueError) as e:
        raise fail(f"{index}: {e}") from None


# ----------------------------------------------------------------------------------------- r3rag index, serve


@command(index_app, "build", ConfigOptions(IndexBuildConfig))
def index_build(config: IndexBuildConfig) -> None:
    """Build an index folder (with manifest.json) from a corpus jsonl."""
    from r3rag.retrieval.index import build_index

    existing_file(config.corpus)
    with runs.locked_beside(config.out):
        manifest = build_index(config, progress=True)
    what = manifest.retriever if manifest.encoder is None else f"dense ({manifest.encoder.name})"
    console.print(
        f"[green]built[/] {what} index of {manifest.passages:,} passages in {manifest.build_seconds:.1f} s "
        f"-> {config.out}/ ({manifest.sizes['bytes'] / 1e6:.1f} MB)",
        highlight=False,
    )


@command(index_app, "search")
def index_search(
    index: Annotated[Path, typer.Argument(help="Index folder built by `r3rag index build`.")],
    query: Annotated[str, typer.Argument(help="The query.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Passages to show.")] = 5,
    expect_corpus: Annotated[
        Path | None, typer.Option(help="Refuse an index built from another corpus.")
    ] = None,
    expect_encoder: Annotated[
        str | None, typer.Option(help="Refuse an index built with another encoder.")
    ] = None,
) -> None:
    """Search an index and print the top-k passages."""
    from rich.table import Table

    from r3rag.retrieval.index import load_index

    (hits,) = load_index(index, expect_corpus, expect_encoder).search([query], k)
    table = Table(title=f"top {k} for {query!r} in {index}", show_lines=True)
    for column, justify in (
        ("#", "right"),
        ("score", "right"),
        ("id", "left"),
        ("title", "left"),
        ("text", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]  # str, not rich's Literal
    for rank, passage in enumerate(hits, start=1):
        text = passage.text if len(passage.text) <= 300 else passage.text[:300] + "..."
        table.add_row(str(rank), f"{passage.score:.4f}", passage.id, passage.title, text)
    Console().print(table)
    if not hits:
        console.print("no passage matches the query", highlight=False)


@command(serve_app, "retriever", ConfigOptions(RetrieverServerConfig))
def serve_retriever(
    config: RetrieverServerConfig,
    index: Annotated[Path, typer.Argument(help="Index folder built by `r3rag index build`.")],
    expect_corpus: Annotated[
        Path | None, typer.Option(help="Refuse an index built from another corpus.")
    ] = None,
    expect_encoder: Annotated[
        str | None, typer.Option(help="Refuse an index built with another encoder.")
    ] = None,
    n_threads: Annotated[int, typer.Option(min=0, help="BM25: threads per batched search.")] = 0,
    device: Annotated[str | None, typer.Option(help="Dense: device for the query encoder.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve an index: POST /search {queries, k}, GET /health, GET /stats."""
    from r3rag.retrieval.server import serve

    serve(
        index,
        config,
        expect_corpus=expect_corpus,
        expect_encoder=expect_encoder,
        n_threads=n_threads,
        device=device,
        log_level=log_level,
    )


@command(serve_app, "agent", ConfigOptions(AgentServerConfig))
def serve_agent(
    config: AgentServerConfig,
    retrieval: Annotated[
        str,
        typer.Argument(help="Index folder built by `r3rag index build`, or a `r3rag serve retriever` URL."),
    ],
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the agent: POST /v1/ask {question, max_steps?, top_k?}, POST /v1/ask/stream (server-sent
    events), GET /health, GET /stats, /docs.

    ``--agent.*`` sets the loop (the defaults of the requests' step budget and top-k), ``--generator.*`` the
    model, local or OpenAI-compatible."""
    from r3rag.config import RetrievalConfig
    from r3rag.retrieval import open_retriever
    from r3rag.serving.agent_api import serve

    remote = retrieval.startswith(("http://", "https://"))
    if not remote and not Path(retrieval).is_dir():
        raise fail(f"{retrieval}: no such index folder (build one with `r3rag index build`, or give a URL)")
    generator = config.generator
    describe = {
        "model": generator.model if generator.base_url else Path(generator.model).name,
        "backend": "openai-compatible" if generator.base_url else "local",
        "retriever": "server" if remote else "index " + Path(retrieval).name,
    }
    serve(
        _generator(generator, config.max_batch_rows),
        open_retriever(RetrievalConfig(source=retrieval)),
        config,
        describe,
        log_level,
    )


@command(app, "view", ConfigOptions(ViewerConfig))
def view(
    config: ViewerConfig,
    run: Annotated[Path, typer.Argument(help="A run folder: a quickstart's, or one stage's output folder.")],
) -> None:
    """A local web page over a run folder: trajectories of evaluations, PPO rollouts and the cold start,
    filtered, opened step by step, two side by side; the run's plots; an ask tab (needs `r3rag[view]`)."""
    from r3rag.serving.viewer import launch

    if not run.is_dir():
        raise fail(f"{run}: no such run folder")
    local = config.index is not None and config.agent_url is None
    launch(run, config, _generator(config.generator, 1) if local else None)


# ------------------------------------------------------------------------------------------------ r3rag eval


@command(
    app, "eval", ConfigOptions(EvalConfig, extra={"generator": GeneratorConfig}, short={"methods": "-m"})
)
def eval_command(
    config: EvalConfigBase,
    generator: GeneratorConfig,
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            help="Question file, or NAME=FILE; repeat for more. Files with one NAME form one table column.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder: predictions, manifest, report (resumed).")] = Path(
        "runs/eval"
    ),
    index: Annotated[
        str | None, typer.Option(help="Index folder (`r3rag index build`) or retrieval server URL.")
    ] = None,
    corpus_from_datasets: Annotated[
        bool,
        typer.Option(
            help="Build a BM25 index from the question files' own context paragraphs (distractor setting)."
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions of each file.")] = None,
) -> None:
    """Evaluate R3-RAG and the baselines on question files: Table 1, step-budget and top-k curves.

    Each method's own settings are its section's flags (--ircot.max-passages, --r3rag.format-retries, ...);
    --model and --base-url name the model, as for `r3rag ask`."""
    from r3rag.evaluation.methods.registry import retrieving
    from r3rag.evaluation.run import open_run, run_and_report
    from r3rag.evaluation.runner import Progress, build_context_index, load_datasets
    from r3rag.llm.base import AsyncGenerator
    from r3rag.llm.models import describe_model

    datasets = load_datasets(dataset, limit)
    if corpus_from_datasets and index is not None:
        raise fail("give --index or --corpus-from-datasets, not both")
    if corpus_from_datasets:
        with console.status("building the BM25 index of the datasets' context paragraphs"):
            index = str(build_context_index([f for d in datasets for f in d.files], out / "context-corpus"))
    if index is None and retrieving(config.methods):
        raise fail("the retrieving methods need --index (a folder or URL) or --corpus-from-datasets")
    model = describe_model(generator.model, generator.base_url)
    manifest, retriever = open_run(config, datasets, model, index, out)
    llm = _generator(generator, config.batch_size)

    def show(progress: Progress) -> None:
        k = "" if progress.top_k is None else f" (top-{progress.top_k})"
        failed = f"; {progress.failed} failed, to rerun" if progress.failed else ""
        calls = ""
        if isinstance(llm, AsyncGenerator):
            stats = llm.scheduler.stats
            calls = (
                f"; endpoint: {stats.in_flight} in flight, {stats.retried} retried, {stats.failed} failed, "
                f"{stats.tokens:,} tokens"
            )
        console.print(
            f"{progress.method}{k}: {progress.done}/{progress.total} questions "
            f"(last chunk {progress.seconds:.0f} s{failed}{calls})",
            highlight=False,
        )

    _print_report(run_and_report(config, llm, retriever, manifest, datasets, out, on_progress=show))


def _print_report(paths: dict[str, Path]) -> None:
    text = paths["markdown"].read_text(encoding="utf-8")
    table = text.split("## Table 1", 1)[1].split("\n## ", 1)[0] if "## Table 1" in text else ""
    print("## Table 1" + table.rstrip() if table else text)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)


# ------------------------------------------------------------------------------------- r3rag coldstart, sft


@command(app, options=ConfigOptions(ColdStartConfig, extra={"generator": GeneratorConfig}))
def coldstart(
    config: ColdStartConfig,
    generator: GeneratorConfig,
    questions: Annotated[
        list[Path], typer.Option(help="Question file (FlashRAG jsonl or a dataset); repeat for more.")
    ],
    index: Annotated[str, typer.Option(help="Index folder (`r3rag index build`) or retrieval server URL.")],
    out: Annotated[
        Path, typer.Option(help="Folder: coldstart.yaml, trajectories.jsonl, sft.jsonl, stats.json.")
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions of each file.")] = None,
) -> None:
    """Build cold-start data: teacher trajectories (resumable), then the SFT examples and statistics.

    The teacher is the oracle (gold decompositions, offline) or an LLM (--teacher llm; --model and
    --base-url name it, as for `r3rag ask`)."""
    from r3rag.coldstart.build import SFT_FILE, STATS_FILE, TRAJECTORIES_FILE, build
    from r3rag.config import RetrievalConfig
    from r3rag.data.datasets import load_question_files
    from r3rag.gold import resolve_gold_match
    from r3rag.retrieval import open_retriever

    sources = load_question_files([existing_file(path) for path in questions], limit)
    examples = [example for file_examples in sources.values() for example in file_examples]
    retriever = open_retriever(RetrievalConfig(source=index))
    chosen: Teacher
    llm: Generator | None = None
    if config.teacher == "oracle":
        from r3rag.coldstart.oracle import OracleTeacher

        gold = resolve_gold_match(config.judge.reference_match, sources, retriever)  # how it finds each hop
        console.print(f"oracle: {gold.describe()}", highlight=False)
        chosen = OracleTeacher(retriever, config, gold)
    else:
        from r3rag.coldstart.teacher import LLMTeacher
        from r3rag.rewards.judges import CorrectnessJudge

        gold = None
        llm = _generator(generator, config.batch_size)
        judge_generator = llm if config.judge.correctness_llm else None
        chosen = LLMTeacher(
            llm,
            retriever,
            config,
            CorrectnessJudge(config.judge, judge_generator),
            f"llm:{generator.model}",
            questions_in_flight=generator.in_flight(),
        )
    with _progress(llm) as progress:
        task = progress.add_task(f"{config.teacher} teacher", total=len(examples))
        summary, stats = build(
            config, chosen, examples, out, on_result=lambda _: progress.advance(task), gold=gold, index=index
        )
    _print_coldstart(summary, stats)
    console.print(
        f"wrote {out / TRAJECTORIES_FILE}, {out / SFT_FILE} ({stats['sft_examples']:,} examples), "
        f"{out / STATS_FILE}",
        highlight=False,
    )


def _print_coldstart(summary: RunSummary, stats: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(
        f"{summary.written} questions done this run ({summary.kept} kept), {summary.skipped} already done",
        highlight=False,
    )
    if summary.retried or summary.failed:
        console.print(
            f"{summary.retried} questions retried after an earlier failure; {summary.failed} failed on model "
            "calls after their retries (listed in trajectories.failed.jsonl): run again to retry them",
            highlight=False,
        )
    table = Table(title="cold-start trajectories kept")
    for column in ("dataset/type", "kept", "attempted", "yield"):
        table.add_column(column, justify="left" if column == "dataset/type" else "right")
    for group, row in stats["per_group"].items():
        table.add_row(group, str(row["kept"]), str(row["attempted"]), f"{row['yield']:.0%}")
    console.print(table)
    steps = stats["steps_per_trajectory"]
    console.print(
        f"steps per trajectory {steps['mean']:.2f} {steps['histogram']}; documents per retrieval step "
        f"{stats['documents_per_retrieval_step']:.2f}; rejections {stats['rejections']}",
        highlight=False,
    )


@command(app, options=ConfigOptions(SFTConfig))
def sft(config: SFTConfig) -> None:
    """Fine-tune a causal LM on cold-start step examples (R3-RAG-CS); resumes from its last checkpoint.

    On several GPUs: `torchrun --nproc-per-node N -m r3rag sft ...` (data parallel; add --fsdp to shard a
    full fine-tune that does not fit one GPU).
    """
    from r3rag.coldstart.sft import train
    from r3rag.parallel import main_process

    existing_file(config.data)
    result = train(config)
    if not main_process():
        return
    eval_loss = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"
    gpu = "" if result.peak_gpu_bytes is None else f", peak GPU {result.peak_gpu_bytes / 2**30:.1f} GiB"
    console.print(
        f"[green]trained[/] {result.steps} steps ({result.train_examples:,} examples, "
        f"{result.train_tokens:,} tokens) in {result.wall_seconds / 60:.1f} min: train loss "
        f"{result.last_loss:.4f}, eval loss {eval_loss}, peak RSS {result.peak_rss_bytes / 2**30:.1f} GiB"
        f"{gpu} -> {result.final}",
        highlight=False,
    )


# ------------------------------------------------------------------------------------------------ r3rag train


def _ppo_presets() -> Presets:
    return Presets(
        "--preset",
        {"paper": dict, "small": PPOConfig.small_model_settings},
        "paper",
        "paper (the official hyperparameters) or small (a ~100M model on a CPU).",
    )


@command(app, "train", ConfigOptions(PPOConfig, presets=_ppo_presets()))
def train_command(config: PPOConfig) -> None:
    """PPO with the hybrid reward: train R3-RAG-CS into R3-RAG. Run the same command again to resume."""
    from r3rag.rl.ppo import PPOTrainer

    records = PPOTrainer.from_config(config).train()
    dev_points = [(r["iteration"], r["dev/accuracy"]) for r in records if r.get("dev/accuracy") is not None]
    summary = ""
    if len(dev_points) >= 2:
        (first, before), (last, after) = dev_points[0], dev_points[-1]
        summary = f"; dev accuracy {before:.1%} (iteration {first}) -> {after:.1%} (iteration {last})"
    console.print(
        f"[green]trained[/] {records[-1]['iteration'] if records else 0} iterations{summary} -> "
        f"{config.out}/final (curve: {config.out}/curve.png)",
        highlight=False,
    )


# ------------------------------------------------------------------------------------------- r3rag quickstart


@command(verl_app, "prepare", ConfigOptions(VerlPrepareConfig))
def verl_prepare(config: VerlPrepareConfig) -> None:
    """veRL's parquet files and the launch script of R3-RAG's PPO on veRL (docs/verl.md)."""
    try:
        from r3rag.integrations.verl.prepare import prepare
    except ImportError as error:
        raise fail(f"{error}: r3rag verl prepare needs the veRL extra (pip install 'r3rag[verl]')") from None
    existing_file(config.train)
    if config.dev is not None:
        existing_file(config.dev)
    prepared = prepare(config)
    files = [prepared.train, *([prepared.dev] if prepared.dev else []), prepared.script]
    console.print(f"[green]wrote[/] {', '.join(str(f) for f in files)} ({len(prepared.overrides)} overrides)")
    console.print(f"run it where veRL, vLLM and the GPUs are: bash {prepared.script}", highlight=False)


def _quickstart_presets() -> Presets:

    return Presets(
        "--preset",
        {name: functools.partial(_preset_values, name) for name in ("small", "tiny")},
        "small",
        "small (embedded SmolLM2, ~17 min on 2 cores) or tiny (a random model, ~1 min).",
    )


def _preset_values(name: Literal["small", "tiny"]) -> dict[str, Any]:
    return PipelineConfig.preset(name).model_dump()


@command(app, options=ConfigOptions(PipelineConfig, presets=_quickstart_presets()))
def quickstart(
    config: PipelineConfig,
    out: Annotated[
        Path, typer.Option(help="Folder of the whole run; run the same command again to resume it.")
    ] = Path("runs/quickstart"),
) -> None:
    """The whole R3-RAG pipeline on the embedded default: world, index, cold start, SFT, PPO, evaluation."""
    from r3rag.pipeline import print_results, run_pipeline

    result = run_pipeline(config, out, console)
    print_results(Console(), result)
