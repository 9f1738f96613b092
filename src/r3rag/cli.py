"""The ``r3rag`` command line: one sub-command per stage, each usable alone on files a person can open."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from r3rag import __version__

if TYPE_CHECKING:
    from r3rag.data.world import World

app = typer.Typer(
    help="R3-RAG: train a language model to reason and retrieve step by step, run it, and evaluate it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(
    help="Make and convert data: the synthetic world, and HotpotQA/2Wiki/MuSiQue -> FlashRAG jsonl."
)
app.add_typer(data_app, name="data")

console = Console(stderr=True)


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


def fail(message: str) -> typer.Exit:
    """Print a one-line error (no traceback: the message names the file and field) and exit with status 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def existing_file(path: Path) -> Path:
    if not path.is_file():
        raise fail(f"{path}: no such file")
    return path


# ------------------------------------------------------------------------------------------------ r3rag data


@data_app.command("world")
def data_world(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for corpus.jsonl, train.jsonl, dev.jsonl, world.yaml.")
    ],
    difficulty: Annotated[
        str,
        typer.Option(help="Preset: easy (2-hop templated; a cold start alone solves it), standard, hard."),
    ] = "standard",
    seed: Annotated[int, typer.Option(help="Everything in the world follows from the seed.")] = 0,
    train_questions: Annotated[int | None, typer.Option(help="Train questions (default 1000).")] = None,
    dev_questions: Annotated[int | None, typer.Option(help="Dev questions (default 200).")] = None,
    scale: Annotated[
        float, typer.Option(help="Multiply the number of people, places, organisations and works.")
    ] = 1.0,
    config: Annotated[
        Path | None,
        typer.Option(help="A world.yaml with any WorldConfig field; flags given here override it."),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(help="Measure how often BM25 finds each gold hop's passage with the gold sub-question."),
    ] = True,
    k: Annotated[int, typer.Option(help="Top-k of the difficulty report (the paper's RL uses 2).")] = 2,
) -> None:
    """Generate the synthetic multi-hop world: a corpus of fictional passages and train/dev questions."""
    from pydantic import ValidationError

    from r3rag.config import WorldConfig
    from r3rag.data.world import generate_world, write_world

    try:
        base = WorldConfig.from_yaml(existing_file(config)).model_dump() if config else {}
        if difficulty not in ("easy", "standard", "hard"):
            raise fail(f"--difficulty must be easy, standard or hard, not {difficulty!r}")
        overrides = {"seed": seed, "train_questions": train_questions, "dev_questions": dev_questions}
        sizes = ("people", "cities", "countries", "organisations", "works")
        overrides |= {f: round((base.get(f) or WorldConfig.model_fields[f].default) * scale) for f in sizes}
        world_config = WorldConfig.for_difficulty(
            difficulty,
            **(base | {key: v for key, v in overrides.items() if v is not None}),  # type: ignore[arg-type]
        )
    except (ValidationError, ValueError) as e:
        raise fail(str(e)) from None
    with console.status("generating the world"):
        world = generate_world(world_config)
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
    from r3rag.retrieval.bm25 import BM25Retriever
    from r3rag.retrieval.store import PassageStore

    retriever = BM25Retriever.build(PassageStore(world.passages), BM25Config(), progress=False)
    rates = hop_hit_rates(world.train + world.dev, retriever.search, k=k)
    table = Table(title=f"BM25 top-{k} with the gold sub-question: is the gold passage found?")
    for column in ("type", "questions", "hops", "hop found", "all hops found"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for qtype, rate in rates.items():
        table.add_row(
            qtype, str(rate.questions), str(rate.hops), f"{rate.hop_rate:.0%}", f"{rate.question_rate:.0%}"
        )
    console.print(table)


@data_app.command("convert")
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

    from r3rag.data.corpus import dedupe_passages, read_title_text_json, write_corpus
    from r3rag.data.datasets import CORPUS_FORMAT, FORMATS, detect_format, iter_dataset, write_flashrag
    from r3rag.jsonl import RecordError
    from r3rag.schema import Passage

    if format is not None and format not in (*FORMATS, CORPUS_FORMAT):
        raise fail(f"--format must be one of {', '.join((*FORMATS, CORPUS_FORMAT))}, not {format!r}")
    table = Table(title=f"converted into {out}/")
    for column in ("input", "format", "questions", "paragraphs", "written"):
        table.add_column(column, justify="left" if column in ("input", "format", "written") else "right")
    paragraphs: list[Passage] = []
    try:
        for path in inputs:
            fmt = format or detect_format(existing_file(path))
            if fmt == CORPUS_FORMAT:
                found = list(read_title_text_json(path))
                paragraphs += found
                table.add_row(path.name, fmt, "-", f"{len(found):,}", "corpus.jsonl" if corpus else "-")
                continue
            examples, before = [], len(paragraphs)
            for example, contexts in iter_dataset(path, fmt):
                examples.append(example)
                paragraphs += contexts
            target = out / f"{path.name.removesuffix('.jsonl').removesuffix('.json')}.jsonl"
            write_flashrag(target, examples)
            table.add_row(path.name, fmt, f"{len(examples):,}", f"{len(paragraphs) - before:,}", target.name)
    except RecordError as e:
        raise fail(str(e)) from None
    console.print(table)
    if corpus and paragraphs:
        written = write_corpus(out / "corpus.jsonl", dedupe_passages(paragraphs))
        console.print(
            f"[green]corpus.jsonl[/]: {written:,} passages ({len(paragraphs) - written:,} duplicates dropped)"
        )


@app.command()
def ask(
    question: Annotated[str | None, typer.Argument(help="A question to answer (or use --questions).")] = None,
    index: Annotated[Path, typer.Option(help="Index folder built by `r3rag index build`.")] = Path("index"),
    model: Annotated[
        str, typer.Option(help="smollm2-135m-instruct (embedded), a model folder, a .gguf, or a hub id.")
    ] = "smollm2-135m-instruct",
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
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible server (e.g. http://localhost:8000/v1); --model names it."),
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key.")
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel requests to the server.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request to the server.")] = 120.0,
    bf16: Annotated[
        bool, typer.Option(help="Local model: bf16 autocast for batched forward passes (faster on CPU).")
    ] = False,
    max_steps: Annotated[int, typer.Option(min=1)] = 5,
    top_k: Annotated[int, typer.Option(min=1, help="Passages per retrieval.")] = 5,
    max_doc_chars: Annotated[int | None, typer.Option(min=1, help="Cut each step's documents.")] = None,
    dedup: Annotated[bool, typer.Option(help="Skip passages already seen in the trajectory.")] = True,
    max_format_retries: Annotated[int, typer.Option(min=0)] = 3,
    force_answer: Annotated[
        bool, typer.Option(help="Ask for a final answer when the steps run out.")
    ] = False,
    system_prompt: Annotated[str | None, typer.Option(help="System turn (default: the paper's).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per step.")] = 512,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Answer a question (or a file of questions) step by step: reason, retrieve, repeat, answer."""
    import json
    import time

    from r3rag.agent import Agent
    from r3rag.config import AgentConfig
    from r3rag.view import print_outcome, status_counts, step_panel

    if (question is None) == (questions is None):
        raise fail("give either a question or --questions FILE")
    if questions is not None and (out is None or json_output):
        raise fail("--questions needs --out FILE (and prints no --json)")
    if questions is None and out is not None:
        raise fail("--out is for --questions runs")
    if not index.is_dir():
        raise fail(f"{index}: no such index folder (build one with `r3rag index build`)")
    config = AgentConfig(
        max_steps=max_steps,
        top_k=top_k,
        max_doc_chars=max_doc_chars,
        dedup_passages=dedup,
        max_format_retries=max_format_retries,
        force_answer=force_answer,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        **({} if system_prompt is None else {"system_prompt": system_prompt}),
    )
    examples = _ask_examples(question, questions, out, limit)
    if not examples:
        console.print(f"nothing to do: every question is already in {out}", highlight=False)
        return
    agent = Agent(
        _ask_generator(model, base_url, api_key_env, concurrency, timeout, batch_size, bf16),
        _ask_retriever(index),
        config,
    )

    if question is not None:
        console.print(f"[bold]Question:[/] {question}", highlight=False)
        show = None if json_output else (lambda trajectory, step: console.print(step_panel(step)))
        (trajectory,) = agent.run(examples, on_step=show)
        if json_output:
            print(json.dumps(trajectory.to_dict(), ensure_ascii=False, indent=2))
        else:
            print_outcome(console, trajectory)
        return

    from rich.progress import Progress

    from r3rag.jsonl import JsonlAppender

    assert out is not None
    started, finished = time.perf_counter(), []
    with JsonlAppender(out) as writer, Progress(console=console, transient=True) as progress:
        task = progress.add_task("questions", total=len(examples))
        for start in range(0, len(examples), batch_size):
            for trajectory in agent.run(examples[start : start + batch_size]):
                writer.write(trajectory.to_dict())
                finished.append(trajectory)
            progress.advance(task, len(examples[start : start + batch_size]))
    minutes = (time.perf_counter() - started) / 60
    console.print(
        f"{len(finished)} trajectories -> {out} "
        f"({status_counts(finished)}; {len(finished) / minutes:.1f}/min)",
        highlight=False,
    )


def _ask_examples(question: str | None, questions: Path | None, out: Path | None, limit: int | None) -> list:
    """The examples still to run: the one question, or the file's questions minus those already in --out."""
    from r3rag.data.datasets import load_dataset
    from r3rag.jsonl import RecordError, read_ids
    from r3rag.schema import QAExample

    if question is not None:
        return [QAExample(id="question", question=question, answers=[])]
    assert questions is not None and out is not None
    try:
        examples = load_dataset(existing_file(questions))[:limit]
        done = read_ids(out, key="example_id")
    except (RecordError, ValueError) as e:
        raise fail(str(e)) from None
    todo, seen = [], set(done)
    for example in examples:
        if example.id not in seen:
            seen.add(example.id)
            todo.append(example)
    if done:
        console.print(f"resuming: {len(done)} already in {out}, {len(todo)} to go", highlight=False)
    return todo


def _ask_generator(
    model: str,
    base_url: str | None,
    api_key_env: str,
    concurrency: int,
    timeout: float,
    batch_size: int,
    bf16: bool,
):
    """An OpenAI-compatible client when --base-url is given, else the local model ``model``."""
    if base_url is not None:
        from r3rag.llm.openai import OpenAIGenerator

        return OpenAIGenerator(
            base_url, model, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout
        )
    from r3rag.llm.hf import HFGenerator

    try:
        return HFGenerator.from_name(model, batch_size=batch_size, bf16=bf16)
    except FileNotFoundError as e:
        raise fail(str(e)) from None


def _ask_retriever(index: Path):
    from r3rag.retrieval.index import load_index

    try:
        return load_index(index)
    except (OSError, ValueError) as e:
        raise fail(f"{index}: {e}") from None


# ----------------------------------------------------------------------------------------- r3rag index, serve

index_app = typer.Typer(
    help="Build a BM25 or dense index from a corpus jsonl, and search it.", no_args_is_help=True
)
app.add_typer(index_app, name="index")
serve_app = typer.Typer(
    help="Serve over HTTP: the retriever, for many rollout workers.", no_args_is_help=True
)
app.add_typer(serve_app, name="serve")


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option(help="Corpus jsonl: FlashRAG {id, contents} or {id, title, text}.")],
    out: Annotated[Path, typer.Option(help="Index folder to write (an existing index there is replaced).")],
    retriever: Annotated[str, typer.Option(help="bm25 or dense.")] = "bm25",
    encoder: Annotated[
        str,
        typer.Option(
            help="Dense: preset (minilm = embedded all-MiniLM-L6-v2, e5, bge) or a model path/hub name."
        ),
    ] = "minilm",
    conventions: Annotated[
        str, typer.Option(help="Dense: auto (from the preset or the model name), plain, e5 or bge.")
    ] = "auto",
    query_prefix: Annotated[
        str | None, typer.Option(help="Dense: override the conventions' query prefix.")
    ] = None,
    passage_prefix: Annotated[str | None, typer.Option(help="Dense: override the passage prefix.")] = None,
    pooling: Annotated[str | None, typer.Option(help="Dense: override pooling: model, mean or cls.")] = None,
    index_type: Annotated[str, typer.Option("--index", help="Dense: flat (exact) or hnsw.")] = "flat",
    batch_size: Annotated[int, typer.Option(help="Dense: passages per forward pass.")] = 64,
    bf16: Annotated[
        bool, typer.Option(help="Dense: bfloat16 autocast (about 3x faster on AVX-512 BF16 CPUs).")
    ] = True,
    device: Annotated[str, typer.Option(help="Dense: torch device.")] = "cpu",
    stemmer: Annotated[str, typer.Option(help="BM25: PyStemmer algorithm, or 'none'.")] = "english",
    stopwords: Annotated[str, typer.Option(help="BM25: en, en_plus or none.")] = "en",
    k1: Annotated[float, typer.Option(help="BM25 k1.")] = 1.5,
    b: Annotated[float, typer.Option(help="BM25 b.")] = 0.75,
) -> None:
    """Build an index folder (with manifest.json) from a corpus jsonl."""
    from pydantic import ValidationError

    from r3rag.config import IndexBuildConfig
    from r3rag.jsonl import RecordError
    from r3rag.retrieval.index import build_index

    existing_file(corpus)
    try:
        config = IndexBuildConfig(
            corpus=corpus,
            out=out,
            retriever=retriever,  # type: ignore[arg-type]
            bm25={
                "stemmer": None if stemmer == "none" else stemmer,
                "stopwords": stopwords,
                "k1": k1,
                "b": b,
            },
            dense={
                "index": index_type,
                "encoder": {
                    "model": encoder,
                    "conventions": conventions,
                    "query_prefix": query_prefix,
                    "passage_prefix": passage_prefix,
                    "pooling": pooling,
                    "batch_size": batch_size,
                    "bf16": bf16,
                    "device": device,
                },
            },
        )
        manifest = build_index(config, progress=True)
    except (ValidationError, RecordError, OSError, ValueError) as e:
        raise fail(str(e)) from None
    what = manifest.retriever if manifest.encoder is None else f"dense ({manifest.encoder.name})"
    console.print(
        f"[green]built[/] {what} index of {manifest.passages:,} passages in {manifest.build_seconds:.1f} s "
        f"-> {out}/ ({manifest.sizes['bytes'] / 1e6:.1f} MB)",
        highlight=False,
    )


@index_app.command("search")
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
    from rich.console import Console
    from rich.table import Table

    from r3rag.retrieval.index import load_index

    try:
        (hits,) = load_index(index, expect_corpus, expect_encoder).search([query], k)
    except (OSError, ValueError) as e:
        raise fail(str(e)) from None
    table = Table(title=f"top {k} for {query!r} in {index}", show_lines=True)
    for column, justify in (
        ("#", "right"),
        ("score", "right"),
        ("id", "left"),
        ("title", "left"),
        ("text", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for rank, passage in enumerate(hits, start=1):
        text = passage.text if len(passage.text) <= 300 else passage.text[:300] + "..."
        table.add_row(str(rank), f"{passage.score:.4f}", passage.id, passage.title, text)
    Console().print(table)
    if not hits:
        console.print("no passage matches the query", highlight=False)


@serve_app.command("retriever")
def serve_retriever(
    index: Annotated[Path, typer.Argument(help="Index folder built by `r3rag index build`.")],
    host: Annotated[
        str, typer.Option(help="Interface to listen on (loopback: the server has no authentication).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (8001 as in the paper's code).")] = 8001,
    expect_corpus: Annotated[
        Path | None, typer.Option(help="Refuse an index built from another corpus.")
    ] = None,
    expect_encoder: Annotated[
        str | None, typer.Option(help="Refuse an index built with another encoder.")
    ] = None,
    n_threads: Annotated[int, typer.Option(min=0, help="BM25: threads per batched search.")] = 0,
    device: Annotated[str | None, typer.Option(help="Dense: device for the query encoder.")] = None,
    max_queries: Annotated[int, typer.Option(help="Queries per request.")] = 256,
    max_k: Annotated[int, typer.Option(help="Largest k a request may ask for.")] = 100,
    max_query_chars: Annotated[int, typer.Option(help="Longest query in characters.")] = 2000,
    max_batch_queries: Annotated[
        int, typer.Option(help="Queries of concurrent requests searched together.")
    ] = 512,
    batch_wait_ms: Annotated[
        float, typer.Option(help="Extra wait for concurrent requests before a search.")
    ] = 0.0,
    cache_size: Annotated[int, typer.Option(help="LRU cache entries; 0 disables it.")] = 100_000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve an index: POST /search {queries, k}, GET /health, GET /stats."""
    from pydantic import ValidationError

    from r3rag.config import RetrieverServerConfig
    from r3rag.retrieval.server import serve

    try:
        config = RetrieverServerConfig(
            host=host,
            port=port,
            max_queries=max_queries,
            max_k=max_k,
            max_query_chars=max_query_chars,
            max_batch_queries=max_batch_queries,
            batch_wait_ms=batch_wait_ms,
            cache_size=cache_size,
        )
        serve(
            index,
            config,
            expect_corpus=expect_corpus,
            expect_encoder=expect_encoder,
            n_threads=n_threads,
            device=device,
            log_level=log_level,
        )
    except (ValidationError, OSError, ValueError) as e:
        raise fail(str(e)) from None
