"""`analysis fit|plot|compare|report` end to end on planted run directories, and bad input -> exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from analysis import FitOptions, fit_records, load_run
from analysis.cli import app
from analysis.export import CURVE_SCHEMA
from harness.outputs import LEDGER
from tests.helpers.planted import PlantedScenario, write_planted_run

runner = CliRunner()
SCENARIOS = [
    PlantedScenario("paraphrase", [0, 1], [0, 60], [1.0, 0.5], 0.2),
    PlantedScenario("once", [2, 3], [0], [1.0], 0.3),
    PlantedScenario("none", [4, 5], [], [], 0.0),  # control paragraphs
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_planted_run(
        tmp_path_factory.mktemp("cli") / "run",
        SCENARIOS,
        n_steps=301,
        probes_per_kind=3,
        manifest={"checkpoint": {"family": "olmo-1b", "step": 20000}},
    ).path


def test_fit_json_records_options_and_groups(run_dir):
    result = runner.invoke(app, ["fit", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["groups"] == fit_records(load_run(run_dir))
    assert document["options"] == {**FitOptions().record(), "window": 50, "iqr_factor": 1.5}
    assert document["run"]["window_source"] == "default" and document["run"]["encounter_spacing"] == 60
    for key in (
        "scenario",
        "kind",
        "a",
        "a_se",
        "b_se",
        "r2",
        "t_star_steps",
        "t_star_tokens",
        "t_star_ci_steps",
        "effectivity",
        "effectivity_by_encounter",
        "n_probes",
        "n_excluded",
        "t_max",
        "retention_levels",
        "r_at",
        "flags",
        "control",
    ):
        assert key in document["groups"][0]
    assert {(r["scenario"], r["kind"]) for r in document["groups"]} == {
        (s, k) for s in ("paraphrase", "once", "none") for k in ("mem", "sem", "comp")
    }
    control = [r for r in document["groups"] if r["scenario"] == "none"]
    assert all(r["control"] and r["exclusions"] == {"not_injected": 6} and r["a"] is None for r in control)
    assert set(document["control_drift"]) == {"mem", "sem", "comp"}


def test_fit_options_reach_the_json(run_dir):
    args = [
        "fit",
        str(run_dir),
        "--json",
        "--rules",
        "study-code",
        "--scale",
        "perplexity",
        "--control-adjust",
        "--window",
        "20",
        "--t-min",
        "2",
        "--t-max",
        "50",
        "--retention-levels",
        "0.9,0.6",
        "--at",
        "5,40",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    options = document["options"]
    assert (
        options["rules"],
        options["scale"],
        options["control_adjust"],
        options["window"],
        options["iqr_factor"],
    ) == ("study-code", "perplexity", True, 20, 2.0)
    assert options["retention_levels"] == [0.9, 0.6] and options["at"] == [5, 40]
    injected = [g for g in document["groups"] if not g["control"]]
    assert all(g["t_min"] == 2 and g["t_max"] == 50 and g["n_points"] == 49 for g in injected)
    assert [e["level"] for e in injected[0]["retention_levels"]] == [0.9, 0.6]
    assert [e["t"] for e in injected[0]["r_at"]] == [5, 40]
    assert len(document["raw_groups"]) == len(document["groups"])


def test_planted_uncertainty_and_levels(run_dir):
    # R(t) = 1 − a·log10 t exactly: the line is exact (standard errors 0), the level L is reached at
    # t = 10^((1 − L)/a), and R at t is the line's value.
    [rec] = [
        r
        for r in fit_records(load_run(run_dir), FitOptions(at=(10, 100)))
        if (r["scenario"], r["kind"]) == ("once", "mem")
    ]
    assert rec["a"] == pytest.approx(0.3, abs=1e-5) and rec["a_se"] < 1e-4 and rec["b_se"] < 1e-4
    low, high = rec["t_star_ci_steps"]
    assert low <= rec["t_star_steps"] <= high and high / low < 1.01
    for entry in rec["retention_levels"]:
        assert entry["t_fit"] == pytest.approx(10 ** ((1 - entry["level"]) / 0.3), rel=1e-3)
        assert entry["t_observed"] == pytest.approx(np.ceil(10 ** ((1 - entry["level"]) / 0.3)), abs=1)
    for entry in rec["r_at"]:
        assert entry["r"] == pytest.approx(1 - 0.3 * np.log10(entry["t"]), abs=1e-5)
        # float32 rounding leaves the six values a hair apart, and the interquartile rule may drop one of them
        assert entry["r_fit"] == pytest.approx(entry["r"], abs=1e-4) and entry["n"] >= 5


def test_noisy_bootstrap_interval_contains_the_truth(tmp_path):
    run = write_planted_run(
        tmp_path / "run",
        [PlantedScenario("once", list(range(8)), [0], [1.0], 0.3)],
        n_steps=400,
        noise=0.1,
        probes_per_kind=4,
        kinds=("mem",),
    )
    [delta] = fit_records(load_run(run.path))
    [boot] = fit_records(load_run(run.path), FitOptions(bootstrap=200, seed=1))
    truth = 10 ** (1 / 0.3)
    for rec in (delta, boot):
        low, high = rec["t_star_ci_steps"]
        assert low < rec["t_star_steps"] < high
    assert boot["t_star_ci_steps"][0] < truth < boot["t_star_ci_steps"][1]
    # the bootstrap interval is wider than the least-squares one, which treats the t as independent
    assert np.log(boot["t_star_ci_steps"][1] / boot["t_star_ci_steps"][0]) > np.log(
        delta["t_star_ci_steps"][1] / delta["t_star_ci_steps"][0]
    )


def test_curves_parquet(run_dir, tmp_path):
    path = tmp_path / "curves.parquet"
    result = runner.invoke(app, ["fit", str(run_dir), "--curves", str(path), "--control-adjust"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(path)
    assert table.schema.equals(CURVE_SCHEMA, check_metadata=False)
    frame = table.to_pandas()
    # adjusted and raw rows, for the 6 injected groups, t = 1 .. the largest t any probe reaches
    assert set(frame["control_adjusted"]) == {True, False}
    assert set(zip(frame["scenario"], frame["kind"])) == {
        (s, k) for s in ("paraphrase", "once") for k in ("mem", "sem", "comp")
    }
    raw = frame[~frame["control_adjusted"] & (frame["scenario"] == "once") & (frame["kind"] == "mem")]
    assert raw["t"].min() == 1 and raw["in_fit"].sum() == 300 - 50
    assert raw["mean_r"].to_numpy()[:100] == pytest.approx(1 - 0.3 * np.log10(np.arange(1, 101)), abs=1e-5)
    assert (raw["n_kept"] + raw["n_removed"] <= 6).all() and (raw["n_excluded"] == 0).all()
    # a second write replaces the analysis' own file
    assert runner.invoke(app, ["fit", str(run_dir), "--curves", str(path)]).exit_code == 0


def test_window_from_the_manifest_and_the_spacing_warning(tmp_path):
    recorded = write_planted_run(
        tmp_path / "recorded",
        SCENARIOS[:2],
        n_steps=301,
        probes_per_kind=2,
        manifest={"analysis_defaults": {"window": 12, "encounter_spacing": 60}},
    ).path
    document = json.loads(runner.invoke(app, ["fit", str(recorded), "--json"]).stdout)
    assert (document["run"]["window"], document["run"]["window_source"]) == (12, "manifest")
    assert document["run"]["warnings"] == []
    # the option wins over the manifest; a window longer than the spacing warns (on stderr, one line)
    result = runner.invoke(app, ["fit", str(recorded), "--json", "--window", "80"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["run"]["window_source"] == "option"
    [line] = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
    assert "window 80 spans the next encounter" in line and "60 steps apart" in line


def test_tables_survive_a_narrow_terminal(run_dir):
    from rich.console import Console

    from analysis import analyse_run
    from analysis.report import compare_table, rich_encounter_table, rich_retention_table, rich_table

    analysis = analyse_run(load_run(run_dir), FitOptions(control_adjust=True))
    for width in (80, 100):
        console = Console(width=width, record=True, file=open("/dev/null", "w"))
        for table in (
            rich_table("title", analysis.fits, console),
            rich_retention_table(analysis, console),
            rich_encounter_table(analysis.fits, console),
            compare_table([analysis, analysis], console),
        ):
            console.print(table)
        text = console.export_text()
        lines = text.splitlines()
        assert max(len(x) for x in lines) <= width
        # numbers are never broken over lines: every cell of the first data row is whole
        row = next(x for x in lines if x.startswith("paraphrase"))
        assert all(cell in row for cell in ("paraphrase", "mem"))
        assert "scenario" in text and "effectivity" in text and "t* steps" in text
        if width == 80:
            assert "left out for width" in text
    # every cell sits under its own header (columns of the same name once swapped their values)
    from analysis.format import fmt

    console = Console(width=400, record=True, file=open("/dev/null", "w"))
    console.print(compare_table([analysis], console))
    header, *rows = [x for x in console.export_text().splitlines() if x.startswith(("run", analysis.run.label))]
    names = [c for c in header.split("  ") if c.strip()]
    g = analysis.fits[0]
    cells = dict(zip([n.strip() for n in names], [c.strip() for c in rows[0].split("  ") if c.strip()]))
    assert (cells["a"], cells["± se"], cells["R²"]) == (fmt(g.a), fmt(g.a_se), fmt(g.r2))


def test_label_is_the_checkpoint_as_typed(tmp_path):
    typed = write_planted_run(
        tmp_path / "a",
        SCENARIOS[1:2],
        n_steps=100,
        probes_per_kind=1,
        manifest={"config": {"checkpoint": "tiny@mid"}, "checkpoint": {"family": "tiny", "step": 275}},
    ).path
    path = write_planted_run(
        tmp_path / "b",
        SCENARIOS[1:2],
        n_steps=100,
        probes_per_kind=1,
        manifest={"config": {"checkpoint": "/cache/tiny/step275"}, "checkpoint": {"family": "tiny", "step": 275}},
    ).path
    labelled = write_planted_run(
        tmp_path / "c",
        SCENARIOS[1:2],
        n_steps=100,
        probes_per_kind=1,
        manifest={"label": "late, lr 1e-2", "config": {"checkpoint": "tiny@late"}},
    ).path
    assert [load_run(p).label for p in (typed, path, labelled)] == ["tiny@mid", "tiny@275", "late, lr 1e-2"]


@pytest.mark.slow
def test_plot_writes_every_figure(run_dir, tmp_path):
    out = tmp_path / "figs"
    result = runner.invoke(app, ["plot", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    for stem in (
        "trajectories",
        "study_fig2",
        "retainability",
        "study_decay",
        "effectivity",
        "exact_match",
        "control_drift",
    ):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [LEDGER]  # no temporary files left; the ledger of what the tool wrote


def test_figures_have_no_empty_panels_and_a_scaled_exact_match_axis(run_dir):
    from analysis import analyse_run
    from analysis.plots import run_figures

    figures = run_figures(analyse_run(load_run(run_dir), FitOptions()))
    for stem, fig in figures.items():
        for ax in fig.axes:
            assert ax.lines or ax.patches or ax.collections, f"{stem}: an empty panel {ax.get_title()!r}"
    # retainability panels: the two injected scenarios only (the control has no retainability)
    assert [ax.get_title() for ax in figures["retainability"].axes] == ["paraphrase", "once"]
    assert [ax.get_title(loc="left") for ax in figures["study_fig2"].axes] == ["paraphrase", "once"]
    em = figures["exact_match"].axes[0]
    top = max(
        max(line.get_ydata())
        for ax in figures["exact_match"].axes
        for line in ax.lines
        if line.get_label() in ("mem", "sem", "comp")
    )
    assert top <= em.get_ylim()[1] <= max(5.0, top * 1.1 + 1)


@pytest.mark.slow
def test_compare_two_schedules_and_report(run_dir, tmp_path):
    other = write_planted_run(
        tmp_path / "small-batch",
        [PlantedScenario("once", [0, 1], [10], [0.8], 0.5)],
        n_steps=200,
        probes_per_kind=2,
        manifest={"family": "tiny", "step": 7, "global_batch_size": 16},
    ).path
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(run_dir), str(other), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [r["label"] for r in document["runs"]] == ["olmo-1b@20000", "tiny@7 bs=16"]
    assert document["options"]["window"] is None  # each run resolves its own
    assert [r["window"] for r in document["runs"]] == [50, 50]
    records = document["groups"]
    small = [r for r in records if r["run"] == "tiny@7 bs=16"]
    assert len(small) == 3 and all(r["a"] == pytest.approx(0.5, abs=1e-4) for r in small)
    assert json.loads((out / "compare.json").read_text()) == document
    assert (out / "compare.png").exists() and (out / "compare.pdf").exists()

    result = runner.invoke(
        app, ["report", str(run_dir), str(other), "--out", str(tmp_path / "rep"), "--control-adjust"]
    )
    assert result.exit_code == 2 and "tiny@7" not in result.output  # the second run has no controls
    result = runner.invoke(app, ["report", str(run_dir), str(other), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    # comparison + 7 figures for the run with controls + 6 for the other (no control drift)
    assert html.count("data:image/png;base64,") == 1 + 7 + 6
    assert "tiny@7 bs=16" in html and "<table>" in html and 'src="http' not in html
    assert "Control probes (never injected)" in html


def test_report_shows_raw_and_adjusted(run_dir, tmp_path):
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "rep"), "--control-adjust"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Raw and control-adjusted" in html and "eff. raw" in html and "eff. adj." in html


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


BAD_INPUTS = {
    "not_a_dir": "not a run directory",
    "no_injections": "injections.parquet: missing",
    "bad_manifest": "manifest.json: malformed JSON",
    "manifest_list": "expected a JSON object",
    "missing_column": "missing required column(s) kind",
    "bad_tokens_per_step": "tokens_per_step",
    "bad_window": "--window: must be >= 1",
    "bad_rules": "--rules: must be one of paper, study-code, got 'papers'",
    "bad_scale": "--scale: must be one of logprob, perplexity",
    "bad_levels": "--retention-levels '0.8,1.5': 1.5 is not a fraction",
    "levels_not_numbers": "--retention-levels 'half': expected comma-separated numbers",
    "bad_at": "--at '100,1e3.5'",
    "at_zero": "--at '0,10': every t must be at least 1",
    "bad_bootstrap": "--bootstrap: must be 0",
    "no_controls": "control adjustment needs control probes",
    "curves_not_parquet": "expected a file name ending in .parquet",
    "curves_is_dir": "is a directory",
    "curves_is_probe_log": "would write into the run's own probes.parquet",
    "curves_foreign_file": "exists and is not a curves table",
    "curves_parent_is_file": "is not a directory",
    "bad_analysis_defaults": "analysis_defaults.window' must be a positive integer",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, case):
    target = _copy(run_dir, tmp_path / "run")
    args = ["fit", str(target)]
    if case == "not_a_dir":
        args = ["fit", str(tmp_path / "nowhere")]
    elif case == "no_injections":
        (target / "injections.parquet").unlink()
    elif case == "bad_manifest":
        (target / "manifest.json").write_text("{not json")
    elif case == "manifest_list":
        (target / "manifest.json").write_text("[1, 2]")
    elif case == "missing_column":
        pq.write_table(pq.read_table(target / "probes.parquet").drop_columns(["kind"]), target / "probes.parquet")
    elif case == "bad_tokens_per_step":
        (target / "manifest.json").write_text(json.dumps({"tokens_per_step": "many"}))
    elif case == "bad_analysis_defaults":
        (target / "manifest.json").write_text(json.dumps({"analysis_defaults": {"window": 0}}))
    elif case == "no_controls":
        args = ["fit", str(write_planted_run(tmp_path / "plain", SCENARIOS[:2], n_steps=200).path), "--control-adjust"]
    elif case.startswith("curves_"):
        curves = {
            "curves_not_parquet": tmp_path / "curves.csv",
            "curves_is_dir": tmp_path / "dir.parquet",
            "curves_is_probe_log": target / "probes.parquet",
            "curves_foreign_file": tmp_path / "mine.parquet",
            "curves_parent_is_file": tmp_path / "file" / "c.parquet",
        }[case]
        (tmp_path / "dir.parquet").mkdir()
        (tmp_path / "mine.parquet").write_bytes(b"my own data")
        (tmp_path / "file").write_text("x")
        args += ["--curves", str(curves)]
    else:
        option = {
            "bad_window": ["--window", "0"],
            "bad_rules": ["--rules", "papers"],
            "bad_scale": ["--scale", "nats"],
            "bad_levels": ["--retention-levels", "0.8,1.5"],
            "levels_not_numbers": ["--retention-levels", "half"],
            "bad_at": ["--at", "100,1e3.5"],
            "at_zero": ["--at", "0,10"],
            "bad_bootstrap": ["--bootstrap", "1"],
        }[case]
        args += option
    before = {p: p.stat().st_mtime_ns for p in target.rglob("*")}
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and BAD_INPUTS[case] in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == before  # nothing of the run touched
    if case == "curves_foreign_file":
        assert (tmp_path / "mine.parquet").read_bytes() == b"my own data"


def test_every_analysis_option_is_declared_once_as_a_field():
    """fit, plot, compare and report offer exactly FitOptions' fields as options (capacity: CapacityOptions'),
    each with the field's default and, as help, the docstring under the field."""
    import dataclasses

    import typer

    from analysis.capacity import CapacityOptions
    from harness.options import flag
    from harness.typed import field_docs

    group = typer.main.get_command(app)
    own = {"fit": {"--json", "--curves"}, "plot": {"--out"}, "compare": {"--out", "--json", "--curves"}}
    own |= {"report": {"--out"}, "capacity": {"--json", "--out"}}
    for name, cls in [(n, FitOptions) for n in ("fit", "plot", "compare", "report")] + [("capacity", CapacityOptions)]:
        options = {p.opts[0]: p for p in group.commands[name].command.params if p.opts[0].startswith("--")}
        fields = {flag(f.name): f for f in dataclasses.fields(cls)}
        assert set(options) - {"--help"} == set(fields) | own[name], name
        for option, f in fields.items():
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            assert options[option].default == default, (name, option)
            assert options[option].help == field_docs(cls)[f.name], (name, option)


def test_help_shows_every_default():
    # square brackets in help text are eaten as markup; the defaults that depend on the run must show
    result = runner.invoke(app, ["fit", "--help"], terminal_width=300, env={"COLUMNS": "300"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for phrase in (
        "default: the window the run recorded in manifest.json, else 50",
        "default: the rule set's, paper 1.5, study-code 2.0",
        "study-code rules: one range for every group",
        "0: delta method",
    ):
        assert phrase in text, phrase


@pytest.mark.parametrize(
    "command, made",
    [
        (["plot"], "trajectories.png"),
        (["report"], "report.html"),
        (["compare"], "compare.json"),
        (["compare"], "compare.pdf"),
    ],
)
@pytest.mark.slow
def test_out_never_replaces_a_file_the_user_made(run_dir, tmp_path, command, made):
    """A file in --out that this tool did not write (or that was changed since) is refused before any work,
    and nothing is written; the tool's own files are replaced on a rerun."""
    out = tmp_path / "out"
    out.mkdir()
    mine = out / made
    mine.write_text("the user's own file")
    result = runner.invoke(app, [*command, str(run_dir), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{made} exists and was not written by this tool" in result.stderr
    assert mine.read_text() == "the user's own file"
    assert sorted(p.name for p in out.iterdir()) == [made]  # nothing else written
    mine.unlink()
    assert runner.invoke(app, [*command, str(run_dir), "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, [*command, str(run_dir), "--out", str(out)]).exit_code == 0  # its own: replaced
    (out / made).write_bytes((out / made).read_bytes() + b" edited")  # changed since: the user's now
    again = runner.invoke(app, [*command, str(run_dir), "--out", str(out)])
    assert again.exit_code == 2 and "or was changed since" in again.stderr
