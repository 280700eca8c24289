"""`injection data build-corpus`: text -> an OLMo-format corpus (token files, global_indices.npy, corpus.json).

Documents are tokenized without special tokens and joined with EOS after each document, as in OLMo's
preprocessed data; the instance order is ai2-olmo's permutation for the seed, so a local corpus is read by
exactly the code that reads the real runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np

from harness.atomic import replace_dir, staging_dir, write_json_atomic
from harness.errors import UserError
from harness.paths import check_output_dir
from harness.progress import progress as progress_bar
from harness.tokenizers import load_tokenizer
from injection.data.order import build_global_indices, write_global_indices
from injection.data.source import CORPUS_FILE

#: Files are cut at a multiple of seq_len near this size, so no tokens are lost to per-file remainders.
DEFAULT_FILE_TOKENS = 1 << 28
_BATCH_DOCS = 256


def _is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))


def read_text_file(path: Path) -> str:
    """A text file's content; UserError with the byte offset when it is not UTF-8 (e.g. a binary file)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}: "
            f"{err.reason}); give a .txt, .jsonl or a saved dataset directory"
        ) from None


def iter_documents(
    source: Path, text_field: str = "text", split: str | None = None
) -> tuple[int | None, Iterator[str]]:
    """(number of documents if known, documents) of a .txt (blank-line separated), .jsonl, or HF dataset dir."""
    source = Path(source)
    if _is_hf_dataset_dir(source):
        try:
            ds = datasets.load_from_disk(str(source))
        except Exception as err:  # datasets raises several types for unreadable directories
            raise UserError(f"{source}: cannot load the dataset saved on disk ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            names = [split] if split else sorted(ds)
            missing = [n for n in names if n not in ds]
            if missing:
                raise UserError(f"{source}: no split {missing[0]!r}; it has {', '.join(sorted(ds))}")
            parts = [ds[n] for n in names]
        else:
            parts = [ds]
        for part in parts:
            if text_field not in part.column_names:
                raise UserError(
                    f"{source}: field {text_field!r} not in the dataset; columns: {', '.join(part.column_names)} "
                    "(choose one with --text-field)"
                )

        def gen() -> Iterator[str]:
            for part in parts:
                for row in part.select_columns([text_field]):
                    yield str(row[text_field])

        return sum(len(p) for p in parts), gen()
    if not source.is_file():
        raise UserError(f"{source}: no such file or dataset directory")
    text = read_text_file(source)
    if source.suffix in (".jsonl", ".json"):
        lines = text.splitlines()

        def gen_jsonl() -> Iterator[str]:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{source}: line {n} is not JSON ({err})") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise UserError(f"{source}: line {n} has no field {text_field!r}")
                yield str(record[text_field])

        return sum(1 for line in lines if line.strip()), gen_jsonl()
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    return len(docs), iter(docs)


def build_corpus(
    source: Path,
    tokenizer_name: str,
    seq_len: int,
    out: Path,
    *,
    seed: int = 0,
    text_field: str = "text",
    split: str | None = None,
    overwrite: bool = False,
    max_file_tokens: int = DEFAULT_FILE_TOKENS,
    show_progress: bool = True,
    eos_token_id: int | None = None,
) -> dict:
    """Tokenize `source` into an OLMo-format corpus directory `out`; returns its corpus.json.

    Documents are joined with `eos_token_id` (default: the tokenizer's EOS). An existing `out` is replaced only
    with `overwrite` and only when it is a corpus this command made (it holds corpus.json)."""
    out = Path(out)
    if seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {seq_len}")
    check_output_dir(out, marker=CORPUS_FILE, what="corpus", overwrite=overwrite, inputs=(Path(source),))
    tokenizer = load_tokenizer(tokenizer_name)
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"tokenizer {tokenizer_name!r} has no EOS token: documents could not be separated")
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab < 65536 else np.uint32
    file_tokens = max(seq_len, max_file_tokens // seq_len * seq_len)
    n_docs, docs = iter_documents(source, text_field, split)

    tmp = staging_dir(out)
    try:
        paths: list[str] = []
        counts: list[int] = []
        buffer: list[np.ndarray] = []
        buffered = 0
        total_tokens = 0

        def flush_file(arrays: list[np.ndarray]) -> None:
            name = f"part-{len(paths):05d}.npy"
            np.concatenate(arrays).astype(dtype).tofile(tmp / name)
            paths.append(name)
            counts.append(sum(len(a) for a in arrays) // seq_len)

        with progress_bar() as progress:
            task = progress.add_task("tokenizing", total=n_docs, visible=show_progress)
            batch: list[str] = []

            def encode(texts: list[str]) -> None:
                nonlocal buffered, buffer, total_tokens
                for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                    doc = np.asarray(list(ids) + [eos], dtype=np.int64)
                    buffer.append(doc)
                    buffered += len(doc)
                    total_tokens += len(doc)
                while buffered >= file_tokens:
                    joined = np.concatenate(buffer)
                    flush_file([joined[:file_tokens]])
                    buffer, buffered = [joined[file_tokens:]], len(joined) - file_tokens
                progress.advance(task, len(texts))

            for doc in docs:
                batch.append(doc)
                if len(batch) == _BATCH_DOCS:
                    encode(batch)
                    batch = []
            if batch:
                encode(batch)
            if buffered:
                flush_file(buffer)
        n_instances = sum(counts)
        if n_instances == 0:
            raise UserError(f"{source}: {total_tokens} tokens make no instance of {seq_len} tokens")
        write_global_indices(tmp / "global_indices.npy", build_global_indices(n_instances, seed, 0))
        info = {
            "paths": paths,
            "dtype": np.dtype(dtype).name,
            "seq_len": seq_len,
            "seed": seed,
            "epoch": 0,
            "n_instances": n_instances,
            "eos_token_id": int(eos),
            "tokenizer": tokenizer_name,
            "global_indices": "global_indices.npy",
            "instances_per_file": counts,
            "extra": {"source": str(source), "documents": n_docs, "tokens": total_tokens, "text_field": text_field},
        }
        write_json_atomic(tmp / CORPUS_FILE, info)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
