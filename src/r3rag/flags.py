"""Command-line flags generated from a stage's pydantic config: each setting is declared once, in the config.

Every field of a config becomes an option of its command: ``--field-name`` for a top-level field,
``--section.field-name`` for a field of a nested config (``--rollout.top-k``), with the field's description
as its help, its default, its bounds, and its choices when it is a ``Literal``. One precedence rule holds for
every command: the config's defaults < a preset < ``--config FILE`` (YAML) < the flags given, each layer
setting only the fields it names (a flag sets one field, a YAML section only the fields it lists).

Values are read as the field's type reads them, through pydantic: ``5``, ``1e-5``, ``english``; ``null``
(or ``none``) where a field may be empty; lists as ``a,b,c``, a YAML list, or the flag repeated; mappings as
``KEY=VALUE`` (repeatable) or a YAML mapping. A value the field refuses is an error naming the flag.

This is a small helper over typer rather than a CLI generator such as tyro (tried: it renders these configs
well), because the precedence above needs the preset and the YAML file before the flags are applied, and
because the commands stay in one typer application with one help style and one test harness.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
import typer
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from r3rag.config import StageConfig

_NONE_WORDS = frozenset({"null", "none"})
F = TypeVar("F", bound=Callable[..., Any])


class SettingsError(ValueError):
    """Settings that cannot make a valid config; the message names the flag, the file and the field."""


# ------------------------------------------------------------------------------------------------ fields


@dataclass(frozen=True, slots=True)
class Flag:
    """One leaf field of a config, at ``path`` (``("rollout", "top_k")``), and the option that sets it."""

    path: tuple[str, ...]
    info: FieldInfo
    default: Any = field(default=None, compare=False)
    """The value the field takes when nothing sets it (a nested field: its value in the parent's default);
    :data:`REQUIRED` when it has none."""

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def option(self) -> str:
        return "--" + ".".join(part.replace("_", "-") for part in self.path)

    @property
    def param(self) -> str:
        """The Python name of the option's parameter (``rollout__top_k``)."""
        return "__".join(self.path)

    @property
    def annotation(self) -> Any:
        return self.info.annotation

    @property
    def is_bool(self) -> bool:
        return _without_none(self.annotation) is bool

    @property
    def repeatable(self) -> bool:
        """Lists and mappings: the flag may be given several times, its values joined."""
        return _sequence_type(self.annotation) is not None or _is_mapping(self.annotation)


REQUIRED = object()
"""The default of a field that has none."""


def config_fields(
    model: type[BaseModel], prefix: tuple[str, ...] = (), defaults: BaseModel | None = None
) -> list[Flag]:
    """Every leaf field of ``model``, nested configs walked into (an optional nested config is one leaf).

    ``defaults`` is the nested config's default value in its parent, whose fields may differ from the nested
    class's own defaults (PPO's rollout takes top-2 passages where an agent's default is 5)."""
    found = []
    for name, info in model.model_fields.items():
        default = getattr(defaults, name) if defaults is not None else _own_default(info)
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            found += config_fields(
                nested, (*prefix, name), default if isinstance(default, BaseModel) else None
            )
        else:
            found.append(Flag((*prefix, name), info, default))
    return found


def _own_default(info: FieldInfo) -> Any:
    if info.is_required():
        return REQUIRED
    try:
        return info.get_default(call_default_factory=True)
    except TypeError:  # a factory that needs the other fields
        return REQUIRED


def _without_none(annotation: Any) -> Any:
    """``X`` for ``X | None`` (the annotation itself otherwise)."""
    args = typing.get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - a runtime union of types
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (the annotation alone otherwise)."""
    return typing.get_args(annotation) if _is_union(annotation) else (annotation,)


def _allows_none(annotation: Any) -> bool:
    return annotation is None or type(None) in _members(annotation)


def _sequence_type(annotation: Any) -> Any:
    """The list or tuple type among the annotation's alternatives, if any."""
    for member in _members(annotation):
        if typing.get_origin(member) in (list, tuple, set, frozenset):
            return member
    return None


def _is_mapping(annotation: Any) -> bool:
    return any(typing.get_origin(m) is dict or m is dict for m in _members(annotation))


def _choices(annotation: Any) -> list[str] | None:
    """The values of a ``Literal`` field (``X | None`` included), else None."""
    inner = _without_none(annotation)
    if typing.get_origin(inner) is Literal:
        return [str(v) for v in typing.get_args(inner)]
    return None


def _metavar(annotation: Any) -> str:
    choices = _choices(annotation)
    if choices is not None:
        return "[" + "|".join(choices) + "]"
    if _is_mapping(annotation):
        return "KEY=VALUE"
    if _sequence_type(annotation) is not None:
        return "A,B,..."
    inner = _without_none(annotation)
    names = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}
    return names.get(inner, "YAML") if isinstance(inner, type) else "YAML"


def _bounds(info: FieldInfo) -> list[str]:
    """The field's numeric bounds and minimum length, as ``>= 1``."""
    found = []
    for item in info.metadata:
        for kind, attribute, symbol in (
            (annotated_types.Ge, "ge", ">="),
            (annotated_types.Gt, "gt", ">"),
            (annotated_types.Le, "le", "<="),
            (annotated_types.Lt, "lt", "<"),
        ):
            if isinstance(item, kind):
                found.append(f"{symbol} {getattr(item, attribute)}")
        if isinstance(item, annotated_types.MinLen):
            found.append(f"at least {item.min_length} values")
    return found


def _default_text(value: Any) -> str:
    """A default as a person would type it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if value is None:
        return "null"
    if isinstance(value, Path | str):
        return str(value) if str(value) else '""'
    return json.dumps(value, default=str)


def help_text(flag: Flag) -> str:
    """The option's help: the field's description, then its default or that it is required, and its bounds."""
    parts = [flag.info.description or ""]
    details = ["required" if flag.default is REQUIRED else f"default: {_default_text(flag.default)}"]
    details += _bounds(flag.info)
    if _allows_none(flag.annotation) and not flag.is_bool:
        details.append("null for none")
    return f"{parts[0]} [{'; '.join(details)}]".strip()


# ------------------------------------------------------------------------------------------------ values


def _adapter(flag: Flag) -> TypeAdapter[Any]:
    annotation = flag.annotation
    return TypeAdapter(Annotated[(annotation, *flag.info.metadata)] if flag.info.metadata else annotation)


def parse_flag(flag: Flag, texts: tuple[str, ...] | str) -> Any:
    """The value of ``flag`` given as ``texts`` (one string, or one per repetition), validated by its field.

    Raises :class:`SettingsError` naming the flag when no reading of the text fits the field.
    """
    texts = (texts,) if isinstance(texts, str) else tuple(texts)
    candidates: list[Any] = []
    if len(texts) == 1:
        text = texts[0]
        if _allows_none(flag.annotation) and text.strip().lower() in _NONE_WORDS:
            return None
        candidates += [text, yaml_or_text(text)]
    if _is_mapping(flag.annotation):
        candidates.append(_mapping(texts))
    if _sequence_type(flag.annotation) is not None:
        candidates.append([item for text in texts for item in _items(text)])
    first_error: ValidationError | None = None
    for candidate in candidates:
        try:
            return _adapter(flag).validate_python(candidate)
        except ValidationError as e:
            first_error = first_error or e
    choices = _choices(flag.annotation)
    if choices is not None:
        raise SettingsError(f"{flag.option} must be {_one_of(choices, quote=True)}, not {texts[-1]!r}")
    assert first_error is not None
    raise SettingsError(f"{flag.option}: {texts[-1]!r}: {_first_message(first_error)}")


def _one_of(choices: list[str], quote: bool = False) -> str:
    """``a, b or c`` (quoted as Python would print them with ``quote``)."""
    shown = [repr(c) if quote else c for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def yaml_or_text(text: str) -> Any:
    """A flag's text as YAML (``8`` -> 8, ``[a, b]`` -> a list), or as the text itself if it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _items(text: str) -> list[Any]:
    """One repetition of a list flag: a YAML list, or comma-separated values."""
    loaded = yaml_or_text(text)
    if isinstance(loaded, list):
        return loaded
    return [item.strip() for item in text.split(",") if item.strip()]


def _mapping(texts: tuple[str, ...]) -> dict[str, Any] | None:
    """``KEY=VALUE`` entries and YAML mappings, later ones winning; None when one is neither."""
    merged: dict[str, Any] = {}
    for text in texts:
        loaded = yaml_or_text(text)
        if isinstance(loaded, dict):
            merged.update(loaded)
        elif "=" in text:
            key, value = text.split("=", 1)
            merged[key.strip()] = yaml_or_text(value)
        else:
            return None
    return merged


def _first_message(error: ValidationError) -> str:
    first = error.errors()[0]
    return str(first["msg"])


# ------------------------------------------------------------------------------------------------ merging


def flatten(data: Mapping[str, Any], leaves: Collection[str], prefix: str = "") -> dict[str, Any]:
    """``{"rollout": {"top_k": 2}}`` -> ``{"rollout.top_k": 2}``, down to the config's leaf fields (a mapping
    that is a field's value, such as ``type_mix``, stays whole; so does a key the config does not have, for
    validation to name)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if (
            isinstance(value, Mapping)
            and name not in leaves
            and any(x.startswith(f"{name}.") for x in leaves)
        ):
            flat |= flatten(value, leaves, f"{name}.")
        else:
            flat[name] = value
    return flat


def read_config_file(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """A YAML config file's mapping, with one-line errors naming the file (and the line of a syntax error)."""
    if not path.is_file():
        raise SettingsError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SettingsError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"{path}: expected a mapping of {model.__name__} fields, got {type(data).__name__}"
        )
    return data


def settings_errors(error: ValidationError, flags: Mapping[str, Flag], source: str) -> str:
    """A pydantic error as one line: each field as its flag (``--rollout.top-k``) with the problem."""
    lines = []
    for item in error.errors():
        dotted = ".".join(str(part) for part in item["loc"])
        flag = flags.get(dotted)
        name = f"{flag.option} ({dotted})" if flag is not None else dotted or "settings"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] == "missing" and flag is not None:
            message = f"required: give {flag.option} or set {dotted} in --config"
        lines.append(f"{name}: {message}")
    return f"{source}: " + "; ".join(lines)


# ------------------------------------------------------------------------------------------------ commands


@dataclass(frozen=True, slots=True)
class Presets:
    """Named starting points of a config (a preset's values sit between the defaults and ``--config``)."""

    option: str
    values: Mapping[str, Callable[[], dict[str, Any]]]
    default: str | None
    help: str


@dataclass(frozen=True, slots=True)
class ConfigOptions:
    """How a command's config is assembled from its flags: the model, its presets, the extra configs read
    from flags alone (``extra``, passed by name), short aliases and fields the command sets itself."""

    model: type[StageConfig]
    presets: Presets | None = None
    extra: Mapping[str, type[StageConfig]] = field(default_factory=dict)
    short: Mapping[str, str] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()


def build_config(
    options: ConfigOptions,
    given: Mapping[str, Any],
    config_file: Path | None,
    preset: str | None,
) -> StageConfig:
    """The command's config: defaults < preset < ``config_file`` < ``given`` (dotted field -> value), each
    layer setting only the leaf fields it names."""
    flags = {flag.dotted: flag for flag in config_fields(options.model)}
    layers = [{name: flag.default for name, flag in flags.items() if flag.default is not REQUIRED}]
    if options.presets is not None:
        name = preset or options.presets.default
        if name is not None:
            layers.append(flatten(options.presets.values[name](), flags))
    if config_file is not None:
        layers.append(flatten(read_config_file(config_file, options.model), flags))
    layers.append(dict(given))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged |= layer
    try:
        return options.model.model_validate(nest(merged))
    except ValidationError as e:
        source = f"{config_file} and flags" if config_file is not None else "settings"
        raise SettingsError(settings_errors(e, flags, source)) from None


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"rollout.top_k": 2}`` -> ``{"rollout": {"top_k": 2}}``."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _option(flag: Flag, short: str | None, hidden: bool) -> inspect.Parameter:
    """The typer parameter of one field: a ``--x/--no-x`` switch for a bool, else text parsed later."""
    declarations = [flag.option] if not flag.is_bool else [f"{flag.option}/--no-{flag.option[2:]}"]
    if short is not None:
        declarations.append(short)
    annotation: Any = bool | None if flag.is_bool else (list[str] | None if flag.repeatable else str | None)
    option = typer.Option(
        None,
        *declarations,
        help=help_text(flag),
        metavar=None if flag.is_bool else _metavar(flag.annotation),
        show_default=False,
        hidden=hidden,
    )
    return inspect.Parameter(
        flag.param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def _given(flags: list[Flag], values: dict[str, Any]) -> dict[str, Any]:
    """The flags the user gave, parsed: dotted field -> value."""
    given = {}
    for flag in flags:
        raw = values.pop(flag.param)
        if raw is None or (flag.repeatable and not raw):
            continue
        given[flag.dotted] = raw if flag.is_bool else parse_flag(flag, tuple(raw) if flag.repeatable else raw)
    return given


def with_config(options: ConfigOptions) -> Callable[[F], F]:
    """Give a command function its config's flags: the function takes ``config`` (and one argument per
    ``options.extra`` name) already built; its own parameters stay as they are.

    Raises :class:`SettingsError` (a ValueError) from the call when the settings make no valid config.
    """

    def decorate(function: F) -> F:
        own = [
            p
            for p in inspect.signature(function, eval_str=True).parameters.values()
            if p.name not in ("config", *options.extra)
        ]
        main_flags = config_fields(options.model)
        extra_flags = {name: config_fields(model) for name, model in options.extra.items()}
        every = main_flags + [flag for flags in extra_flags.values() for flag in flags]
        _check_unique(every, own)
        generated = [
            _option(flag, options.short.get(flag.dotted), flag.dotted in options.hidden) for flag in every
        ]
        common = [
            inspect.Parameter(
                "config_file",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None,
                    "--config",
                    metavar="FILE",
                    help=f"A YAML file of {options.model.__name__} fields; flags given here override it.",
                ),
                annotation=Path | None,
            )
        ]
        if options.presets is not None:
            presets = options.presets
            common.append(
                inspect.Parameter(
                    "preset",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(
                        None,
                        presets.option,
                        help=f"{presets.help} [default: {presets.default}]",
                        metavar="[" + "|".join(presets.values) + "]",
                        show_default=False,
                    ),
                    annotation=str | None,
                )
            )

        @functools.wraps(function)
        def command(**values: Any) -> Any:
            config_file = values.pop("config_file")
            preset = values.pop("preset", None)
            presets = options.presets
            if preset is not None and presets is not None and preset not in presets.values:
                raise SettingsError(
                    f"{presets.option} must be {_one_of(list(presets.values))}, not {preset!r}"
                )
            config = build_config(options, _given(main_flags, values), config_file, preset)
            extras = {}
            for name, model in options.extra.items():
                given = _given(extra_flags[name], values)
                try:
                    extras[name] = model.model_validate(nest(given))
                except ValidationError as e:
                    flags = {flag.dotted: flag for flag in extra_flags[name]}
                    raise SettingsError(settings_errors(e, flags, "flags")) from None
            return function(config=config, **extras, **values)

        parameters = [*own, *common, *generated]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # what typer reads
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return typing.cast(F, command)

    return decorate


def _check_unique(flags: list[Flag], own: list[inspect.Parameter]) -> None:
    """Two settings under one flag would make one of them unreachable: a programming error."""
    seen = {p.name for p in own} | {"config_file", "preset"}
    for flag in flags:
        if flag.param in seen:
            raise TypeError(f"two parameters named {flag.param!r} ({flag.option})")
        seen.add(flag.param)


def iter_options(command: Any) -> Iterator[Any]:
    """The options of a command as typer builds it (for the reference docs and the reachability test)."""
    for param in command.params:
        if param.param_type_name == "option":
            yield param
