"""The step format: rendering through a chat template, and a parser that never raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3rag.schema import Passage, Step
from r3rag.steps import (
    BOTH_DECISIONS,
    EMPTY_ANALYSIS,
    EMPTY_ANSWER,
    EMPTY_QUERY,
    MISSING_ANALYSIS,
    MISSING_DECISION,
    MISSING_HEADER,
    STRAY_TEXT,
    TRAILING_TEXT,
    build_messages,
    format_documents,
    format_step,
    parse_step,
    render_context,
    render_prompt,
)

# ------------------------------------------------------------------------------------------ hand-written


def test_retrieval_step():
    step = parse_step(
        "Step 1:\nThe problem analysis: I need the director.\nThe retrieval query: Who directed Jaws?"
    )
    assert (step.index, step.analysis, step.query, step.answer) == (
        1,
        "I need the director.",
        "Who directed Jaws?",
        None,
    )
    assert step.valid and step.issues == [] and step.is_retrieval and not step.is_answer


def test_answer_step_keeps_multiline_answer():
    step = parse_step("Step 3:\nThe problem analysis: Both found.\nThe final answer: Steven\nSpielberg")
    assert step.answer == "Steven\nSpielberg" and step.query is None and step.is_answer


def test_query_with_several_questions_is_kept_whole():
    # The official parser cuts at the first '?': "Who directed Jaws" would be all that is left.
    step = parse_step(
        "Step 1:\nThe problem analysis: x\nThe retrieval query: Who directed Jaws? When was he born?"
    )
    assert step.query == "Who directed Jaws? When was he born?"


@pytest.mark.parametrize("number", [10, 12, 99, 123456])
def test_step_numbers_of_any_width(number):
    step = parse_step(f"Step {number}:\nThe problem analysis: a\nThe final answer: b", expected_index=number)
    assert step.index == number and step.valid and step.issues == []


def test_wrong_step_number_is_reported_but_not_fatal():
    step = parse_step("Step 2:\nThe problem analysis: a\nThe final answer: b", expected_index=3)
    assert step.valid and step.issues == ["step number 2, expected 3"] and step.index == 2
    assert not parse_step(step.raw, expected_index=3, strict=True).valid


def test_missing_header_uses_expected_index():
    step = parse_step("The problem analysis: a\nThe retrieval query: q", expected_index=4)
    assert step.index == 4 and step.valid and step.issues == [MISSING_HEADER]


@pytest.mark.parametrize(
    "text",
    [
        "I will now do what I said in step 4: look it up.\nThe problem analysis: a\nThe final answer: b",
        "As in Step 4: the problem analysis: a\nThe final answer: b",
    ],
)
def test_step_header_counts_only_at_the_start_of_a_line(text):
    """ "... in step 4: ..." inside a sentence is prose, not the header: the step keeps its expected index."""
    step = parse_step(text, expected_index=2)
    assert step.index == 2 and MISSING_HEADER in step.issues and step.answer == "b"


@pytest.mark.parametrize("prefix", ["", "  ", "\n", "### ", "**", "Sure.\n"])
def test_step_header_after_indentation_or_markdown_on_its_own_line(prefix):
    step = parse_step(f"{prefix}Step 3:\nThe problem analysis: a\nThe final answer: b", expected_index=3)
    assert step.index == 3 and MISSING_HEADER not in step.issues


def test_a_later_step_header_is_not_this_step_s():
    """The header is looked for before the analysis only: a model that skips its own header and runs on
    into "Step 2:" is step 1 without a header, not step 2."""
    text = "The problem analysis: a\nThe retrieval query: q\nStep 2:\nThe problem analysis: b"
    step = parse_step(text, expected_index=1)
    assert step.index == 1 and MISSING_HEADER in step.issues and step.query == "q"


def test_missing_analysis_is_fatal():
    step = parse_step("Step 1:\nThe retrieval query: q")
    assert not step.valid and MISSING_ANALYSIS in step.issues and step.query is None


def test_missing_decision_is_fatal_and_keeps_analysis():
    step = parse_step("Step 1:\nThe problem analysis: thinking hard")
    assert not step.valid and step.issues == [MISSING_DECISION] and step.analysis == "thinking hard"


def test_decision_before_analysis_does_not_count():
    step = parse_step("Step 1:\nThe retrieval query: q\nThe problem analysis: a")
    assert not step.valid and MISSING_DECISION in step.issues


@pytest.mark.parametrize(
    ("text", "issue"),
    [
        ("Step 1:\nThe problem analysis:   \nThe retrieval query: q", EMPTY_ANALYSIS),
        ("Step 1:\nThe problem analysis: a\nThe retrieval query:  ", EMPTY_QUERY),
        ("Step 1:\nThe problem analysis: a\nThe final answer:\n", EMPTY_ANSWER),
        ("Step 1:\nThe problem analysis: a\nThe final answer: ###", EMPTY_ANSWER),
    ],
)
def test_empty_fields_are_fatal(text, issue):
    step = parse_step(text)
    assert not step.valid and issue in step.issues


def test_both_markers_first_one_wins():
    step = parse_step(
        "Step 1:\nThe problem analysis: a\nThe final answer: Paris\nThe retrieval query: capital?"
    )
    assert step.answer == "Paris" and step.query is None
    assert step.valid and BOTH_DECISIONS in step.issues
    assert not parse_step(step.raw, strict=True).valid


def test_repeated_markers_are_reported():
    text = "Step 1:\nThe problem analysis: a\nThe problem analysis: b\nThe retrieval query: q"
    step = parse_step(text)
    assert step.analysis == "a" and step.query == "q"
    assert "'The problem analysis:' appears more than once" in step.issues and STRAY_TEXT in step.issues


def test_model_continuing_into_the_next_step_is_cut_and_reported():
    text = (
        "Step 1:\nThe problem analysis: a\nThe retrieval query: Who founded Acme?\n"
        "The retrieval documents: Acme\nAcme was founded by ...\nStep 2:\nThe problem analysis: b"
    )
    step = parse_step(text, expected_index=1)
    assert step.query == "Who founded Acme?" and step.index == 1
    assert step.valid and TRAILING_TEXT in step.issues
    assert not parse_step(text, strict=True).valid


def test_next_step_header_ends_a_field():
    step = parse_step("Step 1:\nThe problem analysis: a\nThe final answer: 42\nStep 2: more")
    assert step.answer == "42" and TRAILING_TEXT in step.issues


def test_extra_text_after_the_step_is_not_fatal():
    step = parse_step("Step 1:\nThe problem analysis: a\nThe final answer: 42\n### Note: I am sure.")
    assert step.answer == "42" and step.valid and TRAILING_TEXT in step.issues


def test_markers_are_case_insensitive_and_literal_backslash_n_is_stripped():
    step = parse_step("step 1:\nthe problem analysis: a\nTHE RETRIEVAL QUERY: who?\\n")
    assert step.query == "who?" and step.analysis == "a" and step.index == 1 and step.valid


def test_unicode_and_very_long_text():
    analysis = "Ünïcödé — 日本語 " * 5000
    step = parse_step(f"Step 1:\nThe problem analysis: {analysis}\nThe final answer: Zürich 🇨🇭")
    assert step.answer == "Zürich 🇨🇭" and step.analysis == analysis.strip() and step.valid


def test_adversarial_whitespace_is_fast():
    text = "The problem analysis:" + "\n " * 200_000 + "The final answer: x"
    assert parse_step(text).answer == "x"


def test_huge_step_number_does_not_raise():
    step = parse_step("Step " + "9" * 5000 + ":\nThe problem analysis: a\nThe final answer: b")
    assert step.answer == "b" and MISSING_HEADER in step.issues


def test_raw_is_kept():
    text = "anything at all"
    assert parse_step(text).raw == text


# --------------------------------------------------------------------------------------------- rendering


def _passage(title: str, text: str) -> Passage:
    return Passage(id=title.lower(), title=title, text=text)


def test_format_step_round_trip():
    for step in (Step(index=2, analysis="a", query="q?"), Step(index=11, analysis="a", answer="yes")):
        parsed = parse_step(format_step(step), expected_index=step.index, strict=True)
        assert (parsed.index, parsed.analysis, parsed.query, parsed.answer) == (
            step.index,
            step.analysis,
            step.query,
            step.answer,
        )


def test_render_context_matches_the_paper_layout():
    steps = [
        Step(
            index=1,
            analysis="Find the director.",
            query="Who directed Jaws?",
            passages=[_passage("Jaws", "A 1975 film by Steven Spielberg."), _passage("Jaws 2", "A sequel.")],
        ),
        Step(index=2, analysis="Find the birth year.", query="When was Spielberg born?", passages=[]),
    ]
    assert render_context("Q?", steps) == (
        "The question: Q?\n"
        "Step 1:\nThe problem analysis: Find the director.\nThe retrieval query: Who directed Jaws?\n"
        "The retrieval documents: Jaws\nA 1975 film by Steven Spielberg.\nJaws 2\nA sequel.\n"
        "Step 2:\nThe problem analysis: Find the birth year.\nThe retrieval query: When was Spielberg born?\n"
        "The retrieval documents: "
    )


def test_document_truncation_bounds_the_joined_string():
    passages = [_passage("A", "x" * 400), _passage("B", "y" * 400)]
    assert format_documents(passages, max_chars=512) == format_documents(passages)[:512]
    assert len(format_documents(passages, max_chars=512)) == 512


def test_build_messages_with_and_without_system_prompt():
    assert build_messages("Q?") == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "The question: Q?"},
    ]
    assert build_messages("Q?", system_prompt=None) == [{"role": "user", "content": "The question: Q?"}]


class _TemplateTokenizer:
    """Stands in for a Hugging Face tokenizer: records what it was asked to render."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

    def apply_chat_template(self, conversation, **kwargs):
        self.kwargs = kwargs
        return "".join(f"<{m['role']}>{m['content']}" for m in conversation) + "<assistant>"


def test_render_prompt_goes_through_the_chat_template():
    tokenizer = _TemplateTokenizer()
    prompt = render_prompt(tokenizer, build_messages("Q?", system_prompt="S"))
    assert prompt == "<system>S<user>The question: Q?<assistant>"
    assert tokenizer.kwargs == {"tokenize": False, "add_generation_prompt": True}


def test_render_prompt_refuses_a_tokenizer_without_template():
    tokenizer = _TemplateTokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tokenizer, build_messages("Q?"))


def test_render_prompt_with_a_real_hf_chat_template():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    prompt = render_prompt(tokenizer, build_messages("Who?", system_prompt="Be brief."))
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nThe question: Who?\n<|assistant|>\n"


# ------------------------------------------------------------------------------------------ property tests

_FRAGMENTS = st.sampled_from(
    [
        "Step 1:",
        "Step 12:",
        "step 3 :",
        "The problem analysis:",
        "The retrieval query:",
        "The final answer:",
        "The retrieval documents:",
        "###",
        "\n",
        "\nStep 2:",
        "?",
        " ",
        "\\n",
        "#",
        "Step",
        "analysis:",
        "é",
        "\u200b",
    ]
)
_MODEL_OUTPUT = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(_FRAGMENTS, st.text(max_size=20)), max_size=25).map("".join),
)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_MODEL_OUTPUT, expected=st.one_of(st.none(), st.integers(0, 30)), strict=st.booleans())
def test_parser_never_raises_and_is_consistent(text, expected, strict):
    step = parse_step(text, expected_index=expected, strict=strict)
    assert step.raw == text
    assert isinstance(step.valid, bool) and all(isinstance(i, str) for i in step.issues)
    assert not (step.query is not None and step.answer is not None)
    if step.valid:
        assert step.analysis and (step.query or step.answer)
    if strict:
        assert step.valid == (not step.issues)


_FIELD = (
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs",), blacklist_characters="#\r\n\x1c\x1d\x1e\x85\u2028\u2029"
        ),
        min_size=1,
        max_size=60,
    )
    .map(str.strip)
    .filter(lambda s: s and "\\n" not in s and ":" not in s)
)


@settings(max_examples=500, deadline=None)
@given(index=st.integers(1, 10**6), analysis=_FIELD, value=_FIELD, is_query=st.booleans())
def test_format_then_parse_recovers_the_step(index, analysis, value, is_query):
    step = Step(
        index=index, analysis=analysis, query=value if is_query else None, answer=None if is_query else value
    )
    parsed = parse_step(format_step(step), expected_index=index, strict=True)
    assert parsed.valid, parsed.issues
    assert (parsed.analysis, parsed.query, parsed.answer) == (analysis, step.query, step.answer)
