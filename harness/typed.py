"""Mappings (parsed YAML or JSON) -> typed dataclasses, validated field by field.

One loader serves the experiment configuration, the checkpoint catalog and every other typed file, so that all
of them report mistakes the same way: the file (or the `--set` override) the value came from, the dotted field,
and what was expected:

    exp.yaml: field 'optimizer.constant_lr': expected a finite number, got 'fast'
    --set total_steps=ten: field 'total_steps': expected an integer, got 'ten'
    checkpoints.yaml: unknown field 'families.olmo-7b.architecture.n_head' (did you mean 'n_heads'?)

Supported annotations: bool, int, float (finite only), str, Literal[...], X | None, list[X], tuple[X, ...],
tuple[X, Y], dict[str, X] / dict[str, Any], and nested dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from harness.errors import UserError

#: The largest YAML text read (configs, schedules, catalogs are a few kilobytes to a megabyte).
MAX_YAML_CHARS = 32 << 20
#: The most values a YAML document may stand for once its aliases are expanded: a few lines of aliases of aliases
#: stand for billions, which whatever reads the document (a hash, a copy, a dump) would then walk.
MAX_YAML_NODES = 1_000_000


class YamlSyntaxError(UserError):
    """Text that is not YAML; `problem` is the parser's first line."""

    def __init__(self, where: str, err: yaml.YAMLError) -> None:
        self.problem = str(err).splitlines()[0]
        super().__init__(f"{where}: not valid YAML: {err}")


def load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document safely (no Python objects) and within bounds: UserError naming `where` when it is not
    YAML, too large, nested too deeply, or expands (through aliases) to more than MAX_YAML_NODES values."""
    if len(text) > MAX_YAML_CHARS:
        raise UserError(f"{where}: {len(text):,} characters; a YAML input may have at most {MAX_YAML_CHARS:,}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise YamlSyntaxError(where, err) from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to read") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Count the values a node graph stands for with its aliases expanded (each shared node counted once per use)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if not children_done:
            if key in open_nodes:
                raise UserError(f"{where}: an alias refers to a value that contains it (a recursive document)")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > MAX_YAML_NODES:
            raise UserError(
                f"{where}: the document stands for more than {MAX_YAML_NODES:,} values once its aliases are "
                "expanded (aliases of aliases); refusing to read it"
            )


def _label(where: str, path: str, origins: Mapping[str, str] | None) -> str:
    """Where a value came from: the override that set this field (or a parent of it), else `where`."""
    if origins:
        probe = path
        while probe:
            if probe in origins:
                return origins[probe]
            probe = probe.rpartition(".")[0]
    return where


def _fail(where: str, path: str, origins: Mapping[str, str] | None, message: str) -> UserError:
    return UserError(f"{_label(where, path, origins)}: field '{path}': {message}")


def _type_name(tp: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a finite number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, where: str, path: str, origins: Mapping[str, str] | None = None) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) one value against an annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where, path, origins)
            except UserError as err:
                errors.append(err)
        if value is None:
            raise _fail(where, path, origins, "must not be null")
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise _fail(where, path, origins, f"expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where, path, origins)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, path, origins, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _fail(where, path, origins, f"expected {len(args)} values, got {value!r}")
            return tuple(coerce(v, a, where, f"{path}[{i}]", origins) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, where, f"{path}[{i}]", origins) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(where, path, origins, f"expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: coerce(v, item, where, f"{path}.{k}", origins) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(where, path, origins, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, path, origins, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(where, path, origins, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, path, origins, f"expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type, data: Any, where: str, path: str = "", origins: Mapping[str, str] | None = None) -> Any:
    """An instance of dataclass `cls` from a mapping: unknown keys, missing required fields and wrongly typed
    values are UserErrors naming the source and the dotted field. `path` prefixes field names (nested use);
    `origins` maps dotted field names to the label of where they were set (e.g. a `--set` override)."""
    prefix = f"{path}." if path else ""
    if not isinstance(data, dict):
        what = f"field '{path}'" if path else "top level"
        raise UserError(f"{_label(where, path, origins)}: {what}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    for key in data:
        if key not in fields:
            guess = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.7)
            hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known: {', '.join(fields)})"
            raise UserError(f"{_label(where, prefix + str(key), origins)}: unknown field '{prefix}{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], where, prefix + name, origins)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{_label(where, path, origins)}: missing field '{prefix}{name}'")
    return cls(**kwargs)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (for help text and documentation)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs
