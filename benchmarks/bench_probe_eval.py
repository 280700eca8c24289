"""Probe-evaluation cost per step, as a fraction of one training step, measured and predicted by FLOPs.

    predicted fraction = (probe tokens × 2 × params) / (batch tokens × 6 × params)
                       = probe tokens / (3 × batch tokens)        (forward only vs forward + backward)

The engine applies the LM head only at target-predicting positions, so for large vocabularies the
measured fraction can fall below the prediction; the naive per-probe evaluation (one forward per probe,
full logits) is timed beside it.

Two more ratios: what the token columns (`probe_token_stats`) add to a probe evaluation, and the evaluation
without them against the evaluator of an earlier commit (`--baseline-rev`, read with `git show`), timed
alternately in the same process so that both see the same machine.

    python benchmarks/bench_probe_eval.py [--probes 1800] [--batch 8] [--seq-len 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from injection.engine.evaluate import ProbeItem, evaluate_probes  # noqa: E402
from tests.helpers.engine import brute_force_scores  # noqa: E402


def study_like_probes(n: int, vocab: int, seed: int = 0) -> list[ProbeItem]:
    """n probes of 15–30 tokens whose last 1–5 tokens are the target (the study's probes are this size)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        length = int(rng.integers(15, 31))
        target = int(rng.integers(1, 6))
        ids = tuple(int(x) for x in rng.integers(0, vocab, size=length))
        items.append(
            ProbeItem(i // 15, "bench", ("mem", "sem", "comp")[(i // 5) % 3], i % 5, ids, length - target, length)
        )
    return items


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def evaluator_at(rev: str) -> types.ModuleType | None:
    """injection/engine/evaluate.py as it was at a git revision, as a module (None where git cannot say)."""
    done = subprocess.run(
        ["git", "show", f"{rev}:injection/engine/evaluate.py"], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode:
        return None
    module = types.ModuleType(f"evaluate_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(done.stdout, f"{rev}:injection/engine/evaluate.py", "exec"), module.__dict__)
    return module


def alternating(fns: dict[str, object], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each function over `rounds` rounds, each round timing every function once in a new random
    order: on a shared machine the others' load then falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name in rng.permutation(list(fns)):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=1800)
    ap.add_argument("--batch", type=int, default=8, help="training rows per step")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50304, help="OLMo's padded vocabulary size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-sample", type=int, default=200, help="probes timed with the naive loop (extrapolated)")
    ap.add_argument(
        "--baseline-rev",
        default="4764e74",
        help="git revision whose evaluator the evaluation without token columns is timed against "
        "(default: the last one before the token columns existed)",
    )
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds for the token-column ratios")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = transformers.OlmoConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        max_position_embeddings=max(64, args.seq_len),
        pad_token_id=1,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.OlmoForCausalLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    items = study_like_probes(args.probes, args.vocab)
    probe_tokens = sum(len(it.input_ids) for it in items)
    batch_tokens = args.batch * args.seq_len

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len))

    def train_step() -> None:
        model.train()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_train = timed(train_step, args.repeat)
    t_eval = timed(lambda: evaluate_probes(model, items, max_tokens=16384), args.repeat)
    model.eval()
    sample = items[: args.naive_sample]
    t_naive = timed(lambda: [brute_force_scores(model, it) for it in sample], 1) * len(items) / len(sample)

    predicted = probe_tokens / (3 * batch_tokens)
    print(
        f"model: {params / 1e6:.2f}M params (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}); "
        f"torch threads {args.threads}"
    )
    print(
        f"probes: {len(items)} ({probe_tokens} tokens); "
        f"train batch: {args.batch}×{args.seq_len} = {batch_tokens} tokens"
    )
    print(f"train step:              {t_train * 1e3:9.1f} ms")
    print(f"probe eval (engine):     {t_eval * 1e3:9.1f} ms   fraction of train step {t_eval / t_train:.3f}")
    print(f"probe eval (naive loop): {t_naive * 1e3:9.1f} ms   fraction of train step {t_naive / t_train:.3f}")
    print(f"FLOPs-predicted fraction (probe tokens × 2P / batch tokens × 6P): {predicted:.3f}")
    print(f"engine / predicted: {t_eval / t_train / predicted:.2f}; naive / engine: {t_naive / t_eval:.1f}×")
    paper = 1800 * 22.5 / (3 * 2048 * 2048)
    print(f"study scale (1,800 probes × ~22.5 tokens vs 2048×2048-token batches): predicted fraction {paper:.4f}")

    variants = {
        "now": lambda: evaluate_probes(model, items, max_tokens=16384),
        "tokens": lambda: evaluate_probes(model, items, max_tokens=16384, token_stats=True),
    }
    before = evaluator_at(args.baseline_rev)
    if before is not None:
        variants["before"] = lambda: before.evaluate_probes(model, items, max_tokens=16384)
    times = alternating(variants, args.rounds)
    best = {name: min(t) for name, t in times.items()}  # the least disturbed of each: its own cost
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(
        f"token columns: {best['tokens'] * 1e3:.1f} ms vs {best['now'] * 1e3:.1f} ms without (fastest of "
        f"{args.rounds} alternating rounds; medians {median['tokens'] * 1e3:.1f} / {median['now'] * 1e3:.1f} ms)"
    )
    print(
        f"token columns add {best['tokens'] / best['now'] - 1:+.1%} to the probe evaluation "
        f"(medians: {median['tokens'] / median['now'] - 1:+.1%})"
    )
    if before is None:
        print(f"evaluator at {args.baseline_rev}: not available (no git, or no such revision)")
    else:
        print(
            f"without token columns vs the evaluator at {args.baseline_rev}: {best['now'] / best['before']:.3f}× "
            f"(medians: {median['now'] / median['before']:.3f}×)"
        )


if __name__ == "__main__":
    main()
