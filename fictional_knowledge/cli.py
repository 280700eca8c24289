"""`injection knowledge ...` (placeholder until the knowledge package lands)."""
from injection.errors import HarnessTyper

app = HarnessTyper()
