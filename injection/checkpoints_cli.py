"""`injection checkpoints ...` and `injection pull` (placeholder until the catalog lands)."""
from injection.errors import HarnessTyper, UserError

checkpoints_app = HarnessTyper()


def pull(ref: str) -> None:
    raise UserError("not implemented yet")
