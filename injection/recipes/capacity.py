"""`injection capacity`: how many bits of knowledge models of several sizes store, measured as Allen-Zhu & Li
measure it ("Physics of Language Models: Part 3.3", 2024), and how many facts they recall exactly (Lu et al. 2024).

A ladder of runs, each an ordinary run directory trained by the engine of `injection run` from random
initialisation on a corpus made only of generated biographies (`fictional_knowledge.bios`, bioS(N) or bioS^simple):

    1. people      one biography set (random access: nothing is held for all people) with the most people any rung
                   needs; rungs with fewer use its first N, the second knowledge base of an overwrite rung its last
    2. tokenizer   a byte-level BPE trained on the biographies of a sample of people
    3. corpora     per set of people: `passes` passes over them, each in a fresh order with a fresh draw of every
                   biography (bioS^simple: the same biography), streamed into token files; per rung an order file
                   that cycles through the passes for its E epochs
    4. models      one random initialisation per model of the ladder: GPT-2 with rotary embedding (the paper's
                   family: non-gated MLP) or OLMo (SwiGLU)
    5. runs        every rung, probes logged at chosen numbers of exposures (the name and every value of a person
                   scored inside their biography, plus isolated `mem` / `sem` sentences), for all people or a
                   uniform sample; a rerun of the command skips finished rungs and resumes interrupted ones
    6. analysis    `analysis capacity` over the ladder and the HTML report

Rungs vary the number of people as well as the model, so that some offer more information than their model can
hold: a model's capacity is read where its stored bits stop growing with N. Epoch rungs (`epochs:`) train one
model on one set of people with schedules that end at different numbers of exposures (Lu et al.'s capacity
against epochs). Profiles: configs/capacity/quick.yaml and cpu.yaml (smoke tests on a CPU), gpu.yaml (1,000
exposures, where 2 bits per parameter is published) and gpu100.yaml (100 exposures, about 1 bit).

Memory does not grow with the number of people beyond one int32 per person (a pass's order): people, corpora and
probes are generated and written one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
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

from analysis.capacity import CONTEXT_KIND, NAME_KIND, CapacityAnalysis, CapacityOptions, analyse_capacity
from analysis.load import load_run
from analysis.plots import plot_capacity
from analysis.report import print_capacity, write_report
from fictional_knowledge.bios import ATTRIBUTES, GENDER, Bios, BiosSpec, write_people
from fictional_knowledge.encode import target_span
from harness import rundir
from harness.atomic import replace_dir, staging_dir, write_bytes_atomic, write_json_atomic
from harness.errors import UserError
from harness.paths import check_resumable_dir
from harness.progress import say
from harness.tokenizers import load_tokenizer, train_bpe_tokenizer
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import CHECKPOINT_JSON, mark_complete
from injection.checkpoints.olmo import hf_config as olmo_hf_config
from injection.checkpoints.pythia import hf_config as gpt_neox_hf_config
from injection.engine.config import ExperimentConfig, config_from_dict
from injection.engine.evaluate import ProbeItem
from injection.recipes import kit

#: H100 SXM's dense bf16 peak (FLOP/s), against which `mfu` turns FLOPs into GPU-hours.
H100_PEAK_FLOPS = 989e12
#: People whose biographies train the tokenizer and measure tokens per person.
SAMPLE_PEOPLE = 4000


@dataclass
class ModelSpec:
    """One model of the ladder."""

    name: str
    """Label of the model in tables and run names (e.g. g256-L4)."""
    d_model: int
    n_layers: int
    n_heads: int
    architecture: Literal["gpt2", "olmo"] = "gpt2"
    """gpt2: GPT-2 with rotary embedding (LayerNorm, GELU MLP without a gate, biases, tied embeddings), the family
    the published capacity figures were measured on; olmo: the `tiny` family (SwiGLU, non-parametric layer norm)."""
    mlp_ratio: int | None = None
    """MLP width = mlp_ratio × d_model (null: 4 for gpt2; 8 for olmo, whose SwiGLU gives each branch half)."""
    people: list[int] | None = None
    """This model's numbers of people (null = the ladder's `people`), e.g. around what it can store."""

    @property
    def shape(self) -> kit.ModelShape | kit.GPT2Shape:
        if self.architecture == "gpt2":
            return kit.GPT2Shape(self.d_model, self.n_layers, self.n_heads, self.mlp_ratio or 4)
        return kit.ModelShape(self.d_model, self.n_layers, self.n_heads, self.mlp_ratio or 8)


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
class EpochSpec:
    """Extra rungs for capacity against epochs (Lu et al.): one model and one set of people trained by separate
    runs whose schedules end at different numbers of exposures."""

    models: list[str]
    """Names of the models that get epoch rungs."""
    people: int
    exposures: list[int]
    """The numbers of exposures the schedules end at (the ladder's own `exposures` is one more point)."""


def _positive(where: str, name: str, value: int | float) -> None:
    if not value > 0:
        raise UserError(f"{where}: field {name!r} must be > 0, got {value}")


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
    """Numbers of exposures at which every probe is logged (0, 90 % of E and the end are always logged)."""
    bios: BiosSpec = field(default_factory=BiosSpec)
    """Style, name pools and value-set sizes of the biographies (people and seed come from the ladder)."""
    overwrite: OverwriteSpec | None = None
    epochs: EpochSpec | None = None
    tokenizer_vocab: int = 1024
    """Entries of the byte-level BPE trained on the biographies."""
    seq_len: int = 256
    """Tokens per training row."""
    global_batch: int = 16
    micro_batch: int | None = None
    """Rows per forward pass (null = the whole global batch)."""
    min_steps: int = 0
    """A rung with fewer updates than this halves its global batch until it has them (or reaches micro_batch)."""
    peak_lr: float = 3e-3
    warmup_steps: int | None = None
    """Linear warm-up updates (null: warmup_fraction of a rung's updates), then cosine decay to alpha_f × peak_lr."""
    warmup_fraction: float = 0.05
    alpha_f: float = 0.1
    weight_decay: float = 0.1
    adam_betas: list[float] | None = None
    """AdamW's (β1, β2) (null: the model family's)."""
    adam_eps: float | None = None
    """AdamW's ε (null: the model family's)."""
    corpus_passes: int = 0
    """Passes written to a corpus, each a fresh order and a fresh draw of every biography; epochs cycle through
    them (0 = one per epoch: every exposure a fresh draw)."""
    probe_people: int | None = None
    """People probed per knowledge base: a uniform sample (null: all). Totals are estimated from the sample."""
    probe_kinds: list[str] = field(default_factory=lambda: ["mem", "sem"])
    """Isolated probes logged besides the name and the values in context: mem (the biography's sentence on its
    own) and/or sem (a held-out wording of the same question)."""
    deepspeed_config: str = "cpu"
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_batch_tokens: int = 16384
    checkpoint_interval: int = 100
    mfu: float = 0.3
    """Model FLOPs utilisation assumed by the dry run's GPU-hours (of an H100's dense bf16 peak)."""
    seed: int = 0

    def validate(self, where: str) -> None:
        """Refuses, naming `where` and the field, a profile the ladder cannot train."""
        self._validate_models(where)
        self._validate_training(where)
        self._validate_extra_rungs(where)
        self.bios_spec(self.total_people).check(f"{where}: field 'bios'")

    def _validate_models(self, where: str) -> None:
        if not self.models:
            raise UserError(f"{where}: field 'models' is empty")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise UserError(
                f"{where}: field 'models' has two models named {next(n for n in names if names.count(n) > 1)!r}"
            )
        for m in self.models:
            for f in ("d_model", "n_layers", "n_heads"):
                _positive(where, f"models.{m.name}.{f}", getattr(m, f))
            if m.mlp_ratio is not None:
                _positive(where, f"models.{m.name}.mlp_ratio", m.mlp_ratio)
            if m.d_model % m.n_heads:
                raise UserError(
                    f"{where}: model {m.name!r}: d_model {m.d_model} is not a multiple of n_heads {m.n_heads}"
                )
            if m.architecture == "gpt2" and (m.d_model // m.n_heads) % 2:
                raise UserError(f"{where}: model {m.name!r}: rotary embedding needs an even head size")
        for m in self.models:
            if not self.people_of(m):
                raise UserError(f"{where}: model {m.name!r} has no numbers of people (field 'people' is empty)")
            for n in self.people_of(m):
                _positive(where, f"people of {m.name}", n)

    def _validate_training(self, where: str) -> None:
        _positive(where, "exposures", self.exposures)
        for x in self.eval_exposures:
            if not 0 <= x <= self.exposures:
                raise UserError(f"{where}: field 'eval_exposures' has {x:g}, outside 0..exposures ({self.exposures})")
        for name in ("tokenizer_vocab", "seq_len", "global_batch", "peak_lr", "eval_batch_tokens", "mfu"):
            _positive(where, name, getattr(self, name))
        if self.micro_batch is not None and (self.micro_batch < 1 or self.global_batch % self.micro_batch):
            raise UserError(
                f"{where}: field 'micro_batch' ({self.micro_batch}) must divide global_batch ({self.global_batch})"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"{where}: field 'warmup_fraction' must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_steps is not None and self.warmup_steps < 1:
            raise UserError(f"{where}: field 'warmup_steps' must be >= 1, got {self.warmup_steps}")
        if self.adam_betas is not None and (len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas)):
            raise UserError(f"{where}: field 'adam_betas' must be two numbers in [0, 1), got {self.adam_betas}")
        if not self.probe_kinds or set(self.probe_kinds) - {"mem", "sem"}:
            raise UserError(f"{where}: field 'probe_kinds' must list mem and/or sem, got {self.probe_kinds}")
        if self.probe_people is not None:
            _positive(where, "probe_people", self.probe_people)
        for name in ("corpus_passes", "min_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{where}: field {name!r} must be >= 0, got {getattr(self, name)}")

    def _validate_extra_rungs(self, where: str) -> None:
        names = [m.name for m in self.models]
        for extra, fields in ((self.overwrite, ("people", "second_people", "second_exposures")), (self.epochs, ())):
            if extra is None:
                continue
            label = "overwrite" if extra is self.overwrite else "epochs"
            unknown = [m for m in extra.models if m not in names]
            if unknown:
                raise UserError(
                    f"{where}: field '{label}.models' names {unknown[0]!r}, not a model of the ladder "
                    f"({', '.join(names)})"
                )
            for name in fields:
                _positive(where, f"{label}.{name}", getattr(extra, name))
        if self.epochs is not None:
            _positive(where, "epochs.people", self.epochs.people)
            if not self.epochs.exposures or any(not 0 < e < self.exposures for e in self.epochs.exposures):
                raise UserError(
                    f"{where}: field 'epochs.exposures' must list numbers of exposures in 1..{self.exposures - 1} "
                    f"(the ladder's own {self.exposures} is the last point), got {self.epochs.exposures}"
                )

    # ---- derived -----------------------------------------------------------------------------------------

    def bios_spec(self, people: int) -> BiosSpec:
        return dataclasses.replace(self.bios, people=people, seed=self.seed, paraphrases=0)

    def people_of(self, model: ModelSpec) -> list[int]:
        return list(model.people) if model.people is not None else list(self.people)

    @property
    def first_people(self) -> int:
        """People of the largest first knowledge base (the second one's people come after them)."""
        firsts = [n for m in self.models for n in self.people_of(m)]
        firsts += [self.overwrite.people] if self.overwrite else []
        firsts += [self.epochs.people] if self.epochs else []
        return max(firsts)

    @property
    def total_people(self) -> int:
        return self.first_people + (self.overwrite.second_people if self.overwrite else 0)

    def rungs(self) -> list[Rung]:
        out = [Rung(m, n, self.exposures) for m in self.models for n in self.people_of(m)]
        if self.overwrite is not None:
            o = self.overwrite
            out += [
                Rung(m, o.people, self.exposures, o.second_people, o.second_exposures)
                for m in self.models
                if m.name in o.models
            ]
        if self.epochs is not None:
            e = self.epochs
            out += [
                Rung(m, e.people, x, epoch_rung=True) for m in self.models if m.name in e.models for x in e.exposures
            ]
        return out

    def passes(self, exposures: int) -> int:
        """Passes written for a knowledge base trained `exposures` epochs at most."""
        return min(exposures, self.corpus_passes) if self.corpus_passes else exposures

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Rung:
    model: ModelSpec
    people: int
    exposures: int
    second_people: int = 0
    second_exposures: int = 0
    epoch_rung: bool = False

    @property
    def data_name(self) -> str:
        """The people the rung trains on (shared by every rung with the same people)."""
        return f"N{self.people}" + (f"+N{self.second_people}" if self.second_people else "")

    @property
    def schedule_name(self) -> str:
        """The people and epochs: one order file (shared by the rungs of every model with them)."""
        return f"{self.data_name}-E{self.exposures}" + (f"+E{self.second_exposures}" if self.second_people else "")

    @property
    def name(self) -> str:
        return f"{self.model.name}-{self.data_name}" + (f"-E{self.exposures}" if self.epoch_rung else "")

    def knowledge_bases(self, first_people: int) -> list[tuple[str, int, int, int]]:
        """(scenario, first person, people, epochs) of each knowledge base, in training order."""
        if not self.second_people:
            return [("bios", 0, self.people, self.exposures)]
        return [
            ("first", 0, self.people, self.exposures),
            ("second", first_people, self.second_people, self.second_exposures),
        ]


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
    clash = [k for k in ("people", "seed", "paraphrases") if isinstance(bios, dict) and k in bios]
    if clash:
        hint = "passes are set by corpus_passes" if clash[0] == "paraphrases" else f"use the top-level {clash[0]}"
        raise UserError(f"{where}: field 'bios.{clash[0]}' is set by the ladder: {hint}")
    return kit.typed_profile(CapacityConfig, data, where)


# ---- people, tokenizer, probes --------------------------------------------------------------------------------


def build_tokenizer(cfg: CapacityConfig, bios: Bios, out: Path) -> Path:
    """A byte-level BPE trained on up to four draws of the biographies of the first SAMPLE_PEOPLE people."""

    def texts() -> list[str]:
        draws = min(4, cfg.passes(cfg.exposures))
        return [
            bios.biography(p, d).text
            for p in bios.people(0, min(bios.spec.people, SAMPLE_PEOPLE))
            for d in range(draws)
        ]

    return kit.bpe_tokenizer(texts, cfg.tokenizer_vocab, out / "tokenizer")


def probed_people(cfg: CapacityConfig, first: int, people: int, scenario: str) -> np.ndarray:
    """The people of a knowledge base that are probed: all, or a uniform sample of `probe_people` (sorted)."""
    if cfg.probe_people is None or cfg.probe_people >= people:
        return np.arange(first, first + people)
    rng = np.random.default_rng([cfg.seed, 0x5A3B1E, first, people, sum(map(ord, scenario))])
    return np.sort(rng.choice(people, cfg.probe_people, replace=False)) + first


def rung_people(cfg: CapacityConfig, rung: Rung) -> tuple[list[int], dict[int, str], dict[str, int]]:
    """The probed people in paragraph order (paragraph i is person people[i]), each paragraph's scenario, and
    the people of each knowledge base."""
    people: list[int] = []
    scenarios: dict[int, str] = {}
    sizes: dict[str, int] = {}
    for scenario, first, n, _ in rung.knowledge_bases(cfg.first_people):
        for person in probed_people(cfg, first, n, scenario).tolist():
            scenarios[len(people)] = scenario
            people.append(person)
        sizes[scenario] = n
    return people, scenarios, sizes


def write_probe_knowledge(bios: Bios, people: list[int], path: Path) -> Path:
    """The probed people as a knowledge file (their isolated mem / sem probes), paragraph i being person people[i];
    written once."""
    return path if path.is_file() else write_people(path, bios, people)


def context_probes(
    bios: Bios, people: list[int], scenarios: dict[int, str], tokenizer, eos: int
) -> Iterator[ProbeItem]:
    """Per probed person, draw 0 of their biography (a document of the corpus's first pass) after the end-of-text
    token that precedes every training document: `name` probe 0 scores the full name that opens it, `ctx` probe j
    value j of ATTRIBUTES and then the gender (its first pronoun), each after everything before it. Targets are the
    tokens that overlap the part, in the document's own tokenization."""
    for paragraph, person_index in enumerate(people):
        bio = bios.biography(bios.person(person_index), 0)
        enc = tokenizer(bio.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        spans = [(NAME_KIND, 0, bio.name_span)] + [
            (CONTEXT_KIND, j, span) for j, span in enumerate([*bio.value_spans, bio.gender_span])
        ]
        for kind, index, (start, end) in spans:
            first, stop = target_span([(s, min(e, end)) if s < end else (s, s) for s, e in offsets], start, end)
            yield ProbeItem(
                paragraph, scenarios[paragraph], kind, index, tuple([eos] + ids[:stop]), first + 1, stop + 1
            )


def context_values() -> tuple[tuple[str, str | None], ...]:
    """(name, attribute it follows) of what `ctx` probe j scores."""
    return (*((a.name, a.derived_from) for a in ATTRIBUTES), (GENDER, None))


# ---- corpora ----------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """A rung's corpus and where its epochs end."""

    path: Path
    instances: int
    """Length of the order (instances of seq_len tokens over every epoch)."""
    exposures: dict[str, tuple[list[float], list[float]]]
    """scenario -> (order positions where its epochs end, epochs completed there), in instances."""

    def steps(self, batch: int) -> int:
        return self.instances // batch

    def exposures_in_steps(self, batch: int) -> dict[str, tuple[list[float], list[float]]]:
        return {s: ([x / batch for x in pos], ep) for s, (pos, ep) in self.exposures.items()}


def _pass_order(cfg: CapacityConfig, scenario: str, first: int, n: int, r: int) -> np.ndarray:
    order = np.arange(first, first + n, dtype=np.int32 if first + n < 2**31 else np.int64)
    np.random.default_rng([cfg.seed, 0xC0DE, sum(map(ord, scenario)), r]).shuffle(order)
    return order


def build_tokens(cfg: CapacityConfig, rung: Rung, bios: Bios, tokenizer_dir: Path, out: Path) -> Path:
    """The token files of the rung's people: per knowledge base, its passes (pass r: every person once, in a
    fresh order, biography draw r), each padded with EOS to whole instances; `passes.json` records where each
    pass lies. Shared by every rung with the same people (the passes cover the longest schedule among them)."""
    directory = out / "corpora" / rung.data_name
    if (directory / "passes.json").is_file():
        return directory
    tokenizer = load_tokenizer(str(tokenizer_dir))
    longest = max((r.exposures, r.second_exposures) for r in cfg.rungs() if r.data_name == rung.data_name)
    (out / "corpora").mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(directory)
    try:
        writer = kit.CorpusWriter(tmp, cfg.seq_len, tokenizer.eos_token_id, len(tokenizer))
        passes: dict[str, list[list[int]]] = {}
        for (scenario, first, n, _), epochs in zip(rung.knowledge_bases(cfg.first_people), longest):
            passes[scenario] = []
            for r in range(cfg.passes(epochs)):
                start = writer.instances
                order = _pass_order(cfg, scenario, first, n, r)
                for lo in range(0, n, 1024):
                    texts = [bios.biography(bios.person(int(i)), r).text for i in order[lo : lo + 1024]]
                    writer.add(tokenizer(texts, add_special_tokens=False)["input_ids"])
                writer.pad()
                passes[scenario].append([start, writer.instances])
        writer.close()
        meta = {
            "paths": writer.paths,
            "counts": writer.counts,
            "dtype": np.dtype(writer.dtype).name,
            "eos": tokenizer.eos_token_id,
            "passes": passes,
            "tokens": writer.tokens,
        }
        write_json_atomic(tmp / "passes.json", meta)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def build_corpus_for(cfg: CapacityConfig, rung: Rung, bios: Bios, tokenizer_dir: Path, out: Path) -> Corpus:
    """The rung's corpus: the token files of its people and an order in which epoch e of a knowledge base reads
    pass (e − 1) mod passes; the second knowledge base's epochs follow the first's."""
    tokens = build_tokens(cfg, rung, bios, tokenizer_dir, out)
    directory = tokens / rung.schedule_name
    epochs_file = directory / "epochs.json"
    if epochs_file.is_file():
        meta = json.loads(epochs_file.read_text())
        return Corpus(directory, meta["instances"], {k: tuple(v) for k, v in meta["exposures"].items()})
    info = json.loads((tokens / "passes.json").read_text())
    ranges: list[tuple[int, int]] = []
    exposures: dict[str, tuple[list[float], list[float]]] = {}
    position = 0
    for scenario, _, _, epochs in rung.knowledge_bases(cfg.first_people):
        passes = info["passes"][scenario]
        ends = [float(position)]
        for e in range(epochs):
            start, stop = passes[e % len(passes)]
            ranges.append((start, stop))
            position += stop - start
            ends.append(float(position))
        exposures[scenario] = (ends, [float(e) for e in range(epochs + 1)])
    tmp = staging_dir(directory)
    try:
        length = kit.write_order(
            tmp,
            tokens,
            info["paths"],
            info["counts"],
            ranges,
            seq_len=cfg.seq_len,
            dtype=info["dtype"],
            eos=info["eos"],
            tokenizer=str(tokenizer_dir),
            seed=cfg.seed,
            extra={"people": rung.data_name, "schedule": rung.schedule_name},
        )
        write_json_atomic(tmp / "epochs.json", {"instances": length, "exposures": exposures})
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Corpus(directory, length, exposures)


def rung_batch(cfg: CapacityConfig, instances: int) -> int:
    """The rung's global batch: `global_batch`, halved while the rung would have fewer than `min_steps` updates
    (never below, nor off a multiple of, micro_batch)."""
    batch, micro = cfg.global_batch, cfg.micro_batch or 1
    while cfg.min_steps and instances // batch < cfg.min_steps and batch // 2 >= micro and (batch // 2) % micro == 0:
        batch //= 2
    return batch


# ---- models -----------------------------------------------------------------------------------------------------


def parameter_counts(checkpoint_dir: Path) -> tuple[int, int]:
    """(total, non-embedding) parameters of a checkpoint's model; a weight tied between the input embedding
    and the LM head counts once, as embedding."""
    return _count_parameters(AutoConfig.from_pretrained(str(checkpoint_dir)))


def planned_parameters(cfg: CapacityConfig, model: ModelSpec) -> tuple[int, int]:
    """(total, non-embedding) parameters the model will have with a `tokenizer_vocab`-entry tokenizer."""
    # token ids only need to lie inside the vocabulary here
    shape = model.shape.architecture(cfg.tokenizer_vocab, cfg.seq_len, eos_token_id=0, pad_token_id=1)
    arch = dataclasses.replace(_architecture("pythia-tiny" if model.architecture == "gpt2" else "tiny"), **shape)
    if model.architecture == "gpt2":
        return _count_parameters(gpt_neox_hf_config(dataclasses.replace(arch, params=None, non_embedding_params=None)))
    return _count_parameters(olmo_hf_config(arch))


@functools.lru_cache(maxsize=2)
def _architecture(family: str):
    """A built-in family's architecture from the catalog (read once: the catalog is large)."""
    return load_catalog().family(family).architecture


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
    meta = {"family": "capacity", "model": model.name, "global_batch_size": cfg.global_batch}
    if model.architecture == "gpt2":
        return kit.gpt2_model(out / "models" / model.name, tokenizer_dir, model.shape, cfg.seq_len, cfg.seed, meta)
    meta.update(seq_len=cfg.seq_len, tokens_per_step=cfg.global_batch * cfg.seq_len)
    return kit.tiny_model(out / "models" / model.name, tokenizer_dir, model.shape, cfg.seq_len, cfg.seed, meta)


def rung_start(cfg: CapacityConfig, model_dir: Path, total_steps: int, batch: int, dest: Path) -> Path:
    """The model's initialisation with the rung's global batch, learning-rate schedule (warm-up, cosine over the
    rung's steps) and AdamW settings in its checkpoint.json; weight files are hard links to the model's."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_fraction * total_steps)
    schedule = {
        "kind": "cosine",
        "peak_lr": cfg.peak_lr,
        "alpha_f": cfg.alpha_f,
        "t_max": total_steps,
        "warmup_steps": max(1, min(warmup, total_steps)),
    }
    meta = json.loads((model_dir / CHECKPOINT_JSON).read_text())
    per_row = meta["tokens_per_step"] // meta["global_batch_size"]
    optimizer = {**meta.get("optimizer", {}), "weight_decay": cfg.weight_decay}
    if cfg.adam_betas is not None:
        optimizer["betas"] = list(cfg.adam_betas)
    if cfg.adam_eps is not None:
        optimizer["eps"] = cfg.adam_eps
    meta.update(lr_schedule=schedule, optimizer=optimizer, global_batch_size=batch, tokens_per_step=batch * per_row)
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


def eval_steps(cfg: CapacityConfig, corpus: Corpus, batch: int) -> list[int]:
    """The run steps where each knowledge base has seen its facts `eval_exposures` times and 90 % of its epochs
    (rounded up to a whole update), plus where it reached all its epochs."""
    total = corpus.steps(batch)
    steps = {0, total}
    for knots_steps, knots_exposures in corpus.exposures_in_steps(batch).values():
        top = knots_exposures[-1]
        for x in [*cfg.eval_exposures, 0.9 * top, top]:
            if x <= top:
                steps.add(min(total, int(math.ceil(np.interp(x, knots_exposures, knots_steps) - 1e-9))))
    return sorted(steps)


# ---- the plan (dry run) -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def tokens_per_person(spec: BiosSpec, vocab: int) -> float:
    """Mean tokens of a biography with its EOS, under a BPE of `vocab` entries trained on two draws of the
    biographies of the first 1,000 people."""
    bios = Bios(dataclasses.replace(spec, people=min(spec.people, 1000)))
    texts = [bios.biography(p, d).text for p in bios.people() for d in range(2)]
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe_tokenizer(texts, vocab, Path(tmp) / "tokenizer")
        tokenizer = load_tokenizer(str(Path(tmp) / "tokenizer"))
        return float(np.mean([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])) + 1


def generate_people(bios: Bios) -> float:
    """Every person of the set and the biography their probes read, one at a time (what the ladder will need);
    returns the seconds it took."""
    t0 = time.perf_counter()
    for person in bios.people():
        bios.biography(person, 0)
    return time.perf_counter() - t0


def plan(cfg: CapacityConfig, generate: bool = True) -> list[dict[str, Any]]:
    """What each rung will train, before anything is built: parameters, people, what the data offers, passes,
    tokens, batch and updates, training FLOPs (6 × parameters + 12 × layers × seq_len × d_model per token) and
    H100-hours at `mfu`. With `generate`, every person of the set is generated first."""
    bios = Bios(cfg.bios_spec(cfg.total_people))
    if generate:
        seconds = generate_people(bios)
        say(f"generated {bios.spec.people:,} people and their probe biographies in {seconds:.0f} s", prefix="capacity:")
    per_person = tokens_per_person(bios.spec, cfg.tokenizer_vocab)
    rows = []
    for rung in cfg.rungs():
        total, non_embedding = planned_parameters(cfg, rung.model)
        documents = sum(n * e for _, _, n, e in rung.knowledge_bases(cfg.first_people))
        tokens = documents * per_person
        batch = rung_batch(cfg, int(tokens // cfg.seq_len))
        per_token = 6 * total + 12 * rung.model.n_layers * cfg.seq_len * rung.model.d_model
        bases = rung.knowledge_bases(cfg.first_people)
        offered = sum(n * math.log2(bios.name_space / n) + n * bios.value_bits for _, _, n, _ in bases)
        rows.append(
            {
                "rung": rung.name,
                "architecture": rung.model.architecture,
                "parameters": total,
                "non_embedding_parameters": non_embedding,
                "people": rung.people + rung.second_people,
                "bits_offered": offered,
                "bits_offered_per_parameter": offered / total,
                "exposures": rung.exposures,
                "passes": cfg.passes(rung.exposures),
                "tokens": tokens,
                "global_batch": batch,
                "steps": tokens / (batch * cfg.seq_len),
                "flops": per_token * tokens,
                "h100_hours": per_token * tokens / (cfg.mfu * H100_PEAK_FLOPS) / 3600,
                "data": rung.data_name,
                "token_bytes": 2 * per_person * sum(n * cfg.passes(e) for _, _, n, e in bases),
                "order_bytes": 4 * tokens / cfg.seq_len,
            }
        )
    return rows


# ---- runs -----------------------------------------------------------------------------------------------------


def run_rung(cfg: CapacityConfig, rung: Rung, bios: Bios, tokenizer_dir: Path, out: Path) -> Path:
    """One rung's run directory: reused when complete, resumed when interrupted."""
    people, scenarios, sizes = rung_people(cfg, rung)
    kb_path = write_probe_knowledge(bios, people, out / "knowledge" / f"{rung.data_name}.json")
    corpus = build_corpus_for(cfg, rung, bios, tokenizer_dir, out)
    batch = rung_batch(cfg, corpus.instances)
    steps = corpus.steps(batch)
    if steps < 1:
        raise UserError(
            f"rung {rung.name}: {corpus.instances} windows of {cfg.seq_len} tokens make no global batch of {batch}; "
            "more people, exposures or a smaller global_batch"
        )
    model_dir = build_model(cfg, rung.model, tokenizer_dir, out)
    start = rung_start(cfg, model_dir, steps, batch, out / "start" / rung.name)
    run_cfg = rung_config(cfg, rung, start, kb_path, corpus, batch, out / "runs" / rung.name)
    status = kit.earlier_status(run_cfg, f"configuration of rung {rung.name}", "choose another --out or remove it")
    if status == "complete":
        return Path(run_cfg.output_dir)
    total, non_embedding = parameter_counts(start)
    values = context_values()
    capacity = rundir.CapacityManifest(
        model=rung.model.name,
        parameters=total,
        non_embedding_parameters=non_embedding,
        attributes=tuple((a.name, a.size) for a in bios.value_space.attributes),
        exposures={s: (tuple(st), tuple(ex)) for s, (st, ex) in corpus.exposures_in_steps(batch).items()},
        people=sizes,
        name_space=bios.name_space,
        context=tuple((name, 2 if name == GENDER else bios.value_space.attribute(name).size) for name, _ in values),
        derived={name: source for name, source in values if source},
    )
    say(
        f"rung {rung.name}: {total:,} parameters ({non_embedding:,} non-embedding), {sum(sizes.values()):,} people "
        f"({len(people):,} probed), {steps} steps of {batch} × {cfg.seq_len} tokens"
        + (" (resuming)" if status else ""),
        prefix="capacity:",
    )
    tokenizer = load_tokenizer(str(tokenizer_dir))
    return kit.train(
        run_cfg,
        status,
        scenarios=scenarios,
        probe_kinds=cfg.probe_kinds,
        manifest={rundir.CAPACITY: capacity.to_json()},
        extra_probes=lambda: list(context_probes(bios, people, scenarios, tokenizer, tokenizer.eos_token_id)),
    )


def rung_config(
    cfg: CapacityConfig, rung: Rung, start: Path, knowledge: Path, corpus: Corpus, batch: int, run_dir: Path
) -> ExperimentConfig:
    """The run of one rung: no injections (the knowledge is the corpus), probes logged at `eval_steps`."""
    steps = corpus.steps(batch)
    return config_from_dict(
        dict(
            checkpoint=str(start),
            knowledge=str(knowledge),
            schedule="none",
            data=str(corpus.path),
            total_steps=steps,
            global_batch=batch,
            micro_batch=min(cfg.micro_batch or batch, batch),
            deepspeed_config=cfg.deepspeed_config,
            precision=cfg.precision,
            eval_steps=eval_steps(cfg, corpus, batch),
            eval_batch_tokens=cfg.eval_batch_tokens,
            output_dir=str(run_dir),
            seed=cfg.seed,
            keep_checkpoints=1,
            checkpoint_interval=min(cfg.checkpoint_interval, steps),
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
    bios = Bios(cfg.bios_spec(cfg.total_people))
    tokenizer_dir = build_tokenizer(cfg, bios, out)
    run_dirs = [run_rung(cfg, rung, bios, tokenizer_dir, out) for rung in cfg.rungs()]
    analysis = analyse_capacity([load_run(p) for p in run_dirs], CapacityOptions())
    record = analysis.record()
    record["wall_seconds"] = round(time.perf_counter() - t0, 1)
    plot_capacity(analysis, out / "analysis")
    write_bytes_atomic(
        out / "analysis" / "capacity.json", (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()
    )
    write_report(run_dirs, out / "report")
    return analysis


def print_plan(cfg: CapacityConfig, rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(
        title=f"{cfg.name}: {len(rows)} rungs (tokens, FLOPs and hours estimated; H100-hours at {cfg.mfu:.0%} MFU)",
        title_justify="left",
    )
    columns = (
        "rung",
        "arch",
        "parameters",
        "non-embedding",
        "people",
        "bits offered",
        "/ param",
        "exposures",
        "passes",
        "≈ tokens",
        "batch",
        "≈ steps",
        "≈ FLOPs",
        "≈ H100-h",
    )
    for name in columns:
        table.add_column(name, justify="left" if name in ("rung", "arch") else "right")
    for r in rows:
        table.add_row(
            r["rung"],
            r["architecture"],
            f"{r['parameters']:,}",
            f"{r['non_embedding_parameters']:,}",
            f"{r['people']:,}",
            f"{r['bits_offered']:,.0f}",
            f"{r['bits_offered_per_parameter']:.2f}",
            f"{r['exposures']:,}",
            f"{r['passes']:,}",
            f"{r['tokens']:.3g}",
            f"{r['global_batch']:,}",
            f"{r['steps']:,.0f}",
            f"{r['flops']:.2g}",
            f"{r['h100_hours']:.2f}",
        )
    console.print(table)
    flops = sum(r["flops"] for r in rows)
    hours = sum(r["h100_hours"] for r in rows)
    # rungs with the same people share token files (written for the longest schedule among them)
    disk = sum({r["data"]: r["token_bytes"] for r in sorted(rows, key=lambda r: r["token_bytes"])}.values())
    disk += sum(r["order_bytes"] for r in rows)
    console.print(
        f"total ≈ {flops:.2g} training FLOPs ≈ {hours:,.1f} H100-hours at {cfg.mfu:.0%} of "
        f"{H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense bf16); probe evaluation not included; corpora ≈ "
        f"{disk / 1e9:.1f} GB on disk",
        highlight=False,
    )


def capacity(
    profile: Annotated[
        str,
        typer.Option(
            help="Shipped ladder (configs/capacity/): quick and cpu (smoke tests on a CPU), gpu (GPT-2-style models, "
            "1,000 exposures: 2 bits per parameter published), gpu100 (100 exposures: about 1 bit)."
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
        bool,
        typer.Option(
            "--dry-run",
            help="Generate every person the ladder needs, then print the rungs with estimated tokens, updates, FLOPs "
            "and H100-hours; train nothing.",
        ),
    ] = False,
) -> None:
    """Knowledge capacity: models of several sizes trained from scratch on generated biographies; R(F) (stored
    bits) against parameters, exact-match fact capacity and memorization, overwriting."""
    cfg = load_capacity_config(profile, config, overrides)
    console = Console() if Console().is_terminal else Console(width=200)
    if dry_run:
        print_plan(cfg, plan(cfg), console)
        return
    analysis = run_capacity(cfg, out)
    wall = json.loads((out / "analysis" / "capacity.json").read_text())["wall_seconds"]
    print_capacity(analysis, console)
    console.print(f"{wall:.0f} s; analysis: {out / 'analysis'}   report: {out / 'report' / 'report.html'}")
