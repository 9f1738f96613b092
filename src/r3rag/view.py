"""Terminal rendering of steps and trajectories (rich), for ``r3rag ask`` and anything else that shows a run.

Kept apart from the CLI so the same view serves every command that prints trajectories, and kept free of
any logic: it only reads :class:`~r3rag.schema.Step` and :class:`~r3rag.schema.Trajectory`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from r3rag.schema import Step, Trajectory, TrajectoryStatus

_STATUS_STYLE = {
    TrajectoryStatus.ANSWERED: "green",
    TrajectoryStatus.OUT_OF_STEPS: "yellow",
    TrajectoryStatus.FORMAT_ERROR: "red",
    TrajectoryStatus.RUNNING: "white",
}


def step_panel(step: Step, max_raw_chars: int = 400) -> Panel:
    """One step: analysis, then the query and the titles it fetched, or the answer, or what was malformed."""
    lines: list[Text] = []
    if not step.valid:
        lines.append(Text.assemble(("format error: ", "bold red"), "; ".join(step.issues)))
        raw = step.raw if len(step.raw) <= max_raw_chars else step.raw[:max_raw_chars] + " ..."
        lines.append(Text.assemble(("model wrote: ", "bold"), raw))
        return Panel(Group(*lines), title=f"Step {step.index}", title_align="left", border_style="red")
    lines.append(Text.assemble(("analysis: ", "bold"), step.analysis))
    if step.query is not None:
        lines.append(Text.assemble(("query: ", "bold cyan"), step.query))
        titles = [p.title or p.id for p in step.passages]
        lines.append(
            Text.assemble(("retrieved: ", "bold"), " | ".join(titles) if titles else "(nothing new)")
        )
        style = "cyan"
    else:
        lines.append(Text.assemble(("answer: ", "bold green"), step.answer or ""))
        style = "green"
    return Panel(Group(*lines), title=f"Step {step.index}", title_align="left", border_style=style)


def print_outcome(console: Console, trajectory: Trajectory) -> None:
    """The end of one trajectory: status, answer, token counts."""
    style = _STATUS_STYLE[trajectory.status]
    answer = trajectory.final_answer if trajectory.final_answer is not None else "-"
    console.print(
        Text.assemble(
            (f"{trajectory.status.value}", f"bold {style}"),
            f"  answer: {answer}  ",
            (f"({trajectory.prompt_tokens} prompt + {trajectory.completion_tokens} generated tokens)", "dim"),
        )
    )


def status_counts(trajectories: Sequence[Trajectory]) -> str:
    """``answered 12, out-of-steps 3, format-error 1`` for a batch summary."""
    counts = Counter(t.status.value for t in trajectories)
    return ", ".join(
        f"{status.value} {counts[status.value]}" for status in TrajectoryStatus if counts[status.value]
    )
