"""`injection demo` (placeholder until the demo lands)."""
from injection.errors import UserError


def demo() -> None:
    raise UserError("not implemented yet")
