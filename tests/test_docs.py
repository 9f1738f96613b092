"""The documentation that mirrors the code is generated from it, and stays so: the reference pages and the
generated tables in README.md and docs/ must be what `make docs` writes now, and every relative link in them
must lead to a file and a heading that exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from r3rag import cli, docs_reference, flags
from r3rag.config import PPOConfig

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def test_generated_docs_are_current() -> None:
    stale = docs_reference.stale(ROOT)
    assert not stale, f"generated docs are stale ({', '.join(stale)}): run `make docs`"


def test_generation_is_idempotent_and_deterministic(tmp_path: Path) -> None:
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    docs_reference.write(tmp_path)
    assert docs_reference.stale(tmp_path) == []
    assert docs_reference.write(tmp_path) == []  # a second run changes nothing
    assert docs_reference.render(tmp_path) == docs_reference.render(tmp_path)


def test_generated_pages_hold_no_machine_paths() -> None:
    for name in (docs_reference.CLI_PAGE, docs_reference.CONFIG_PAGE):
        text = docs_reference.render(ROOT)[name]
        assert str(ROOT) not in text and str(Path.home()) not in text and "/tmp/" not in text


def test_every_config_flag_is_in_the_cli_reference() -> None:
    text = docs_reference.render_cli()
    for words, options in cli.CONFIG_COMMANDS.items():
        assert f"## r3rag {' '.join(words)}\n" in text
        for model in (options.model, *options.extra.values()):
            for flag in flags.config_fields(model):
                assert f"`{flag.option}" in text, f"{flag.option} of r3rag {' '.join(words)}"


def test_the_ppo_table_shows_the_small_presets_values() -> None:
    """The table once gave the small preset's old values (16 questions, minibatch 32, actor lr 5e-6)."""
    table = docs_reference.ppo_details()
    small = PPOConfig.small_model_settings()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert f"(small: {small['questions_per_iteration']})" in rows["questions per rollout"]
    assert f"(small: {small['minibatch_size']})" in rows["minibatch"]
    actor = docs_reference.value_text(small["actor_lr"])
    assert f"(small: {actor} / " in rows["learning rates"]


def test_a_block_of_unknown_name_or_without_its_end_is_an_error() -> None:
    with pytest.raises(docs_reference.DocsError, match="unknown generated block 'nope'"):
        docs_reference.fill_blocks("<!-- generated: nope (make docs) -->\n<!-- end generated: nope -->\n")
    with pytest.raises(docs_reference.DocsError, match="has no line"):
        docs_reference.fill_blocks("<!-- generated: ppo-details (make docs) -->\ntext\n")


def test_a_block_is_rewritten_and_the_prose_around_it_kept() -> None:
    begin, end = "<!-- generated: ppo-details (make docs) -->", "<!-- end generated: ppo-details -->"
    page = f"before\n{begin}\nSTALE TABLE\n{end}\nafter\n"
    filled = docs_reference.fill_blocks(page)
    assert filled.startswith("before\n") and filled.endswith("<!-- end generated: ppo-details -->\nafter\n")
    assert "STALE TABLE" not in filled and "| learning rates |" in filled


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {docs_reference.slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for match in LINK.finditer(text):
        target = match.group("target")
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: link to {target}: no such heading"
