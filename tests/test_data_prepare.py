"""`injection data prepare`: the shipped OLMo file lists, and corpus descriptions built over a loopback host."""

from __future__ import annotations

import fnmatch
import json
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from harness.http import HttpPolicy
from injection.checkpoints.catalog import load_catalog
from injection.cli import app
from injection.data import BatchStream, open_corpus
from injection.data.order import build_global_indices, write_global_indices
from injection.data.prepare import (
    LISTS_DIR,
    SIZES_FILE,
    plan_prepare,
    prepare_corpus,
    read_file_list,
    resolve_list,
)
from tests.conftest import REPO_ROOT
from tests.helpers.corpus import make_corpus
from tests.helpers.http_server import FileServer

SEQ, B, SEED = 16, 4, 11
FILE_TOKENS = (1000, 755, 1290, 520)
NAMES = [f"part-{i:03d}.npy" for i in range(len(FILE_TOKENS))]
N = sum(t // SEQ for t in FILE_TOKENS)
FAST = HttpPolicy(retries=3, backoff=0.01, timeout=10)
runner = CliRunner()


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Token files and their order on a loopback host, and a catalog whose family `loop` lists them."""
    files = make_corpus(tmp_path / "host" / "files", file_tokens=FILE_TOKENS, seq_len=SEQ, seed=SEED)
    with FileServer(tmp_path / "host") as server:
        yield World(tmp_path, files, server, monkeypatch)


class World:
    def __init__(self, root: Path, files: Path, server: FileServer, monkeypatch):
        self.root, self.files, self.server = root, files, server
        self.urls = [server.url(f"files/{name}") for name in NAMES]
        self.order_url = server.url("files/global_indices.npy")
        monkeypatch.setenv("INJECTION_CACHE", str(root / "cache"))
        self.catalog = self.write_catalog()
        monkeypatch.setenv("INJECTION_CATALOG", str(self.catalog))

    def write_catalog(self, *, urls: list[str] | None = None, order_url: str | None = "default") -> Path:
        """The real olmo-7b entry with this host's files, a small sequence length and batch."""
        raw = yaml.safe_load((REPO_ROOT / "checkpoints.yaml").read_text())
        fam = raw["families"]["olmo-7b"]
        fam["steps"] = [s for s in fam["steps"] if s["step"] in fam["stages"].values()]
        fam["data_order"] = {
            "seed": SEED,
            "seq_len": SEQ,
            "data_paths": "files.txt",
            "tokenizer": None,
            "global_indices_url": self.order_url if order_url == "default" else order_url,
        }
        fam["batch_sizes"] = [{"first_step": 0, "last_step": None, "global_batch_size": B, "evidence": "test"}]
        (self.root / "files.txt").write_text("# loopback\n" + "\n".join(urls or self.urls) + "\n")
        path = self.root / "catalog.yaml"
        path.write_text(yaml.safe_dump({"families": {"loop": fam}}))
        return path

    def write_order(self, indices: np.ndarray) -> None:
        write_global_indices(self.files / "global_indices.npy", indices)


def _prepare(*args: str):
    return runner.invoke(app, ["data", "prepare", "loop", *args])


# --- the shipped lists ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family,count,subset", [("olmo-7b", 443, "v1_5-sample"), ("olmo-1b", 249, "v1_5")])
def test_shipped_lists_are_the_official_training_files(family, count, subset):
    catalog = load_catalog(REPO_ROOT / "checkpoints.yaml")
    listed = resolve_list(catalog.family(family).data_order.data_paths, catalog.path, family)
    assert listed == LISTS_DIR / f"{family}.txt"
    urls = read_file_list(listed)
    prefix = f"https://olmo-data.org/preprocessed/olmo-mix/{subset}/gpt-neox-20b-pii-special/part-"
    assert len(urls) == count and len(set(urls)) == count
    assert all(u.startswith(prefix) and u.endswith(".npy") for u in urls)
    assert urls == sorted(urls), "config order of these runs is sorted by part name"
    header = [line for line in listed.read_text().splitlines() if line.startswith("#")]
    assert any("allenai/OLMo" in line and "revision" in line for line in header)
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "injection"
    ]
    assert any(fnmatch.fnmatch(f"data/lists/{family}.txt", p) for p in patterns), "lists must ship as package data"


@pytest.mark.slow
def test_dry_run_prints_the_shipped_lists_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INJECTION_CATALOG", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("--dry-run opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for family, count in (("olmo-7b", 443), ("olmo-1b", 249)):
        result = runner.invoke(app, ["data", "prepare", family, "--dry-run"])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert len(lines) == count and lines == read_file_list(LISTS_DIR / f"{family}.txt")
        assert f"sizes of {count} files" in result.stderr
    assert "would rebuild" in result.stderr and "cannot be verified" in result.stderr  # olmo-1b: order file lost
    assert not (tmp_path / "cache").exists()


# --- preparing over a loopback host ----------------------------------------------------------------------


def _stream(location) -> BatchStream:
    return BatchStream(open_corpus(location), 0, 0, B)


@pytest.mark.slow
def test_prepare_then_extract_serve_the_run_by_byte_ranges(world):
    result = _prepare()
    assert result.exit_code == 0, result.output
    out = world.root / "cache" / "data" / "loop"
    info = json.loads((out / "corpus.json").read_text())
    assert info["paths"] == world.urls and info["global_indices"] == world.order_url
    assert info["instances_per_file"] == [t // SEQ for t in FILE_TOKENS] and info["n_instances"] == N
    assert info["dtype"] == "uint16" and info["eos_token_id"] == 50279
    assert sorted(world.server.heads) == sorted(f"files/{n}" for n in [*NAMES, "global_indices.npy"])

    world.server.heads.clear()
    prepared, local = _stream(out), _stream(world.files)
    for step in (0, 7, 20):
        assert all(np.array_equal(a, b) for a, b in zip(prepared.batch(step), local.batch(step)))
    assert world.server.heads == ["files/global_indices.npy"], "instances_per_file spares a size request per file"

    extracted = runner.invoke(
        app,
        ["data", "extract", "--family", "loop", "--start", "5", "--steps", "3", "--out", str(world.root / "window")],
    )
    assert extracted.exit_code == 0, extracted.output
    window = BatchStream(open_corpus(world.root / "window"), 0, 5 * B, B)
    assert np.array_equal(window.batch(1)[0], local.batch(6)[0])


@pytest.mark.slow
def test_sizes_are_cached_and_a_second_run_fetches_only_the_missing(world):
    world.server.missing |= {NAMES[1], NAMES[3]}
    failed = _prepare("--retries", "0")
    assert failed.exit_code == 2
    assert world.urls[1] in failed.stderr and world.urls[3] in failed.stderr and "2 of 4" in failed.stderr
    out = world.root / "cache" / "data" / "loop"
    assert sorted(json.loads((out / SIZES_FILE).read_text())) == sorted([world.urls[0], world.urls[2]])
    assert not (out / "corpus.json").exists()

    world.server.missing.clear()
    world.server.heads.clear()
    again = _prepare()
    assert again.exit_code == 0, again.output
    assert sorted(world.server.heads) == sorted([f"files/{NAMES[1]}", f"files/{NAMES[3]}", "files/global_indices.npy"])
    world.server.heads.clear()
    assert _prepare().exit_code == 0
    assert world.server.heads == ["files/global_indices.npy"]


def test_an_occasional_404_is_retried(world):
    world.server.flaky_missing[NAMES[2]] = 2
    info = prepare_corpus(plan_prepare("loop", world.root / "p"), policy=FAST, show_progress=False)
    assert info.n_instances == N
    assert world.server.heads.count(f"files/{NAMES[2]}") == 3


def test_short_range_reads_resume_where_the_body_stopped(world):
    # GET 1 reads the order file's first bytes; GET 2, the first chunk of the full check, dies after 37 bytes,
    # all of which the reader keeps (it reads what arrives, 16 bytes at most at a time) before asking for the rest.
    world.server.drop_after["global_indices.npy"] = [100, 37]
    policy = HttpPolicy(retries=3, backoff=0.01, timeout=10, stream_bytes=16)
    info = prepare_corpus(
        plan_prepare("loop", world.root / "p", full_order_check=True),
        policy=policy,
        chunk_bytes=4 * 64,
        show_progress=False,
    )
    assert info.extra["order"]["checked"] == "every index" and info.extra["order"]["largest_index"] == N - 1
    ranges = [r for path, r in world.server.requests if path.endswith("global_indices.npy")]
    assert ranges[1:3] == ["bytes=0-255", "bytes=37-255"], ranges


def test_an_order_saved_with_np_save_is_read_past_its_header(world):
    np.save(world.files / "global_indices.npy", build_global_indices(N, SEED))  # np.save keeps the name given
    info = prepare_corpus(
        plan_prepare("loop", world.root / "p", full_order_check=True), policy=FAST, show_progress=False
    )
    assert info.extra["order"]["entries"] == N and info.extra["order"]["largest_index"] == N - 1
    local = _stream(world.files)
    assert np.array_equal(_stream(world.root / "p").batch(5)[1], local.batch(5)[1])


@pytest.mark.parametrize("entries", [N + B, N - B])
def test_an_order_of_the_wrong_size_names_the_file(world, entries):
    order = build_global_indices(N + B, SEED)
    world.write_order(order[order < entries] if entries < N else order)
    result = _prepare()
    assert result.exit_code == 2 and world.order_url in result.stderr and f"{entries:,} entries" in result.stderr
    assert not (world.root / "cache" / "data" / "loop" / "corpus.json").exists()


@pytest.mark.slow
def test_a_file_set_that_does_not_match_the_order_names_the_file(world):
    world.write_catalog(urls=world.urls[:-1])  # one file fewer: fewer instances than the order holds
    missing_file = _prepare()
    assert (
        missing_file.exit_code == 2
        and world.order_url in missing_file.stderr
        and "3 token files" in missing_file.stderr
    )
    (world.files / NAMES[0]).write_bytes((world.files / NAMES[0]).read_bytes() + b"\x00")
    world.write_catalog()
    odd = _prepare("--out", str(world.root / "fresh"))  # the first run's size cache trusts the old size
    assert odd.exit_code == 2 and world.urls[0] in odd.stderr and "not a whole number of uint16" in odd.stderr


@pytest.mark.slow
def test_an_index_beyond_the_files_is_named_in_the_full_check_and_in_every_extracted_window(world):
    order = build_global_indices(N, SEED)
    bad_step = 9
    order[bad_step * B + 1] = N + 5
    world.write_order(order)
    full = _prepare("--full-order-check")
    assert full.exit_code == 2 and world.order_url in full.stderr
    assert f"first at entry {bad_step * B + 1}" in full.stderr and f"largest index {N + 5}" in full.stderr

    assert _prepare().exit_code == 0  # the size is right; the indices are checked where they are read
    before = runner.invoke(
        app,
        [
            "data",
            "extract",
            "--family",
            "loop",
            "--start",
            "2",
            "--steps",
            str(bad_step - 2),
            "--out",
            str(world.root / "before"),
        ],
    )
    assert before.exit_code == 0, before.output
    across = runner.invoke(
        app,
        ["data", "extract", "--family", "loop", "--start", "8", "--steps", "3", "--out", str(world.root / "across")],
    )
    assert across.exit_code == 2 and world.order_url in across.stderr and f"instance {N + 5:,}" in across.stderr
    assert not (world.root / "across" / "corpus.json").exists()


@pytest.mark.slow
def test_without_an_order_file_the_order_is_rebuilt_with_a_warning(world):
    world.write_catalog(order_url=None)
    result = _prepare()
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "cannot be verified" in result.stderr
    out = world.root / "cache" / "data" / "loop"
    info = json.loads((out / "corpus.json").read_text())
    assert info["global_indices"] is None and info["extra"]["order"]["verified"] is False
    local = _stream(world.files)
    assert np.array_equal(_stream(out).batch(3)[1], local.batch(3)[1])

    world.write_catalog()
    world.server.missing.add("global_indices.npy")
    gone = prepare_corpus(
        plan_prepare("loop", world.root / "gone"), policy=FAST, show_progress=False, warn=(warned := []).append
    )
    assert gone.global_indices is None and "HTTP 404" in warned[0] and world.order_url in warned[0]


@pytest.mark.slow
def test_a_directory_url_is_refused_before_any_request(world):
    world.write_catalog(urls=[*world.urls[:2], world.server.url("files/")])
    result = _prepare()
    assert result.exit_code == 2 and "files.txt, line 4" in result.stderr and "directory" in result.stderr
    assert not world.server.heads


def test_extract_family_without_a_prepared_description_names_the_command(world):
    result = runner.invoke(
        app, ["data", "extract", "--family", "loop", "--start", "0", "--steps", "1", "--out", str(world.root / "w")]
    )
    assert result.exit_code == 2 and "injection data prepare loop" in result.stderr


# --- the script that writes the lists --------------------------------------------------------------------


def test_make_data_lists_keeps_config_order_and_public_urls(tmp_path):
    from scripts.make_data_lists import main

    configs = tmp_path / "olmo" / "configs" / "official"
    configs.mkdir(parents=True)
    parts = ["part-002-00000.npy", "part-000-00001.npy", "part-010-00000.npy"]
    evaluators = [{"label": "ppl", "data": {"datasets": {"c4": ["r2://olmo-data/eval-data/c4/part-0.npy"]}}}]
    for name, scheme in (("OLMo-1B", "r2://olmo-data/"), ("OLMo-7B", "http://olmo-data.org/")):
        paths = [f"{scheme}preprocessed/olmo-mix/v1_5/tok/{p}" for p in parts]
        (configs / f"{name}.yaml").write_text(yaml.safe_dump({"evaluators": evaluators, "data": {"paths": paths}}))
    main([str(tmp_path / "olmo"), "--revision", "abc123", "--out", str(tmp_path / "lists")])
    for family in ("olmo-1b", "olmo-7b"):
        text = (tmp_path / "lists" / f"{family}.txt").read_text()
        assert read_file_list(tmp_path / "lists" / f"{family}.txt") == [
            f"https://olmo-data.org/preprocessed/olmo-mix/v1_5/tok/{p}" for p in parts
        ]
        assert "configs/official" in text and "abc123" in text and "eval-data" not in text
    (configs / "OLMo-7B.yaml").write_text(
        yaml.safe_dump({"data": {"paths": ["s3://ai2-llm/preprocessed/olmo-mix/x.npy"]}})
    )
    with pytest.raises(SystemExit, match="s3://ai2-llm"):
        main([str(tmp_path / "olmo"), "--revision", "abc123", "--out", str(tmp_path / "lists")])


@pytest.mark.slow
def test_prepare_through_a_chaotic_host_equals_a_clean_one(world, monkeypatch):
    """`injection data prepare` while the host answers 503s, 429s with Retry-After, half bodies, dropped and reset
    connections, stalls and trickles: the same corpus description as from a clean host."""
    from tests.helpers.http_server import FAULTS, Chaos

    for name, value in (("BUDGET", "10"), ("TIMEOUT", "0.5"), ("BACKOFF", "0.01")):
        monkeypatch.setenv(f"INJECTION_HTTP_{name}", value)
    assert _prepare("--out", str(world.root / "clean"), "--full-order-check").exit_code == 0
    world.server.retry_after, world.server.stall_seconds, world.server.trickle_seconds = "1", 1.0, 0.02
    world.server.chaos = Chaos(FAULTS[:7], every=1, limit=7)
    result = _prepare("--out", str(world.root / "chaos"), "--full-order-check")
    assert result.exit_code == 0, result.output
    assert sorted(world.server.faults_served()) == sorted(FAULTS[:7])

    def described(where):
        info = json.loads((world.root / where / "corpus.json").read_text())
        info["extra"].pop("prepared")
        return info

    assert described("chaos") == described("clean")
