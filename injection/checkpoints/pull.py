"""`injection pull`: fetch a catalogued checkpoint and leave it in the checkpoint layout (injection.checkpoints.layout).

Sources:
- `original`: the run's unsharded directory over HTTP(S) (injection.checkpoints.download), then converted by the
  family's module (keeps AdamW moments, the trainer's step and its data-stream position);
- `hf`: the family's Hugging Face repository at the step's confirmed revision (weights only, no optimizer state);
- built-in families (`tiny`): step 0 is built; other steps must already exist locally.

Nothing that looks complete appears before it is: downloads sit in the cache's `downloads/` folder, the
conversion writes into a hidden staging sibling of the destination, and checkpoint.json is written last.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.atomic import replace_dir, staging_dir
from harness.errors import UserError
from harness.paths import cache_dir
from injection.checkpoints.catalog import Catalog, Resolved, load_catalog
from injection.checkpoints.download import RetryPolicy, download_directory
from injection.checkpoints.family import model_family
from injection.checkpoints.layout import DataPosition, checkpoint_meta, is_complete, mark_complete, read_meta

#: The one file an original checkpoint directory must have; the others are optional.
REQUIRED_FILE = "model.pt"


def default_dest(family: str, step: int) -> Path:
    """Where `injection pull` puts FAMILY@STEP: `$INJECTION_CACHE/FAMILY/stepN`."""
    return cache_dir() / family / f"step{step}"


def _pull_original(res: Resolved, dest: Path, *, trust_pickle: bool, policy: RetryPolicy, workers: int,
                   keep_original: bool) -> Path:
    if res.entry is None or not res.entry.urls:
        raise UserError(f"{res.ref}: the catalog lists no original URL for this step")
    if REQUIRED_FILE not in res.family.files:
        raise UserError(f"{res.family.name}.files must include {REQUIRED_FILE}")
    raw = cache_dir() / "downloads" / res.family.name / f"step{res.step}"
    errors = []
    for url in res.entry.urls:
        try:
            download_directory(url, list(res.family.files), raw, policy=policy, workers=workers,
                               required=(REQUIRED_FILE,))
            break
        except UserError as err:
            errors.append(str(err))
    else:
        raise UserError("; ".join(errors))
    code = model_family(res.family.kind)
    try:
        out = code.convert_original(raw, dest, family=res.family, step=res.step, source_url=url,
                                    trust_pickle=trust_pickle)
    except UserError as err:
        raise UserError(f"{err} (downloaded files are in {raw}; delete them to download again)") from None
    if not keep_original:
        shutil.rmtree(raw, ignore_errors=True)
    return out


def _hf_hint(repo: str, revision: str) -> str:
    return (f"on a machine with network access run `hf download {repo} --revision {revision} --local-dir DIR`, "
            "copy DIR here and rerun this pull with `--out DIR` (the snapshot is adopted in place)")


def _hf_meta(res: Resolved, revision: str) -> dict:
    fam = res.family
    batch = fam.batch_size_at(res.step)
    return checkpoint_meta(family=fam.name, kind=fam.kind, step=res.step, source="hf", global_batch_size=batch,
                           seq_len=fam.seq_len, lr_schedule=fam.lr_schedule, optimizer=fam.optimizer,
                           data_position=DataPosition(0, res.step * batch, "step x rows"),
                           hf_repo=fam.hf_repo, hf_revision=revision, has_optimizer_state=False)


def _pull_hf(res: Resolved, dest: Path) -> Path:
    fam = res.family
    revision = res.entry.hf_revision if res.entry else None
    if not fam.hf_repo or not revision:
        raise UserError(f"{res.ref}: no confirmed Hugging Face revision for this step in the catalog; "
                        "use --source original")
    meta = _hf_meta(res, revision)
    if dest.is_dir() and (dest / "config.json").is_file() and any(dest.glob("*.safetensors")):
        _adopt(dest, meta, res)  # a snapshot fetched elsewhere, pointed at with --out
        return dest
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    tmp = staging_dir(dest)
    try:
        snapshot_download(fam.hf_repo, revision=revision, local_dir=str(tmp),
                          allow_patterns=["*.json", "*.safetensors", "*.txt"])
        _adopt(tmp, meta, res)
        os.replace(tmp, dest)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot fetch {fam.hf_repo} at revision {revision} ({type(err).__name__}: {first}); "
                        + _hf_hint(fam.hf_repo, revision)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _adopt(directory: Path, meta: dict, res: Resolved) -> None:
    """Check an HF snapshot loads with the family's model type and mark it complete with checkpoint.json."""
    from transformers import AutoConfig

    code = model_family(res.family.kind)
    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{directory}: not a loadable HF model directory: {err}") from None
    if config.model_type != code.MODEL_TYPE:
        raise UserError(f"{directory}: model_type {config.model_type!r}, expected {code.MODEL_TYPE!r} "
                        f"for {res.family.name}")
    if not (directory / "tokenizer.json").is_file():
        code.tokenizer(res.family).save_pretrained(str(directory))
    mark_complete(directory, meta)


def _pull_builtin(res: Resolved, dest: Path) -> Path:
    if res.step == 0:
        from injection.checkpoints.tiny import build_tiny_checkpoint

        return build_tiny_checkpoint(dest)
    local = default_dest(res.family.name, res.step)
    if not is_complete(local):
        have = ", ".join(str(s) for s in res.family.available_steps())
        raise UserError(f"{res.label} does not exist locally (looked in {local}); steps available: {have}. "
                        "Train and save it first (e.g. `injection demo`)")
    if local.resolve() != dest.resolve():
        tmp = staging_dir(dest)
        shutil.copytree(local, tmp, dirs_exist_ok=True)
        replace_dir(tmp, dest)
    return dest


def pull_checkpoint(ref: str, *, source: str = "original", dest: str | Path | None = None,
                    trust_pickle: bool = False, catalog: Catalog | None = None,
                    policy: RetryPolicy = RetryPolicy(), workers: int = 4, keep_original: bool = False) -> Path:
    """Fetch FAMILY@STEP|STAGE into `dest` (default `$INJECTION_CACHE/FAMILY/stepN`); returns the directory.

    An already complete destination holding the same checkpoint is returned as is.
    """
    if source not in ("original", "hf"):
        raise UserError(f"--source must be 'original' or 'hf', got {source!r}")
    res = (catalog or load_catalog()).resolve(ref)
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
        return _pull_hf(res, target)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target} exists, is not empty and is not a complete checkpoint; remove it or choose "
                        "another --out")
    if target.exists():
        target.rmdir()
    return _pull_original(res, target, trust_pickle=trust_pickle, policy=policy, workers=workers,
                          keep_original=keep_original)


def local_checkpoint(ref: str) -> Path:
    """A checkpoint directory, or a catalog reference (`olmo-7b@mid`) already pulled into the cache.

    `tiny@0` is built on first use, and `tiny@0+L<n>` is the same model with an n-token context (for inputs
    longer than the catalog's sequence length)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if ref.startswith("tiny@0+L"):
        seq_len = ref[len("tiny@0+L"):]
        if not seq_len.isdigit() or int(seq_len) < 2:
            raise UserError(f"checkpoint {ref!r}: expected tiny@0+L<sequence length>, e.g. tiny@0+L512")
        local = default_dest("tiny", 0).with_name(f"step0-L{seq_len}")
        if not is_complete(local):
            from injection.checkpoints.tiny import build_tiny_checkpoint

            build_tiny_checkpoint(local, seed=0, max_sequence_length=int(seq_len))
        return local
    if "@" not in ref:
        raise UserError(f"checkpoint {ref!r} is not a directory (nor a catalog reference FAMILY@STEP)")
    resolved = load_catalog().resolve(ref)
    local = default_dest(resolved.family.name, resolved.step)
    if not is_complete(local):
        if resolved.family.builtin and resolved.step == 0:
            from injection.checkpoints.tiny import build_tiny_checkpoint

            build_tiny_checkpoint(local, seed=0)
        else:
            raise UserError(f"checkpoint {ref} is not in the local cache ({local}); fetch it first with "
                            f"`injection pull {ref}`")
    return local
