"""A small world in the published OLMo layout, trained by ai2-olmo's own Trainer: the reference side of
the check that the harness continues an OLMo run exactly as OLMo would.

    world = build_olmo_world(tmp / "world", steps_before=10, steps_after=6)
    world.checkpoint(world.step_before)      # .../step10-unsharded/ (config.yaml, model.pt, optim.pt, train.pt)
    world.losses(11, 16)                     # {step: OLMo's logged train/CrossEntropyLoss}
    with serve_directory(world.root) as (url, _):
        world.checkpoint_url(url, 10), world.data_urls(url)

What is in `root` (every path also served as is by a loopback server over `root`):

    preprocessed/olmo-mix/v1_5/gpt-neox-20b-pii-special/part-000-00000.npy ...
                            token files as OLMo stores them: raw uint16 (`ndarray.tofile`, no header),
                            documents each followed by EOS 50279, lengths not multiples of seq_len
    ai2-llm/olmo-tiny/world/                         the run's save folder, exactly as OLMo left it:
        config.yaml, step{N}-unsharded/, step{N+k}-unsharded/, latest-unsharded -> ...,
        train_data/global_indices.npy                OLMo's own order file (of the last epoch it built)
        data-indices/rank0.steps{a}-{b}.tsv.gz       OLMo's per-step instance ids, one file per process
    orders/epoch{e}/global_indices.npy               copies of OLMo's order file for each epoch it used
    configs/olmo-tiny.yaml                           the TrainConfig both processes started from
    metrics.json                                     per step: epoch, loss, lr, grad_norm, instances, ...
    world.json                                       this description (written last: the world is complete)

How it is made: process 1 trains steps 1..N from scratch and saves `step{N}-unsharded`; process 2 starts
from that checkpoint (`load_path`) in the same save folder, as a restarted OLMo job does, trains N+1..N+k
and saves `step{N+k}-unsharded`. Both run ai2-olmo 0.6.0's `Trainer.fit()` with DDP on one gloo rank on
the CPU (benchmarks/olmo_trainer.py, which lists its two shims); `strategy="fsdp"` uses OLMo's FSDP
path instead (same weights, optim.pt keyed by parameter name as in the published checkpoints).
With `cross_epoch=True` the corpus holds fewer instances, so that epoch 0 ends inside the continued
steps and OLMo moves on to epoch 1's order (seed + 1), leaving the last instances of epoch 0 unused.

`generation="olmo2"` makes the world OLMo 2-shaped, every setting as the official OLMo 2 configs have it:
norm_after, QK norm, RMSNorm with weights, an untied LM head, rope_theta 500,000, the dolma2 vocabulary (EOS
100257, pad 100277) in uint32 token files, z-loss (`softmax_auxiliary_loss` with `auxiliary_loss_multiplier`
1e-5, as the configs write it), AdamW with eps 1e-8 decaying norms but not the embedding, the cosine schedule in
token units with `warmup_min_lr` 0, and the repetition instance filter. Its periods and count are smaller than the
official 1-13 / 32 (which no 32-token instance can reach) and every fourth instance of a file carries a planted
pattern that trips it, so OLMo masks some rows of every batch.

A finished world is reused when `root` already holds one built with the same parameters.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from benchmarks.olmo_trainer import launch

FORMAT = "olmo-world/1"
DATA_DIR = "preprocessed/olmo-mix/v1_5/gpt-neox-20b-pii-special"
DATA_FILES = ("part-000-00000.npy", "part-000-00001.npy", "part-001-00000.npy")
EOS_TOKEN_ID = 50279
PAD_TOKEN_ID = 1
OLMO_TOKENIZER = "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
CONFIG = "configs/olmo-tiny.yaml"
#: The OLMo 2 world's vocabulary (dolma2) and its repetition filter.
OLMO2_EOS, OLMO2_PAD, OLMO2_VOCAB, OLMO2_EMBEDDING = 100257, 100277, 100278, 100352
OLMO2_TOKENIZER = "tokenizers/allenai_dolma2.json"
OLMO2_FILTER = {"repetition_max_period": 4, "repetition_min_period": 1, "repetition_max_count": 5}
PLANTED_PERIOD, PLANTED_TIMES = 3, 8
"""The pattern planted into every fourth instance of a file: 3 tokens repeated 8 times (masked: 8 >= 5)."""


@dataclass(frozen=True)
class WorldParams:
    """Everything a world depends on; equal parameters give bit-identical worlds."""

    steps_before: int = 10
    """N: the global step of the checkpoint a continuation starts from."""
    steps_after: int = 6
    """k: steps OLMo trains on from step N (the last checkpoint is step N + k)."""
    cross_epoch: bool = False
    """Size the corpus so that epoch 0 ends inside steps N+1 .. N+k."""
    seed: int = 6198
    global_batch_size: int = 8
    micro_batch_size: int = 4
    seq_len: int = 32
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 4
    weight_tying: bool = True
    learning_rate: float = 1e-2
    warmup_steps: int = 4
    max_duration: int = 40
    """The schedule's horizon in steps (longer than what is trained: an intermediate checkpoint)."""
    scheduler: str = "cosine_with_warmup"
    max_grad_norm: float = 1.0
    token_seed: int = 0
    run_path: str = "ai2-llm/olmo-tiny/world"
    strategy: str = "ddp"
    """"ddp" or "fsdp" (by-block wrapping, fp32): FSDP writes optim.pt keyed by parameter name, as the
    published OLMo checkpoints are; DDP keys it by index, with names prefixed "module."."""
    generation: str = "olmo"
    """"olmo" (OLMo-1B-like) or "olmo2" (see the module docstring)."""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32 if self.generation == "olmo2" else np.uint16)

    @property
    def eos_token_id(self) -> int:
        return OLMO2_EOS if self.generation == "olmo2" else EOS_TOKEN_ID

    @property
    def n_instances(self) -> int:
        b, n, k = self.global_batch_size, self.steps_before, self.steps_after
        if self.cross_epoch:
            # epoch 0 = n + ceil(k/2) full batches, plus a partial batch OLMo drops at the epoch's end
            return (n + (k + 1) // 2) * b + b // 2 + 1
        return (n + k + 3) * b + 3  # three batches to spare: epoch 0 never ends

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class OlmoWorld:
    root: Path
    params: WorldParams
    data_paths: list[str]
    """Token files, relative to `root`, in the order OLMo numbers their instances."""
    n_instances: int
    epoch_boundary_step: int | None
    """First global step trained on epoch 1's order (None: the world stays in epoch 0)."""
    records: list[dict] = field(repr=False)
    """metrics.json, one dict per global step s = 1 .. N+k, describing the update that made step s:
    `epoch` and `examples_seen_this_epoch` (OLMo's counters after it), `loss` (OLMo's logged
    train/CrossEntropyLoss: summed next-token cross-entropy / (rows x seq_len)), `lr` (the rate it used),
    `grad_norm` (total norm before clipping), `instances` (the batch's instance ids, in row order) and
    `olmo_metrics` (OLMo's train/ and optim/ metrics of that step as it computed them)."""

    @property
    def run_dir(self) -> Path:
        return self.root / self.params.run_path

    @property
    def step_before(self) -> int:
        return self.params.steps_before

    @property
    def step_after(self) -> int:
        return self.params.steps_before + self.params.steps_after

    @property
    def seq_len(self) -> int:
        return self.params.seq_len

    @property
    def global_batch_size(self) -> int:
        return self.params.global_batch_size

    @property
    def seed(self) -> int:
        return self.params.seed

    @property
    def eos_token_id(self) -> int:
        return self.params.eos_token_id

    def checkpoint(self, step: int) -> Path:
        path = self.run_dir / f"step{step}-unsharded"
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path}: the world has checkpoints at steps {self.step_before} and {self.step_after}"
            )
        return path

    def order_file(self, epoch: int = 0) -> Path:
        """OLMo's `global_indices.npy` for `epoch` (a raw uint32 array, as its data loader wrote it)."""
        return self.root / "orders" / f"epoch{epoch}" / "global_indices.npy"

    def record(self, step: int) -> dict:
        return self.records[step - 1]

    def losses(self, first: int, last: int) -> dict[int, float]:
        """OLMo's logged `train/CrossEntropyLoss` of global steps first..last (inclusive)."""
        return {s: self.record(s)["loss"] for s in range(first, last + 1)}

    def checkpoint_url(self, base_url: str, step: int) -> str:
        return f"{base_url.rstrip('/')}/{self.params.run_path}/step{step}-unsharded/"

    def data_urls(self, base_url: str) -> list[str]:
        return [f"{base_url.rstrip('/')}/{p}" for p in self.data_paths]

    @property
    def config_path(self) -> Path:
        """The TrainConfig YAML both world processes started from (relative paths: run it with cwd=root)."""
        return self.root / CONFIG

    @property
    def train_config(self) -> dict:
        return yaml.safe_load(self.config_path.read_text())

    def train_with_olmo(
        self, save_folder: Path, *, stop_at: int, load_path: Path | None = None, overrides: tuple[str, ...] = ()
    ) -> list[dict]:
        """Train again with ai2-olmo from the world's config into another `save_folder` (from scratch, or
        from `load_path`) up to global step `stop_at`; returns metrics.json-style records of those steps.
        The world itself is only read."""
        save_folder = Path(save_folder).resolve()
        args = [f"--save_folder={save_folder}", f"--stop_at={stop_at}", *overrides]
        if load_path is not None:
            args.append(f"--load_path={Path(load_path).resolve()}")
        raw = run_olmo_training(self.root, Path(CONFIG), args, save_folder.parent / f"{save_folder.name}-logs", "train")
        return [step_record(r) for r in raw]

    def instance_tokens(self, instance: int) -> np.ndarray:
        """Instance `instance` as OLMo's MemMapDataset reads it: the files' seq_len-token chunks numbered in
        file order, each file's remainder dropped."""
        L, dtype = self.seq_len, self.params.dtype
        for rel in self.data_paths:
            n = (self.root / rel).stat().st_size // dtype.itemsize // L
            if instance < n:
                offset = dtype.itemsize * L * instance
                return np.fromfile(self.root / rel, dtype=dtype, count=L, offset=offset).astype(np.int64)
            instance -= n
        raise IndexError(f"the world has {self.n_instances} instances")

    def order_url(self, base_url: str) -> str:
        """OLMo's own order file in the run folder (the last epoch's, as published for OLMo runs)."""
        return f"{base_url.rstrip('/')}/{self.params.run_path}/train_data/global_indices.npy"


def build_olmo_world(root: Path, **params) -> OlmoWorld:
    """Build (or reuse) the world described by `WorldParams(**params)` at `root`.

    Takes two ai2-olmo training processes (about 25 s for both on a 2-core CPU, 30 s with FSDP). Built in
    a staging folder next to `root` and renamed into place: an interrupted build leaves no half-made world.
    """
    p = WorldParams(**params)
    if p.steps_before < 1 or p.steps_after < 1:
        raise ValueError("steps_before and steps_after must be at least 1")
    if p.cross_epoch and (p.steps_after < 2 or p.global_batch_size < 3):
        raise ValueError("cross_epoch needs steps_after >= 2 and global_batch_size >= 3")
    if p.steps_before + p.steps_after >= p.max_duration:
        raise ValueError("max_duration must exceed steps_before + steps_after (an intermediate checkpoint)")
    root = Path(root)
    existing = _load(root)
    if existing is not None and existing.params == p:
        return existing
    if root.exists() and existing is None and any(root.iterdir()):
        raise ValueError(f"{root} is neither empty nor an OLMo world; not replacing it")
    staging = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _build(staging, p)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    world = _load(root)
    assert world is not None
    return world


def train_config(p: WorldParams) -> dict:
    """The TrainConfig (as YAML data) of the world's run: a tiny OLMo-1B-like model and optimizer, or for an OLMo 2
    world its settings as the official OLMo 2 configs have them (see the module docstring)."""
    config = {
        "run_name": "olmo-tiny-world",
        "seed": p.seed,
        "precision": "fp32",
        "model": {
            "d_model": p.d_model,
            "n_heads": p.n_heads,
            "n_layers": p.n_layers,
            "mlp_ratio": 8,
            "weight_tying": p.weight_tying,
            "alibi": False,
            "rope": True,
            "flash_attention": False,
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "multi_query_attention": False,
            "include_bias": False,
            "block_type": "sequential",
            "layer_norm_type": "default",
            "layer_norm_with_affine": False,
            "bias_for_layer_norm": False,
            "attention_layer_norm_with_affine": False,
            "activation_type": "swiglu",
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
            "max_sequence_length": p.seq_len,
            "vocab_size": 50280,
            "embedding_size": 50304,
            "eos_token_id": EOS_TOKEN_ID,
            "pad_token_id": PAD_TOKEN_ID,
            "init_device": "cpu",
            "init_fn": "mitchell",
        },
        "optimizer": {
            "name": "adamw",
            "learning_rate": p.learning_rate,
            "weight_decay": 0.1,
            "betas": [0.9, 0.95],
            "eps": 1e-5,
        },
        "scheduler": {"name": p.scheduler, "t_warmup": p.warmup_steps, "alpha_f": 0.1},
        "tokenizer": {"identifier": OLMO_TOKENIZER, "truncate_direction": "right"},
        "data": {
            "paths": [f"{DATA_DIR}/{name}" for name in DATA_FILES],
            "memmap_dtype": "uint16",
            "pad_direction": "right",
            "num_workers": 0,
            "drop_last": True,
        },
        "save_folder": p.run_path,
        "save_overwrite": False,
        "save_interval": 1000,
        "save_num_checkpoints_to_keep": 0,  # unsharded checkpoints only
        "save_interval_unsharded": 1000,  # checkpoints come from the final save at stop_at
        "save_num_unsharded_checkpoints_to_keep": -1,
        "no_pre_train_checkpoint": True,
        "max_duration": p.max_duration,
        "global_train_batch_size": p.global_batch_size,
        "device_train_microbatch_size": p.micro_batch_size,
        "max_grad_norm": p.max_grad_norm,
        "eval_interval": 1000,
        "console_log_interval": 1,
        "distributed_strategy": p.strategy,
        **(
            {"ddp": {"grad_sync_mode": "batch", "find_unused_params": False}, "fsdp": None}
            if p.strategy == "ddp"
            else {"fsdp": {"wrapping_strategy": "by_block", "precision": None, "use_orig_params": True}}
        ),
    }
    return olmo2_config(config, p) if p.generation == "olmo2" else config


def olmo2_config(config: dict, p: WorldParams) -> dict:
    """The OLMo 2 settings over the OLMo-1-like world config."""
    tokens_per_step = p.global_batch_size * p.seq_len
    model = {
        **config["model"],
        "weight_tying": False,
        "rope_theta": 500000,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "layer_norm_eps": 1e-6,
        "bias_for_layer_norm": False,
        "attention_layer_norm": True,
        "attention_layer_norm_with_affine": True,
        "norm_after": True,
        "vocab_size": OLMO2_VOCAB,
        "embedding_size": OLMO2_EMBEDDING,
        "eos_token_id": OLMO2_EOS,
        "pad_token_id": OLMO2_PAD,
        "init_fn": "normal",
        "init_std": 0.02,
        "init_cutoff_factor": 3,
    }
    return {
        **config,
        "model": model,
        "softmax_auxiliary_loss": True,
        "auxiliary_loss_multiplier": 1e-5,
        "optimizer": {
            **config["optimizer"],
            "eps": 1e-8,
            "decay_norm_and_bias": True,
            "decay_embeddings": False,
        },
        "scheduler": {
            "name": p.scheduler,
            "units": "tokens",
            "t_warmup": p.warmup_steps * tokens_per_step,
            "t_max": p.max_duration * tokens_per_step,
            "alpha_f": 0.1,
            "warmup_min_lr": 0.0,
        },
        "tokenizer": {"identifier": OLMO2_TOKENIZER, "truncate_direction": "right"},
        "data": {**config["data"], "memmap_dtype": "uint32", "instance_filter": dict(OLMO2_FILTER)},
    }


def write_token_files(root: Path, p: WorldParams) -> list[str]:
    """Files of whole documents (random token ids, each followed by EOS), sized to hold an uneven share
    of the instances plus a remainder of 1 .. seq_len-1 tokens that OLMo drops. In an OLMo 2 world every fourth
    instance of a file (1, 5, 9, ...) carries the planted repetition its filter masks."""
    rng = np.random.default_rng(p.token_seed)
    n0, n1 = p.n_instances * 3 // 8, p.n_instances // 4
    counts = [n0, n1, p.n_instances - n0 - n1]
    remainders = [p.seq_len // 2 + 1, 3, p.seq_len - 1]
    (root / DATA_DIR).mkdir(parents=True)
    paths = []
    eos = p.eos_token_id
    for name, n, extra in zip(DATA_FILES, counts, remainders):
        left, docs = n * p.seq_len + extra, []
        while left > 0:
            length = min(int(rng.integers(3, 3 * p.seq_len)), left - 1)  # the last document fills the file
            docs += [rng.integers(2, eos, size=length), [eos]]
            left -= length + 1
        tokens = np.concatenate(docs)
        if p.generation == "olmo2":
            pattern = np.tile(rng.integers(2, eos, size=PLANTED_PERIOD), PLANTED_TIMES)
            for instance in range(1, n, 4):
                start = instance * p.seq_len + int(rng.integers(0, p.seq_len - len(pattern) + 1))
                tokens[start : start + len(pattern)] = pattern
        tokens.astype(p.dtype).tofile(root / DATA_DIR / name)
        paths.append(f"{DATA_DIR}/{name}")
    return paths


def _build(root: Path, p: WorldParams) -> None:
    data_paths = write_token_files(root, p)
    (root / "configs").mkdir()
    config = Path(CONFIG)
    (root / config).write_text(yaml.safe_dump(train_config(p), sort_keys=False))
    run_dir = root / p.run_path
    n, last = p.steps_before, p.steps_before + p.steps_after

    logs = root / "logs"
    first = run_olmo_training(root, config, [f"--stop_at={n}"], logs, "steps-before")
    _keep_order_file(root, p, epoch=0)
    (run_dir / "data-indices" / "rank0.tsv.gz").rename(run_dir / "data-indices" / f"rank0.steps1-{n}.tsv.gz")
    # the restart: same save folder (its train_data/ is rebuilt, hence save_overwrite), from step N
    second = run_olmo_training(
        root,
        config,
        [f"--load_path={p.run_path}/step{n}-unsharded", f"--stop_at={last}", "--save_overwrite=true"],
        logs,
        "steps-after",
    )
    (run_dir / "data-indices" / "rank0.tsv.gz").rename(run_dir / "data-indices" / f"rank0.steps{n + 1}-{last}.tsv.gz")

    records = [step_record(r) for r in first + second]
    if [r["step"] for r in records] != list(range(1, last + 1)):
        raise RuntimeError(f"OLMo trained steps {[r['step'] for r in records]}, expected 1..{last}")
    epochs = sorted({r["epoch"] for r in records})
    for epoch in epochs[1:]:
        _keep_order_file(root, p, epoch=epoch)
    boundary = next((r["step"] for r in records if r["epoch"] == 1), None)
    if p.cross_epoch and not (n < (boundary or 0) <= last):
        raise RuntimeError(f"epoch 1 starts at step {boundary}, not inside {n + 1}..{last}")
    (root / "metrics.json").write_text(json.dumps(records, indent=1))
    n_instances = sum((root / path).stat().st_size // p.dtype.itemsize // p.seq_len for path in data_paths)
    assert n_instances == p.n_instances
    (root / "world.json").write_text(
        json.dumps(
            {
                "format": FORMAT,
                "params": asdict(p),
                "data_paths": data_paths,
                "n_instances": n_instances,
                "epoch_boundary_step": boundary,
                "checkpoints": [f"{p.run_path}/step{s}-unsharded" for s in (n, last)],
            },
            indent=1,
        )
    )


def run_olmo_training(root: Path, config: Path, overrides: list[str], out: Path, name: str) -> list[dict]:
    """One ai2-olmo training process on the CPU, one thread, with `root` as working directory (the config's
    relative data and save paths resolve there); `out/name.log` gets its log. Returns its records, one per step
    trained."""
    return launch(
        config,
        out / f"{name}.json",
        overrides,
        cwd=root,
        log=out / f"{name}.log",
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )


def _keep_order_file(root: Path, p: WorldParams, epoch: int) -> None:
    dest = root / "orders" / f"epoch{epoch}"
    dest.mkdir(parents=True)
    shutil.copyfile(root / p.run_path / "train_data" / "global_indices.npy", dest / "global_indices.npy")


def step_record(raw: dict) -> dict:
    """One step of metrics.json: the named values plus OLMo's deterministic train/ and optim/ metrics."""
    m = raw["metrics"]
    return {
        "step": raw["step"],
        "epoch": raw["epoch"],
        "examples_seen_this_epoch": raw["examples_seen_this_epoch"],
        "loss": m["train/CrossEntropyLoss"],
        "lr": m["optim/learning_rate_group0"],
        "grad_norm": m["optim/total_grad_norm"],
        "instances": raw["instances"],
        "olmo_metrics": {k: v for k, v in m.items() if k.startswith(("train/", "optim/"))},
    }


def _load(root: Path) -> OlmoWorld | None:
    try:
        info = json.loads((root / "world.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if info.get("format") != FORMAT:
        return None
    return OlmoWorld(
        root=root,
        params=WorldParams(**info["params"]),
        data_paths=info["data_paths"],
        n_instances=info["n_instances"],
        epoch_boundary_step=info["epoch_boundary_step"],
        records=json.loads((root / "metrics.json").read_text()),
    )


def read_data_indices(path: Path) -> dict[int, list[int]]:
    """OLMo's `data-indices/rank0*.tsv.gz`: global step -> instance ids of that step's batch (this rank)."""
    out = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            step, *ids = line.split("\t")
            out[int(step)] = [int(i) for i in ids]
    return out


def clean_param_name(name: str) -> str:
    """An optimizer group's `param_names` entry as a model.pt key: DDP prefixes "module.", FSDP inserts
    "_fsdp_wrapped_module." (once per wrapping level)."""
    return name.replace("_fsdp_wrapped_module.", "").removeprefix("module.")


def optimizer_state_by_index(saved: dict) -> dict:
    """optim.pt as torch's `Optimizer.load_state_dict` takes it. DDP checkpoints already are (state keyed
    0, 1, ... in group order); FSDP's full state dict keys state and groups' `params` by parameter name."""
    if all(isinstance(k, int) for k in saved["state"]):
        return saved
    index, groups = 0, []
    state = {}
    for group in saved["param_groups"]:
        ids = []
        for name in group["params"]:
            if name in saved["state"]:
                state[index] = saved["state"][name]
            ids.append(index)
            index += 1
        groups.append({**group, "params": ids})
    return {"state": state, "param_groups": groups}


def olmo_lr(config: dict, step: int) -> float:
    """OLMo's cosine_with_warmup / linear_with_warmup learning rate at global step `step` (steps units,
    warmup_min_lr unset: the warm-up starts at 0.1 x peak; t_max unset: max_duration in steps)."""
    peak, sched = config["optimizer"]["learning_rate"], config["scheduler"]
    warmup, floor, horizon = sched["t_warmup"], peak * sched["alpha_f"], config["max_duration"]
    if step < warmup:
        return 0.1 * peak + 0.9 * peak * step / warmup
    if step >= horizon:
        return floor
    frac = (step - warmup) / (horizon - warmup)
    if sched["name"] == "linear_with_warmup":
        return peak - (peak - floor) * frac
    return floor + (peak - floor) * (1 + math.cos(math.pi * frac)) / 2


def continue_in_plain_pytorch(
    world: OlmoWorld, *, lr_step_offset: int = 1, loss_per_token_of_batch: bool = True
) -> tuple[dict, dict[int, float]]:
    """Steps N+1 .. N+k from the step-N checkpoint written out in plain PyTorch, with what OLMo's Trainer
    does (read from ai2-olmo 0.6.0): returns (model state dict, {step: loss}). Matches the world bit for bit.

    - update S -> S+1 uses lr(S+1) (`lr_step_offset` = 1; 0 would be lr(S));
    - loss = sum of next-token cross-entropy over every position of every row / (rows x seq_len), summed
      over micro-batches (`loss_per_token_of_batch`; False = HF-style mean over predicted positions);
    - clip: total norm of the per-parameter fp32 norms, grads x min(1, max_norm / (total + 1e-6));
    - torch.optim.AdamW with the checkpoint's groups (decay: Linear weights; no decay: the embedding).
    """
    import torch
    import torch.nn.functional as F
    from olmo.config import ModelConfig
    from olmo.model import OLMo

    from benchmarks.olmo_trainer import TRAIN_PT_GLOBALS

    def load(path):
        with torch.serialization.safe_globals(TRAIN_PT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)

    config = world.train_config
    ckpt = world.checkpoint(world.step_before)
    model = OLMo(ModelConfig(**config["model"]))
    model.load_state_dict(load(ckpt / "model.pt"))
    saved = load(ckpt / "optim.pt")
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[clean_param_name(n)] for n in g["param_names"]], "param_names": g["param_names"]}
        for g in saved["param_groups"]
    ]
    opt = torch.optim.AdamW(groups)
    opt.load_state_dict(optimizer_state_by_index(saved))  # betas, eps, decay per group, moments, step count
    micro = config["device_train_microbatch_size"]
    losses = {}
    for step in range(world.step_before + 1, world.step_after + 1):
        batch = torch.from_numpy(np.stack([world.instance_tokens(i) for i in world.record(step)["instances"]]))
        opt.zero_grad(set_to_none=True)
        total_loss = torch.tensor(0.0)
        for rows in batch.split(micro):
            logits = model(rows).logits[:, :-1].reshape(-1, model.config.embedding_size)
            labels = rows[:, 1:].reshape(-1)
            if loss_per_token_of_batch:
                loss = F.cross_entropy(logits, labels, reduction="sum") / batch.numel()
            else:
                loss = F.cross_entropy(logits, labels) * len(rows) / len(batch)
            total_loss += loss.detach()
            loss.backward()
        grads = [p.grad for g in opt.param_groups for p in g["params"]]
        norm = (
            torch.cat([torch.linalg.vector_norm(g, 2.0, dtype=torch.float32).unsqueeze(0) for g in grads]) ** 2.0
        ).sum() ** 0.5
        coef = torch.clamp(config["max_grad_norm"] / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef)
        for group in opt.param_groups:
            group["lr"] = olmo_lr(config, step - 1 + lr_step_offset)
        opt.step()
        losses[step] = total_loss.item()
    return model.state_dict(), losses
