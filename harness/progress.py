"""Progress on stderr: a live bar on a terminal, a plain line every so often elsewhere.

A batch job under a scheduler has no terminal, and a live bar would write nothing useful to its log; there the
same calls print `description: 120/2,500 (4.8 %) … elapsed 1m02s, eta 21m` lines instead, at most one per task
every `INJECTION_LOG_SECONDS` seconds (default 30) and once when a task ends. Results go to stdout, never here.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    visible: bool = True
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    start_completed: float = 0.0
    last_print: float = 0.0
    finished_printed: bool = False


class LineProgress:
    """The subset of `rich.progress.Progress` the project uses, printing plain lines (for non-terminals)."""

    def __init__(self, interval: float | None = None, stream=None, bytes_unit: bool = False) -> None:
        self.interval = float(os.environ.get("INJECTION_LOG_SECONDS", "30")) if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.bytes_unit = bytes_unit
        self.tasks: dict[int, _Task] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None: ...

    def stop(self) -> None:
        for task in self.tasks.values():
            if task.visible and not task.finished_printed and task.completed > task.start_completed:
                self._print(task)

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, visible: bool = True, **fields: Any
    ) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(description, total, completed, visible, fields, start_completed=completed)
        return task_id

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        if visible is not None:
            task.visible = visible
        task.fields.update(fields)
        self._maybe_print(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _maybe_print(self, task: _Task) -> None:
        if not task.visible:
            return
        done = task.total is not None and task.completed >= task.total
        now = time.monotonic()
        if done and not task.finished_printed:
            task.finished_printed = True
            self._print(task)
        elif not done and now - task.last_print >= self.interval:
            self._print(task)

    def _amount(self, value: float) -> str:
        if self.bytes_unit:
            for unit in ("B", "KB", "MB", "GB", "TB"):
                if value < 1000 or unit == "TB":
                    return f"{value:,.1f} {unit}" if unit != "B" else f"{value:,.0f} B"
                value /= 1000
        return f"{value:,.0f}"

    def _print(self, task: _Task) -> None:
        task.last_print = time.monotonic()
        elapsed = task.last_print - task.started
        parts = [f"{task.description}: {self._amount(task.completed)}"]
        if task.total:
            parts[0] += f"/{self._amount(task.total)} ({100 * task.completed / task.total:.1f} %)"
        info = task.fields.get("info")
        if info:
            parts.append(str(info))
        parts.append(f"elapsed {_duration(elapsed)}")
        rate = (task.completed - task.start_completed) / elapsed if elapsed > 0 else 0.0
        if task.total and rate > 0 and task.completed < task.total:
            parts.append(f"eta {_duration((task.total - task.completed) / rate)}")
        print(", ".join(parts), file=self.stream, flush=True)


def progress(*columns: Any, transient: bool = False, bytes_unit: bool = False):
    """A progress display on stderr: `rich.progress.Progress(*columns)` on a terminal, `LineProgress` elsewhere.

    Both support `with`, `add_task`, `update`, `advance`, `start` and `stop`."""
    if not stderr_is_terminal():
        return LineProgress(bytes_unit=bytes_unit)

    if not columns:
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    return _RichWithInfo(*columns, console=Console(stderr=True), transient=transient)


class _RichWithInfo:
    """rich's Progress whose tasks always carry an `info` field (so one column set serves every caller)."""

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        self._progress = Progress(*columns, **kwargs)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, visible: bool = True, **fields: Any
    ) -> int:
        fields.setdefault("info", "")
        return self._progress.add_task(description, total=total, completed=completed, visible=visible, **fields)

    def update(self, task_id: int, **kwargs: Any) -> None:
        self._progress.update(task_id, **kwargs)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self._progress.advance(task_id, advance)


def say(message: str, style: str = "cyan", prefix: str = "") -> None:
    """One message line on stderr (never wrapped: logs stay greppable), coloured on a terminal."""
    label = f"[bold {style}]{escape(prefix)}[/] " if prefix else ""
    Console(stderr=True, soft_wrap=True).print(f"{label}[{style}]{escape(message)}[/]", highlight=False)
