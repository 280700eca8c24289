"""`injection pull`: fetch a catalogued checkpoint and leave it in the checkpoint layout (injection.checkpoints.layout).

Sources:
- `original`: the run's unsharded directory over HTTP(S) (injection.checkpoints.download), then converted by the
  family's module (keeps AdamW moments, the trainer's step and its data-stream position);
- `hf`: the family's Hugging Face repository at the step's revision (weights only, no optimizer state), checked
  against the catalog's architecture by the family's module. A revision name the catalog marks as derived rather
  than confirmed (`hf_revision_guessed`, OLMo 2) is pulled with a warning, and without its `stage1-` prefix when
  the hub has no branch of that name;
- built-in families (`tiny`, `pythia-tiny`): step 0 is built by the family's module; other steps must already
  exist locally.

Steps the catalog lists a reported problem for (`known_issues`: e.g. revisions that serve another step's weights)
are pulled with a warning naming the report.

Nothing that looks complete appears before it is: downloads sit in the cache's `downloads/` folder, the
conversion writes into a hidden staging sibling of the destination, and checkpoint.json is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RevisionNotFoundError
from transformers import AutoConfig

from harness.atomic import replace_dir, staging_dir, write_json_atomic
from harness.errors import UserError
from harness.http import HttpPolicy
from harness.paths import cache_dir
from injection.checkpoints.catalog import Catalog, Resolved, load_catalog
from injection.checkpoints.download import download_directory
from injection.checkpoints.family import model_family
from injection.checkpoints.layout import (
    DataPosition,
    ObjectiveSpec,
    checkpoint_meta,
    is_complete,
    mark_complete,
    read_meta,
)

#: An original checkpoint directory must hold its model in one of these files (a family's `files` names which);
#: the other files are optional.
MODEL_FILES = ("model.pt", "model.safetensors")


def default_dest(family: str, step: int) -> Path:
    """Where `injection pull` puts FAMILY@STEP: `$INJECTION_CACHE/FAMILY/stepN`."""
    return cache_dir() / family / f"step{step}"


def _pull_original(
    res: Resolved, dest: Path, *, trust_pickle: bool, policy: HttpPolicy | None, workers: int, keep_original: bool
) -> Path:
    if res.entry is None or not res.entry.urls:
        hint = (
            "; its Hugging Face revision can be pulled with --source hf" if res.entry and res.entry.hf_revision else ""
        )
        raise UserError(f"{res.ref}: the catalog lists no original URL for this step{hint}")
    required = tuple(f for f in res.family.files if f in MODEL_FILES)
    if not required:
        raise UserError(f"{res.family.name}.files must include {' or '.join(MODEL_FILES)}")
    raw = cache_dir() / "downloads" / res.family.name / f"step{res.step}"
    errors = []
    for url in res.entry.urls:
        try:
            download_directory(url, list(res.family.files), raw, policy=policy, workers=workers, required=required)
            break
        except UserError as err:
            errors.append(str(err))
    else:
        raise UserError("; ".join(errors))
    code = model_family(res.family.kind)
    try:
        out = code.convert_original(
            raw, dest, family=res.family, step=res.step, source_url=url, trust_pickle=trust_pickle
        )
    except UserError as err:
        # What the host sent cannot be converted (garbage, an error page, another run's files): a later pull must
        # not find it and convert it again, so it leaves the download cache (kept aside with --keep-original).
        if keep_original:
            aside = raw.with_name(f"{raw.name}.rejected")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(raw, aside)
            kept = f"the downloaded files were moved to {aside}; the next pull downloads them again"
        else:
            shutil.rmtree(raw, ignore_errors=True)
            kept = "the downloaded files were removed; the next pull downloads them again"
        raise UserError(f"{err} ({kept})") from None
    if not keep_original:
        shutil.rmtree(raw, ignore_errors=True)
    return out


def _hf_hint(repo: str, revision: str) -> str:
    return (
        f"on a machine with network access run `hf download {repo} --revision {revision} --local-dir DIR`, "
        "copy DIR here and rerun this pull with `--out DIR` (the snapshot is adopted in place)"
    )


def _hf_meta(res: Resolved, revision: str) -> dict:
    fam = res.family
    batch = fam.batch_size_at(res.step)
    extra = {"objective": fam.objective.as_json()} if fam.objective != ObjectiveSpec() else {}
    return checkpoint_meta(
        family=fam.name,
        kind=fam.kind,
        step=res.step,
        source="hf",
        global_batch_size=batch,
        seq_len=fam.row_len,
        tokens_per_row=fam.seq_len,
        lr_schedule=fam.lr_schedule,
        optimizer=fam.optimizer,
        data_position=DataPosition(0, res.step * batch, "step x rows"),
        hf_repo=fam.hf_repo,
        hf_revision=revision,
        has_optimizer_state=False,
        tokens_seen=fam.tokens_at(res.step),
        **extra,
    )


#: Weight files of an HF snapshot: safetensors where the revision has them, else PyTorch pickles (some older
#: revisions have only those; transformers reads them with weights_only, which runs no code).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def _has_weights(directory: Path) -> bool:
    return any(next(directory.glob(pattern), None) for pattern in WEIGHT_PATTERNS)


def _weight_pattern(repo: str, revision: str) -> str:
    """Which weight files to fetch: the revision's safetensors when it has any, else its .bin files."""
    files = HfApi().list_repo_files(repo, revision=revision)
    return WEIGHT_PATTERNS[0] if any(f.endswith(".safetensors") for f in files) else WEIGHT_PATTERNS[1]


def revision_candidates(entry) -> list[str]:
    """Branch names to try for a step: the catalog's, and for a derived (guessed) `stage1-` name also the name
    without that prefix, which some OLMo 2 branches lack."""
    names = [entry.hf_revision]
    if entry.hf_revision_guessed and entry.hf_revision.startswith("stage1-"):
        names.append(entry.hf_revision.removeprefix("stage1-"))
    return names


def _pull_hf(res: Resolved, dest: Path) -> Path:
    fam = res.family
    revision = res.entry.hf_revision if res.entry else None
    if not fam.hf_repo or not revision:
        raise UserError(
            f"{res.ref}: no confirmed Hugging Face revision for this step in the catalog; use --source original"
        )
    candidates = revision_candidates(res.entry)
    if res.entry.hf_revision_guessed:
        warnings.warn(
            f"{res.ref}: the revision name {revision} is derived from the step, not confirmed by the run's authors; "
            f"trying {' then '.join(candidates)}",
            stacklevel=3,
        )
    if dest.is_dir() and (dest / "config.json").is_file() and _has_weights(dest):
        _adopt(dest, _hf_meta(res, revision), res)  # a snapshot fetched elsewhere, pointed at with --out
        return dest
    for i, name in enumerate(candidates):
        try:
            return _download_revision(res, dest, name)
        except RevisionNotFoundError:
            if i == len(candidates) - 1:
                derived = (
                    f" (the name for {res.ref} is derived, not confirmed)" if res.entry.hf_revision_guessed else ""
                )
                raise UserError(
                    f"{fam.hf_repo} has no branch {' nor '.join(candidates)}{derived}; list its branches "
                    "(huggingface_hub.list_repo_refs) and pull with --out from a snapshot of the right one, or use "
                    "--source original"
                ) from None
    raise AssertionError("unreachable")


def _download_revision(res: Resolved, dest: Path, revision: str) -> Path:
    fam = res.family
    meta = _hf_meta(res, revision)

    tmp = staging_dir(dest)
    try:
        snapshot_download(
            fam.hf_repo,
            revision=revision,
            local_dir=str(tmp),
            allow_patterns=["*.json", "*.txt", _weight_pattern(fam.hf_repo, revision)],
        )
        _adopt(tmp, meta, res)
        os.replace(tmp, dest)
    except RevisionNotFoundError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"cannot fetch {fam.hf_repo} at revision {revision} ({type(err).__name__}: {first}); "
            + _hf_hint(fam.hf_repo, revision)
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _adopt(directory: Path, meta: dict, res: Resolved) -> None:
    """Check an HF snapshot loads with the family's model type and matches the catalog's architecture, apply the
    config changes the family asks for (recorded in checkpoint.json), and mark it complete."""
    code = model_family(res.family.kind)
    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{directory}: not a loadable HF model directory: {err}") from None
    if config.model_type != code.MODEL_TYPE:
        raise UserError(
            f"{directory}: model_type {config.model_type!r}, expected {code.MODEL_TYPE!r} for {res.family.name}"
        )
    config_file = directory / "config.json"
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    changes = code.check_hf_config(raw, res.family.architecture, str(config_file))
    if changes:
        meta = {**meta, "hf_config_changes": {k: [raw.get(k), v] for k, v in changes.items()}}
        write_json_atomic(config_file, {**raw, **changes})
    if not (directory / "tokenizer.json").is_file():
        code.tokenizer(res.family).save_pretrained(str(directory))
    mark_complete(directory, meta)


def _build_initial(family, dest: Path, **overrides) -> Path:
    """Step 0 of a built-in family, built by its kind's module."""
    return model_family(family.kind).build_initial(dest, family=family, seed=0, **overrides)


def _pull_builtin(res: Resolved, dest: Path) -> Path:
    if res.step == 0:
        return _build_initial(res.family, dest)
    local = default_dest(res.family.name, res.step)
    if not is_complete(local):
        have = ", ".join(str(s) for s in res.family.available_steps())
        raise UserError(
            f"{res.label} does not exist locally (looked in {local}); steps available: {have}. "
            "Train and save it first (e.g. `injection demo`)"
        )
    if local.resolve() != dest.resolve():
        tmp = staging_dir(dest)
        shutil.copytree(local, tmp, dirs_exist_ok=True)
        replace_dir(tmp, dest)
    return dest


def pull_checkpoint(
    ref: str,
    *,
    source: str = "original",
    dest: str | Path | None = None,
    trust_pickle: bool = False,
    catalog: Catalog | None = None,
    policy: HttpPolicy | None = None,
    workers: int = 4,
    keep_original: bool = False,
) -> Path:
    """Fetch FAMILY@STEP|STAGE into `dest` (default `$INJECTION_CACHE/FAMILY/stepN`); returns the directory.

    An already complete destination holding the same checkpoint is returned as is.
    """
    if source not in ("original", "hf"):
        raise UserError(f"--source must be 'original' or 'hf', got {source!r}")
    res = (catalog or load_catalog()).resolve(ref)
    for issue in res.family.issues_at(res.step):
        warnings.warn(
            f"{res.ref}: a problem is reported with this published checkpoint ({issue.source}): "
            f"{issue.reported}; check its weights before relying on them",
            stacklevel=2,
        )
    target = Path(dest).expanduser() if dest is not None else default_dest(res.family.name, res.step)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a directory; choose another --out")
    if is_complete(target):
        meta = read_meta(target)
        if meta.get("family") != res.family.name or meta.get("step") != res.step:
            raise UserError(f"{target} already holds {meta.get('family')}@{meta.get('step')}, not {res.ref}")
        return target
    if res.family.builtin:
        return _pull_builtin(res, target)
    if source == "hf":
        out = _pull_hf(res, target)
        warnings.warn(
            f"{res.ref} from Hugging Face holds weights only: a run from it starts with fresh AdamW moments unless "
            "`optimizer.moment_warmup_steps: K` rebuilds them from the K original batches before the checkpoint"
            + ("; `--source original` carries the run's own" if res.entry and res.entry.urls else ""),
            stacklevel=2,
        )
        return out
    if target.exists() and any(target.iterdir()):
        raise UserError(
            f"{target} exists, is not empty and is not a complete checkpoint; remove it or choose another --out"
        )
    if target.exists():
        target.rmdir()
    return _pull_original(
        res, target, trust_pickle=trust_pickle, policy=policy, workers=workers, keep_original=keep_original
    )


def local_checkpoint(ref: str) -> Path:
    """A checkpoint directory, or a catalog reference (`olmo-7b@mid`) already pulled into the cache.

    Step 0 of a built-in family (`tiny@0`, `pythia-tiny@0`) is built on first use, and `FAMILY@0+L<n>` is the
    same model with an n-token context (for inputs longer than the catalog's sequence length)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if "@" not in ref:
        raise UserError(f"checkpoint {ref!r} is not a directory (nor a catalog reference FAMILY@STEP)")
    name, _, what = ref.partition("@")
    if what.startswith("0+L"):
        family = load_catalog().family(name)
        seq_len = what[len("0+L") :]
        if not family.builtin or not seq_len.isdigit() or int(seq_len) < 2:
            raise UserError(
                f"checkpoint {ref!r}: expected FAMILY@0+L<context length> of a built-in family, e.g. tiny@0+L512"
            )
        local = default_dest(name, 0).with_name(f"step0-L{seq_len}")
        if not is_complete(local):
            _build_initial(family, local, max_sequence_length=int(seq_len))
        return local
    resolved = load_catalog().resolve(ref)
    local = default_dest(resolved.family.name, resolved.step)
    if not is_complete(local):
        if resolved.family.builtin and resolved.step == 0:
            _build_initial(resolved.family, local)
        else:
            raise UserError(
                f"checkpoint {ref} is not in the local cache ({local}); fetch it first with `injection pull {ref}`"
            )
    return local
