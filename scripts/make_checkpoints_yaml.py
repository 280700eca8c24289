"""Regenerate the `steps:` lists of checkpoints.yaml from the published checkpoint lists.

Inputs (facts, not computed):
- OLMo-1B.csv / OLMo-7B.csv (`Step,Checkpoint Directory`): the official unsharded checkpoint URLs
  (pass the folder holding them);
- scripts/hf_revisions/OLMo-{1B,7B}.txt: Hugging Face revision (branch) names, one per line, as listed
  by the reference study's public training script for allenai/OLMo-1B and allenai/OLMo-7B.
  A step without a listed name gets `hf_revision: null`: names round token counts inconsistently,
  so none is ever derived from the step number.

Usage: python scripts/make_checkpoints_yaml.py CSV_DIR > /tmp/steps.yaml, then paste each block under
its family's `steps:` key (the rest of checkpoints.yaml is written by hand, with comments).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def revisions(name: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in (HERE / "hf_revisions" / f"{name}.txt").read_text().split():
        match = re.fullmatch(r"step(\d+)-tokens\d+B", line)
        if not match:
            raise SystemExit(f"unexpected revision name {line!r} in {name}.txt")
        out[int(match.group(1))] = line
    return out


def steps_block(csv_path: Path, revs: dict[int, str]) -> str:
    urls: dict[int, list[str]] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            urls.setdefault(int(row["Step"]), []).append(row["Checkpoint Directory"].strip())
    lines = []
    for step in sorted(urls):
        rev = revs.get(step)
        url_list = ", ".join(urls[step])
        lines.append(f"      - {{step: {step}, urls: [{url_list}], hf_revision: {rev if rev else 'null'}}}")
    return "\n".join(lines)


def main() -> None:
    csv_dir = Path(sys.argv[1])
    for name in ("OLMo-1B", "OLMo-7B"):
        print(f"# {name}")
        print(steps_block(csv_dir / f"{name}.csv", revisions(name)))


if __name__ == "__main__":
    main()
