"""Recipes (`injection/recipes/`): whole experiments built from the library's entry points through the kit, each a
command of `injection`, each with YAML profiles; a new one is a module and a YAML file, and nothing else."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import injection.recipes
from harness.errors import UserError
from injection.cli import app
from injection.recipes import kit, recipe_files

REPO = Path(__file__).resolve().parents[1]

#: A recipe nobody has written yet: one module and one profile, in a directory of its own.
HELLO = '''
"""`injection hello`: one short run of the smoke schedule from the tiny model, and its fits."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from analysis import FitOptions, analyse_run, load_run
from injection.engine.config import config_from_dict
from injection.recipes import kit


@dataclass
class HelloProfile:
    checkpoint: str
    knowledge: str
    steps: int
    interval: int
    """Steps between a paragraph's encounters."""


def hello(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the run and fits.json go.")] = Path("hello_out"),
    profile: Annotated[str, typer.Option(help="A profile in configs/hello/.")] = "default",
) -> None:
    """Greet the harness: a few steps of the smoke schedule, then every group's fit."""
    p = kit.load_profile(HelloProfile, __file__, profile)
    cfg = config_from_dict(
        dict(
            checkpoint=p.checkpoint,
            knowledge=p.knowledge,
            schedule="smoke",
            schedule_overrides={"interval": p.interval, "count": 2},
            data="cache:smoke",
            total_steps=p.steps,
            global_batch=4,
            micro_batch=2,
            output_dir=str(out / "run"),
        )
    )
    run_dir = kit.train(cfg, kit.earlier_status(cfg, "hello run", f"remove {out}"))
    fits = analyse_run(load_run(run_dir), FitOptions(window=2)).fits
    (out / "fits.json").write_text(json.dumps([f.record() for f in fits]))
'''

HELLO_PROFILE = """
checkpoint: tiny@0+L256
knowledge: generate:6:1:0
steps: 6
interval: 2
"""


def test_the_recipes_are_found_with_their_profiles():
    assert set(recipe_files()) == {"demo", "capacity"}
    assert kit.profile_names(recipe_files()["demo"]) == ["full", "quick"]
    assert kit.profile_names(recipe_files()["capacity"]) == ["cpu", "gpu", "gpu100", "quick"]
    listed = CliRunner().invoke(app, ["--help"]).output
    assert "demo" in listed and "capacity" in listed


@pytest.mark.parametrize("recipe", ["demo", "capacity"])
def test_every_shipped_profile_loads(recipe):
    """Each YAML profile loads into its recipe's dataclass and passes its checks."""
    import importlib

    module = importlib.import_module(f"injection.recipes.{recipe}")
    cls = {"demo": "DemoProfile", "capacity": "CapacityConfig"}[recipe]
    for name in kit.profile_names(module.__file__):
        profile = kit.load_profile(getattr(module, cls), module.__file__, name)
        assert profile.name == name


def test_a_profile_is_checked_field_by_field(tmp_path):
    from injection.recipes.demo import DemoProfile

    with pytest.raises(UserError, match=r"--profile 'huge': expected one of full, quick"):
        kit.load_profile(DemoProfile, recipe_files()["demo"], "huge")
    with pytest.raises(UserError, match=r"quick.yaml: field 'stages\[0\]\[1\]': expected an integer"):
        kit.load_profile(DemoProfile, recipe_files()["demo"], "quick", overrides=["stages=[[early, soon]]"])
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nd_modle: 3\n")
    with pytest.raises(UserError, match=r"unknown field 'd_modle' \(did you mean 'd_model'\?\)"):
        kit.load_profile(DemoProfile, recipe_files()["demo"], path=bad)


def test_recipes_go_through_the_kit_and_the_library_entry_points():
    """A recipe never assembles a run's inputs, streams or models by hand, nor reads a manifest itself: the
    kit does that through prepare_inputs, the tiny-checkpoint builder and the run-directory reader."""
    bypasses = {
        "injection.engine.inputs",  # RunInputs / probe_items / read_checkpoint by hand
        "injection.engine.loop",  # run_training without prepare_inputs
        "injection.data.source",  # BatchStream
        "injection.data",
        "injection.checkpoints.tiny",  # build_tiny_checkpoint with its architecture spelled out again
    }
    found = {}
    for name, path in recipe_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found[name] = sorted(modules & bypasses)
        assert "read_manifest" not in path.read_text(encoding="utf-8"), name
    assert found == {"demo": [], "capacity": []}


@pytest.fixture
def hello_recipe(tmp_path, monkeypatch) -> Path:
    """hello.py and configs/hello/default.yaml in a directory of their own, on the recipes' path."""
    recipes = tmp_path / "recipes"
    (recipes / "configs" / "hello").mkdir(parents=True)
    (recipes / "hello.py").write_text(textwrap.dedent(HELLO))
    (recipes / "configs" / "hello" / "default.yaml").write_text(HELLO_PROFILE)
    monkeypatch.setattr(injection.recipes, "__path__", [*injection.recipes.__path__, str(recipes)])
    monkeypatch.delitem(sys.modules, "injection.recipes.hello", raising=False)
    yield recipes
    sys.modules.pop("injection.recipes.hello", None)
    assert sorted(str(p.relative_to(recipes)) for p in recipes.rglob("*") if p.is_file()) == [
        "configs/hello/default.yaml",
        "hello.py",
    ]


def test_a_third_recipe_is_one_module_and_one_yaml(hello_recipe):
    """`injection hello` exists once hello.py and configs/hello/default.yaml exist on the recipes' path: no
    engine, command-line or packaging file changes; its profile loads through the kit."""
    listed = CliRunner().invoke(app, ["--help"])
    assert "Greet the harness: a few steps of the smoke schedule" in listed.output
    own = CliRunner().invoke(app, ["hello", "--help"])
    assert own.exit_code == 0 and "--profile" in own.output and "Where the run and fits.json go" in own.output
    module = __import__("injection.recipes.hello", fromlist=["HelloProfile"])
    profile = kit.load_profile(module.HelloProfile, module.__file__, "default")
    assert (profile.checkpoint, profile.steps) == ("tiny@0+L256", 6)
    bad = CliRunner().invoke(app, ["hello", "--profile", "loud"])
    assert bad.exit_code == 2 and "--profile 'loud': expected one of default" in bad.output


@pytest.mark.slow
def test_the_third_recipe_runs_end_to_end(hello_recipe, tmp_path):
    """The hypothetical recipe trains and fits through the kit, and a second call reuses the complete run."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["hello", "-o", str(out)])
    assert result.exit_code == 0, result.output
    fits = json.loads((out / "fits.json").read_text())
    assert {(f["scenario"], f["kind"]) for f in fits} >= {("paraphrase", "mem"), ("duplicate", "mem")}
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["total_steps"] == 6
    before = (out / "run" / "manifest.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, ["hello", "-o", str(out)]).exit_code == 0
    assert (out / "run" / "manifest.json").stat().st_mtime_ns == before


def test_help_imports_no_command():
    """`injection --help` and `analysis --help` list every command without importing any of them (the command
    table of harness/commands.py), nor torch."""
    probe = textwrap.dedent(
        """
        import sys
        from {package}.cli import app
        try:
            app([{args}])
        except SystemExit:
            pass
        loaded = sorted(m for m in sys.modules if m.startswith(("injection.", "analysis.", "fictional_knowledge.")))
        print(" ".join(loaded), "torch" in sys.modules)
        """
    )
    for package, args, forbidden in (
        ("injection", "'--help'", ("injection.engine", "injection.recipes.demo", "injection.data.cli")),
        ("analysis", "'--help'", ("analysis.plots", "analysis.report", "analysis.commands")),
    ):
        code = probe.format(package=package, args=args)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        loaded, torch_loaded = done.stdout.split()[:-1], done.stdout.split()[-1]
        assert not [m for m in loaded if m.startswith(forbidden)], (package, args, loaded)
        assert torch_loaded == "False", (package, args)
