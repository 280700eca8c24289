"""The training engine: configuration, inputs, the DeepSpeed loop, probe evaluation.

    cfg = load_config("smoke", ["total_steps=4"])
    run_dir = run_training(cfg, prepare_inputs(cfg))

The names below are imported lazily, so that the command line does not load torch before it needs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_config", "prepare_inputs", "run_training"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from injection.engine.config import load_config

        return load_config
    if name == "prepare_inputs":
        from injection.engine.inputs import prepare_inputs

        return prepare_inputs
    if name == "run_training":
        from injection.engine.loop import run_training

        return run_training
    raise AttributeError(f"module 'injection.engine' has no attribute {name!r}")
