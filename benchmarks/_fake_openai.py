"""A fake OpenAI-compatible teacher for the benchmarks: fixed latency, injected faults, step-format answers.

Run as a process (``python _fake_openai.py --port P ...``). Every chat request waits ``--latency`` seconds,
then, drawn at random (seeded): ``--rate-limit`` of requests get a 429 with ``Retry-After: 1``,
``--server-error`` a 500, ``--hang`` never answer (the client must abandon them), the rest a valid step. The
answer follows the step format: question ``Question Qn?`` needs ``1 + n % 3`` steps, queries first, then the
final answer ``Answer n`` (its gold answer), so every trajectory completes and is kept. Questions whose ids
are listed in ``--outage-file`` (while it exists) always get a 500: an outage the benchmark heals by deleting
the file. ``GET /stats`` returns the counts of what was served, the questions asked and when the first request
came, when each answer left and the last one (Unix time); ``POST /reset`` starts them afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

QUESTION = re.compile(r"Question (Q\d+)\?")


def step_text(qid: str, index: int) -> str:
    """The next step of question ``qid``: a query until its last step, then its gold answer."""
    n = int(qid[1:])
    if index < 1 + n % 3:
        return (
            f"Step {index}:\nThe problem analysis: I need a fact.\nThe retrieval query: fact {n} part {index}"
        )
    return f"Step {index}:\nThe problem analysis: The documents say so.\nThe final answer: Answer {n}"


def app(args: argparse.Namespace) -> FastAPI:
    server = FastAPI()
    counts: Counter[str] = Counter()
    asked: set[str] = set()
    times: dict[str, float] = {}
    answers: list[float] = []  # when each answer left
    rng = random.Random(args.seed)
    outage = Path(args.outage_file) if args.outage_file else None

    active = {"now": 0, "area": 0.0, "since": 0.0}  # requests being served, and their integral over time

    def track(change: int) -> None:
        now = time.time()
        if active["since"]:
            active["area"] += active["now"] * (now - active["since"])
        active["now"] += change
        active["since"] = now

    @server.get("/stats")
    async def stats() -> dict[str, Any]:
        span = times.get("last_answer", 0.0) - times.get("first_request", 0.0)
        mean = active["area"] / span if span > 0 else 0.0
        return {
            "counts": dict(counts),
            "asked": sorted(asked),
            "mean_in_flight": mean,
            "answers": answers,
            **times,
        }

    @server.post("/reset")
    async def reset() -> dict[str, str]:
        counts.clear()
        asked.clear()
        times.clear()
        answers.clear()
        active.update(now=0, area=0.0, since=0.0)
        return {"reset": "ok"}

    @server.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        track(+1)
        counted = [True]
        try:
            return await answer(request, counted)
        finally:
            if counted[0]:
                track(-1)

    async def answer(request: Request, counted: list[bool]) -> Any:
        """The reply; a hung request stops counting as served (the client abandons it; the server cannot
        tell when)."""
        try:
            body = await request.json()
        except ClientDisconnect:  # the teacher was killed (kill -9) while sending
            return Response(status_code=499)
        user = body["messages"][-1]["content"]
        found = QUESTION.search(user)
        qid = found.group(1) if found else "Q0"
        counts["requests"] += 1
        asked.add(qid)
        times.setdefault("first_request", time.time())
        draw = rng.random()
        if outage is not None and outage.is_file() and qid in outage.read_text().split():
            counts["outage"] += 1
            return JSONResponse({"error": {"message": "outage"}}, status_code=500)
        if draw < args.hang:
            counts["hung"] += 1
            track(-1)
            counted[0] = False
            await asyncio.sleep(3600)
        await asyncio.sleep(args.latency)
        if draw < args.hang + args.rate_limit:
            counts["429"] += 1
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "1"}
            )
        if draw < args.hang + args.rate_limit + args.server_error:
            counts["500"] += 1
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        index = user.count("The retrieval query:") + 1  # one per earlier step
        counts["ok"] += 1
        times["last_answer"] = time.time()
        answers.append(times["last_answer"])
        return {
            "id": "fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": step_text(qid, index)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(user) // 4,
                "completion_tokens": 30,
                "total_tokens": len(user) // 4 + 30,
            },
        }

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--rate-limit", type=float, default=0.025)
    parser.add_argument("--server-error", type=float, default=0.025)
    parser.add_argument("--hang", type=float, default=0.01)
    parser.add_argument("--outage-file", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    uvicorn.run(app(args), host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
