"""Every command the README and docs/ show is one the harness accepts: `injection ...` and `analysis ...` are
parsed by the real command line (the command must exist, every option must exist and take its value), the
benchmark scripts' arguments by the scripts' own parsers, and `python -c` snippets are compiled with every name
they import resolved. CI runs exactly the README's test command."""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from analysis.cli import app as analysis_app
from harness.commands import LazyCommand
from injection.cli import app as injection_app

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = {"injection": injection_app, "analysis": analysis_app}
#: Where one shell command ends and the next begins, or where its arguments end (redirections).
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTIONS = {">", ">>", "<", "2>", "&>"}


@dataclass(frozen=True)
class Shown:
    """A command as a document shows it."""

    where: str
    words: tuple[str, ...]
    complete: bool
    """From a code block (a whole command); inline mentions may leave out required arguments."""


def code_block_commands(path: Path) -> list[Shown]:
    """The commands of the fenced code blocks, continuation lines joined, comments and `VAR=value` prefixes
    dropped, split at `&&`, `;` and pipes, cut at redirections."""
    shown, lines, in_block = [], path.read_text(encoding="utf-8").splitlines(), False
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        pending += line.rstrip("\\") + " "
        if line.endswith("\\"):
            continue
        text, pending = pending, ""
        try:
            lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            words = list(lexer)
        except ValueError:  # an output line with an unbalanced quote, not a command
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word in SEPARATORS:
                while command and re.fullmatch(r"[A-Za-z_]+=\S*", command[0]):
                    command.pop(0)
                if command:
                    shown.append(Shown(f"{path.name}:{start}", tuple(command), complete=True))
                command = []
            elif word in REDIRECTIONS or (command and command[-1] in REDIRECTIONS):
                command.append(">")  # marks the end of the arguments
            else:
                command.append(word)
    return [Shown(s.where, s.words[: s.words.index(">")] if ">" in s.words else s.words, True) for s in shown]


def inline_commands(path: Path) -> list[Shown]:
    """Commands in inline code (which may run over a line break), outside the fenced blocks."""
    text = path.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", lambda m: "\n" * m[0].count("\n"), text, flags=re.S | re.M)
    shown = []
    for match in re.finditer(r"``?([^`]+)``?", prose):
        span = " ".join(match[1].split())
        words = re.sub(r"^(?:[A-Za-z_]+=\S+ )+", "", span)
        if re.match(r"(injection|analysis) [a-z.|-]|python3? (-c |-m benchmarks\.|benchmarks/)", words):
            line = prose.count("\n", 0, match.start()) + 1
            shown.append(Shown(f"{path.name}:{line}", tuple(shlex.split(words, posix=True)), complete=False))
    return shown


def all_commands() -> list[Shown]:
    return [c for path in DOCUMENTS for c in code_block_commands(path) + inline_commands(path)]


def real(command):
    return command.command if isinstance(command, LazyCommand) else command


def parse_harness(shown: Shown) -> None:
    """Walk the command path (`a|b` tries each), then parse the rest as that command would."""
    program, *rest = shown.words
    while rest and rest[-1] == "..." and not (len(rest) > 1 and rest[-2].startswith("-")):
        rest.pop()  # "and more options" (after an option it stands for the option's value)
    words = [re.sub(r"\$\w+", "0", w) for w in rest]  # shell variables in examples (`--node-rank $r`)
    root = typer.main.get_command(PROGRAMS[program])
    todo = [(root, program, words, None)]
    while todo:
        command, name, args, parent = todo.pop()
        ctx = typer.Context(command, info_name=name, parent=parent)
        if hasattr(command, "get_command") and args and not args[0].startswith("-"):  # a group of commands
            if args[0] == "..." or re.fullmatch(r"[A-Z_]+", args[0]):
                continue  # a family of commands named by its group, or a placeholder (`injection NAME`)
            for alternative in args[0].split("|"):
                sub = command.get_command(ctx, alternative)
                assert sub is not None, f"{shown.where}: `{' '.join(shown.words)}`: no command {alternative!r}"
                todo.append((real(sub), alternative, args[1:], ctx))
            continue
        try:
            command.make_context(name, list(args), parent=parent).close()
        except (typer.Exit, RuntimeError) as err:  # --help, --version
            assert type(err).__name__ == "Exit", err
        except Exception as err:  # typer's own click: its usage errors
            if type(err).__name__ == "MissingParameter" and not shown.complete:
                continue
            message = err.format_message() if hasattr(err, "format_message") else repr(err)
            raise AssertionError(f"{shown.where}: `{' '.join(shown.words)}`: {message}") from None


class Parsed(Exception):
    """Raised by the stand-in for argparse once a script's arguments are parsed: nothing else runs."""


def parse_script(shown: Shown, monkeypatch) -> None:
    """`python benchmarks/NAME.py ARGS` or `python -m benchmarks.NAME ARGS`, parsed by the script's own parser."""
    words = list(shown.words[1:])
    path = REPO / words.pop(0) if words[0] != "-m" else REPO / (words[1].replace(".", "/") + ".py")
    args = words if shown.words[1] != "-m" else words[2:]
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except Parsed:
        return
    except SystemExit as err:
        raise AssertionError(f"{shown.where}: `{' '.join(shown.words)}`: the script refused it ({err})") from None
    raise AssertionError(f"{shown.where}: {path.name} never parsed its arguments")


def check_snippet(shown: Shown) -> None:
    """`python -c CODE`: it compiles and every `from MODULE import NAME` resolves."""
    code = shown.words[shown.words.index("-c") + 1]
    tree = compile(code, shown.where, "exec", flags=0x400)  # ast.PyCF_ONLY_AST
    for node in tree.body:
        if node.__class__.__name__ == "ImportFrom":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{shown.where}: {node.module} has no {alias.name}"
        elif node.__class__.__name__ == "Import":
            for alias in node.names:
                importlib.import_module(alias.name)


def kind(shown: Shown) -> str | None:
    words = shown.words
    if words[0] in PROGRAMS:
        return "harness"
    if words[0] in ("python", "python3") and len(words) > 1:
        if words[1] == "-c":
            return "snippet"
        if words[1].startswith("benchmarks/") or (words[1] == "-m" and words[2].startswith("benchmarks.")):
            return "script"
    return None


COMMANDS = [c for c in all_commands() if kind(c)]


def test_the_documents_show_commands_of_every_kind():
    kinds = {kind(c) for c in COMMANDS}
    assert kinds == {"harness", "script", "snippet"}, kinds
    assert len([c for c in COMMANDS if c.complete]) > 50


@pytest.mark.parametrize("shown", COMMANDS, ids=[f"{c.where} {' '.join(c.words)[:60]}" for c in COMMANDS])
def test_a_shown_command_parses(shown, monkeypatch):
    {"harness": parse_harness, "snippet": check_snippet}.get(kind(shown), lambda s: parse_script(s, monkeypatch))(shown)


def test_a_wrong_command_or_option_is_noticed():
    for words in (
        ("injection", "demo", "--fast"),
        ("analysis", "fit", "runs/x", "--window", "wide"),
        ("injection", "nothing"),
        ("analysis", "fit|draw", "runs/x"),
        ("injection", "pull"),
    ):
        with pytest.raises(AssertionError):
            parse_harness(Shown("test", words, complete=True))
    parse_harness(Shown("test", ("injection", "pull"), complete=False))  # an inline mention of a command


def test_ci_runs_exactly_the_readme_set_up_commands():
    """The README's first block is the install line and the test command; .ci/run runs both as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```")[1].splitlines()[1:]
    install, tests = block[0], block[1]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert 'pip install -e ".[dev]"' in install and 'pip install -e ".[dev]"' in ci
    assert tests.startswith("python -m pytest") and tests in ci, (tests, ci)
