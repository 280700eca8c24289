"""The OLMo family (OLMo 1B and 7B, Feb 2024): architecture, HF config, AdamW groups, tokenizer, and the
conversion of the run's own unsharded checkpoints (config.yaml, model.pt, optim.pt, train.pt) into the layout.

OLMo keeps fused projections that transformers splits:
- `transformer.blocks.N.att_proj.weight` stacks q, k, v along the output dimension;
- `transformer.blocks.N.ff_proj.weight` stacks the SwiGLU input half first and the gate half second
  (ai2-olmo's `SwiGLU.forward` does `x, gate = x.chunk(2, dim=-1)`; `silu(gate) * x`), so the first
  half becomes `up_proj` and the second `gate_proj`;
- layer norms have no weights (non-parametric), so nothing maps onto them.
Optimizer moments have the shapes of their parameters and are split the same way.

What continuing the run needs beyond the weights comes from the checkpoint's own files, which win over the
catalog (with a warning where they disagree): rows per step, sequence length, learning-rate schedule and
optimizer settings from config.yaml; where the data stream stands from train.pt
(`global_train_examples_seen_this_epoch` in `epoch`, as OLMo's trainer resumes); the end-of-text id from the
model config (`eos_token_id`, 50279), whatever tokenizer file the run names.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import OlmoConfig, OlmoForCausalLM

from harness.errors import UserError
from harness.tokenizers import load_tokenizer, shipped_name_of
from harness.typed import from_mapping, load_yaml
from injection.checkpoints.family import decay_groups
from injection.checkpoints.layout import (
    DataPosition,
    ObjectiveSpec,
    OptimizerSpec,
    checkpoint_meta,
    write_checkpoint_dir,
)
from injection.checkpoints.safe_load import load_olmo_safetensors, safe_torch_load
from injection.lr import LRSchedule

KIND = "olmo"
MODEL_TYPE = "olmo"
FSDP_PREFIX = "_fsdp_wrapped_module."
DDP_PREFIX = "module."


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
    """`nonparametric` (OLMo Feb 2024: no affine weights), the only kind the conversion handles."""
    weight_tying: bool
    clip_qkv: float | None
    eos_token_id: int
    pad_token_id: int


def parse_architecture(data: Any, where: str, path: str = "architecture") -> Architecture:
    """The catalog's `architecture:` block, validated."""
    arch = from_mapping(Architecture, data, where, path)
    if arch.layer_norm != "nonparametric":
        raise UserError(
            f"{where}: field '{path}.layer_norm': only 'nonparametric' is supported, got {arch.layer_norm!r}"
        )
    check_shape(arch, where, path)
    return arch


def check_shape(arch: Architecture, where: str, path: str) -> None:
    """The checks every OLMo generation's architecture passes: heads that split the width, and an embedding that
    holds the vocabulary."""
    if arch.d_model % arch.n_heads or arch.n_heads % arch.n_kv_heads:
        raise UserError(f"{where}: field '{path}': d_model must divide by n_heads and n_heads by n_kv_heads")
    if arch.embedding_size < arch.vocab_size:
        raise UserError(f"{where}: field '{path}.embedding_size': smaller than vocab_size")


def hf_config_fields(arch: Architecture) -> dict[str, Any]:
    """The fields `OlmoConfig` and `Olmo2Config` share, from an OLMo architecture (SwiGLU: the MLP's hidden size
    counts both halves)."""
    return dict(
        vocab_size=arch.embedding_size,
        hidden_size=arch.d_model,
        intermediate_size=arch.mlp_hidden_size // 2,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads,
        num_key_value_heads=arch.n_kv_heads,
        max_position_embeddings=arch.max_sequence_length,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        tie_word_embeddings=arch.weight_tying,
        pad_token_id=arch.pad_token_id,
        eos_token_id=arch.eos_token_id,
        bos_token_id=None,
        attention_bias=False,
    )


def hf_config(arch: Architecture):
    """transformers' `OlmoConfig` for an OLMo (Feb 2024) architecture."""
    return OlmoConfig(**hf_config_fields(arch), clip_qkv=arch.clip_qkv)


def check_hf_config(config: dict[str, Any], arch: Architecture, where: str) -> dict[str, Any]:
    """An HF snapshot's config.json against the catalog's architecture: a snapshot of another size is refused.
    The -hf conversions compute what OLMo's trainer computed, so nothing needs changing."""
    expected = hf_config(arch).to_dict()
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key in config and config[key] != expected[key]:
            raise UserError(
                f"{where}: {key} is {config[key]!r}, the catalog's architecture has {expected[key]!r} "
                "(a snapshot of another model?)"
            )
    return {}


def param_groups(model, weight_decay: float, optimizer: OptimizerSpec | None = None) -> list[dict[str, Any]]:
    """OLMo's grouping (ai2-olmo's get_param_groups): Linear weights are decayed; layer-norm weights and biases only
    with `decay_norm_and_bias`, the token embedding only with `decay_embeddings` (`optimizer`'s flags, both off by
    default: OLMo-1's norms have no weights and it decays neither; OLMo 2 decays its norms, not its embedding). A
    weight tied between the embedding and the LM head counts as an embedding, as in OLMo-1B."""

    spec = optimizer or OptimizerSpec()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}

    def decayed(module, name: str) -> bool:
        if id(getattr(module, name)) in embeddings:
            return spec.decay_embeddings
        if name == "bias" or is_norm(module):
            return spec.decay_norm_and_bias
        return name == "weight" and isinstance(module, torch.nn.Linear)

    return decay_groups(model, weight_decay, decayed)


def is_norm(module) -> bool:
    """A layer norm of any flavour (torch's, or a model's own RMSNorm / LayerNorm class)."""

    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def loss_factor(seq_len: int) -> float:
    """OLMo's trainer sums the cross-entropy of the L − 1 predicted positions of each row and divides by rows × L
    (the token count of the batch, not of the predictions); HF's loss is the mean over rows × (L − 1)."""
    return (seq_len - 1) / seq_len


def tokenizer(family, original_config: dict[str, Any] | None = None):
    """The tokenizer the run names (`tokenizer.identifier` of its config, else the catalog's `data_order.tokenizer`)
    when ai2-olmo ships that file, else `olmo`. Its EOS need not be the run's: splicing uses the model config's."""
    identifier = ((original_config or {}).get("tokenizer") or {}).get("identifier") or family.data_order.tokenizer or ""
    return load_tokenizer(shipped_name_of(str(identifier)) or "olmo")


# --- config.yaml and train.pt -----------------------------------------------------------------------------


def read_olmo_config(path: Path) -> dict[str, Any] | None:
    """An OLMo run's config.yaml (OmegaConf writes plain YAML), or None where absent."""
    if not path.is_file():
        return None
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an OLMo training config (a mapping)")
    return data


def architecture_from_config(cfg: dict[str, Any] | None, fallback: Architecture, where: str) -> Architecture:
    """The architecture an OLMo config.yaml describes (refusing features the conversion cannot map)."""
    if cfg is None or not isinstance(cfg.get("model"), dict):
        return fallback
    m = cfg["model"]
    unsupported = {
        "alibi": m.get("alibi", False),
        "rope (must be true)": not m.get("rope", False),
        "include_bias": m.get("include_bias", True),
        "layer_norm_with_affine": m.get("layer_norm_with_affine", True),
        "attention_layer_norm": m.get("attention_layer_norm", False),
        "scale_logits": m.get("scale_logits", False),
        "embedding_layer_norm": m.get("embedding_layer_norm", False),
    }
    bad = [k for k, v in unsupported.items() if v]
    if m.get("block_type", "sequential") != "sequential":
        bad.append(f"block_type={m.get('block_type')}")
    if m.get("activation_type", "swiglu") != "swiglu":
        bad.append(f"activation_type={m.get('activation_type')}")
    if m.get("layer_norm_type", "default") not in ("default", "low_precision"):
        bad.append(f"layer_norm_type={m.get('layer_norm_type')}")
    if bad:
        raise UserError(f"{where}: model settings the HF Olmo conversion cannot express: {', '.join(bad)}")
    d_model, n_heads = int(m["d_model"]), int(m["n_heads"])
    n_kv = m.get("n_kv_heads") or (1 if m.get("multi_query_attention") else n_heads)
    mlp = m.get("mlp_hidden_size") or int(m.get("mlp_ratio", 4)) * d_model
    vocab = int(m.get("vocab_size", fallback.vocab_size))
    emb = m.get("embedding_size") or vocab
    clip = m.get("clip_qkv")
    return Architecture(
        d_model=d_model,
        n_layers=int(m["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        mlp_hidden_size=int(mlp),
        vocab_size=vocab,
        embedding_size=int(emb),
        max_sequence_length=int(m.get("max_sequence_length", fallback.max_sequence_length)),
        rope_theta=float(m.get("rope_theta", 10000)),
        layer_norm="nonparametric",
        weight_tying=bool(m.get("weight_tying", True)),
        clip_qkv=None if clip is None else float(clip),
        eos_token_id=int(m.get("eos_token_id", fallback.eos_token_id)),
        pad_token_id=int(m.get("pad_token_id", fallback.pad_token_id)),
    )


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


def run_facts(cfg: dict[str, Any] | None, family, step: int, where: str) -> dict[str, Any]:
    """Rows per step, sequence length, schedule and optimizer at `step`, preferring the checkpoint's own config
    and warning wherever it disagrees with the catalog (the 7B run's 2,048 vs 2,160 rows is the known case)."""
    batch = family.batch_size_at(step)
    seq_len = family.seq_len
    sched: LRSchedule = family.lr_schedule
    opt = family.optimizer
    if cfg is not None:
        cfg_batch = cfg.get("global_train_batch_size")
        if isinstance(cfg_batch, int) and cfg_batch != batch:
            _warn(
                f"{where}: global_train_batch_size {cfg_batch} differs from the catalog's {batch} rows for "
                f"{family.name} step {step}; using the checkpoint's {cfg_batch}"
            )
            batch = cfg_batch
        model = cfg.get("model") or {}
        if isinstance(model.get("max_sequence_length"), int):
            seq_len = model["max_sequence_length"]
        new = replace(sched, **_schedule_updates(cfg, batch * seq_len, where))
        if new != sched:
            _warn(
                f"{where}: learning-rate schedule {new.as_json()} differs from the catalog's {sched.as_json()}; "
                "using the checkpoint's"
            )
            sched = new
        o = cfg.get("optimizer") or {}
        changes: dict[str, Any] = {}
        if o.get("betas"):
            changes["betas"] = tuple(_number(b, f"{where}: optimizer.betas") for b in o["betas"])
        for key in ("eps", "weight_decay"):
            if o.get(key) is not None:
                changes[key] = _number(o[key], f"{where}: optimizer.{key}")
        for key in ("decay_norm_and_bias", "decay_embeddings"):
            if key in o:
                changes[key] = bool(o[key])
        if cfg.get("max_grad_norm") is not None:
            changes["grad_clip"] = _number(cfg["max_grad_norm"], f"{where}: max_grad_norm")
        opt = replace(opt, **changes)
    return {"global_batch_size": batch, "seq_len": seq_len, "lr_schedule": sched, "optimizer": opt}


def _schedule_updates(cfg: dict[str, Any], tokens_per_step: int, where: str) -> dict[str, Any]:
    """The scheduler fields an OLMo config.yaml sets (numbers may be written `5e12`, which YAML reads as text)."""
    o, s = cfg.get("optimizer") or {}, cfg.get("scheduler") or {}
    kinds = {"cosine_with_warmup": "cosine", "linear_with_warmup": "linear", "constant": "constant"}
    updates: dict[str, Any] = {}
    if s.get("name") in kinds:
        updates["kind"] = kinds[s["name"]]
    units = s.get("units") or "steps"
    updates["units"] = units
    if o.get("learning_rate") is not None:
        updates["peak_lr"] = _number(o["learning_rate"], f"{where}: optimizer.learning_rate")
    if s.get("t_warmup") is not None:
        updates["warmup_steps"] = int(_number(s["t_warmup"], f"{where}: scheduler.t_warmup"))
    if s.get("alpha_f") is not None:
        updates["alpha_f"] = _number(s["alpha_f"], f"{where}: scheduler.alpha_f")
    if s.get("warmup_min_lr") is not None:
        updates["warmup_min_lr"] = _number(s["warmup_min_lr"], f"{where}: scheduler.warmup_min_lr")
    if s.get("t_max") is not None:
        updates["t_max"] = int(_number(s["t_max"], f"{where}: scheduler.t_max"))
    else:
        horizon = _max_steps(cfg.get("max_duration"), tokens_per_step)
        if units == "tokens":
            horizon = _max_tokens(cfg.get("max_duration"))
        if horizon is not None:
            updates["t_max"] = int(horizon)
    return updates


def _number(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {value!r} is not a number") from None


def _max_tokens(max_duration: Any) -> int | None:
    """OLMo's `max_duration` as a token count where it is one ("NT")."""
    text = str(max_duration).strip().replace("_", "")
    try:
        return int(float(text[:-1])) if text.endswith("T") else None
    except ValueError:
        return None


def data_position(train: dict[str, Any] | None, step: int, global_batch_size: int, where: str) -> DataPosition:
    """Where the data stream continues: OLMo's own counter (`global_train_examples_seen_this_epoch` in `epoch`)
    when train.pt has it, else step × rows per step (with a warning)."""
    seen = (train or {}).get("global_train_examples_seen_this_epoch")
    if seen is None:  # older trainer states name it without "_this_epoch"
        seen = (train or {}).get("global_train_examples_seen")
    epoch = (train or {}).get("epoch") or 0
    assumed = step * global_batch_size
    if not isinstance(seen, int) or not isinstance(epoch, int):
        _warn(
            f"{where}: no data-stream counter (train.pt absent or without global_train_examples_seen_this_epoch); "
            f"assuming the run consumed step × rows per step = {step} × {global_batch_size} = {assumed:,} "
            "instances of epoch 0"
        )
        return DataPosition(0, assumed, "step x rows")
    if epoch == 0 and seen != assumed:
        _warn(
            f"{where}: train.pt counts {seen:,} instances seen in epoch 0, but step × rows per step = {step} × "
            f"{global_batch_size} = {assumed:,} (about {seen / step if step else 0:,.1f} rows per step so far); "
            "the continuation starts at the counter, as OLMo's trainer does when it resumes"
        )
    return DataPosition(int(epoch), int(seen), "train.pt")


def _max_steps(max_duration: Any, tokens_per_step: int) -> int | None:
    """OLMo's `max_duration` in steps: an int, "N" (steps) or "NT" (tokens, rounded up to whole steps).
    For a run restarted with another batch size OLMo recomputes this; the value here assumes one size."""
    if isinstance(max_duration, int):
        return max_duration
    if isinstance(max_duration, str):
        text = max_duration.strip().replace("_", "")
        try:
            if text.endswith("T"):
                return math.ceil(int(float(text[:-1])) / tokens_per_step)
            if not text.endswith("ep"):
                return int(float(text))
        except ValueError:
            return None
    return None


# --- name mapping ------------------------------------------------------------------------------------


def olmo_to_hf(name: str, tensor, arch: Architecture) -> Iterator[tuple[str, Any]]:
    """(HF name, tensor) pairs for one ai2-olmo parameter (or a moment of it, which has the same shape)."""
    name = name.replace(FSDP_PREFIX, "")
    if name.startswith(DDP_PREFIX):  # optim.pt of a DDP run names parameters through the DDP wrapper
        name = name[len(DDP_PREFIX) :]
    parts = name.split(".")
    if name == "transformer.wte.weight":
        yield "model.embed_tokens.weight", tensor
    elif name == "transformer.ff_out.weight":
        yield "lm_head.weight", tensor
    elif len(parts) == 5 and parts[:2] == ["transformer", "blocks"] and parts[4] == "weight":
        layer, module = f"model.layers.{int(parts[2])}", parts[3]
        head_dim = arch.d_model // arch.n_heads
        if module == "att_proj":
            q, k, v = tensor.split([arch.d_model, arch.n_kv_heads * head_dim, arch.n_kv_heads * head_dim], dim=0)
            yield f"{layer}.self_attn.q_proj.weight", q
            yield f"{layer}.self_attn.k_proj.weight", k
            yield f"{layer}.self_attn.v_proj.weight", v
        elif module == "attn_out":
            yield f"{layer}.self_attn.o_proj.weight", tensor
        elif module == "ff_proj":
            up, gate = tensor.chunk(2, dim=0)
            yield f"{layer}.mlp.up_proj.weight", up
            yield f"{layer}.mlp.gate_proj.weight", gate
        elif module == "ff_out":
            yield f"{layer}.mlp.down_proj.weight", tensor
        else:
            raise UserError(f"unexpected parameter {name!r} in an OLMo state dict")
    else:
        raise UserError(f"unexpected parameter {name!r} in an OLMo state dict")


def convert_state_dict(state: dict[str, Any], arch: Architecture, where: str, to_hf=None) -> dict[str, Any]:
    """ai2-olmo model state dict -> HF state dict (fp32, contiguous), named by `to_hf` (default: OLMo's names)."""
    to_hf = to_hf or olmo_to_hf
    if not isinstance(state, dict):
        raise UserError(f"{where}: expected a state dict (name -> tensor)")
    out = {}
    for name, tensor in state.items():
        for hf_name, t in to_hf(name, tensor, arch):
            out[hf_name] = t.float().contiguous()
    if arch.weight_tying:
        out.pop("lm_head.weight", None)
    elif "lm_head.weight" not in out:
        raise UserError(f"{where}: weight_tying is false but transformer.ff_out.weight is missing")
    return out


def convert_optimizer_state(optim: dict[str, Any], arch: Architecture, where: str, to_hf=None) -> dict[str, Any] | None:
    """OLMo optim.pt (torch or FSDP full optimizer state dict) -> `exp_avg/<hf name>`, `exp_avg_sq/<hf name>`,
    `step`. State may be keyed by parameter index (resolved through the groups' `param_names`) or by name."""
    to_hf = to_hf or olmo_to_hf
    if not isinstance(optim, dict) or "state" not in optim or "param_groups" not in optim:
        raise UserError(f"{where}: expected an optimizer state dict with 'state' and 'param_groups'")
    id_to_name: dict[Any, str] = {}
    for group in optim["param_groups"]:
        params = group.get("params", [])
        names = group.get("param_names", params)
        for pid, pname in zip(params, names):
            id_to_name[pid] = pname
    out: dict[str, Any] = {}
    steps = set()
    for key, st in optim["state"].items():
        name = key if isinstance(key, str) else id_to_name.get(key)
        if not isinstance(name, str):
            raise UserError(f"{where}: optimizer state entry {key!r} has no parameter name in param_groups")
        if "exp_avg" not in st or "exp_avg_sq" not in st:
            raise UserError(f"{where}: optimizer state for {name} lacks exp_avg / exp_avg_sq (not AdamW?)")
        for moment in ("exp_avg", "exp_avg_sq"):
            for hf_name, t in to_hf(name, st[moment], arch):
                out[f"{moment}/{hf_name}"] = t.float().contiguous()
        if "step" in st:
            steps.add(int(torch.as_tensor(st["step"]).item()))
    if arch.weight_tying:
        out.pop("exp_avg/lm_head.weight", None)
        out.pop("exp_avg_sq/lm_head.weight", None)
    if not out:
        return None
    if len(steps) > 1:
        _warn(f"{where}: parameters disagree on the optimizer step ({sorted(steps)}); keeping the largest")
    if steps:
        out["step"] = torch.tensor(max(steps), dtype=torch.int64)
    return out


# --- the whole conversion ------------------------------------------------------------------------------

#: The two ways an unsharded OLMo checkpoint stores a state dict: torch pickles (model.pt, OLMo-1, OLMo 2 1B) or
#: ai2-olmo's safetensors encoding (model.safetensors, written by its scripts/unshard.py --safe-tensors: OLMo 2 7B
#: and 13B). ai2-olmo's own loader looks for the .safetensors name first.
STATE_FILES = {"model": ("model.safetensors", "model.pt"), "optim": ("optim.safetensors", "optim.pt")}


def original_file(src: Path, what: str) -> Path | None:
    """The file holding `what` (`model` or `optim`) in an unsharded checkpoint directory, or None."""
    return next((src / name for name in STATE_FILES[what] if (src / name).is_file()), None)


def load_state(path: Path, trust_pickle: bool) -> Any:

    if path.suffix == ".safetensors":
        return load_olmo_safetensors(path, trust_pickle=trust_pickle)
    return safe_torch_load(path, trust_pickle=trust_pickle)


def convert_original(
    src: str | Path, dest: str | Path, *, family, step: int, source_url: str | None = None, trust_pickle: bool = False
) -> Path:
    """Convert an unsharded OLMo checkpoint directory `src` into the checkpoint layout at `dest`."""
    src = Path(src)
    cfg = read_olmo_config(src / "config.yaml")
    arch = architecture_from_config(cfg, family.architecture, str(src / "config.yaml"))
    return convert_run(
        src,
        dest,
        cfg=cfg,
        arch=arch,
        model=lambda: OlmoForCausalLM(hf_config(arch)),
        to_hf=olmo_to_hf,
        tokenizer=tokenizer(family, cfg),
        family=family,
        step=step,
        source_url=source_url,
        trust_pickle=trust_pickle,
    )


def convert_run(
    src: Path,
    dest: str | Path,
    *,
    cfg: dict[str, Any] | None,
    arch,
    model,
    to_hf,
    tokenizer,
    family,
    step: int,
    source_url: str | None,
    trust_pickle: bool,
    objective: ObjectiveSpec | None = None,
) -> Path:
    """The conversion shared by OLMo's generations: the weights named by `to_hf` into the HF model `model()` builds
    (on the meta device), the AdamW moments the same way, the trainer's counters from train.pt and the run's
    facts from config.yaml, written as one checkpoint directory."""

    model_file = original_file(src, "model")
    if model_file is None:
        raise UserError(f"{src}: {' or '.join(STATE_FILES['model'])} is missing")
    state = load_state(model_file, trust_pickle)
    hf_state = convert_state_dict(state, arch, str(model_file), to_hf)
    del state

    with torch.device("meta"):
        hf_model = model()
    expected = set(hf_model.state_dict()) - ({"lm_head.weight"} if arch.weight_tying else set())
    if set(hf_state) != expected:
        missing, extra = sorted(expected - set(hf_state)), sorted(set(hf_state) - expected)
        raise UserError(
            f"{model_file}: does not match the architecture (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    hf_model.load_state_dict(hf_state, strict=False, assign=True)
    if arch.weight_tying:
        hf_model.tie_weights()

    optimizer_state = None
    optim_file = original_file(src, "optim")
    if optim_file is not None:
        optimizer_state = convert_optimizer_state(load_state(optim_file, trust_pickle), arch, str(optim_file), to_hf)

    train = None
    if (src / "train.pt").is_file():
        loaded = safe_torch_load(src / "train.pt", trust_pickle=trust_pickle)
        train = loaded if isinstance(loaded, dict) else None
        global_step = (train or {}).get("global_step")
        if isinstance(global_step, int) and global_step != step:
            _warn(f"{src / 'train.pt'}: global_step {global_step} differs from the catalog's step {step}")
    facts = run_facts(cfg, family, step, str(src / "config.yaml"))
    position = data_position(train, step, facts["global_batch_size"], str(src / "train.pt"))
    tokens_seen = (train or {}).get("global_train_tokens_seen")
    extra = {} if objective is None else {"objective": objective.as_json()}
    meta = checkpoint_meta(
        family=family.name,
        kind=family.kind,
        step=step,
        source="original",
        data_position=position,
        **facts,
        source_url=source_url,
        trainer_state={k: v for k, v in (train or {}).items() if isinstance(v, (int, float, str))} or None,
        optimizer_step=None
        if optimizer_state is None or "step" not in optimizer_state
        else int(optimizer_state["step"]),
        architecture=asdict(arch),
        **({"tokens_seen": tokens_seen} if isinstance(tokens_seen, int) else {}),
        **extra,
    )
    return write_checkpoint_dir(hf_model, tokenizer, dest, meta, optimizer_state)
