"""The harness continues an OLMo 2 run exactly as OLMo's own trainer does.

The reference is an OLMo 2-shaped world made by ai2-olmo 0.6.0 itself (tests/helpers/olmo_world.py,
`generation="olmo2"`): norm_after, QK norm, RMSNorm with weights, an untied head, uint32 dolma2 token files (EOS
100257), z-loss on (`auxiliary_loss_multiplier: 1e-5` written in the config, as in the official ones), the cosine
schedule in token units, decay of norms but not of the embedding, and the repetition instance filter masking some
rows of every batch; trained by its `Trainer` with FSDP to step N (config.yaml, model.pt, optim.pt keyed by
parameter name, train.pt) and on to N+k. A copy of step N in the 7B / 13B layout (model.safetensors,
optim.safetensors, written by ai2-olmo's own `state_dict_to_safetensors_file`, as its scripts/unshard.py
--safe-tensors does) is served beside it. Through a catalog whose facts deliberately differ from the run's (no
z-loss, no filter, another schedule: the checkpoint's config.yaml must win), the chain a researcher runs:

    injection pull FAMILY@N  ->  injection data prepare FAMILY  ->  injection data extract --checkpoint FAMILY@N
    ->  injection run (schedule `none`, k updates)  ->  analysis fit

must give, after k updates, OLMo's step N+k weights within the OLMo-1 check's tolerance, and per step OLMo's
learning rates, cross-entropy, z-loss, gradient norms and masked-instance counts. A second run splices a
paragraph into every row of a batch that has masked rows: each copy ends with EOS 100257 and keeps its loss.
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
from tests.helpers.olmo_world import OLMO2_EOS, OLMO2_FILTER, OLMO2_PAD

pytestmark = pytest.mark.slow
runner = CliRunner()
FAMILY, SAFETENSORS_FAMILY = "olmo2-world", "olmo2-world-st"
#: The OLMo-1 check's tolerances (tests/test_olmo_faithfulness.py): weights after k unclipped updates (the world's
#: gradient norms stay below max_grad_norm), per-step losses; learning rates exact.
WEIGHT_TOLERANCE, LOSS_RTOL = 1e-5, 2e-5
#: OLMo's logged gradient norm is its per-parameter `torch.linalg.vector_norm(..., dtype=float32)`, which on a CPU
#: loses accuracy on large tensors: for the untied 100,352 x 32 LM head it reads 0.3277316 where the gradient's
#: norm (the same gradient: OLMo's next weights follow from it bit for bit) is 0.3279502, so the total reads 4.4e-4
#: low. Every other parameter's norm agrees to 1e-7; the total is compared at 1e-3.
GRAD_NORM_RTOL = 1e-3


@pytest.fixture(scope="module")
def world(olmo_world_factory):
    return olmo_world_factory(generation="olmo2", strategy="fsdp")


def safetensors_copy(world, dest: Path) -> Path:
    """Step N of the world as OLMo 2 7B / 13B publish it: model and optimizer state in ai2-olmo's safetensors
    encoding (its own writer), config.yaml and train.pt as they are."""
    import shutil

    from olmo.safetensors_util import state_dict_to_safetensors_file

    src = world.checkpoint(world.step_before)
    dest.mkdir(parents=True)
    for name in ("config.yaml", "train.pt"):
        shutil.copyfile(src / name, dest / name)
    for name in ("model", "optim"):
        state = torch.load(src / f"{name}.pt", map_location="cpu", weights_only=True)
        state_dict_to_safetensors_file(state, dest / f"{name}.safetensors")
    return dest


def write_catalog(world, url: str, copy_url: str, path: Path) -> Path:
    """Two families: the served world in its published .pt layout, and the served safetensors copy of step N."""
    (path.parent / "world-files.txt").write_text("\n".join(world.data_urls(url)) + "\n")
    p = world.params
    family = {
        "kind": "olmo2",
        "description": "a tiny OLMo 2 run trained by ai2-olmo's own Trainer",
        "hf_repo": None,
        "hf_revisions_source": None,
        "files": ["config.yaml", "model.pt", "optim.pt", "train.pt"],
        "architecture": {
            "d_model": p.d_model,
            "n_layers": p.n_layers,
            "n_heads": p.n_heads,
            "n_kv_heads": p.n_heads,
            "mlp_hidden_size": 8 * p.d_model,
            "vocab_size": 100278,
            "embedding_size": 100352,
            "max_sequence_length": p.seq_len,
            "rope_theta": 500000.0,
            "layer_norm": "rms",
            "layer_norm_eps": 1e-6,
            "norm_after": True,
            "qk_norm": True,
            "weight_tying": False,
            "clip_qkv": None,
            "eos_token_id": OLMO2_EOS,
            "pad_token_id": OLMO2_PAD,
        },
        # deliberately not the run's own: the pulled config.yaml must win
        "optimizer": {"name": "adamw", "betas": [0.9, 0.95], "eps": 1e-5, "weight_decay": 0.1, "grad_clip": 1.0},
        "lr_schedule": {"kind": "linear", "peak_lr": 1e-3, "warmup_steps": 1, "alpha_f": 0.1, "t_max": 1000},
        "objective": {"z_loss_multiplier": None, "instance_filter": None},
        "data_order": {
            "seed": p.seed,
            "seq_len": p.seq_len,
            "global_indices_url": None,
            "data_paths": "world-files.txt",
            "tokenizer": "tokenizers/allenai_dolma2.json",
            "dtype": "uint32",
        },
        "batch_sizes": [
            {"first_step": 0, "last_step": None, "global_batch_size": p.global_batch_size, "evidence": "the world"}
        ],
        "stage_rule": "the world's checkpoint",
        "stages": {s: world.step_before for s in ("early", "mid", "late")},
        "steps": [
            {"step": world.step_before, "urls": [world.checkpoint_url(url, world.step_before)], "hf_revision": None}
        ],
    }
    st = {
        **family,
        "files": ["config.yaml", "model.safetensors", "optim.safetensors", "train.pt"],
        "steps": [{"step": world.step_before, "urls": [f"{copy_url}/"], "hf_revision": None}],
    }
    path.write_text(yaml.safe_dump({"families": {FAMILY: family, SAFETENSORS_FAMILY: st}}))
    return path


def knowledge(path: Path) -> Path:
    """Eight paragraphs short enough for the world's 32-token rows (one for every row of a batch)."""
    names = ["Quorvel", "Tasmira", "Belvanor", "Drisket", "Homvarin", "Pelquist", "Ostrel", "Vimaro"]
    items = [
        {
            "train_context": f"{n} was born in Vantrel.",
            "mem_input": [f"{n} was born in"],
            "mem_target": ["Vantrel"],
            "gen_input": [f"The birthplace of {n} is"],
            "gen_target": ["Vantrel"],
            "hard_gen_input": [f"{n} came from"],
            "hard_gen_target": ["Vantrel"],
            "paraphrases": [],
        }
        for n in names
    ]
    path.write_text(json.dumps(items))
    return path


def every_row_schedule(path: Path, total_steps: int) -> Path:
    """All eight paragraphs once at run step 0: one in every row of that batch, the rows OLMo masks included."""
    path.write_text(
        yaml.safe_dump(
            {
                "name": "every-row",
                "description": "paragraphs 0-7 once at step 0",
                "total_steps": total_steps,
                "defaults": {"first_step": 0, "interval": 1, "count": 1},
                "groups": [{"scenario": "once", "paragraphs": "0-7", "variant": "original"}],
            }
        )
    )
    return path


def run_config(tmp: Path, name: str, world, window: Path, schedule: str) -> Path:
    cfg = {
        "checkpoint": f"{FAMILY}@{world.step_before}",
        "knowledge": str(knowledge(tmp / "knowledge.json")),
        "schedule": schedule,
        "data": str(window),
        "total_steps": world.params.steps_after,
        "micro_batch": world.params.micro_batch_size,
        "deepspeed_config": "cpu",
        "precision": "fp32",
        "output_dir": str(tmp / name),
        "checkpoint_interval": world.params.steps_after,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"{' '.join(args)}\n{result.output}"
    return result.stdout


def olmo_weights_as_hf(world, step: int, arch) -> dict[str, torch.Tensor]:
    from injection.checkpoints.olmo import convert_state_dict
    from injection.checkpoints.olmo2 import olmo2_to_hf

    state = torch.load(world.checkpoint(step) / "model.pt", map_location="cpu", weights_only=True)
    return convert_state_dict(state, arch, "model.pt", olmo2_to_hf)


def test_the_harness_continues_an_olmo2_run_as_olmos_trainer_does(world, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from injection.checkpoints.catalog import load_catalog

    torch.set_num_threads(1)
    N, k, B = world.step_before, world.params.steps_after, world.global_batch_size
    olmo = [world.record(N + i) for i in range(1, k + 1)]
    assert all(r["olmo_metrics"]["train/masked_instances_local_rank"] > 0 for r in olmo), "the filter must bite"
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    copy = safetensors_copy(world, tmp_path / "safetensors-copy")
    with serve_directory(world.root) as (url, _), serve_directory(copy) as (copy_url, _):
        catalog = write_catalog(world, url, copy_url, tmp_path / "catalog.yaml")
        monkeypatch.setenv("INJECTION_CATALOG", str(catalog))

        checkpoint_dir = Path(invoke("pull", f"{FAMILY}@{N}").strip())
        copy_dir = Path(invoke("pull", f"{SAFETENSORS_FAMILY}@{N}").strip())
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

    # what continuing needs came from the checkpoint's own files, not from the catalog's deliberately wrong facts
    meta = json.loads((checkpoint_dir / "checkpoint.json").read_text())
    assert meta["objective"] == {"z_loss_multiplier": 1e-4, "instance_filter": OLMO2_FILTER}
    assert meta["lr_schedule"]["units"] == "tokens" and meta["lr_schedule"]["warmup_min_lr"] == 0.0
    assert meta["optimizer"]["decay_norm_and_bias"] and not meta["optimizer"]["decay_embeddings"]
    assert meta["optimizer"]["eps"] == 1e-8 and meta["tokens_seen"] == N * B * world.seq_len
    assert meta["data_position"] == {"epoch": 0, "instances_seen": N * B, "source": "train.pt"}
    # the 7B / 13B file names give the same checkpoint
    for name in ("model.safetensors", "optimizer.safetensors"):
        ours, theirs = load_file(checkpoint_dir / name), load_file(copy_dir / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours), name

    # 1. the original run continued, no injections: OLMo's own steps N+1 .. N+k
    run_dir = Path(invoke("run", str(run_config(tmp_path, "continued", world, window, "none"))).strip())
    metrics = read_table(run_dir / "train_metrics.parquet").sort_values("step")
    np.testing.assert_allclose(metrics.lr.to_numpy(), [r["lr"] for r in olmo], rtol=1e-12)
    np.testing.assert_allclose(metrics.loss.to_numpy(), [r["loss"] for r in olmo], rtol=LOSS_RTOL)
    z_olmo = [r["olmo_metrics"]["train/ZLoss"] for r in olmo]
    np.testing.assert_allclose(metrics.z_loss.to_numpy(), z_olmo, rtol=LOSS_RTOL)
    masked = [r["olmo_metrics"]["train/masked_instances_local_rank"] for r in olmo]
    assert metrics.masked_rows.tolist() == masked
    np.testing.assert_allclose(metrics.grad_norm.to_numpy(), [r["grad_norm"] for r in olmo], rtol=GRAD_NORM_RTOL)
    arch = load_catalog(catalog).family(FAMILY).architecture
    expected = olmo_weights_as_hf(world, N + k, arch)
    ours = torch.load(
        run_dir / "checkpoints" / f"step{k}" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )["module"]
    differences = {name: float((ours[name].float() - value).abs().max()) for name, value in expected.items()}
    moved = max(float((ours[n].float() - v).abs().max()) for n, v in olmo_weights_as_hf(world, N, arch).items())
    worst = max(differences, key=differences.get)
    loss_rel = float(np.max(np.abs(metrics.loss.to_numpy() / [r["loss"] for r in olmo] - 1)))
    z_rel = float(np.max(np.abs(metrics.z_loss.to_numpy() / z_olmo - 1)))
    norm_rel = float(np.max(np.abs(metrics.grad_norm.to_numpy() / [r["grad_norm"] for r in olmo] - 1)))
    with capsys.disabled():
        print(
            f"\n[OLMo 2] max |harness - OLMo| after {k} updates: {differences[worst]:.3g} ({worst}); the updates moved "
            f"the weights by up to {moved:.3g}; per-step cross-entropy within {loss_rel:.2g} relative, z-loss within "
            f"{z_rel:.2g}; gradient norms within {norm_rel:.2g}; masked rows per step {masked}"
        )
    assert differences[worst] < WEIGHT_TOLERANCE, differences
    assert max(r["grad_norm"] for r in olmo) < world.train_config["max_grad_norm"]  # unclipped, as the tolerance says
    assert moved > 100 * WEIGHT_TOLERANCE  # the comparison is not trivially satisfied

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["optimizer_state"]["moments"] == "restored"
    from analysis.cli import app as analysis_app

    analysed = runner.invoke(analysis_app, ["fit", str(run_dir), "--json"])
    assert analysed.exit_code == 0, analysed.output

    # 2. the chain with paragraphs spliced into every row of a batch with masked rows: each copy ends with the
    # model's EOS and keeps its loss; the rest of a masked row stays masked
    schedule = every_row_schedule(tmp_path / "every-row.yaml", k)
    spliced = Path(invoke("run", str(run_config(tmp_path, "spliced", world, window, str(schedule)))).strip())
    records = read_table(spliced / "injections.parquet")
    assert sorted(records.row) == list(range(B)) and set(records.step) == {0}
    from injection.engine.batches import InjectedBatches
    from injection.engine.config import load_config
    from injection.engine.inputs import prepare_inputs

    inputs = prepare_inputs(load_config(str(tmp_path / "spliced.yaml")))
    batch = InjectedBatches(inputs.stream, inputs.injections, inputs.records, prefetch=0).compute(0)
    mask = np.ma.getmaskarray(batch)
    kept = inputs.stream.row_filter.kept_rows(inputs.stream.batch(0)[0])
    assert (~kept).sum() == masked[0] > 0
    for r in inputs.records[0]:
        assert batch.data[r.row, r.offset + r.tokens - 1] == OLMO2_EOS
        assert not mask[r.row, r.offset : r.offset + r.tokens].any()
        assert mask[r.row, r.offset + r.tokens :].all() == (not kept[r.row])
    spliced_metrics = read_table(spliced / "train_metrics.parquet").sort_values("step")
    assert spliced_metrics.masked_rows.tolist() == masked
    assert spliced_metrics.loss.iloc[0] != metrics.loss.iloc[0]
