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


#: A tiny OLMo 2 model as ai2-olmo configures it (the settings of configs/official-0425/OLMo2-1B-stage1.yaml at
#: a small size, with the dolma2 vocabulary).
TINY_OLMO2_MODEL = {
    **TINY_OLMO_MODEL,
    "n_kv_heads": 2,  # grouped-query attention, which the conversion must split correctly
    "multi_query_attention": None,
    "weight_tying": False,
    "rope_theta": 500000,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "layer_norm_eps": 1e-6,
    "attention_layer_norm": True,
    "attention_layer_norm_with_affine": True,
    "norm_after": True,
    "vocab_size": 100278,
    "embedding_size": 100352,
    "eos_token_id": 100257,
    "pad_token_id": 100277,
    "init_std": 0.02,
}
TINY_OLMO2_CONFIG = {
    "run_name": "tiny-olmo2",
    "seed": 6198,
    "model": TINY_OLMO2_MODEL,
    "softmax_auxiliary_loss": True,
    "auxiliary_loss_multiplier": 1e-5,
    "optimizer": {
        "name": "adamw",
        "learning_rate": 4.0e-4,
        "weight_decay": 0.1,
        "eps": 1e-8,
        "decay_norm_and_bias": True,
        "decay_embeddings": False,
        "betas": [0.9, 0.95],
    },
    "scheduler": {
        "name": "cosine_with_warmup",
        "units": "tokens",
        "t_warmup": 8388608000,
        "t_max": "5e12",
        "alpha_f": 0.1,
        "warmup_min_lr": 0.0,
    },
    "tokenizer": {"identifier": "tokenizers/allenai_dolma2.json"},
    "data": {
        "memmap_dtype": "uint32",
        "instance_filter": {"repetition_max_period": 13, "repetition_min_period": 1, "repetition_max_count": 32},
    },
    "max_duration": "4e12T",
    "global_train_batch_size": 4,
    "max_grad_norm": 1.0,
    "precision": "amp_bf16",
}


def olmo2_model(**overrides):
    """ai2-olmo's own OLMo 2 model, its norm weights moved off 1 so that a mapping that drops one shows."""
    from olmo.config import ModelConfig
    from olmo.model import OLMo

    torch.manual_seed(0)
    model = OLMo(ModelConfig(**{**TINY_OLMO2_MODEL, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def write_original_olmo2_checkpoint(dest: Path, *, step: int = 40, safetensors: bool = False) -> tuple[Path, object]:
    """An unsharded OLMo 2 checkpoint: config.yaml, model and optimizer state (AdamW after 3 updates, keyed by
    parameter name as an unsharded FSDP / OLMo-core state is) as model.pt / optim.pt, or with `safetensors` as
    ai2-olmo's scripts/unshard.py --safe-tensors writes them (model.safetensors / optim.safetensors), and train.pt."""
    dest.mkdir(parents=True, exist_ok=True)
    model = olmo2_model()
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "param_names": names}], lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, 100278, (2, 16))
    for _ in range(3):
        opt.zero_grad()
        model(x).logits.float().logsumexp(-1).mean().backward()
        opt.step()
    raw = opt.state_dict()
    by_name = {
        "state": {names[i]: s for i, s in raw["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in raw["param_groups"]],
    }
    if safetensors:
        from olmo.safetensors_util import state_dict_to_safetensors_file

        state_dict_to_safetensors_file(model.state_dict(), dest / "model.safetensors")
        state_dict_to_safetensors_file(by_name, dest / "optim.safetensors")
    else:
        torch.save(model.state_dict(), dest / "model.pt")
        torch.save(by_name, dest / "optim.pt")
    batch = TINY_OLMO2_CONFIG["global_train_batch_size"]
    torch.save(
        {
            "epoch": 0,
            "global_step": step,
            "global_train_examples_seen_this_epoch": step * batch,
            "global_train_tokens_seen": step * batch * TINY_OLMO2_MODEL["max_sequence_length"],
            "world_size": 1,
        },
        dest / "train.pt",
    )
    (dest / "config.yaml").write_text(yaml.safe_dump(TINY_OLMO2_CONFIG))
    return dest, model
