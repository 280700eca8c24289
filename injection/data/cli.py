"""`injection data ...` and `injection plan` (placeholder until the data order lands)."""
from injection.errors import HarnessTyper, UserError

data_app = HarnessTyper()


def plan(schedule: str) -> None:
    raise UserError("not implemented yet")
