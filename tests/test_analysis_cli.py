"""`analysis fit|plot|compare|report` end to end on planted run directories, and bad input -> exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from analysis import fit_records, load_run
from analysis.cli import app
from tests.helpers.planted import PlantedScenario, write_planted_run, write_trajectories

runner = CliRunner()
SCENARIOS = [
    PlantedScenario("paraphrase", [0, 1], [0, 60], [1.0, 0.5], 0.2),
    PlantedScenario("once", [2, 3], [0], [1.0], 0.3),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_planted_run(tmp_path_factory.mktemp("cli") / "run", SCENARIOS, n_steps=301, probes_per_kind=3,
                             manifest={"checkpoint": {"family": "olmo-1b", "step": 20000}}).path


def test_fit_json_matches_library(run_dir):
    result = runner.invoke(app, ["fit", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert records == fit_records(load_run(run_dir))
    for key in ("scenario", "kind", "a", "a_se", "r2", "t_star_steps", "t_star_tokens", "effectivity",
                "effectivity_by_encounter", "n_probes", "n_excluded", "t_max"):
        assert key in records[0]
    assert {(r["scenario"], r["kind"]) for r in records} == {(s, k) for s in ("paraphrase", "once")
                                                             for k in ("mem", "sem", "comp")}


def test_fit_table_and_options(run_dir):
    result = runner.invoke(app, ["fit", str(run_dir), "--window", "20", "--iqr-factor", "2", "--t-max", "100"])
    assert result.exit_code == 0, result.output
    assert "paraphrase" in result.output and "olmo-1b@20000" in result.output
    result = runner.invoke(app, ["fit", str(run_dir), "--json", "--t-min", "2", "--t-max", "50"])
    assert all(r["t_min"] == 2 and r["t_max"] == 50 and r["n_points"] == 49 for r in json.loads(result.stdout))


def test_fit_json_nulls_for_unfitted_group(tmp_path):
    run = write_trajectories(tmp_path / "run", {(0, "once", "mem", 0): [-5.0] * 8}, [(0, 0, "once")])
    result = runner.invoke(app, ["fit", str(run), "--json", "--window", "2"])
    assert result.exit_code == 0, result.output
    assert "NaN" not in result.stdout
    [rec] = json.loads(result.stdout)
    assert rec["a"] is None and rec["t_star_steps"] is None and rec["n_excluded"] == 1


def test_plot_writes_png_and_pdf(run_dir, tmp_path):
    out = tmp_path / "figs"
    result = runner.invoke(app, ["plot", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for stem in ("trajectories", "retainability", "effectivity", "exact_match"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_compare_two_schedules_and_report(run_dir, tmp_path):
    other = write_planted_run(tmp_path / "small-batch", [PlantedScenario("once", [0, 1], [10], [0.8], 0.5)],
                              n_steps=200, probes_per_kind=2, manifest={"family": "tiny", "step": 7,
                                                                          "global_batch_size": 16}).path
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(run_dir), str(other), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert {r["run"] for r in records} == {"olmo-1b@20000", "tiny@7 bs=16"}
    small = [r for r in records if r["run"] == "tiny@7 bs=16"]
    assert len(small) == 3 and all(r["a"] == pytest.approx(0.5, abs=1e-4) for r in small)
    assert json.loads((out / "compare.json").read_text()) == records
    assert (out / "compare.png").exists() and (out / "compare.pdf").exists()

    result = runner.invoke(app, ["report", str(run_dir), str(other), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + 4 + 4  # comparison + 4 figures per run
    assert "tiny@7 bs=16" in html and "<table>" in html and 'src="http' not in html


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", ["not_a_dir", "no_injections", "bad_manifest", "manifest_list",
                                  "missing_column", "bad_tokens_per_step", "bad_option"])
def test_bad_input_exits_2(run_dir, tmp_path, case):
    target = _copy(run_dir, tmp_path / "run")
    args = ["fit", str(target)]
    expect = ""
    if case == "not_a_dir":
        args, expect = ["fit", str(tmp_path / "nowhere")], "not a run directory"
    elif case == "no_injections":
        (target / "injections.parquet").unlink()
        expect = "injections.parquet: missing"
    elif case == "bad_manifest":
        (target / "manifest.json").write_text("{not json")
        expect = "manifest.json: malformed JSON"
    elif case == "manifest_list":
        (target / "manifest.json").write_text("[1, 2]")
        expect = "expected a JSON object"
    elif case == "missing_column":
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(target / "probes.parquet").drop_columns(["kind"]), target / "probes.parquet")
        expect = "missing required column(s) kind"
    elif case == "bad_tokens_per_step":
        (target / "manifest.json").write_text(json.dumps({"tokens_per_step": "many"}))
        expect = "tokens_per_step"
    elif case == "bad_option":
        args += ["--window", "0"]
        expect = "window"
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error:" in result.output and expect in result.output and "Traceback" not in result.output
