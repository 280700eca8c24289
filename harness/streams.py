"""Keeping stdout for results: libraries that log to stdout are pointed at stderr.

DeepSpeed's logger binds `sys.stdout` when it is first imported (its accelerator line, "Setting accelerator to
CPU", among others), so `DIR=$(injection pull ...)` would capture it. Importing it here first, with stdout pointed
at stderr for the moment of the import, sends everything it logs to stderr for the rest of the process.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import sys


@contextlib.contextmanager
def stdout_to_stderr():
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def import_deepspeed():
    """`deepspeed`, imported so that its logging goes to stderr."""
    if "deepspeed" not in sys.modules:
        with stdout_to_stderr():
            import deepspeed  # noqa: F401
    return sys.modules["deepspeed"]


#: Characters the output uses that an ASCII terminal cannot show, as ASCII.
_ASCII = {
    "±": "+/-",
    "×": "x",
    "…": "...",
    "–": "-",
    "—": "--",
    "≥": ">=",
    "≤": "<=",
    "≠": "!=",
    "≈": "~",
    "→": "->",
    "←": "<-",
    "ℓ": "l",
    "θ": "theta",
    "·": ".",
    "√": "sqrt",
    "∞": "inf",
    "²": "^2",
    "⁻": "^-",
    "≪": "<<",
}


def _degrade(err: UnicodeError):
    text = err.object[err.start : err.end]
    return "".join(_ASCII.get(c, "?") for c in text), err.end


codecs.register_error("harness-degrade", _degrade)


def tolerant_output() -> None:
    """Make stdout and stderr degrade what their encoding cannot show (`±` becomes `+/-` on an ASCII terminal,
    LANG=C) instead of raising UnicodeEncodeError in the middle of a result."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or stream.errors == "harness-degrade":
            continue
        if codecs.lookup(stream.encoding or "ascii").name in ("utf-8", "utf-16", "utf-32"):
            continue
        stream.reconfigure(errors="harness-degrade")
