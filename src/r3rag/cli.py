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
        try:
            world = generate_world(world_config)
        except ValueError as e:  # more questions than the world can make, or names run out
            raise fail(str(e)) from None
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
        str, typer.Option(help="Interface to listen on (loopback by default; any other logs a warning).")
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
    cache_max_bytes: Annotated[int, typer.Option(help="LRU cache bytes; 0 disables it.")] = 256 << 20,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(help="Host header name to answer besides loopback and --host (repeat; '*': any)."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable with an API key every request must send as a Bearer token."),
    ] = None,
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
            cache_max_bytes=cache_max_bytes,
            allowed_hosts=allowed_hosts or [],
            api_key_env=api_key_env,
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


# ------------------------------------------------------------------------------------------------ r3rag eval


@app.command("eval")
def eval_command(
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
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "-m",
            help="cot, rag-cot, react, self-ask, iter-retgen, ircot, flare, r3rag (default all).",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="smollm2-135m-instruct (embedded), a model folder, a .gguf, or a hub id.")
    ] = "smollm2-135m-instruct",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server for the model (e.g. http://host:8000/v1).")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key.")
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel requests to the server.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request to the server.")] = 120.0,
    bf16: Annotated[
        bool, typer.Option(help="Local model: bf16 autocast for batched forward passes.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="An EvalConfig YAML; flags given here override it.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Step budget of every iterative method (5).")
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Passages per retrieval (5).")] = None,
    rag_top_k: Annotated[int | None, typer.Option(min=1, help="Passages of RAG with CoT (16).")] = None,
    top_k_sweep: Annotated[
        str | None, typer.Option(help="More top-k values to run, comma-separated (e.g. 1,3,10).")
    ] = None,
    sweep_method: Annotated[
        list[str] | None, typer.Option(help="Methods the sweep runs (default: every retrieving method).")
    ] = None,
    max_new_tokens: Annotated[
        list[str] | None, typer.Option(help="Tokens per call: N for every method, or METHOD=N; repeatable.")
    ] = None,
    r3rag_format_retries: Annotated[
        int | None, typer.Option(min=0, help="Re-generations of a malformed R3-RAG step (0).")
    ] = None,
    r3rag_max_doc_chars: Annotated[
        int | None, typer.Option(min=1, help="Cut each R3-RAG step's documents (none).")
    ] = None,
    passage_chars: Annotated[
        int | None, typer.Option(min=1, help="Cut every retrieved passage to N characters (no cut).")
    ] = None,
    ircot_max_passages: Annotated[int | None, typer.Option(min=1, help="IRCoT's document cap (15).")] = None,
    flare_threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="FLARE retrieves below this token probability (0.4)."),
    ] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="0 = greedy (default).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (0).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Questions advanced together (32).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions of each file.")] = None,
    judge_endpoint: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible server of an LLM correctness judge (off by default)."),
    ] = None,
    judge_model: Annotated[
        str | None,
        typer.Option(help="Judge model at --judge-endpoint (paper evaluation: Qwen2.5-72B-Instruct)."),
    ] = None,
    judge_api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable of the judge's key.")
    ] = None,
    judge_match: Annotated[
        str | None, typer.Option(help="Match tried before the judge: em or cover_em.")
    ] = None,
) -> None:
    """Evaluate R3-RAG and the baselines on question files: Table 1, step-budget and top-k curves."""
    from pydantic import ValidationError

    from r3rag.config import EvalConfig
    from r3rag.evaluation.manifest import describe_model
    from r3rag.evaluation.run import open_run, run_and_report
    from r3rag.evaluation.runner import NO_RETRIEVAL, Progress, build_context_index, load_datasets
    from r3rag.jsonl import RecordError

    flags = {
        "methods": None if not method or method == ["all"] else _methods(method, "--method"),
        "max_steps": max_steps,
        "top_k": top_k,
        "rag_top_k": rag_top_k,
        "top_k_sweep": _int_list(top_k_sweep, "--top-k-sweep"),
        "sweep_methods": None if sweep_method is None else _methods(sweep_method, "--sweep-method"),
        "max_new_tokens": _token_budgets(max_new_tokens),
        "r3rag_format_retries": r3rag_format_retries,
        "r3rag_max_doc_chars": r3rag_max_doc_chars,
        "passage_chars": passage_chars,
        "ircot_max_passages": ircot_max_passages,
        "flare_threshold": flare_threshold,
        "temperature": temperature,
        "seed": seed,
        "batch_size": batch_size,
    }
    judge_flags = {
        "correctness_llm": True if judge_endpoint else None,
        "endpoint": judge_endpoint,
        "model": judge_model,
        "api_key_env": judge_api_key_env,
        "correctness_match": judge_match,
    }
    try:
        base = (EvalConfig.from_yaml(existing_file(config)) if config else EvalConfig()).model_dump()
        given = {k: v for k, v in flags.items() if v is not None}
        given["max_new_tokens"] = base["max_new_tokens"] | given.get("max_new_tokens", {})
        given["judge"] = base["judge"] | {k: v for k, v in judge_flags.items() if v is not None}
        eval_config = EvalConfig.model_validate(base | given)
        datasets = load_datasets(dataset, limit)
    except (ValidationError, ValueError, FileNotFoundError, RecordError) as e:
        raise fail(str(e)) from None

    retrieving = any(m not in NO_RETRIEVAL for m in eval_config.methods)
    if corpus_from_datasets and index is not None:
        raise fail("give --index or --corpus-from-datasets, not both")
    try:
        if corpus_from_datasets:
            with console.status("building the BM25 index of the datasets' context paragraphs"):
                index = str(
                    build_context_index([f for d in datasets for f in d.files], out / "context-corpus")
                )
        if index is None and retrieving:
            raise fail("the retrieving methods need --index (a folder or URL) or --corpus-from-datasets")
        manifest, retriever = open_run(eval_config, datasets, describe_model(model, base_url), index, out)
    except (OSError, ValueError, RecordError) as e:
        raise fail(str(e)) from None

    generator = _ask_generator(
        model, base_url, api_key_env, concurrency, timeout, eval_config.batch_size, bf16
    )

    def show(progress: Progress) -> None:
        k = "" if progress.top_k is None else f" (top-{progress.top_k})"
        console.print(
            f"{progress.method}{k}: {progress.done}/{progress.total} questions "
            f"(last chunk {progress.seconds:.0f} s)",
            highlight=False,
        )

    _print_report(
        run_and_report(eval_config, generator, retriever, manifest, datasets, out, on_progress=show)
    )


def _methods(values: list[str], flag: str) -> list[str]:
    from r3rag.evaluation.baselines import METHODS

    unknown = [v for v in values if v not in METHODS]
    if unknown:
        raise fail(f"{flag}: unknown method {unknown[0]!r}; expected one of {', '.join(METHODS)} (or all)")
    return values


def _int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{flag} takes comma-separated integers, not {value!r}") from None


def _token_budgets(values: list[str] | None) -> dict[str, int] | None:
    """``N`` (every method) and ``METHOD=N`` entries, later ones winning."""
    from r3rag.evaluation.baselines import METHODS

    if not values:
        return None
    budgets: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not number.strip().isdigit() or (sep and name not in METHODS):
            raise fail(
                f"--max-new-tokens takes N or METHOD=N (METHOD one of {', '.join(METHODS)}), not {value!r}"
            )
        budgets |= {name: int(number)} if sep else dict.fromkeys(METHODS, int(number))
    return budgets


def _print_report(paths: dict[str, Path]) -> None:
    text = paths["markdown"].read_text(encoding="utf-8")
    table = text.split("## Table 1", 1)[1].split("\n## ", 1)[0] if "## Table 1" in text else ""
    print("## Table 1" + table.rstrip() if table else text)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)


# ------------------------------------------------------------------------------------- r3rag coldstart, sft


@app.command()
def coldstart(
    questions: Annotated[
        list[Path], typer.Option(help="Question file (FlashRAG jsonl or a dataset); repeat for more.")
    ],
    index: Annotated[str, typer.Option(help="Index folder (`r3rag index build`) or retrieval server URL.")],
    out: Annotated[
        Path, typer.Option(help="Folder: coldstart.yaml, trajectories.jsonl, sft.jsonl, stats.json.")
    ],
    teacher: Annotated[
        str | None, typer.Option(help="oracle (gold decompositions, offline) or llm (a model + judge).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A ColdStartConfig YAML; flags given here override it.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions of each file.")] = None,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Policy: passages per retrieval (default 2).")
    ] = None,
    max_doc_chars: Annotated[
        int | None, typer.Option(min=0, help="Policy: cut each step's documents (default 512; 0: no cut).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Policy: steps per question (default 5).")
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(help="Policy: system turn of the SFT prompts.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Questions in flight at once.")] = None,
    max_queries_per_hop: Annotated[
        int | None, typer.Option(min=1, help="Oracle: searches per hop, reformulations included.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Oracle: seed of the phrasings.")] = None,
    teacher_model: Annotated[
        str, typer.Option(help="LLM teacher: a local model (folder, .gguf, hub id) or the endpoint's model.")
    ] = "smollm2-135m-instruct",
    base_url: Annotated[
        str | None, typer.Option(help="LLM teacher: OpenAI-compatible server (vLLM, DeepSeek, ...).")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="LLM teacher: variable holding the API key.")
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(min=1, help="LLM teacher: parallel requests.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="LLM teacher: seconds per request.")] = 120.0,
    bf16: Annotated[bool, typer.Option(help="LLM teacher, local model: bf16 autocast.")] = False,
    attempts: Annotated[
        int | None, typer.Option(min=1, help="LLM teacher: attempts per question (7).")
    ] = None,
    retry_temperature: Annotated[
        float | None, typer.Option(min=0.0, help="LLM teacher: temperature after the first attempt (0.9).")
    ] = None,
    teacher_max_steps: Annotated[
        int | None, typer.Option(min=1, help="Teacher: steps per attempt (default: --max-steps).")
    ] = None,
    judge_llm: Annotated[
        bool | None, typer.Option(help="LLM teacher: ask the teacher model when the answer match fails.")
    ] = None,
    judge_match: Annotated[str | None, typer.Option(help="Answer match: em or cover_em.")] = None,
) -> None:
    """Build cold-start data: teacher trajectories (resumable), then the SFT examples and statistics."""
    from pydantic import ValidationError

    from r3rag.coldstart.build import SFT_FILE, STATS_FILE, TRAJECTORIES_FILE, build
    from r3rag.config import ColdStartConfig, RetrievalConfig
    from r3rag.data.datasets import load_dataset
    from r3rag.jsonl import RecordError
    from r3rag.retrieval import open_retriever

    try:
        base = ColdStartConfig.from_yaml(existing_file(config)) if config else ColdStartConfig()
        agent = {"top_k": top_k, "max_steps": max_steps, "system_prompt": system_prompt}
        if max_doc_chars is not None:
            agent["max_doc_chars"] = max_doc_chars or None
        judge = {"correctness_llm": judge_llm, "correctness_match": judge_match}
        oracle = {"max_queries_per_hop": max_queries_per_hop, "seed": seed}
        top = {
            "teacher": teacher,
            "batch_size": batch_size,
            "attempts": attempts,
            "retry_temperature": retry_temperature,
            "teacher_max_steps": teacher_max_steps,
        }
        data = base.model_dump()
        data.update(_given(top))
        for section, values in (("agent", agent), ("judge", judge), ("oracle", oracle)):
            data[section] = {**data[section], **_given(values)}
        cold = ColdStartConfig.model_validate(data)
        examples = [ex for path in questions for ex in load_dataset(existing_file(path))[:limit]]
        retriever = open_retriever(RetrievalConfig(source=index))
    except (ValidationError, RecordError, OSError, ValueError) as e:
        raise fail(str(e)) from None
    if cold.teacher == "oracle":
        from r3rag.coldstart.oracle import OracleTeacher

        chosen = OracleTeacher(retriever, cold)
    else:
        from r3rag.coldstart.teacher import LLMTeacher
        from r3rag.rewards.judges import CorrectnessJudge

        generator = _ask_generator(
            teacher_model, base_url, api_key_env, concurrency, timeout, cold.batch_size, bf16
        )
        judge_generator = generator if cold.judge.correctness_llm else None
        chosen = LLMTeacher(
            generator, retriever, cold, CorrectnessJudge(cold.judge, judge_generator), f"llm:{teacher_model}"
        )

    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{cold.teacher} teacher", total=len(examples))
        try:
            summary, stats = build(cold, chosen, examples, out, on_result=lambda _: progress.advance(task))
        except (RecordError, ValueError) as e:
            raise fail(str(e)) from None
    _print_coldstart(summary, stats)
    console.print(
        f"wrote {out / TRAJECTORIES_FILE}, {out / SFT_FILE} ({stats['sft_examples']:,} examples), "
        f"{out / STATS_FILE}",
        highlight=False,
    )


def _given(values: dict) -> dict:
    """The flags the user gave (typer reports the others as None)."""
    return {k: v for k, v in values.items() if v is not None}


def _print_coldstart(summary, stats: dict) -> None:
    from rich.table import Table

    console.print(
        f"{summary.written} questions done this run ({summary.kept} kept), {summary.skipped} already done",
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


@app.command()
def sft(
    data: Annotated[
        Path | None, typer.Option(help="SFT examples (sft.jsonl from `r3rag coldstart`).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder: config, log, checkpoints/, final/.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="An SFTConfig YAML; flags given here override it.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Starting model: smollm2-135m-instruct, a folder, a .gguf, a hub id.")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the examples (official: 3).")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps instead of epochs.")] = None,
    max_examples: Annotated[
        int | None, typer.Option(min=1, help="Train on random whole questions, up to this many examples.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (official: 1e-5).")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Warmup share of the steps (0.1).")] = None,
    share_prefixes: Annotated[
        bool | None,
        typer.Option(help="One row per trajectory, its shared prompt computed once (default on; same loss)."),
    ] = None,
    micro_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Rows per forward pass: trajectories, or examples unshared.")
    ] = None,
    grad_accum: Annotated[int | None, typer.Option(min=1, help="Micro-batches per optimizer step.")] = None,
    max_length: Annotated[int | None, typer.Option(min=16, help="Drop longer examples (tokens).")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of questions held out (0.1).")] = None,
    eval_every: Annotated[int | None, typer.Option(min=1, help="Steps between eval losses.")] = None,
    save_every: Annotated[int | None, typer.Option(min=1, help="Steps between checkpoints.")] = None,
    bf16: Annotated[bool | None, typer.Option(help="bf16 autocast (default on).")] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (1 on a busy machine).")
    ] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    lora: Annotated[bool | None, typer.Option(help="Train LoRA adapters (needs peft).")] = None,
    lora_rank: Annotated[int | None, typer.Option(min=1)] = None,
    lora_alpha: Annotated[float | None, typer.Option()] = None,
) -> None:
    """Fine-tune a causal LM on cold-start step examples (R3-RAG-CS); resumes from its last checkpoint."""
    from pydantic import ValidationError

    from r3rag.coldstart.sft import train
    from r3rag.config import SFTConfig
    from r3rag.jsonl import RecordError

    flags = {
        "data": data,
        "out": out,
        "model": model,
        "epochs": epochs,
        "max_steps": max_steps,
        "max_examples": max_examples,
        "learning_rate": lr,
        "warmup_ratio": warmup_ratio,
        "share_prefixes": share_prefixes,
        "micro_batch_size": micro_batch_size,
        "grad_accum": grad_accum,
        "max_length": max_length,
        "val_fraction": val_fraction,
        "eval_every": eval_every,
        "save_every": save_every,
        "bf16": bf16,
        "threads": threads,
        "seed": seed,
        "lora": lora,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
    }
    try:
        base = SFTConfig.from_yaml(existing_file(config)).model_dump() if config else {}
        sft_config = SFTConfig.model_validate({**base, **_given(flags)})
        existing_file(sft_config.data)
        result = train(sft_config)
    except (ValidationError, RecordError, FileExistsError, FileNotFoundError, RuntimeError, ValueError) as e:
        raise fail(str(e)) from None
    eval_loss = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"
    console.print(
        f"[green]trained[/] {result.steps} steps ({result.train_examples:,} examples, "
        f"{result.train_tokens:,} tokens) in {result.wall_seconds / 60:.1f} min: train loss "
        f"{result.last_loss:.4f}, eval loss {eval_loss}, peak RSS {result.peak_rss_bytes / 2**30:.1f} GiB "
        f"-> {result.final}",
        highlight=False,
    )


# ------------------------------------------------------------------------------------------------ r3rag train

_TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def _tcmalloc_tip() -> None:
    """Print a one-line tip when tcmalloc is installed but not preloaded: training steps on CPU are up to 2.5x
    faster with it, and only the user can preload it (it must be in LD_PRELOAD before the process starts)."""
    import os

    if _TCMALLOC.exists() and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        console.print(f"tip: LD_PRELOAD={_TCMALLOC} makes training steps up to 2.5x faster", highlight=False)


@app.command("train")
def train_command(
    model: Annotated[
        str | None, typer.Option(help="The cold-start model R3-RAG-CS (a model folder).")
    ] = None,
    train: Annotated[
        Path | None, typer.Option(help="Training questions (FlashRAG jsonl or a dataset).")
    ] = None,
    index: Annotated[str | None, typer.Option(help="Index folder, or the URL of a retrieval server.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder; a folder holding a run resumes it from its checkpoint.")
    ] = None,
    dev: Annotated[Path | None, typer.Option(help="Dev questions for the greedy accuracy curve.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="A PPOConfig YAML; flags given here override it.")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="paper (the official hyperparameters) or small (a ~100M model on a CPU).")
    ] = "paper",
    iterations: Annotated[int | None, typer.Option(min=1, help="Rollout + update rounds.")] = None,
    questions_per_iteration: Annotated[int | None, typer.Option(min=1, help="Questions per rollout.")] = None,
    samples_per_question: Annotated[
        int | None, typer.Option(min=1, help="Trajectories per question.")
    ] = None,
    critic: Annotated[str | None, typer.Option(help="separate (official) or shared (a value head).")] = None,
    lora_rank: Annotated[
        int | None, typer.Option(min=0, help="LoRA rank of the actor; 0: all weights.")
    ] = None,
    actor_lr: Annotated[float | None, typer.Option(help="Actor learning rate (official: 5e-7).")] = None,
    critic_lr: Annotated[float | None, typer.Option(help="Critic learning rate (official: 9e-6).")] = None,
    kl_coef: Annotated[float | None, typer.Option(help="KL penalty coefficient (official: 0.01).")] = None,
    kl_estimator: Annotated[str | None, typer.Option(help="k1 (official) or k3.")] = None,
    ppo_epochs: Annotated[int | None, typer.Option(min=1, help="Passes over each rollout buffer.")] = None,
    minibatch_size: Annotated[
        int | None, typer.Option(min=1, help="Step-samples per optimizer step.")
    ] = None,
    micro_batch_tokens: Annotated[
        int | None, typer.Option(min=1, help="Padded tokens per forward pass (the memory knob).")
    ] = None,
    rollout_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Conversations per generate call.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Agent steps per question.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Passages per retrieval.")] = None,
    max_doc_chars: Annotated[int | None, typer.Option(min=1, help="Cut each step's documents.")] = None,
    eval_every: Annotated[int | None, typer.Option(min=0, help="Iterations between dev evaluations.")] = None,
    eval_questions: Annotated[int | None, typer.Option(min=1, help="Dev questions evaluated.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop before running past this budget.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    bf16: Annotated[bool | None, typer.Option(help="bf16 autocast (default on).")] = None,
    tensorboard: Annotated[
        bool | None, typer.Option(help="Also write TensorBoard events (default on).")
    ] = None,
) -> None:
    """PPO with the hybrid reward: train R3-RAG-CS into R3-RAG. Run the same command again to resume."""
    import yaml
    from pydantic import ValidationError

    from r3rag.config import PPOConfig
    from r3rag.jsonl import RecordError
    from r3rag.rl.ppo import PPOTrainer

    if preset not in ("paper", "small"):
        raise fail(f"--preset must be paper or small, not {preset!r}")
    flags = _given(
        {
            "model": model,
            "train": train,
            "index": index,
            "out": out,
            "dev": dev,
            "iterations": iterations,
            "questions_per_iteration": questions_per_iteration,
            "samples_per_question": samples_per_question,
            "critic": critic,
            "lora_rank": lora_rank,
            "actor_lr": actor_lr,
            "critic_lr": critic_lr,
            "kl_coef": kl_coef,
            "kl_estimator": kl_estimator,
            "ppo_epochs": ppo_epochs,
            "minibatch_size": minibatch_size,
            "micro_batch_tokens": micro_batch_tokens,
            "rollout_batch_size": rollout_batch_size,
            "eval_every": eval_every,
            "eval_questions": eval_questions,
            "max_minutes": max_minutes,
            "seed": seed,
            "bf16": bf16,
            "tensorboard": tensorboard,
        }
    )
    rollout = _given({"max_steps": max_steps, "top_k": top_k, "max_doc_chars": max_doc_chars})
    try:
        base = yaml.safe_load(existing_file(config).read_text(encoding="utf-8")) or {} if config else {}
        if not isinstance(base, dict):
            raise fail(f"{config}: expected a mapping of PPOConfig fields")
        if rollout:
            flags["rollout"] = {**base.get("rollout", {}), **rollout}
        values = {**base, **flags}
        ppo_config = (
            PPOConfig.small_model(**values) if preset == "small" else PPOConfig.model_validate(values)
        )
        _tcmalloc_tip()
        trainer = PPOTrainer.from_config(ppo_config)
        records = trainer.train()
    except (ValidationError, RecordError, FileNotFoundError, RuntimeError, ValueError) as e:
        raise fail(str(e)) from None
    dev_points = [(r["iteration"], r["dev/accuracy"]) for r in records if r.get("dev/accuracy") is not None]
    summary = ""
    if len(dev_points) >= 2:
        (first, before), (last, after) = dev_points[0], dev_points[-1]
        summary = f"; dev accuracy {before:.1%} (iteration {first}) -> {after:.1%} (iteration {last})"
    console.print(
        f"[green]trained[/] {records[-1]['iteration'] if records else 0} iterations{summary} -> "
        f"{ppo_config.out}/final (curve: {ppo_config.out}/curve.png)",
        highlight=False,
    )


# ------------------------------------------------------------------------------------------- r3rag quickstart


@app.command()
def quickstart(
    out: Annotated[
        Path, typer.Option(help="Folder of the whole run; run the same command again to resume it.")
    ] = Path("runs/quickstart"),
    preset: Annotated[
        str | None,
        typer.Option(
            help="small (default: embedded SmolLM2, ~15 min on 2 cores) or tiny (a random model, ~1 min)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="A PipelineConfig YAML (e.g. an edited quickstart.yaml), not --preset."),
    ] = None,
) -> None:
    """The whole R3-RAG pipeline on the embedded default: world, index, cold start, SFT, PPO, evaluation."""
    from pydantic import ValidationError
    from rich.console import Console

    from r3rag.config import PipelineConfig
    from r3rag.pipeline import PipelineError, pending_stages, print_results, run_pipeline

    if preset is not None and config is not None:
        raise fail("give --preset or --config, not both")
    if preset not in (None, "small", "tiny"):
        raise fail(f"--preset must be small or tiny, not {preset!r}")
    try:
        if config is not None:
            pipeline = PipelineConfig.from_yaml(existing_file(config))
        else:
            pipeline = PipelineConfig.preset("tiny" if preset == "tiny" else "small")
    except (ValidationError, ValueError) as e:
        raise fail(str(e)) from None
    if {"sft", "ppo"} & set(pending_stages(pipeline, out)):
        _tcmalloc_tip()
    try:
        result = run_pipeline(pipeline, out, console)
    except PipelineError as e:
        raise fail(str(e)) from None
    print_results(Console(), result)
