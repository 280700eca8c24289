"""`injection capacity`: how many bits of knowledge OLMo-architecture models of several sizes store.

A ladder of runs, each an ordinary run directory trained by the engine of `injection run` from random
initialisation on a corpus made only of generated biographies (`fictional_knowledge.bios`):

    1. knowledge   one biography set with the most people any rung needs (rungs with fewer people use its
                   first N; the second knowledge base of an overwrite rung is its last people)
    2. tokenizer   a byte-level BPE trained on those biographies
    3. corpora     per rung: every person once per epoch in a fresh order, variant e of the biography in
                   epoch e, documents joined with EOS and cut into fixed windows by `build_corpus`; E epochs
    4. models      one random initialisation per model of the ladder (several widths and depths)
    5. runs        every (model, people) rung, probes logged at chosen numbers of exposures; a rerun of the
                   command skips finished rungs and resumes interrupted ones
    6. analysis    `analysis capacity` over the ladder (stored bits, bits per parameter, memorization,
                   overwriting) and the HTML report

The ladder varies the number of people as well as the model, so that some rungs hold more information
than their model can store: a model's capacity is read where its stored bits stop growing with N. Its profiles
are configs/capacity/quick.yaml, cpu.yaml and gpu.yaml.

Corpus passes: the corpus holds `corpus_passes` differently shuffled passes over the people (default: one
per epoch); epochs cycle through them, so that large ladders need not write E copies of their text. A pass
is padded with EOS to whole windows, so every epoch starts at a window boundary and no person is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import typer
import yaml
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig, AutoModelForCausalLM

from analysis.capacity import CapacityAnalysis, CapacityOptions, analyse_capacity
from analysis.load import load_run
from analysis.plots import plot_capacity
from analysis.report import print_capacity, write_report
from fictional_knowledge.bios import BiosSpec, generate_bios, write_bios
from fictional_knowledge.generate import dumps_knowledge
from fictional_knowledge.load import knowledge_to_document, load_knowledge
from fictional_knowledge.model import KnowledgeSet
from harness import rundir
from harness.atomic import replace_dir, staging_dir, write_bytes_atomic
from harness.errors import UserError
from harness.paths import check_resumable_dir
from harness.progress import say
from harness.tokenizers import load_tokenizer, train_bpe_tokenizer
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import CHECKPOINT_JSON, mark_complete
from injection.checkpoints.olmo import hf_config
from injection.data.build import build_corpus
from injection.data.order import write_global_indices
from injection.engine.config import ExperimentConfig, config_from_dict
from injection.recipes import kit


@dataclass
class ModelSpec:
    """One model of the ladder: an OLMo-architecture decoder (non-parametric layer norm, SwiGLU, RoPE,
    tied embeddings), as the `tiny` family."""

    name: str
    """Label of the model in tables and run names (e.g. d64-L2)."""
    d_model: int
    n_layers: int
    n_heads: int
    mlp_ratio: int = 8
    """mlp_hidden_size = mlp_ratio × d_model (OLMo's SwiGLU: half of it per branch)."""
    people: list[int] | None = None
    """This model's numbers of people (null = the ladder's `people`), e.g. around what it can store."""

    @property
    def shape(self) -> kit.ModelShape:
        return kit.ModelShape(self.d_model, self.n_layers, self.n_heads, self.mlp_ratio)


@dataclass
class OverwriteSpec:
    """Extra rungs that, after learning a first knowledge base, train on a second one only."""

    models: list[str]
    """Names of the models that get an overwrite rung."""
    people: int
    """People of the first knowledge base."""
    second_people: int
    """People of the second knowledge base (different people, same value sets)."""
    second_exposures: int
    """Epochs over the second knowledge base."""


@dataclass
class CapacityConfig:
    """One knowledge-capacity experiment: a ladder of models × numbers of people."""

    name: str
    models: list[ModelSpec]
    people: list[int]
    """Numbers of people N; every model is trained once per N (unless the model lists its own)."""
    exposures: int
    """E: epochs over the biographies (each person seen once per epoch)."""
    eval_exposures: list[float]
    """Numbers of exposures at which every probe is logged (0 and the end are always logged)."""
    bios: BiosSpec = field(default_factory=BiosSpec)
    """Value-set sizes, years, paraphrases and shuffling of the biographies (people and seed come from
    `people` and `seed`)."""
    overwrite: OverwriteSpec | None = None
    tokenizer_vocab: int = 1024
    """Entries of the byte-level BPE trained on the biographies."""
    seq_len: int = 256
    global_batch: int = 16
    micro_batch: int | None = None
    """Rows per forward pass (null = the whole global batch)."""
    peak_lr: float = 3e-3
    warmup_fraction: float = 0.05
    """Linear warm-up over this fraction of a rung's steps, then cosine decay to alpha_f × peak_lr."""
    alpha_f: float = 0.1
    weight_decay: float = 0.1
    corpus_passes: int = 0
    """Differently shuffled passes written to a rung's corpus; epochs cycle through them (0 = one per epoch)."""
    probe_kinds: list[str] = field(default_factory=lambda: ["mem", "sem"])
    """Probes logged: mem (the biography's sentence) and/or sem (a held-out wording of the same question)."""
    deepspeed_config: str = "cpu"
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_batch_tokens: int = 16384
    checkpoint_interval: int = 100
    seed: int = 0

    def validate(self, where: str) -> None:
        def positive(name: str, value: int | float) -> None:
            if not value > 0:
                raise UserError(f"{where}: field {name!r} must be > 0, got {value}")

        if not self.models:
            raise UserError(f"{where}: field 'models' is empty")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise UserError(
                f"{where}: field 'models' has two models named {next(n for n in names if names.count(n) > 1)!r}"
            )
        for m in self.models:
            for f in ("d_model", "n_layers", "n_heads", "mlp_ratio"):
                positive(f"models.{m.name}.{f}", getattr(m, f))
            if m.d_model % m.n_heads:
                raise UserError(
                    f"{where}: model {m.name!r}: d_model {m.d_model} is not a multiple of n_heads {m.n_heads}"
                )
        for m in self.models:
            if not self.people_of(m):
                raise UserError(f"{where}: model {m.name!r} has no numbers of people (field 'people' is empty)")
            for n in self.people_of(m):
                positive(f"people of {m.name}", n)
        positive("exposures", self.exposures)
        for x in self.eval_exposures:
            if not 0 <= x <= self.exposures:
                raise UserError(f"{where}: field 'eval_exposures' has {x:g}, outside 0..exposures ({self.exposures})")
        for name in ("tokenizer_vocab", "seq_len", "global_batch", "peak_lr", "eval_batch_tokens"):
            positive(name, getattr(self, name))
        if self.micro_batch is not None and (self.micro_batch < 1 or self.global_batch % self.micro_batch):
            raise UserError(
                f"{where}: field 'micro_batch' ({self.micro_batch}) must divide global_batch ({self.global_batch})"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"{where}: field 'warmup_fraction' must be in [0, 1), got {self.warmup_fraction}")
        if not self.probe_kinds or set(self.probe_kinds) - {"mem", "sem"}:
            raise UserError(f"{where}: field 'probe_kinds' must list mem and/or sem, got {self.probe_kinds}")
        if self.corpus_passes < 0:
            raise UserError(f"{where}: field 'corpus_passes' must be >= 0, got {self.corpus_passes}")
        if self.overwrite is not None:
            unknown = [m for m in self.overwrite.models if m not in names]
            if unknown:
                raise UserError(
                    f"{where}: field 'overwrite.models' names {unknown[0]!r}, not a model of the ladder "
                    f"({', '.join(names)})"
                )
            for name in ("people", "second_people", "second_exposures"):
                positive(f"overwrite.{name}", getattr(self.overwrite, name))
        self.bios_spec(1).check(f"{where}: field 'bios'")

    # ---- derived -----------------------------------------------------------------------------------------

    def bios_spec(self, people: int) -> BiosSpec:
        return dataclasses.replace(self.bios, people=people, seed=self.seed)

    def people_of(self, model: ModelSpec) -> list[int]:
        return list(model.people) if model.people is not None else list(self.people)

    @property
    def first_people(self) -> int:
        """People of the largest first knowledge base (the second one's people come after them)."""
        return max(
            [n for m in self.models for n in self.people_of(m)] + ([self.overwrite.people] if self.overwrite else [])
        )

    @property
    def total_people(self) -> int:
        return self.first_people + (self.overwrite.second_people if self.overwrite else 0)

    def rungs(self) -> list[Rung]:
        out = [Rung(m, n) for m in self.models for n in self.people_of(m)]
        if self.overwrite is not None:
            o = self.overwrite
            out += [Rung(m, o.people, o.second_people, o.second_exposures) for m in self.models if m.name in o.models]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Rung:
    model: ModelSpec
    people: int
    second_people: int = 0
    second_exposures: int = 0

    @property
    def data_name(self) -> str:
        """What the rung trains on (shared by the rungs of every model with the same people)."""
        return f"N{self.people}" + (f"+N{self.second_people}" if self.second_people else "")

    @property
    def name(self) -> str:
        return f"{self.model.name}-{self.data_name}"


# ---- configuration --------------------------------------------------------------------------------------------


def profile_names() -> list[str]:
    """The shipped ladders (configs/capacity/*.yaml)."""
    return kit.profile_names(__file__)


def load_capacity_config(
    profile: str | None = None, config: str | Path | None = None, overrides: list[str] | None = None
) -> CapacityConfig:
    """A shipped profile (configs/capacity/NAME.yaml; default `cpu`) or a YAML file, then `--set key=value`
    overrides; validated."""
    data, where = kit.read_profile(__file__, profile or "cpu", config, overrides or ())
    bios = data.get("bios") or {}
    clash = [k for k in ("people", "seed") if isinstance(bios, dict) and k in bios]
    if clash:
        raise UserError(
            f"{where}: field 'bios.{clash[0]}' is set by the ladder: use the top-level "
            f"{'people' if clash[0] == 'people' else 'seed'}"
        )
    return kit.typed_profile(CapacityConfig, data, where)


# ---- inputs ---------------------------------------------------------------------------------------------------


def build_knowledge(cfg: CapacityConfig, out: Path) -> KnowledgeSet:
    """The biographies of every rung (written once) as a KnowledgeSet."""
    path = out / "knowledge.json"
    if path.is_file():
        return load_knowledge(path)
    return write_bios(path, cfg.bios_spec(cfg.total_people))


def build_tokenizer(cfg: CapacityConfig, knowledge: KnowledgeSet, out: Path) -> Path:
    """A byte-level BPE trained on every variant of every biography."""
    texts = lambda: [p.variant(j) for p in knowledge.paragraphs for j in range(p.n_variants)]  # noqa: E731
    return kit.bpe_tokenizer(texts, cfg.tokenizer_vocab, out / "tokenizer")


def rung_knowledge(knowledge: KnowledgeSet, rung: Rung, first_people: int) -> tuple[KnowledgeSet, dict[int, str]]:
    """The rung's people: its first knowledge base (scenario `bios`, or `first` with an overwrite) and the
    second one (`second`), renumbered 0.. in that order."""
    first = list(knowledge.paragraphs[: rung.people])
    second = list(knowledge.paragraphs[first_people : first_people + rung.second_people])
    paragraphs = tuple(dataclasses.replace(p, id=i) for i, p in enumerate(first + second))
    scenarios = {
        i: ("first" if rung.second_people else "bios") if i < len(first) else "second" for i in range(len(paragraphs))
    }
    return KnowledgeSet(paragraphs, knowledge.source, knowledge.value_space), scenarios


@dataclass
class Corpus:
    """A rung's corpus and where its epochs end."""

    path: Path
    total_steps: int
    exposures: dict[str, tuple[list[float], list[float]]]
    """scenario -> (run steps where its epochs end, epochs completed there): harness.rundir.CapacityManifest."""


def _passes(cfg: CapacityConfig, exposures: int) -> int:
    return min(exposures, cfg.corpus_passes) if cfg.corpus_passes else exposures


@dataclass
class CorpusPlan:
    """What a rung's corpus holds, before anything is written."""

    documents: list[str]
    """Every pass's biographies in order, each knowledge base's passes padded with empty documents (one EOS
    token each) to whole windows."""
    order: np.ndarray
    """Instance of each row the run reads, cycling through the passes for the epochs, cut to whole batches."""
    instances: int
    """Windows the documents make."""
    total_steps: int
    exposures: dict[str, tuple[list[float], list[float]]]
    passes: dict[str, int]


def plan_corpus(
    cfg: CapacityConfig, rung: Rung, knowledge: KnowledgeSet, scenarios: dict[int, str], tokenizer
) -> CorpusPlan:
    """Documents of every pass (a fresh shuffle per pass, variant r of each biography in pass r, EOS padding to
    whole windows after each knowledge base's passes) and the order that cycles the passes for E epochs (and E2
    for the second knowledge base)."""
    parts = []  # (scenario, paragraph ids, epochs)
    for scenario, epochs in (
        ("bios" if not rung.second_people else "first", cfg.exposures),
        ("second", rung.second_exposures),
    ):
        ids = [p for p, s in scenarios.items() if s == scenario]
        if ids:
            parts.append((scenario, ids, epochs))
    L, B = cfg.seq_len, cfg.global_batch
    docs: list[str] = []
    order_parts: list[np.ndarray] = []
    exposures: dict[str, tuple[list[float], list[float]]] = {}
    first_instance = 0
    position = 0  # instances of the order so far
    for scenario, ids, epochs in parts:
        n_passes = _passes(cfg, epochs)
        pass_tokens = []
        for r in range(n_passes):
            order = list(ids)
            random.Random(f"capacity-{cfg.seed}-{scenario}-pass{r}").shuffle(order)
            texts = [knowledge[p].variant(r % knowledge[p].n_variants) for p in order]
            lengths = [len(ids_) + 1 for ids_ in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            docs += texts
            pass_tokens.append(sum(lengths))
        pad = -sum(pass_tokens) % L
        docs += [""] * pad  # an empty document is one EOS token: the passes end on a window boundary
        cycle_tokens = sum(pass_tokens) + pad
        cycle_instances = cycle_tokens // L
        # Epoch e (1-based) ends inside cycle (e - 1) // n_passes, after its pass.
        ends = [0.0]
        for e in range(1, epochs + 1):
            cycle, r = divmod(e - 1, n_passes)
            tokens = cycle * cycle_tokens + sum(pass_tokens[: r + 1]) + (pad if r == n_passes - 1 else 0)
            ends.append(tokens / L)
        needed = int(math.ceil(ends[-1]))
        cycled = np.arange(needed) % cycle_instances + first_instance
        exposures[scenario] = ([(position + x) / B for x in ends], [float(e) for e in range(epochs + 1)])
        order_parts.append(cycled)
        position += needed
        first_instance += cycle_instances
    order = np.concatenate(order_parts)
    # Whole batches only: the end of the last epoch may be cut, which the exposures at the last step show.
    total_steps = len(order) // B
    if total_steps < 1:
        raise UserError(
            f"rung {rung.name}: {len(order)} windows of {L} tokens make no global batch of {B}; "
            "more people, exposures or a smaller global_batch"
        )
    passes = {s: _passes(cfg, e) for s, _, e in parts}
    return CorpusPlan(docs, order[: total_steps * B], first_instance, total_steps, exposures, passes)


def build_corpus_for(
    cfg: CapacityConfig, rung: Rung, knowledge: KnowledgeSet, scenarios: dict[int, str], tokenizer_dir: Path, out: Path
) -> Corpus:
    """The rung's corpus (`plan_corpus`), tokenized by `build_corpus` with its order file and epochs.json; built
    once per number of people."""
    corpus_dir = out / "corpora" / rung.data_name
    meta_file = corpus_dir / "epochs.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return Corpus(corpus_dir, meta["total_steps"], {k: tuple(v) for k, v in meta["exposures"].items()})
    plan = plan_corpus(cfg, rung, knowledge, scenarios, load_tokenizer(str(tokenizer_dir)))
    (out / "corpora").mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(corpus_dir)
    try:
        jsonl = kit.write_documents(tmp / "documents.jsonl", plan.documents)
        info = build_corpus(jsonl, str(tokenizer_dir), cfg.seq_len, tmp / "corpus", seed=cfg.seed, show_progress=False)
        jsonl.unlink()
        if info["n_instances"] != plan.instances:
            raise RuntimeError(f"corpus of {rung.name}: {info['n_instances']} instances, expected {plan.instances}")
        built = tmp / "corpus"
        write_global_indices(built / "global_indices.npy", plan.order)
        epochs = {"total_steps": plan.total_steps, "exposures": plan.exposures, "passes": plan.passes}
        write_bytes_atomic(built / "epochs.json", (json.dumps(epochs, indent=1) + "\n").encode())
        replace_dir(built, corpus_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Corpus(corpus_dir, plan.total_steps, plan.exposures)


def parameter_counts(checkpoint_dir: Path) -> tuple[int, int]:
    """(total, non-embedding) parameters of a checkpoint's model; a weight tied between the input embedding
    and the LM head counts once, as embedding."""
    return _count_parameters(AutoConfig.from_pretrained(str(checkpoint_dir)))


def planned_parameters(cfg: CapacityConfig, model: ModelSpec) -> tuple[int, int]:
    """(total, non-embedding) parameters the model will have with a `tokenizer_vocab`-entry tokenizer."""
    # token ids only need to lie inside the vocabulary here
    shape = model.shape.architecture(cfg.tokenizer_vocab, cfg.seq_len, eos_token_id=0, pad_token_id=1)
    arch = dataclasses.replace(load_catalog().family("tiny").architecture, **shape)
    return _count_parameters(hf_config(arch))


def _count_parameters(config) -> tuple[int, int]:
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = {
        id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
    }
    return total, total - sum(p.numel() for p in embedding.values())


def build_model(cfg: CapacityConfig, model: ModelSpec, tokenizer_dir: Path, out: Path) -> Path:
    """The model's random initialisation (the same for every rung of the model)."""
    meta = {
        "family": "capacity",
        "model": model.name,
        "global_batch_size": cfg.global_batch,
        "seq_len": cfg.seq_len,
        "tokens_per_step": cfg.global_batch * cfg.seq_len,
    }
    return kit.tiny_model(out / "models" / model.name, tokenizer_dir, model.shape, cfg.seq_len, cfg.seed, meta)


def rung_start(cfg: CapacityConfig, model_dir: Path, total_steps: int, dest: Path) -> Path:
    """The model's initialisation with the rung's learning-rate schedule (warm-up, cosine over the rung's steps)
    in its checkpoint.json; weight files are hard links to the model's."""
    schedule = {
        "kind": "cosine",
        "peak_lr": cfg.peak_lr,
        "alpha_f": cfg.alpha_f,
        "t_max": total_steps,
        "warmup_steps": max(1, round(cfg.warmup_fraction * total_steps)),
    }
    meta = json.loads((model_dir / CHECKPOINT_JSON).read_text())
    meta.update(lr_schedule=schedule, optimizer={**meta.get("optimizer", {}), "weight_decay": cfg.weight_decay})
    meta.pop("format_version", None)
    if (dest / CHECKPOINT_JSON).is_file() and {
        k: v for k, v in json.loads((dest / CHECKPOINT_JSON).read_text()).items() if k != "format_version"
    } == meta:
        return dest
    tmp = staging_dir(dest)
    try:
        for f in model_dir.iterdir():
            if f.is_file() and f.name != CHECKPOINT_JSON:
                try:
                    (tmp / f.name).hardlink_to(f)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        mark_complete(tmp, meta)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def eval_steps(cfg: CapacityConfig, corpus: Corpus) -> list[int]:
    """The run steps where each knowledge base has seen its facts `eval_exposures` times (rounded up to a
    whole update), plus where it reached all its epochs."""
    steps = {0, corpus.total_steps}
    for knots_steps, knots_exposures in corpus.exposures.values():
        top = knots_exposures[-1]
        for x in [*cfg.eval_exposures, top]:
            if x <= top:
                steps.add(min(corpus.total_steps, int(math.ceil(np.interp(x, knots_exposures, knots_steps) - 1e-9))))
    return sorted(steps)


def plan(cfg: CapacityConfig) -> list[dict[str, Any]]:
    """What each rung will train, before anything is built: parameters, people, epochs, and estimated tokens
    and training FLOPs (6 × parameters × tokens). Tokens per person are measured with a BPE of the configured
    size trained on the first (at most 2,000) people only, so a large set's real count is somewhat higher."""
    sample = generate_bios(dataclasses.replace(cfg.bios_spec(min(cfg.total_people, 2000)), paraphrases=0))
    texts = [p.text for p in sample.paragraphs]
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(texts, cfg.tokenizer_vocab, Path(tmp) / "tokenizer")
        tokenizer = load_tokenizer(str(Path(tmp) / "tokenizer"))
        tokens_per_person = (
            float(np.mean([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])) + 1
        )
    rows = []
    for rung in cfg.rungs():
        total, non_embedding = planned_parameters(cfg, rung.model)
        epochs = rung.people * cfg.exposures + rung.second_people * rung.second_exposures
        tokens = epochs * tokens_per_person
        rows.append(
            {
                "rung": rung.name,
                "parameters": total,
                "non_embedding_parameters": non_embedding,
                "people": rung.people + rung.second_people,
                "bits_offered": (rung.people + rung.second_people) * sum(a.bits for a in sample.value_space.attributes),
                "tokens": tokens,
                "steps": tokens / (cfg.global_batch * cfg.seq_len),
                "flops": 6 * total * tokens,
            }
        )
    return rows


# ---- runs -----------------------------------------------------------------------------------------------------


def run_rung(cfg: CapacityConfig, rung: Rung, knowledge: KnowledgeSet, tokenizer_dir: Path, out: Path) -> Path:
    """One rung's run directory: reused when complete, resumed when interrupted."""
    kb, scenarios = rung_knowledge(knowledge, rung, cfg.first_people)
    kb_path = out / "knowledge" / f"{rung.data_name}.json"
    if not kb_path.is_file():
        write_bytes_atomic(kb_path, dumps_knowledge(knowledge_to_document(kb)))
    corpus = build_corpus_for(cfg, rung, kb, scenarios, tokenizer_dir, out)
    model_dir = build_model(cfg, rung.model, tokenizer_dir, out)
    start = rung_start(cfg, model_dir, corpus.total_steps, out / "start" / rung.name)
    run_cfg = rung_config(cfg, rung, start, kb_path, corpus, out / "runs" / rung.name)
    status = kit.earlier_status(run_cfg, f"configuration of rung {rung.name}", "choose another --out or remove it")
    if status == "complete":
        return Path(run_cfg.output_dir)
    total, non_embedding = parameter_counts(start)
    capacity = rundir.CapacityManifest(
        model=rung.model.name,
        parameters=total,
        non_embedding_parameters=non_embedding,
        attributes=tuple((a.name, a.size) for a in kb.value_space.attributes),
        exposures={s: (tuple(st), tuple(ex)) for s, (st, ex) in corpus.exposures.items()},
    )
    say(
        f"rung {rung.name}: {total:,} parameters ({non_embedding:,} non-embedding), {len(kb)} people, "
        f"{corpus.total_steps} steps of {cfg.global_batch} × {cfg.seq_len} tokens" + (" (resuming)" if status else ""),
        prefix="capacity:",
    )
    return kit.train(
        run_cfg,
        status,
        scenarios=scenarios,
        probe_kinds=cfg.probe_kinds,
        manifest={rundir.CAPACITY: capacity.to_json()},
    )


def rung_config(
    cfg: CapacityConfig, rung: Rung, start: Path, knowledge: Path, corpus: Corpus, run_dir: Path
) -> ExperimentConfig:
    """The run of one rung: no injections (the knowledge is the corpus), probes logged at `eval_steps`."""
    return config_from_dict(
        dict(
            checkpoint=str(start),
            knowledge=str(knowledge),
            schedule="none",
            data=str(corpus.path),
            total_steps=corpus.total_steps,
            global_batch=cfg.global_batch,
            micro_batch=cfg.micro_batch or cfg.global_batch,
            deepspeed_config=cfg.deepspeed_config,
            precision=cfg.precision,
            eval_steps=eval_steps(cfg, corpus),
            eval_batch_tokens=cfg.eval_batch_tokens,
            output_dir=str(run_dir),
            seed=cfg.seed,
            keep_checkpoints=1,
            checkpoint_interval=min(cfg.checkpoint_interval, corpus.total_steps),
            log_flush_steps=10,
            label=rung.name,
        ),
        f"rung {rung.name}",
    )


def run_capacity(cfg: CapacityConfig, out: Path) -> CapacityAnalysis:
    """The whole ladder into `out`, then its analysis (OUT/analysis: capacity.json as `analysis capacity --json`
    prints it plus `wall_seconds`, and the figures; OUT/report/report.html). Returns the CapacityAnalysis."""
    t0 = time.perf_counter()
    check_resumable_dir(out, marker="capacity.yaml", what="capacity experiment")
    out.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    saved = out / "capacity.yaml"
    if saved.is_file() and saved.read_text() != resolved:
        raise UserError(f"{out} holds a capacity experiment with another configuration ({saved}); choose another --out")
    write_bytes_atomic(saved, resolved.encode())
    say(f"{cfg.name}: {len(cfg.rungs())} rungs into {out}", prefix="capacity:")
    knowledge = build_knowledge(cfg, out)
    tokenizer_dir = build_tokenizer(cfg, knowledge, out)
    run_dirs = [run_rung(cfg, rung, knowledge, tokenizer_dir, out) for rung in cfg.rungs()]
    analysis = analyse_capacity([load_run(p) for p in run_dirs], CapacityOptions())
    record = analysis.record()
    record["wall_seconds"] = round(time.perf_counter() - t0, 1)
    plot_capacity(analysis, out / "analysis")
    write_bytes_atomic(
        out / "analysis" / "capacity.json", (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()
    )
    write_report(run_dirs, out / "report")
    return analysis


def capacity(
    profile: Annotated[
        str,
        typer.Option(
            help="Shipped ladder (configs/capacity/): quick (a CPU, about a minute), cpu (a 2-core CPU, about 5.5 "
            "minutes), gpu (16M-88M parameters, for a GPU)."
        ),
    ] = "cpu",
    config: Annotated[Path | None, typer.Option("--config", help="A capacity YAML file instead of a profile.")] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the rungs, analysis and report go (rerun to continue).")
    ] = Path("capacity_out"),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: KEY=VALUE (YAML value).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rungs with estimated tokens and FLOPs; train nothing.")
    ] = False,
) -> None:
    """Knowledge capacity: models of several sizes trained from scratch on generated biographies; stored bits
    against parameters, memorization, overwriting."""
    cfg = load_capacity_config(profile, config, overrides)
    if dry_run:
        rows = plan(cfg)
        table = Table(
            title=f"{cfg.name}: {len(rows)} rungs, {cfg.exposures} exposures (tokens and FLOPs estimated)",
            title_justify="left",
        )
        for name in ("rung", "parameters", "non-embedding", "people", "bits offered", "≈ tokens", "≈ steps", "≈ FLOPs"):
            table.add_column(name, justify="left" if name == "rung" else "right")
        for r in rows:
            table.add_row(
                r["rung"],
                f"{r['parameters']:,}",
                f"{r['non_embedding_parameters']:,}",
                f"{r['people']:,}",
                f"{r['bits_offered']:,.0f}",
                f"{r['tokens']:.3g}",
                f"{r['steps']:,.0f}",
                f"{r['flops']:.2g}",
            )
        console = Console() if Console().is_terminal else Console(width=170)
        console.print(table)
        console.print(f"total ≈ {sum(r['flops'] for r in rows):.2g} training FLOPs (probe evaluation not included)")
        return
    analysis = run_capacity(cfg, out)
    wall = json.loads((out / "analysis" / "capacity.json").read_text())["wall_seconds"]
    console = Console() if Console().is_terminal else Console(width=170)
    print_capacity(analysis, console)
    console.print(f"{wall:.0f} s; analysis: {out / 'analysis'}   report: {out / 'report' / 'report.html'}")
