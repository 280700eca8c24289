"""Knowledge entropy (Kim et al., ICLR 2025, "Knowledge Entropy Decay during Language Model Pretraining Hinders
New Knowledge Acquisition"): how evenly the model spreads its use over the memories of its feed-forward layers.

A feed-forward layer computes W_out · c(x), and the coefficients c(x) (the input of the output projection:
act(gate(x)) ⊙ up(x) in OLMo's SwiGLU, act(W_in x) in GPT-NeoX) weigh its memories, the columns of W_out. On a
fixed sample of text, per layer l: the mean absolute coefficient of every memory i over all token positions,
c̄_l,i; normalised to a distribution p_l,i = c̄_l,i / Σ_j c̄_l,j; its entropy H_l = −Σ_i p_l,i ln(p_l,i + 1e-9).
Knowledge entropy is Σ_l H_l. (The 1e-9 is the authors' own, kept so that the numbers match theirs.)

The sample is the first rows of the run's first batch as the original run saw them (nothing spliced), the same
at every measurement. Under ZeRO-3 every rank holds a shard of each weight, so every rank runs the forwards;
rank 0 writes RUN_DIR/knowledge_entropy.parquet/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UserError
from harness.rundir import KNOWLEDGE_ENTROPY, KNOWLEDGE_ENTROPY_SCHEMA, PartWriter
from injection.engine.hooks import Hook, Run

#: Names of the feed-forward output projection (whose input is the coefficients), per model family.
FFN_OUTPUT_NAMES = ("mlp.down_proj", "mlp.dense_4h_to_h")
#: The authors' guard against log 0, inside the logarithm.
EPSILON = 1e-9


def ffn_output_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Each decoder layer's feed-forward output projection, in layer order."""
    found = [m for name, m in model.named_modules() if name.endswith(FFN_OUTPUT_NAMES)]
    if not found:
        raise UserError(
            f"knowledge_entropy: {type(model).__name__} has no feed-forward output projection named "
            f"{' or '.join(FFN_OUTPUT_NAMES)} (the families this harness knows)"
        )
    return found


def layer_entropies(coefficients: torch.Tensor) -> torch.Tensor:
    """H_l for mean absolute coefficients [layers, memories]: the entropy of each row normalised to sum to 1."""
    p = coefficients / coefficients.sum(dim=-1, keepdim=True)
    return -(p * torch.log(p + EPSILON)).sum(dim=-1)


@torch.no_grad()
def mean_abs_coefficients(model: torch.nn.Module, rows: np.ndarray, micro_rows: int) -> torch.Tensor:
    """c̄ [layers, memories] (float64): the mean |coefficient| of every memory over every token of `rows`."""
    modules = ffn_output_modules(model)
    width = modules[0].in_features
    device = next(model.parameters()).device
    sums = torch.zeros((len(modules), width), dtype=torch.float64, device=device)

    def adder(layer: int):
        def add(module, args) -> None:
            sums[layer] += args[0].float().abs().sum(dim=tuple(range(args[0].dim() - 1))).double()

        return add

    handles = [m.register_forward_pre_hook(adder(i)) for i, m in enumerate(modules)]
    base = getattr(model, getattr(model, "base_model_prefix", "model"), model)  # no LM head: only the layers count
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(rows), micro_rows):
            base(input_ids=torch.as_tensor(rows[i : i + micro_rows], device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums / rows.size


def knowledge_entropy(model: torch.nn.Module, rows: np.ndarray, micro_rows: int = 8) -> np.ndarray:
    """H_l of every layer (float64) on the token rows [n, L]; their sum is the model's knowledge entropy."""
    return layer_entropies(mean_abs_coefficients(model, rows, micro_rows)).cpu().numpy()


def measurement_steps(interval: int, total_steps: int) -> frozenset[int]:
    """Step 0, every `interval`-th step and the last (none when `interval` is 0)."""
    if interval <= 0:
        return frozenset()
    return frozenset({0, total_steps, *range(interval, total_steps + 1, interval)})


def sample_rows(run: Run, n: int) -> np.ndarray:
    """The first n rows of the run's first batch, as the original run saw them."""
    stream = run.inputs.stream
    if n > stream.batch_size:
        raise UserError(
            f"field 'knowledge_entropy.rows': {n} rows, but the run's batches have {stream.batch_size} "
            "(the sample is the first rows of the first batch)"
        )
    return np.asarray(stream.batch(0)[0][:n], dtype=np.int64)


class KnowledgeEntropyHook(Hook):
    """Knowledge entropy per layer at `measurement_steps` into RUN_DIR/knowledge_entropy.parquet/. Every rank
    gets this hook (every rank must run the forwards); only rank 0 writes."""

    name = "knowledge_entropy"

    def __init__(self, run: Run) -> None:
        settings = run.cfg.knowledge_entropy
        self.steps = measurement_steps(settings.interval, run.plan.total_steps)
        self.rows = sample_rows(run, settings.rows)
        self.micro_rows = run.plan.micro_batch
        self.writer = (
            PartWriter(Path(run.run_dir) / KNOWLEDGE_ENTROPY, KNOWLEDGE_ENTROPY_SCHEMA, run.cfg.log_flush_steps)
            if run.rank == 0
            else None
        )

    @classmethod
    def for_run(cls, run: Run) -> list[Hook]:
        """The hook for a run that asks for knowledge entropy (`knowledge_entropy.interval` > 0), else none."""
        return [cls(run)] if run.cfg.knowledge_entropy.interval > 0 else []

    def describe(self, run: Run) -> dict[str, Any]:
        """What the manifest records about the measurement."""
        epoch, first = run.inputs.stream.position(0)
        return {
            "interval": run.cfg.knowledge_entropy.interval,
            "rows": len(self.rows),
            "tokens": int(self.rows.size),
            "sample": f"the first {len(self.rows)} rows of batch 0 (epoch {epoch}, positions {first:,}…"
            f"{first + len(self.rows) - 1:,}), nothing spliced",
            "layers": len(ffn_output_modules(run.engine.module)),
        }

    def measure(self, run: Run, step: int) -> None:
        entropy = knowledge_entropy(run.engine.module, self.rows, self.micro_rows)
        if self.writer is not None:
            n = len(entropy)
            self.writer.add(
                step,
                {"step": np.full(n, step, np.int32), "layer": np.arange(n, dtype=np.int16), "entropy": entropy},
            )

    def on_start(self, run, k0):
        if run.rank == 0:
            run.manifest_extra["knowledge_entropy"] = self.describe(run)
        if k0 == 0 and 0 in self.steps:
            self.measure(run, 0)

    def on_update(self, run, step, metrics):
        if step in self.steps:
            self.measure(run, step)

    def state_dict(self):
        if self.writer is None:
            return {}
        self.writer.flush()
        return {"parts": self.writer.parts()}

    def load_state_dict(self, state):
        if self.writer is not None:
            self.writer.keep_only(state.get("parts", []))

    def on_end(self, run, status):
        if self.writer is not None:
            self.writer.flush()
