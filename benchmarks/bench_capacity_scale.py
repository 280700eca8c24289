"""Peak memory and time of a capacity ladder's inputs for N people: generation, knowledge file, corpus, probes.

    python benchmarks/bench_capacity_scale.py --people 100000 1000000 [--passes 2] [--probe-people 4096]

For each N, in a fresh process (so its peak resident set is its own): every person and the biography their probes
read are generated (`fictional_knowledge.bios`); all of them are written as a knowledge file (`write_bios`, one
person at a time); the ladder's tokenizer is trained and a rung's corpus built (`passes` passes of N biographies,
each a fresh draw and order, and an order file for as many epochs); the probed sample's knowledge file and name
and in-context probes are built and scored once by a tiny GPT-2-style model with the engine's evaluator. Prints the
wall time of each stage and the peak resident set after it (ru_maxrss, which only grows), then the growth of the
peak through the corpus (the stages that see every person), above each process's own start, between the two largest
N and its linear projection to 20,000,000 people; probing sees a sample of fixed size. The corpus writer's file
buffer (2^25 tokens) fills once the corpus passes that size, so the two N should both lie above it (1M and 2M with
the defaults) for the projection to show what grows with N. Uses the machine as it finds it:
the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_size(people: int, passes: int, probe_people: int, directory: Path, knowledge_file: bool = True) -> dict:
    """Runs in its own process: the stages for `people`, with time and peak RSS after each."""
    from fictional_knowledge.bios import write_bios
    from harness.tokenizers import load_tokenizer
    from injection.engine.evaluate import evaluate_probes
    from injection.recipes import capacity as cap

    cfg = cap.CapacityConfig(
        name="scale",
        models=[cap.ModelSpec("g32-L1", 32, 1, 2)],
        people=[people],
        exposures=passes,
        eval_exposures=[],
        tokenizer_vocab=4096,
        seq_len=512,
        probe_people=probe_people,
        corpus_passes=passes,
    )
    cfg.validate("benchmark")
    rung = cfg.rungs()[0]
    stages = {"start": {"seconds": 0.0, "peak_mb": peak_mb()}}

    def stage(name, fn):
        t0 = time.perf_counter()
        result = fn()
        stages[name] = {"seconds": round(time.perf_counter() - t0, 1), "peak_mb": round(peak_mb(), 1)}
        return result

    bios = stage("people", lambda: cap.Bios(cfg.bios_spec(cfg.total_people)))
    stage("generate", lambda: cap.generate_people(bios))
    if knowledge_file:
        knowledge = directory / "bios.json"
        stage("knowledge file", lambda: write_bios(knowledge, cfg.bios_spec(people)))
        stages["knowledge file"]["bytes"] = knowledge.stat().st_size
        knowledge.unlink()
    tokenizer_dir = stage("tokenizer", lambda: cap.build_tokenizer(cfg, bios, directory))
    corpus = stage("corpus", lambda: cap.build_corpus_for(cfg, rung, bios, tokenizer_dir, directory))
    stages["corpus"]["bytes"] = sum(p.stat().st_size for p in (directory / "corpora").rglob("*") if p.is_file())
    stages["corpus"]["instances"] = corpus.instances

    def probes():
        import torch
        from transformers import AutoModelForCausalLM

        chosen, scenarios, _ = cap.rung_people(cfg, rung)
        cap.write_probe_knowledge(bios, chosen, directory / "knowledge" / f"{rung.data_name}.json")
        tokenizer = load_tokenizer(str(tokenizer_dir))
        items = list(cap.context_probes(bios, chosen, scenarios, tokenizer, tokenizer.eos_token_id))
        model_dir = cap.build_model(cfg, cfg.models[0], tokenizer_dir, directory)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
        scores = evaluate_probes(model, items, cfg.eval_batch_tokens, 0, 1)
        return len(items), len(next(iter(scores.values())))

    n_items, _ = stage("probes", probes)
    stages["probes"]["items"] = n_items
    return {"people": people, "passes": passes, "probe_people": probe_people, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--probe-people", type=int, default=4096)
    parser.add_argument("--no-knowledge-file", action="store_true", help="Skip writing every person's knowledge file.")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.one:
        result = one_size(args.people[0], args.passes, args.probe_people, args.dir, not args.no_knowledge_file)
        print(json.dumps(result))
        return
    results = []
    for people in sorted(args.people):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            cmd = [sys.executable, __file__, "--one", "--people", str(people), "--passes", str(args.passes)]
            cmd += ["--probe-people", str(args.probe_people), "--dir", tmp]
            cmd += ["--no-knowledge-file"] if args.no_knowledge_file else []
            env = {**os.environ, "INJECTION_CACHE": str(Path(tmp) / "cache")}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
        load = os.getloadavg()
        r = results[-1]
        print(f"N = {people:,} ({args.passes} passes, {args.probe_people:,} people probed); load average {load[0]:.1f}")
        for name, s in r["stages"].items():
            extra = "".join(f", {k} {v:,}" for k, v in s.items() if k not in ("seconds", "peak_mb"))
            print(f"  {name:15s} {s['seconds']:8.1f} s   peak RSS {s['peak_mb']:8.1f} MB{extra}")
    if len(results) >= 2:
        # Every stage up to the corpus sees all N people; the probes see a sample of fixed size (once N exceeds it).
        # Each process has its own baseline (imports), so growth is measured above each one's start.
        def above(r: dict) -> float:
            return r["stages"]["corpus"]["peak_mb"] - r["stages"]["start"]["peak_mb"]

        small, large = results[-2], results[-1]
        grow = above(large) - above(small)
        per_person = grow / (large["people"] - small["people"])
        projected = large["stages"]["corpus"]["peak_mb"] + per_person * (20_000_000 - large["people"])
        print(
            f"peak RSS through the corpus, above the process's start: {above(small):.1f} MB at {small['people']:,} "
            f"people, {above(large):.1f} MB at {large['people']:,} ({per_person * 1e6:.1f} MB per million); "
            f"projected peak for 20,000,000 people: {projected:,.0f} MB; probing ({large['probe_people']:,} "
            f"people): {large['stages']['probes']['peak_mb']:,.0f} MB whatever N"
        )


if __name__ == "__main__":
    main()
