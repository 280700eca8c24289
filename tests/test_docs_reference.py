"""docs/formats.md against the code it documents: the column tables of the run directory and the curves table
list exactly the columns of their schemas (names, order and Arrow types), and the experiment-configuration
tables list exactly the fields of `ExperimentConfig` (nested ones dotted) with their actual defaults.

Tables are found by an HTML comment on the line before them (`<!-- columns: NAME -->`, `<!-- fields:
ExperimentConfig -->`); names and defaults are read from the first and a later cell in backticks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

FORMATS = Path(__file__).resolve().parent.parent / "docs" / "formats.md"

#: How the docs write Arrow types.
ARROW_TYPES = {
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
REQUIRED = "required"


def marked_tables(text: str, marker: str) -> list[list[list[str]]]:
    """Body rows (lists of cell texts) of every Markdown table right after a `<!-- MARKER -->` line."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        if line.strip() != f"<!-- {marker} -->":
            continue
        rows = []
        for row in lines[i + 1 :]:
            if not row.startswith("|"):
                break
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]])
        assert len(rows) >= 2 and set(rows[1][0]) <= set("-: "), f"no table after <!-- {marker} --> (line {i + 1})"
        tables.append(rows[2:])  # without the header and the separator
    return tables


def code_span(cell: str, where: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"{where}: expected one value in backticks, found {cell!r}"
    return match[1]


def documented_columns(text: str, name: str) -> list[tuple[str, str]]:
    tables = marked_tables(text, f"columns: {name}")
    assert len(tables) == 1, f"expected one table marked 'columns: {name}', found {len(tables)}"
    return [(code_span(row[0], f"{name} table"), row[1]) for row in tables[0]]


def schema_columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in schema]


def config_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted field name -> default (REQUIRED for fields without one); dataclass-valued fields are flattened."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                out.update(config_fields(type(value), f"{prefix}{f.name}."))
                continue
            out[prefix + f.name] = value
        elif f.default is dataclasses.MISSING:
            out[prefix + f.name] = REQUIRED
        else:
            out[prefix + f.name] = f.default
    return out


@pytest.fixture(scope="module")
def formats_text() -> str:
    return FORMATS.read_text(encoding="utf-8")


def _schemas():
    from analysis.export import CURVE_SCHEMA
    from analysis.priming import SCORES_SCHEMA
    from harness import rundir

    return {
        "probes.parquet": rundir.PROBE_SCHEMA,
        "probes.parquet token columns": rundir.schema(rundir.TOKEN_COLUMNS),
        "injections.parquet": rundir.INJECTION_SCHEMA,
        "train_metrics.parquet": rundir.METRICS_SCHEMA,
        "knowledge_entropy.parquet": rundir.KNOWLEDGE_ENTROPY_SCHEMA,
        "curves": CURVE_SCHEMA,
        "priming_scores.parquet": SCORES_SCHEMA,
    }


@pytest.mark.parametrize("name", sorted(_schemas()))
def test_column_tables_match_the_schemas(formats_text, name):
    documented = documented_columns(formats_text, name)
    unknown_types = sorted({t for _, t in documented if t not in ARROW_TYPES})
    assert not unknown_types, f"{name}: types not written as Arrow type names: {unknown_types}"
    assert [(n, ARROW_TYPES[t]) for n, t in documented] == schema_columns(_schemas()[name])


def _config_class(name: str) -> type:
    from injection.engine.config import ExperimentConfig
    from injection.recipes.demo import DemoProfile

    return {"ExperimentConfig": ExperimentConfig, "DemoProfile": DemoProfile}[name]


@pytest.mark.parametrize("cls_name", ["ExperimentConfig", "DemoProfile"])
def test_config_tables_list_every_field_with_its_default(formats_text, cls_name):
    rows = [row for table in marked_tables(formats_text, f"fields: {cls_name}") for row in table]
    documented: dict[str, str] = {}
    for row in rows:
        for name in re.findall(r"`([^`]+)`", row[0]):  # a row may document several fields alike
            assert name not in documented, f"field {name!r} is listed twice"
            documented[name] = row[2]
    actual = config_fields(_config_class(cls_name))
    assert sorted(documented) == sorted(actual), (
        f"missing from the docs: {sorted(set(actual) - set(documented))}; "
        f"not fields of {cls_name}: {sorted(set(documented) - set(actual))}"
    )
    wrong = []
    for name, default in actual.items():
        cell = documented[name]
        if default == REQUIRED:
            if cell != REQUIRED:
                wrong.append(f"{name}: documented {cell!r}, but the field has no default")
            continue
        if cell == REQUIRED:
            wrong.append(f"{name}: documented as required, but its default is {default!r}")
            continue
        written = yaml.safe_load(code_span(cell, f"default of {name}"))
        if written != default or type(written) is not type(default):
            wrong.append(f"{name}: documented {written!r}, actual default {default!r}")
    assert not wrong, "wrong defaults in docs/formats.md:\n" + "\n".join(wrong)


def documented_keys(text: str, name: str) -> list[str]:
    """Every key in backticks in the first cell of the table marked `keys: NAME` (a cell may name several)."""
    tables = marked_tables(text, f"keys: {name}")
    assert len(tables) == 1, f"expected one table marked 'keys: {name}', found {len(tables)}"
    keys = [key for row in tables[0] for key in re.findall(r"`([^`]+)`", row[0])]
    assert keys and len(keys) == len(set(keys)), f"{name}: keys listed twice or none: {keys}"
    return keys


@pytest.fixture(scope="module")
def fit_json(tmp_path_factory) -> dict:
    """`analysis fit --json` of a planted run with control probes against a twin, control adjustment asked for too
    (so every key appears)."""
    import json

    from typer.testing import CliRunner

    from analysis.cli import app
    from tests.helpers.planted import PlantedScenario, write_planted_run

    scenarios = [
        PlantedScenario("duplicate", [0, 1, 2], [0, 60, 120], [1.0, 0.5, 0.5], 0.25),
        PlantedScenario("none", [3, 4], [], [], 0.0),
    ]
    root = tmp_path_factory.mktemp("fit-json")
    run_dir = write_planted_run(root / "run", scenarios, n_steps=301).path
    # a twin: the same probes, nothing injected (so the control-adjusted groups are reported beside)
    twin = [PlantedScenario(s.name, s.paragraphs, [], [], 0.0) for s in scenarios]
    twin_dir = write_planted_run(root / "twin", twin, n_steps=301).path
    result = CliRunner().invoke(app, ["fit", str(run_dir), "--json", "--control-adjust", "--baseline", str(twin_dir)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_fit_json_keys_are_documented(formats_text, fit_json):
    for name, keys in (
        ("fit document", fit_json),
        ("fit options", fit_json["options"]),
        ("fit run", fit_json["run"]),
        ("fit group", fit_json["groups"][0]),
    ):
        assert sorted(documented_keys(formats_text, name)) == sorted(keys), name
    assert all(sorted(g) == sorted(fit_json["groups"][0]) for g in fit_json["groups"] + fit_json["raw_groups"])


# ---- the checks themselves can fail ------------------------------------------------------------------------


def test_a_wrong_type_or_a_missing_column_is_noticed():
    text = (
        "<!-- columns: t -->\n| column | type | meaning |\n| --- | --- | --- |\n"
        "| `a` | int32 | x |\n| `b` | float32 | y |\n"
    )
    assert documented_columns(text, "t") == [("a", "int32"), ("b", "float32")]
    schema = pa.schema([("a", pa.int32()), ("b", pa.float64())])
    assert [(n, ARROW_TYPES[t]) for n, t in documented_columns(text, "t")] != schema_columns(schema)
    schema = pa.schema([("a", pa.int32()), ("b", pa.float32()), ("c", pa.bool_())])
    assert [(n, ARROW_TYPES[t]) for n, t in documented_columns(text, "t")] != schema_columns(schema)


def test_a_key_left_out_of_a_keys_table_is_noticed():
    text = "<!-- keys: doc -->\n| key | meaning |\n| --- | --- |\n| `a`, `b` | x |\n| `c` | y |\n"
    assert documented_keys(text, "doc") == ["a", "b", "c"]
    assert sorted(documented_keys(text, "doc")) != sorted({"a": 1, "b": 2, "c": 3, "d": 4})


def test_config_fields_flattens_nested_dataclasses_and_marks_required_ones():
    @dataclasses.dataclass
    class Inner:
        x: float = 1.0

    @dataclasses.dataclass
    class Outer:
        name: str
        n: int = 2
        inner: Inner = dataclasses.field(default_factory=Inner)

    assert config_fields(Outer) == {"name": REQUIRED, "n": 2, "inner.x": 1.0}
    # `1` read back from the docs is an int, not the float default 1.0: the type check tells them apart
    assert type(yaml.safe_load("1")) is not type(config_fields(Outer)["inner.x"])


def test_concepts_say_what_is_this_projects_interpretation():
    """The three readings of the study that are the project's own are stated as such in docs/concepts.md."""
    text = (FORMATS.parent / "concepts.md").read_text(encoding="utf-8")
    section = text.split("### What is this project's interpretation", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())
    for phrase in ("operationalisation", "learnability threshold", "360,000–362,999", "character offsets"):
        assert phrase in flat, phrase
