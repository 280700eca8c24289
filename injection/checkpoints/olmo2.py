"""The OLMo 2 family (OLMo-2-0425-1B, OLMo-2-1124-7B and 13B): architecture, HF config, AdamW groups, tokenizer,
the training objective's extras, and the conversion of the run's own unsharded checkpoints into the layout.

OLMo 2 is OLMo with its layer norms moved and given weights (ai2-olmo's `norm_after`, RMSNorm with affine weights,
no biases) and with queries and keys normalised over the whole projection before RoPE (`attention_layer_norm`):
transformers' `Olmo2ForCausalLM`. The fused projections split as in OLMo-1 (injection.checkpoints.olmo); the
norms map one to one:

    transformer.blocks.N.attn_norm  -> model.layers.N.post_attention_layernorm   (applied to the attention output)
    transformer.blocks.N.ff_norm    -> model.layers.N.post_feedforward_layernorm (applied to the MLP output)
    transformer.blocks.N.q_norm / k_norm -> model.layers.N.self_attn.q_norm / k_norm
    transformer.ln_f                -> model.norm

The run's files are config.yaml, train.pt and the model and optimizer state either as torch pickles (model.pt,
optim.pt: the 1B) or in ai2-olmo's safetensors encoding (model.safetensors, optim.safetensors: 7B and 13B).

What an OLMo 2 update computes beyond OLMo-1's (checkpoint.json's `objective`, read from config.yaml):
- z-loss: `softmax_auxiliary_loss` adds multiplier × logsumexp(logits)² at every counted position, summed and
  divided by the batch's tokens like the cross-entropy. The multiplier is the one ai2-olmo's trainer applies,
  1e-4: its loss functions never receive the config's `auxiliary_loss_multiplier` (1e-5 in the official configs);
- the repetition instance filter (`data.instance_filter`, injection.instance_filter);
- weight decay on norm weights too (`decay_norm_and_bias`), not on the embedding (`decay_embeddings: false`);
- a learning rate in token units (`scheduler.units: tokens`), positioned by train.pt's `global_train_tokens_seen`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import Olmo2Config, Olmo2ForCausalLM

from harness.errors import UserError
from harness.tokenizers import load_tokenizer
from harness.typed import from_mapping
from injection.checkpoints import olmo
from injection.checkpoints.layout import ObjectiveSpec
from injection.instance_filter import InstanceFilter

KIND = "olmo2"
MODEL_TYPE = "olmo2"
#: The z-loss multiplier ai2-olmo's trainer applies (the default of its loss functions; see the module docstring).
TRAINER_Z_LOSS = 1.0e-4
loss_factor = olmo.loss_factor
param_groups = olmo.param_groups


@dataclass(frozen=True)
class Architecture:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    """Output width of OLMo's fused `ff_proj` (up and gate together); the SwiGLU intermediate is half."""
    vocab_size: int
    """Tokens the tokenizer knows."""
    embedding_size: int
    """Rows of the embedding matrix (vocab padded); the HF `vocab_size`."""
    max_sequence_length: int
    rope_theta: float
    layer_norm: str
    """`rms` (RMSNorm with weights and no bias), the only kind OLMo 2 uses."""
    layer_norm_eps: float
    norm_after: bool
    """Norms applied to each sublayer's output before the residual add (must be true)."""
    qk_norm: bool
    """RMSNorm on the whole query and key projections (ai2-olmo's `attention_layer_norm`; must be true)."""
    weight_tying: bool
    clip_qkv: float | None
    eos_token_id: int
    pad_token_id: int


def parse_architecture(data: Any, where: str, path: str = "architecture") -> Architecture:
    """The catalog's `architecture:` block, validated."""
    arch = from_mapping(Architecture, data, where, path)
    if arch.layer_norm != "rms":
        raise UserError(f"{where}: field '{path}.layer_norm': OLMo 2 uses 'rms', got {arch.layer_norm!r}")
    if not (arch.norm_after and arch.qk_norm):
        raise UserError(f"{where}: field '{path}': OLMo 2 has norm_after and qk_norm true (Olmo2ForCausalLM)")
    if arch.clip_qkv is not None:
        raise UserError(f"{where}: field '{path}.clip_qkv': Olmo2ForCausalLM cannot clip q, k and v")
    olmo.check_shape(arch, where, path)
    return arch


def hf_config(arch: Architecture):
    """transformers' `Olmo2Config` for an OLMo 2 architecture."""
    return Olmo2Config(**olmo.hf_config_fields(arch), rms_norm_eps=arch.layer_norm_eps)


def check_hf_config(config: dict[str, Any], arch: Architecture, where: str) -> dict[str, Any]:
    """An HF snapshot's config.json against the catalog's architecture: a snapshot of another size is refused.
    The published Olmo2ForCausalLM conversions compute what OLMo's trainer computed, so nothing needs changing."""
    expected = hf_config(arch).to_dict()
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key in config and config[key] != expected[key]:
            raise UserError(
                f"{where}: {key} is {config[key]!r}, the catalog's architecture has {expected[key]!r} "
                "(a snapshot of another model?)"
            )
    return {}


def tokenizer(family, original_config: dict[str, Any] | None = None):
    """The dolma2 tokenizer OLMo 2 trained with (shipped inside ai2-olmo): EOS `<|endoftext|>` 100257, padding
    `<|pad|>` 100277."""

    return load_tokenizer("dolma2")


# --- config.yaml -----------------------------------------------------------------------------------------------


def architecture_from_config(cfg: dict[str, Any] | None, fallback: Architecture, where: str) -> Architecture:
    """The architecture an OLMo 2 config.yaml describes (refusing what Olmo2ForCausalLM cannot compute)."""
    if cfg is None or not isinstance(cfg.get("model"), dict):
        return fallback
    m = cfg["model"]
    bad = [
        k
        for k, v in {
            "alibi": m.get("alibi", False),
            "rope (must be true)": not m.get("rope", False),
            "include_bias": m.get("include_bias", False),
            "bias_for_layer_norm": m.get("bias_for_layer_norm", False),
            "layer_norm_with_affine (must be true)": not m.get("layer_norm_with_affine", True),
            "attention_layer_norm (must be true)": not m.get("attention_layer_norm", False),
            "attention_layer_norm_with_affine (must be true)": not m.get("attention_layer_norm_with_affine", True),
            "norm_after (must be true)": not m.get("norm_after", False),
            "scale_logits": m.get("scale_logits", False),
            "embedding_layer_norm": m.get("embedding_layer_norm", False),
            "clip_qkv": m.get("clip_qkv") is not None,
        }.items()
        if v
    ]
    if m.get("block_type", "sequential") != "sequential":
        bad.append(f"block_type={m.get('block_type')}")
    if m.get("activation_type", "swiglu") != "swiglu":
        bad.append(f"activation_type={m.get('activation_type')}")
    if m.get("layer_norm_type") != "rms":
        bad.append(f"layer_norm_type={m.get('layer_norm_type')}")
    if bad:
        raise UserError(f"{where}: model settings Olmo2ForCausalLM cannot express: {', '.join(bad)}")
    d_model, n_heads = int(m["d_model"]), int(m["n_heads"])
    vocab = int(m.get("vocab_size", fallback.vocab_size))
    return Architecture(
        d_model=d_model,
        n_layers=int(m["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(m.get("n_kv_heads") or n_heads),
        mlp_hidden_size=int(m.get("mlp_hidden_size") or int(m.get("mlp_ratio", 4)) * d_model),
        vocab_size=vocab,
        embedding_size=int(m.get("embedding_size") or vocab),
        max_sequence_length=int(m.get("max_sequence_length", fallback.max_sequence_length)),
        rope_theta=float(m.get("rope_theta", 10000)),
        layer_norm="rms",
        layer_norm_eps=float(m.get("layer_norm_eps", 1e-5)),
        norm_after=True,
        qk_norm=True,
        weight_tying=bool(m.get("weight_tying", False)),
        clip_qkv=None,
        eos_token_id=int(m.get("eos_token_id", fallback.eos_token_id)),
        pad_token_id=int(m.get("pad_token_id", fallback.pad_token_id)),
    )


def objective_from_config(cfg: dict[str, Any] | None, fallback: ObjectiveSpec, where: str) -> ObjectiveSpec:
    """The z-loss and instance filter an OLMo config.yaml trains with (the catalog's where there is no config)."""
    if cfg is None:
        return fallback
    z = None
    if cfg.get("softmax_auxiliary_loss"):
        z = TRAINER_Z_LOSS
        said = cfg.get("auxiliary_loss_multiplier")
        if said is not None and float(said) != TRAINER_Z_LOSS:
            warnings.warn(
                f"{where}: auxiliary_loss_multiplier is {float(said):g}, but ai2-olmo's trainer never passes it to "
                f"its loss function, which applies {TRAINER_Z_LOSS:g}: the continuation does the same "
                "(objective.z_loss_multiplier in the experiment's configuration changes it)",
                stacklevel=3,
            )
    raw = (cfg.get("data") or {}).get("instance_filter")
    filt = None if raw is None else InstanceFilter.from_dict(raw, f"{where}: data.instance_filter")
    return ObjectiveSpec(z, filt)


# --- name mapping ----------------------------------------------------------------------------------------------

_NORMS = {
    "attn_norm": "post_attention_layernorm",
    "ff_norm": "post_feedforward_layernorm",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
}


def olmo2_to_hf(name: str, tensor, arch: Architecture) -> Iterator[tuple[str, Any]]:
    """(HF name, tensor) pairs for one ai2-olmo OLMo 2 parameter (or a moment of it, which has the same shape)."""
    clean = name.replace(olmo.FSDP_PREFIX, "").removeprefix(olmo.DDP_PREFIX)
    parts = clean.split(".")
    if clean == "transformer.ln_f.weight":
        yield "model.norm.weight", tensor
    elif len(parts) == 5 and parts[:2] == ["transformer", "blocks"] and parts[3] in _NORMS and parts[4] == "weight":
        yield f"model.layers.{int(parts[2])}.{_NORMS[parts[3]]}.weight", tensor
    else:
        yield from olmo.olmo_to_hf(clean, tensor, arch)


# --- the whole conversion --------------------------------------------------------------------------------------


def convert_original(
    src: str | Path, dest: str | Path, *, family, step: int, source_url: str | None = None, trust_pickle: bool = False
) -> Path:
    """Convert an unsharded OLMo 2 checkpoint directory `src` into the checkpoint layout at `dest`."""

    src = Path(src)
    where = str(src / "config.yaml")
    cfg = olmo.read_olmo_config(src / "config.yaml")
    arch = architecture_from_config(cfg, family.architecture, where)
    return olmo.convert_run(
        src,
        dest,
        cfg=cfg,
        arch=arch,
        model=lambda: Olmo2ForCausalLM(hf_config(arch)),
        to_hf=olmo2_to_hf,
        tokenizer=tokenizer(family, cfg),
        family=family,
        step=step,
        source_url=source_url,
        trust_pickle=trust_pickle,
        objective=objective_from_config(cfg, family.objective, where),
    )
