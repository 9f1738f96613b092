"""Retrieval: build time, search throughput, latency through the server, BM25 overhead, and a load run.

Corpora: the 2Wiki 6,119-passage corpus (HippoRAG's, from ../shared/data), the synthetic world (standard
preset), and any corpus jsonl given with --corpus. For each corpus and retriever (bm25, dense with the
embedded MiniLM): index build time; queries/s searching all queries in one batched call and one query per
call; p50/p99 request latency through `r3rag serve retriever` (a subprocess, cache off so every request
searches) with 1 and 16 concurrent clients; medians of --repeats runs. For BM25, in the same run: the
time of our search relative to a bare bm25s call on the same index (tokenize + retrieve), and our speed
relative to rank_bm25 (BM25Okapi on the same tokens), medians of --pairs alternating runs. Then the load
run: --requests requests of 1-4 queries from --clients concurrent clients against the BM25 server (cache
on), every answer checked against the local index.

rank_bm25 is a benchmark-only dependency: pip install rank_bm25 (its column is skipped without it).

Headline figures for `make bench`: BM25 batched q/s on the first corpus, the worst BM25 overhead over bare
bm25s (target <= 10%), the speed vs rank_bm25 per corpus (expectation >= 20x), and the load run's errors
and wrong answers.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _summary import report

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from r3rag.config import IndexBuildConfig  # noqa: E402  (after the offline switches)
from r3rag.data.corpus import dedupe_passages, read_corpus, read_title_text_json, write_corpus  # noqa: E402
from r3rag.retrieval.bm25 import BM25Retriever  # noqa: E402
from r3rag.retrieval.client import RetrieverClient  # noqa: E402
from r3rag.retrieval.index import build_index, load_index  # noqa: E402
from r3rag.schema import Passage  # noqa: E402

TWOWIKI = (
    Path(__file__).resolve().parents[2] / "shared/data/2wikimultihopqa/2wikimultihopqa_corpus.hipporag.json"
)


@dataclass
class Corpus:
    name: str
    path: Path
    queries: list[str]


@dataclass
class Row:
    corpus: str
    retriever: str
    passages: int
    build_s: float
    batched_qps: float
    single_qps: float
    latency_1: tuple[float, float]
    latency_16: tuple[float, float]


@dataclass
class BM25Comparison:
    """One corpus's row of the BM25 table, and the figures of it that have a target."""

    corpus: str
    row: str
    overhead_batched: float  # our time / bare bm25s time - 1
    overhead_single: float
    speedup: float | None  # vs rank_bm25; None when it is not installed


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def passage_queries(passages: Sequence[Passage], n: int, seed: int = 0) -> list[str]:
    """Short queries made from the first words of random passages (the corpus has no question set)."""
    rng = random.Random(seed)
    return [" ".join(p.text.split()[:10]) for p in rng.sample(list(passages), min(n, len(passages)))]


def twowiki_corpus(workdir: Path, n: int) -> Corpus | None:
    if not TWOWIKI.is_file():
        print(f"skipping 2Wiki: {TWOWIKI} not found")
        return None
    path = workdir / "2wiki.jsonl"
    write_corpus(path, dedupe_passages(read_title_text_json(TWOWIKI)))
    return Corpus("2Wiki (HippoRAG corpus)", path, passage_queries(read_corpus(path), n))


def world_corpus(workdir: Path, n: int) -> Corpus | None:
    try:
        from r3rag.data.world import generate_world
    except ImportError:
        print("skipping the synthetic world: r3rag.data.world is not available")
        return None
    world = generate_world()
    path = workdir / "world.jsonl"
    write_corpus(path, world.passages)
    queries = list(dict.fromkeys(hop.question for e in world.train + world.dev for hop in e.decomposition))
    random.Random(0).shuffle(queries)
    return Corpus("synthetic world (standard)", path, queries[:n])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`r3rag serve retriever` in a subprocess, so the clients' Python does not share the server's GIL."""

    def __init__(self, index: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-c", "from r3rag.cli import app; app()", "serve", "retriever", str(index)]
        command += ["--port", str(self.port), "--log-level", "warning", *extra]
        self._process = subprocess.Popen(command)

    def __enter__(self) -> ServerProcess:
        with RetrieverClient(self.url, retries=40, backoff_s=0.25, max_backoff_s=1.0) as client:
            client.health()
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)


def latencies(url: str, queries: Sequence[str], clients: int, per_client: int, k: int) -> list[float]:
    """Per-request seconds: each client sends ``per_client`` one-query requests, one after the other."""

    def client_run(index: int) -> list[float]:
        seconds = []
        with RetrieverClient(url) as client:
            for i in range(per_client):
                query = queries[(index * per_client + i) % len(queries)]
                start = time.perf_counter()
                client.search([query], k)
                seconds.append(time.perf_counter() - start)
        return seconds

    with ThreadPoolExecutor(clients) as pool:
        return [s for run in pool.map(client_run, range(clients)) for s in run]


def p50_p99(seconds: Sequence[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 99) * 1e3)


def server_latency(index: Path, corpus: Corpus, args: argparse.Namespace) -> tuple[tuple, tuple]:
    with ServerProcess(index, "--cache-size", "0") as server:
        latencies(server.url, corpus.queries, 1, 20, args.k)  # warm-up
        ones = [
            p50_p99(latencies(server.url, corpus.queries, 1, args.single, args.k))
            for _ in range(args.repeats)
        ]
        sixteens = [
            p50_p99(latencies(server.url, corpus.queries, 16, args.single // 3, args.k))
            for _ in range(args.repeats)
        ]
    return tuple(map(statistics.median, zip(*ones, strict=True))), tuple(
        map(statistics.median, zip(*sixteens, strict=True))
    )


def measure(corpus: Corpus, retriever: str, workdir: Path, args: argparse.Namespace) -> tuple[Row, Path]:
    out = workdir / f"{corpus.path.stem}-{retriever}"
    config = IndexBuildConfig(corpus=corpus.path, out=out, retriever=retriever)
    build_s = statistics.median(
        build_index(config, progress=False).build_seconds for _ in range(args.repeats)
    )
    index = load_index(out)
    queries, single = corpus.queries, corpus.queries[: args.single]
    index.search(single[:20], args.k)  # warm-up
    batched = median_time(lambda: index.search(queries, args.k), args.repeats)
    one_by_one = median_time(lambda: [index.search([q], args.k) for q in single], args.repeats)
    latency_1, latency_16 = server_latency(out, corpus, args)
    row = Row(
        corpus.name,
        retriever,
        len(read_corpus(corpus.path)),
        build_s,
        len(queries) / batched,
        len(single) / one_by_one,
        latency_1,
        latency_16,
    )
    return row, out


def paired(a: Callable[[], object], b: Callable[[], object], pairs: int) -> tuple[float, float, float]:
    """Median seconds of ``a`` and of ``b``, and the median of the pairwise ratios a/b.

    ``a`` and ``b`` run alternately, so a change in the (shared) machine's load hits both alike.
    """
    times = [(timed(a), timed(b)) for _ in range(pairs)]
    return (
        statistics.median(t for t, _ in times),
        statistics.median(t for _, t in times),
        statistics.median(x / y for x, y in times),
    )


def bm25_comparison(corpus: Corpus, index_dir: Path, args: argparse.Namespace) -> BM25Comparison:
    """Our search vs a bare bm25s call on the same index, and vs rank_bm25."""
    import bm25s
    import Stemmer

    ours = load_index(index_dir)
    assert isinstance(ours, BM25Retriever)
    engine, stemmer, k = ours.engine, Stemmer.Stemmer("english"), args.k
    queries, single = corpus.queries, corpus.queries[: args.single]

    def bare(batch: Sequence[str]) -> None:
        tokens = bm25s.tokenize(list(batch), stopwords="en", stemmer=stemmer, show_progress=False)
        engine.retrieve(tokens, k=k, show_progress=False)

    def ours_batched() -> None:
        ours.search(queries, k)

    ours_b, bare_b, ratio_b = paired(ours_batched, lambda: bare(queries), args.pairs)
    ours_s, bare_s, ratio_s = paired(
        lambda: [ours.search([q], k) for q in single], lambda: [bare([q]) for q in single], args.pairs
    )
    cells = [
        corpus.name,
        f"{len(queries) / ours_b:,.0f}",
        f"{len(queries) / bare_b:,.0f}",
        f"{ratio_b - 1:+.1%}",
        f"{len(single) / ours_s:,.0f}",
        f"{len(single) / bare_s:,.0f}",
        f"{ratio_s - 1:+.1%}",
    ]
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        row = "| " + " | ".join([*cells, "not installed (pip install rank_bm25)", "-"]) + " |"
        return BM25Comparison(corpus.name, row, ratio_b - 1, ratio_s - 1, None)
    tokenizer = ours.tokenizer  # the same tokens for both, so only the scoring differs
    okapi = BM25Okapi([tokenizer.tokens(p.contents) for p in read_corpus(corpus.path)], k1=1.5, b=0.75)
    sample = single[: args.rank_bm25_queries]

    def rank_bm25_search() -> None:
        for q in sample:
            scores = okapi.get_scores(tokenizer.tokens(q))
            top = np.argpartition(-scores, k)[:k]
            top[np.argsort(-scores[top])]

    rank_s, _, ratio = paired(rank_bm25_search, ours_batched, args.pairs)
    speedup = ratio * len(queries) / len(sample)  # (rank_bm25 s per query) / (our batched s per query)
    cells += [f"{len(sample) / rank_s:,.0f}", f"{speedup:.0f}x"]
    return BM25Comparison(corpus.name, "| " + " | ".join(cells) + " |", ratio_b - 1, ratio_s - 1, speedup)


def load_run(corpus: Corpus, index_dir: Path, args: argparse.Namespace) -> tuple[str, int, int]:
    """--requests requests of 1-4 queries, k 3 or 5, from --clients clients; every answer checked.

    Returns the table row, the failed requests and the wrong answers.
    """
    rng = random.Random(1)
    pool = corpus.queries
    requests = [
        ([rng.choice(pool) for _ in range(rng.randint(1, 4))], rng.choice((3, 5)))
        for _ in range(args.requests)
    ]
    local = load_index(index_dir)
    expected = {k: dict(zip(pool, local.search(pool, k), strict=True)) for k in (3, 5)}
    errors, wrong, seconds = [], [0], []
    lock = threading.Lock()

    def client_run(index: int) -> None:
        with RetrieverClient(server.url) as client:
            for queries, k in requests[index :: args.clients]:
                start = time.perf_counter()
                try:
                    results = client.search(queries, k)
                except Exception as e:  # counted and shown: the run must report every failure
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - start
                bad = sum(not same_hits(got, expected[k][q]) for q, got in zip(queries, results, strict=True))
                with lock:
                    seconds.append(elapsed)
                    wrong[0] += bad

    with ServerProcess(index_dir) as server:
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as executor:
            list(executor.map(client_run, range(args.clients)))
        wall = time.perf_counter() - started
        with RetrieverClient(server.url) as client:
            stats = client.stats()
    for message in errors[:5]:
        print(f"load run error: {message}")
    p50, p99 = p50_p99(seconds) if seconds else (float("nan"), float("nan"))
    cells = [
        corpus.name,
        f"{args.requests:,}",
        str(args.clients),
        f"{sum(len(q) for q, _ in requests):,}",
        str(len(errors)),
        str(wrong[0]),
        f"{args.requests / wall:,.0f}",
        f"{p50:.1f} / {p99:.1f}",
        f"{stats['cache']['hits'] / max(1, stats['queries']):.0%}",
        f"{stats['mean_batch_queries']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |", len(errors), wrong[0]


def same_hits(got: list[Passage], want: list[Passage]) -> bool:
    return [p.id for p in got] == [p.id for p in want] and np.allclose(
        [p.score for p in got], [p.score for p in want], rtol=1e-5
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", type=Path, action="append", default=[], help="another corpus jsonl to measure"
    )
    parser.add_argument("--retrievers", default="bm25,dense", help="comma-separated: bm25, dense")
    parser.add_argument("--queries", type=int, default=1000, help="queries per corpus (batched search)")
    parser.add_argument("--single", type=int, default=300, help="queries searched one per call / per client")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is shown")
    parser.add_argument(
        "--pairs", type=int, default=11, help="alternating runs of BM25 ours-vs-reference timings"
    )
    parser.add_argument("--rank-bm25-queries", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10_000, help="load run requests (0 skips it)")
    parser.add_argument("--clients", type=int, default=16, help="load run concurrent clients")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="r3rag-bench-") as tmp:
        workdir = Path(tmp)
        corpora = [
            c for c in (twowiki_corpus(workdir, args.queries), world_corpus(workdir, args.queries)) if c
        ]
        for path in args.corpus:
            corpora.append(Corpus(path.name, path, passage_queries(read_corpus(path), args.queries)))
        rows, comparisons, bm25_indexes = [], [], []
        for corpus in corpora:
            for retriever in args.retrievers.split(","):
                row, index_dir = measure(corpus, retriever, workdir, args)
                rows.append(row)
                if retriever == "bm25":
                    comparisons.append(bm25_comparison(corpus, index_dir, args))
                    bm25_indexes.append((corpus, index_dir))
        print_tables(rows, [c.row for c in comparisons], args)
        load: tuple[int, int] | None = None
        if args.requests and bm25_indexes:
            print(f"\nLoad run: {args.requests:,} requests of 1-4 queries, {args.clients} concurrent clients")
            print(
                "| corpus | requests | clients | queries | errors | wrong answers | requests/s "
                "| p50 / p99 ms | cache hits | mean batch |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            load_row, errors, wrong = load_run(*bm25_indexes[0], args)
            print(load_row)
            load = (errors, wrong)
    report_headlines(rows, comparisons, load, args)


def print_tables(rows: list[Row], bm25_rows: list[str], args: argparse.Namespace) -> None:
    print(
        f"\nRetrieval, k={args.k}: build, search throughput, and latency through the server (cache off);"
        f" medians of {args.repeats} runs"
    )
    print(
        "| corpus | retriever | passages | build | batched q/s | single q/s "
        "| server p50 / p99 ms, 1 client | server p50 / p99 ms, 16 clients |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.corpus} | {r.retriever} | {r.passages:,} | {r.build_s:.2f} s | {r.batched_qps:,.0f} "
            f"| {r.single_qps:,.0f} | {r.latency_1[0]:.1f} / {r.latency_1[1]:.1f} "
            f"| {r.latency_16[0]:.1f} / {r.latency_16[1]:.1f} |"
        )
    if bm25_rows:
        print(
            "\nBM25: our search vs a bare bm25s call (tokenize + retrieve) on the same index, and vs"
            f" rank_bm25; medians of {args.pairs} alternating runs"
        )
        print(
            "| corpus | ours batched q/s | bm25s batched q/s | our overhead | ours single q/s "
            "| bm25s single q/s | our overhead | rank_bm25 q/s | ours (batched) vs rank_bm25 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(bm25_rows))


def report_headlines(
    rows: list[Row],
    comparisons: list[BM25Comparison],
    load: tuple[int, int] | None,
    args: argparse.Namespace,
) -> None:
    """The few figures `make bench` shows: the BM25 speed on the first corpus, and those with a target.

    The overhead is the worst over corpora and over batched / single, since the target holds for all.
    ``load`` is the load run's (failed requests, wrong answers), None when it was skipped.
    """
    first = next((r for r in rows if r.retriever == "bm25"), None)
    if first is not None:
        report(f"BM25 batched q/s, {first.corpus}", f"{first.batched_qps:,.0f}")
    if comparisons:
        overhead, where = max(
            (value, f"{mode} on {c.corpus}")
            for c in comparisons
            for value, mode in ((c.overhead_batched, "batched"), (c.overhead_single, "single"))
        )
        report(f"BM25 overhead vs bare bm25s, worst: {where}", f"{overhead:+.1%}", "<= 10%")
    for c in comparisons:
        if c.speedup is not None:
            report(f"BM25 (batched) speed vs rank_bm25, {c.corpus}", f"{c.speedup:.0f}x", ">= 20x")
    if load is not None:
        report(
            f"load run ({args.requests:,} requests, {args.clients} clients): failed requests / wrong answers",
            f"{load[0]} / {load[1]}",
            "0 / 0",
        )


if __name__ == "__main__":
    main()
