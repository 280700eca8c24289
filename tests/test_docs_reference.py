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


def test_config_tables_list_every_field_with_its_default(formats_text):
    from injection.engine.config import ExperimentConfig

    rows = [row for table in marked_tables(formats_text, "fields: ExperimentConfig") for row in table]
    documented: dict[str, str] = {}
    for row in rows:
        name = code_span(row[0], "config table")
        assert name not in documented, f"field {name!r} is listed twice"
        documented[name] = row[2]
    actual = config_fields(ExperimentConfig)
    assert sorted(documented) == sorted(actual), (
        f"missing from the docs: {sorted(set(actual) - set(documented))}; "
        f"not fields of ExperimentConfig: {sorted(set(documented) - set(actual))}"
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
