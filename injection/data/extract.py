"""`injection data extract`: materialize the part of a run's data stream that a continuation reads, as a window.

A window is a corpus directory of its own: one token file holding the instances a run of N steps reads from a
stream position (epoch, index) on, in stream order, `instance_ids.npy` (their original numbers) and a
`corpus.json` whose `window` lists the segments it holds. `open_corpus(DIR)` then answers for those positions
exactly as the original corpus does, so a run reads the window instead of the remote files, at the batch size
it was extracted for or any other that stays inside it.

Resumable: `extract-state.json` pins the request, `extract-done.npy` marks the chunks whose tokens are on disk (set
only after the tokens are flushed), and `corpus.json` + `manifest.json` are written last, after sampled batches
re-read from the source have matched. A killed extract never has a `corpus.json`.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from harness.atomic import ensure_dir, write_json_atomic
from harness.errors import UserError
from harness.progress import progress as make_progress
from injection.data.source import CORPUS_FILE, DTYPES, BatchStream, Corpus, CorpusInfo, OrderedCorpus

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


def check_steps(n_steps: int, samples: int) -> list[int]:
    """Evenly spaced run steps of the window (first and last included) that the check re-reads."""
    if samples <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n_steps - 1, num=min(samples, n_steps))})


def extract_window(
    corpus: OrderedCorpus,
    stream: BatchStream,
    n_steps: int,
    out: Path,
    *,
    source_name: str,
    check_samples: int = 4,
    show_progress: bool = True,
    label: dict | None = None,
) -> dict:
    """Write the instances that steps 0 … n_steps − 1 of `stream` read from `corpus` into the window `out`.

    `label` (e.g. the checkpoint and global step the window continues) is recorded in the manifest."""
    out = Path(out)
    if n_steps < 1:
        raise UserError(f"--steps must be >= 1, got {n_steps}")
    segments = stream.segments(n_steps)
    info0 = getattr(corpus, "info", None)
    # the source's token type where it is one a corpus can hold (an indexed dataset's may not be: uint32 then)
    dtype = info0.dtype if info0 is not None and info0.dtype in DTYPES else "uint32"
    state = {
        "source": source_name,
        "segments": [asdict(s) for s in segments],
        "batch_size": stream.batch_size,
        "n_steps": n_steps,
        "seq_len": corpus.seq_len,
        "dtype": dtype,
    }
    ensure_dir(out)
    state_path = out / STATE_FILE
    if state_path.exists():
        try:
            previous = json.loads(state_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):
            raise UserError(
                f"{state_path}: unreadable (damaged); move {out} away and extract again, or choose another --out"
            ) from None
        if not isinstance(previous, dict):
            raise UserError(f"{state_path}: not an extract's state; choose another --out")
        if previous != state:
            diff = ", ".join(f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in state.items() if previous.get(k) != v)
            raise UserError(f"{out} holds an extract of a different window ({diff}); choose another --out")
        if (out / MANIFEST_FILE).exists() and (out / CORPUS_FILE).exists():
            return json.loads((out / MANIFEST_FILE).read_text())
    else:
        if any(out.iterdir()):
            raise UserError(f"{out} is not empty and holds no extract; choose an empty or new --out")
        write_json_atomic(state_path, state)

    chunk = stream.batch_size
    # (segment, offset within it, rows) of every chunk, and its first row in the window's files
    chunks = [(s, off, min(chunk, s.count - off)) for s in segments for off in range(0, s.count, chunk)]
    first_rows = np.cumsum([0] + [n for _, _, n in chunks])
    n_rows = int(first_rows[-1])
    mode = "r+" if (out / TOKENS_FILE).exists() else "w+"
    tokens = np.memmap(out / TOKENS_FILE, dtype=dtype, mode=mode, shape=(n_rows, corpus.seq_len))
    ids = np.memmap(out / IDS_FILE, dtype=np.uint32, mode=mode, shape=(n_rows,))
    done = np.load(out / DONE_FILE) if (out / DONE_FILE).exists() else np.zeros(len(chunks), dtype=bool)
    limit = np.iinfo(np.dtype(dtype)).max

    with make_progress() as progress:
        task = progress.add_task(f"extracting {n_steps} steps", total=len(chunks), visible=show_progress)
        progress.advance(task, int(done.sum()))
        for c in np.flatnonzero(~done):
            seg, offset, count = chunks[c]
            batch, instance_ids = corpus.instances(seg.epoch, seg.start + offset, count)
            if batch.max(initial=0) > limit or batch.min(initial=0) < 0:
                raise UserError(f"epoch {seg.epoch} positions {seg.start + offset}…: token ids do not fit {dtype}")
            rows = slice(int(first_rows[c]), int(first_rows[c + 1]))
            tokens[rows] = batch
            ids[rows] = instance_ids
            # Mark done only once the tokens are on disk; a kill in between re-extracts this chunk.
            tokens.flush()
            ids.flush()
            done[c] = True
            _save_done(out, done)
            progress.advance(task)
    del tokens, ids

    info = CorpusInfo(
        paths=[TOKENS_FILE],
        dtype=dtype,
        seq_len=corpus.seq_len,
        seed=(info0.seed or 0) if info0 is not None else 0,
        n_instances=corpus.epoch_length(segments[0].epoch),
        eos_token_id=info0.eos_token_id if info0 is not None else None,
        tokenizer=info0.tokenizer if info0 is not None else None,
        epoch=segments[0].epoch,
        global_indices=None,
        window=[asdict(s) for s in segments],
        instance_ids=IDS_FILE,
        extra={"extracted_from": source_name, **(label or {})},
    )
    window = BatchStream(Corpus(info, out), stream.epoch, stream.start, stream.batch_size)
    checked = check_steps(n_steps, check_samples)
    for k in checked:
        a_tokens, a_ids = stream.batch(k)
        b_tokens, b_ids = window.batch(k)
        if not (np.array_equal(a_tokens, b_tokens) and np.array_equal(a_ids, b_ids)):
            raise UserError(f"{out}: step {k} re-read from {source_name} differs from the extracted copy")
    manifest = {
        **state,
        "start": {"epoch": stream.epoch, "instance": stream.start},
        **(label or {}),
        "instances": n_rows,
        "tokens": n_rows * corpus.seq_len,
        "checked_steps": checked,
        "check": "equal",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / CORPUS_FILE, info.to_dict())
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest
