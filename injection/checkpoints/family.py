"""The family interface: everything the harness must know about one kind of model, in one module per kind.

A *family* in the catalog (`olmo-7b`, `tiny`, ...) is one original training run: its checkpoints, batch sizes,
learning-rate schedule and data order (checkpoints.yaml). Its `kind` names the module that knows how that kind of
model is built and continued. A kind's module lives at `injection/checkpoints/<kind>.py` and defines:

    KIND: str                                   the kind's name (the module's name)
    MODEL_TYPE: str                             transformers' `model_type` of its HF checkpoints
    parse_architecture(data, where) -> arch     the catalog's `architecture:` block, validated (UserError)
    hf_config(arch) -> PretrainedConfig         the HF config of that architecture
    param_groups(model, weight_decay, optimizer) -> list
                                                AdamW parameter groups as the original run decayed them
                                                (`optimizer`: checkpoint.json's OptimizerSpec, whose flags
                                                some kinds read)
    loss_factor(seq_len) -> float               turns HF's mean next-token loss into the original trainer's
                                                objective (OLMo divides the summed loss by rows × L, not L − 1)
    tokenizer(family) -> tokenizer              the run's tokenizer, offline
    convert_original(src, dest, family, step, source_url, trust_pickle) -> Path
                                                the run's own checkpoint files -> the checkpoint layout
                                                (raise UserError where a kind has no original format)
    check_hf_config(config, arch, where) -> dict
                                                an HF snapshot's config.json (`injection pull --source hf`)
                                                checked against the catalog's architecture; returns the
                                                config.json changes that make the model compute what the
                                                original trainer computed ({} when it already does)
    build_initial(dest, family, seed, **overrides) -> Path
                                                step 0 of a built-in family (random initialisation, offline;
                                                needed only by kinds that have built-in families)

The learning-rate schedule is data (injection.lr: its kind also says which step each update uses), the data
order is the corpus format (injection.data), and what the loss adds to the cross-entropy is checkpoint.json's
`objective` (z-loss, instance filter: injection.engine.objective), so none of them needs code per kind. Adding a
family is a new module here plus its catalog entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

from harness.errors import UserError

#: Kinds shipped with the harness (a catalog may name any module under injection/checkpoints/ that defines KIND).
KNOWN_KINDS = ("olmo", "olmo2", "tiny", "pythia")


class ModelFamily(Protocol):
    KIND: str
    MODEL_TYPE: str

    def parse_architecture(self, data: Any, where: str) -> Any: ...
    def hf_config(self, arch: Any) -> Any: ...
    def param_groups(self, model: Any, weight_decay: float, optimizer: Any = None) -> list[dict[str, Any]]: ...
    def loss_factor(self, seq_len: int) -> float: ...
    def tokenizer(self, family: Any) -> Any: ...
    def convert_original(
        self, src: Any, dest: Any, *, family: Any, step: int, source_url: str | None, trust_pickle: bool
    ) -> Any: ...
    def check_hf_config(self, config: dict[str, Any], arch: Any, where: str) -> dict[str, Any]: ...


def decay_groups(model: Any, weight_decay: float, decayed: Callable[[Any, str], bool]) -> list[dict[str, Any]]:
    """AdamW's two parameter groups: the trainable parameters for which `decayed(module, name)` holds get
    `weight_decay`, the others none. A shared (tied) parameter is placed once, by the first module that owns it."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (decay if decayed(module, name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def model_family(kind: str, where: str = "kind") -> ModelFamily:
    """The module implementing a family kind (`olmo`, `tiny`, ...)."""
    if not isinstance(kind, str) or not kind.isidentifier() or kind.startswith("_"):
        raise UserError(f"{where}: {kind!r} is not a family kind (known: {', '.join(KNOWN_KINDS)})")
    try:
        module: ModuleType = importlib.import_module(f"injection.checkpoints.{kind}")
    except ModuleNotFoundError:
        raise UserError(f"{where}: unknown family kind {kind!r} (known: {', '.join(KNOWN_KINDS)})") from None
    if getattr(module, "KIND", None) != kind:
        raise UserError(f"{where}: injection.checkpoints.{kind} is not a family module (no KIND = {kind!r})")
    return module  # type: ignore[return-value]


def kind_of_model_type(model_type: str, where: str) -> str:
    """The shipped kind whose HF checkpoints have this `model_type` (for checkpoints that predate `kind`)."""
    for kind in KNOWN_KINDS:
        if model_family(kind).MODEL_TYPE == model_type and kind != "tiny":
            return kind
    raise UserError(f"{where}: model_type {model_type!r} belongs to no known family kind")
