"""The run viewer (``r3rag view RUN``): a local Gradio page over the trajectories a run folder holds.

Tabs: *Trajectories* (filter by system, dataset, question type, correct or wrong, how it ended; open one to
read its steps, queries and passages, gold passages marked, PPO reward parts per step), *Compare* (two
systems on the same question, side by side), *Plots* (the run's png files) and *Ask* (a live trajectory,
streamed from a served agent or a local model). It reads the files the stages wrote (:mod:`.records`) and
writes nothing. Gradio is an optional dependency: ``pip install 'r3rag[view]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3rag.config import ViewerConfig
from r3rag.llm.base import Generator
from r3rag.serving.live import Event, local_events, remote_events
from r3rag.serving.records import ALL, VERDICTS, Record, Run, load_run, select
from r3rag.serving.render import live_html, record_html

if TYPE_CHECKING:
    import gradio as gr

COLUMNS = ["#", "system", "dataset", "type", "question", "prediction", "verdict", "ended", "steps"]
WIDTHS: list[str | int] = ["5%", "12%", "7%", "10%", "34%", "12%", "7%", "9%", "4%"]


def table(records: list[Record]) -> list[list[Any]]:
    """The listing: one row per record, its number first (the page opens a record by it)."""
    return [
        [
            r.number,
            r.system,
            r.dataset,
            r.qtype,
            r.question,
            r.prediction,
            {True: "correct", False: "wrong", None: "not scored"}[r.correct],
            r.ended,
            len(r.trajectory.steps),
        ]
        for r in records
    ]


def compare_html(run: Run, question_id: str, left: str, right: str) -> tuple[str, str]:
    """The first trajectory of each of two systems on one question (or why there is none)."""

    def one(system: str) -> str:
        for r in run.records:
            if r.question_id == question_id and r.system == system:
                return record_html(r)
        return f"<p>{escape(system)} has no trajectory for {escape(question_id)}</p>"

    return one(left), one(right)


def build(run: Run, config: ViewerConfig, ask: Callable[[str], Iterator[Event]] | None) -> gr.Blocks:
    """The page over ``run``; ``ask`` streams a live trajectory (None: the ask tab says how to get one)."""
    import gradio as gr

    systems = run.values("system")
    questions = sorted({r.question_id for r in run.records})

    def listing(
        system: str, dataset: str, qtype: str, verdict: str, ended: str
    ) -> tuple[list[list[Any]], str]:
        records = select(run, system, dataset, qtype, verdict, ended)
        shown = records[: config.max_listed]
        more = f" (first {len(shown)} shown)" if len(shown) < len(records) else ""
        return table(shown), f"{len(records)} of {len(run.records)} trajectories{more}"

    def open_record(number: str) -> str:
        try:
            return record_html(run.records[int(float(number))])
        except (ValueError, IndexError):
            return f"<p>no trajectory #{escape(number)}: give a number from the list's first column</p>"

    def clicked(event: gr.SelectData) -> tuple[str, str]:
        number = str(event.row_value[0])
        return number, open_record(number)

    # gradio finds the event argument by its annotation, which postponed annotations leave as a string
    clicked.__annotations__["event"] = gr.SelectData

    with gr.Blocks(title=f"r3rag: {run.folder.name}") as page:
        gr.Markdown(f"## r3rag run `{run.folder}`: {len(run.records)} trajectories")
        if run.problems:
            gr.Markdown("\n".join(f"- {p}" for p in run.problems))
        with gr.Tab("Trajectories"):
            with gr.Row():
                system = gr.Dropdown([ALL, *systems], value=ALL, label="system (method)")
                dataset = gr.Dropdown([ALL, *run.values("dataset")], value=ALL, label="dataset")
                qtype = gr.Dropdown([ALL, *run.values("qtype")], value=ALL, label="question type")
            with gr.Row():
                verdict = gr.Radio([ALL, *VERDICTS], value=ALL, label="verdict", elem_id="verdict")
                ended = gr.Radio([ALL, *run.values("ended")], value=ALL, label="ended", elem_id="ended")
            rows0, count0 = listing(ALL, ALL, ALL, ALL, ALL)
            count = gr.Markdown(count0, elem_id="count")
            rows = gr.Dataframe(
                rows0, headers=COLUMNS, interactive=False, wrap=True, elem_id="listing", column_widths=WIDTHS
            )
            with gr.Row():
                number = gr.Textbox(label="open trajectory #", scale=1, elem_id="open-number")
                open_button = gr.Button("Open", scale=0, elem_id="open-button")
            trajectory = gr.HTML(elem_id="trajectory")
            filters: list[Any] = [system, dataset, qtype, verdict, ended]
            for control in filters:
                control.change(listing, filters, [rows, count])
            open_button.click(open_record, number, trajectory)
            number.submit(open_record, number, trajectory)
            rows.select(clicked, None, [number, trajectory])
        with gr.Tab("Compare"):
            first = questions[0] if questions else None
            pair = [r.system for r in run.records if r.question_id == first][:2]
            with gr.Row():
                question = gr.Dropdown(questions, value=first, label="question")
                left = gr.Dropdown(systems, value=pair[0] if pair else None, label="left")
                right = gr.Dropdown(systems, value=pair[-1] if pair else None, label="right")
            with gr.Row():
                left_html, right_html = gr.HTML(elem_id="left"), gr.HTML(elem_id="right")
            compare = [question, left, right]
            for control in compare:
                control.change(lambda q, a, b: compare_html(run, q, a, b), compare, [left_html, right_html])
            page.load(lambda q, a, b: compare_html(run, q, a, b), compare, [left_html, right_html])
        with gr.Tab("Plots"):
            if run.plots:
                gr.Gallery(
                    [(str(p), str(p.relative_to(run.folder))) for p in run.plots], columns=2, height="auto"
                )
            else:
                gr.Markdown("This run folder holds no plot (png).")
        with gr.Tab("Ask"):
            _ask_tab(gr, config, ask)
    return page


def _ask_tab(gr: Any, config: ViewerConfig, ask: Callable[[str], Iterator[Event]] | None) -> None:
    if ask is None:
        gr.Markdown(
            "Start the viewer with `--agent-url http://127.0.0.1:8002` (a `r3rag serve agent`) or "
            "`--index INDEX` (a local model, `--generator.model`) to ask questions here."
        )
        return
    where = config.agent_url or f"a local model over {config.index}"
    gr.Markdown(f"Questions go to {where}; each step shows as it finishes.")
    question = gr.Textbox(label="question", elem_id="ask-question")
    go = gr.Button("Ask", elem_id="ask-button")
    live = gr.HTML(elem_id="ask-live")

    def stream(text: str) -> Iterator[str]:
        steps: list[dict[str, Any]] = []
        yield live_html(text, steps, None, None)
        for event, data in ask(text):
            if event == "step":
                steps.append(data)
                yield live_html(text, steps, None, None)
            elif event == "answer":
                yield live_html(text, steps, data, None)
            else:
                yield live_html(text, steps, None, str(data.get("detail")))

    go.click(stream, question, live)
    question.submit(stream, question, live)


def asker(config: ViewerConfig, generator: Generator | None) -> Callable[[str], Iterator[Event]] | None:
    """How the ask tab gets its trajectories: the served agent, else ``generator`` over ``config.index``."""
    if config.agent_url is not None:
        key = os.environ.get(config.agent_api_key_env, "").strip() or None
        url = config.agent_url
        return lambda question: remote_events(url, question, key)
    if config.index is None or generator is None:
        return None
    from r3rag.agent import Agent
    from r3rag.config import RetrievalConfig
    from r3rag.retrieval import open_retriever

    local = Agent(generator, open_retriever(RetrievalConfig(source=config.index)), config.agent)
    return lambda question: local_events(local, question)


def launch(folder: Path, config: ViewerConfig, generator: Generator | None) -> None:
    """Serve the page until interrupted (the browser is not opened: the URL is printed)."""
    run = load_run(folder)
    page = build(run, config, asker(config, generator))
    page.launch(
        server_name=config.host,
        server_port=config.port,
        allowed_paths=[str(run.folder.resolve())],
        inbrowser=False,
        share=False,
    )
