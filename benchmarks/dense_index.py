"""Dense index at scale: bounded memory at 1M passages, resume after kill -9, recall of IVF-PQ and HNSW,
and the memory each index type would take at 21M x 768 (the paper's wiki18_100w with E5).

1. Memory. A generated corpus of --passages (1M) passages (random words, fast to write) is built with
   `build_index` in a child process, once per index type (Flat, IVF-PQ); the encoder is a fast stand-in
   (bag of hashed words, --dim 64 dimensions, said so in the table), since MiniLM would take hours on two
   cores. A thread in the child samples /proc/self/status: peak private memory (RssAnon: what the process
   cannot give back) and peak RSS (VmHWM, which also counts pages of mapped files, shared and reclaimable)
   during the build, and again while a loaded index answers 1,000 queries. The bound to hold: the
   interpreter with faiss imported, plus the index being built, plus 16 bytes per passage while the passages
   are written (an offset and an id hash), plus the training sample, plus one chunk (its texts as Python
   strings, at most 1 KiB a passage here, and its vectors in float32 and float16). Nothing in it grows with
   the corpus but the index and the 16 bytes per passage.
2. Resume. A Flat build is killed (SIGKILL) once --kill-after chunks are on disk, then run again: it must
   encode only the passages left, and answer queries exactly as the uninterrupted build does.
3. Recall. MiniLM (embedded) encodes a sample of --recall-passages passages of the 2Wiki corpus (HippoRAG's
   6,119 passages, ../shared/data) or, when absent, of a generated one; recall@10 of HNSW32 and IVF-PQ
   against Flat on --recall-queries queries (the first words of sampled passages).
4. Projection. Bytes per vector of each index type, checked against the files measured at 1M, projected to
   21M passages of 768 dimensions.

Headline figures for `make bench`: peak private memory of the 1M build and search per type, the resume
check, recall@10 of HNSW and IVF-PQ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _summary import report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from r3rag.config import DenseConfig, EncoderConfig, IndexBuildConfig  # noqa: E402
from r3rag.data.corpus import dedupe_passages, read_corpus, read_title_text_json  # noqa: E402
from r3rag.retrieval.dense import DenseRetriever  # noqa: E402
from r3rag.retrieval.embeddings import EMBEDDINGS_FILE, PROGRESS_FILE  # noqa: E402
from r3rag.retrieval.encoders import EncoderSpec  # noqa: E402
from r3rag.retrieval.index import build_index, staging_folder  # noqa: E402
from r3rag.retrieval.store import OFFSETS_FILE, PASSAGES_FILE, PassageStore  # noqa: E402

TWOWIKI = (
    Path(__file__).resolve().parents[2] / "shared/data/2wikimultihopqa/2wikimultihopqa_corpus.hipporag.json"
)
GIB = 2**30
PAPER_PASSAGES, PAPER_DIM = 21_015_324, 768  # wiki18_100w, E5-base


class HashedWordsEncoder:
    """A fast stand-in encoder: the normalised sum of one fixed random vector per word (by CRC32).

    Passages sharing words get similar vectors, so search results are meaningful enough to compare two
    builds; it encodes a 65k-passage chunk in a second or two, where MiniLM would take minutes on two cores.
    """

    def __init__(self, dimension: int, encoded_log: Path | None = None):
        self.spec = EncoderSpec(
            name="hashed-words",
            model="stand-in",
            conventions="plain",
            query_prefix="",
            passage_prefix="",
            pooling="model",
            normalize=True,
        )
        self._dimension = dimension
        self._table = np.random.default_rng(0).standard_normal((1 << 16, dimension)).astype(np.float32)
        self._log = encoded_log

    @property
    def dimension(self) -> int:
        return self._dimension

    def _vectors(self, texts: list[str]) -> np.ndarray:
        """In batches of 4,096 texts, as sentence-transformers batches, so its working memory stays small."""
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        for first in range(0, len(texts), 4096):
            batch = texts[first : first + 4096]
            rows = [[zlib.crc32(w.encode()) & 0xFFFF for w in t.split()] or [0] for t in batch]
            starts = np.cumsum([0] + [len(r) for r in rows[:-1]])
            sums = np.add.reduceat(self._table[np.concatenate(rows)], starts, axis=0)
            out[first : first + len(batch)] = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        return out

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        if self._log is not None:
            with open(self._log, "a") as f:
                f.write(f"{len(texts)}\n")
        return self._vectors(texts).astype(np.float16)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self._vectors(queries)


def generate_corpus(path: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` passages of 12-20 words from a 20,000-word vocabulary; return queries from other draws."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i:05d}" for i in range(20_000)]
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 100_000):
            block = rng.integers(0, len(vocab), size=(min(100_000, n - start), 20))
            lengths = rng.integers(12, 21, size=len(block))
            for i, (words, length) in enumerate(zip(block, lengths, strict=True)):
                text = " ".join(vocab[w] for w in words[:length])
                f.write(json.dumps({"id": f"p{start + i}", "contents": f"{vocab[words[0]]}\n{text}"}) + "\n")
    return [" ".join(vocab[w] for w in rng.integers(0, len(vocab), size=6)) for _ in range(1000)]


class MemorySampler:
    """Peaks of RssAnon and VmRSS of this process, sampled every 50 ms on a thread."""

    def __init__(self) -> None:
        self.anon = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        self.anon = max(self.anon, int(fields["RssAnon"].split()[0]) * 1024)
        self.rss = max(self.rss, int(fields["VmRSS"].split()[0]) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def child(args: argparse.Namespace) -> None:
    """One build (resuming whatever a killed build left) and a search run, in this process; prints JSON."""
    dense = DenseConfig(index=args.index, chunk_size=args.chunk, train_size=args.train_size, nprobe=16)
    config = IndexBuildConfig(corpus=args.corpus, out=args.out, retriever="dense", dense=dense)
    import faiss  # noqa: F401 - imported before the baseline is taken, as the build will import it

    encoder = HashedWordsEncoder(args.dim, Path(args.encoded_log))
    baseline = MemorySampler()
    with baseline:
        pass
    started = time.perf_counter()
    with MemorySampler() as build:
        build_index(config, progress=False, encoder=encoder)
    build_seconds = time.perf_counter() - started
    queries = json.loads(Path(args.queries_file).read_text())
    with MemorySampler() as search:
        retriever = DenseRetriever.load(args.out, encoder=encoder)  # the stand-in has no model folder
        started = time.perf_counter()
        hits = [retriever.search(queries[i : i + 100], k=10) for i in range(0, len(queries), 100)]
        search_seconds = time.perf_counter() - started
    ids = [[p.id for p in row] for batch in hits for row in batch]
    print(
        json.dumps(
            {
                "baseline_anon": baseline.anon,
                "build_anon": build.anon,
                "build_rss": build.rss,
                "search_anon": search.anon,
                "search_rss": search.rss,
                "build_seconds": build_seconds,
                "search_seconds": search_seconds,
                "index_bytes": (args.out / "index.faiss").stat().st_size,
                "ids": ids,
            }
        )
    )


def run_child(args: argparse.Namespace, corpus: Path, out: Path, index: str, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--index",
        index,
        "--chunk",
        str(args.chunk),
        "--dim",
        str(args.dim),
        "--train-size",
        str(args.train_size),
        "--encoded-log",
        str(log),
        "--queries-file",
        str(args.queries_file),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"child failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def encoded_rows(log: Path) -> int:
    return sum(int(line) for line in log.read_text().split()) if log.is_file() else 0


@dataclass
class Projection:
    name: str
    factory: str
    bytes_per_vector: float  # at dimension d, as a function below
    note: str


def bytes_per_vector(factory: str, dim: int, m_pq: int) -> float:
    """What faiss stores per vector (ids, codes, graph links), from its formats; small fixed parts aside."""
    return {
        "Flat": 4 * dim,
        "SQfp16": 2 * dim,
        "SQ8": dim,
        "HNSW32": 4 * dim + 2 * 32 * 4 * 1.03,  # level 0 holds 2M links of 4 bytes; upper levels ~3% more
        "IVF-PQ": m_pq + 8,  # PQ code plus the 8-byte id in its inverted list
    }[factory]


def memory_table(args: argparse.Namespace, workdir: Path, corpus: Path) -> dict[str, dict]:
    results = {}
    for name, factory in (("Flat", "Flat"), ("IVF-PQ", f"IVF{args.nlist},PQ{args.dim // 4}")):
        log = workdir / f"{name}.log"
        results[name] = finish(run_child(args, corpus, workdir / name, factory, log)) | {"factory": factory}
        results[name]["encoded"] = encoded_rows(log)
    return results


def resume_check(args: argparse.Namespace, workdir: Path, corpus: Path, whole: dict) -> tuple[int, int, bool]:
    """Kill a Flat build after --kill-after chunks, rerun it; return rows at the kill, rows the rerun
    encoded, and whether its answers equal the uninterrupted build's."""
    out, log = workdir / "killed", workdir / "killed.log"
    process = run_child(args, corpus, out, "Flat", log)
    progress = staging_folder(out) / PROGRESS_FILE
    target = args.kill_after * args.chunk
    while process.poll() is None:
        if progress.is_file() and json.loads(progress.read_text() or "{}").get("rows", 0) >= target:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = json.loads(progress.read_text())["rows"]
    before = encoded_rows(log)
    resumed = finish(run_child(args, corpus, out, "Flat", log))
    return at_kill, encoded_rows(log) - before, resumed["ids"] == whole["ids"]


def recall_table(args: argparse.Namespace, workdir: Path) -> tuple[str, int, dict[str, float]]:
    """Recall@10 against Flat, MiniLM embeddings of a real corpus (2Wiki) or a generated one."""
    if TWOWIKI.is_file():
        passages, source = list(dedupe_passages(read_title_text_json(TWOWIKI))), "2Wiki (HippoRAG)"
    else:
        path = workdir / "recall.jsonl"
        generate_corpus(path, 5000, seed=2)
        passages, source = read_corpus(path), "generated"
    rng = random.Random(0)
    passages = rng.sample(passages, min(args.recall_passages, len(passages)))
    queries = [" ".join(p.text.split()[:10]) for p in rng.sample(passages, args.recall_queries)]
    store = PassageStore(passages)
    encoder = EncoderConfig(model="minilm")
    flat = DenseRetriever.build(store, DenseConfig(encoder=encoder), workdir / "recall-flat", progress=False)
    exact = [{p.id for p in row} for row in flat.search(queries, k=10)]
    recalls = {}
    nlist = max(16, int(len(passages) ** 0.5))
    for name, factory in (("HNSW32", "HNSW32"), (f"IVF{nlist},PQ48 nprobe 16", f"IVF{nlist},PQ48")):
        config = DenseConfig(encoder=encoder, index=factory, nprobe=16)
        directory = workdir / f"recall-{factory}"
        directory.mkdir()
        for name_ in (EMBEDDINGS_FILE, PROGRESS_FILE, PASSAGES_FILE, OFFSETS_FILE):  # a finished encoding:
            shutil.copyfile(workdir / "recall-flat" / name_, directory / name_)  # the build resumes after it
        other = DenseRetriever.build(store, config, directory, progress=False, encoder=flat.encoder)
        found = [
            len({p.id for p in row} & want)
            for row, want in zip(other.search(queries, k=10), exact, strict=True)
        ]
        recalls[name] = sum(found) / (10 * len(queries))
    return source, len(passages), recalls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64, help="stand-in encoder dimension")
    parser.add_argument(
        "--chunk", type=int, default=65_536, help="passages per chunk (DenseConfig.chunk_size)"
    )
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists of the 1M IVF-PQ index")
    parser.add_argument("--train-size", type=int, default=65_536)
    parser.add_argument("--kill-after", type=int, default=4, help="chunks on disk before the kill -9")
    parser.add_argument("--recall-passages", type=int, default=3000, help="MiniLM sample for recall")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--encoded-log", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="r3rag-dense-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        corpus = workdir / "corpus.jsonl"
        queries = generate_corpus(corpus, args.passages)
        args.queries_file = workdir / "queries.json"
        args.queries_file.write_text(json.dumps(queries))
        print(
            f"generated {args.passages:,} passages ({corpus.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - started:.0f} s"
        )
        memory = memory_table(args, workdir, corpus)
        at_kill, rerun_rows, same = resume_check(args, workdir, corpus, memory["Flat"])
        source, recall_n, recalls = recall_table(args, workdir)
    print_tables(args, memory, (at_kill, rerun_rows, same), (source, recall_n, recalls))


def print_tables(args: argparse.Namespace, memory: dict, resume: tuple, recall: tuple) -> None:
    mib, n = 2**20, args.passages
    chunk_bytes = args.chunk * (1024 + args.dim * (4 + 2))
    fixed = chunk_bytes + 16 * n + args.train_size * args.dim * 4
    print(f"\n## Dense index, {n:,} generated passages, stand-in encoder (hashed words, {args.dim} dims)\n")
    print(
        "| index | build s | peak private MiB, build | bound MiB | peak RSS MiB, build "
        "| peak private MiB, search | peak RSS MiB, search | index file MiB | search s, 1000 q |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in memory.items():
        bound = m["baseline_anon"] + fixed + m["index_bytes"]
        cells = (m["build_anon"], bound, m["build_rss"], m["search_anon"], m["search_rss"], m["index_bytes"])
        print(
            f"| {m['factory']} | {m['build_seconds']:.0f} | "
            + " | ".join(f"{c / mib:.0f}" for c in cells)
            + f" | {m['search_seconds']:.1f} |"
        )
        report(
            f"{n:,}-passage build, peak private memory, {name} (stand-in encoder)",
            f"{m['build_anon'] / mib:.0f} MiB",
            f"bound {bound / mib:.0f} MiB: interpreter + index + chunk + 16 B/passage + sample",
        )
        report(
            f"{n:,}-passage search, peak private memory, {name}",
            f"{m['search_anon'] / mib:.0f} MiB",
            f"index file {m['index_bytes'] / mib:.0f} MiB, mapped",
        )
    print(
        f"\nInterpreter with faiss imported: {memory['Flat']['baseline_anon'] / mib:.0f} MiB private. Chunk: "
        f"{args.chunk:,} passages (texts <= 1 KiB each, vectors float32 + float16) = {chunk_bytes / mib:.0f} "
        f"MiB; 16 B/passage = {16 * n / mib:.0f} MiB; sample {args.train_size:,} x {args.dim} float32. Peak "
        "RSS also counts the pages of mapped files (shared between processes and reclaimable)."
    )
    at_kill, rerun_rows, same = resume
    print(
        f"\n## Resume after kill -9\n\nKilled with {at_kill:,} of {n:,} passages encoded; the rerun encoded "
        f"{rerun_rows:,} (expected {n - at_kill:,}); answers equal to the uninterrupted build's: {same}."
    )
    ok = rerun_rows == n - at_kill and same
    report(
        f"resume after kill -9 ({n:,} passages, Flat)",
        f"{'ok' if ok else 'FAILED'}: {rerun_rows:,} re-encoded",
        f"{n - at_kill:,} left at the kill, same answers",
    )
    source, size, recalls = recall
    print(
        f"\n## Recall@10 against Flat: MiniLM, {source} corpus (a sample of {size:,} passages, "
        f"{args.recall_queries} queries)\n\n| index | recall@10 |\n|---|---|"
    )
    for name, value in recalls.items():
        print(f"| {name} | {value:.3f} |")
        report(f"recall@10 vs Flat, {name} ({source}, MiniLM)", f"{value:.3f}")
    print(f"\n## Projected memory at {PAPER_PASSAGES:,} passages x {PAPER_DIM} dims\n")
    print(
        f"| index | bytes/vector at 768 dims | {n:,} x {args.dim}: formula / measured file "
        "| search RAM at 21M (index) | build RAM at 21M |\n|---|---|---|---|---|"
    )
    measured = {"Flat": memory["Flat"]["index_bytes"], "IVF-PQ": memory["IVF-PQ"]["index_bytes"]}
    build_extra = 32_768 * (1024 + PAPER_DIM * 6) + 16 * PAPER_PASSAGES + 262_144 * PAPER_DIM * 4
    for name in ("Flat", "SQfp16", "SQ8", "HNSW32", "IVF-PQ"):
        small = bytes_per_vector(name, args.dim, args.dim // 4) * n
        big = bytes_per_vector(name, PAPER_DIM, 64) * PAPER_PASSAGES
        check = (
            f"{small / mib:.0f} / {measured[name] / mib:.0f} MiB"
            if name in measured
            else f"{small / mib:.0f} MiB"
        )
        label = "IVF16384,PQ64" if name == "IVF-PQ" else name
        print(
            f"| {label} | {bytes_per_vector(name, PAPER_DIM, 64):.0f} | {check} | {big / GIB:.1f} GiB | "
            f"{(big + build_extra) / GIB:.1f} GiB |"
        )
    print(
        f"\nAlso on disk at 21M: embeddings.f16.npy, {PAPER_PASSAGES * PAPER_DIM * 2 / GIB:.0f} GiB (read a "
        f"chunk at a time, never loaded whole); passages.jsonl, about 13 GiB, and its offsets, "
        f"{8 * PAPER_PASSAGES / GIB:.2f} GiB (mapped). Search RAM is the index, mapped: shared by every "
        "process on the machine. Build RAM adds a 32,768-passage chunk, 16 B/passage and a 262,144-vector "
        "training sample to the index."
    )


if __name__ == "__main__":
    main()
