"""What every recipe is built from, on top of the library's own entry points.

- `load_profile`: a shipped profile (`configs/RECIPE/NAME.yaml` beside the recipe) or a YAML file, with `--set`
  overrides, into the recipe's dataclass, checked field by field;
- `bpe_tokenizer`, `tiny_model`, `gpt2_model`: a tokenizer trained on the recipe's text, and randomly initialised
  OLMo-architecture models (the `tiny` family's builder) or GPT-2-style ones (the `pythia-tiny` builder: GPT-NeoX
  set up as GPT-2 with rotary embedding) with it;
- `CorpusWriter`: documents streamed into token files of an OLMo-format corpus, and `write_order`: the order
  file and `corpus.json` that make a run read them (the format of `injection data build-corpus`);
- `earlier_status`, `train`: what the run directory already holds (its manifest, through the run-directory
  reader), and a run set up exactly as `injection run` sets it up (`prepare_inputs`, `run_training`), skipped
  when complete and resumed when interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from harness import rundir
from harness.atomic import write_atomic, write_bytes_atomic, write_json_atomic
from harness.errors import UserError
from harness.tokenizers import load_tokenizer, train_bpe_tokenizer
from harness.typed import from_mapping, load_yaml
from injection.checkpoints.layout import is_complete
from injection.checkpoints.pythia import build_pythia_tiny
from injection.checkpoints.tiny import build_tiny_checkpoint
from injection.data.source import CORPUS_FILE, CorpusInfo
from injection.engine.config import ExperimentConfig, set_dotted
from injection.engine.evaluate import ProbeItem
from injection.engine.hooks import Hook
from injection.engine.inputs import prepare_inputs
from injection.engine.loop import run_training
from injection.engine.twin import run_twin, twin_config

Profile = TypeVar("Profile")


# ---- profiles ---------------------------------------------------------------------------------------------


def profile_dir(recipe_file: str | Path) -> Path:
    """Where a recipe's shipped profiles are: configs/NAME/ beside the recipe module NAME.py."""
    recipe = Path(recipe_file).resolve()
    return recipe.parent / "configs" / recipe.stem


def profile_names(recipe_file: str | Path) -> list[str]:
    return sorted(p.stem for p in profile_dir(recipe_file).glob("*.yaml"))


def read_profile(
    recipe_file: str | Path, name: str | None = None, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], str]:
    """The mapping of the shipped profile `name` (or of the YAML file `path`) with `--set KEY=VALUE` overrides
    applied, and where it came from (for messages)."""
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise UserError(f"--config {path}: no such file")
    else:
        names = profile_names(recipe_file)
        if name not in names:
            raise UserError(f"--profile {name!r}: expected one of {', '.join(names)}")
        source = profile_dir(recipe_file) / f"{name}.yaml"
    try:
        data = load_yaml(source.read_text(encoding="utf-8"), str(source)) or {}
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {source}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at the top level")
    for assignment in overrides:
        set_dotted(data, assignment)
    return data, str(source)


def load_profile(
    cls: type[Profile],
    recipe_file: str | Path,
    name: str | None = None,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Profile:
    """`read_profile` into the dataclass `cls`, checked field by field and by its `validate(where)` if it has one."""
    data, where = read_profile(recipe_file, name, path, overrides)
    return typed_profile(cls, data, where)


def typed_profile(cls: type[Profile], data: Mapping[str, Any], where: str) -> Profile:
    profile = from_mapping(cls, dict(data), where)
    validate = getattr(profile, "validate", None)
    if validate is not None:
        validate(where)
    return profile


# ---- tokenizer and models -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """An OLMo-architecture decoder's size (non-parametric layer norm, SwiGLU, RoPE, tied embeddings)."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_ratio: int = 8
    """mlp_hidden_size = mlp_ratio × d_model (OLMo's SwiGLU: half of it per branch)."""

    def architecture(self, vocab_size: int, seq_len: int, eos_token_id: int, pad_token_id: int) -> dict[str, Any]:
        """The fields of the `tiny` family's architecture this shape replaces."""
        return dict(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_heads,
            mlp_hidden_size=self.mlp_ratio * self.d_model,
            vocab_size=vocab_size,
            embedding_size=vocab_size,
            max_sequence_length=seq_len,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


def write_documents(path: Path, texts: Iterable[str]) -> Path:
    """Texts as JSON Lines (`{"text": ...}` per line), the input of `injection data build-corpus`."""
    return write_bytes_atomic(path, "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())


def read_documents(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def bpe_tokenizer(texts: Callable[[], Iterable[str]], vocab: int, dest: Path) -> Path:
    """A byte-level BPE of `vocab` entries trained on `texts()` into `dest`; built once."""
    if not (dest / "tokenizer.json").is_file():
        train_bpe_tokenizer(list(texts()), vocab, dest)
    return dest


def tiny_model(
    dest: Path, tokenizer_dir: Path, shape: ModelShape, seq_len: int, seed: int, meta: Mapping[str, Any]
) -> Path:
    """A randomly initialised model of `shape` for rows of `seq_len` tokens with the tokenizer of `tokenizer_dir`,
    as a checkpoint directory at step 0 whose checkpoint.json takes `meta` (family, learning-rate schedule, rows
    per step, ...); built once."""
    if not is_complete(dest):
        tokenizer = load_tokenizer(str(tokenizer_dir))
        build_tiny_checkpoint(
            dest,
            seed=seed,
            tokenizer=tokenizer,
            meta_overrides=dict(meta),
            **shape.architecture(len(tokenizer), seq_len, tokenizer.eos_token_id, tokenizer.pad_token_id),
        )
    return dest


@dataclasses.dataclass(frozen=True)
class GPT2Shape:
    """A GPT-2-style decoder (LayerNorm, GELU MLP without a gate, biases, tied embeddings, residual steps in
    sequence) with rotary position embedding on every head dimension, built as a GPT-NeoX model."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_ratio: int = 4
    """intermediate_size = mlp_ratio × d_model."""

    def architecture(self, vocab_size: int, seq_len: int, eos_token_id: int, pad_token_id: int) -> dict[str, Any]:
        """The fields of the `pythia-tiny` architecture this shape replaces. Rows of the data are `seq_len` tokens,
        which a GPT-NeoX checkpoint counts as a context of seq_len − 1 plus the last label."""
        return dict(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            intermediate_size=self.mlp_ratio * self.d_model,
            activation="gelu_tanh",
            vocab_size=vocab_size,
            embedding_size=vocab_size,
            max_sequence_length=seq_len - 1,
            rotary_pct=1.0,
            parallel_residual=False,
            weight_tying=True,
            eos_token_id=eos_token_id,
            bos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


def gpt2_model(
    dest: Path, tokenizer_dir: Path, shape: GPT2Shape, seq_len: int, seed: int, meta: Mapping[str, Any]
) -> Path:
    """As `tiny_model`, for a GPT-2-style model of `shape` reading rows of `seq_len` tokens; built once."""
    if not is_complete(dest):
        tokenizer = load_tokenizer(str(tokenizer_dir))
        build_pythia_tiny(
            dest,
            seed=seed,
            tokenizer=tokenizer,
            meta_overrides=dict(meta),
            **shape.architecture(len(tokenizer), seq_len, tokenizer.eos_token_id, tokenizer.pad_token_id),
        )
    return dest


# ---- corpora ----------------------------------------------------------------------------------------------------


class CorpusWriter:
    """Documents (token ids) streamed into the token files of an OLMo-format corpus in `directory`: each document
    is followed by `eos`, files are cut at whole instances of `seq_len` tokens, and `pad()` fills the current
    instance with EOS so that what follows starts an instance of its own. Memory holds one file's tokens."""

    def __init__(self, directory: Path, seq_len: int, eos: int, vocab: int, file_tokens: int = 1 << 25):
        self.directory, self.seq_len, self.eos = Path(directory), seq_len, eos
        self.dtype = np.uint16 if vocab < 65536 else np.uint32
        self._buffer = np.empty(max(seq_len, file_tokens // seq_len * seq_len), dtype=self.dtype)
        self._filled = 0
        self.paths: list[str] = []
        self.counts: list[int] = []
        self.tokens = 0
        """Tokens written so far (documents, their EOS and padding)."""

    @property
    def instances(self) -> int:
        """Whole instances so far (after `pad()`, every token written)."""
        return self.tokens // self.seq_len

    def add(self, documents: Iterable[Sequence[int]]) -> None:
        for ids in documents:
            self._append(np.asarray(ids, dtype=self.dtype))
            self._append(np.array([self.eos], dtype=self.dtype))

    def pad(self) -> None:
        missing = -self.tokens % self.seq_len
        if missing:
            self._append(np.full(missing, self.eos, dtype=self.dtype))

    def _append(self, tokens: np.ndarray) -> None:
        while len(tokens):
            take = min(len(tokens), len(self._buffer) - self._filled)
            self._buffer[self._filled : self._filled + take] = tokens[:take]
            self._filled += take
            self.tokens += take
            tokens = tokens[take:]
            if self._filled == len(self._buffer):
                self._write()

    def _write(self) -> None:
        name = f"part-{len(self.paths):05d}.npy"
        self._buffer[: self._filled].tofile(self.directory / name)
        self.paths.append(name)
        self.counts.append(self._filled // self.seq_len)
        self._filled = 0

    def close(self) -> None:
        """Write what is buffered (call `pad()` first: a partial instance at the end would be dropped)."""
        if self._filled:
            self._write()


def write_order(
    directory: Path,
    token_dir: Path,
    writer_paths: Sequence[str],
    counts: Sequence[int],
    ranges: Iterable[tuple[int, int]],
    *,
    seq_len: int,
    dtype: str,
    eos: int,
    tokenizer: str,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """A corpus directory that reads the token files of `token_dir` (hard links, copies where links fail) in the
    order of the instance `ranges` [start, stop), one after the other: `global_indices.npy` written range by range
    (uint32, ai2-olmo's format) and `corpus.json`. Returns the length of the order."""

    for name in writer_paths:
        try:
            (directory / name).hardlink_to(token_dir / name)
        except OSError:
            shutil.copy2(token_dir / name, directory / name)
    length = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal length
        for start, stop in ranges:
            for lo in range(start, stop, 1 << 24):
                chunk = np.arange(lo, min(stop, lo + (1 << 24)), dtype=np.uint32)
                handle.write(chunk.tobytes())
                length += len(chunk)

    write_atomic(directory / "global_indices.npy", write)
    info = CorpusInfo(
        paths=list(writer_paths),
        dtype=dtype,
        seq_len=seq_len,
        seed=seed,
        n_instances=int(sum(counts)),
        eos_token_id=eos,
        tokenizer=tokenizer,
        instances_per_file=list(counts),
        extra=dict(extra or {}),
    )
    write_json_atomic(directory / CORPUS_FILE, info.to_dict())
    return length


# ---- runs -------------------------------------------------------------------------------------------------------


def earlier_status(cfg: ExperimentConfig, what: str, remedy: str) -> str | None:
    """The status of the run `cfg.output_dir` already holds (None: none yet). A run of another configuration
    there is refused: UserError `DIR holds a run of a different WHAT (its label); REMEDY`."""
    run_dir = Path(cfg.output_dir)
    if not (run_dir / rundir.MANIFEST).exists():
        return None
    old = rundir.read_manifest(run_dir)
    if old.get("config_hash") != cfg.config_hash():
        raise UserError(f"{run_dir} holds a run of a different {what} ({old.get('label', 'unlabelled')}); {remedy}")
    return old.get("status")


def train(
    cfg: ExperimentConfig,
    status: str | None,
    *,
    hooks: Sequence[Hook] = (),
    scenarios: Mapping[int, str] | None = None,
    probe_kinds: Sequence[str] | None = None,
    manifest: Mapping[str, Any] | None = None,
    extra_probes: Callable[[], Sequence[ProbeItem]] | None = None,
) -> Path:
    """The run of `cfg` as `injection run` makes it, given the `status` its directory was found in
    (`earlier_status`): nothing when complete, resumed when started, else from step 0. Returns the run directory.

    `scenarios` names paragraphs the schedule never injects by what they are in this recipe (`prepare_inputs`
    calls them `none`, the control), `probe_kinds` keeps only those probes of the knowledge set, `extra_probes()`
    adds probes the knowledge set does not hold (already encoded, scenario named), and `manifest` adds keys to
    manifest.json (harness.rundir documents the ones the analysis reads)."""
    if status == "complete":
        return Path(cfg.output_dir)
    inputs = prepare_inputs(cfg)
    inputs.probe_items = [
        dataclasses.replace(item, scenario=(scenarios or {}).get(item.paragraph, item.scenario))
        for item in inputs.probe_items
        if probe_kinds is None or item.kind in probe_kinds
    ]
    if extra_probes is not None:
        inputs.probe_items += list(extra_probes())
    inputs.manifest_extra.update(manifest or {})
    return run_training(cfg, inputs, resume=status is not None, progress=True, hooks=hooks)


def twin_status(cfg: ExperimentConfig, what: str, remedy: str) -> str | None:
    """The status of the twin of the run `cfg` (`RUN_DIR/twin`), as `earlier_status` reads a run's."""
    return earlier_status(twin_config(cfg), what, remedy)


def train_twin(cfg: ExperimentConfig) -> Path:
    """The twin of the run `cfg` as `injection run --twin` makes it: the same continuation with nothing spliced,
    resumed where it stopped. Returns its directory."""
    return run_twin(cfg, prepare_inputs(cfg), progress=True)
