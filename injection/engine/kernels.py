"""How the model computes, never what: the throughput levers of `kernels:` in a run's configuration.

Each lever changes only the order of floating-point operations (the tests hold every one to the plain path's
probe log within rounding); their speed and memory are measured by `benchmarks/bench_gpu_engine.py --levers`.

- `attention`: the transformers attention implementation the model is built with (`sdpa`, PyTorch's fused
  scaled-dot-product attention and the default; `eager`, the reference matmul-softmax-matmul;
  `flash_attention_2`, which needs the flash-attn package).
- `loss_chunk_tokens`: the LM head and cross-entropy a slice of N token positions at a time
  (`chunked_lm_loss`). The plain path materialises vocabulary × every position of the micro-batch in fp32
  (OLMo-1B, 4 rows of 2,048 tokens: 1.6 GB of logits plus as much again for their gradient); chunked, at most
  N rows of logits exist at once, and each chunk's logits are recomputed in the backward pass.
- `fused_adamw`: torch's single-kernel AdamW (`torch.optim.AdamW(fused=True)`) instead of the per-tensor loop.
- `compile`: `torch.compile` through DeepSpeed's `engine.compile()`, which keeps ZeRO's hooks working.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

IGNORE_INDEX = -100
"""Labels with this value add nothing to the loss (transformers' convention)."""


def _chunk_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    logits = head(hidden).float()  # as transformers computes the loss: in fp32 whatever the model's precision
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_lm_loss(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk_tokens: int
) -> torch.Tensor:
    """Mean next-token cross-entropy of decoder states `hidden` [B, L, d] under the LM `head`, equal to what an
    HF causal LM returns for `labels` [B, L] (position t predicts labels[t + 1]; IGNORE_INDEX labels are left
    out; the mean is over the labels counted), with logits for at most `chunk_tokens` positions alive at a time.

    Each chunk runs under activation checkpointing: its logits are dropped after the forward and recomputed
    in the backward, at the cost of one more LM-head matmul per chunk."""
    h = hidden[:, :-1].reshape(-1, hidden.size(-1))
    y = labels[:, 1:].reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.size(0), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss_sum, h[part], y[part], head, use_reentrant=False)
    return total / (y != IGNORE_INDEX).sum().clamp(min=1)


def _chunk_sums(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, with_z: bool) -> torch.Tensor:
    logits = head(hidden).float()
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if not with_z:
        return torch.stack([ce, ce.new_zeros(())])
    # ai2-olmo's z-loss: the squared log-normaliser at every position that carries a label
    zsq = (logits.logsumexp(-1).square() * (labels != IGNORE_INDEX)).sum()
    return torch.stack([ce, zsq])


def lm_loss_sums(
    hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk_tokens: int = 0, *, with_z: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy, summed squared logsumexp of the logits) over the positions whose label is
    not IGNORE_INDEX, for decoder states `hidden` [B, L, d] under the LM `head` (position t predicts
    labels[t + 1]). With `chunk_tokens` > 0 the logits of at most that many positions exist at a time, each chunk
    recomputed in the backward pass, as in `chunked_lm_loss`."""
    h = hidden[:, :-1].reshape(-1, hidden.size(-1))
    y = labels[:, 1:].reshape(-1)
    if chunk_tokens <= 0:
        sums = _chunk_sums(h, y, head, with_z)
    else:
        sums = hidden.new_zeros(2, dtype=torch.float32)
        for start in range(0, h.size(0), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            sums = sums + checkpoint(_chunk_sums, h[part], y[part], head, with_z, use_reentrant=False)
    return sums[0], sums[1]


def use_chunked_loss(model: torch.nn.Module, chunk_tokens: int) -> None:
    """Make `model(input_ids=..., labels=...)` compute its loss with `chunked_lm_loss`.

    The model's own `forward` is replaced on this instance only, so the module tree, the parameter names and
    every hook (DeepSpeed's ZeRO-3 gathers among them) stay as they are. The output carries the loss and the
    decoder's last hidden states (`hidden_states[-1]`), not logits. Calls without labels run the original
    forward."""
    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    original = model.forward

    def forward(input_ids=None, labels=None, **kwargs):
        if labels is None:
            return original(input_ids=input_ids, **kwargs)
        hidden = base(input_ids=input_ids, **kwargs).last_hidden_state
        return CausalLMOutputWithPast(loss=chunked_lm_loss(hidden, labels, head, chunk_tokens), hidden_states=(hidden,))

    model.forward = forward


def zero_gradient_loss(output) -> torch.Tensor:
    """A loss whose gradient is exactly zero, from an output whose loss is not finite: backward must still run on
    every micro-batch (ZeRO reduces gradients in its hooks), but this one must add nothing."""
    source = output.logits if getattr(output, "logits", None) is not None else output.hidden_states[-1]
    return source.sum() * 0.0
