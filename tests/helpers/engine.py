"""Tiny models, checkpoints, batches and probes for engine tests, made on the fly.

Run as a script it is a training entry point with synthetic inputs (used by the kill/resume and the
multi-rank tests, including under DeepSpeed's launcher):
    python tests/helpers/engine.py CONFIG.yaml [--resume]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from injection.data.source import BatchStream  # noqa: E402
from injection.engine.evaluate import ProbeItem  # noqa: E402
from injection.engine.inputs import RunInputs, read_checkpoint  # noqa: E402
from injection.splice import InjectionRecord, SpliceItem  # noqa: E402

VOCAB = 256
SEQ = 32


def tiny_model(seed: int = 0, vocab: int = VOCAB, tie: bool = False):
    import transformers

    cfg = transformers.OlmoConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        pad_token_id=1,
        eos_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return transformers.OlmoForCausalLM(cfg).eval()


def write_tiny_checkpoint(
    dest: Path,
    seed: int = 0,
    step: int = 1000,
    global_batch: int = 4,
    seq_len: int = SEQ,
    with_optimizer: bool = False,
    lr_kind: str = "cosine",
) -> Path:
    """A checkpoint directory in the design.md layout (no tokenizer: tests hand the engine token ids)."""
    dest = Path(dest)
    model = tiny_model(seed)
    model.save_pretrained(dest)
    if with_optimizer:
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(seed + 1)
        state = {"step": torch.tensor(float(step))}
        for name, p in model.named_parameters():
            state[f"exp_avg/{name}"] = torch.randn(p.shape, generator=g) * 1e-3
            state[f"exp_avg_sq/{name}"] = torch.rand(p.shape, generator=g) * 1e-6
        save_file(state, str(dest / "optimizer.safetensors"))
    meta = {
        "family": "test-tiny",
        "step": step,
        "source": "tests",
        "tokens_per_step": global_batch * seq_len,
        "global_batch_size": global_batch,
        "seq_len": seq_len,
        "optimizer": {"betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0},
        "lr_schedule": {"kind": lr_kind, "peak_lr": 3e-3, "warmup_steps": 100, "alpha_f": 0.1, "t_max": 5000},
        "has_optimizer_state": with_optimizer,
    }
    (dest / "checkpoint.json").write_text(json.dumps(meta))
    return dest


@dataclass
class SyntheticCorpus:
    """Deterministic random tokens per (epoch, position): an OrderedCorpus with no files."""

    seq_len: int = SEQ
    vocab: int = VOCAB
    seed: int = 0
    length: int = 10**9

    def epoch_length(self, epoch: int) -> int:
        return self.length

    def instances(self, epoch: int, start: int, count: int):
        rows = [
            np.random.default_rng([self.seed, epoch, start + i]).integers(2, self.vocab, size=self.seq_len)
            for i in range(count)
        ]
        return np.stack(rows).astype(np.int64), np.arange(start, start + count, dtype=np.int64)


def synthetic_probes(n_paragraphs: int = 4, per_kind: int = 2, seed: int = 0, vocab: int = VOCAB) -> list[ProbeItem]:
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_paragraphs):
        for kind in ("mem", "sem", "comp"):
            for i in range(per_kind):
                n = int(rng.integers(6, 20))
                t = int(rng.integers(1, 4))
                ids = tuple(int(x) for x in rng.integers(2, vocab, size=n))
                items.append(ProbeItem(p, "duplicate" if p % 2 else "once", kind, i, ids, n - t, n))
    return items


Item = SpliceItem
Record = InjectionRecord


def synthetic_stream(ckpt, batch_size: int | None = None) -> BatchStream:
    pos = ckpt.data_position
    return BatchStream(
        SyntheticCorpus(ckpt.seq_len), pos.epoch, pos.instances_seen, batch_size or ckpt.global_batch_size
    )


def synthetic_inputs(checkpoint_dir: Path, n_paragraphs: int = 4, batch_size: int | None = None) -> RunInputs:
    """Probes, paragraphs injected at run steps 0 and 3, and random batches, for a tiny checkpoint."""
    ckpt = read_checkpoint(str(checkpoint_dir))
    probes = synthetic_probes(n_paragraphs)
    rng = np.random.default_rng(7)
    paragraphs = {p: [int(x) for x in rng.integers(2, VOCAB, size=12)] + [0] for p in range(n_paragraphs)}
    injections = {
        0: [Item(p, "once" if p % 2 == 0 else "duplicate", 0, paragraphs[p]) for p in paragraphs],
        3: [Item(p, "duplicate", 0, paragraphs[p]) for p in paragraphs if p % 2],
    }
    inputs = RunInputs(ckpt, synthetic_stream(ckpt, batch_size), probes, injections, knowledge_source="synthetic")
    inputs.place_injections()
    return inputs


def synthetic_settings(checkpoint: Path | str, **settings) -> dict:
    """A run configuration (as YAML would hold it) whose knowledge, schedule and data are the synthetic ones
    made from `checkpoint` (`synthetic_inputs`); `settings` are the rest of the fields (paths as strings)."""
    return {
        "checkpoint": str(checkpoint),
        "knowledge": "synthetic",
        "schedule": "synthetic",
        "data": "synthetic",
        **{k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
    }


def synthetic_config(checkpoint: Path | str, **settings):
    """`synthetic_settings` as a checked `ExperimentConfig`."""
    from injection.engine.config import config_from_dict

    return config_from_dict(synthetic_settings(checkpoint, **settings))


def brute_force_scores(model: torch.nn.Module, item: ProbeItem) -> tuple[float, float, float, bool]:
    """One probe scored the slow, obvious way (full logits, full log_softmax): the reference for tests."""
    with torch.no_grad():
        ids = torch.tensor([item.input_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        targets = list(item.input_ids[item.target_start : item.target_end])
        lps = [logp[t - 1, item.input_ids[t]].item() for t in range(item.target_start, item.target_end)]
        greedy = [int(logp[t - 1].argmax()) for t in range(item.target_start, item.target_end)]
    return sum(lps) / len(lps), sum(lps), lps[0], greedy == targets


def main(argv: list[str]) -> None:
    from injection.engine.config import load_config
    from injection.engine.loop import run_training

    torch.set_num_threads(1)
    cfg = load_config(argv[0])
    run_training(cfg, synthetic_inputs(Path(cfg.checkpoint)), resume="--resume" in argv, progress=False)


if __name__ == "__main__":
    # DeepSpeed's launcher appends --local_rank=N
    main([a for a in sys.argv[1:] if not a.startswith("--local_rank")])
