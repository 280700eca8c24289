"""Try demo profiles side by side: which numbers make the phenomenon visible, and at what cost.

Each VARIANT is `name:field=value,field=value` over the full profile (`injection/recipes/configs/demo/full.yaml`;
start the spec with `quick/` to build on the quick one instead). Tuple fields take `+`-separated values
(`stages=early@300+mid@550+late@800`). Examples:

    python benchmarks/demo_sweep.py --out sweep base: \\
        more-probes:paragraphs_per_group=16,control_paragraphs=16,paragraphs_per_step=8 \\
        previous:global_batch=16,paragraphs_per_group=6,once_paragraphs=12 \\
        three-stages:run_stages=early+mid+late

Every variant runs `run_demo` in its own process (`--threads` each, `--jobs` at a time). Variants that share
a pretraining (same corpus, model and pretraining numbers) share its cache: one of them pretrains first, the
others follow. The table gives, per variant and starting checkpoint, the three phenomenon checks, the decay
constant a of each group, the smallest R², mean effectivity, `mem` exact match (first encounter → peak) of
the injected groups and of the never-injected control, and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_variant(spec: str):
    """'name:field=value,...' -> (name, DemoProfile). The profile keeps its base's name (`full` or `quick`):
    the demo's cache directory is named after the profile and its key, so variants that leave the
    pretraining alone find the base's cached corpus and checkpoints."""
    import yaml

    from injection.recipes.demo import load_demo_profile

    name, _, body = spec.partition(":")
    base = load_demo_profile("full")
    if body.startswith("quick/"):
        base, body = load_demo_profile("quick"), body[len("quick/") :]
    hints = typing.get_type_hints(type(base))
    changes = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        if key not in hints:
            raise SystemExit(f"variant {name!r}: DemoProfile has no field {key!r}")
        if key == "stages":  # early@150+mid@275+late@400
            value = tuple((stage, int(step)) for stage, _, step in (x.partition("@") for x in raw.split("+")))
        elif typing.get_origin(hints[key]) is tuple:
            value = tuple(raw.split("+"))
        else:
            value = yaml.safe_load(raw)
        changes[key] = value
    return name, dataclasses.replace(base, **changes)


def run_one(spec: str, out: Path, threads: int) -> None:
    import torch

    from injection.recipes.demo import run_demo

    torch.set_num_threads(threads)
    _, profile = parse_variant(spec)
    run_demo(out, profile=profile)


def describe(name: str, summary: dict) -> list[str]:
    from injection.recipes.demo import phenomenon_checks

    checks = phenomenon_checks(summary)
    lines = []
    for run in summary["runs"]:
        ckpt = run["checkpoint"]
        marks = "".join(
            "–" if ok is None else "✓" if ok else "✗" for text, ok in checks if text.startswith(f"{ckpt}: ")
        )
        fits = {(f["scenario"], f["kind"]): f for f in run["fit"]}
        a = " ".join(
            f"{sc[0]}:"
            + "/".join(
                "—" if fits.get((sc, k), {}).get("a") is None else f"{fits[(sc, k)]['a']:.2f}"
                for k in ("mem", "sem", "comp")
            )
            for sc in ("paraphrase", "duplicate", "once")
        )
        injected = [f for f in run["fit"] if f["scenario"] != "none"]
        r2 = min((f["r2"] for f in injected if f["r2"] is not None), default=float("nan"))
        eff = sum(f["effectivity"] or 0 for f in injected) / max(len(injected), 1)
        rec = run.get("recall") or {}
        em = " ".join(
            f"{who}:{rec.get(who + '_step0') or 0:.2f}→{rec.get(who + '_after') or 0:.3f}"
            for who in ("injected", "control")
        )
        lines.append(f"{name:<16}{ckpt:<12}{marks:<5}{a:<56}{r2:>6.2f}{eff:>7.2f}  {em}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--out", type=Path, default=Path("build/demo_sweep"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per variant")
    ap.add_argument("--table-only", action="store_true", help="print the table of finished variants; run nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.one, args.out, args.threads)
        return
    if not args.variants:
        ap.error("give at least one VARIANT (e.g. `base:`)")
    profiles = [parse_variant(v) for v in args.variants]

    def launch(spec: str) -> tuple[str, float, int]:
        name = spec.partition(":")[0]
        t0 = time.perf_counter()
        log = args.out / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            rc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    spec,
                    "--out",
                    str(args.out / name),
                    "--threads",
                    str(args.threads),
                ],
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            ).returncode
        return name, time.perf_counter() - t0, rc

    # one variant per pretraining first (they build the shared caches), then the rest
    first, rest, seen = [], [], set()
    for spec, (_, profile) in zip(args.variants, profiles):
        (rest if profile.key() in seen else first).append(spec)
        seen.add(profile.key())
    if args.table_only:
        first, rest = [], []
    results = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for batch in (first, rest):
            for name, wall, rc in pool.map(launch, batch):
                results[name] = (wall, rc)
                print(
                    f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc}, see {args.out / name}.log)'} in {wall:.0f} s",
                    flush=True,
                )

    print(
        f"\n{'variant':<16}{'from':<12}{'ok?':<5}{'a  (p/d/o: mem/sem/comp)':<56}{'minR²':>6}{'eff':>7}"
        "  mem exact match: step 0 → mean after"
    )
    for name, _ in profiles:
        summary_path = args.out / name / "summary.json"
        if summary_path.is_file():
            print("\n".join(describe(name, json.loads(summary_path.read_text()))))
    print("\nchecks: effectivity > 0 everywhere, a > 0 everywhere, mem exact match rises more than the control's")


if __name__ == "__main__":
    main()
