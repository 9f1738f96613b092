"""HTML for the run viewer: one trajectory, step by step, with its passages (gold ones marked) and, for a PPO
rollout, each step's reward parts. Every text from a file or a model is escaped: a trajectory is data, and the
page must not run what a model wrote."""

from __future__ import annotations

from html import escape
from typing import Any

from r3rag.schema import Step
from r3rag.serving.records import Record

STYLE = """
<style>
.r3-traj { font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.4; }
.r3-head { margin-bottom: 8px; }
.r3-badge { display: inline-block; padding: 1px 6px; border-radius: 4px; font-size: 12px; margin-right: 4px; }
.r3-ok { background: #d1f2d6; color: #14532d; } .r3-bad { background: #fde2e1; color: #7f1d1d; }
.r3-none { background: #e5e7eb; color: #374151; }
.r3-step { border-left: 4px solid #60a5fa; padding: 4px 10px; margin: 8px 0; }
.r3-step.r3-answer { border-color: #22c55e; } .r3-step.r3-invalid { border-color: #ef4444; }
.r3-passage { margin: 4px 0 4px 12px; padding: 3px 6px; border: 1px solid #e5e7eb; border-radius: 4px; }
.r3-passage.r3-gold { border-color: #f59e0b; background: #fffbeb; }
.r3-reward { border-collapse: collapse; margin: 4px 0; font-size: 12px; }
.r3-reward td, .r3-reward th { border: 1px solid #d1d5db; padding: 2px 6px; text-align: right; }
.r3-raw { white-space: pre-wrap; font-family: monospace; font-size: 12px; color: #6b7280; }
</style>
"""

_REWARD_PARTS = ("format", "outcome", "process", "relevance", "total")


def verdict(correct: bool | None) -> str:
    if correct is None:
        return '<span class="r3-badge r3-none">not scored</span>'
    return (
        '<span class="r3-badge r3-ok">correct</span>'
        if correct
        else '<span class="r3-badge r3-bad">wrong</span>'
    )


def record_html(record: Record) -> str:
    """The whole trajectory of ``record``: who made it, the question and gold, each step, the outcome."""
    t = record.trajectory
    meta = " · ".join(
        escape(part) for part in (record.dataset, record.qtype, record.question_id, record.source) if part
    )
    golds = ", ".join(escape(g) for g in record.golds) or "(unknown)"
    head = [
        f'<div class="r3-head"><b>{escape(record.system)}</b> <small>{meta}</small><br>',
        f"<b>Question:</b> {escape(record.question)}<br>",
        f"<b>Gold:</b> {golds}<br>",
        f"<b>Prediction:</b> {escape(t.final_answer or '-')} {verdict(record.correct)}",
        f'<span class="r3-badge r3-none">{escape(record.ended)}</span>',
    ]
    if record.note:
        head.append(f'<span class="r3-badge r3-bad">{escape(record.note)}</span>')
    if record.reward is not None:
        head.append(
            f'<span class="r3-badge r3-none">lambda_T {_number(record.reward.get("lambda_t"))}</span>'
        )
    head.append("</div>")
    rewards = {int(s["index"]): s for s in (record.reward or {}).get("steps", [])}
    steps = [step_html(step, record.gold_ids, rewards.get(step.index)) for step in t.steps]
    if not steps:
        steps = ["<p>(no steps)</p>"]
    return STYLE + f'<div class="r3-traj" data-record="{record.number}">' + "".join(head + steps) + "</div>"


def step_html(step: Step, gold_ids: set[str], reward: dict[str, Any] | None = None) -> str:
    """One step: analysis, then its query and passages (gold marked), or its answer, or what was malformed."""
    if not step.valid:
        kind, body = (
            "r3-invalid",
            [
                f"<b>format error:</b> {escape('; '.join(step.issues))}",
                f'<div class="r3-raw">{escape(step.raw)}</div>',
            ],
        )
    elif step.query is not None:
        kind, body = (
            "",
            [
                f"<b>Analysis:</b> {escape(step.analysis)}<br>",
                f"<b>Query:</b> {escape(step.query)}",
                *(_passage_html(p.id, p.title, p.text, p.id in gold_ids) for p in step.passages),
            ],
        )
        if not step.passages:
            body.append("<div><i>(no new passage)</i></div>")
    else:
        kind, body = (
            "r3-answer",
            [
                f"<b>Analysis:</b> {escape(step.analysis)}<br>",
                f"<b>Final answer:</b> {escape(step.answer or '')}",
            ],
        )
    if reward is not None:
        body.append(_reward_table(reward))
    return f'<div class="r3-step {kind}"><b>Step {step.index}</b><br>' + "".join(body) + "</div>"


def _passage_html(passage_id: str, title: str, text: str, gold: bool) -> str:
    mark = '<span class="r3-badge r3-ok">gold</span>' if gold else ""
    css = "r3-passage r3-gold" if gold else "r3-passage"
    return (
        f'<div class="{css}" data-passage="{escape(passage_id)}">{mark}<b>{escape(title)}</b> '
        f"<small>{escape(passage_id)}</small><br>{escape(text)}</div>"
    )


def _reward_table(reward: dict[str, Any]) -> str:
    cells = "".join(f"<td>{_number(reward.get(part))}</td>" for part in _REWARD_PARTS)
    header = "".join(f"<th>{part}</th>" for part in _REWARD_PARTS)
    return f'<table class="r3-reward"><tr>{header}</tr><tr>{cells}</tr></table>'


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else escape(str(value))


def live_html(
    question: str, steps: list[dict[str, Any]], final: dict[str, Any] | None, error: str | None
) -> str:
    """The ask tab: the steps received so far (the API's step dicts), then the answer or the error."""
    parts = [STYLE, '<div class="r3-traj">', f"<b>Question:</b> {escape(question)}"]
    parts += [step_html(Step.from_dict(step), set()) for step in steps]
    if final is not None:
        parts.append(
            f'<div class="r3-head"><b>Answer:</b> {escape(final.get("answer") or "-")} '
            f'<span class="r3-badge r3-none">{escape(str(final.get("status")))}</span> '
            f"<small>{_number(final.get('seconds'))} s</small></div>"
        )
    elif error is not None:
        parts.append(f'<div class="r3-badge r3-bad">{escape(error)}</div>')
    else:
        parts.append("<p><i>thinking ...</i></p>")
    return "".join(parts) + "</div>"
