"""The method registry: every method has its config section and its report row, a new method is one new file,
and a name nobody registered is a clear error."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

import r3rag.evaluation.methods as methods_package
from eval_fixtures import RuleGenerator, example
from r3rag.config import JudgeConfig
from r3rag.evaluation.config import EvalConfig, eval_config_model
from r3rag.evaluation.methods.base import BatchedMethod, MethodSettings, Row
from r3rag.evaluation.methods.registry import (
    build_method,
    discover,
    field_name,
    method_class,
    method_classes,
    method_names,
)
from r3rag.evaluation.report import write_report
from r3rag.evaluation.runner import EvalDataset, EvalRunner, main_top_k
from r3rag.rewards.judges import CorrectnessJudge

MANIFEST = {"datasets": {"toy": {"files": [], "questions": 1}}}
PAPER_ORDER = ("cot", "rag-cot", "react", "self-ask", "iter-retgen", "ircot", "flare", "search-r1", "r3rag")
ECHO = '''
"""A method that only exists in a test: it answers with whatever the model replies to a greeting."""

from pydantic import Field

from r3rag.evaluation.methods.base import BatchedMethod, MethodSettings, Row
from r3rag.schema import Step


class Echo(BatchedMethod):
    name = "echo"
    title = "Echo"
    retrieves = False

    class Settings(MethodSettings):
        max_new_tokens: int = Field(8, ge=1, description="Tokens of the reply.")
        greeting: str = Field("Hello", description="What the prompt starts with.")

    def _run(self, rows: list[Row]) -> None:
        prompts = [f"{self.settings.greeting}: {row.example.question}" for row in rows]
        for row, completion in zip(rows, self._generate(rows, prompts, "1:echo"), strict=True):
            self._answered(row, Step(index=1, answer=completion.text, raw=completion.text))
'''


def test_the_registry_keeps_the_papers_table_order() -> None:
    assert method_names() == PAPER_ORDER
    assert [m for m in EvalConfig().methods] == [m for m in PAPER_ORDER if m != "search-r1"]


@pytest.mark.parametrize("method", PAPER_ORDER)
def test_every_method_has_its_own_section_in_the_config(method: str) -> None:
    cls = method_class(method)
    section = EvalConfig.model_fields[field_name(method)]
    assert section.annotation is cls.Settings and section.description
    assert EvalConfig().settings(method) == cls.Settings()
    assert all(f.description for f in cls.Settings.model_fields.values()), "every setting says what it is"
    assert cls.Settings.model_fields["max_new_tokens"].default >= 1
    with pytest.raises(ValidationError, match="typo"):
        EvalConfig.model_validate({field_name(method): {"typo": 1}})


def test_every_method_has_its_title_in_the_report_in_order(tmp_path: Path) -> None:
    config = EvalConfig(methods=list(PAPER_ORDER))
    records = [
        {
            "method": cls.name,
            "dataset": "toy",
            "top_k": top_k,
            "acc": 1.0,
            "em": 1.0,
            "f1": 1.0,
            "cover_em": 1.0,
            "budget_acc": [1.0],
            "recall": None,
            "retrievals": 0,
            "steps": 1,
            "completion_tokens": 3,
            "status": "answered",
        }
        for cls in reversed(method_classes())  # the report orders them, not the file
        for top_k in [main_top_k(cls.name, config)]
    ]
    paths = write_report(tmp_path, records, config, MANIFEST)
    table = paths["markdown"].read_text().split("## Table 1", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:] == [method_class(m).title for m in PAPER_ORDER]


def test_an_unknown_method_is_an_error_that_lists_the_known_ones(tmp_path: Path) -> None:
    known = "known methods: " + ", ".join(PAPER_ORDER)
    with pytest.raises(ValidationError, match=f"unknown method 'magic'; {known}"):
        EvalConfig(methods=["cot", "magic"])
    with pytest.raises(ValidationError, match="unknown method 'magic'"):
        EvalConfig(sweep_methods=["magic"])
    path = tmp_path / "eval.yaml"
    path.write_text("methods: [rag_cot]\n")  # the section's name, not the method's
    with pytest.raises(ValidationError, match="unknown method 'rag_cot'"):
        EvalConfig.from_yaml(path)
    with pytest.raises(ValueError, match=known):
        EvalConfig().settings("magic")
    with pytest.raises(ValueError, match=known):
        build_method("magic", RuleGenerator(str), None, EvalConfig(), None)


@pytest.fixture
def echo_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A method file placed in the methods package (a folder added to the package's path), and the registry
    rediscovered around the test."""
    (tmp_path / "echo.py").write_text(textwrap.dedent(ECHO))
    monkeypatch.setattr(methods_package, "__path__", [*methods_package.__path__, str(tmp_path)])
    method_classes.cache_clear()
    yield tmp_path / "echo.py"
    monkeypatch.undo()
    sys.modules.pop("r3rag.evaluation.methods.echo", None)
    method_classes.cache_clear()


def test_a_new_method_is_one_new_file(echo_file: Path, tmp_path: Path) -> None:
    assert method_names() == (*PAPER_ORDER, "echo")  # no position: after the paper's rows
    config_model = eval_config_model(method_classes())
    config = config_model.model_validate({"methods": ["echo"], "echo": {"greeting": "Hi"}})
    assert config.settings("echo").greeting == "Hi"  # type: ignore[attr-defined]
    generator = RuleGenerator(lambda prompt: "Ada Vale" if prompt.startswith("Hi: ") else "no")
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
    dataset = EvalDataset("toy", examples=[example()])
    records = EvalRunner(config, generator, None, judge, tmp_path / "run", {"toy": "id"}).run([dataset])
    assert [(r["method"], r["top_k"], r["acc"]) for r in records] == [("echo", None, 1.0)]
    markdown = write_report(tmp_path / "run", records, config, MANIFEST)["markdown"]
    assert "| Echo | - | 100.0 |" in markdown.read_text()


def write_package(root: Path, name: str, modules: dict[str, str]) -> object:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / name / f"{module}.py").write_text(textwrap.dedent(source))
    return importlib.import_module(name)


def test_a_method_file_missing_what_the_registry_needs_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    untitled = ECHO.replace('    title = "Echo"\n', "")
    with pytest.raises(
        TypeError, match=r"untitled_pkg\.echo\.Echo: an evaluation method must declare 'title'"
    ):
        discover(write_package(tmp_path, "untitled_pkg", {"echo": untitled}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"twice_pkg\.(one|two): method name 'echo' is taken"):
        discover(write_package(tmp_path, "twice_pkg", {"one": ECHO, "two": ECHO}))  # type: ignore[arg-type]


def test_a_method_named_like_a_shared_field_is_refused() -> None:
    class Seed(BatchedMethod):
        name = "seed"
        title = "Seed"

        class Settings(MethodSettings):
            max_new_tokens: int = 8

        def _run(self, rows: list[Row]) -> None:
            raise AssertionError("never run")

    with pytest.raises(TypeError, match="'seed' is a shared eval config field"):
        eval_config_model([*method_classes(), Seed])
