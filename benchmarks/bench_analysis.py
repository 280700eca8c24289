"""Time load + full fit of a paper-sized planted log, against the obvious per-t Python loop.

    python benchmarks/bench_analysis.py [--dir DIR] [--naive-t 100]

Writes a planted run directory with the study's schedule (120 paragraphs; injections at 0..900 every 100;
paraphrase / duplicate / once groups of 40; 15 probes each: 1,800 probes × 2,501 steps = 4.5M rows),
then times `load_run` + `analyse_run` and a naive loop that recomputes every probe's retainability once
per t in Python. The naive loop runs on a subset of t and is extrapolated linearly (printed as such).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.fit import FitOptions, analyse_run  # noqa: E402
from analysis.load import load_run  # noqa: E402
from tests.helpers.planted import paper_scenarios, write_planted_run  # noqa: E402


def naive_retention_means(run, analysis, t_values, factor: float) -> dict:
    """The obvious loop: for each t, for each probe, look up ℓ and form R(q,t); IQR mean per group."""
    values = analysis.values
    column_of = {int(s): j for j, s in enumerate(run.steps)}
    enc = analysis.encounters
    means = {}
    for g in analysis.fits:
        members = [q for q in range(run.n_probes) if run.scenario[q] == g.scenario and run.kind[q] == g.kind]
        for t in t_values:
            r_values = []
            for q in members:
                n = enc.count[q]
                if n == 0:
                    continue
                # t_LAM of the last encounter: argmax over the window, recomputed per t as a loop would.
                t_n = int(enc.steps[q, n - 1])
                window = [k for k in range(t_n + 1, t_n + analysis.options.window + 1) if k in column_of]
                lam = max(window, key=lambda k: (values[q, column_of[k]], -k))
                pre = values[q, column_of[int(enc.steps[q, 0])]]
                denom = values[q, column_of[lam]] - pre
                if denom <= 0 or lam + t not in column_of:
                    continue
                r_values.append((values[q, column_of[lam + t]] - pre) / denom)
            r = np.array(r_values)
            q1, q3 = np.percentile(r, [25, 75])
            keep = r[(r >= q1 - factor * (q3 - q1)) & (r <= q3 + factor * (q3 - q1))]
            means[(g.scenario, g.kind, t)] = keep.mean()
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to write the planted run (default: a temporary directory)")
    parser.add_argument("--naive-t", type=int, default=100, help="t values the naive loop is timed on")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = (args.dir or Path(tmp)) / "planted-run"
        start = time.perf_counter()
        write_planted_run(path, paper_scenarios(), n_steps=2501, noise=0.05, tokens_per_step=4_194_304)
        print(f"planted log written in {time.perf_counter() - start:.1f} s: {path}")

        start = time.perf_counter()
        run = load_run(path)
        t_load = time.perf_counter() - start
        start = time.perf_counter()
        analysis = analyse_run(run, FitOptions())
        t_fit = time.perf_counter() - start
        rows = run.n_probes * len(run.steps)
        print(f"{run.n_probes} probes × {len(run.steps)} steps = {rows:,} rows")
        print(f"load_run: {t_load:.2f} s   analyse_run (all groups, all metrics, fits): {t_fit:.2f} s   "
              f"total: {t_load + t_fit:.2f} s")

        total_t = sum(len(g.retention_t) for g in analysis.fits)
        subset = np.linspace(1, min(g.t_max for g in analysis.fits), args.naive_t).astype(int)
        start = time.perf_counter()
        naive = naive_retention_means(run, analysis, subset, analysis.options.iqr_factor)
        t_naive_subset = time.perf_counter() - start
        t_naive = t_naive_subset * total_t / (len(subset) * len(analysis.fits))
        # Same numbers both ways, or the comparison would be meaningless.
        for g in analysis.fits:
            for t in subset[:5]:
                assert abs(naive[(g.scenario, g.kind, t)] - g.retention_mean[t - g.t_min]) < 1e-9
        print(f"naive per-t loop: {t_naive_subset:.2f} s for {len(subset)} t values × {len(analysis.fits)} groups; "
              f"extrapolated linearly to all {total_t:,} (group, t) pairs: {t_naive:.0f} s")
        print(f"speed-up of the vectorised fit over the naive loop: {t_naive / t_fit:.0f}×")


if __name__ == "__main__":
    main()
