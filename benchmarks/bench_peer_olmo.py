"""The harness beside ai2-olmo's own trainer, in one run: the same device, the same randomly initialised weights,
the same token file read in the same order, the same global batch, micro-batch, sequence length and number of
updates. Prints tokens/s, TFLOP/s, MFU and peak memory of each side and the ratio harness / OLMo.

1. OLMo (benchmarks/olmo_trainer.py): ai2-olmo's unmodified `Trainer`, set up as OLMo trains: FSDP on one
   rank, wrapped block by block (`--olmo-wrapping`); on a GPU its mixed precision (autocast bf16, FSDP
   `mixed`: bf16 parameters, fp32 gradient reduction), flash attention only where the `flash_attn` package
   is importable; on a CPU fp32. It initialises the model itself, saves it as its pre-train checkpoint
   (`step0-unsharded`) and trains `--steps` updates. Throughput is what its own speed monitor logs,
   `throughput/device/tokens_per_second`, with a window of one update so that each step's value is that
   update's; the median over the updates after `--warmup`.
2. The harness (`injection run`, through bench_gpu_engine.py): OLMo's step-0 checkpoint converted by the
   project's converter, the same token file in OLMo's own order (its `global_indices.npy`), ZeRO-2 (bf16 on a
   GPU, fp32 on a CPU), paragraphs spliced in from the second update on (smoke schedule, every 2 updates),
   probes scored before the first update and after the last. Throughput is its logged `tokens_per_s`, the
   median over the same updates. (Its clock includes taking the next batch from its prefetching reader;
   OLMo's starts once its data loader has produced the batch.)

The first update of both sides starts from the same weights on the same rows, so their first logged losses
(OLMo's normalisation: summed cross-entropy / (rows x seq_len)) agree: to float rounding in fp32; in bf16 up
to the two schemes' rounding (OLMo autocasts from fp32 weights, DeepSpeed computes with bf16 copies).

    FLOPs per token = 6 N + 12 n_layers d_model seq_len     (as bench_gpu_engine.py counts them)
    MFU = FLOPs per token x tokens/s / peak                   (--peak-tflops, default 989: H100 SXM dense bf16)

    python benchmarks/bench_peer_olmo.py --shape olmo-1b --steps 12 --warmup 3 --global-batch 32 \\
        --micro-batch 4 --out peer.json                                         # a GPU
    python benchmarks/bench_peer_olmo.py --shape small --steps 5 --warmup 2 --global-batch 4 \\
        --micro-batch 2 --paragraphs 6                                          # CPU smoke check

`--arch d_model=64,n_layers=2,...` and `--seq-len` shrink the model further (rows must hold a generated
paragraph: 256 tokens suffice). The work folder is emptied first; for olmo-1b it ends up holding about 26 GB
(OLMo's pre-train checkpoint, its conversion, the harness's final resumable checkpoint).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import olmo_trainer  # noqa: E402
from benchmarks.bench_gpu_engine import architecture, count_params, train, write_corpus  # noqa: E402

OLMO_SEED = 6198  # OLMo-1B's run seed: its data order and initialisation
OLMO_TOKENIZER = "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
#: Injections from update 2 on: the first update of both sides sees the same rows.
SCHEDULE_OVERRIDES = {"first_step": 1, "interval": 2, "count": 2}


def olmo_train_config(arch: dict, args, token_file: Path, gpu: bool) -> dict:
    """ai2-olmo's TrainConfig (as YAML data) for the benchmarked model: OLMo-1B's settings (model options,
    AdamW, schedule, FSDP) at this benchmark's batch and length. No evaluators, no checkpoints but the
    pre-train one; the speed monitor's window is one update."""
    rope_theta = arch["rope_theta"]
    return {
        "run_name": "peer-bench",
        "seed": OLMO_SEED,
        "precision": "amp_bf16" if gpu else "fp32",
        "model": {
            "d_model": arch["d_model"],
            "n_heads": arch["n_heads"],
            "n_kv_heads": arch["n_kv_heads"],
            "n_layers": arch["n_layers"],
            "mlp_hidden_size": arch["mlp_hidden_size"],
            "weight_tying": arch["weight_tying"],
            "clip_qkv": arch["clip_qkv"],
            "rope_theta": int(rope_theta) if float(rope_theta).is_integer() else rope_theta,
            "alibi": False,
            "rope": True,
            "flash_attention": gpu and importlib.util.find_spec("flash_attn") is not None,
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "include_bias": False,
            "block_type": "sequential",
            "layer_norm_type": "default",
            "layer_norm_with_affine": False,
            "bias_for_layer_norm": False,
            "attention_layer_norm_with_affine": False,
            "activation_type": "swiglu",
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
            "max_sequence_length": arch["max_sequence_length"],
            "vocab_size": arch["vocab_size"],
            "embedding_size": arch["embedding_size"],
            "eos_token_id": arch["eos_token_id"],
            "pad_token_id": arch["pad_token_id"],
            "init_device": "meta",
            "init_fn": "mitchell",
        },
        "compile": None,
        "optimizer": {
            "name": "adamw",
            "learning_rate": 4.0e-4,
            "weight_decay": 0.1,
            "betas": [0.9, 0.95],
            "eps": 1.0e-5,
        },
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": 2000, "alpha_f": 0.1},
        "tokenizer": {"identifier": OLMO_TOKENIZER, "truncate_direction": "right"},
        "data": {
            "paths": [str(token_file)],
            "memmap_dtype": "uint16",
            "pad_direction": "right",
            "num_workers": 0,
            "drop_last": True,
        },
        "save_folder": "run",
        "save_overwrite": True,
        "save_num_checkpoints_to_keep": 0,  # the pre-train checkpoint is then unsharded: the harness starts from it
        "save_interval_unsharded": None,  # and nothing is saved after it
        "no_pre_train_checkpoint": False,
        "max_duration": 739_328,
        "stop_at": args.steps,
        "global_train_batch_size": args.global_batch,
        "device_train_microbatch_size": args.micro_batch,
        "max_grad_norm": 1.0,
        "distributed_strategy": "fsdp",
        "fsdp": {
            "wrapping_strategy": None if args.olmo_wrapping == "none" else args.olmo_wrapping,
            "precision": "mixed" if gpu else None,
            "use_orig_params": True,
        },
        "speed_monitor": {"window_size": 1},
        "eval_interval": 1_000_000,
        "console_log_interval": 1,
    }


def run_olmo(work: Path, arch: dict, args, token_file: Path, gpu: bool, env: dict) -> tuple[dict, Path]:
    """OLMo's side: (its measurements, its pre-train checkpoint directory)."""
    import yaml

    olmo_dir = work / "olmo"
    olmo_dir.mkdir(parents=True)
    config = olmo_dir / "config.yaml"
    config.write_text(yaml.safe_dump(olmo_train_config(arch, args, token_file, gpu), sort_keys=False))
    t0 = time.perf_counter()
    records = olmo_trainer.launch(
        config,
        olmo_dir / "records.json",
        [],
        cwd=olmo_dir,
        log=olmo_dir / "train.log",
        device="cuda" if gpu else "cpu",
        env=env,
    )
    wall = time.perf_counter() - t0
    steady = [
        r["metrics"]["throughput/device/tokens_per_second"]
        for r in records
        if r["step"] > args.warmup and "throughput/device/tokens_per_second" in r["metrics"]
    ]
    if not steady:
        raise SystemExit(f"OLMo logged no throughput after update {args.warmup} (see {olmo_dir / 'train.log'})")
    peaks = [r["max_mem_gib"] for r in records if r["max_mem_gib"] is not None]
    seq = arch["max_sequence_length"]
    result = {
        "name": "ai2-olmo FSDP",
        "precision": "amp_bf16 + FSDP mixed" if gpu else "fp32",
        "updates": len(records),
        "tokens": sum(len(r["instances"]) * seq for r in records),
        "tokens_per_s": _median(steady),
        "max_mem_gib": max(peaks) if peaks else None,
        "loss_first": records[0]["metrics"]["train/CrossEntropyLoss"],
        "loss_last": records[-1]["metrics"]["train/CrossEntropyLoss"],
        "wall_s": wall,
        "first_instances": records[0]["instances"],
        "log": str(olmo_dir / "train.log"),
    }
    return result, olmo_dir / "run" / "step0-unsharded"


def harness_inputs(work: Path, olmo_checkpoint: Path, corpus: Path) -> Path:
    """OLMo's step-0 checkpoint in the harness's layout, converted by the project's converter; the corpus
    given OLMo's own order file. Returns the checkpoint directory."""
    from injection.checkpoints.catalog import load_catalog
    from injection.checkpoints.olmo import convert_original

    shutil.copyfile(olmo_checkpoint.parent / "train_data" / "global_indices.npy", corpus / "global_indices.npy")
    ckpt = work / "checkpoint"
    with warnings.catch_warnings():
        # The checkpoint's config.yaml is authoritative (architecture, batch, schedule); the catalog family only
        # lends the `olmo` kind, and its differing OLMo-1B batch and schedule would only be warned about.
        warnings.simplefilter("ignore")
        convert_original(olmo_checkpoint, ckpt, family=load_catalog().family("olmo-1b"), step=0)
    return ckpt


def run_harness(work: Path, ckpt: Path, corpus: Path, args, gpu: bool, env: dict) -> dict:
    row = train(
        work,
        "harness-zero2",
        ckpt,
        corpus,
        args,
        "zero2",
        "bf16" if gpu else "fp32",
        args.steps,
        env=env,
        schedule_overrides=SCHEDULE_OVERRIDES,
    )
    peak = row["max_mem_gib"]
    return {**row, "name": "harness ZeRO-2", "max_mem_gib": None if math.isnan(peak) else peak}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _arch_overrides(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["olmo-1b", "small"], default="olmo-1b")
    ap.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: the GPU where torch sees one; cpu hides it from both trainers",
    )
    ap.add_argument("--arch", default="", help="architecture fields to replace, e.g. d_model=64,n_layers=2")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the shape's context)")
    ap.add_argument("--steps", type=int, default=12, help="updates each side trains")
    ap.add_argument("--warmup", type=int, default=3, help="updates left out of the medians (at least 1)")
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--paragraphs", type=int, default=120, help="generated paragraphs the harness probes (15 each)")
    ap.add_argument(
        "--olmo-wrapping",
        default="by_block",
        help="OLMo's FSDP wrapping strategy (its names; `none`: the whole model one unit, as the "
        "published OLMo-1B config has it)",
    )
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--work", type=Path, default=Path("build/bench_peer"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        ap.error("--warmup must be at least 1 (OLMo's monitor skips the first update) and below --steps")
    if args.steps < 4 or args.paragraphs < 6:
        ap.error("the harness's smoke schedule needs --steps >= 4 and --paragraphs >= 6")
    if args.global_batch % args.micro_batch:
        ap.error("--global-batch must be a multiple of --micro-batch")

    import torch

    gpu = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    env = {} if gpu else {"CUDA_VISIBLE_DEVICES": ""}  # both trainers' processes then see no GPU
    device = torch.cuda.get_device_name() if gpu else "cpu"
    overrides = _arch_overrides(args.arch)
    if args.seq_len:
        overrides["max_sequence_length"] = args.seq_len
    arch = architecture(args.shape, **overrides)
    seq = arch["max_sequence_length"]
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)  # both sides start from nothing: OLMo makes the weights
    work.mkdir(parents=True)
    print(
        f"device {device}; {args.shape}: d_model {arch['d_model']}, {arch['n_layers']} layers, seq {seq}; "
        f"global batch {args.global_batch} (micro {args.micro_batch}), {args.steps} updates",
        flush=True,
    )

    corpus = work / "corpus"
    token_file = write_corpus(corpus, arch, (args.steps + 2) * args.global_batch, seed=OLMO_SEED)
    olmo, olmo_ckpt = run_olmo(work, arch, args, token_file, gpu, env)
    print(json.dumps(olmo), flush=True)
    ckpt = harness_inputs(work, olmo_ckpt, corpus)
    harness = run_harness(work, ckpt, corpus, args, gpu, env)
    print(json.dumps(harness), flush=True)

    n_params = count_params(ckpt)
    flops_per_token = 6 * n_params + 12 * arch["n_layers"] * arch["d_model"] * seq
    for side in (olmo, harness):
        side["tflops"] = side["tokens_per_s"] * flops_per_token / 1e12
        side["mfu"] = side["tflops"] / args.peak_tflops
    result = {
        "device": device,
        "torch": torch.__version__,
        "shape": args.shape,
        "architecture": arch,
        "n_params": n_params,
        "flops_per_token": flops_per_token,
        "seq_len": seq,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_tflops": args.peak_tflops,
        "olmo": olmo,
        "harness": harness,
        "ratio": harness["tokens_per_s"] / olmo["tokens_per_s"],
        "first_loss_abs_diff": abs(harness["loss_first"] - olmo["loss_first"]),
    }

    print(
        f"\n{'side':<18}{'precision':<24}{'updates':>8}{'tok/s':>12}{'TFLOP/s':>9}{'MFU':>8}{'peak GiB':>10}"
        f"{'first loss':>12}"
    )
    for side in (olmo, harness):
        peak = "n/a" if side["max_mem_gib"] is None else f"{side['max_mem_gib']:.1f}"
        print(
            f"{side['name']:<18}{side['precision']:<24}{side['updates']:>8}{side['tokens_per_s']:>12,.0f}"
            f"{side['tflops']:>9.2f}{side['mfu']:>8.1%}{peak:>10}{side['loss_first']:>12.5f}"
        )
    print(
        f"harness / OLMo tokens/s: {result['ratio']:.3f}; |first-update loss difference| "
        f"{result['first_loss_abs_diff']:.2e}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
