"""Command-line flags generated from a stage's config dataclass, so the dataclass is the only spec.

Each field becomes a flag. Field metadata tunes it:
  help:        the help text (always give one).
  flags:       explicit flag spellings, e.g. ("--rest_api_port",); default: "--field-name" plus
               the "--field_name" alias, so both Beam-style and GNU-style spellings work.
  positional:  True for a positional argument (a tuple field takes one or more values).
  choices:     allowed values.
  passthrough: True on a tuple[str, ...] field that collects every unrecognised flag (Beam
               pipeline options such as --runner=DataflowRunner go there untouched).
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """Returns (inner type, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _flag_names(field: dataclasses.Field) -> list[str]:
    explicit = field.metadata.get("flags")
    if explicit:
        return list(explicit)
    dashed = "--" + field.name.replace("_", "-")
    underscored = "--" + field.name
    return [dashed] if dashed == underscored else [dashed, underscored]


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    if value is None or value == () or isinstance(value, bool):
        return ""
    return f" (default: {value})"


def passthrough_field(config_class: type) -> str | None:
    """The name of the field that takes unrecognised flags, if the config has one."""
    for field in dataclasses.fields(config_class):
        if field.metadata.get("passthrough"):
            return field.name
    return None


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Adds one argument per field of `config_class` to `parser`."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.metadata.get("passthrough") or not field.init:
            continue
        annotation, optional = _unwrap_optional(hints[field.name])
        required = field.default is dataclasses.MISSING and (
            field.default_factory is dataclasses.MISSING
        )
        # argparse %-formats help texts: a literal % (e.g. "train[:80%]") must be doubled.
        help_text = (field.metadata.get("help", "") + _default_text(field)).replace("%", "%%")
        kwargs: dict[str, Any] = {"help": help_text, "dest": field.name}
        if "choices" in field.metadata:
            kwargs["choices"] = list(field.metadata["choices"])

        if typing.get_origin(annotation) is tuple:
            item_type = typing.get_args(annotation)[0]
            kwargs.update(type=item_type, nargs="+" if required else "*")
        elif annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = annotation
            kwargs["metavar"] = field.metadata.get("metavar", field.name.upper())

        if field.metadata.get("positional"):
            kwargs.pop("dest")
            kwargs.pop("metavar", None)
            parser.add_argument(field.name, **kwargs)
            continue
        if required:
            kwargs["required"] = True
        if optional and "type" in kwargs:
            kwargs["type"] = _none_or(kwargs["type"])
        parser.add_argument(*_flag_names(field), **kwargs)
    parser.set_defaults(**_field_defaults(config_class))


def normalize_bool_values(config_class: type, argv: Sequence[str]) -> list[str]:
    """Rewrites --flag=true/false (TF Serving's and Beam's spelling) as --flag / --no-flag."""
    hints = typing.get_type_hints(config_class)
    names = {
        name: field
        for field in dataclasses.fields(config_class)
        if _unwrap_optional(hints[field.name])[0] is bool
        for name in _flag_names(field)
    }
    rewritten = []
    for argument in argv:
        name, equals, value = argument.partition("=")
        if equals and name in names:
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes"):
                argument = name
            elif lowered in ("false", "0", "no"):
                argument = "--no-" + name[2:]
        rewritten.append(argument)
    return rewritten


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() in ("", "none") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _field_defaults(config_class: type) -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def config_from_args(
    config_class: type[ConfigT], namespace: argparse.Namespace, extra: Sequence[str] = ()
) -> ConfigT:
    """Builds the config from parsed arguments (and the unrecognised ones, if it takes them)."""
    values = {}
    for field in dataclasses.fields(config_class):
        if not field.init:
            continue
        if field.metadata.get("passthrough"):
            values[field.name] = tuple(extra)
        elif hasattr(namespace, field.name):
            value = getattr(namespace, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**values)
