"""A tiny checkpoint in the original OLMo layout, written with ai2-olmo's own model class."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import yaml

TINY_OLMO_MODEL = {
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 2,
    "mlp_ratio": 4,
    "weight_tying": True,
    "alibi": False,
    "rope": True,
    "flash_attention": False,
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "multi_query_attention": False,
    "include_bias": False,
    "block_type": "sequential",
    "layer_norm_type": "default",
    "layer_norm_with_affine": False,
    "bias_for_layer_norm": False,
    "attention_layer_norm_with_affine": False,
    "activation_type": "swiglu",
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
    "max_sequence_length": 64,
    "vocab_size": 50280,
    "embedding_size": 50304,
    "eos_token_id": 50279,
    "pad_token_id": 1,
    "init_device": "cpu",
    "init_fn": "normal",
}


def olmo_model(**overrides):
    from olmo.config import ModelConfig
    from olmo.model import OLMo

    torch.manual_seed(0)
    return OLMo(ModelConfig(**{**TINY_OLMO_MODEL, **overrides}))


def write_original_checkpoint(
    dest: Path, *, step: int = 40, global_batch_size: int = 4, **overrides
) -> tuple[Path, object]:
    """config.yaml, model.pt, optim.pt (AdamW after 3 updates, state keyed by index with param_names,
    like OLMo's optimizer), train.pt (OLMo's trainer state, with numpy rng and Path lists)."""
    dest.mkdir(parents=True, exist_ok=True)
    model = olmo_model(**overrides)
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(
        [{"params": list(model.parameters()), "param_names": names}], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1
    )
    x = torch.randint(0, 50280, (2, 16))
    for _ in range(3):
        opt.zero_grad()
        model(x).logits.float().logsumexp(-1).mean().backward()
        opt.step()
    torch.save(model.state_dict(), dest / "model.pt")
    torch.save(opt.state_dict(), dest / "optim.pt")
    torch.save(
        {
            "epoch": 0,
            "global_step": step,
            "global_train_examples_seen_this_epoch": step * global_batch_size,
            "global_train_tokens_seen": step * global_batch_size * 64,
            "world_size": 1,
            "checkpoints": [Path("/runs/x/step39")],
            "unsharded_checkpoints": [],
            "ephemeral_checkpoints": [],
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()},
        },
        dest / "train.pt",
    )
    config = {
        "run_name": "tiny-original",
        "seed": 6198,
        "model": {**TINY_OLMO_MODEL, **overrides},
        "optimizer": {"name": "adamw", "learning_rate": 4.0e-4, "weight_decay": 0.1, "betas": [0.9, 0.95]},
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": 10, "alpha_f": 0.1},
        "tokenizer": {"identifier": "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"},
        "max_duration": 1000,
        "global_train_batch_size": global_batch_size,
        "max_grad_norm": 1.0,
    }
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest, model
