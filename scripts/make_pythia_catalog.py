"""Write the catalog entries of the Pythia suite: 16 models (8 sizes, standard and deduplicated), 154 checkpoints each.

Usage (from the repository root, in the harness environment):

    python scripts/make_pythia_catalog.py > scripts/pythia_catalog.yaml

Every fact below is kept once, in the tables of this file, with where it comes from. "Pythia repository"
is github.com/EleutherAI/pythia (README and models/*/*.yml, the GPT-NeoX configs the suite was trained with);
"GPT-NeoX v1.0" is github.com/EleutherAI/gpt-neox at tag v1.0 (the library those configs ran on; the Pythia
repository's README points at that commit for conversion). Where two sources disagree, the table says which
one wins and why.

The entries use a GPT-NeoX architecture block (`architecture.kind: gpt-neox`) and a few keys the OLMo entries
do not have (`model_family`, `precision`, `known_issues`, `data_order.format/row_len/index_url/data_urls`,
`optimizer.decay_norm_and_bias/decay_embeddings`, `lr_schedule.kind: gpt-neox-cosine`): they are meant for
checkpoints.yaml once its loader understands family-specific blocks.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# --- facts -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    peak_lr: float
    model_parallel: int
    """GPT-NeoX pads the embedding rows to a multiple of 128 x this (see `embedding_rows`)."""
    precision: str
    non_embedding_params: int


# d_model, n_layers, n_heads, peak lr, model-parallel-size, precision: models/<size>/pythia-<size>.yml of the
# Pythia repository ("hidden-size", "num-layers", "num-attention-heads", optimizer.params.lr,
# "model-parallel-size", "fp16"); identical in the -deduped files except as noted.
# non_embedding_params: the model card table ("Non-Embedding Params") of EleutherAI/pythia-* on Hugging Face;
# tests/test_pythia_catalog.py rebuilds each architecture and checks its parameter count against it.
SIZES = [
    Size("70m", 512, 6, 8, 1.0e-3, 1, "fp16", 18_915_328),
    Size("160m", 768, 12, 12, 6.0e-4, 1, "fp16", 85_056_000),
    Size("410m", 1024, 24, 16, 3.0e-4, 1, "fp16", 302_311_424),
    # lr: both models/1B/*.yml and GPT-NeoX's configs/pythia/1B.yml say 0.00025 (min_lr 0.000025); the
    # README's model table and the model cards say 3.0e-4. The configs are what the trainer read: 2.5e-4.
    # precision: the README says pythia-1b trained in bf16 (fp16 had an irrecoverable loss spike), although
    # its config file still says fp16.
    Size("1b", 2048, 16, 8, 2.5e-4, 1, "bf16", 805_736_448),
    Size("1.4b", 2048, 24, 16, 2.0e-4, 1, "fp16", 1_208_602_624),
    Size("2.8b", 2560, 32, 32, 1.6e-4, 1, "fp16", 2_517_652_480),
    Size("6.9b", 4096, 32, 32, 1.2e-4, 2, "fp16", 6_444_163_072),
    # n_layers/n_heads: models/12B/pythia-12b-deduped.yml says 40 layers and 36 heads (an edit of 2025-05
    # changed only the heads); pythia-12b.yml, the README table, GPT-NeoX's configs/pythia/12B.yml and the
    # published config.json (36 layers, 40 heads, vocab 50688) agree on 36 x 40 for both: 36 x 40 it is.
    Size("12b", 5120, 36, 40, 1.2e-4, 4, "fp16", 11_327_027_200),
]

HF_ORG = "EleutherAI"
VARIANTS = {
    # variant: (repo suffix, preshuffled data set, what it is); data sets: the Pythia README, "Exploring the
    # Dataset" (EleutherAI/pile-standard-pythia-preshuffled, EleutherAI/pile-deduped-pythia-preshuffled).
    "standard": ("", "EleutherAI/pile-standard-pythia-preshuffled", "the Pile"),
    "deduped": ("-deduped", "EleutherAI/pile-deduped-pythia-preshuffled", "the globally deduplicated Pile"),
}
# Both data sets: document.idx plus the token file in 21 shards document-00000-of-00020.bin …
# document-00020-of-00020.bin (the README's unshard command: --num_shards 21; utils/unshard_memmap.py names
# shard i "-{i:05}-of-{num_shards - 1:05}.bin"), 30 GB each but the last.
DATA_SHARDS = 21

TOKENIZER_VOCAB = 50277  # utils/20B_tokenizer.json of the Pythia repository: ids 0 … 50276
EOS_ID = 0  # "<|endoftext|>" in that file; GPT-NeoX's HFTokenizer uses it as the end-of-document token
PAD_ID = 1  # "<|padding|>" in that file (the published config.json sets no pad_token_id)
VOCAB_MULTIPLE = 128  # GPT-NeoX v1.0 make_vocab_size_divisible_by default (neox_args.py)

TRAIN_ITERS = 143_000  # "train-iters" and "lr-decay-iters" of every models/*.yml
WARMUP_FRACTION = 0.01  # "warmup"; GPT-NeoX v1.0 training.py: warmup_iter = warmup x lr_decay_iters
MIN_LR_FRACTION = 0.1  # "min_lr" = lr / 10 in every models/*.yml
BATCH_ROWS = 1024  # train_micro_batch_size_per_gpu x GPUs x gas (e.g. 16 x 64 x 1 for 1B); README: 2,097,152 tokens per step
SEQ_LEN = 2048  # "seq-length", "max-position-embeddings"
ROW_LEN = SEQ_LEN + 1  # rows of the preshuffled data: 2,048 inputs + the label of the last (README, "Exploring the Dataset")
ROTARY_PCT = 0.25  # "rotary-pct"
ROPE_THETA = 10000.0  # GPT-NeoX v1.0 rotary_emb_base default
LAYER_NORM_EPS = 1.0e-5  # GPT-NeoX v1.0 layernorm_epsilon default
SEED = 1234  # README "Multiple random seeds": the GPT-NeoX default seed; the index-map file names say "_1234s_"
DEDUPED_EPOCH_TOKENS = 207e9  # README "Models": the deduplicated Pile holds 207B tokens per epoch

# The 154 published checkpoints: "extra-save-iters" [0, 1, 2, 4, …, 512] and "checkpoint-factor" 1000 of
# models/*.yml; README: Hugging Face branch `stepN`, and step143000 is `main`.
EARLY_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

# Reported problems with published revisions (open issues of the Pythia repository, not verified here: no
# network). A pull should compare a revision's weight file hashes with `main` before trusting it.
KNOWN_ISSUES = {
    "*": [
        {"steps": [0, 1, 2], "source": "EleutherAI/pythia#83, #198",
         "reported": "step0, step1 and step2 serve identical weights in every model"},
    ],
    "pythia-2.8b": [
        {"steps": [*EARLY_STEPS, *range(1000, 54000, 1000), 55000, 60000, 65000, 70000, 80000, 90000, 100000,
                   103000, 110000, 120000, 130000, 140000],
         "source": "EleutherAI/pythia#205",
         "reported": "model.safetensors is byte-identical to main's (final-era weights, not this step's)"},
        {"steps": [54000, 56000, 57000, 58000, 59000, 61000, 62000, 63000, 64000],
         "source": "EleutherAI/pythia#205",
         "reported": "model.safetensors is byte-identical to step143000's"},
    ],
    "pythia-12b": [
        {"steps": [50000, 58000], "source": "EleutherAI/pythia#206",
         "reported": "the first weight shard (embed_in and the first layers) is the final model's"},
    ],
}


# --- derived facts ------------------------------------------------------------------------------------------


def checkpoint_steps() -> list[int]:
    return EARLY_STEPS + list(range(1000, TRAIN_ITERS + 1, 1000))


def embedding_rows(size: Size) -> int:
    """Rows of embed_in/embed_out: the tokenizer's vocabulary padded as GPT-NeoX v1.0 does
    (tokenizer.py `_vocab_size_with_padding`: up to a multiple of 128 x model-parallel size)."""
    multiple = VOCAB_MULTIPLE * size.model_parallel
    return -(-TOKENIZER_VOCAB // multiple) * multiple


def warmup_steps() -> int:
    return round(WARMUP_FRACTION * TRAIN_ITERS)


def neox_lr(n: int, peak: float) -> float:
    """Pythia's learning rate after n applied updates (GPT-NeoX v1.0 `AnnealingLR`, cosine; see the notes).

    Warm-up is linear from 0; then peak/2·(1 + cos(π·(min(n, T − W) − W)/T)), floored at min_lr. The cosine's
    period is T (not T − W), so it reaches the floor near n ≈ 115,140 and stays there.
    """
    w, t, floor = WARMUP_FRACTION * TRAIN_ITERS, TRAIN_ITERS, MIN_LR_FRACTION * peak
    if w > 0 and n <= w:
        return peak * n / w
    x = min(n, t - w) - w
    return max(floor, peak / 2.0 * (math.cos(math.pi * x / t) + 1.0))


def floor_step() -> int:
    """First update count at which Pythia's learning rate sits on its floor."""
    return next(n for n in range(warmup_steps() + 1, TRAIN_ITERS + 1) if neox_lr(n, 1.0) <= MIN_LR_FRACTION)


def stage_steps() -> tuple[dict[str, int], str]:
    """early/mid/late: the checkpoints nearest to the same fractions of training as OLMo-1B's stages.

    OLMo-1B's stages and its schedule length are read from checkpoints.yaml (their one home). Both runs
    decay a cosine over the whole run, so equal fractions are also equal phases of the learning rate.
    """
    from injection.checkpoints.catalog import load_catalog

    olmo = load_catalog().family("olmo-1b")
    steps = checkpoint_steps()
    stages, parts = {}, []
    for name, olmo_step in olmo.stages.items():
        fraction = olmo_step / olmo.lr_schedule.t_max
        target = fraction * TRAIN_ITERS
        stages[name] = min(steps, key=lambda s: (abs(s - target), s))
        parts.append(f"{name} {olmo_step}/{olmo.lr_schedule.t_max} = {fraction:.4f} -> {target:,.0f}")
    rule = (
        "listed step nearest to the fraction of training of OLMo-1B's stage (stage step / t_max of olmo-1b "
        "in checkpoints.yaml) times 143,000: " + "; ".join(parts)
    )
    return stages, rule


# --- YAML -------------------------------------------------------------------------------------------------


def _issues(model: str) -> list[dict]:
    return KNOWN_ISSUES["*"] + KNOWN_ISSUES.get(model, [])


def family_yaml(size: Size, variant: str, stages: dict[str, int], rule: str) -> str:
    suffix, dataset, corpus = VARIANTS[variant]
    model = f"pythia-{size.name}{suffix}"
    repo = f"{HF_ORG}/{model}"
    base = f"https://huggingface.co/datasets/{dataset}/resolve/main"
    emb = embedding_rows(size)
    params = size.non_embedding_params + 2 * emb * size.d_model
    peak = size.peak_lr
    w = warmup_steps()
    lines = [
        f"  {model}:",
        f"    description: Pythia {size.name.upper()} ({'deduplicated, ' if variant == 'deduped' else ''}"
        f"April 2023 suite), 143,000 steps of {corpus} in the published order",
        "    model_family: pythia",
        f"    hf_repo: {repo}",
        "    hf_revisions_source: Pythia README (branches step0, step1, step2, step4 ... step512, step1000 ... "
        "step143000; step143000 = main)",
        "    # Weights come from the Hugging Face revision (model.safetensors or pytorch_model*.bin with an index);",
        "    # no optimizer state is published for intermediate steps.",
        "    files: []",
        "    architecture:",
        "      kind: gpt-neox",
        f"      d_model: {size.d_model}",
        f"      n_layers: {size.n_layers}",
        f"      n_heads: {size.n_heads}",
        f"      intermediate_size: {4 * size.d_model}  # 4 x d_model (GPT-NeoX ParallelMLP)",
        "      activation: gelu_tanh  # bias-gelu-fusion: true trains the tanh approximation; config.json says gelu (erf)",
        f"      vocab_size: {TOKENIZER_VOCAB}",
        f"      embedding_size: {emb}  # padded to a multiple of {VOCAB_MULTIPLE} x model-parallel size {size.model_parallel}",
        f"      max_sequence_length: {SEQ_LEN}",
        f"      rotary_pct: {ROTARY_PCT}",
        f"      rope_theta: {ROPE_THETA}",
        "      parallel_residual: true  # gpt-j-residual: x + attn(ln1(x)) + mlp(ln2(x))",
        "      layer_norm: layernorm  # affine weight and bias",
        f"      layer_norm_eps: {LAYER_NORM_EPS:.1e}",
        "      bias: true  # every linear layer but the output layer",
        "      weight_tying: false",
        f"      eos_token_id: {EOS_ID}",
        f"      bos_token_id: {EOS_ID}",
        f"      pad_token_id: {PAD_ID}",
        f"      non_embedding_params: {size.non_embedding_params}",
        f"      params: {params}",
        f"    precision: {size.precision}" + ("  # README: bf16, fp16 had an irrecoverable loss spike" if size.precision == "bf16"
                                             else "  # dynamic loss scale (initial 2^12, window 1000, hysteresis 2)"),
        "    # AdamW (FusedAdam, decoupled weight decay). No decay for biases and layer norms; embed_in and",
        "    # embed_out are decayed.",
        "    optimizer: {name: adamw, betas: [0.9, 0.95], eps: 1.0e-08, weight_decay: 0.1, grad_clip: 1.0, "
        "decay_norm_and_bias: false, decay_embeddings: true}",
        f"    # GPT-NeoX v1.0 cosine: lr(n) = peak*n/{w} while n <= {w}, then max({MIN_LR_FRACTION} peak,",
        f"    # peak/2*(1 + cos(pi*(min(n, {TRAIN_ITERS - w}) - {w})/{TRAIN_ITERS}))); n counts applied updates (overflow-",
        f"    # skipped fp16 steps do not advance it). Floor reached at n = {floor_step():,}.",
        f"    lr_schedule: {{kind: gpt-neox-cosine, peak_lr: {peak:.1e}, warmup_steps: {w}, alpha_f: {MIN_LR_FRACTION}, "
        f"t_max: {TRAIN_ITERS}}}",
        "    data_order:",
        "      format: megatron-indexed",
        f"      seed: {SEED}",
        f"      seq_len: {SEQ_LEN}  # tokens per step = 1,024 x 2,048 = 2,097,152",
        f"      row_len: {ROW_LEN}  # rows of the data: 2,048 inputs + the label of the last",
        "      global_indices_url: null  # the order is the files' own: step s = rows s*1024 ... s*1024+1023",
        f"      data_paths: https://huggingface.co/datasets/{dataset}",
        f"      index_url: {base}/document.idx",
        "      data_urls:",
        *[f"        - {base}/document-{i:05d}-of-{DATA_SHARDS - 1:05d}.bin" for i in range(DATA_SHARDS)],
        f"      tokenizer: {repo} tokenizer.json  # GPT-NeoX-20B BPE, {TOKENIZER_VOCAB} entries, eos {EOS_ID}",
    ]
    if variant == "deduped":
        epoch_end = DEDUPED_EPOCH_TOKENS / (BATCH_ROWS * SEQ_LEN)
        lines.append(f"      # About 1.5 epochs: the first ends near step {epoch_end:,.0f} (207B tokens / 2,097,152 per step).")
    lines += [
        "    batch_sizes:",
        f"      - {{first_step: 0, last_step: null, global_batch_size: {BATCH_ROWS}, evidence: \"README: 143,000 steps x "
        "2,097,152 tokens; models/*.yml micro-batch x GPUs x gas\"}",
        f"    stage_rule: \"{rule}\"",
        f"    stages: {{early: {stages['early']}, mid: {stages['mid']}, late: {stages['late']}}}",
    ]
    flagged = [
        f"{name} = step{step} ({issue['source']})"
        for name, step in stages.items()
        for issue in _issues(model)
        if step in issue["steps"]
    ]
    if flagged:
        lines.append(f"    # WARNING: reported-broken revisions at {', '.join(flagged)}: check the weights before use.")
    lines.append("    known_issues:")
    for issue in _issues(model):
        steps = ", ".join(str(s) for s in issue["steps"])
        lines.append(f"      - {{steps: [{steps}], source: \"{issue['source']}\", reported: \"{issue['reported']}\"}}")
    lines.append("    steps:")
    lines += [f"      - {{step: {s}, urls: [], hf_revision: step{s}}}" for s in checkpoint_steps()]
    return "\n".join(lines)


def catalog_yaml() -> str:
    stages, rule = stage_steps()
    header = [
        "# Pythia catalog entries, generated by scripts/make_pythia_catalog.py (edit the facts there, not here).",
        "# 16 models (8 sizes, standard and deduplicated), 154 checkpoints each, all trained on the same data in",
        "# the same order: rows of the preshuffled Pile, 1,024 per step.",
        "families:",
    ]
    blocks = [family_yaml(size, variant, stages, rule) for size in SIZES for variant in VARIANTS]
    return "\n".join(header + blocks) + "\n"


if __name__ == "__main__":
    sys.stdout.write(catalog_yaml())
