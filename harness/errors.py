"""The one exception type for bad input, and the Typer app class that turns it into exit code 2."""

from __future__ import annotations

import contextlib
import errno
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import typer

from harness.streams import tolerant_output


class UserError(Exception):
    """Input the user can fix (a bad file, an unknown step, a schedule that does not fit).

    The message must say which file, which item and which field. Command-line entry points print it
    without a traceback and exit with code 2; library callers can catch it like any exception.
    """


class Stopped(Exception):
    """A command that stopped at a clean point on purpose (a signal, a data host that went away): its message says
    what was kept and the command that continues; the process exits with `exit_code`."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every `finally` and staging clean-up runs."""


#: Operating-system failures that are about the user's files or disk, not about the program: reported as one
#: line naming the path, like a UserError.
_USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a path component is not a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (the disk or file system failed)",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
}


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError about the user's files (None for other OS errors)."""
    what = _USER_OS_ERRORS.get(err.errno or -1)
    if what is None:
        return None
    where = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    return f"{where}: {what}" if where else what


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so that every
    `finally` and staging clean-up runs; a handler someone else installed is left alone."""
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def fail_interrupted(err: KeyboardInterrupt) -> NoReturn:
    """The one line and exit code (130 SIGINT, 143 SIGTERM) of a command stopped by a signal."""
    terminated = isinstance(err, Terminated)
    _fail(
        f"interrupted ({'SIGTERM' if terminated else 'SIGINT'}) before the command finished; outputs are written "
        "whole or not at all, so nothing half-written is left: run the command again",
        128 + (signal.SIGTERM if terminated else signal.SIGINT),
    )


def _exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tolerant_output()
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except UserError as err:
            return _fail(str(err))
        except Stopped as err:
            # A run stopped inside a command that runs it for the user (the demo, the capacity ladder): the same
            # command continues it too.
            again = command_line()
            return _fail(f"{err}; or run `{again}` again, which continues from there", err.exit_code)
        except KeyboardInterrupt as err:
            fail_interrupted(err)
        except OSError as err:
            message = describe_os_error(err)
            if message is None:
                raise
            return _fail(message)
        except RecursionError:
            return _fail("an input is nested too deeply to read (a JSON or YAML document thousands of levels deep?)")
        except RuntimeError as err:
            # pathlib's resolve() on Python < 3.13 reports a symlink loop this way rather than as ELOOP
            if not str(err).startswith("Symlink loop"):
                raise
            where = str(err).removeprefix("Symlink loop from ").strip("'\"")
            return _fail(f"{where}: a symbolic link that leads nowhere (a symlink loop)")

    return wrapper


def command_line() -> str:
    """The command as the user typed it (`injection demo --quick`, also under `python -m injection`)."""
    program = Path(sys.argv[0]).name if sys.argv else "?"
    if program == "__main__.py":
        program = Path(sys.argv[0]).parent.name
    return " ".join([program, *sys.argv[1:]])


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code=code)


class HarnessTyper(typer.Typer):
    """A Typer app whose commands report `UserError` (and disk or permission failures) as one line on
    stderr and exit 2."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # from the start, not only once a command runs: a command's imports take seconds
        with sigterm_as_interrupt():
            return super().__call__(*args, **kwargs)

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


def add_version_option(app: typer.Typer, program: str) -> None:
    """`PROGRAM --version`: the installed version of the harness, then exit."""

    def show(value: bool) -> None:
        if value:
            try:
                number = version("knowledge-injection")
            except PackageNotFoundError:
                number = "unknown (not installed)"
            print(f"{program} {number}")
            raise typer.Exit()

    @app.callback()
    def main(
        _version: bool = typer.Option(
            False, "--version", help="Show the version and exit.", callback=show, is_eager=True
        ),
    ) -> None:
        """The harness's command line."""
