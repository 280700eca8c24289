"""Data-order facts of a checkpoint family (OLMo-1B, OLMo-7B), kept behind one function."""

from __future__ import annotations

from injection.data.source import CorpusInfo
from injection.errors import UserError


def family_data_order(family: str) -> tuple[CorpusInfo, int]:
    """(token files, dtype, seq_len, seed, epoch, order file) and the global batch size of a family's run,
    from the checkpoint catalog (`injection.catalog.data_order(family) -> dict` with the fields of
    `CorpusInfo` plus `global_batch_size`)."""
    try:
        from injection import catalog
    except ImportError:
        catalog = None
    getter = getattr(catalog, "data_order", None)
    if getter is None:
        raise UserError(
            f"no data-order facts for family {family!r} in the checkpoint catalog; "
            "pass --source CORPUS_DIR_OR_URL and --batch-size"
        )
    facts = dict(getter(family))
    batch_size = facts.pop("global_batch_size", None)
    if batch_size is None:
        raise UserError(f"the catalog's data order of {family!r} has no global_batch_size; pass --batch-size")
    return CorpusInfo.from_dict(facts, f"catalog data order of {family!r}"), int(batch_size)
