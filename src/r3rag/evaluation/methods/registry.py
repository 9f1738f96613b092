"""The registry of evaluation methods: every concrete :class:`EvalMethod` defined in a module of this package.

Discovery imports each module of the package (``pkgutil``), so a new method needs nothing but its own file:
the eval config gets its settings section, the runner builds it by name, the report shows its title in its
place, and the CLI lists it. Names must be unique; a section named after a method (hyphens become
underscores) must not collide with a shared config field.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Sequence
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

from r3rag.evaluation.methods.base import EvalMethod, MethodSettings
from r3rag.llm.base import Generator
from r3rag.retrieval.base import Retriever

if TYPE_CHECKING:
    from r3rag.evaluation.config import EvalConfigBase

_NOT_METHODS = frozenset({"base", "registry"})
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def field_name(method: str) -> str:
    """The config section of a method: its name with hyphens as underscores (``rag-cot`` -> ``rag_cot``)."""
    return method.replace("-", "_")


def discover(package: ModuleType) -> list[type[EvalMethod]]:
    """Every concrete EvalMethod class defined in a module of ``package``, in report order (``position``,
    then name). Raises TypeError, naming the module, for a method that lacks what the registry needs."""
    found: dict[str, type[EvalMethod]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, EvalMethod)
                and value.__module__ == module.__name__
                and not inspect.isabstract(value)
            ):
                _check(value, module)
                if value.name in found:
                    raise TypeError(
                        f"{module.__name__}: method name {value.name!r} is taken by "
                        f"{found[value.name].__module__}.{found[value.name].__qualname__}"
                    )
                found[value.name] = value
    return sorted(found.values(), key=lambda cls: (cls.position, cls.name))


def _check(cls: type[EvalMethod], module: ModuleType) -> None:
    where = f"{module.__name__}.{cls.__qualname__}"
    for attribute in ("name", "title", "Settings"):
        if not hasattr(cls, attribute):
            raise TypeError(f"{where}: an evaluation method must declare {attribute!r}")
    if not _NAME.fullmatch(cls.name):
        raise TypeError(f"{where}: name {cls.name!r} must be lower-case words joined by hyphens")
    if not (isinstance(cls.Settings, type) and issubclass(cls.Settings, MethodSettings)):
        raise TypeError(f"{where}: Settings must subclass r3rag.evaluation.methods.base.MethodSettings")


@cache
def method_classes() -> tuple[type[EvalMethod], ...]:
    """Every registered method, in report order (discovered once per process)."""
    from r3rag.evaluation import methods

    return tuple(discover(methods))


def method_names() -> tuple[str, ...]:
    """The names of every registered method, in report order."""
    return tuple(cls.name for cls in method_classes())


def method_class(name: str) -> type[EvalMethod]:
    """The method registered as ``name``; ValueError listing the known names if there is none."""
    for cls in method_classes():
        if cls.name == name:
            return cls
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")


def retrieving(names: Sequence[str]) -> bool:
    """Whether any of the methods ``names`` searches (and so needs a retriever)."""
    return any(method_class(name).retrieves for name in names)


def build_method(
    name: str, generator: Generator, retriever: Retriever | None, config: EvalConfigBase, top_k: int | None
) -> EvalMethod:
    """The method ``name`` as ``config`` sets it up, retrieving ``top_k`` passages per search."""
    return method_class(name)(generator, retriever, config, top_k)
