"""A command line whose commands are imported when they run.

The harness's commands pull in torch, DeepSpeed, transformers and matplotlib (seconds of start-up), and
`injection --help` or `analysis --help` should not. So the two root command lines name each command by where it
lives, `package.module:attribute`, in a table (`CommandRef`), and a command's module is imported only when that
command runs or prints its own help. This is the one place where the code base defers imports to keep start-up
fast: every module behind a command imports what it needs at its top.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from harness.errors import HarnessTyper, add_version_option, fail_interrupted


@dataclass(frozen=True)
class CommandRef:
    """One command of a root command line, not yet imported."""

    name: str
    target: str
    """`package.module:attribute`: a command function, or a Typer app whose commands become subcommands."""
    help: str
    """What `--help` of the root says about it (and the command's own help where it has no docstring)."""


def load_command(ref: CommandRef) -> TyperCommand | TyperGroup:
    """The click command of `ref`, its module imported now."""
    module, _, attribute = ref.target.partition(":")
    try:
        target: Any = getattr(importlib.import_module(module), attribute)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM during the seconds of imports: the same one line
        fail_interrupted(err)
    if not isinstance(target, typer.Typer):
        single = HarnessTyper()
        single.command(ref.name, help=None if inspect.getdoc(target) else ref.help)(target)
        target = single
    command = typer.main.get_command(target)
    command.name = ref.name
    command.help = command.help or ref.help
    return command


class LazyCommand(TyperCommand):
    """Stands in for a command in the root's listing; the first parse or call imports the real one."""

    def __init__(self, ref: CommandRef) -> None:
        super().__init__(ref.name, help=ref.help, add_help_option=False)
        self.ref = ref
        self._command: TyperCommand | TyperGroup | None = None

    @property
    def command(self) -> TyperCommand | TyperGroup:
        if self._command is None:
            self._command = load_command(self.ref)
        return self._command

    def make_context(self, info_name, args, parent=None, **extra) -> typer.Context:
        return self.command.make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        return self.command.invoke(ctx)


def lazy_app(program: str, help: str, commands: Callable[[], Sequence[CommandRef]]) -> HarnessTyper:
    """The root command line of `program` (with `--version`): the commands `commands()` lists (called whenever
    the command line is built, so it may discover them), each imported only when used."""

    class Commands(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for ref in commands():
                self.commands.setdefault(ref.name, LazyCommand(ref))

    app = HarnessTyper(help=help, cls=Commands)
    add_version_option(app, program)
    return app
