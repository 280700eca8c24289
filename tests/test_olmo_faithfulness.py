"""The harness continues an OLMo run exactly as OLMo's own trainer does.

A small world in the published layout is made by ai2-olmo 0.6.0 itself (tests/helpers/olmo_world.py): token
files, its order file, and a run trained by its `Trainer` to step N (an unsharded checkpoint: config.yaml,
model.pt, optim.pt, train.pt) and on to N+k. Served on a loopback HTTP server under a catalog that points there,
it goes through the harness the way a researcher's real run does:

    injection pull FAMILY@N  ->  injection data prepare FAMILY  ->  injection data extract --checkpoint FAMILY@N
    ->  injection run (schedule `none`, k updates)  ->  analysis fit

and the harness's weights after k updates must equal OLMo's step N+k weights within fp32 tolerance, its per-step
losses and learning rates OLMo's logged ones. That checks together: the conversion (fused projections, optimizer
moments and step), the data position (train.pt's counter), the order (published file, then seed + epoch), the
learning rate (lr(S+1)), the loss normalisation (rows × L) and AdamW with OLMo's parameter groups. A second run
splices paragraphs in (the chain end to end), ending every spliced paragraph with the model's EOS (50279), not
the id the checkpoint's tokenizer file gives `<|endoftext|>` (0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from harness.rundir import read_table
from injection.cli import app
from tests.helpers.corpus import serve_directory

pytestmark = pytest.mark.slow
runner = CliRunner()
FAMILY = "olmo-world"
#: Weights after k updates, |harness − OLMo|. Without clipping both implement the same arithmetic and differ by
#: float rounding alone (OLMo itself moves its embedding by 3.9e-6 when only its micro-batch size changes).
#: With clipping, OLMo's gradient norm on a CPU carries a float32 accumulation error of about 6e-5 (its
#: per-parameter `vector_norm` in float32; the gradients themselves agree to 1e-9), which scales every clipped
#: update by that much: the tolerance allows for it and the logged norms are compared to 1e-4.
WEIGHT_TOLERANCE = {"clipped": 5e-5, "unclipped": 1e-5}


def write_catalog(world, url: str, path: Path) -> Path:
    """A one-family catalog whose checkpoint and data URLs are the loopback server's."""
    (path.parent / "world-files.txt").write_text("\n".join(world.data_urls(url)) + "\n")
    p = world.params
    order_url = f"{url}/orders/epoch0/global_indices.npy"
    family = {
        "kind": "olmo",
        "description": "a tiny OLMo run trained by ai2-olmo's own Trainer",
        "hf_repo": None,
        "hf_revisions_source": None,
        "files": ["config.yaml", "model.pt", "optim.pt", "train.pt"],
        "architecture": {
            "d_model": p.d_model,
            "n_layers": p.n_layers,
            "n_heads": p.n_heads,
            "n_kv_heads": p.n_heads,
            "mlp_hidden_size": 8 * p.d_model,
            "vocab_size": 50280,
            "embedding_size": 50304,
            "max_sequence_length": p.seq_len,
            "rope_theta": 10000.0,
            "layer_norm": "nonparametric",
            "weight_tying": p.weight_tying,
            "clip_qkv": None,
            "eos_token_id": 50279,
            "pad_token_id": 1,
        },
        "optimizer": {"name": "adamw", "betas": [0.9, 0.95], "eps": 1e-5, "weight_decay": 0.1, "grad_clip": 1.0},
        # deliberately not the run's own values: the pulled config.yaml must win
        "lr_schedule": {"kind": "linear", "peak_lr": 1e-3, "warmup_steps": 1, "alpha_f": 0.1, "t_max": 1000},
        "data_order": {
            "seed": p.seed,
            "seq_len": p.seq_len,
            "global_indices_url": order_url,
            "data_paths": "world-files.txt",
            "tokenizer": "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
        },
        "batch_sizes": [
            {
                "first_step": 0,
                "last_step": None,
                "global_batch_size": p.global_batch_size,
                "evidence": "the world's config",
            }
        ],
        "stage_rule": "the world's checkpoint",
        "stages": {s: world.step_before for s in ("early", "mid", "late")},
        "steps": [
            {"step": world.step_before, "urls": [world.checkpoint_url(url, world.step_before)], "hf_revision": None}
        ],
    }
    path.write_text(yaml.safe_dump({"families": {FAMILY: family}}))
    return path


def olmo_weights_as_hf(world, step: int, arch) -> dict[str, torch.Tensor]:
    from injection.checkpoints.olmo import convert_state_dict

    state = torch.load(world.checkpoint(step) / "model.pt", map_location="cpu", weights_only=True)
    return convert_state_dict(state, arch, "model.pt")


def short_knowledge(path: Path) -> Path:
    """Paragraphs short enough for the world's 32-token rows."""
    names = ["Quorvel", "Tasmira", "Belvanor", "Drisket", "Homvarin", "Pelquist"]
    items = [
        {
            "train_context": f"{n} was born in Vantrel.",
            "mem_input": [f"{n} was born in"],
            "mem_target": ["Vantrel"],
            "gen_input": [f"The birthplace of {n} is"],
            "gen_target": ["Vantrel"],
            "hard_gen_input": [f"{n} came from"],
            "hard_gen_target": ["Vantrel"],
            "paraphrases": [f"{n} is from Vantrel."],
        }
        for n in names
    ]
    path.write_text(json.dumps(items))
    return path


def run_config(tmp: Path, name: str, world, window: Path, schedule: str, **extra) -> Path:
    cfg = {
        "checkpoint": f"{FAMILY}@{world.step_before}",
        "knowledge": str(short_knowledge(tmp / "knowledge.json")),
        "schedule": schedule,
        "data": str(window),
        "total_steps": world.params.steps_after,
        "micro_batch": world.params.micro_batch_size,
        "deepspeed_config": "cpu",
        "precision": "fp32",
        "output_dir": str(tmp / name),
        "checkpoint_interval": world.params.steps_after,
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"{' '.join(args)}\n{result.output}"
    return result.stdout


@pytest.mark.parametrize(
    "cross_epoch, clip",
    [(False, True), (False, False), (True, True)],
    ids=["one-epoch", "one-epoch-unclipped", "across-the-epoch-end"],
)
def test_the_harness_continues_an_olmo_run_as_olmos_trainer_does(
    olmo_world_factory, tmp_path, monkeypatch, cross_epoch, clip, capsys
):
    from injection.checkpoints.catalog import load_catalog

    torch.set_num_threads(1)
    world = olmo_world_factory(cross_epoch=cross_epoch, **({} if clip else {"max_grad_norm": 1e6}))
    N, k = world.step_before, world.params.steps_after
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    with serve_directory(world.root) as (url, _):
        catalog = write_catalog(world, url, tmp_path / "catalog.yaml")
        monkeypatch.setenv("INJECTION_CATALOG", str(catalog))

        checkpoint_dir = Path(invoke("pull", f"{FAMILY}@{N}").strip())
        meta = json.loads((checkpoint_dir / "checkpoint.json").read_text())
        assert meta["data_position"] == {
            "epoch": 0,
            "instances_seen": N * world.global_batch_size,
            "source": "train.pt",
        }
        assert meta["optimizer_step"] == N and meta["lr_schedule"]["peak_lr"] == world.params.learning_rate

        invoke("data", "prepare", FAMILY)
        window = tmp_path / "window"
        invoke(
            "data",
            "extract",
            "--family",
            FAMILY,
            "--checkpoint",
            f"{FAMILY}@{N}",
            "--steps",
            str(k),
            "--out",
            str(window),
        )

    # 1. the original run continued, no injections: OLMo's own step N+k
    run_dir = Path(invoke("run", str(run_config(tmp_path, "continued", world, window, "none"))).strip())
    metrics = read_table(run_dir / "train_metrics.parquet").sort_values("step")
    olmo = [world.record(N + i) for i in range(1, k + 1)]
    np.testing.assert_allclose(metrics.lr.to_numpy(), [r["lr"] for r in olmo], rtol=1e-12)
    np.testing.assert_allclose(metrics.loss.to_numpy(), [r["loss"] for r in olmo], rtol=2e-5)
    np.testing.assert_allclose(metrics.grad_norm.to_numpy(), [r["grad_norm"] for r in olmo], rtol=1e-4)

    arch = load_catalog(catalog).family(FAMILY).architecture
    expected = olmo_weights_as_hf(world, N + k, arch)
    ours = torch.load(
        run_dir / "checkpoints" / f"step{k}" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )["module"]
    differences = {name: float((ours[name].float() - value).abs().max()) for name, value in expected.items()}
    moved = max(float((ours[n].float() - v).abs().max()) for n, v in olmo_weights_as_hf(world, N, arch).items())
    tolerance = WEIGHT_TOLERANCE["clipped" if clip else "unclipped"]
    worst = max(differences, key=differences.get)
    with capsys.disabled():
        print(
            f"\n[{'across the epoch end' if cross_epoch else 'one epoch'}{'' if clip else ', unclipped'}] "
            f"max |harness - OLMo| after {k} updates: {differences[worst]:.3g} ({worst}; blocks "
            f"{max(v for n, v in differences.items() if 'layers' in n):.3g}); the updates moved the weights by "
            f"up to {moved:.3g}"
        )
    assert differences[worst] < tolerance, differences
    assert moved > 100 * tolerance  # the comparison is not trivially satisfied

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data_start"] == {"epoch": 0, "instance": N * world.global_batch_size, "source": "train.pt"}
    assert manifest["optimizer_state"]["moments"] == "restored"
    from analysis.cli import app as analysis_app

    analysed = runner.invoke(analysis_app, ["fit", str(run_dir), "--json"])
    assert analysed.exit_code == 0, analysed.output
    assert all(g["scenario"] == "none" for g in json.loads(analysed.stdout)["groups"])

    # 2. the chain end to end, with paragraphs spliced in: every copy ends with the model's EOS
    spliced = Path(
        invoke(
            "run",
            str(
                run_config(tmp_path, "spliced", world, window, "smoke", schedule_overrides={"interval": 2, "count": 2})
            ),
        ).strip()
    )
    records = read_table(spliced / "injections.parquet")
    assert len(records) and set(records.step) <= set(range(k))
    from injection.engine.batches import InjectedBatches
    from injection.engine.config import load_config
    from injection.engine.inputs import prepare_inputs

    inputs = prepare_inputs(load_config(str(tmp_path / "spliced.yaml")))
    assert inputs.checkpoint.eos_token_id == 50279
    from harness.tokenizers import load_tokenizer

    assert load_tokenizer(str(inputs.checkpoint.path)).eos_token_id == 0  # the pii-special file's <|endoftext|>
    batches = InjectedBatches(inputs.stream, inputs.injections, inputs.records, prefetch=0)
    for step, rows in inputs.records.items():
        batch = batches.compute(step)
        for r in rows:
            assert batch[r.row, r.offset + r.tokens - 1] == 50279
