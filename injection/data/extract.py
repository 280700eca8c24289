"""`injection data extract`: materialize a window of steps of a run's data order as a local corpus.

The window directory is itself a corpus: one token file with the window's instances in batch order,
`global_indices.npy` = 0, 1, …, `instance_ids.npy` (the original instance numbers) and a `corpus.json`
whose `first_step` makes `open_batch_source(DIR, B).get_batch(S + k)` return the original batch S + k.

Resumable: `extract-state.json` pins the request, `extract-done.npy` marks the steps whose tokens are on
disk (set only after the tokens are flushed), and `corpus.json` + `manifest.json` are written last, after
sampled batches re-read from the source have matched. A killed extract never has a `corpus.json`.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from harness.atomic import write_json_atomic
from harness.progress import progress as progress_bar
from injection.data.source import CORPUS_FILE, DTYPES, CorpusBatchSource, CorpusInfo
from harness.errors import UserError

STATE_FILE = "extract-state.json"
DONE_FILE = "extract-done.npy"
TOKENS_FILE = "tokens.npy"
IDS_FILE = "instance_ids.npy"
MANIFEST_FILE = "manifest.json"


def _save_done(out: Path, done: np.ndarray) -> None:
    tmp = out / f".{DONE_FILE}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, done)
    tmp.replace(out / DONE_FILE)


def check_steps(first_step: int, n_steps: int, samples: int) -> list[int]:
    """Evenly spaced steps of the window (first and last included) that the check re-reads."""
    if samples <= 0:
        return []
    picks = np.linspace(first_step, first_step + n_steps - 1, num=min(samples, n_steps))
    return sorted({int(round(x)) for x in picks})


def extract_window(
    source,
    first_step: int,
    n_steps: int,
    out: Path,
    *,
    source_name: str,
    check_samples: int = 4,
    show_progress: bool = True,
) -> dict:
    """Write global steps first_step … first_step + n_steps − 1 of `source` (a BatchSource) to `out`."""
    out = Path(out)
    if first_step < 0 or n_steps < 1:
        raise UserError(f"--start must be ≥ 0 and --steps ≥ 1 (got {first_step}, {n_steps})")
    B, L = source.global_batch_size, source.seq_len
    base_info: CorpusInfo | None = getattr(source, "info", None)
    # The window is OLMo-format: a source in another token type (an indexed dataset's int32) is stored as uint32.
    dtype = base_info.dtype if base_info is not None and base_info.dtype in DTYPES else "uint32"
    state = {
        "source": source_name,
        "first_step": first_step,
        "n_steps": n_steps,
        "global_batch_size": B,
        "seq_len": L,
        "dtype": dtype,
    }
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous != state:
            diff = ", ".join(f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in state.items() if previous.get(k) != v)
            raise UserError(f"{out} holds an extract of a different window ({diff}); choose another --out")
        if (out / MANIFEST_FILE).exists() and (out / CORPUS_FILE).exists():
            return json.loads((out / MANIFEST_FILE).read_text())
    else:
        if any(out.iterdir()):
            raise UserError(f"{out} is not empty and holds no extract; choose an empty or new --out")
        write_json_atomic(state_path, state)

    n_rows = n_steps * B
    mode = "r+" if (out / TOKENS_FILE).exists() else "w+"
    tokens = np.memmap(out / TOKENS_FILE, dtype=dtype, mode=mode, shape=(n_rows, L))
    ids = np.memmap(out / IDS_FILE, dtype=np.uint32, mode=mode, shape=(n_rows,))
    done = np.load(out / DONE_FILE) if (out / DONE_FILE).exists() else np.zeros(n_steps, dtype=bool)
    limit = np.iinfo(np.dtype(dtype)).max

    with progress_bar() as progress:
        task = progress.add_task(f"steps {first_step}…{first_step + n_steps - 1}", total=n_steps, visible=show_progress)
        progress.advance(task, int(done.sum()))
        for k in np.flatnonzero(~done):
            batch, instance_ids = source.get_batch(first_step + int(k))
            if batch.max(initial=0) > limit or batch.min(initial=0) < 0:
                raise UserError(f"step {first_step + k}: token ids do not fit {dtype}")
            tokens[k * B : (k + 1) * B] = batch
            ids[k * B : (k + 1) * B] = instance_ids
            # Mark done only once the tokens are on disk; a kill in between re-extracts this step.
            tokens.flush()
            ids.flush()
            done[k] = True
            _save_done(out, done)
            progress.advance(task)
    del tokens, ids
    np.arange(n_rows, dtype=np.uint32).tofile(out / "global_indices.npy")

    info = CorpusInfo(
        paths=[TOKENS_FILE],
        dtype=dtype,
        seq_len=L,
        seed=base_info.seed if base_info is not None else 0,
        n_instances=n_rows,
        eos_token_id=base_info.eos_token_id if base_info is not None else None,
        tokenizer=base_info.tokenizer if base_info is not None else None,
        epoch=base_info.epoch if base_info is not None else 0,
        global_indices="global_indices.npy",
        first_step=first_step,
        global_batch_size=B,
        instance_ids=IDS_FILE,
        extra={"extracted_from": source_name},
    )
    window = CorpusBatchSource(info, out, B)
    checked = check_steps(first_step, n_steps, check_samples)
    for step in checked:
        a_tokens, a_ids = source.get_batch(step)
        b_tokens, b_ids = window.get_batch(step)
        if not (np.array_equal(a_tokens, b_tokens) and np.array_equal(a_ids, b_ids)):
            raise UserError(f"{out}: step {step} re-read from {source_name} differs from the extracted copy")
    manifest = {
        **state,
        "instances": n_rows,
        "tokens": n_rows * L,
        "checked_steps": checked,
        "check": "equal",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / CORPUS_FILE, info.to_dict())
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest
