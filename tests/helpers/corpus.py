"""Tiny OLMo-format corpora made on the fly, and a loopback HTTP server that honours Range requests."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from injection.data.order import build_global_indices, write_global_indices


def make_corpus(
    root: Path,
    *,
    file_tokens: tuple[int, ...] = (1000, 755, 1290),
    seq_len: int = 16,
    dtype: str = "uint16",
    vocab: int = 50000,
    seed: int = 7,
    epoch: int = 0,
    token_seed: int = 0,
) -> Path:
    """Token files of uneven lengths (so remainders are dropped), the order built from `seed`, corpus.json."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(token_seed)
    paths, counts = [], []
    for i, n in enumerate(file_tokens):
        name = f"part-{i:03d}.npy"
        rng.integers(0, vocab, size=n).astype(dtype).tofile(root / name)
        paths.append(name)
        counts.append(n // seq_len)
    n_instances = sum(counts)
    write_global_indices(root / "global_indices.npy", build_global_indices(n_instances, seed, epoch))
    info = {
        "paths": paths,
        "dtype": dtype,
        "seq_len": seq_len,
        "seed": seed,
        "epoch": epoch,
        "n_instances": n_instances,
        "eos_token_id": vocab - 1,
        "tokenizer": None,
    }
    (root / "corpus.json").write_text(json.dumps(info))
    return root


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with `Range: bytes=a-b` support (the standard handler ignores Range)."""

    requests_seen: list[str]

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        f = open(path, "rb")
        if match:
            start, end = int(match[1]), min(int(match[2]), size - 1)
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self._remaining = end - start + 1
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self._remaining = size
        self.server.ranges.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        return f

    def copyfile(self, source, outputfile) -> None:
        outputfile.write(source.read(self._remaining))


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[tuple[str, list]]:
    """(base URL, list of Range headers seen) for a thread-backed server on 127.0.0.1."""
    handler = functools.partial(_RangeHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.ranges = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.ranges  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
