"""The training engine on an accelerator: throughput, memory and bf16 agreement, measured in one run.

For each DeepSpeed config × precision asked for, `injection run` trains the same checkpoint on the same
synthetic corpus in a fresh process, and the script prints one row:

    tokens/s (median over updates after the warm-up), TFLOP/s and MFU, peak accelerator memory, seconds per
    update with and without probe evaluation after every update, and the distributed backend used.

    FLOPs per token = 6 N + 12 n_layers d_model seq_len   (PaLM appendix B; N = all parameters)
    MFU = FLOPs per token × tokens/s / peak        (--peak-tflops, default 989: H100 SXM dense bf16)

The model is a randomly initialised OLMo architecture (`--shape olmo-1b` is OLMo-1B's: 1.18B parameters,
2,048-token context; `--shape small` is a 4-layer 256-wide model for a quick check on a CPU). With
`--agreement`, the first config is also trained in fp32 and the probe logs of both precisions are compared
(mean and max |Δ log-prob| and the correlation of each probe's change from step 0).

With `--levers`, the first config × precision is also trained once per throughput lever (the `kernels:`
fields, activation checkpointing with a larger micro-batch, DeepSpeed's bucket settings), each alone on top of
the baseline, then the baseline again (the two baselines measure the noise), then once with every lever that
gained more than the noise (and at least 1 %) together; a table gives each one's gain.
`--shape olmo-7b` is OLMo-7B's architecture (6.9B parameters); `--projection` prints, from the measured
tokens/s, the time of the reference experiment (2,500 updates of the checkpoint's batch) on 8 GPUs.

    python benchmarks/bench_gpu_engine.py --shape olmo-1b --configs zero2,zero3 --agreement --out results.json
    python benchmarks/bench_gpu_engine.py --shape olmo-1b --configs zero2 --levers all --out levers.json
    python benchmarks/bench_gpu_engine.py --shape small --configs cpu --precisions fp32      # CPU smoke check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def study_rows(shape: str) -> int | None:
    """Rows per update of the original run's `mid` checkpoint (the catalog's batch size there), for the OLMo
    shapes; None for the small CPU shape."""
    if shape not in ("olmo-1b", "olmo-7b"):
        return None
    from injection.checkpoints.catalog import load_catalog

    family = load_catalog().family(shape)
    return family.batch_size_at(family.stages["mid"])


SMALL = {
    "d_model": 256,
    "n_layers": 4,
    "n_heads": 4,
    "n_kv_heads": 4,
    "mlp_hidden_size": 2048,
    "max_sequence_length": 512,
}


def architecture(shape: str, **overrides) -> dict:
    """The benchmarked model's architecture (the catalog's `Architecture` fields): OLMo-1B's for `olmo-1b`,
    the small CPU shape for `small`; `overrides` replace fields (e.g. a narrower model for a quick test)."""
    from injection.checkpoints.catalog import load_catalog

    if shape in ("olmo-1b", "olmo-7b"):
        arch = dataclasses.asdict(load_catalog().family(shape).architecture)
    else:
        arch = {**dataclasses.asdict(load_catalog().family("tiny").architecture), **SMALL}
    unknown = sorted(set(overrides) - set(arch))
    if unknown:
        raise SystemExit(f"unknown architecture field(s): {', '.join(unknown)} (known: {', '.join(arch)})")
    return {**arch, **overrides}


def write_corpus(corpus: Path, arch: dict, n_instances: int, seed: int = 0) -> Path:
    """A synthetic corpus in the harness's format: one token file of `n_instances` rows of random ids, the order
    for `seed` and corpus.json. Returns the token file (ai2-olmo's trainer can read the same file)."""
    from injection.data.order import build_global_indices, write_global_indices

    seq = arch["max_sequence_length"]
    corpus.mkdir(parents=True, exist_ok=True)
    tokens = corpus / "part-00000.npy"
    rng = np.random.default_rng(0)
    rng.integers(0, arch["vocab_size"] - 1, size=n_instances * seq, dtype=np.uint16).tofile(tokens)
    write_global_indices(corpus / "global_indices.npy", build_global_indices(n_instances, seed=seed))
    info = {
        "paths": [tokens.name],
        "dtype": "uint16",
        "seq_len": seq,
        "seed": seed,
        "n_instances": n_instances,
        "eos_token_id": arch["eos_token_id"],
    }
    (corpus / "corpus.json").write_text(json.dumps(info))
    return tokens


def build_inputs(work: Path, shape: str, global_batch: int, steps: int) -> tuple[Path, Path, dict]:
    """(checkpoint dir, corpus dir, architecture facts); reused when already built."""
    from injection.checkpoints.layout import is_complete
    from injection.checkpoints.tiny import build_tiny_checkpoint

    arch = architecture(shape)
    seq = arch["max_sequence_length"]
    ckpt = work / f"ckpt-{shape}"
    if not is_complete(ckpt):
        t0 = time.perf_counter()
        meta = {
            "family": f"bench-{shape}",
            "global_batch_size": global_batch,
            "seq_len": seq,
            "tokens_per_step": global_batch * seq,
        }
        build_tiny_checkpoint(ckpt, seed=0, meta_overrides=meta, **arch)
        print(f"built {ckpt} in {time.perf_counter() - t0:.0f} s", flush=True)
    corpus = work / f"corpus-{shape}-B{global_batch}"
    if not (corpus / "corpus.json").is_file():
        write_corpus(corpus, arch, (steps + 2) * global_batch)
    return ckpt, corpus, arch


def count_params(ckpt: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in ckpt.glob("model*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                total += int(np.prod(st.get_slice(k).get_shape()))
    return total


def train(
    work: Path,
    name: str,
    ckpt: Path,
    corpus: Path,
    args,
    ds: str,
    precision: str,
    eval_interval: int,
    env: dict | None = None,
    **settings,
) -> dict:
    """One `injection run` in a fresh process; returns its measurements. `env` adds to its environment;
    `settings` replace fields of the run's configuration (e.g. `schedule_overrides`)."""
    import pandas as pd

    out = work / "runs" / name
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = {
        "checkpoint": str(ckpt),
        "knowledge": f"generate:{args.paragraphs}:1:0",
        "schedule": "smoke",
        "schedule_overrides": {"interval": 2, "count": 2},
        "data": str(corpus),
        "total_steps": args.steps,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "deepspeed_config": ds,
        "precision": precision,
        "eval_interval": eval_interval,
        "output_dir": str(out),
        "checkpoint_interval": 0,
        "log_flush_steps": args.steps,
        "optimizer": {"fresh_moments": True},
        "kernels": dict(getattr(args, "kernels", {})),
        **settings,
    }
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "injection", "run", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n")
        raise SystemExit(f"{name}: injection run failed with exit code {proc.returncode}")
    metrics = pd.read_parquet(out / "train_metrics.parquet")
    steady = metrics[metrics.step > args.warmup]
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "name": name,
        "ds": ds,
        "precision": precision,
        "eval_interval": eval_interval,
        "wall_s": wall,
        "micro_batch": cfg["micro_batch"],
        "settings": settings,
        "updates": len(metrics),
        "tokens": int(manifest["tokens_per_step"]) * len(metrics),
        "tokens_per_s": float(steady.tokens_per_s.median()),
        "s_per_update": float((manifest["tokens_per_step"] / steady.tokens_per_s).median()),
        "max_mem_gib": float(metrics.max_mem_gib.max()),
        "loss_first": float(metrics.loss.iloc[0]),
        "loss_last": float(metrics.loss.iloc[-1]),
        "runtime": manifest.get("runtime", {}),
        "n_probes": manifest["n_probes"],
        "run_dir": str(out),
        "eval_s_per_step": float(metrics.eval_s[metrics.eval_s > 0].median()) if (metrics.eval_s > 0).any() else 0.0,
    }


def agreement(a: Path, b: Path) -> dict:
    """Compare two probe logs of the same run in different precisions."""
    import pandas as pd

    pa_, pb = (pd.read_parquet(p / "probes.parquet") for p in (a, b))
    key = ["step", "paragraph", "kind", "probe"]
    m = pa_.merge(pb, on=key, suffixes=("_a", "_b"))
    diff = (m.logprob_a - m.logprob_b).abs()
    last = m.step.max()
    d0 = {}
    for suffix in ("_a", "_b"):
        wide = m.pivot_table(index=key[1:], columns="step", values=f"logprob{suffix}")
        d0[suffix] = (wide[last] - wide[0]).to_numpy()
    return {
        "rows": len(m),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "change_corr": float(np.corrcoef(d0["_a"], d0["_b"])[0, 1]),
        "mean_change_a": float(d0["_a"].mean()),
        "mean_change_b": float(d0["_b"].mean()),
    }


def lever_runs(args, work: Path, ds: str) -> dict[str, dict]:
    """Each lever as the configuration fields it sets on top of the baseline (`--kernels`)."""
    m = args.micro_batch
    from injection.engine.config import resolve_deepspeed_config_path

    ds_path = resolve_deepspeed_config_path(ds)
    small_buckets = work / f"{ds}-small-buckets.json"
    config = json.loads(ds_path.read_text())
    zero = config.setdefault("zero_optimization", {})
    zero.update(overlap_comm=False, reduce_bucket_size=int(5e7), allgather_bucket_size=int(5e7))
    small_buckets.write_text(json.dumps(config))
    kernels = dict(args.kernels)
    levers = {
        "eager": {"kernels": {**kernels, "attention": "eager"}},
        "chunked": {"kernels": {**kernels, "loss_chunk_tokens": args.loss_chunk_tokens}},
        "chunked-2x": {"kernels": {**kernels, "loss_chunk_tokens": args.loss_chunk_tokens}, "micro_batch": 2 * m},
        "fused-adamw": {"kernels": {**kernels, "fused_adamw": True}},
        "compile": {"kernels": {**kernels, "compile": True}},
        "ckpt-4x": {"activation_checkpointing": True, "micro_batch": 4 * m},
        "small-buckets": {"deepspeed_config": str(small_buckets)},
    }
    chosen = list(levers) if args.levers == "all" else args.levers.split(",")
    unknown = [name for name in chosen if name not in levers]
    if unknown:
        raise SystemExit(f"--levers: unknown {unknown}; choose from {', '.join(levers)} or all")
    return {name: levers[name] for name in chosen if args.global_batch % levers[name].get("micro_batch", m) == 0}


def combine(levers: dict[str, dict], names: list[str]) -> dict:
    """One configuration with every named lever (kernels merged; the largest micro-batch)."""
    out: dict = {}
    for name in names:
        for key, value in levers[name].items():
            if key == "kernels":
                out["kernels"] = {**out.get("kernels", {}), **value}
            elif key == "micro_batch":
                out[key] = max(out.get(key, 0), value)
            else:
                out[key] = value
    return out


def measure_levers(work, ckpt, corpus, args, ds, precision, baseline: dict) -> list[dict]:
    """Each lever alone on top of `baseline`, the baseline once more (the two give the noise), then all the
    levers that gained more than the noise (at least 1 %) together."""
    levers = lever_runs(args, work, ds)
    rows = []
    for name, extra in levers.items():
        row = train(work, f"lever-{name}", ckpt, corpus, args, ds, precision, args.steps, **extra)
        row["lever"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
    again = train(work, "lever-baseline-again", ckpt, corpus, args, ds, precision, args.steps)
    again["lever"] = "baseline, again"
    rows.append(again)
    pair = (baseline["tokens_per_s"], again["tokens_per_s"])
    reference = sum(pair) / 2
    noise = abs(pair[0] - pair[1]) / reference
    for row in rows:
        row["gain"], row["noise"] = row["tokens_per_s"] / reference, noise
    paying = [r["lever"] for r in rows if r["gain"] > 1 + max(0.01, noise) and r["lever"] in levers]
    if len(paying) > 1:
        row = train(work, "lever-all-paying", ckpt, corpus, args, ds, precision, args.steps, **combine(levers, paying))
        row["lever"], row["gain"], row["noise"] = "+".join(paying), row["tokens_per_s"] / reference, noise
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def projection(tokens_per_s: float, arch: dict, shape: str, peak_tflops: float) -> dict:
    """The reference experiment (2,500 updates at the checkpoint's rows × 2,048 tokens) on 8 GPUs, assuming each
    GPU keeps the measured tokens/s (8 H100) or the same MFU at an A100's 312 TFLOP/s bf16 peak (8 A100)."""
    rows = study_rows(shape)
    tokens = 2500 * rows * arch["max_sequence_length"]
    h100_days = tokens / (8 * tokens_per_s) / 86400
    return {
        "tokens": tokens,
        "rows_per_update": rows,
        "days_8x_h100": h100_days,
        "days_8x_a100": h100_days * peak_tflops / 312.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["olmo-1b", "olmo-7b", "small"], default="olmo-1b")
    ap.add_argument("--configs", default="zero2,zero3", help="comma-separated DeepSpeed configs")
    ap.add_argument("--precisions", default="bf16")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3, help="updates left out of the medians")
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--paragraphs", type=int, default=120, help="generated paragraphs (15 probes each)")
    ap.add_argument("--agreement", action="store_true", help="also train the first config in fp32 and compare")
    ap.add_argument("--eval-cost", action="store_true", help="also time the first config with probes every update")
    ap.add_argument(
        "--levers",
        default=None,
        help="comma-separated throughput levers to measure one by one "
        "(eager, chunked, chunked-2x, fused-adamw, compile, ckpt-4x, small-buckets) or all",
    )
    ap.add_argument(
        "--kernels", default="", help="kernels fields of every run, e.g. loss_chunk_tokens=8192,fused_adamw=true"
    )
    ap.add_argument("--loss-chunk-tokens", type=int, default=8192, help="the chunk size the `chunked` levers use")
    ap.add_argument("--projection", action="store_true", help="print the reference experiment's time on 8 GPUs")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--work", type=Path, default=Path("build/bench_gpu"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.kernels = parse_kernels(args.kernels)

    import torch

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt, corpus, arch = build_inputs(work, args.shape, args.global_batch, args.steps)
    n_params = count_params(ckpt)
    flops_per_token = 6 * n_params + 12 * arch["n_layers"] * arch["d_model"] * arch["max_sequence_length"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"device {device}; {args.shape}: {n_params / 1e9:.3f}B parameters, seq {arch['max_sequence_length']}, "
        f"global batch {args.global_batch} (micro {args.micro_batch}), {args.steps} updates",
        flush=True,
    )

    rows = []
    sparse = args.steps  # probes at step 0 and the last step only
    for ds in args.configs.split(","):
        for precision in args.precisions.split(","):
            rows.append(train(work, f"{ds}-{precision}", ckpt, corpus, args, ds, precision, sparse))
            print(json.dumps(rows[-1]), flush=True)
    first_ds, first_precision = args.configs.split(",")[0], args.precisions.split(",")[0]
    dense = None  # the first config with probes after every update: the eval cost and the bf16 side
    if args.eval_cost or args.agreement:
        dense = train(work, f"{first_ds}-{first_precision}-eval1", ckpt, corpus, args, first_ds, first_precision, 1)
        rows.append(dense)
        print(json.dumps(dense), flush=True)
    result = {
        "device": device,
        "shape": args.shape,
        "n_params": n_params,
        "flops_per_token": flops_per_token,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.levers:
        baseline = rows[0]
        result["levers"] = measure_levers(work, ckpt, corpus, args, first_ds, first_precision, baseline)
        rows += result["levers"]
    if args.agreement:
        ref = train(work, f"{first_ds}-fp32-ref", ckpt, corpus, args, first_ds, "fp32", 1)
        rows.append(ref)
        result["agreement"] = {
            "a": dense["name"],
            "b": ref["name"],
            **agreement(Path(dense["run_dir"]), Path(ref["run_dir"])),
        }

    print(f"\n{'run':<22}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'s/update':>10}{'peak GiB':>10}{'loss':>15}")
    for r in rows:
        tflops = r["tokens_per_s"] * flops_per_token / 1e12
        r["tflops"], r["mfu"] = tflops, tflops / args.peak_tflops
        print(
            f"{r['name']:<22}{r['tokens_per_s']:>10,.0f}{tflops:>9.1f}{r['mfu']:>7.1%}{r['s_per_update']:>10.3f}"
            f"{r['max_mem_gib']:>10.1f}{r['loss_first']:>8.3f}→{r['loss_last']:.3f}"
        )
    if dense:
        result["probe_eval_s_per_step"] = dense["eval_s_per_step"]
        result["probe_eval_over_update"] = dense["eval_s_per_step"] / dense["s_per_update"]
        print(
            f"probe evaluation ({dense['n_probes']} probes) after every update: "
            f"{dense['eval_s_per_step']:.3f} s per step = {result['probe_eval_over_update']:.1%} of an update"
        )
        rows_at_study = study_rows(args.shape)
        if rows_at_study:  # the same evaluation against an update of the checkpoint's own batch, at this tokens/s
            study_update_s = rows_at_study * arch["max_sequence_length"] / dense["tokens_per_s"]
            result["probe_eval_over_study_update"] = dense["eval_s_per_step"] / study_update_s
            print(
                f"  at the checkpoint's own batch ({rows_at_study} rows, {study_update_s:.1f} s per update at this "
                f"speed): {result['probe_eval_over_study_update']:.2%} of an update"
            )
    if "levers" in result:
        noise = result["levers"][0]["noise"] if result["levers"] else 0.0
        print(
            f"\nlevers on {rows[0]['name']} ({rows[0]['tokens_per_s']:,.0f} tokens/s; gains against the mean of "
            f"it and its repeat, which differ by {noise:.1%}):"
        )
        for r in result["levers"]:
            print(
                f"  {r['lever']:<36}{r['tokens_per_s']:>10,.0f} tokens/s {r['gain']:>6.3f}x  micro-batch "
                f"{r['micro_batch']}, peak {r['max_mem_gib']:.1f} GiB"
            )
    if args.projection and study_rows(args.shape) is None:
        print(f"no projection for --shape {args.shape}: the reference experiment runs OLMo-1B or OLMo-7B")
    elif args.projection:
        best = max(rows, key=lambda r: r["tokens_per_s"] if r["eval_interval"] == args.steps else 0)
        result["projection"] = {
            "from": best["name"],
            **projection(best["tokens_per_s"], arch, args.shape, args.peak_tflops),
        }
        p = result["projection"]
        print(
            f"reference experiment ({p['tokens'] / 1e9:.1f}B tokens) from {best['name']}: "
            f"{p['days_8x_h100']:.2f} days on 8 H100, {p['days_8x_a100']:.2f} days on 8 A100 (same MFU)"
        )
    if "agreement" in result:
        print("bf16 vs fp32 probe logs:", json.dumps(result["agreement"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


def parse_kernels(text: str) -> dict:
    """`loss_chunk_tokens=8192,fused_adamw=true` → the kernels mapping (each value read as `--set` reads it)."""
    from injection.engine.config import set_dotted

    out: dict = {}
    for item in filter(None, text.split(",")):
        set_dotted(out, item)
    return out


if __name__ == "__main__":
    main()
