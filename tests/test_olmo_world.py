"""The OLMo world (tests/helpers/olmo_world.py) checked against itself: ai2-olmo's own Trainer resumes its
own checkpoint exactly, its order file is the one rebuilt from the seed, and its trainer state counts what
it trained. The harness's comparison with OLMo stands on these facts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from benchmarks.olmo_trainer import TRAIN_PT_GLOBALS
from injection.data.order import build_global_indices
from injection.data.remote import open_reader
from tests.helpers.corpus import serve_directory
from tests.helpers.olmo_world import EOS_TOKEN_ID, continue_in_plain_pytorch, olmo_lr, read_data_indices

pytestmark = pytest.mark.slow  # every test needs a world: two ai2-olmo training processes (~25 s)


@pytest.fixture(scope="module")
def world(olmo_world_factory):
    return olmo_world_factory()


@pytest.fixture(scope="module")
def epoch_world(olmo_world_factory):
    return olmo_world_factory(cross_epoch=True)


@pytest.fixture(scope="module")
def fsdp_world(olmo_world_factory):
    return olmo_world_factory(strategy="fsdp")


def _load(path):
    with torch.serialization.safe_globals(TRAIN_PT_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_state(a: dict, b: dict, where: str) -> None:
    """Model or optimizer state dicts, tensors compared bit for bit."""
    assert a.keys() == b.keys(), where
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _assert_same_state(x, y, f"{where}[{key!r}]")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{where}[{key!r}]: max abs diff {(x - y).abs().max().item()}"
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            assert len(x) == len(y), where
            for i, (gx, gy) in enumerate(zip(x, y)):
                _assert_same_state(gx, gy, f"{where}[{key!r}][{i}]")
        else:
            assert x == y, f"{where}[{key!r}]: {x!r} != {y!r}"


@pytest.mark.parametrize("which", ["world", "epoch_world"])
def test_resumed_run_equals_uninterrupted_run(which, request, tmp_path):
    """OLMo resuming step N and training k steps (how the world was made) = OLMo training 0 .. N+k in one go."""
    w = request.getfixturevalue(which)
    records = w.train_with_olmo(tmp_path / "straight", stop_at=w.step_after)

    assert [r["step"] for r in records] == list(range(1, w.step_after + 1))
    for mine, theirs in zip(records, w.records):
        for key in ("loss", "lr", "grad_norm", "instances", "epoch", "examples_seen_this_epoch"):
            assert mine[key] == theirs[key], f"step {mine['step']}: {key} {mine[key]} != {theirs[key]}"
    straight = tmp_path / "straight" / f"step{w.step_after}-unsharded"
    resumed = w.checkpoint(w.step_after)
    _assert_same_state(_load(straight / "model.pt"), _load(resumed / "model.pt"), "model.pt")
    optim_a, optim_b = _load(straight / "optim.pt"), _load(resumed / "optim.pt")
    _assert_same_state(optim_a["state"], optim_b["state"], "optim.pt state")
    for group in optim_b["param_groups"]:
        # the only difference: a restore writes `initial_lr` into the groups (OLMo's load_trainer_state_dict)
        assert group.pop("initial_lr") == w.train_config["optimizer"]["learning_rate"]
    _assert_same_state(optim_a, optim_b, "optim.pt")
    a, b = _load(straight / "train.pt"), _load(resumed / "train.pt")
    for key in ("epoch", "global_step", "global_train_examples_seen_this_epoch", "global_train_tokens_seen"):
        assert a[key] == b[key], key
    # and the weights did move over the k continued steps
    before = _load(w.checkpoint(w.step_before) / "model.pt")
    after = _load(resumed / "model.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("which", ["world", "epoch_world", "fsdp_world"])
def test_plain_pytorch_continuation_reproduces_olmo(which, request):
    """The update rule written out in plain PyTorch reproduces OLMo's k steps bit for bit; getting the LR
    step or the loss normalisation wrong moves the weights far beyond fp32 noise."""
    w = request.getfixturevalue(which)
    olmo = _load(w.checkpoint(w.step_after) / "model.pt")

    def max_diff(state):
        return max((state[k] - olmo[k]).abs().max().item() for k in olmo)

    state, losses = continue_in_plain_pytorch(w)
    assert max_diff(state) == 0.0
    assert losses == w.losses(w.step_before + 1, w.step_after)
    assert max_diff(continue_in_plain_pytorch(w, lr_step_offset=0)[0]) > 1e-3
    state, losses = continue_in_plain_pytorch(w, loss_per_token_of_batch=False)
    assert max_diff(state) > 1e-4
    # OLMo's logged loss is the per-position mean scaled by (L - 1) / L (same weights: the first step only)
    first, L = w.step_before + 1, w.seq_len
    assert losses[first] * (L - 1) / L == pytest.approx(w.record(first)["loss"], rel=1e-6)


def test_fsdp_world_equals_ddp_world_in_the_published_optimizer_format(world, fsdp_world):
    """On one rank in fp32 OLMo's FSDP and DDP paths train the same weights; FSDP's optim.pt is keyed by
    parameter name (as published OLMo checkpoints are), DDP's by index with "module."-prefixed names."""
    for step in (world.step_before, world.step_after):
        _assert_same_state(
            _load(world.checkpoint(step) / "model.pt"),
            _load(fsdp_world.checkpoint(step) / "model.pt"),
            f"model.pt at step {step}",
        )
    assert world.losses(1, world.step_after) == fsdp_world.losses(1, world.step_after)
    ddp = _load(world.checkpoint(world.step_after) / "optim.pt")
    fsdp = _load(fsdp_world.checkpoint(world.step_after) / "optim.pt")
    model_keys = set(_load(world.checkpoint(world.step_after) / "model.pt"))
    assert set(fsdp["state"]) == model_keys
    assert set(ddp["state"]) == set(range(len(model_keys)))
    names = [n for g in ddp["param_groups"] for n in g["param_names"]]
    assert all(n.startswith("module.") for n in names)
    assert [n.removeprefix("module.") for n in names] == [n for g in fsdp["param_groups"] for n in g["params"]]
    for i, name in enumerate(names):
        _assert_same_state(ddp["state"][i], fsdp["state"][name.removeprefix("module.")], name)


def test_resumed_with_another_batch_size_reads_on_from_the_counter(world, tmp_path):
    """OLMo restarted from step N with half the rows per step takes the same stream from train.pt's
    counter, B' instances at a time; the learning rate still follows the global step."""
    half = world.global_batch_size // 2
    records = world.train_with_olmo(
        tmp_path / "half",
        stop_at=world.step_before + 3,
        load_path=world.checkpoint(world.step_before),
        overrides=(f"--global_train_batch_size={half}", f"--device_train_microbatch_size={half // 2}"),
    )
    order = np.fromfile(world.order_file(0), dtype=np.uint32)
    start = world.step_before * world.global_batch_size
    for j, r in enumerate(records):
        assert r["step"] == world.step_before + 1 + j
        assert r["instances"] == order[start + j * half : start + (j + 1) * half].tolist()
        assert r["lr"] == olmo_lr(world.train_config, r["step"])
    state = _load(tmp_path / "half" / f"step{world.step_before + 3}-unsharded" / "train.pt")
    assert state["global_train_examples_seen_this_epoch"] == start + 3 * half


def test_order_file_is_olmos_rebuild_from_seed(world):
    order = np.fromfile(world.order_file(0), dtype=np.uint32)
    assert np.array_equal(order, build_global_indices(world.n_instances, world.seed, 0))
    # OLMo's own order file in the run folder is that same file (the world never left epoch 0)
    assert (world.run_dir / "train_data" / "global_indices.npy").read_bytes() == world.order_file(0).read_bytes()
    # and each step's batch is the next B entries of it, as OLMo's data loader and its data-indices file say
    b = world.global_batch_size
    logged = {
        **read_data_indices(world.run_dir / "data-indices" / f"rank0.steps1-{world.step_before}.tsv.gz"),
        **read_data_indices(
            world.run_dir / "data-indices" / f"rank0.steps{world.step_before + 1}-{world.step_after}.tsv.gz"
        ),
    }
    for s in range(1, world.step_after + 1):
        expected = order[(s - 1) * b : s * b].tolist()
        assert world.record(s)["instances"] == expected, s
        assert logged[s] == expected, s


def test_train_pt_counts_what_was_trained(world):
    b, L = world.global_batch_size, world.seq_len
    for step in (world.step_before, world.step_after):
        state = _load(world.checkpoint(step) / "train.pt")
        assert set(state) == {
            "epoch",
            "global_step",
            "global_train_examples_seen_this_epoch",
            "global_train_tokens_seen",
            "world_size",
            "checkpoints",
            "unsharded_checkpoints",
            "ephemeral_checkpoints",
            "rng",
        }
        assert (state["epoch"], state["global_step"], state["world_size"]) == (0, step, 1)
        assert state["global_train_examples_seen_this_epoch"] == step * b
        assert state["global_train_tokens_seen"] == step * b * L
        assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
        optim = _load(world.checkpoint(step) / "optim.pt")
        assert {float(s["step"]) for s in optim["state"].values()} == {float(step)}
        config = yaml.safe_load((world.checkpoint(step) / "config.yaml").read_text())
        assert config["global_train_batch_size"] == b and config["model"]["max_sequence_length"] == L


def test_epoch_boundary_inside_the_continued_steps(epoch_world):
    w, b = epoch_world, epoch_world.global_batch_size
    first = w.epoch_boundary_step
    assert w.step_before < first <= w.step_after
    per_epoch = w.n_instances // b  # full batches per epoch; the remainder of epoch 0 is never trained
    assert first == per_epoch + 1 and w.n_instances % b > 0
    order0 = np.fromfile(w.order_file(0), dtype=np.uint32)
    order1 = np.fromfile(w.order_file(1), dtype=np.uint32)
    assert np.array_equal(order0, build_global_indices(w.n_instances, w.seed, 0))
    assert np.array_equal(order1, build_global_indices(w.n_instances, w.seed, 1))  # seed + epoch
    assert not np.array_equal(order0, order1)
    # OLMo overwrote its order file with the new epoch's when it reshuffled
    assert (w.run_dir / "train_data" / "global_indices.npy").read_bytes() == w.order_file(1).read_bytes()
    for s in range(1, w.step_after + 1):
        epoch, pos = (0, s - 1) if s < first else (1, s - first)
        order = order0 if epoch == 0 else order1
        assert w.record(s)["epoch"] == epoch, s
        assert w.record(s)["instances"] == order[pos * b : (pos + 1) * b].tolist(), s
        assert w.record(s)["examples_seen_this_epoch"] == (pos + 1) * b, s
    state = _load(w.checkpoint(w.step_after) / "train.pt")
    assert state["epoch"] == 1 and state["global_step"] == w.step_after
    assert state["global_train_examples_seen_this_epoch"] == (w.step_after - first + 1) * b
    assert state["global_train_tokens_seen"] == w.step_after * b * w.seq_len


def test_token_files_are_raw_uint16_with_eos_joined_documents(world):
    total = 0
    for rel in world.data_paths:
        raw = (world.root / rel).read_bytes()
        assert not raw.startswith(b"\x93NUMPY")
        tokens = np.frombuffer(raw, dtype=np.uint16)
        assert len(tokens) % world.seq_len != 0  # a remainder OLMo drops
        assert tokens.max() <= EOS_TOKEN_ID and (tokens == EOS_TOKEN_ID).sum() > 1 and tokens[-1] == EOS_TOKEN_ID
        total += len(tokens) // world.seq_len
    assert total == world.n_instances
    assert world.data_paths[0] == "preprocessed/olmo-mix/v1_5/gpt-neox-20b-pii-special/part-000-00000.npy"


def test_world_serves_as_the_real_hosts(world):
    with serve_directory(world.root) as (url, ranges):
        ckpt = world.checkpoint_url(url, world.step_before)
        assert (
            open_reader(ckpt + "config.yaml").read(0, 10)
            == (world.checkpoint(world.step_before) / "config.yaml").read_bytes()[:10]
        )
        data = world.data_urls(url)[1]
        L = world.seq_len
        instance = open_reader(data).read(3 * 2 * L, 2 * L)
        local = np.fromfile(world.root / world.data_paths[1], dtype=np.uint16)[3 * L : 4 * L]
        assert np.array_equal(np.frombuffer(instance, dtype=np.uint16), local)
        assert len(open_reader(world.order_url(url)).read(0, 16)) == 16
    assert any(r is not None for r in ranges)
