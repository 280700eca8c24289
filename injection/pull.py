"""`injection pull`: fetch a catalogued checkpoint and leave it in the harness's checkpoint layout.

Sources:
- `original`: the run's unsharded directory over HTTP(S) (resumable `.part` files with Range requests,
  retries with exponential backoff, files in parallel, sizes checked against the server's), then converted
  by injection.convert (keeps optimizer moments and trainer step);
- `hf`: the family's `-hf` repository at the step's confirmed revision (weights only, no optimizer state);
- built-in families (`tiny`): step 0 is built; other steps must already exist locally.

Nothing that looks complete appears before it is: downloads sit in the cache's `downloads/` folder, the
conversion writes into a hidden temporary sibling of the destination, and checkpoint.json is written last.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from injection.catalog import Catalog, Family, Resolved, cache_dir, load_catalog
from harness.atomic import replace_dir, staging_dir
from harness.errors import UserError
from injection.tiny import build_tiny_checkpoint, is_complete, read_checkpoint_meta, write_checkpoint_json

REQUIRED_FILE = "model.pt"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `retries` further attempts per file, sleeping `backoff * 2**attempt` seconds."""

    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    chunk_size: int = 1 << 20
    """Bytes per read; a dropped connection loses at most the chunk being read."""


class _Retryable(Exception):
    """A transfer that may succeed if tried again (dropped connection, short body, 5xx)."""


def safe_name(name: str) -> str:
    """A remote file name that stays inside the destination: no absolute paths, no `..`, no backslashes."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        raise UserError(f"refusing remote file name {name!r}: it must be a relative path inside the checkpoint")
    norm = posixpath.normpath(name)
    if norm.startswith("..") or posixpath.isabs(norm) or any(p == ".." for p in name.split("/")):
        raise UserError(f"refusing remote file name {name!r}: it escapes the destination directory")
    return norm


def default_dest(family: str, step: int) -> Path:
    return cache_dir() / family / f"step{step}"


# --- HTTP download -------------------------------------------------------------------------------------


def _total_from(resp: requests.Response, have: int) -> int | None:
    content_range = resp.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (have if resp.status_code == 206 else 0)


def download_file(url: str, dest: Path, *, session: requests.Session, policy: RetryPolicy,
                  progress: Progress | None = None, optional: bool = False) -> bool:
    """Download `url` to `dest`, continuing `dest.part` where an earlier attempt stopped.

    Returns False when the file does not exist (404) and `optional`; raises UserError when a required
    file is missing, the size never matches the server's, or retries run out.
    """
    part = dest.with_name(dest.name + ".part")
    task = progress.add_task(dest.name, total=None) if progress else None
    last_error = ""
    for attempt in range(policy.retries + 1):
        if attempt:
            time.sleep(policy.backoff * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=policy.timeout) as resp:
                if resp.status_code == 404:
                    if optional:
                        if progress:
                            progress.update(task, description=f"{dest.name} (absent)", total=0, completed=0)
                        return False
                    raise UserError(f"{url}: not found (404); {dest.name} is required")
                if resp.status_code == 416 and have:
                    # The .part may already hold everything; a fresh request tells the true size.
                    part.unlink()
                    raise _Retryable("range not satisfiable; restarting the file")
                if resp.status_code >= 500:
                    raise _Retryable(f"HTTP {resp.status_code}")
                if resp.status_code not in (200, 206):
                    raise UserError(f"{url}: HTTP {resp.status_code} {resp.reason}")
                if resp.status_code == 200 and have:
                    have = 0  # the server ignored the Range header: start over
                total = _total_from(resp, have)
                if progress:
                    progress.update(task, total=total, completed=have)
                with part.open("ab" if have else "wb") as f:
                    for chunk in resp.iter_content(policy.chunk_size):
                        f.write(chunk)
                        if progress:
                            progress.advance(task, len(chunk))
            size = part.stat().st_size
            if total is not None and size != total:
                if size > total:
                    part.unlink()
                raise _Retryable(f"got {size} bytes, the server announced {total}")
            os.replace(part, dest)
            return True
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Retryable) as err:
            last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            if isinstance(err, requests.exceptions.ChunkedEncodingError):
                last_error = f"connection closed before the announced size arrived: {last_error}"
    raise UserError(f"{url}: download failed after {policy.retries + 1} attempts ({last_error}); "
                    f"the partial file {part} is kept and a new pull continues from it")


def download_directory(base_url: str, files: list[str], dest: Path, *, policy: RetryPolicy,
                       workers: int = 4) -> list[str]:
    """Fetch `files` of a remote checkpoint directory into `dest` in parallel; returns those present."""
    names = [safe_name(f) for f in files]
    dest.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    session = requests.Session()
    with Progress(*columns, transient=False) as progress, ThreadPoolExecutor(max_workers=workers) as pool:
        def fetch(name: str) -> bool:
            target = dest / name
            if target.is_file():
                return True  # finished by an earlier, interrupted pull
            target.parent.mkdir(parents=True, exist_ok=True)
            return download_file(base + quote(name), target, session=session, policy=policy,
                                 progress=progress, optional=name != REQUIRED_FILE)

        results = dict(zip(names, pool.map(fetch, names)))
    return [n for n, ok in results.items() if ok]


# --- sources ------------------------------------------------------------------------------------------


def _pull_original(res: Resolved, dest: Path, *, trust_pickle: bool, policy: RetryPolicy, workers: int,
                   keep_original: bool) -> Path:
    from injection.convert import convert_original

    if res.entry is None or not res.entry.urls:
        raise UserError(f"{res.ref}: the catalog lists no original URL for this step")
    if REQUIRED_FILE not in res.family.files:
        raise UserError(f"{res.family.name}.files must include {REQUIRED_FILE}")
    raw = cache_dir() / "downloads" / res.family.name / f"step{res.step}"
    errors = []
    for url in res.entry.urls:
        try:
            download_directory(url, list(res.family.files), raw, policy=policy, workers=workers)
            break
        except UserError as err:
            errors.append(str(err))
    else:
        raise UserError("; ".join(errors))
    try:
        out = convert_original(raw, dest, family=res.family, step=res.step, source_url=url,
                               trust_pickle=trust_pickle)
    except UserError as err:
        raise UserError(f"{err} (downloaded files are in {raw}; delete them to download again)") from None
    if not keep_original:
        shutil.rmtree(raw, ignore_errors=True)
    return out


def _hf_hint(repo: str, revision: str) -> str:
    return (f"on a machine with network access run `hf download {repo} --revision {revision} --local-dir DIR`, "
            "copy DIR here and rerun this pull with `--dest DIR` (the snapshot is adopted in place)")


def _pull_hf(res: Resolved, dest: Path) -> Path:
    from injection.tiny import family_meta

    fam = res.family
    revision = res.entry.hf_revision if res.entry else None
    if not fam.hf_repo or not revision:
        raise UserError(f"{res.ref}: no confirmed Hugging Face revision for this step in the catalog; "
                        "use --source original")
    meta = family_meta(fam, res.step, "hf", hf_repo=fam.hf_repo, hf_revision=revision, trainer_state=None)
    if dest.is_dir() and (dest / "config.json").is_file() and any(dest.glob("*.safetensors")):
        _adopt(dest, meta)  # a snapshot fetched elsewhere, pointed at with --dest
        return dest
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    tmp = staging_dir(dest)
    try:
        snapshot_download(fam.hf_repo, revision=revision, local_dir=str(tmp),
                          allow_patterns=["*.json", "*.safetensors", "*.txt"])
        _adopt(tmp, meta)
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


def _adopt(directory: Path, meta: dict) -> None:
    """Check an HF snapshot loads as an Olmo config and mark it complete with checkpoint.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{directory}: not a loadable HF model directory: {err}") from None
    if config.model_type != "olmo":
        raise UserError(f"{directory}: model_type {config.model_type!r}, expected 'olmo'")
    if not (directory / "tokenizer.json").is_file():
        from harness.tokenizers import load_tokenizer

        load_tokenizer("olmo").save_pretrained(str(directory))
    write_checkpoint_json(directory, {**meta, "has_optimizer_state": False, "format_version": 1})


def _pull_builtin(res: Resolved, dest: Path) -> Path:
    if res.step == 0:
        return build_tiny_checkpoint(dest)
    local = default_dest(res.family.name, res.step)
    if not is_complete(local):
        have = ", ".join(str(s) for s in res.family.available_steps())
        raise UserError(f"{res.ref} does not exist locally (looked in {local}); steps available: {have}. "
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

    An already complete destination is returned as is.
    """
    if source not in ("original", "hf"):
        raise UserError(f"--source must be 'original' or 'hf', got {source!r}")
    res = (catalog or load_catalog()).resolve(ref)
    target = Path(dest).expanduser() if dest is not None else default_dest(res.family.name, res.step)
    if is_complete(target):
        meta = read_checkpoint_meta(target)
        if meta.get("family") != res.family.name or meta.get("step") != res.step:
            raise UserError(f"{target} already holds {meta.get('family')}@{meta.get('step')}, not {res.ref}")
        return target
    if res.family.builtin:
        return _pull_builtin(res, target)
    if source == "hf":
        return _pull_hf(res, target)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target} exists, is not empty and is not a complete checkpoint; remove it or choose "
                        "another --dest")
    if target.exists():
        target.rmdir()
    return _pull_original(res, target, trust_pickle=trust_pickle, policy=policy, workers=workers,
                          keep_original=keep_original)
