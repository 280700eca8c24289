"""Environments for the command-line processes tests start."""

from __future__ import annotations

import os

#: What a launcher sets for each rank. A test process that ran training in-process has set them for itself (as a
#: rank 0 of 1, its own port bound), and a child that inherited them would take itself for a launched rank.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the launcher's variables, with `extra` added."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(extra)
    return env
