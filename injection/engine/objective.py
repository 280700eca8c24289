"""What one update minimises: the original trainer's loss for a micro-batch of rows, and the rows that carry it.

Two shapes, chosen from the checkpoint (`make_objective`):
- most runs: transformers' mean next-token cross-entropy times the family's `loss_factor` (OLMo divides the summed
  loss by rows × L rather than the rows × (L − 1) predictions; GPT-NeoX takes the mean as it is);
- runs whose checkpoint.json has an `objective` (OLMo 2): per-token sums over the positions that carry loss,
  divided by the trainer's own denominator whatever is masked, plus the z-loss, multiplier ×
  Σ logsumexp(logits)² over the same positions (PaLM's auxiliary loss; ai2-olmo's `softmax_auxiliary_loss`).
  Rows the repetition filter masks (injection.instance_filter) reach the model as a masked array: their
  labels are ignored, as ai2-olmo's `instance_mask` ignores them.

The loop sees one interface: `model_inputs(micro)` for the forward pass, `loss(out)` to backpropagate and
`logged(out)` for the metrics (`loss` is the cross-entropy alone, as OLMo logs `train/CrossEntropyLoss`; `z_loss`
the extra term, NaN when there is none).

Injected paragraphs always carry loss. The filter decides on the original instance, as OLMo read it; where a
paragraph is spliced into a row the filter masks, the paragraph's own tokens keep their labels and the rest of the
row (the original instance's tokens) stays masked (`mask_batch`), so no injection is ever trained with zero loss
and no masked original token is trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from injection.engine.kernels import IGNORE_INDEX, lm_loss_sums, use_chunked_loss

NO_TERM = float("nan")
"""The logged z-loss of a run without one."""


@dataclass(frozen=True)
class Objective:
    """The original trainer's loss (see the module docstring)."""

    loss_factor: float = 1.0
    """The family's factor from HF's mean next-token loss to the trainer's normalisation of a full batch."""
    z_loss: float | None = None
    """Multiplier of the z-loss term; None = no such term."""
    per_token: bool = False
    """Sum per token over the positions that carry loss and divide by the trainer's denominator (needed as soon as
    rows can be masked or a term is added); False = transformers' mean loss × loss_factor."""

    # ---- what the model computes ------------------------------------------------------------------------

    def install(self, model: torch.nn.Module, chunk_tokens: int = 0) -> None:
        """Make `model(input_ids=..., labels=...)` return this objective's loss (the plain shape needs nothing,
        unless the LM head is to be computed in chunks: injection.engine.kernels)."""
        if not self.per_token:
            if chunk_tokens:
                use_chunked_loss(model, chunk_tokens)
            return

        base = getattr(model, model.base_model_prefix)
        head = model.get_output_embeddings()
        original = model.forward
        objective = self

        def forward(input_ids=None, labels=None, **kwargs):
            if labels is None:
                return original(input_ids=input_ids, **kwargs)
            hidden = base(input_ids=input_ids, **kwargs).last_hidden_state
            ce, zsq = lm_loss_sums(hidden, labels, head, chunk_tokens, with_z=objective.z_loss is not None)
            out = CausalLMOutputWithPast(loss=None, hidden_states=(hidden,))
            denominator = objective.denominator(labels.shape)
            out.ce_loss = ce / denominator
            out.z_loss = (objective.z_loss or 0.0) * zsq / denominator
            out.loss = out.ce_loss + out.z_loss
            return out

        model.forward = forward

    def denominator(self, shape: Sequence[int]) -> float:
        """What the trainer divides a micro-batch's summed loss by: rows × L for OLMo (its batch's tokens, masked or
        not), rows × (L − 1) for a mean over predictions."""
        rows, length = shape
        return float(round(rows * (length - 1) / self.loss_factor))

    def model_inputs(self, micro: np.ndarray, device) -> dict[str, torch.Tensor]:
        """input_ids and labels of a micro-batch [m, L]; masked positions (a masked array's mask) get no label."""
        ids = torch.from_numpy(np.ma.getdata(micro)).to(device)
        if not np.ma.is_masked(micro):
            return {"input_ids": ids, "labels": ids}
        labels = np.where(np.ma.getmaskarray(micro), IGNORE_INDEX, np.ma.getdata(micro))
        return {"input_ids": ids, "labels": torch.from_numpy(labels).to(device)}

    # ---- what the loop reads back -----------------------------------------------------------------------

    def loss(self, out) -> torch.Tensor:
        """The micro-batch's contribution to the update's objective (DeepSpeed averages it over accumulation)."""
        return out.loss if self.per_token else out.loss * self.loss_factor

    def logged(self, out) -> dict[str, torch.Tensor]:
        """`loss` (the cross-entropy, as OLMo logs it) and `z_loss` of the micro-batch, detached, fp32."""
        if not self.per_token:
            ce = (out.loss * self.loss_factor).detach().float()
            return {"loss": ce, "z_loss": torch.full_like(ce, NO_TERM)}
        z = out.z_loss if self.z_loss is not None else torch.full_like(out.ce_loss, NO_TERM)
        return {"loss": out.ce_loss.detach().float(), "z_loss": z.detach().float()}


def make_objective(loss_factor: float, z_loss: float | None, masks_rows: bool) -> Objective:
    """The objective of a run: per-token sums as soon as a term is added or rows can be masked."""
    if z_loss is not None and not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z-loss multiplier must be finite and >= 0, got {z_loss}")
    return Objective(loss_factor, z_loss, per_token=z_loss is not None or masks_rows)


# ---- which positions carry loss --------------------------------------------------------------------------


def mask_batch(tokens: np.ndarray, kept: np.ndarray, records: Sequence = ()) -> np.ndarray:
    """The global batch [B, L] as the loop trains on it: a plain array when every row carries loss, else a masked
    array whose rows the filter rejected (`kept` False) are masked except the spans of injected paragraphs
    (`records`: InjectionRecord row, offset, tokens) written into them."""
    if kept.all():
        return tokens
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[~kept] = True
    for r in records:
        if not kept[r.row]:
            mask[r.row, r.offset : r.offset + r.tokens] = False
    return np.ma.MaskedArray(tokens, mask=mask)


def masked_rows(batch: np.ndarray) -> int:
    """Rows of a global batch whose original instance carries no loss (OLMo's masked instances)."""
    return int(np.ma.getmaskarray(batch).any(axis=1).sum()) if np.ma.isMaskedArray(batch) else 0
