"""The `tiny` family (an OLMo-architecture model small enough for a CPU) and the writer of the checkpoint
directory layout that every pulled, built or trained checkpoint shares (docs/design.md, "Checkpoints").
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from injection.catalog import Architecture, Family, load_catalog
from harness.atomic import replace_dir, staging_dir
from harness.errors import UserError

CHECKPOINT_JSON = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT_VERSION = 1


def hf_config(arch: Architecture):
    """transformers' `OlmoConfig` for an OLMo (Feb 2024) architecture."""
    from transformers import OlmoConfig

    return OlmoConfig(
        vocab_size=arch.embedding_size,
        hidden_size=arch.d_model,
        intermediate_size=arch.mlp_hidden_size // 2,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads,
        num_key_value_heads=arch.n_kv_heads,
        max_position_embeddings=arch.max_sequence_length,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        clip_qkv=arch.clip_qkv,
        tie_word_embeddings=arch.weight_tying,
        pad_token_id=arch.pad_token_id,
        eos_token_id=arch.eos_token_id,
        bos_token_id=None,
        attention_bias=False,
    )


def is_complete(path: str | Path) -> bool:
    """A checkpoint directory counts as complete only once checkpoint.json, written last, exists."""
    return (Path(path) / CHECKPOINT_JSON).is_file()


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """checkpoint.json of a complete directory (UserError naming the directory otherwise)."""
    p = Path(path) / CHECKPOINT_JSON
    if not p.is_file():
        raise UserError(f"{path} is not a complete checkpoint directory ({CHECKPOINT_JSON} is missing)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{p}: not valid JSON: {err}") from None


def load_optimizer_state(path: str | Path) -> dict[str, Any] | None:
    """optimizer.safetensors as a dict (`exp_avg/<name>`, `exp_avg_sq/<name>`, `step`), or None."""
    from safetensors.torch import load_file

    p = Path(path) / OPTIMIZER_FILE
    return load_file(str(p)) if p.is_file() else None


def write_checkpoint_json(directory: Path, meta: dict[str, Any]) -> None:
    tmp = directory / f".{CHECKPOINT_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / CHECKPOINT_JSON)


def save_checkpoint_dir(model, tokenizer, dest: str | Path, meta: dict[str, Any],
                        optimizer_state: dict[str, Any] | None) -> Path:
    """Write an HF model, its tokenizer, optional optimizer moments and checkpoint.json to `dest`.

    `meta` holds the checkpoint.json fields (family, step, source, tokens_per_step, global_batch_size,
    seq_len, optimizer, lr_schedule, ...); `has_optimizer_state` is filled in here. `optimizer_state`
    maps `exp_avg/<hf param name>`, `exp_avg_sq/<hf param name>` and `step` to tensors. Everything is
    written into a temporary sibling directory and renamed into place, so a reader never sees a
    half-written checkpoint; an existing `dest` is replaced.
    """
    from safetensors.torch import save_file

    dest = Path(dest)
    tmp = staging_dir(dest)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if optimizer_state:
            tensors = {k: v.detach().contiguous().cpu() for k, v in optimizer_state.items()}
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
        write_checkpoint_json(tmp, {**meta, "has_optimizer_state": bool(optimizer_state),
                                    "format_version": FORMAT_VERSION})
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def family_meta(family: Family, step: int, source: str, **extra: Any) -> dict[str, Any]:
    """checkpoint.json fields that come from the catalog's facts about a family at a step."""
    batch = family.batch_size_at(step)
    return {
        "family": family.name,
        "step": step,
        "source": source,
        "tokens_per_step": batch * family.seq_len,
        "global_batch_size": batch,
        "seq_len": family.seq_len,
        "optimizer": family.optimizer.as_json(),
        "lr_schedule": family.lr_schedule.as_json(),
        **extra,
    }


def build_tiny_checkpoint(dest: str | Path, *, seed: int = 0, tokenizer: Any = None,
                          meta_overrides: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """`tiny@0`: a randomly initialised OLMo-architecture model in the checkpoint layout, built offline.

    `overrides` replace fields of the catalog's tiny architecture (d_model, n_layers, n_heads, n_kv_heads,
    mlp_hidden_size, vocab_size, embedding_size, max_sequence_length, ...). The weights depend only on
    `seed` and the architecture. `tokenizer` (default: the OLMo tokenizer) is saved beside the model, and
    `meta_overrides` replace checkpoint.json fields (e.g. the demo's own `lr_schedule` and batch size).
    """
    import torch
    from transformers import OlmoForCausalLM

    from harness.tokenizers import load_tokenizer

    family = load_catalog().family("tiny")
    try:
        arch = replace(family.architecture, **overrides)
    except TypeError as err:
        raise UserError(f"build_tiny_checkpoint: {err}") from None
    if "max_sequence_length" in overrides:
        family = replace(family, data_order=replace(family.data_order, seq_len=arch.max_sequence_length))
    torch.manual_seed(seed)
    model = OlmoForCausalLM(hf_config(arch))
    meta = {**family_meta(family, 0, "built", seed=seed, trainer_state=None), **(meta_overrides or {})}
    return save_checkpoint_dir(model, tokenizer if tokenizer is not None else load_tokenizer("olmo"), dest, meta, None)
