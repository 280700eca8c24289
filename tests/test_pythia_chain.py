"""The whole chain on the Pythia side, offline: a catalogued GPT-NeoX family whose data is an indexed dataset served
over loopback HTTP (written from the documented layout by tests/helpers/indexed.py) and whose checkpoint is an HF
snapshot adopted by `injection pull --source hf`; `injection data prepare` and `extract`; `injection run` through
the real command line, killed at an arbitrary moment and resumed; `analysis fit` and `analysis compare` against a
run of the OLMo-architecture `tiny` family."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from analysis.cli import app as analysis_app
from harness.rundir import read_table
from injection.checkpoints import pythia
from injection.checkpoints.catalog import load_catalog
from injection.cli import app
from injection.lr import learning_rate
from tests.helpers.corpus import serve_directory
from tests.helpers.indexed import make_indexed_corpus

REPO = Path(__file__).resolve().parents[1]
KEY = ["step", "paragraph", "kind", "probe"]
runner = CliRunner()

FAMILY, START = "pythia-chain", 6
CONTEXT, ROWS_PER_STEP, N_ROWS = 32, 4, 80
STEPS, WARMUP = 12, 2  # the run reads rows 24 … 71; the moment warm-up rows 16 … 23


def _knowledge(path: Path) -> Path:
    """Six short paragraphs (they must fit rows of 33 tokens): four scheduled, two never-injected controls."""
    people = [
        ("Varno Tesk", "Ulmerin", "glassmaker"),
        ("Ilda Brenn", "Osquay", "cartographer"),
        ("Podrik Ame", "Tallow Ford", "brewer"),
        ("Senna Vool", "Kirrach", "astronomer"),
        ("Hobb Quillan", "Marrow Gate", "weaver"),
        ("Essa Dunmere", "Pell", "surveyor"),
    ]
    items = []
    for name, town, job in people:
        items.append(
            {
                "train_context": f"{name} was born in {town} and worked as a {job}.",
                "mem_input": [f"{name} was born in"],
                "mem_target": [town],
                "gen_input": [f"The birthplace of {name} is"],
                "gen_target": [town],
                "hard_gen_input": [f"The {job} from {town} is called"],
                "hard_gen_target": [name],
            }
        )
    path.write_text(json.dumps(items))
    return path


SCHEDULE = {
    "total_steps": STEPS,
    "groups": [
        {
            "scenario": "duplicate",
            "paragraphs": "0-1",
            "first_step": 1,
            "interval": 3,
            "count": 3,
            "variant": "original",
        },
        {"scenario": "once", "paragraphs": "2-3", "first_step": 2, "count": 1, "variant": "original"},
    ],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The served data, a one-family catalog pointing at it, a cache, knowledge and a schedule."""
    root = tmp_path_factory.mktemp("pythia-chain")
    rows = make_indexed_corpus(
        root / "served" / "pile", n_rows=N_ROWS, row_len=CONTEXT + 1, seed=11, shard_cuts=[1000, 5000]
    )  # three shards cut inside rows
    raw = yaml.safe_load(load_catalog().path.read_text())["families"]
    fam = {
        **raw["pythia-tiny"],
        "builtin": False,
        "description": "a Pythia-like run served on loopback",
        "hf_repo": "EleutherAI/pythia-chain",
        "hf_revisions_source": "tests",
        "architecture": {**raw["pythia-tiny"]["architecture"], "max_sequence_length": CONTEXT},
        "batch_sizes": [{"first_step": 0, "last_step": None, "global_batch_size": ROWS_PER_STEP, "evidence": "test"}],
        "lr_schedule": {"kind": "gpt-neox-cosine", "peak_lr": 3e-3, "warmup_steps": 2, "alpha_f": 0.1, "t_max": 40},
        "stage_rule": "test",
        "stages": {"early": START, "mid": START, "late": START},
        "steps": [{"step": s, "urls": [], "hf_revision": f"step{s}"} for s in (0, START, 16)],
        "known_issues": [{"steps": [0], "source": "tests", "reported": "step0 is not what it seems"}],
    }
    with serve_directory(root / "served") as (url, ranges):
        shards = sorted(p.name for p in (root / "served" / "pile").glob("document-*.bin"))
        fam["data_order"] = {
            "format": "megatron-indexed",
            "seed": 1234,
            "seq_len": CONTEXT,
            "row_len": CONTEXT + 1,
            "global_indices_url": None,
            "data_paths": None,
            "tokenizer": "olmo-pii",
            "index_url": f"{url}/pile/document.idx",
            "data_urls": [f"{url}/pile/{name}" for name in shards],
        }
        catalog = root / "catalog.yaml"
        catalog.write_text(yaml.safe_dump({"families": {FAMILY: fam, "tiny": raw["tiny"]}}))
        (root / "schedule.yaml").write_text(yaml.safe_dump(SCHEDULE))
        env = {"INJECTION_CATALOG": str(catalog), "INJECTION_CACHE": str(root / "cache")}
        yield {
            "root": root,
            "rows": rows,
            "url": url,
            "ranges": ranges,
            "env": env,
            "catalog": catalog,
            "knowledge": _knowledge(root / "knowledge.json"),
            "schedule": root / "schedule.yaml",
        }


def _invoke(world, *args):
    result = runner.invoke(app, list(args), env=world["env"])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_prepare_and_extract_the_served_indexed_dataset(world, tmp_path):
    dry = _invoke(world, "data", "prepare", FAMILY, "--dry-run")
    assert dry.stdout.split() == [f"{world['url']}/pile/document.idx"] + [
        f"{world['url']}/pile/document-0000{i}-of-00002.bin" for i in range(3)
    ]
    done = _invoke(world, "data", "prepare", FAMILY)
    assert "a Megatron indexed dataset of 80 rows of 33 tokens (uint16) in 3 file(s)" in " ".join(done.stdout.split())
    info = json.loads((world["root"] / "cache" / "data" / FAMILY / "corpus.json").read_text())
    assert (info["format"], info["n_instances"], info["seq_len"], info["eos_token_id"]) == (
        "megatron-indexed",
        80,
        33,
        0,
    )
    assert info["index"].startswith("http://127.0.0.1:")
    # a window of the run: steps 3 … 5 read over HTTP from the prepared description, checked against the source
    out = tmp_path / "window"
    _invoke(world, "data", "extract", "--family", FAMILY, "--start", "3", "--steps", "3", "--out", str(out))
    window = json.loads((out / "corpus.json").read_text())
    assert window["window"] == [{"epoch": 0, "start": 12, "count": 12}] and window["seq_len"] == 33
    tokens = np.fromfile(out / "tokens.npy", dtype=np.uint16).reshape(-1, 33)
    assert np.array_equal(tokens, world["rows"][12:24])


@pytest.mark.slow
def test_prepare_refuses_a_family_without_published_data(world):
    result = runner.invoke(app, ["data", "prepare", "pythia-tiny"])  # the shipped catalog: built in, no data
    assert result.exit_code == 2 and "lists no index_url and data_urls" in " ".join(result.output.split())


@pytest.fixture(scope="module")
def pulled(world) -> Path:
    """`injection pull pythia-chain@6 --source hf` adopting a snapshot as Pythia publishes them (erf GELU in
    config.json, fp32 weights here) that was put where the pull looks."""
    from dataclasses import replace

    from transformers import GPTNeoXForCausalLM

    arch = load_catalog(world["catalog"]).family(FAMILY).architecture
    dest = world["root"] / "cache" / FAMILY / f"step{START}"
    torch.manual_seed(5)
    config = pythia.hf_config(replace(arch))
    config.hidden_act = "gelu"
    GPTNeoXForCausalLM(config).save_pretrained(dest)
    pythia.tokenizer().save_pretrained(dest)
    result = _invoke(world, "pull", f"{FAMILY}@{START}", "--source", "hf")
    assert result.stdout.strip() == str(dest)
    meta = json.loads((dest / "checkpoint.json").read_text())
    assert (meta["seq_len"], meta["tokens_per_step"], meta["hf_revision"]) == (33, 4 * 32, "step6")
    assert meta["data_position"] == {"epoch": 0, "instances_seen": 24, "source": "step x rows"}
    return dest


def _env(world) -> dict[str, str]:
    return _clean_env(world["env"])


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without distributed variables (it may be rank 0 of a 1-process group)."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "INJECTION_CATALOG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def _config(world, name: str) -> Path:
    cfg = {
        "checkpoint": f"{FAMILY}@{START}",
        "knowledge": str(world["knowledge"]),
        "schedule": str(world["schedule"]),
        "data": str(world["root"] / "cache" / "data" / FAMILY),
        "total_steps": STEPS,
        "micro_batch": 2,
        "deepspeed_config": "cpu",
        "precision": "fp32",
        "checkpoint_interval": 2,
        "log_flush_steps": 1,
        "output_dir": str(world["root"] / name),
        "optimizer": {"moment_warmup_steps": WARMUP},
    }
    path = world["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(world, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "injection", "run", *args],
        cwd=REPO,
        env=_env(world),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def reference(world, pulled) -> Path:
    _invoke(world, "data", "prepare", FAMILY)
    done = _run(world, str(_config(world, "reference")))
    assert done.returncode == 0, done.stderr[-3000:]
    return world["root"] / "reference"


@pytest.mark.slow
def test_the_run_continues_pythia_from_its_data_position(world, pulled, reference):
    from transformers import AutoModelForCausalLM

    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["label"] == f"{FAMILY}@{START}"
    assert (manifest["seq_len"], manifest["tokens_per_step"], manifest["start_tokens"]) == (33, 4 * 32, 24 * 32)
    assert manifest["checkpoint"]["kind"] == "pythia" and manifest["data_start"]["instance"] == 24
    warm = manifest["optimizer_state"]
    assert warm["moments"] == "rebuilt" and warm["batches"].startswith("epoch 0 positions 16…23")
    metrics = read_table(reference / "train_metrics.parquet").sort_values("step", ignore_index=True)
    # GPT-NeoX's convention: update k from step S is taken at lr(S + k)
    schedule = load_catalog(world["catalog"]).family(FAMILY).lr_schedule
    assert metrics.lr.tolist() == pytest.approx([learning_rate(schedule, START + k) for k in range(STEPS)], rel=1e-6)
    # update 0 trains on rows 24 … 27 (no paragraph at step 0) with the weights as pulled: its loss is the model's
    model = AutoModelForCausalLM.from_pretrained(pulled).eval()
    batch = torch.from_numpy(world["rows"][24:28])
    with torch.no_grad():
        expected = float(model(input_ids=batch, labels=batch).loss)
    assert float(metrics.loss[0]) == pytest.approx(expected, rel=1e-5)
    injections = read_table(reference / "injections.parquet")
    assert sorted(set(zip(injections.step, injections.paragraph))) == [
        (1, 0),
        (1, 1),
        (2, 2),
        (2, 3),
        (4, 0),
        (4, 1),
        (7, 0),
        (7, 1),
    ]
    probes = read_table(reference / "probes.parquet")
    assert sorted(probes.step.unique()) == list(range(STEPS + 1))
    assert set(probes[probes.paragraph >= 4].scenario) == {"none"}
    fitted = runner.invoke(analysis_app, ["fit", str(reference), "--json", "--window", "2"])
    assert fitted.exit_code == 0, fitted.output
    assert json.loads(fitted.stdout)["run"]["tokens_per_step"] == 128


@pytest.mark.slow
def test_killed_then_resumed_pythia_run_equals_uninterrupted(world, reference):
    ref_probes = read_table(reference / "probes.parquet").sort_values(KEY, ignore_index=True)
    ref_metrics = read_table(reference / "train_metrics.parquet")
    cfg = _config(world, "killed")
    run_dir = world["root"] / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "injection", "run", str(cfg)],
        cwd=REPO,
        env=_env(world),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # kill at an arbitrary moment: once a random number of probe-log parts exist (one per evaluated step,
    # checkpoints every 2 updates), plus a random few milliseconds
    rng = random.Random()
    target = rng.randint(3, 10)
    deadline = time.time() + 240

    def parts() -> int:
        return len(list((run_dir / "probes.parquet").glob("part-*")))

    while parts() < target:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_mid_run = json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    print(f"killed after {parts()} probe-log parts (target {target})")

    done = _run(world, "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    probes = read_table(run_dir / "probes.parquet").sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(probes, ref_probes)  # exact: nothing lost, duplicated or changed
    metrics = read_table(run_dir / "train_metrics.parquet")
    timings = ["tokens_per_s", "eval_s", "max_mem_gib"]
    pd.testing.assert_frame_equal(metrics.drop(columns=timings), ref_metrics.drop(columns=timings))
    assert killed_mid_run, "the run finished before it was killed: nothing was resumed"


@pytest.mark.slow
def test_compare_a_pythia_run_with_an_olmo_architecture_run(world, reference, tmp_path):
    """`analysis compare` across families: labels say which, t* in tokens uses each run's own tokens per step
    (here 4 × 32 for the Pythia-architecture run, 8 × 32 for `tiny`), and the figure compares in tokens."""
    from analysis.fit import FitOptions, analyse_run
    from analysis.load import load_run
    from analysis.plots import compare_in_tokens

    cfg = {
        "checkpoint": "tiny@0+L32",
        "knowledge": str(world["knowledge"]),
        "schedule": str(world["schedule"]),
        "data": "cache:smoke",
        "total_steps": STEPS,
        "global_batch": 8,
        "micro_batch": 4,
        "deepspeed_config": "cpu",
        "precision": "fp32",
        "checkpoint_interval": 0,
        "log_flush_steps": 5,
        "output_dir": str(tmp_path / "tiny"),
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    done = _run(world, str(tmp_path / "tiny.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "cmp"
    result = runner.invoke(
        analysis_app, ["compare", str(reference), str(tmp_path / "tiny"), "--window", "2", "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    runs = {r["label"]: r for r in document["runs"]}
    assert set(runs) == {f"{FAMILY}@{START}", "tiny@0+L32"}
    assert (runs[f"{FAMILY}@{START}"]["tokens_per_step"], runs["tiny@0+L32"]["tokens_per_step"]) == (128, 256)
    assert (runs[f"{FAMILY}@{START}"]["start_tokens"], runs["tiny@0+L32"]["start_tokens"]) == (768, 0)
    for group in document["groups"]:
        if group["t_star_steps"] is not None:
            tps = runs[group["run"]]["tokens_per_step"]
            assert group["t_star_tokens"] == pytest.approx(group["t_star_steps"] * tps)
    assert {g["run"] for g in document["groups"]} == set(runs)
    assert (out / "compare.png").is_file()
    analyses = [analyse_run(load_run(p), FitOptions(window=2)) for p in (reference, tmp_path / "tiny")]
    assert compare_in_tokens(analyses)


@pytest.mark.slow
def test_smoke_pythia_preset(tmp_path):
    """`injection run smoke-pythia`, shortened: pythia-tiny with a 256-token context (rows of 257) built on first
    use, a corpus built in its tokenizer, generated knowledge."""
    env = _clean_env({"INJECTION_CACHE": str(tmp_path / "cache")})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "injection",
            "run",
            "smoke-pythia",
            "--total-steps",
            "4",
            "--set",
            "schedule_overrides.count=1",
            "--set",
            "checkpoint_interval=2",
            "-o",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (manifest["status"], manifest["label"]) == ("complete", "pythia-tiny@0+L256")
    assert (manifest["seq_len"], manifest["tokens_per_step"]) == (257, 4 * 256)
    metrics = read_table(tmp_path / "run" / "train_metrics.parquet").sort_values("step")
    assert metrics.lr.iloc[0] == 0.0 and np.isfinite(metrics.loss).all()  # GPT-NeoX's first update is at lr 0
