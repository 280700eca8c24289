"""`injection data prepare FAMILY`: the corpus description of an original run, built from the catalog's facts.

A family whose data is a pre-packed Megatron indexed dataset (`data_order.format: megatron-indexed`, Pythia's
published Pile) is described by its index and token-file URLs (`data_order.index_url`, `data_urls`): preparing it
opens the dataset once over HTTP (one size request per file, the index header and its last entry), checks that it
holds rows of the run's row length, and writes a `corpus.json` of that format (`prepare_indexed`). The rest of this
module is about OLMo's format:

The catalog's `data_order.data_paths` names the run's list of token files: a list shipped in
`injection/data/lists/` (`olmo-1b.txt`, `olmo-7b.txt`) or a list file beside the catalog. Preparing it
writes `corpus.json` (the format of `injection.data.source.CorpusInfo`) whose `paths` are the absolute URLs
and whose `instances_per_file` spare the remote reader one size request per file, so
`open_corpus(DIR)` serves the run's instances by byte ranges.

What it fetches, and what it checks:
- the size of every file, by HEAD requests in parallel, each retried with exponential backoff. Sizes are
  cached in `sizes.json` beside `corpus.json` as they arrive, so a second or interrupted run fetches only the
  sizes it does not know. Instances per file = bytes // (itemsize · seq_len), as ai2-olmo counts them
  (uint16 files for vocabularies up to 65,536 tokens);
- the published order file (the catalog's `global_indices_url`, epoch 0), where the host still has it: its
  entry count must equal the files' instance count up to OLMo's rounding to a multiple of the number of
  ranks (less than one global batch), or the file set does not belong to that order. Every index must be
  below the instance count; the published OLMo-7B file is known to break this (allenai/OLMo issue 538).
  Reading the whole file (3.7 GB for OLMo-7B) is left to `--full-order-check`; otherwise every read of the
  order (`data extract`, a run) checks the entries it reads, which is where an out-of-range index would do harm;
- otherwise (no published file, a 404, or `--rebuild-order`) the order is rebuilt from the seed with
  ai2-olmo's permutation, with a warning that it cannot be verified against the original run (the
  OLMo-1B epoch-1 file is lost, allenai/OLMo issue 879).

What the hosts do, as the OLMo issue trackers report it: directory URLs answer 404 by design (a list names
files only, and a URL ending in `/` is refused before anything is fetched); a single file answers 404 now
and then (retried; files still missing are named together at the end, after every other size is cached);
Range reads can come back short (the read resumes where the body stopped).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from harness.atomic import write_json_atomic
from harness.errors import UserError
from harness.http import HttpClient, HttpError, HttpPolicy, NotFound, default_policy
from harness.paths import cache_dir
from harness.progress import progress as progress_bar
from injection.checkpoints.catalog import load_catalog
from injection.data.formats import open_corpus
from injection.data.indexed import IndexedCorpus, IndexedCorpusInfo
from injection.data.order import GlobalIndices
from injection.data.remote import is_url
from injection.data.source import CORPUS_FILE, DTYPES, INDEXED_FORMAT, CorpusInfo

LISTS_DIR = Path(__file__).resolve().parent / "lists"
SIZES_FILE = "sizes.json"
_NPY_MAGIC = b"\x93NUMPY"


def prepared_dir(family: str) -> Path:
    """Where `injection data prepare FAMILY` writes by default, and where `data extract --family` looks."""
    return cache_dir() / "data" / family


# --- file lists ------------------------------------------------------------------------------------------


def read_file_list(path: Path) -> list[str]:
    """URLs of a list file: one a line, `#` comments and blank lines ignored, in order. A URL may repeat: ai2-olmo
    numbers the instances of every entry of `data.paths` anew (OLMo 2's configs list some files twice, and its
    stage-2 mixes upsample by repeating files)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: file list not found") from None
    urls: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        if not is_url(line):
            raise UserError(f"{where}: {line!r} is not an http(s) URL")
        if line.endswith("/"):
            raise UserError(
                f"{where}: {line} names a directory; the data hosts answer directory URLs with 404, "
                "so a list names every file"
            )
        urls.append(line)
    if not urls:
        raise UserError(f"{path}: the file list names no files")
    return urls


def resolve_list(data_paths: str | None, catalog_path: Path, family: str) -> Path:
    """The list file named by a family's `data_order.data_paths`: a shipped list's name, or a path relative
    to the catalog's folder."""
    if not data_paths:
        raise UserError(
            f"{catalog_path}: families.{family}.data_order.data_paths is null: the catalog lists no "
            f"token files for {family!r}"
        )
    shipped = LISTS_DIR / data_paths
    if "/" not in data_paths and shipped.is_file():
        return shipped
    path = Path(data_paths).expanduser()
    path = path if path.is_absolute() else catalog_path.parent / path
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in LISTS_DIR.glob("*.txt")))
        raise UserError(
            f"{catalog_path}: families.{family}.data_order.data_paths {data_paths!r} is neither a "
            f"shipped list ({known}) nor a file ({path} does not exist)"
        )
    return path


# --- HTTP ---------------------------------------------------------------------------------------------

#: 404 answers retried per file: the public hosts answer 404 for an existing file now and then.
NOT_FOUND_RETRIES = 2


def _client(policy: HttpPolicy | None) -> HttpClient:
    policy = policy if policy is not None else default_policy()
    return HttpClient(replace(policy, not_found_retries=max(policy.not_found_retries, NOT_FOUND_RETRIES)))


def _size(http: HttpClient, url: str) -> tuple[int | None, str]:
    """(bytes, "") of a file, or (None, why) once the host's answer is final or the retries are spent."""
    try:
        return http.size(url), ""
    except HttpError as err:
        return None, err.reason


# --- sizes -----------------------------------------------------------------------------------------------


def _load_sizes(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a cache, not an input: a damaged one is refetched
    return {k: int(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and v >= 0}


def fetch_sizes(
    urls: list[str], cache: Path, http: HttpClient, *, workers: int = 16, show_progress: bool = True
) -> dict[str, int]:
    """Byte size of every URL; known sizes come from `cache`, new ones are added to it as they arrive.

    Every URL is tried; those that still fail are named together in one UserError at the end."""
    sizes = _load_sizes(cache)
    unique = list(dict.fromkeys(urls))  # a file listed twice is sized once
    todo = [u for u in unique if u not in sizes]
    failed: dict[str, str] = {}
    last_write = time.monotonic()
    with progress_bar() as progress:
        task = progress.add_task(
            "file sizes", total=len(unique), completed=len(unique) - len(todo), visible=show_progress
        )
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = {pool.submit(_size, http, url): url for url in todo}
            for future in as_completed(futures):
                url = futures[future]
                size, why = future.result()
                if size is None:
                    failed[url] = why
                else:
                    sizes[url] = size
                progress.advance(task)
                if time.monotonic() - last_write > 1.0:
                    write_json_atomic(cache, sizes)
                    last_write = time.monotonic()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if todo:
                write_json_atomic(cache, sizes)
    if failed:
        lines = "\n".join(f"  {url}: {why}" for url, why in failed.items())
        raise UserError(
            f"{len(failed)} of {len(unique)} token files could not be sized:\n{lines}\n"
            f"the other {len(unique) - len(failed)} sizes are cached in {cache}; run the command again "
            "to fetch only these"
        )
    return {u: sizes[u] for u in urls}


# --- the order file --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderFile:
    url: str
    size: int
    header: int
    entries: int


def probe_order(url: str, http: HttpClient) -> OrderFile | None:
    """Size and layout of a published order file; None when the host no longer has it."""
    try:
        size = http.size(url)
    except NotFound:
        return None
    except HttpError as err:
        raise UserError(f"{url}: cannot get the order file's size ({err.reason})") from None
    head = http.read(url, 0, min(size, len(_NPY_MAGIC))) if size else b""
    if head.startswith(_NPY_MAGIC):
        entries = len(GlobalIndices(url))  # np.save layout: the reader parses the header
        return OrderFile(url, size, size - 4 * entries, entries)
    if size % 4:
        raise UserError(f"{url}: {size} bytes is not a whole number of uint32 entries; not an OLMo order file")
    return OrderFile(url, size, 0, size // 4)


def check_order_size(order: OrderFile, n_instances: int, n_files: int, max_batch: int) -> None:
    """OLMo's order has one entry per instance, cut or padded to a multiple of the number of ranks (which
    divides the global batch size), so a file set that matches differs by less than one batch."""
    if abs(order.entries - n_instances) >= max_batch:
        raise UserError(
            f"{order.url}: the order file has {order.entries:,} entries, but the {n_files} token files hold "
            f"{n_instances:,} instances (they may differ by less than one global batch, {max_batch:,}): the file "
            "list does not belong to this order"
        )


def scan_order(
    order: OrderFile, n_instances: int, http: HttpClient, *, chunk_bytes: int = 64 << 20, show_progress: bool = True
) -> int:
    """Read the whole order file; returns its largest index. Raises UserError naming the file, the first
    offending entry and the largest index when any index is ≥ n_instances."""
    largest, first_bad, n_bad = -1, None, 0
    step = max(4, chunk_bytes // 4 * 4)
    with progress_bar() as progress:
        task = progress.add_task("order entries checked", total=order.entries, visible=show_progress)
        for start in range(0, order.entries * 4, step):
            length = min(step, order.entries * 4 - start)
            values = np.frombuffer(http.read(order.url, order.header + start, length), dtype="<u4")
            largest = max(largest, int(values.max(initial=0)))
            bad = np.flatnonzero(values >= n_instances)
            if len(bad):
                n_bad += len(bad)
                if first_bad is None:
                    first_bad = start // 4 + int(bad[0])
            progress.advance(task, len(values))
    if first_bad is not None:
        raise UserError(
            f"{order.url}: {n_bad:,} of the order's {order.entries:,} entries are not below the {n_instances:,} "
            f"instances of the token files (first at entry {first_bad:,}; largest index {largest:,}): this order "
            "does not belong to these files. Prepare with --rebuild-order to use the order rebuilt from the seed "
            "(it cannot be verified)"
        )
    return largest


def check_prepare_out(out: Path, family: str) -> None:
    """Refuse to replace, in the folder the description goes to, a `corpus.json` or `sizes.json` that is not this
    command's own work for `family` (a corpus the user built there, a file of the same name)."""
    corpus = out / CORPUS_FILE
    if corpus.exists():
        try:
            data = json.loads(corpus.read_text(encoding="utf-8"))
            ours = isinstance(data, dict) and (data.get("extra") or {}).get("family") == family
            ours = ours and "prepared" in data["extra"]
        except (OSError, ValueError, RecursionError, AttributeError, TypeError):
            ours = False
        if not ours:
            raise UserError(
                f"--out {out}: {CORPUS_FILE} exists and is not a description prepared for {family}; refusing to "
                "replace it: choose another --out"
            )
    sizes = out / SIZES_FILE
    if sizes.exists():
        try:
            data = json.loads(sizes.read_text(encoding="utf-8"))
            ours = isinstance(data, dict) and all(isinstance(k, str) and is_url(k) for k in data)
        except (OSError, ValueError, RecursionError):
            ours = False
        if not ours:
            raise UserError(
                f"--out {out}: {SIZES_FILE} exists and is not this command's cache of file sizes; refusing to replace "
                "it: choose another --out"
            )


def open_prepared(family: str):
    """(corpus, location) of `family`'s prepared description in the cache (`injection data prepare FAMILY`)."""
    where = prepared_dir(family)
    if not (where / CORPUS_FILE).is_file():
        raise UserError(
            f"no prepared corpus description of {family!r} at {where / CORPUS_FILE}; run "
            f"`injection data prepare {family}` first (or pass --source DIR for one prepared with --out DIR)"
        )
    return open_corpus(where), str(where)


# --- prepare ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparePlan:
    """What `prepare_corpus` will do: resolved from the catalog and the list, without any network."""

    family: str
    catalog: Path
    list_file: Path
    urls: list[str]
    out: Path
    dtype: str
    seq_len: int
    seed: int
    eos_token_id: int
    tokenizer: str | None
    max_batch: int
    order_url: str | None
    """The published order file to use; None = rebuild from the seed."""
    rebuild_reason: str | None
    full_order_check: bool
    cached: list[str] = field(default_factory=list)
    """URLs whose size `sizes.json` already holds."""

    def describe(self) -> list[str]:
        """The plan in lines, for `--dry-run`."""
        distinct = set(self.urls)
        repeats = f" ({len(self.urls) - len(distinct)} of them repeat a file)" if len(distinct) < len(self.urls) else ""
        lines = [
            f"{self.family}: {len(self.urls)} token files{repeats} from {self.list_file}, {self.dtype} tokens",
            f"would fetch: the sizes of {len(distinct - set(self.cached))} files by HEAD requests "
            f"({len(set(self.cached))} known from {self.out / SIZES_FILE})",
        ]
        if self.order_url is not None:
            what = (
                "every index (reads the whole file)"
                if self.full_order_check
                else "its size (indices are checked in every window `data extract` reads)"
            )
            lines.append(f"would check: the order file {self.order_url}: {what}")
        else:
            lines.append(
                f"would rebuild: the order from seed {self.seed} + epoch 0 ({self.rebuild_reason}); "
                "it cannot be verified against the original run"
            )
        lines.append(f"would write: {self.out / CORPUS_FILE}")
        return lines


def plan_prepare(
    family: str,
    out: Path | None = None,
    *,
    catalog_path: Path | None = None,
    rebuild_order: bool = False,
    full_order_check: bool = False,
) -> PreparePlan:
    """Resolve the family's list, data facts and output folder (reads local files only)."""
    catalog = load_catalog(catalog_path)
    fam = catalog.family(family)
    order = fam.data_order
    where = f"{catalog.path}: families.{family}.data_order"
    if order.seed is None:
        raise UserError(f"{where}.seed is null: the data order of {family!r} is unknown")
    list_file = resolve_list(order.data_paths, catalog.path, family)
    urls = read_file_list(list_file)
    out = Path(out) if out is not None else prepared_dir(family)
    arch = fam.architecture
    dtype = fam.token_dtype  # the run's `memmap_dtype` (uint32 for OLMo 2's 100,278-token vocabulary)
    if rebuild_order:
        order_url, reason = None, "--rebuild-order"
    elif order.global_indices_url is None:
        order_url, reason = None, f"the catalog lists no published order file for {family}"
    else:
        order_url, reason = order.global_indices_url, None
    check_prepare_out(out, family)
    known = _load_sizes(out / SIZES_FILE)
    return PreparePlan(
        family=family,
        catalog=catalog.path,
        list_file=list_file,
        urls=urls,
        out=out,
        dtype=dtype,
        seq_len=order.seq_len,
        seed=order.seed,
        eos_token_id=arch.eos_token_id,
        tokenizer=order.tokenizer,
        max_batch=max(r.global_batch_size for r in fam.batch_sizes),
        order_url=order_url,
        rebuild_reason=reason,
        full_order_check=full_order_check and order_url is not None,
        cached=[u for u in urls if u in known],
    )


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def prepare_corpus(
    plan: PreparePlan,
    *,
    policy: HttpPolicy | None = None,
    workers: int = 16,
    chunk_bytes: int = 64 << 20,
    show_progress: bool = True,
    warn: Callable[[str], None] = _warn,
) -> CorpusInfo:
    """Fetch sizes, check the order and write `plan.out/corpus.json` (last, atomically); returns it.

    `chunk_bytes`: bytes per Range request when the whole order file is read (`full_order_check`)."""
    http = _client(policy)
    plan.out.mkdir(parents=True, exist_ok=True)
    order_url, reason = plan.order_url, plan.rebuild_reason
    order = None
    if order_url is not None:
        # Asked first: a missing order file changes what this run can promise, so say so before the long part.
        order = probe_order(order_url, http)
        if order is None:
            order_url, reason = None, f"the published order file {plan.order_url} is gone (HTTP 404)"
    if order_url is None:
        warn(
            f"{plan.family}: the order will be rebuilt from seed {plan.seed} + epoch 0 with ai2-olmo's permutation "
            f"({reason}); it cannot be verified against the original run"
        )

    sizes = fetch_sizes(plan.urls, plan.out / SIZES_FILE, http, workers=workers, show_progress=show_progress)
    itemsize = np.dtype(DTYPES[plan.dtype]).itemsize
    counts = []
    for url in plan.urls:
        if sizes[url] % itemsize:
            raise UserError(
                f"{url}: {sizes[url]:,} bytes is not a whole number of {plan.dtype} tokens; "
                "not an OLMo token file of this run"
            )
        counts.append(sizes[url] // (itemsize * plan.seq_len))
    n_instances = sum(counts)
    if n_instances == 0:
        raise UserError(f"{plan.list_file}: the {len(plan.urls)} files hold no instance of {plan.seq_len} tokens")

    order_facts: dict = {"source": "rebuilt", "seed": plan.seed, "epoch": 0, "verified": False, "reason": reason}
    if order is not None:
        check_order_size(order, n_instances, len(plan.urls), plan.max_batch)
        order_facts = {"source": order.url, "entries": order.entries, "checked": "size"}
        if plan.full_order_check:
            order_facts.update(
                checked="every index",
                largest_index=scan_order(
                    order, n_instances, http, chunk_bytes=chunk_bytes, show_progress=show_progress
                ),
            )

    info = CorpusInfo(
        paths=list(plan.urls),
        dtype=plan.dtype,
        seq_len=plan.seq_len,
        seed=plan.seed,
        n_instances=n_instances,
        eos_token_id=plan.eos_token_id,
        tokenizer=plan.tokenizer,
        epoch=0,
        global_indices=order.url if order is not None else None,
        instances_per_file=counts,
        extra={
            "family": plan.family,
            "catalog": str(plan.catalog),
            "file_list": str(plan.list_file),
            "order": order_facts,
            "prepared": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    write_json_atomic(plan.out / CORPUS_FILE, info.to_dict())
    return info


# --- pre-packed indexed datasets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexedPlan:
    """What `prepare_indexed` will do for a family whose data is a Megatron indexed dataset (no network)."""

    family: str
    catalog: Path
    out: Path
    index: str
    paths: list[str]
    row_len: int
    seed: int | None
    eos_token_id: int | None
    tokenizer: str | None
    rows_needed: int
    """Rows up to the family's last listed step (the data should hold at least these)."""

    @property
    def urls(self) -> list[str]:
        return [self.index, *self.paths]

    def describe(self) -> list[str]:
        return [
            f"{self.family}: a Megatron indexed dataset, {len(self.paths)} token file(s) and the index {self.index}",
            f"would fetch: the size of {len(self.urls)} files by HEAD requests, the index header and its last "
            f"entry (rows of {self.row_len} tokens expected)",
            f"would write: {self.out / CORPUS_FILE}",
        ]


def is_indexed_family(family: str, catalog_path: Path | None = None) -> bool:
    return load_catalog(catalog_path).family(family).data_order.format == INDEXED_FORMAT


def plan_prepare_indexed(family: str, out: Path | None = None, *, catalog_path: Path | None = None) -> IndexedPlan:
    catalog = load_catalog(catalog_path)
    fam = catalog.family(family)
    order = fam.data_order
    if not (order.index_url and order.data_urls):
        raise UserError(
            f"{catalog.path}: families.{family}.data_order lists no index_url and data_urls: the catalog "
            f"names no published data for {family!r}"
        )
    last_step = max((e.step for e in fam.steps), default=0)
    out = Path(out) if out is not None else prepared_dir(family)
    check_prepare_out(out, family)
    return IndexedPlan(
        family=family,
        catalog=catalog.path,
        out=out,
        index=order.index_url,
        paths=list(order.data_urls),
        row_len=fam.row_len,
        seed=order.seed,
        eos_token_id=getattr(fam.architecture, "eos_token_id", None),
        tokenizer=order.tokenizer,
        rows_needed=fam.tokens_at(last_step) // fam.seq_len,
    )


def prepare_indexed(plan: IndexedPlan, warn: Callable[[str], None] = _warn) -> dict:
    """Open the dataset the plan names (sizes, index header, last entry; rows of the run's length) and write
    `plan.out/corpus.json` (format megatron-indexed) with the facts the index gave; returns it."""
    info = IndexedCorpusInfo(
        index=plan.index,
        paths=plan.paths,
        seq_len=plan.row_len,
        seed=plan.seed,
        eos_token_id=plan.eos_token_id,
        tokenizer=plan.tokenizer,
    )
    corpus = IndexedCorpus(info, plan.out)
    n = len(corpus.dataset)
    if n:
        corpus.dataset.rows(n - 1, n, plan.row_len)  # the last row: a dataset of other rows is named here
    if n < plan.rows_needed:
        warn(
            f"{plan.family}: the dataset holds {n:,} rows, fewer than the {plan.rows_needed:,} the run's listed "
            "steps consumed; continuations from late steps will run out of data"
        )
    resolved = {
        **corpus.info.to_dict(),
        "extra": {
            "family": plan.family,
            "catalog": str(plan.catalog),
            "prepared": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.out / CORPUS_FILE, resolved)
    return resolved
