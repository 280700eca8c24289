"""Probe evaluation: ℓ(q; θ) and exact match for every probe in batched forward passes.

Cost matters: the study evaluates 1,800 probes after each of 2,500 updates. So
- probes are sorted by length and packed into batches bounded by a padded-token budget;
- the decoder runs once per batch and the LM head is applied only at the positions that predict a target
  token (a few per probe), never vocabulary × all positions;
- the probes are split across ranks and the results gathered to rank 0.

Under ZeRO-3 every rank holds only a shard of each weight and the modules' hooks gather them during the
forward, so all ranks must run the same number of forwards in the same order: the batch plan is global and
ranks that run out of batches run a throw-away batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from harness.rundir import score_columns


@dataclass(frozen=True)
class ProbeItem:
    """One encoded probe with its probe-log key. Target tokens are `input_ids[target_start:target_end]`."""

    paragraph: int
    scenario: str
    kind: str
    probe: int
    input_ids: tuple[int, ...]
    target_start: int
    target_end: int

    def __post_init__(self) -> None:
        if not 1 <= self.target_start < self.target_end <= len(self.input_ids):
            raise ValueError(
                f"probe (paragraph {self.paragraph}, {self.kind} {self.probe}): target span "
                f"[{self.target_start}, {self.target_end}) must be non-empty, after at least one input token, "
                f"and inside the {len(self.input_ids)} tokens"
            )


#: The evaluator's result for one set of probes: column name (harness.rundir.score_columns) -> array aligned
#: with the item list.
ProbeScores = dict[str, np.ndarray]


def plan_batches(items: Sequence[ProbeItem], max_tokens: int) -> list[list[int]]:
    """Item indices grouped into batches: sorted by length, each batch's padded size ≤ max_tokens."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i].input_ids), i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = len(items[i].input_ids)  # sorted ascending, so the newest item is the longest
        if current and longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _split_model(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder that returns hidden states, LM head) of an HF causal LM."""
    head = model.get_output_embeddings()
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if head is None or base is None or base is model:
        raise TypeError(f"{type(model).__name__} does not expose a base model and an output embedding")
    return base, head


@torch.no_grad()
def _score_batch(
    base: torch.nn.Module, head: torch.nn.Module, batch: Sequence[ProbeItem], device, token_stats: bool = False
) -> np.ndarray:
    """Scores [len(batch), columns] (float64, columns in `score_columns(token_stats)` order) of one padded batch."""
    n = len(batch)
    width = max(len(it.input_ids) for it in batch)
    ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    rows, pos, tgt, owner = [], [], [], []
    for b, it in enumerate(batch):
        ids[b, : len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[b, : len(it.input_ids)] = 1
        # position t predicts token t+1: the target tokens [s, e) are predicted at [s-1, e-1)
        for t in range(it.target_start, it.target_end):
            rows.append(b)
            pos.append(t - 1)
            tgt.append(it.input_ids[t])
            owner.append(b)
    hidden = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(pos, device=device)]  # [n_target, H]
    logits = head(picked).float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(tgt, device=device)
    token_lp = logp.gather(1, target[:, None])[:, 0]
    hit = logits.argmax(dim=-1) == target
    above = (logits > logits.gather(1, target[:, None])).sum(dim=-1)
    entropy = _entropy(logp).double().cpu().numpy() if token_stats else None  # the ranks are counted above

    token_lp, hit, above = token_lp.double().cpu().numpy(), hit.cpu().numpy(), above.cpu().numpy()
    names = [c.name for c in score_columns(token_stats)]
    out = np.zeros((n, len(names)), dtype=np.float64)
    start = 0
    for b, it in enumerate(batch):
        k = it.target_end - it.target_start
        lp = token_lp[start : start + k]
        row = {
            "logprob": lp.mean(),
            "logprob_sum": lp.sum(),
            "first_logprob": lp[0],
            "exact_match": float(hit[start : start + k].all()),
            "first_rank": above[start],
        }
        if token_stats:
            ranks = above[start : start + k]
            row.update(
                surprisal_mean=-lp.mean(),
                surprisal_max=-lp.min(),
                entropy_mean=entropy[start : start + k].mean(),
                rank_mean=ranks.mean(),
                rank_max=ranks.max(),
            )
        out[b] = [row[name] for name in names]
        start += k
    return out


def _entropy(logp: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """−Σ p·log p of each row of log-probabilities: the one extra pass over the vocabulary the token columns
    cost. A few rows at a time, so that p stays in cache instead of a [targets × vocabulary] copy being
    written out and read back."""
    out = torch.empty(logp.shape[0], device=logp.device, dtype=logp.dtype)
    for i in range(0, logp.shape[0], rows):
        chunk = logp[i : i + rows]
        out[i : i + rows] = torch.linalg.vecdot(chunk.exp(), chunk)
    return out.neg_()


def evaluate_probes(
    model: torch.nn.Module,
    items: Sequence[ProbeItem],
    max_tokens: int = 16384,
    rank: int = 0,
    world_size: int = 1,
    token_stats: bool = False,
) -> ProbeScores | None:
    """Score every probe with `model` (an HF causal LM, or a DeepSpeed engine's `.module`).

    Every rank must call this with the same items. Batch j goes to rank j mod world_size. Returns the
    scores of all items on rank 0 and None on other ranks; with `token_stats` also the token columns
    (harness.rundir.TOKEN_COLUMNS).
    """
    columns = score_columns(token_stats)
    device = next(model.parameters()).device
    base, head = _split_model(model)
    batches = plan_batches(items, max_tokens)
    mine = batches[rank::world_size]
    rounds = math.ceil(len(batches) / world_size) if batches else 0
    was_training = model.training
    model.eval()
    local_idx: list[int] = []
    local_scores: list[np.ndarray] = []
    for r in range(rounds):
        if r < len(mine):
            local_idx.extend(mine[r])
            local_scores.append(_score_batch(base, head, [items[i] for i in mine[r]], device, token_stats))
        else:
            # this rank has no batch left, but ZeRO-3 needs every rank in every forward: run one and drop it
            _score_batch(base, head, [items[batches[0][0]]], device, token_stats)
    model.train(was_training)

    values = np.concatenate(local_scores) if local_scores else np.zeros((0, len(columns)))
    if world_size > 1:
        gathered: list | None = [None] * world_size if rank == 0 else None
        dist.gather_object((local_idx, values), gathered, dst=0)
        if rank != 0:
            return None
        local_idx = [i for idx, _ in gathered for i in idx]
        values = np.concatenate([v for _, v in gathered])
    full = np.zeros((len(items), len(columns)), dtype=np.float64)
    full[np.asarray(local_idx, dtype=np.int64)] = values
    return {c.name: full[:, i].astype(c.numpy_dtype) for i, c in enumerate(columns)}
