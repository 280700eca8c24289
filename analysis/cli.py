"""`analysis ...` (placeholder until the analysis lands)."""
from injection.errors import HarnessTyper

app = HarnessTyper(help="Analyse run directories (SPEC §7).")
