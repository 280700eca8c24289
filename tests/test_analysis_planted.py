"""Planted dynamics (gains per encounter, R(t) = 1 − a·log10 t) are recovered from written run directories."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from analysis import fit_records, load_run
from harness.errors import UserError
from tests.helpers.planted import KIND_SCALE, PlantedScenario, write_planted_run

SCENARIOS = [
    PlantedScenario("paraphrase", [0, 1, 2], [0, 100, 200], [1.0, 0.6, 0.6], 0.2),
    PlantedScenario("duplicate", [3, 4, 5], [0, 100, 200], [1.0, 0.4, 0.4], 0.25),
    PlantedScenario("once", [6, 7, 8], [0], [1.0], 0.35),
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_planted_run(tmp_path_factory.mktemp("planted") / "run", SCENARIOS, n_steps=601, tokens_per_step=4096)


def test_recovers_planted_numbers(planted):
    records = fit_records(load_run(planted.path))
    assert len(records) == 9
    for rec in records:
        sc = next(s for s in SCENARIOS if s.name == rec["scenario"])
        scale = KIND_SCALE[rec["kind"]]
        assert rec["a"] == pytest.approx(sc.decay, abs=1e-4)
        assert rec["r2"] > 0.999999
        t_star = 10 ** (1 / sc.decay)  # b = 1 -> t* = 10^(1/a)
        assert rec["t_star_steps"] == pytest.approx(t_star, rel=1e-3)
        assert rec["t_star_tokens"] == pytest.approx(t_star * 4096, rel=1e-3)
        assert rec["effectivity_by_encounter"] == pytest.approx([scale * g for g in sc.gains], abs=1e-4)
        assert rec["effectivity"] == pytest.approx(scale * np.mean(sc.gains), abs=1e-4)
        assert rec["t_max"] == 600 - (sc.encounters[-1] + 50)
        assert rec["n_probes"] == 15 and rec["n_excluded"] == 0 and rec["partial"] is False


def test_noisy_log_is_close(tmp_path):
    run = write_planted_run(tmp_path / "run", SCENARIOS[2:], n_steps=801, noise=0.02, probes_per_kind=20)
    for rec in fit_records(load_run(run.path)):
        assert rec["a"] == pytest.approx(0.35, abs=0.03)


def test_parts_directory_and_extra_columns_give_same_numbers(planted, tmp_path):
    other = write_planted_run(
        tmp_path / "other",
        SCENARIOS,
        n_steps=601,
        tokens_per_step=4096,
        parts=4,
        extra_columns=True,
        manifest={"tool": "elsewhere", "nested": {"x": 1}},
    )
    assert (other.path / "probes.parquet").is_dir()
    assert "rank_first" in pq.read_schema(next((other.path / "probes.parquet").iterdir())).names
    assert fit_records(load_run(other.path)) == fit_records(load_run(planted.path))


def test_eval_interval_uses_logged_steps(tmp_path):
    # Every 5th step logged: the peak at t_i + 5 is logged, so effectivity and a are unchanged; t runs
    # over multiples of 5 only.
    run = write_planted_run(tmp_path / "run", SCENARIOS[:1], n_steps=601, steps=np.arange(0, 601, 5))
    [rec] = [r for r in fit_records(load_run(run.path)) if r["kind"] == "mem"]
    assert rec["a"] == pytest.approx(0.2, abs=1e-4)
    assert rec["effectivity_by_encounter"] == pytest.approx([1.0, 0.6, 0.6], abs=1e-4)
    assert rec["n_points"] == len(range(5, rec["t_max"] + 1, 5))


def test_never_gaining_probe_is_excluded_and_counted(tmp_path):
    run = write_planted_run(tmp_path / "run", SCENARIOS[2:], n_steps=301, flat_probes={(6, "mem", 0), (7, "mem", 3)})
    rec = next(r for r in fit_records(load_run(run.path)) if r["kind"] == "mem")
    assert rec["n_excluded"] == 2 and sum(rec["exclusions"].values()) == 2
    assert rec["a"] == pytest.approx(0.35, abs=1e-4)


def test_nan_values_name_the_rows(planted, tmp_path):
    table = pq.read_table(planted.path / "probes.parquet")
    values = table.column("logprob").to_numpy().copy()
    values[[7, 20]] = np.nan
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(
        table.set_column(table.schema.get_field_index("logprob"), "logprob", [values]), broken / "probes.parquet"
    )
    for name in ("injections.parquet", "manifest.json"):
        (broken / name).write_bytes((planted.path / name).read_bytes())
    with pytest.raises(UserError, match=r"2 NaN.*row 7 \(step 0, paragraph \d+, kind '\w+', probe \d\).*row 20"):
        load_run(broken)


def test_manifest_written_by_planted_has_tokens_per_step(planted):
    assert json.loads((planted.path / "manifest.json").read_text())["tokens_per_step"] == 4096
