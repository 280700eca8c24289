"""The one exception type for bad input, and the Typer app class that turns it into exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer


class UserError(Exception):
    """Input the user can fix (a bad file, an unknown step, a schedule that does not fit).

    The message must say which file, which item and which field. Command-line entry points print it
    without a traceback and exit with code 2; library callers can catch it like any exception.
    """


def _exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper


class HarnessTyper(typer.Typer):
    """A Typer app whose commands report `UserError` as one clear line on stderr and exit 2."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_exit_on_user_error(fn))
            return fn

        return decorator

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().callback(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_exit_on_user_error(fn))
            return fn

        return decorator
