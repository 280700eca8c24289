"""What every recipe is built from, on top of the library's own entry points.

- `load_profile`: a shipped profile (`configs/RECIPE/NAME.yaml` beside the recipe) or a YAML file, with `--set`
  overrides, into the recipe's dataclass, checked field by field;
- `bpe_tokenizer`, `tiny_model`: a tokenizer trained on the recipe's text, and randomly initialised
  OLMo-architecture models with it (the `tiny` family's builder);
- `earlier_status`, `train`: what the run directory already holds (its manifest, through the run-directory
  reader), and a run set up exactly as `injection run` sets it up (`prepare_inputs`, `run_training`), skipped
  when complete and resumed when interrupted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from harness import rundir
from harness.atomic import write_bytes_atomic
from harness.errors import UserError
from harness.tokenizers import load_tokenizer, train_bpe_tokenizer
from harness.typed import from_mapping, load_yaml
from injection.checkpoints.layout import is_complete
from injection.checkpoints.tiny import build_tiny_checkpoint
from injection.engine.config import ExperimentConfig, set_dotted
from injection.engine.hooks import Hook
from injection.engine.inputs import prepare_inputs
from injection.engine.loop import run_training

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
) -> Path:
    """The run of `cfg` as `injection run` makes it, given the `status` its directory was found in
    (`earlier_status`): nothing when complete, resumed when started, else from step 0. Returns the run directory.

    `scenarios` names paragraphs the schedule never injects by what they are in this recipe (`prepare_inputs`
    calls them `none`, the control), `probe_kinds` keeps only those probes, and `manifest` adds keys to
    manifest.json (harness.rundir documents the ones the analysis reads)."""
    if status == "complete":
        return Path(cfg.output_dir)
    inputs = prepare_inputs(cfg)
    inputs.probe_items = [
        dataclasses.replace(item, scenario=(scenarios or {}).get(item.paragraph, item.scenario))
        for item in inputs.probe_items
        if probe_kinds is None or item.kind in probe_kinds
    ]
    inputs.manifest_extra.update(manifest or {})
    return run_training(cfg, inputs, resume=status is not None, progress=True, hooks=hooks)
