"""An unsharded checkpoint of an original OLMo run (config.yaml, model.pt, optim.pt, train.pt) -> the
harness's checkpoint directory: HF `OlmoForCausalLM` weights, tokenizer, AdamW moments renamed to HF
parameter names, and checkpoint.json.

OLMo (Feb 2024) keeps fused projections that transformers splits:
- `transformer.blocks.N.att_proj.weight` stacks q, k, v along the output dimension;
- `transformer.blocks.N.ff_proj.weight` stacks the SwiGLU input half first and the gate half second
  (ai2-olmo's `SwiGLU.forward` does `x, gate = x.chunk(2, dim=-1)`; `silu(gate) * x`), so the first
  half becomes `up_proj` and the second `gate_proj`;
- layer norms have no weights (non-parametric), so nothing maps onto them.
Optimizer moments have the shapes of their parameters and are split the same way.

Nothing is unpickled beyond tensors and plain containers unless the caller trusts the files.
"""

from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import yaml

from injection.catalog import Architecture, Family, LRSchedule
from harness.errors import UserError

FSDP_PREFIX = "_fsdp_wrapped_module."


# --- safe loading ----------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """numpy's array and random-state reconstructors: plain data, needed for OLMo's train.pt rng state."""
    import numpy as np

    import pathlib

    # Path objects appear in OLMo's trainer state (lists of checkpoint folders): plain data as well.
    allowed: list[Any] = [np.ndarray, np.dtype, np.core.multiarray._reconstruct, pathlib.PosixPath,
                          pathlib.PurePosixPath]
    scalar = getattr(np.core.multiarray, "scalar", None)
    if scalar is not None:
        allowed.append(scalar)
    allowed += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint64", "int32", "float32", "bool")]
    return allowed


def safe_torch_load(path: Path, *, trust_pickle: bool = False) -> Any:
    """`torch.load(weights_only=True)` (tensors, numbers, strings, containers, numpy arrays). A file that
    needs arbitrary unpickling is refused unless `trust_pickle`, since unpickling can run code."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the offending class ("Unsupported global: GLOBAL pkg.Class"); any other
        # unpickling failure means the bytes themselves are bad.
        needs = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        if not needs:
            raise UserError(f"{path} is not a readable torch file (corrupted or truncated?)") from None
        if not trust_pickle:
            raise UserError(
                f"{path} needs full unpickling, which can run arbitrary code ({needs[0]}); "
                "pass --trust-pickle only if you trust where it came from"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable torch file (corrupted or truncated?): {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"{path} is not a readable torch file (corrupted or truncated?): {err}") from None


def read_olmo_config(path: Path) -> dict[str, Any] | None:
    """An OLMo run's config.yaml (OmegaConf writes plain YAML), or None where absent."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an OLMo training config (a mapping)")
    return data


# --- architecture and run facts from config.yaml --------------------------------------------------------


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
        d_model=d_model, n_layers=int(m["n_layers"]), n_heads=n_heads, n_kv_heads=int(n_kv),
        mlp_hidden_size=int(mlp), vocab_size=vocab, embedding_size=int(emb),
        max_sequence_length=int(m.get("max_sequence_length", fallback.max_sequence_length)),
        rope_theta=float(m.get("rope_theta", 10000)), layer_norm="nonparametric",
        weight_tying=bool(m.get("weight_tying", True)), clip_qkv=None if clip is None else float(clip),
        eos_token_id=int(m.get("eos_token_id", fallback.eos_token_id)),
        pad_token_id=int(m.get("pad_token_id", fallback.pad_token_id)),
    )


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


def run_facts(cfg: dict[str, Any] | None, family: Family, step: int, where: str) -> dict[str, Any]:
    """Batch size, sequence length and schedule at `step`, preferring the checkpoint's own config and
    warning wherever it disagrees with the catalog (the 7B run's 2,048 vs 2,160 rows is the known case)."""
    batch = family.batch_size_at(step)
    seq_len = family.seq_len
    sched: LRSchedule = family.lr_schedule
    opt = family.optimizer.as_json()
    if cfg is not None:
        cfg_batch = cfg.get("global_train_batch_size")
        if isinstance(cfg_batch, int) and cfg_batch != batch:
            _warn(f"{where}: global_train_batch_size {cfg_batch} differs from the catalog's {batch} rows for "
                  f"{family.name} step {step}; using the checkpoint's {cfg_batch}")
            batch = cfg_batch
        model = cfg.get("model") or {}
        if isinstance(model.get("max_sequence_length"), int):
            seq_len = model["max_sequence_length"]
        o, s = cfg.get("optimizer") or {}, cfg.get("scheduler") or {}
        kinds = {"cosine_with_warmup": "cosine", "linear_with_warmup": "linear", "constant": "constant"}
        updates: dict[str, Any] = {}
        if s.get("name") in kinds:
            updates["kind"] = kinds[s["name"]]
        if o.get("learning_rate") is not None:
            updates["peak_lr"] = float(o["learning_rate"])
        if s.get("t_warmup") is not None:
            updates["warmup_steps"] = int(s["t_warmup"])
        if s.get("alpha_f") is not None:
            updates["alpha_f"] = float(s["alpha_f"])
        t_max = s.get("t_max") or _max_steps(cfg.get("max_duration"), batch * seq_len)
        if t_max is not None:
            updates["t_max"] = int(t_max)
        new = replace(sched, **updates)
        if new != sched:
            _warn(f"{where}: learning-rate schedule {new.as_json()} differs from the catalog's {sched.as_json()}; "
                  "using the checkpoint's")
            sched = new
        if o.get("betas"):
            opt["betas"] = [float(b) for b in o["betas"]]
        for key, cfg_key in (("eps", "eps"), ("weight_decay", "weight_decay")):
            if o.get(cfg_key) is not None:
                opt[key] = float(o[cfg_key])
        if cfg.get("max_grad_norm") is not None:
            opt["grad_clip"] = float(cfg["max_grad_norm"])
    return {"global_batch_size": batch, "seq_len": seq_len, "tokens_per_step": batch * seq_len,
            "lr_schedule": sched.as_json(), "optimizer": opt}


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


def convert_state_dict(state: dict[str, Any], arch: Architecture, where: str) -> dict[str, Any]:
    """ai2-olmo model state dict -> HF OlmoForCausalLM state dict (fp32, contiguous)."""
    if not isinstance(state, dict):
        raise UserError(f"{where}: expected a state dict (name -> tensor)")
    out = {}
    for name, tensor in state.items():
        for hf_name, t in olmo_to_hf(name, tensor, arch):
            out[hf_name] = t.float().contiguous()
    if arch.weight_tying:
        out.pop("lm_head.weight", None)
    elif "lm_head.weight" not in out:
        raise UserError(f"{where}: weight_tying is false but transformer.ff_out.weight is missing")
    return out


def convert_optimizer_state(optim: dict[str, Any], arch: Architecture, where: str) -> dict[str, Any] | None:
    """OLMo optim.pt (torch or FSDP full optimizer state dict) -> `exp_avg/<hf name>`, `exp_avg_sq/<hf name>`,
    `step`. State may be keyed by parameter index (resolved through the groups' `param_names`) or by name."""
    import torch

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
            for hf_name, t in olmo_to_hf(name, st[moment], arch):
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


# --- tokenizer ---------------------------------------------------------------------------------------


def tokenizer_for(cfg: dict[str, Any] | None, family: Family):
    """The tokenizer the run names (`tokenizer.identifier`) when ai2-olmo ships that file, else `olmo`."""
    from harness.tokenizers import SHIPPED_TOKENIZERS, load_tokenizer

    identifier = ((cfg or {}).get("tokenizer") or {}).get("identifier") or family.data_order.tokenizer or ""
    base = Path(str(identifier)).name
    for short, file in SHIPPED_TOKENIZERS.items():
        if file == base:
            return load_tokenizer(short)
    return load_tokenizer("olmo")


# --- the whole conversion ------------------------------------------------------------------------------


def convert_original(src: str | Path, dest: str | Path, *, family: Family, step: int,
                     source_url: str | None = None, trust_pickle: bool = False) -> Path:
    """Convert an unsharded OLMo checkpoint directory `src` into the checkpoint layout at `dest`."""
    import torch
    from transformers import OlmoForCausalLM

    from injection.tiny import hf_config, save_checkpoint_dir

    src = Path(src)
    cfg = read_olmo_config(src / "config.yaml")
    arch = architecture_from_config(cfg, family.architecture, str(src / "config.yaml"))
    if not (src / "model.pt").is_file():
        raise UserError(f"{src}: model.pt is missing")
    state = safe_torch_load(src / "model.pt", trust_pickle=trust_pickle)
    hf_state = convert_state_dict(state, arch, str(src / "model.pt"))
    del state

    with torch.device("meta"):
        model = OlmoForCausalLM(hf_config(arch))
    expected = set(model.state_dict()) - ({"lm_head.weight"} if arch.weight_tying else set())
    if set(hf_state) != expected:
        missing, extra = sorted(expected - set(hf_state)), sorted(set(hf_state) - expected)
        raise UserError(f"{src / 'model.pt'}: does not match the architecture (missing {missing[:3]}, "
                        f"unexpected {extra[:3]})")
    model.load_state_dict(hf_state, strict=False, assign=True)
    if arch.weight_tying:
        model.tie_weights()

    optimizer_state = None
    if (src / "optim.pt").is_file():
        optimizer_state = convert_optimizer_state(
            safe_torch_load(src / "optim.pt", trust_pickle=trust_pickle), arch, str(src / "optim.pt"))

    trainer_state = None
    if (src / "train.pt").is_file():
        train = safe_torch_load(src / "train.pt", trust_pickle=trust_pickle)
        if isinstance(train, dict):
            trainer_state = {k: v for k, v in train.items() if isinstance(v, (int, float, str)) and k != "rng"}
            global_step = train.get("global_step")
            if isinstance(global_step, int) and global_step != step:
                _warn(f"{src / 'train.pt'}: global_step {global_step} differs from the catalog's step {step}")

    facts = run_facts(cfg, family, step, str(src / "config.yaml"))
    meta = {
        "family": family.name,
        "step": step,
        "source": "original",
        "source_url": source_url,
        **facts,
        "trainer_state": trainer_state,
        "optimizer_step": None if optimizer_state is None or "step" not in optimizer_state
        else int(optimizer_state["step"]),
        "architecture": {k: getattr(arch, k) for k in arch.__dataclass_fields__},
    }
    return save_checkpoint_dir(model, tokenizer_for(cfg, family), dest, meta, optimizer_state)
