"""Config dataclasses (HafConfig, RLHFConfig) as command-line options: one --field-name flag per
field, made from its metadata (type, help, group, default), so a new field gets its flag without
an edit to the CLI."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hafrm.config import GROUPS, HafConfig, check_fields, field_help, read_options, read_yaml_mapping
from hafrm.data.formats import DataOptions

_CONFIG_OPTION = typer.Option("--config", help="YAML file of the config's fields; the flags given override it.")


def config_parameters(cls: type = HafConfig, groups: dict[str, str] = GROUPS) -> list[inspect.Parameter]:
    """`--config FILE`, then one keyword parameter per field of the config dataclass `cls` (whose
    fields carry help and a group of `groups`), for a command's `__signature__`."""
    hints = typing.get_type_hints(cls)
    config = inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Path | None, _CONFIG_OPTION]
    )
    aliases = TRAIN_ALIASES if cls is HafConfig else {}
    return [config, *(_field_option(f, hints[f.name], groups, aliases) for f in dataclasses.fields(cls))]


def build_config(config: Path | None, overrides: dict[str, Any], cls: type = HafConfig) -> Any:
    """The YAML file's fields (if any), then every flag given: a flag left out (None) keeps the file's value."""
    base = read_yaml_mapping(config) if config else {}  # checked as a whole once the flags are in
    check_fields(cls, base, str(config))
    base.update({k: _unset(v) for k, v in overrides.items() if v is not None and v != []})
    return cls.from_dict(base, source=str(config) if config else "config")


# `hafrm train` has one flag per HafConfig field, --field-name (plus these older spellings), made
# from the field's type, help and group, so a new field gets its flag without an edit here.
TRAIN_ALIASES = {"per_device_train_batch_size": "--batch-size", "data_format": "--format", "data_map": "--map"}
UNSET = "none"  # given to an optional number's flag: set the field to None (e.g. over a YAML value)


class _Unset:
    """What UNSET parses to: a flag that was given and sets its field to None (a flag left out is None)."""


def _unset(value: Any) -> Any:
    return None if isinstance(value, _Unset) else value


def _number_or_unset(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.strip().lower() == UNSET:
            return _Unset()
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither {kind.__name__} nor '{UNSET}'") from None

    return parse


def _number_or_word(kind: type) -> Callable[[str], Any]:
    """A number, or else the word as given (the field's own validation names the words it takes)."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            return text.strip()

    return parse


def _field_option(
    f: dataclasses.Field, kind: Any, groups: dict[str, str], aliases: dict[str, str]
) -> inspect.Parameter:
    """A config field as a command's option; its default is None (overrides nothing), and --help
    shows the field's default."""
    flags = ["--" + f.name.replace("_", "-")] + ([aliases[f.name]] if f.name in aliases else [])
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    text, extra = f.metadata["help"], {}
    optional = type(None) in typing.get_args(kind)
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    words = typing.get_origin(kind) in (typing.Union, types.UnionType) and str in typing.get_args(kind)  # alpha
    if words:
        kind = next(a for a in typing.get_args(kind) if a is not str)
        extra = {"parser": _number_or_word(kind), "metavar": f"<{kind.__name__}|word>"}
    if kind is bool:
        flags = [f"{flag}/--no-{flag[2:]}" for flag in flags]
        shown = ("" if default else "no-") + f.name.replace("_", "-")
    elif isinstance(default, list):
        shown = " ".join(default) or "none"
    else:
        shown = UNSET if default is None else str(default)
    if optional and kind is not str and not words:
        extra = {"parser": _number_or_unset(kind), "metavar": f"<{kind.__name__}>"}
        text += f" '{UNSET}' unsets it."
    group = groups[f.metadata["group"]]
    text += escape(f" [default: {shown}]")  # the field's default: the option's own is None
    option = typer.Option(*flags, help=text, rich_help_panel=group, **extra)
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


# Options shared by the commands that read data (`train` has its own: its defaults come from HafConfig).
FormatOption = Annotated[str | None, typer.Option("--format", help=field_help("data_format"))]
MapOption = Annotated[list[str] | None, typer.Option("--map", help=field_help("data_map"))]
OnErrorOption = Annotated[str, typer.Option(help=field_help("on_error"))]
PkuLabelOption = Annotated[str, typer.Option(help=field_help("pku_label"))]
PkuFilterOption = Annotated[bool, typer.Option("--pku-safety-filter", help=field_help("pku_safety_filter"))]
# Every command that loads a model folder: its own code runs only when asked.
TrustOption = Annotated[bool, typer.Option("--trust-remote-code", help=field_help("trust_remote_code"))]


def data_options(data_format, data_map, pku_label, pku_safety_filter, on_error="raise") -> DataOptions:
    """The read options of a data command's flags, checked as HafConfig checks them."""
    return read_options(
        data_format=data_format,
        data_map=data_map or [],
        on_error=on_error,
        pku_label=pku_label,
        pku_safety_filter=pku_safety_filter,
    )
