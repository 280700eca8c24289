"""Rewrite the table of docs/errors.md from the error lines tests/test_cli_errors.py printed:

    CLI_ERROR_TABLE=/tmp/errors.jsonl python -m pytest -q tests/test_cli_errors.py
    python scripts/make_errors_doc.py /tmp/errors.jsonl

Rows follow the order of the test's table; the checkout's path becomes REPO, process ids, host names and times PID,
HOST and TIME (the test's scratch folder is TMP already). The text above the table is kept.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
HEADER = "| case | what it prints |\n| --- | --- |\n"


def cell(line: str) -> str:
    line = line.replace(str(REPO), "REPO").replace("|", "\\|")
    line = re.sub(r"process \d+ on " + re.escape(socket.gethostname()), "process PID on HOST", line)
    line = re.sub(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "since TIME", line)
    return f"`` {line} ``" if "`" in line else f"`{line}`"


def main(jsonl: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests.test_cli_errors import CASES

    printed = {}
    for raw in jsonl.read_text(encoding="utf-8").splitlines():
        record = json.loads(raw)
        printed[record["case"]] = record["error"]
    missing = [c.name for c in CASES if c.name not in printed]
    if missing:
        raise SystemExit(f"{jsonl}: no line for {len(missing)} case(s): {', '.join(missing)}")
    text = DOC.read_text(encoding="utf-8")
    intro = text[: text.index(HEADER)]
    rows = "".join(f"| {c.name} | {cell(printed[c.name])} |\n" for c in CASES)
    DOC.write_text(intro + HEADER + rows, encoding="utf-8")
    print(f"{DOC}: {len(CASES)} cases")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
