"""Keeping stdout for results: libraries that log to stdout are pointed at stderr.

DeepSpeed's logger binds `sys.stdout` when it is first imported (its accelerator line, "Setting accelerator to
CPU", among others), so `DIR=$(injection pull ...)` would capture it. Importing it here first, with stdout pointed
at stderr for the moment of the import, sends everything it logs to stderr for the rest of the process.
"""

from __future__ import annotations

import contextlib
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
