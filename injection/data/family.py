"""Data-order facts of a checkpoint family (olmo-1b, olmo-7b, tiny), kept behind one function.

The catalog (`injection.catalog`) knows each family's seed, sequence length, order file URL, batch size per
step and which list of token files the run read (`data_paths`, resolved by `injection.data.prepare`).
`injection data prepare FAMILY` turns them into a corpus description; `--source` names any other corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class FamilyData:
    family: str
    global_batch_size: int
    seq_len: int
    seed: int | None
    global_indices_url: str | None
    data_paths: str | None


def family_data(family: str, step: int) -> FamilyData:
    """The data-order facts of `family` at global step `step`, from the checkpoint catalog."""
    try:
        from injection.catalog import load_catalog
    except ImportError:
        raise UserError(
            f"no checkpoint catalog is available to look up family {family!r}; pass --source and --batch-size"
        ) from None
    fam = load_catalog().family(family)
    order = fam.data_order
    return FamilyData(
        family=family,
        global_batch_size=int(fam.batch_size_at(step)),
        seq_len=int(order.seq_len),
        seed=order.seed,
        global_indices_url=order.global_indices_url,
        data_paths=order.data_paths,
    )
