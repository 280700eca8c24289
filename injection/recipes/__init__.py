"""Recipes: whole experiments built from the library, each one command of `injection`.

A recipe is a module `injection/recipes/NAME.py` whose function `NAME` is the command `injection NAME`, and its
profiles are YAML files `injection/recipes/configs/NAME/*.yaml`. It is built only from the library's entry points,
through the shared kit (`injection/recipes/kit.py`): its profile loaded into its own dataclass, tokenizer and tiny
models, runs set up by `prepare_inputs` and reused or resumed after reading their run directory. Recipes are the
only part of `injection` that may import `analysis` (tests/test_architecture.py). Adding a recipe changes no other
file: the command line finds it here.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

from harness.commands import CommandRef

#: Modules here that are not recipes.
NOT_RECIPES = ("kit",)


def recipe_files() -> dict[str, Path]:
    """name -> module file of every recipe (on this package's path, so another directory may add some)."""
    return {
        info.name: Path(info.module_finder.path) / f"{info.name}.py"
        for info in pkgutil.iter_modules(__path__)
        if not info.ispkg and info.name not in NOT_RECIPES and not info.name.startswith("_")
    }


def recipe_commands() -> list[CommandRef]:
    """One command per recipe, its help the first paragraph of the command function's docstring (read without
    importing the recipe)."""
    refs = []
    for name, path in sorted(recipe_files().items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        function = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
        doc = ast.get_docstring(function) if function is not None else None
        help_text = " ".join((doc or f"The {name} recipe.").split("\n\n")[0].split())
        refs.append(CommandRef(name, f"{__name__}.{name}:{name}", help_text))
    return refs
