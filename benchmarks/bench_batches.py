"""Fetch + splice time of a batch vs one train step of a tiny OLMo model, with and without prefetching.

    python -m benchmarks.bench_batches [--steps 10] [--corpus DIR_OR_URL]     (from the repository root)

Target: with prefetching, the data time not hidden behind the train step is ≤ 5% of the step time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from injection.data import BatchStream, open_corpus
from injection.data.order import build_global_indices, write_global_indices
from injection.engine.batches import InjectedBatches
from injection.schedule import PlannedInjection
from injection.splice import place, splice_items

VOCAB, SEQ, BATCH = 50304, 128, 16


def make_corpus(root: Path, n_instances: int) -> Path:
    import json

    rng = np.random.default_rng(0)
    rng.integers(0, 50000, size=n_instances * SEQ).astype(np.uint16).tofile(root / "part-000.npy")
    write_global_indices(root / "global_indices.npy", build_global_indices(n_instances, seed=1))
    (root / "corpus.json").write_text(
        json.dumps(
            {"paths": ["part-000.npy"], "dtype": "uint16", "seq_len": SEQ, "seed": 1, "n_instances": n_instances}
        )
    )
    return root


def tiny_olmo() -> torch.nn.Module:
    from transformers import OlmoConfig, OlmoForCausalLM

    config = OlmoConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=SEQ,
        pad_token_id=1,
        eos_token_id=50279,
        bos_token_id=None,
    )
    return OlmoForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--corpus", help="corpus directory or URL (default: a random one made on the fly)")
    parser.add_argument("--paragraphs", type=int, default=4, help="paragraphs injected at every step")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        location = args.corpus or make_corpus(Path(tmp), n_instances=BATCH * (2 * args.steps + 10))
        stream = BatchStream(open_corpus(location), 0, 0, BATCH)
        rng = np.random.default_rng(0)
        plan = [PlannedInjection(k, p, "bench", 0) for k in range(2 * args.steps + 5) for p in range(args.paragraphs)]
        tokens = {(p, 0): rng.integers(0, 50000, size=40).tolist() + [50279] for p in range(args.paragraphs)}
        injections = splice_items(plan, tokens)
        records = {k: place(k, items, BATCH, SEQ) for k, items in injections.items()}

        model = tiny_olmo()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

        def train_step(batch: np.ndarray) -> None:
            ids = torch.from_numpy(batch)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def run(prefetch: int, offset: int) -> tuple[float, float]:
            """(mean seconds waiting for data, mean seconds of the train step) per step."""
            batches = InjectedBatches(stream, injections, records, prefetch=prefetch)
            wait = step = 0.0
            with batches:
                batches.get(offset)  # start-up (and the prefetch thread) outside the measurement
                for k in range(offset + 1, offset + 1 + args.steps):
                    t0 = time.perf_counter()
                    batch = batches.get(k)
                    t1 = time.perf_counter()
                    train_step(batch)
                    t2 = time.perf_counter()
                    wait, step = wait + (t1 - t0), step + (t2 - t1)
            return wait / args.steps, step / args.steps

        train_step(stream.batch(0)[0])  # warm-up: allocations, first optimizer step
        no_wait, no_step = run(prefetch=0, offset=0)
        pf_wait, pf_step = run(prefetch=2, offset=args.steps + 2)

    print(
        f"tiny OLMo (d_model 64, 2 layers, vocab {VOCAB}), global batch {BATCH} x {SEQ}, "
        f"{args.paragraphs} paragraphs spliced per step, {args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    print(
        f"without prefetch: fetch+splice {no_wait * 1e3:7.2f} ms / train step {no_step * 1e3:7.2f} ms = "
        f"{no_wait / no_step:6.2%}"
    )
    print(
        f"with prefetch:    data wait    {pf_wait * 1e3:7.2f} ms / train step {pf_step * 1e3:7.2f} ms = "
        f"{pf_wait / pf_step:6.2%}"
        f"  (target ≤ 5%: {'met' if pf_wait / pf_step <= 0.05 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
