"""Time load + full analysis of a paper-sized planted log, with every output, against the obvious per-t loop.

    python benchmarks/bench_analysis.py [--dir DIR] [--naive-t 20] [--bootstrap 200] [--figures]

Writes a planted run directory with the study's schedule (120 paragraphs; injections at 0..900 every 100;
paraphrase / duplicate / once groups of 40; 15 probes each: 1,800 probes) plus 10 never-injected control
paragraphs (150 probes, as the reference set's items 120–129), 2,501 steps: 4.9M rows. Then times
`load_run`, `analyse_run` under both rule sets, with control adjustment (which analyses twice: adjusted and
raw), the JSON document and the curves table written to Parquet; optionally the bootstrap interval and the
figures; and a naive loop that recomputes every probe's retainability once per t in Python, on a subset of t,
extrapolated linearly (printed as such).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.export import curves_table, fit_document, write_curves  # noqa: E402
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
        if g.control:
            continue
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


def timed(label: str, fn, results: dict):
    start = time.perf_counter()
    value = fn()
    results[label] = time.perf_counter() - start
    print(f"{label:<58} {results[label]:6.2f} s", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to write the planted run (default: a temporary directory)")
    parser.add_argument("--naive-t", type=int, default=20, help="t values the naive loop is timed on")
    parser.add_argument("--bootstrap", type=int, default=0, help="also time a bootstrap interval with N resamples")
    parser.add_argument("--figures", action="store_true", help="also time the figures of one analysis")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        path = base / "planted-run"
        t: dict[str, float] = {}
        timed(
            "writing the planted log",
            lambda: write_planted_run(
                path, paper_scenarios(controls=10), n_steps=2501, noise=0.05, tokens_per_step=4_194_304
            ),
            t,
        )
        run = timed("load_run", lambda: load_run(path), t)
        print(f"  {run.n_probes:,} probes × {len(run.steps):,} steps = {run.n_probes * len(run.steps):,} rows")
        paper = timed("analyse_run, paper rules", lambda: analyse_run(run, FitOptions()), t)
        timed("analyse_run, study-code rules", lambda: analyse_run(run, FitOptions(rules="study-code")), t)
        timed(
            "analyse_run, study-code, perplexity scale",
            lambda: analyse_run(run, FitOptions(rules="study-code", scale="perplexity")),
            t,
        )
        adjusted = timed(
            "analyse_run, paper, control-adjusted (adjusted + raw)",
            lambda: analyse_run(run, FitOptions(control_adjust=True)),
            t,
        )
        timed(
            "fit --json document (adjusted + raw groups)",
            lambda: json.dumps(fit_document(adjusted), allow_nan=False),
            t,
        )
        timed(
            "curves table + Parquet write (adjusted + raw)",
            lambda: write_curves(base / "curves.parquet", [curves_table("bench", adjusted)]),
            t,
        )
        total = (
            t["load_run"]
            + t["analyse_run, paper, control-adjusted (adjusted + raw)"]
            + t["fit --json document (adjusted + raw groups)"]
            + t["curves table + Parquet write (adjusted + raw)"]
        )
        print(f"{'total: load + adjusted analysis + JSON + curves':<58} {total:6.2f} s")
        if args.bootstrap:
            timed(
                f"analyse_run with a {args.bootstrap}-resample bootstrap",
                lambda: analyse_run(run, FitOptions(bootstrap=args.bootstrap)),
                t,
            )
        if args.figures:
            from analysis.plots import plot_run

            timed("plot_run (7 figures, PNG + PDF)", lambda: plot_run(adjusted, base / "figures"), t)

        analysis = paper
        fitted = [g for g in analysis.fits if not g.control]
        total_t = sum(len(g.retention_t) for g in fitted)
        subset = np.linspace(1, min(g.t_max for g in fitted), args.naive_t).astype(int)
        start = time.perf_counter()
        naive = naive_retention_means(run, analysis, subset, analysis.options.factor)
        t_naive_subset = time.perf_counter() - start
        t_naive = t_naive_subset * total_t / (len(subset) * len(fitted))
        # Same numbers both ways, or the comparison would be meaningless.
        for g in fitted:
            for s in subset[:5]:
                assert abs(naive[(g.scenario, g.kind, s)] - g.retention_mean[s - g.t_min]) < 1e-9
        print(
            f"naive per-t loop: {t_naive_subset:.2f} s for {len(subset)} t values × {len(fitted)} groups; "
            f"extrapolated linearly to all {total_t:,} (group, t) pairs: {t_naive:.0f} s"
        )
        print(
            f"speed-up of the vectorised paper analysis over the naive loop: "
            f"{t_naive / t['analyse_run, paper rules']:.0f}×"
        )


if __name__ == "__main__":
    main()
