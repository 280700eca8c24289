"""`injection pull` against a loopback server: resume, retries, size checks, 404s, hostile names, HF offline."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import yaml

from harness.errors import UserError
from harness.http import HttpPolicy
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import is_complete
from injection.checkpoints.pull import pull_checkpoint
from tests.helpers.http_server import FileServer
from tests.helpers.olmo_original import TINY_OLMO_MODEL, write_original_checkpoint

FAST = HttpPolicy(retries=3, backoff=0.001, timeout=10, stream_bytes=4096)
STEP = 40


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_original_checkpoint(root / f"run/step{STEP}-unsharded", step=STEP)
    with FileServer(root) as server:
        yield server


def _catalog(tmp_path, server, files=("config.yaml", "model.pt", "optim.pt", "train.pt")):
    """A one-family catalog whose step URL points at the loopback server."""
    tiny = yaml.safe_load(load_catalog().path.read_text())["families"]["tiny"]
    arch = {
        **tiny["architecture"],
        "d_model": 32,
        "mlp_hidden_size": 128,
        "max_sequence_length": TINY_OLMO_MODEL["max_sequence_length"],
    }
    fam = {
        **tiny,
        "kind": "olmo",
        "builtin": False,
        "files": list(files),
        "architecture": arch,
        # Deliberately not the checkpoint's own 4 rows: the pull must prefer config.yaml and warn.
        "batch_sizes": [{"first_step": 0, "last_step": None, "global_batch_size": 8, "evidence": "test"}],
        "hf_repo": "allenai/OLMo-1B-hf",
        "stages": {"early": STEP, "mid": STEP, "late": STEP},
        "steps": [{"step": STEP, "urls": [server.url(f"run/step{STEP}-unsharded/")], "hf_revision": "step40-tokens0B"}],
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"families": {"olmo-test": fam}}))
    return load_catalog(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _reset(served):
    served.drop_after.clear()
    served.truncate.clear()
    served.missing.clear()
    served.requests.clear()


def _pull(catalog, dest, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pull_checkpoint(f"olmo-test@{STEP}", catalog=catalog, dest=dest, policy=kw.pop("policy", FAST), **kw)
    return out, [str(w.message) for w in caught]


@pytest.mark.slow
def test_pull_original_end_to_end(tmp_path, served, cache):
    from transformers import AutoModelForCausalLM

    served.missing.add("train.pt")  # optional files may be absent
    out, warned = _pull(_catalog(tmp_path, served), tmp_path / "ckpt")
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["family"] == "olmo-test" and meta["step"] == STEP and meta["source"] == "original"
    assert meta["global_batch_size"] == 4 and meta["tokens_per_step"] == 4 * 64
    assert meta["has_optimizer_state"] and meta["optimizer_step"] == 3
    assert meta["lr_schedule"]["peak_lr"] == 4e-4 and meta["lr_schedule"]["t_max"] == 1000
    assert any("global_train_batch_size 4 differs" in w for w in warned)
    assert (out / "optimizer.safetensors").is_file() and (out / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32
    assert not (cache / "downloads" / "olmo-test" / f"step{STEP}").exists()  # raw files cleaned up
    # A second pull finds the complete directory and downloads nothing.
    served.requests.clear()
    assert _pull(_catalog(tmp_path, served), tmp_path / "ckpt")[0] == out and not served.requests


@pytest.mark.slow
def test_interrupted_transfer_resumes(tmp_path, served, cache):
    catalog = _catalog(tmp_path, served)
    served.drop_after["model.pt"] = [50_000]
    with pytest.raises(UserError, match=r"model.pt: no complete answer after 1 attempt.*new pull continues from it"):
        _pull(catalog, tmp_path / "ckpt", policy=HttpPolicy(retries=0, backoff=0.001, stream_bytes=4096))
    part = cache / "downloads" / "olmo-test" / f"step{STEP}" / "model.pt.part"
    kept = part.stat().st_size
    # Every byte that arrived before the drop is kept (how many arrive before the connection closes depends on the
    # machine's load, so the test asserts what was kept is the file's true beginning and where the next pull asks).
    assert 0 < kept <= 50_000
    original = (served.root / f"run/step{STEP}-unsharded/model.pt").read_bytes()
    assert part.read_bytes() == original[:kept]
    assert not is_complete(tmp_path / "ckpt") and not (tmp_path / "ckpt").exists()
    served.requests.clear()
    out, _ = _pull(catalog, tmp_path / "ckpt")
    assert is_complete(out)
    assert ("run/step40-unsharded/model.pt", f"bytes={kept}-") in served.requests
    # Files finished before the interruption are not fetched again.
    assert not any(path.endswith("optim.pt") for path, _ in served.requests)


@pytest.mark.slow
def test_dropped_connections_are_retried(tmp_path, served, cache):
    served.drop_after["model.pt"] = [10_000, 20_000]
    served.drop_after["optim.pt"] = [5_000]
    out, _ = _pull(_catalog(tmp_path, served), tmp_path / "ckpt")
    assert is_complete(out)
    ranges = [r for p, r in served.requests if p.endswith("model.pt")]
    assert len(ranges) == 3 and ranges[0] is None
    first, second = (int(r[6:-1]) for r in ranges[1:])
    assert 0 < first <= 10_000 and first < second <= first + 20_000  # each retry continued the .part


@pytest.mark.slow
def test_truncated_file_fails_without_complete_dir(tmp_path, served, cache):
    served.truncate["model.pt"] = 100
    with pytest.raises(
        UserError, match=r"model.pt: no complete answer after 4 attempt.*(body cut short|bytes announced)"
    ):
        _pull(_catalog(tmp_path, served), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    assert not list(tmp_path.glob(".ckpt.tmp-*"))


@pytest.mark.slow
def test_corrupted_file_fails_without_complete_dir(tmp_path, served, cache):
    root = tmp_path / "bad"
    shutil.copytree(served.root, root)
    model = root / f"run/step{STEP}-unsharded/model.pt"
    model.write_bytes(b"\x00" * model.stat().st_size)
    with FileServer(root) as bad:
        with pytest.raises(UserError, match="corrupted or truncated"):
            _pull(_catalog(tmp_path, bad), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.glob(".ckpt.tmp-*"))


@pytest.mark.slow
def test_missing_model_is_fatal(tmp_path, served, cache):
    served.missing.add("model.pt")
    with pytest.raises(UserError, match=r"not found \(404\); model.pt is required"):
        _pull(_catalog(tmp_path, served), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../escape.pt", "/etc/passwd"])
def test_hostile_file_names_are_refused(tmp_path, served, cache, name):
    catalog = _catalog(tmp_path, served, files=("model.pt", name))
    with pytest.raises(UserError, match="refusing remote file name"):
        _pull(catalog, tmp_path / "ckpt")
    assert not (tmp_path / "escape.pt").exists() and not served.requests


@pytest.mark.slow
def test_hf_offline_is_a_clear_error(tmp_path, served, cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"allenai/OLMo-1B-hf at revision step40-tokens0B.*--out DIR"):
        _pull(_catalog(tmp_path, served), tmp_path / "ckpt", source="hf")
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.glob(".ckpt.tmp-*"))


@pytest.mark.slow
def test_hf_snapshot_fetched_elsewhere_is_adopted(tmp_path, served, cache):
    from transformers import OlmoForCausalLM

    from injection.checkpoints.olmo import hf_config

    catalog = _catalog(tmp_path, served)
    snapshot = tmp_path / "snapshot"
    OlmoForCausalLM(hf_config(catalog.family("olmo-test").architecture)).save_pretrained(snapshot)
    out, _ = _pull(catalog, snapshot, source="hf")
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["source"] == "hf" and meta["hf_revision"] == "step40-tokens0B"
    assert not meta["has_optimizer_state"] and (out / "tokenizer.json").is_file()
    assert "hf_config_changes" not in meta  # the -hf conversion computes what OLMo trained


@pytest.mark.slow
def test_hf_snapshot_of_another_size_is_refused(tmp_path, served, cache):
    from transformers import OlmoForCausalLM

    from injection.checkpoints.olmo import hf_config

    snapshot = tmp_path / "snapshot"
    OlmoForCausalLM(hf_config(load_catalog().family("tiny").architecture)).save_pretrained(snapshot)
    with pytest.raises(UserError, match=r"config.json: hidden_size is 64, the catalog's architecture has 32"):
        _pull(_catalog(tmp_path, served), snapshot, source="hf")
    assert not is_complete(snapshot)


def test_unconfirmed_revision_is_refused():
    with pytest.raises(UserError, match="no confirmed Hugging Face revision"):
        pull_checkpoint("olmo-1b@1000", source="hf")


def test_staging_dirs_of_killed_processes_are_removed_at_the_next_write(tmp_path):
    import socket
    import subprocess
    import sys

    from harness.atomic import staging_dir

    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer names a live process
    stale = tmp_path / f".ckpt.tmp-{host}-{dead.pid}-abc"
    live = tmp_path / f".ckpt.tmp-{host}-{os.getpid()}-def"
    elsewhere = tmp_path / f".ckpt.tmp-otherhost-{dead.pid}-ghi"  # another node of a shared file system
    other_dest = tmp_path / f".other.tmp-{host}-{dead.pid}-jkl"
    for d in (stale, live, elsewhere, other_dest):
        (d / "sub").mkdir(parents=True)
    fresh = staging_dir(tmp_path / "ckpt")
    assert fresh.is_dir() and fresh.name.startswith(f".ckpt.tmp-{host}-{os.getpid()}-")
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and other_dest.exists()


@pytest.mark.slow
def test_pull_through_a_chaotic_host_equals_a_clean_pull(tmp_path, served, cache, monkeypatch):
    """`injection pull` while the host answers 503s, 429s with Retry-After, half bodies, dropped and reset
    connections, stalls and trickles: the checkpoint is byte for byte the one a clean host gives."""
    from typer.testing import CliRunner

    from injection.cli import app
    from tests.helpers.http_server import FAULTS, Chaos

    catalog = _catalog(tmp_path, served)
    monkeypatch.setenv("INJECTION_CATALOG", str(catalog.path))
    for name, value in (("BUDGET", "10"), ("TIMEOUT", "0.5"), ("BACKOFF", "0.01")):
        monkeypatch.setenv(f"INJECTION_HTTP_{name}", value)
    clean = CliRunner().invoke(app, ["pull", f"olmo-test@{STEP}", "--out", str(tmp_path / "clean")])
    assert clean.exit_code == 0, clean.output
    served.retry_after, served.stall_seconds, served.trickle_seconds = "1", 1.0, 0.05
    served.chaos = Chaos(FAULTS[:7], every=1, limit=7)
    try:
        chaotic = CliRunner().invoke(app, ["pull", f"olmo-test@{STEP}", "--out", str(tmp_path / "chaos")])
    finally:
        served.chaos = None
    assert chaotic.exit_code == 0, chaotic.output
    assert sorted(served.faults_served()) == sorted(FAULTS[:7])
    for name in ("model.safetensors", "optimizer.safetensors", "config.json"):
        assert (tmp_path / "chaos" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


@pytest.mark.slow
def test_garbage_from_the_host_is_not_kept_for_the_next_pull(tmp_path, served, cache):
    """A host that sends garbage of the announced size: the pull fails, and the garbage does not stay in the download
    cache where the next pull would convert it again."""
    root = tmp_path / "bad"
    shutil.copytree(served.root, root)
    model = root / f"run/step{STEP}-unsharded/model.pt"
    model.write_bytes(b"<html>busy</html>".ljust(model.stat().st_size, b" "))
    raw = cache / "downloads" / "olmo-test" / f"step{STEP}"
    with FileServer(root) as bad:
        with pytest.raises(UserError, match="downloaded files were removed; the next pull downloads them again"):
            _pull(_catalog(tmp_path, bad), tmp_path / "ckpt")
    assert not raw.exists()
    out, _ = _pull(_catalog(tmp_path, served), tmp_path / "ckpt")  # the host serves the real files again
    assert is_complete(out)
