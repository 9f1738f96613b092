"""The LLM teacher through an endpoint: throughput with faults injected, then kill -9 and resume.

The endpoint is `_fake_openai.py` (a process on 127.0.0.1): every answer takes --latency seconds (2 s);
2.5% of requests get a 429 with Retry-After: 1 s at once, 2.5% a 500 after the latency, 1% hang forever; the
rest are valid steps (1 to 3 per question, then the gold answer, so every trajectory completes and is kept).
The teacher is the real command, `r3rag coldstart --teacher llm`, in its own process, on a BM25 index of a
small generated corpus.

1. Throughput: --questions questions at --concurrency 64 (per-request timeout 6 s, 6 retries). Answered calls
   per second, from the first request to the last answer, against the ideal concurrency / latency (target
   >= 80%; the same in the middle 80% of the run, without the start and the drain of the last questions),
   and questions lost: neither written nor recorded as failed (must be 0), and failed (0 expected:
   a call fails 7 times in a row with probability 0.06^7).
2. kill -9 and resume, on a second folder, while an outage makes every 25th question fail (500): the teacher
   is killed with SIGKILL once a third of the questions are written; rerun (outage still on) to the end: the
   outage questions are recorded as failed, retryable; the outage heals; a third run retries exactly those.
   Checked: every id written once, nothing lost, nothing duplicated; the rerun asked no question written
   before the kill; the failed questions were retried and kept.

3. The same teacher against a real OpenAI-compatible server, `transformers serve --continuous-batching`
   serving the embedded SmolLM2 on 127.0.0.1 (offline: the converted local folder), --serve-questions
   questions of --serve-tokens tokens per step at concurrency 1 and 8: generated tokens/s (SmolLM2 rarely
   writes a valid step, so this measures the calls, not the yield). Minutes on a loaded 2-core CPU.

Headline figures for `make bench`: throughput as a share of the ideal, questions lost, the resume checks, and
the speed-up of concurrency 8 over 1 against transformers serve.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _summary import report

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from r3rag.config import IndexBuildConfig  # noqa: E402  (after the offline switches)
from r3rag.retrieval.index import build_index  # noqa: E402

HERE = Path(__file__).resolve().parent
R3RAG = Path(sys.executable).with_name("r3rag")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeServer:
    """`_fake_openai.py` in a process, for the duration of a ``with``."""

    def __init__(self, latency: float, outage: Path | None = None):
        self.port = free_port()
        command = [sys.executable, str(HERE / "_fake_openai.py"), "--port", str(self.port)]
        command += ["--latency", str(latency)]
        if outage is not None:
            command += ["--outage-file", str(outage)]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the fake OpenAI server did not start") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as response:
            return dict(json.load(response))

    def reset(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()  # a graceful stop would wait for the hung requests
        self.process.wait(timeout=10)


def setup(folder: Path, questions: int) -> tuple[Path, Path, list[str]]:
    """A BM25 index of a small generated corpus and a question file of ``questions`` questions."""
    folder.mkdir(parents=True)
    corpus = folder / "corpus.jsonl"
    with corpus.open("w") as f:
        for n in range(300):
            f.write(
                json.dumps({"id": f"d{n}", "contents": f"Fact {n}\nfact {n} part {n % 3} says {n}."}) + "\n"
            )
    index = folder / "index"
    build_index(IndexBuildConfig(corpus=corpus, out=index), progress=False)
    ids = [f"Q{n}" for n in range(questions)]
    file = folder / "questions.jsonl"
    with file.open("w") as f:
        for qid in ids:
            record = {"id": qid, "question": f"Question {qid}?", "golden_answers": [f"Answer {qid[1:]}"]}
            f.write(json.dumps(record) + "\n")
    return index, file, ids


def teacher_command(
    server: FakeServer, index: Path, questions: Path, out: Path, args: argparse.Namespace, retries: int
) -> list[str]:
    return [
        str(R3RAG),
        "coldstart",
        "--teacher",
        "llm",
        "--base-url",
        server.url,
        "--model",
        "fake",
        "--questions",
        str(questions),
        "--index",
        str(index),
        "--out",
        str(out),
        "--concurrency",
        str(args.concurrency),
        "--timeout",
        str(args.timeout),
        "--retries",
        str(retries),
        "--backoff-s",
        "0.5",
        "--attempts",
        "1",
    ]


def teach(command: list[str]) -> None:
    """Run the teacher to its end; its output only if it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"the teacher failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


def ids_in(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.endswith("}")]


def throughput(folder: Path, args: argparse.Namespace) -> None:
    index, questions, ids = setup(folder, args.questions)
    out = folder / "run"
    with FakeServer(args.latency) as server:
        started = time.time()
        teach(teacher_command(server, index, questions, out, args, retries=6))
        wall = time.time() - started
        stats = server.stats()
    counts = stats["counts"]
    written, failed = ids_in(out / "trajectories.jsonl"), ids_in(out / "trajectories.failed.jsonl")
    lost = len(set(ids) - set(written) - set(failed))
    busy = stats["last_answer"] - stats["first_request"]
    rate, ideal = counts["ok"] / busy, args.concurrency / args.latency
    start, end = stats["first_request"] + 0.1 * busy, stats["last_answer"] - 0.1 * busy
    steady = sum(start <= t <= end for t in stats["answers"]) / (end - start)
    print(f"\n## Teacher: {len(ids)} questions, concurrency {args.concurrency}, latency {args.latency} s")
    print(
        "| requests | answered | 429 | 500 | hung | calls/s | ideal | share | steady share | in flight | q/s "
        "| lost | failed | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {counts['requests']} | {counts['ok']} | {counts.get('429', 0)} | {counts.get('500', 0)} | "
        f"{counts.get('hung', 0)} | {rate:.1f} | {ideal:.1f} | {rate / ideal:.0%} | {steady / ideal:.0%} | "
        f"{stats['mean_in_flight']:.1f} | {len(written) / busy:.1f} | {lost} | {len(failed)} | {wall:.0f} s |"
    )
    print(
        "calls/s, q/s: from the first request to the last answer (the drain of the last questions included); "
        "steady share: answered calls/s in the middle 80% of that time vs the ideal; in flight: mean "
        "requests being served by the server (hung ones not counted); wall: the command, start-up included"
    )
    report(
        "teacher throughput at concurrency 64, faults on",
        f"{rate / ideal:.0%} of ideal ({rate:.1f} calls/s)",
        ">= 80%",
    )
    report(
        "teacher throughput, steady state (middle 80% of the run)", f"{steady / ideal:.0%} of ideal", ">= 80%"
    )
    report("teacher questions lost / failed", f"{lost} / {len(failed)}", "0 / 0")


def kill_and_resume(folder: Path, args: argparse.Namespace) -> None:
    index, questions, ids = setup(folder, args.kill_questions)
    out, outage = folder / "run", folder / "outage.txt"
    down = ids[::25]
    outage.write_text("\n".join(down))
    trajectories, failures = out / "trajectories.jsonl", out / "trajectories.failed.jsonl"
    with FakeServer(args.latency, outage) as server:
        process = subprocess.Popen(
            teacher_command(server, index, questions, out, args, retries=3),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while len(ids_in(trajectories)) < len(ids) // 3 and process.poll() is None:
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before_kill = ids_in(trajectories)
        server.reset()
        teach(teacher_command(server, index, questions, out, args, retries=3))
        asked_by_rerun = set(server.stats()["asked"])
        after_rerun, failed = ids_in(trajectories), set(ids_in(failures))
        outage.unlink()
        server.reset()
        teach(teacher_command(server, index, questions, out, args, retries=3))
        asked_by_retry = set(server.stats()["asked"])
    final = ids_in(trajectories)
    kept = {
        json.loads(line)["id"] for line in trajectories.read_text().splitlines() if '"kept": true' in line
    }
    lost = len(set(ids) - set(final))
    duplicated = len(final) - len(set(final))
    resent = len(asked_by_rerun & set(before_kill))
    print(f"\n## kill -9 and resume: {len(ids)} questions, outage on {len(down)} of them")
    print(
        "| written before kill | rerun: written, failed | rerun re-asked written ones | retry run asked | "
        "final ids | lost | duplicated | failed retried and kept |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(before_kill)} | {len(after_rerun) - len(before_kill)}, {len(failed)} | {resent} | "
        f"{len(asked_by_retry)} | {len(final)} | {lost} | {duplicated} | "
        f"{len(failed & kept)} of {len(failed)} |"
    )
    ok = lost == 0 and duplicated == 0 and resent == 0 and failed == set(down) and asked_by_retry == failed
    report(
        "teacher kill -9 + resume: lost / duplicated / re-asked",
        f"{lost} / {duplicated} / {resent}",
        "0 / 0 / 0",
    )
    report(
        "teacher failed questions retried and kept",
        f"{len(failed & kept)} of {len(failed)}",
        f"{len(down)} of {len(down)}",
    )
    if not ok:
        raise SystemExit("kill -9 and resume: a check failed (see the table)")


def served(folder: Path, args: argparse.Namespace) -> None:
    """The teacher against `transformers serve` (continuous batching) serving the embedded SmolLM2 on
    127.0.0.1, in this process: questions/s and generated tokens/s at concurrency 1 and 8. SmolLM2 rarely
    writes a valid step, so most attempts end as format errors: this measures the calls, not the yield."""
    from r3rag.coldstart.records import run_teacher
    from r3rag.coldstart.teacher import LLMTeacher
    from r3rag.config import AgentConfig, ColdStartConfig, JudgeConfig
    from r3rag.data.datasets import load_dataset
    from r3rag.llm.models import resolve_model
    from r3rag.llm.openai import OpenAIGenerator
    from r3rag.retrieval.index import load_index
    from r3rag.rewards.judges import CorrectnessJudge

    serve = Path(sys.executable).with_name("transformers")
    if not serve.is_file():
        print("\n(transformers serve: no `transformers` command in this environment; skipped)")
        return
    index, questions, _ = setup(folder, args.serve_questions)
    model, port = resolve_model("smollm2-135m-instruct"), free_port()
    command = [
        str(serve),
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--continuous-batching",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("\n(transformers serve did not start; skipped)")
                    return
                time.sleep(1)
        warm = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        warm_up = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(warm).encode(),
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(warm_up, timeout=300).close()  # the first request pays for the set-up
        config = ColdStartConfig(
            attempts=1,
            format_retries=0,
            teacher_max_new_tokens=args.serve_tokens,
            agent=AgentConfig(top_k=2, max_doc_chars=512),
        )
        examples, rows = load_dataset(questions), []
        for concurrency in (1, 8):
            generator = OpenAIGenerator(
                f"http://127.0.0.1:{port}/v1", model, concurrency=concurrency, timeout=300
            )
            teacher = LLMTeacher(
                generator, load_index(index), config, CorrectnessJudge(JudgeConfig(correctness_llm=False))
            )
            started = time.perf_counter()
            summary = run_teacher(teacher, examples, folder / f"served-{concurrency}.jsonl")
            seconds = time.perf_counter() - started
            stats = generator.scheduler.stats
            rows.append((concurrency, summary.written, stats.sent, stats.completion_tokens, seconds))
            generator.close()
    finally:
        server.kill()
        server.wait(timeout=10)
    print(f"\n## transformers serve (continuous batching), embedded SmolLM2, {len(examples)} questions")
    print("| concurrency | questions | calls | generated tokens | seconds | questions/s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for concurrency, written, calls, tokens, seconds in rows:
        print(
            f"| {concurrency} | {written} | {calls} | {tokens} | {seconds:.1f} | {written / seconds:.2f} | "
            f"{tokens / seconds:.1f} |"
        )
    speedup = (rows[1][3] / rows[1][4]) / (rows[0][3] / rows[0][4])
    report("teacher via transformers serve: tokens/s at concurrency 8 vs 1", f"{speedup:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=2000, help="Questions of the throughput run.")
    parser.add_argument("--kill-questions", type=int, default=400, help="Questions of the kill -9 run.")
    parser.add_argument(
        "--serve-questions", type=int, default=4, help="Questions sent to transformers serve."
    )
    parser.add_argument(
        "--serve-tokens", type=int, default=32, help="Tokens per step from transformers serve."
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--latency", type=float, default=2.0, help="Seconds the fake server takes per answer."
    )
    parser.add_argument("--timeout", type=float, default=6.0, help="Per-request timeout of the teacher.")
    args, _ = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="r3rag-bench-teacher-") as tmp:
        throughput(Path(tmp) / "throughput", args)
        kill_and_resume(Path(tmp) / "kill", args)
        served(Path(tmp) / "served", args)


if __name__ == "__main__":
    main()
