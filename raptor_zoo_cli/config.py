"""Config dataclasses as command lines, timm train.py's two-stage way, without torch.

``-c/--config file.yaml`` first (keys = field names), then every field as ``--kebab-name`` and ``--snake_name``,
typed from its annotation: bools as ``--flag/--no-flag``, tuples and lists as space- or comma-separated values,
``Literal`` as choices, ``Optional`` accepting ``none``. Precedence: CLI > YAML > dataclass defaults.

:func:`add_config_arguments` declares the flags on any parser (``raptor-zoo distill`` uses it on its subparser),
:func:`config_from_args` builds the dataclass from what was parsed, and :func:`parse_config` is both in one call
(the recipes' entry point). Help texts come from ``field(metadata={"help": ...})``; ``metadata={"group": ...}``
names an argparse group. A renamed field keeps its old names with ``metadata={"aliases": ["old_name", ...]}``: each
alias is a flag too (``--old-name``, ``--old_name``) and a YAML key, read as the field; giving a field and its alias
together (both flags, or both keys in one YAML file) is an error naming both.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["add_config_arguments", "config_from_args", "parse_config"]

_NONE_STRINGS = ("none", "null")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for `Optional[T]` / `T | None`; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"Only Optional[T] unions are supported in config fields, got {annotation}.")
        return members[0], optional
    return annotation, False


def _sequence_element(annotation: Any) -> tuple[type, int | None] | None:
    """(element type, fixed length or None) for tuple[...] / list[...] annotations; None for anything else."""
    origin = typing.get_origin(annotation) or annotation
    if origin not in (tuple, list):
        return None
    args = typing.get_args(annotation)
    if not args:
        return str, None
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(set(args)) != 1:
            raise TypeError(f"Tuple config fields must hold one element type, got {annotation}.")
        return args[0], len(args)
    return args[0], None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """`value` (from YAML or a CLI string) converted to the field's annotation; TypeError/ValueError otherwise."""
    inner, optional = _unwrap_optional(annotation)
    if value is None or (optional and isinstance(value, str) and value.lower() in _NONE_STRINGS):
        if optional:
            return None
        raise TypeError(f"Config field {name!r} is not optional ({_type_name(annotation)}), got None.")
    sequence = _sequence_element(inner)
    if sequence is not None:
        element, length = sequence
        if isinstance(value, str):
            value = [token for token in re.split(r"[,\s]+", value.strip().strip("()[]")) if token]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"Config field {name!r} expects a list of {_type_name(element)}, got {value!r}.")
        items = [_coerce(name, element, item) for item in value]
        if length is not None and len(items) != length:
            raise ValueError(f"Config field {name!r} expects {length} values, got {len(items)}: {value!r}.")
        origin = typing.get_origin(inner) or inner
        return tuple(items) if origin is tuple else items
    if typing.get_origin(inner) is Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ValueError(f"Config field {name!r} must be one of {list(choices)}, got {value!r}.")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"Config field {name!r} expects a bool, got {value!r}.")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"Config field {name!r} expects an int, got {value!r}.")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TypeError(f"Config field {name!r} expects an int, got {value!r}.") from None
    if inner is float:
        if isinstance(value, bool):
            raise TypeError(f"Config field {name!r} expects a float, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Config field {name!r} expects a float, got {value!r}.") from None
    if inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"Config field {name!r} expects a string, got {value!r}.")
        return str(value)
    if inner is Path:
        return Path(value)
    if (typing.get_origin(inner) or inner) is dict:
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise TypeError(f"Config field {name!r} expects a mapping (YAML mapping or JSON object), got {value!r}.")
        return parsed
    raise TypeError(f"Config field {name!r} has unsupported type {_type_name(annotation)}.")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _format_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def _field_aliases(config_cls: type, fields: dict[str, dataclasses.Field]) -> dict[str, str]:
    """alias -> field name, from every field's ``metadata={"aliases": [...]}`` (old names the field still answers to).

    An alias that is another field's name or another field's alias is a TypeError: the config class is wrong."""
    aliases: dict[str, str] = {}
    for name, field in fields.items():
        names = field.metadata.get("aliases", ())
        if isinstance(names, str):
            raise TypeError(f"{config_cls.__name__}.{name}: metadata 'aliases' must be a list of names, got {names!r}.")
        for alias in names:
            taken = alias if alias in fields else aliases.get(alias)
            if taken is not None:
                raise TypeError(f"{config_cls.__name__}.{name}: alias {alias!r} is already the name or an alias of "
                                f"field {taken!r}.")
            aliases[alias] = name
    return aliases


_ALIAS_DEST = "alias:{}"
"""The argparse destination of an alias flag, kept apart from its field's so that giving both can be told."""


def _flags(name: str) -> list[str]:
    """``--kebab-name``, and ``--snake_name`` when the name has an underscore."""
    return [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])


def _read_yaml_config(path: str, config_cls: type, fields: dict[str, dataclasses.Field],
                      hints: dict[str, Any]) -> dict[str, Any]:
    config_path = Path(path)
    if not config_path.is_file():
        raise FileNotFoundError(f"Config file {path!r} not found (given with --config).")
    loaded = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"Config file {path!r} must hold a YAML mapping of field: value, got {type(loaded).__name__}.")
    aliases = _field_aliases(config_cls, fields)
    normalised = {str(key).replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(normalised) - set(fields) - set(aliases))
    if unknown:
        raise ValueError(
            f"Unknown key(s) {unknown} in {path!r}; valid keys for {config_cls.__name__} are {sorted(fields)}.")
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in normalised.items():
        name = aliases.get(key, key)
        if name in given_as:
            raise ValueError(f"Config file {path!r} gives both {given_as[name]!r} and {key!r}, two names of the field "
                             f"{name!r}; keep only {name!r}.")
        given_as[name] = key
        values[name] = _coerce(name, hints[name], value)
    return values


def _config_fields(config_cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    """(init fields by name, resolved type hints) of a config dataclass; TypeError for anything else."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"expected a config dataclass type, got {config_cls!r}.")
    fields = {field.name: field for field in dataclasses.fields(config_cls) if field.init}
    _field_aliases(config_cls, fields)
    return fields, typing.get_type_hints(config_cls)


def add_config_arguments(
        parser: argparse.ArgumentParser,
        config_cls: type,
        defaults: dict[str, Any] | None = None,
) -> argparse.ArgumentParser:
    """Declare ``-c/--config`` and every field of the dataclass ``config_cls`` as flags on ``parser``.

    Flags the command line does not give stay out of the parsed namespace (``argparse.SUPPRESS``), so that
    :func:`config_from_args` can put them over the YAML values; ``defaults`` (field name -> value) only changes
    the defaults the help shows (the dataclass's otherwise).
    """
    fields, hints = _config_fields(config_cls)
    shown_defaults = {name: _field_default(field) for name, field in fields.items()}
    shown_defaults.update(defaults or {})
    parser.add_argument(
        "-c", "--config", default=None, metavar="FILE",
        help="YAML file of field: value defaults; command-line flags override it (default: None)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, field in fields.items():
        group_title = field.metadata.get("group")
        target = groups.setdefault(group_title, parser.add_argument_group(group_title)) if group_title else parser
        default = shown_defaults[name]
        shown = "required" if default is dataclasses.MISSING else _format_value(default)
        help_text = f"{field.metadata.get('help', '')} (default: {shown})".strip()
        annotation = hints[name]
        inner, _ = _unwrap_optional(annotation)
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _sequence_element(inner) is not None:
            kwargs.update(nargs="+", metavar=_type_name(_sequence_element(inner)[0]).upper())
        else:
            def convert(text: str, _name: str = name, _annotation: Any = annotation) -> Any:
                try:
                    return _coerce(_name, _annotation, text)
                except (TypeError, ValueError) as error:
                    raise argparse.ArgumentTypeError(str(error)) from None
            convert.__name__ = _type_name(inner)
            kwargs["type"] = convert
            if typing.get_origin(inner) is Literal:
                kwargs["metavar"] = "{" + ",".join(str(choice) for choice in typing.get_args(inner)) + "}"
        target.add_argument(*_flags(name), **kwargs)
        for alias in field.metadata.get("aliases", ()):
            alias_kwargs = dict(kwargs, dest=_ALIAS_DEST.format(alias), help=f"alias of {_flags(name)[0]}")
            if inner is not bool:
                alias_kwargs.setdefault("metavar", name.upper())
            target.add_argument(*_flags(alias), **alias_kwargs)
    return parser


def config_from_args(config_cls: type, args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The ``config_cls`` instance of a namespace parsed with :func:`add_config_arguments`: dataclass defaults,
    then the YAML file of ``args.config``, then the flags given. A missing required field or a malformed list is a
    ``parser.error``; a bad YAML file raises FileNotFoundError / ValueError, and so does the dataclass's own
    validation (``__post_init__``)."""
    fields, hints = _config_fields(config_cls)
    values = {name: _field_default(field) for name, field in fields.items()}
    if getattr(args, "config", None):
        values.update(_read_yaml_config(args.config, config_cls, fields, hints))
    args = argparse.Namespace(**vars(args))
    given_as = {name: _flags(name)[0] for name in fields if name in vars(args)}
    for alias, name in _field_aliases(config_cls, fields).items():
        if _ALIAS_DEST.format(alias) not in vars(args):
            continue
        alias_flag = _flags(alias)[0]
        if name in given_as:
            parser.error(f"{given_as[name]} and {alias_flag} both give the field {name!r} ({alias_flag} is an alias "
                         f"of {_flags(name)[0]}); give one of them, not both")
        given_as[name] = alias_flag
        setattr(args, name, getattr(args, _ALIAS_DEST.format(alias)))
    for name in fields:
        if name not in vars(args):
            continue
        value = getattr(args, name)
        if _sequence_element(_unwrap_optional(hints[name])[0]) is not None:  # nargs="+": the tokens, joined
            try:
                value = _coerce(name, hints[name], " ".join(value))
            except (TypeError, ValueError) as error:
                parser.error(str(error))
        values[name] = value
    missing = [name for name, value in values.items() if value is dataclasses.MISSING]
    if missing:
        parser.error(f"missing required option(s): {', '.join('--' + name.replace('_', '-') for name in missing)}")
    return config_cls(**values)


def parse_config(
        config_cls: type,
        argv: Sequence[str] | None = None,
        description: str | None = None,
):
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``config_cls``.

    Stage 1 reads only ``-c/--config file.yaml`` (an unknown key is a ValueError listing the valid ones), so that
    ``--help`` shows the YAML's values as defaults; stage 2 parses every flag (:func:`add_config_arguments`).
    """
    fields, hints = _config_fields(config_cls)
    argv = list(sys.argv[1:] if argv is None else argv)
    config_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_parser.add_argument("-c", "--config", default=None)
    stage_one, _ = config_parser.parse_known_args(argv)
    yaml_values = _read_yaml_config(stage_one.config, config_cls, fields, hints) if stage_one.config else {}
    parser = argparse.ArgumentParser(
        description=description or (config_cls.__doc__ or "").strip() or None, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)  # a recipe's banner keeps its command lines
    add_config_arguments(parser, config_cls, yaml_values)
    return config_from_args(config_cls, parser.parse_args(argv), parser)
