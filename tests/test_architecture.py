"""The shape of the code base: imports run one way, between packages and between modules.

    harness  <-  fictional_knowledge  <-  injection
    harness  <-  analysis             <-  injection.recipes

The library (`injection` outside its recipes) never imports `analysis`: only the recipes, whole experiments
built from both, do. Every import counts, including any inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "fictional_knowledge", "injection", "analysis")
#: What each part may import from the other top-level packages (the longest matching prefix applies).
ALLOWED = {
    "harness": set(),
    "fictional_knowledge": {"harness"},
    "analysis": {"harness", "fictional_knowledge"},
    "injection": {"harness", "fictional_knowledge"},
    "injection.recipes": {"harness", "fictional_knowledge", "analysis"},
}


def allowed(module: str) -> set[str]:
    part = max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)
    return ALLOWED[part]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in a file (absolute and relative imports, any depth)."""
    found: set[str] = set()
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            # the longest project module that the import names (a module, or the package holding a name)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a module always runs its own packages' __init__, and a package may re-export its submodules:
            # neither is an edge between parts of the code
            if target and target != name and not name.startswith(target + ".") and not target.startswith(name + "."):
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def collapse(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph between packages named by their first `depth` components (injection.engine, analysis, ...)."""

    def key(module: str) -> str:
        return ".".join(module.split(".")[:depth])

    edges: dict[str, set[str]] = {}
    for src, targets in graph.items():
        edges.setdefault(key(src), set()).update(key(t) for t in targets if key(t) != key(src))
    return edges


def test_top_level_packages_import_only_downwards(graph):
    bad = sorted(
        f"{src} imports {t}"
        for src, targets in graph.items()
        for t in targets
        if t.split(".")[0] != src.split(".")[0] and t.split(".")[0] not in allowed(src)
    )
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("depth", [1, 2], ids=["packages", "subpackages"])
def test_no_package_cycle(graph, depth):
    cycle = find_cycle(collapse(graph, depth))
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


def test_no_module_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "module cycle: " + " -> ".join(cycle)


def test_only_recipes_import_analysis(graph):
    """The rule above, stated on its own, and the layering test's view of it."""
    importers = sorted({src for src, targets in graph.items() for t in targets if t.split(".")[0] == "analysis"})
    outside = [m for m in importers if m.split(".")[0] != "analysis" and not m.startswith("injection.recipes.")]
    assert not outside, f"modules outside analysis/ and injection/recipes/ that import analysis: {outside}"
    assert "analysis" not in allowed("injection.engine.loop") and "analysis" in allowed("injection.recipes.demo")


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert collapse({"injection.engine.loop": {"injection.data.source"}, "injection.data.source": set()}, 2) == {
        "injection.engine": {"injection.data"},
        "injection.data": set(),
    }


def test_no_user_facing_text_points_outside_the_repository():
    """Docstrings, help and docs speak of the project's own documents only."""
    import re

    offenders = []
    files = [p for pkg in (*PACKAGES, "docs", "ds_configs", "scripts", "benchmarks") for p in (REPO / pkg).rglob("*")]
    files += [REPO / name for name in ("README.md", "checkpoints.yaml", "pyproject.toml")]
    for path in files:
        if path.suffix in (".py", ".md", ".yaml", ".json", ".toml") and path.is_file():
            if re.search(r"\bSPEC\b|shared/(SPEC|STYLE|reference/)", path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"references to a document outside the repository in: {', '.join(offenders)}"


#: The only imports inside a function, and why each is there. Every other import is at the top of its module:
#: the command lines stay fast through their command tables alone (harness/commands.py).
DEFERRED = {
    "deepspeed": "imported once through harness.streams.import_deepspeed, which first points its logger at stderr",
    "wandb": "optional back end of monitor.kind",
    "torch.utils.tensorboard": "optional back end of monitor.kind (it needs the tensorboard package)",
    "accelerate": "optional: where it is installed, ZeRO-3 builds the model already partitioned",
    "transformers.integrations": "only on accelerate's optional path",
}


def test_imports_are_at_the_top_of_each_module():
    def deferred(target: str) -> bool:
        return any(target == d or target.startswith(d + ".") for d in DEFERRED)

    inside = []
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if not all(deferred(t) for t in targets):
                    inside.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert not inside, "imports inside functions (move them to the top, or say in DEFERRED why not):\n" + "\n".join(
        inside
    )


def test_the_training_loop_reads_in_one_screen():
    """`run_training` (set-up, the loop, the outcome) and `train` (update, evaluate, hooks, checkpoint) read top to
    bottom in one screen; the bookkeeping they call hangs off them (hooks, run_state, plan)."""
    tree = ast.parse((REPO / "injection" / "engine" / "loop.py").read_text(encoding="utf-8"))
    lengths = {
        node.name: node.end_lineno - node.lineno + 1
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in ("run_training", "train")
    }
    assert set(lengths) == {"run_training", "train"} and sum(lengths.values()) <= 70, lengths
