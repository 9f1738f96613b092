"""The LLM teacher's system prompt: its role, the step format, how to decompose, and worked examples.

The teacher sees the same user turn as the policy (the question and every earlier step with its documents,
rendered by :mod:`r3rag.steps`), so the steps it writes can be used as SFT targets unchanged; only the system
turn differs. The worked examples are built from :class:`~r3rag.schema.Step` objects and rendered by the
same functions, so they can never drift from the format the parser reads. Their entities are invented: the
examples teach the procedure, not facts.
"""

from __future__ import annotations

from r3rag.schema import Passage, Step
from r3rag.steps import format_step, render_context

_ROLE = """\
You are an expert at answering multi-hop questions with a search engine. You break a question into simple \
sub-questions, search for one missing fact at a time, read the documents each search returns, and answer \
only from facts the documents state."""

_FORMAT = """\
You receive the question and the steps taken so far; after each search step come the documents it returned. \
Write exactly one new step, numbered after the last one, in one of these two forms and nothing else:

Step <k>:
The problem analysis: <what the documents so far establish, what is still missing, and what to look up next>
The retrieval query: <one short search query for the next missing fact>

Step <k>:
The problem analysis: <the facts from the documents that answer the question, and how they combine>
The final answer: <only the answer: a name, a date, a number, or yes/no; no sentence>"""

_GUIDANCE = """\
How to work:
- Decompose. When one fact depends on another ("the birthplace of the director of X"), find the inner fact \
first (the director), then use the name you found in the next query. When the question compares two \
entities, look up the same fact for each of them in turn, then compare.
- One query asks for one fact about one named entity, using the exact names from the question or the \
documents; never a placeholder like "the director".
- Read the documents critically. A passage about a similar name (Tomas Varga is not Tomas Vargas), another \
work with a similar title, or the right entity without the needed fact does not answer the sub-question: say \
so in the analysis and search again with other words (another phrasing of the relation, or more context \
about the entity).
- In the analysis, state the facts you use as the documents state them.
- Give the final answer as soon as the documents establish it, and keep it short."""


def _example_one() -> tuple[str, list[Step]]:
    question = "In which city was the author of The Copper Orchard born?"
    steps = [
        Step(
            1,
            analysis="The question depends on who wrote The Copper Orchard. "
            "First: Who wrote The Copper Orchard?",
            query="Who wrote The Copper Orchard?",
            passages=[
                Passage(
                    "e1",
                    "The Copper Orchard",
                    "The Copper Orchard is a novel by Ilsa Domrow, published in 1961.",
                ),
                Passage("e2", "Copper Orchards", "Copper Orchards is a film directed by Pavel Renn."),
            ],
        ),
        Step(
            2,
            analysis='The passage on The Copper Orchard says: "The Copper Orchard is a novel by Ilsa Domrow, '
            'published in 1961." So the author is Ilsa Domrow. Next: Where was Ilsa Domrow born?',
            query="Where was Ilsa Domrow born?",
            passages=[
                Passage("e3", "Ilsa Domrow", "Ilsa Domrow worked for Halden Press. She married Oren Kask."),
                Passage("e4", "Ilsa Domrowa", "Ilsa Domrowa is a painter. She was born in Vesk."),
            ],
        ),
        Step(
            3,
            analysis="The passage on Ilsa Domrow does not mention her birth, and Ilsa Domrowa is a different "
            "person. I will search again with other words.",
            query="Ilsa Domrow novelist birthplace",
            passages=[
                Passage("e5", "Ilsa Domrow", "Ilsa Domrow is a novelist. Her birthplace is Tarnholm."),
            ],
        ),
        Step(
            4,
            analysis='The passage on Ilsa Domrow says: "Her birthplace is Tarnholm." So the author of The '
            "Copper Orchard was born in Tarnholm.",
            answer="Tarnholm",
        ),
    ]
    return question, steps


def _example_two() -> tuple[str, list[Step]]:
    question = "Which was founded first, Marrow Records or Kell Studios?"
    steps = [
        Step(
            1,
            analysis="I need the founding years of Marrow Records and Kell Studios. First: When was Marrow "
            "Records founded?",
            query="When was Marrow Records founded?",
            passages=[
                Passage("e6", "Marrow Records", "Marrow Records is a label founded in 1972 by Aila Petr.")
            ],
        ),
        Step(
            2,
            analysis='The documents say "Marrow Records is a label founded in 1972 by Aila Petr." Now the '
            "same for Kell Studios: When was Kell Studios founded?",
            query="When was Kell Studios founded?",
            passages=[Passage("e7", "Kell Studios", "Kell Studios has existed since 1958.")],
        ),
        Step(
            3,
            analysis="Marrow Records was founded in 1972 and Kell Studios in 1958. 1958 is earlier than "
            "1972, so Kell Studios was founded first.",
            answer="Kell Studios",
        ),
    ]
    return question, steps


def _transcript(question: str, steps: list[Step]) -> str:
    """The example as the teacher sees its own work: the rendered context, then the final step."""
    return f"{render_context(question, steps[:-1])}\n{format_step(steps[-1])}"


def worked_examples() -> list[tuple[str, list[Step]]]:
    """The prompt's examples as (question, steps): a chain with a miss and a reformulation; a comparison."""
    return [_example_one(), _example_two()]


def teacher_system_prompt() -> str:
    """The LLM teacher's system turn (our own wording; the paper's Figs. 6/7 play the same role)."""
    examples = "\n\n".join(
        f"Example {n}:\n{_transcript(*example)}" for n, example in enumerate(worked_examples(), start=1)
    )
    return (
        f"{_ROLE}\n\n{_FORMAT}\n\n{_GUIDANCE}\n\n"
        "Two complete examples follow; in each, every step is one of your replies, and the documents after a "
        f"query are what the search returned.\n\n{examples}"
    )
