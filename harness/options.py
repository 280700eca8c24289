"""Command-line options declared once: the fields of a dataclass become a command's options.

A command with a parameter annotated by a dataclass, decorated with `options_from(Cls)`, gets one option per
field of the class: `--field-name`, with the field's type and default and, as help, the docstring written under
the field (what `harness.typed.field_docs` reads); a bool field is a `--name/--no-name` switch. The command is
then called with the instance built from them and checked by its `validate()`. Tuple fields are given
comma-separated (`--at 100,1000`). A message of `validate()` that names `option FIELD:` is reported with the
flag instead (`--field-name:`, and the text given for a tuple), since that is what the user typed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from harness.errors import UserError
from harness.typed import field_docs


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _cli_type(tp: Any) -> Any:
    """The type the command line reads for a field of type `tp` (tuples as comma-separated text)."""
    return str if _is_tuple(tp) else tp


def _cli_default(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def parse_list(text: str, tp: Any, name: str) -> tuple:
    """`--name 1,2,3` as the tuple field type `tp` (tuple[int, ...] or tuple[float, ...])."""
    item = typing.get_args(tp)[0]
    example = "100,1000" if item is int else "0.8,0.5,0.3"
    what = "whole numbers" if item is int else "numbers"
    try:
        numbers = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag(name)} {text!r}: expected comma-separated {what}, e.g. {example}") from None
    if not numbers:
        raise UserError(f"{flag(name)} {text!r}: expected at least one number")
    if item is not int:
        return tuple(numbers)
    if any(math.isfinite(v) and v != int(v) for v in numbers):
        raise UserError(f"{flag(name)} {text!r}: expected comma-separated {what}, e.g. {example}")
    # an infinite value (1e400) is left as it is for the options' own validation to name, with its bounds
    return tuple(int(v) if math.isfinite(v) else v for v in numbers)


def option_parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per field of `cls`, annotated as a typer option (its help the field's docstring)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    params = []
    for f in dataclasses.fields(cls):
        default = f.default
        if default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has no default: a command-line option needs one")
        tp = hints[f.name]
        decls = f"{flag(f.name)}/--no-{f.name.replace('_', '-')}" if tp is bool else flag(f.name)
        option = typer.Option(decls, help=docs.get(f.name, ""))
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_cli_default(default),
                annotation=Annotated[_cli_type(tp), option],
            )
        )
    return params


def build_options(cls: type, values: dict[str, Any]) -> Any:
    """The dataclass from the options' values, validated; messages name the flags."""
    hints = typing.get_type_hints(cls)
    parsed = {name: parse_list(v, hints[name], name) if _is_tuple(hints[name]) else v for name, v in values.items()}
    options = cls(**parsed)
    try:
        getattr(options, "validate", lambda: None)()
    except UserError as err:
        text = str(err)
        for name, value in values.items():
            typed = f"{flag(name)} {value!r}:" if _is_tuple(hints[name]) else f"{flag(name)}:"
            text = text.replace(f"option {name}:", typed)
        raise UserError(text) from None
    for name, value in parsed.items():
        if _is_tuple(hints[name]) and typing.get_args(hints[name])[0] is int and not all(type(v) is int for v in value):
            raise UserError(f"{flag(name)} {values[name]!r}: expected comma-separated whole numbers, e.g. 100,1000")
    return options


Command = Callable[..., Any]


def options_from(cls: type) -> Callable[[Command], Command]:
    """Decorator: the command's parameter annotated `cls` becomes the options of `cls`'s fields (see above)."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        [target] = [p.name for p in signature.parameters.values() if p.annotation is cls]
        own = [p for p in signature.parameters.values() if p.name != target]
        fields = option_parameters(cls)
        clash = {p.name for p in own} & {p.name for p in fields}
        if clash:
            raise TypeError(f"{command.__name__}: parameters {sorted(clash)} are also fields of {cls.__name__}")

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in fields}
            return command(**kwargs, **{target: build_options(cls, values)})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + fields
        wrapper.__signature__ = inspect.Signature(params)  # what typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
