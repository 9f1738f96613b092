"""The agent server under load: throughput and latency with 1 and with 16 concurrent clients.

Serves the embedded SmolLM2 (untrained; ``--model`` takes a checkpoint such as a quickstart's
``ppo/final``) with BM25 over the synthetic world through ``r3rag serve agent``'s app on a loopback port,
then sends the dev questions over HTTP: first from one client, one question after another, then from 16
clients at once. Prints questions per minute and p50/p99 latency of each, the generation batches the server
ran (mean conversations per batch: the shared batches at work), and the throughput ratio 16 vs 1, the
headline figure for `make bench` (one batched forward pass serves every waiting client, so the ratio should
be far above 1; 16x is the ideal of free batching).

Steps are short by default (``--max-new-tokens 64``) to keep the run to a few minutes on 2 CPU cores; the
untrained model mostly writes malformed steps, so a question is its first step and three re-generations.

    .venv/bin/python benchmarks/agent_api.py
    .venv/bin/python benchmarks/agent_api.py --model runs/quickstart/ppo/final --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _summary import report  # noqa: E402  (after the offline switches)

from r3rag.config import AgentConfig, AgentServerConfig, IndexBuildConfig  # noqa: E402
from r3rag.llm.models import EMBEDDED_POLICY  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-quantile, interpolated between the nearest ranks (q=0.5: the median)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_POLICY)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--single", type=int, default=4, help="Questions the single client asks.")
    parser.add_argument("--per-client", type=int, default=1, help="Questions each concurrent client asks.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 weights (default: where the device computes bf16 natively; r3rag.device.resolve_bf16).",
    )
    args = parser.parse_args()

    import httpx

    from r3rag.data.world import generate_world, write_world
    from r3rag.device import resolve_bf16, resolve_device
    from r3rag.llm.hf import HFGenerator
    from r3rag.retrieval.index import build_index, load_index
    from r3rag.retrieval.server import serve_in_thread
    from r3rag.serving.agent_api import create_app

    args.bf16 = resolve_bf16(args.bf16, resolve_device())
    world = generate_world()
    questions = [e.question for e in world.dev]
    need = args.single + args.clients * args.per_client
    if len(questions) < need:
        sys.exit(f"the world has {len(questions)} dev questions; this run needs {need}")
    with tempfile.TemporaryDirectory(prefix="r3rag-agent-api-") as tmp:
        corpus = write_world(world, Path(tmp) / "world")["corpus"]
        build_index(IndexBuildConfig(corpus=corpus, out=Path(tmp) / "index"))
        retriever = load_index(Path(tmp) / "index")
        agent = AgentConfig(max_new_tokens=args.max_new_tokens, max_steps=args.max_steps)
        config = AgentServerConfig(max_batch_rows=64, max_concurrent=max(64, args.clients), agent=agent)
        generator = HFGenerator.from_name(args.model, batch_size=config.max_batch_rows, bf16=args.bf16)
        app = create_app(generator, retriever, config)
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=3600) as http:

            def ask(question: str) -> float:
                started = time.perf_counter()
                response = http.post("/v1/ask", json={"question": question})
                response.raise_for_status()
                return time.perf_counter() - started

            ask(questions[-1])  # warm-up: the first forward pass pays for lazy initialisation
            rows = []
            for clients, batch in (
                (1, questions[: args.single]),
                (args.clients, questions[args.single : need]),
            ):
                before = http.get("/stats").json()["generation"]
                started = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    latencies = list(pool.map(ask, batch))
                wall = time.perf_counter() - started
                after = http.get("/stats").json()["generation"]
                batches = after["batches"] - before["batches"]
                rows.append(
                    {
                        "clients": clients,
                        "questions": len(batch),
                        "wall_s": wall,
                        "per_min": 60 * len(batch) / wall,
                        "p50_s": percentile(latencies, 0.5),
                        "p99_s": percentile(latencies, 0.99),
                        "mean_s": statistics.fmean(latencies),
                        "rows_per_batch": (after["items"] - before["items"]) / batches if batches else 0.0,
                    }
                )
    print(f"\nagent API: {args.model}, max_new_tokens={args.max_new_tokens}, bf16={args.bf16}\n")
    print("| clients | questions | wall s | questions/min | p50 s | p99 s | conversations/batch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['questions']} | {r['wall_s']:.1f} | {r['per_min']:.1f} "
            f"| {r['p50_s']:.1f} | {r['p99_s']:.1f} | {r['rows_per_batch']:.1f} |"
        )
    one, many = rows
    ratio = many["per_min"] / one["per_min"]
    latency_ratio = many["p50_s"] / one["p50_s"]
    print(f"\nthroughput {args.clients} vs 1 client: {ratio:.1f}x; p50 latency {latency_ratio:.2f}x\n")
    report("agent API questions/min, 1 client", f"{one['per_min']:.1f}")
    report(f"agent API questions/min, {args.clients} clients", f"{many['per_min']:.1f}")
    report(
        f"agent API p50 / p99 latency, {args.clients} clients", f"{many['p50_s']:.1f} / {many['p99_s']:.1f} s"
    )
    report(
        f"agent API throughput, {args.clients} vs 1 client",
        f"{ratio:.1f}x",
        f"far above 1x ({args.clients}x ideal)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
