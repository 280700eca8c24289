"""`injection run` and `injection launch` (placeholder until the engine lands)."""
from injection.errors import UserError


def run(config: str) -> None:
    raise UserError("not implemented yet")


def launch(config: str) -> None:
    raise UserError("not implemented yet")
