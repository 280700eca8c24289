"""Regenerate the shipped lists of OLMo's training token files (injection/data/lists/olmo-{1b,7b}.txt).

Input (facts, not computed): the `data.paths` of allenai/OLMo's official training configs, OLMo-1B.yaml and
OLMo-7B.yaml (Feb 2024 runs). At the repository's HEAD they are `configs/official-0724/`; before
November 2024 they were `configs/official/`, and revisions before March 2024 write the files as
`r2://olmo-data/...`, which OLMo's README documents as served at `https://olmo-data.org/...`.

Order matters: instance numbers run over the files in list order, so a list is written exactly in config
order. Only training files under `preprocessed/olmo-mix/` are expected in `data.paths`; any other entry
(a private path, an S3 bucket) stops the script rather than being dropped, since a dropped file would
renumber every later instance.

Usage:
    python scripts/make_data_lists.py OLMO_CHECKOUT                  # finds configs/official*/OLMo-{1B,7B}.yaml
    python scripts/make_data_lists.py OLMo-1B.yaml OLMo-7B.yaml --source configs/official-0724 \\
        --revision "59a53e3f68e546330ca5a99ec626e58f9ab96494 (2025-09-04)"
Writes injection/data/lists/ (or --out DIR) and prints the count of each list.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "injection" / "data" / "lists"
CONFIG_DIRS = ("configs/official-0724", "configs/official")
FAMILIES = {"OLMo-1B": "olmo-1b", "OLMo-7B": "olmo-7b"}
PUBLIC_HOST = "https://olmo-data.org/"
#: Location prefixes that OLMo's configs used for the same public bucket over time.
ALIASES = ("r2://olmo-data/", "http://olmo-data.org/", "https://olmo-data.org/")
TRAINING_PREFIX = "preprocessed/olmo-mix/"


def public_url(path: str, where: str) -> str:
    """`https://olmo-data.org/...` for any of the bucket's spellings; other locations are refused."""
    for alias in ALIASES:
        if path.startswith(alias):
            rel = path[len(alias) :]
            if not rel.startswith(TRAINING_PREFIX):
                raise SystemExit(f"{where}: {path} is not a training file under {TRAINING_PREFIX}")
            if rel.endswith("/"):
                raise SystemExit(f"{where}: {path} names a directory; the host serves single files only")
            return PUBLIC_HOST + rel
    raise SystemExit(f"{where}: {path} is not on the public OLMo data host (expected one of {', '.join(ALIASES)})")


def training_urls(config: Path) -> list[str]:
    data = yaml.safe_load(config.read_text())
    try:
        paths = data["data"]["paths"]
    except (KeyError, TypeError):
        raise SystemExit(f"{config}: no data.paths") from None
    if not isinstance(paths, list) or not paths:
        raise SystemExit(f"{config}: data.paths is not a non-empty list")
    urls = [public_url(str(p), f"{config}: data.paths[{i}]") for i, p in enumerate(paths)]
    dupes = sorted({u for u in urls if urls.count(u) > 1})
    if dupes:
        raise SystemExit(f"{config}: data.paths repeats {dupes[0]}")
    return urls


def git_revision(checkout: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "log", "-1", "--format=%H %cs"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def find_configs(checkout: Path) -> tuple[list[Path], str]:
    for rel in CONFIG_DIRS:
        found = [checkout / rel / f"{name}.yaml" for name in FAMILIES]
        if all(p.is_file() for p in found):
            return found, rel
    raise SystemExit(f"{checkout}: none of {', '.join(CONFIG_DIRS)} holds OLMo-1B.yaml and OLMo-7B.yaml")


def render(name: str, urls: list[str], source: str, revision: str, note: str | None = None) -> str:
    header = [
        f"# Training token files of {name} (Feb 2024), in training order: one URL a line.",
        f"# Source: data.paths of allenai/OLMo {source}/{name}.yaml at revision {revision}",
        f"# (r2://olmo-data/ written as {PUBLIC_HOST}). {len(urls)} files.",
        *([f"# {note}"] if note else []),
        "# Regenerate with scripts/make_data_lists.py; do not edit by hand.",
    ]
    return "\n".join(header + urls) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="an OLMo checkout, or OLMo-1B.yaml / OLMo-7B.yaml files")
    parser.add_argument("--revision", help="revision the config files come from (default: the checkout's HEAD)")
    parser.add_argument("--source", help="folder of the configs inside allenai/OLMo, for the header")
    parser.add_argument("--note", help="one more header line (e.g. what the list was compared with)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    if len(args.inputs) == 1 and args.inputs[0].is_dir():
        configs, source = find_configs(args.inputs[0])
        revision = args.revision or git_revision(args.inputs[0])
    else:
        configs, source, revision = args.inputs, None, args.revision
    source = args.source or source or "configs/official"
    if not revision:
        raise SystemExit("give --revision: the revision of allenai/OLMo the configs come from")
    args.out.mkdir(parents=True, exist_ok=True)
    for config in configs:
        name = config.stem
        if name not in FAMILIES:
            raise SystemExit(f"{config}: expected a file named {' or '.join(f'{n}.yaml' for n in FAMILIES)}")
        urls = training_urls(config)
        target = args.out / f"{FAMILIES[name]}.txt"
        target.write_text(render(name, urls, source, revision, args.note))
        print(f"{target}: {len(urls)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
