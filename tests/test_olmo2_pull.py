"""`injection pull` of OLMo 2 checkpoints: the 7B / 13B file names (model.safetensors, optim.safetensors) are
fetched and required like model.pt; a Hugging Face revision name the catalog derived rather than confirmed is
pulled with a warning and, failing that, without its `stage1-` prefix; an HF pull points to the moment warm-up."""

from __future__ import annotations

import json
import warnings

import httpx
import pytest
import yaml
from huggingface_hub.errors import RevisionNotFoundError

from harness.errors import UserError
from harness.http import HttpPolicy
from injection.checkpoints import pull
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.pull import pull_checkpoint
from tests.helpers.http_server import FileServer
from tests.helpers.olmo_original import TINY_OLMO2_MODEL, write_original_olmo2_checkpoint

FAST = HttpPolicy(retries=1, backoff=0.001, timeout=10, stream_bytes=1 << 16)
STEP = 40
FILES = ["config.yaml", "model.safetensors", "optim.safetensors", "train.pt"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_original_olmo2_checkpoint(root / f"run/step{STEP}-unsharded", step=STEP, safetensors=True)
    with FileServer(root) as server:
        yield server


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch, served):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    served.missing.clear()


def _catalog(tmp_path, server, *, revision: str, guessed: bool = True):
    """olmo2-1b's entry at a tiny size, its one step on the loopback server."""
    fam = yaml.safe_load(load_catalog().path.read_text())["families"]["olmo2-1b"]
    m = TINY_OLMO2_MODEL
    fam.update(
        files=FILES,
        hf_repo="allenai/OLMo-2-test",
        architecture={
            **fam["architecture"],
            "d_model": m["d_model"],
            "n_layers": m["n_layers"],
            "n_heads": m["n_heads"],
            "n_kv_heads": m["n_kv_heads"],
            "mlp_hidden_size": m["mlp_ratio"] * m["d_model"],
            "max_sequence_length": m["max_sequence_length"],
        },
        batch_sizes=[{"first_step": 0, "last_step": None, "global_batch_size": 4, "evidence": "test"}],
        stages={"early": STEP, "mid": STEP, "late": STEP},
        steps=[
            {
                "step": STEP,
                "urls": [server.url(f"run/step{STEP}-unsharded/")],
                "hf_revision": revision,
                "hf_revision_guessed": guessed,
            }
        ],
    )
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"families": {"olmo2-test": fam}}))
    return load_catalog(path)


def _pull(catalog, dest, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pull_checkpoint(f"olmo2-test@{STEP}", catalog=catalog, dest=dest, policy=FAST, **kw)
    return out, [str(w.message) for w in caught]


@pytest.mark.slow
def test_the_safetensors_layout_is_pulled_and_converted(tmp_path, served):
    catalog = _catalog(tmp_path, served, revision="stage1-step40-tokens1B")
    out, _ = _pull(catalog, tmp_path / "ckpt")
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["kind"] == "olmo2" and meta["has_optimizer_state"] and meta["optimizer_step"] == 3
    assert meta["objective"]["z_loss_multiplier"] == 1e-4
    assert {path.rsplit("/", 1)[-1] for path, _ in served.requests} >= set(FILES)


@pytest.mark.slow
def test_a_missing_model_safetensors_is_fatal(tmp_path, served):
    served.missing.add("model.safetensors")
    with pytest.raises(UserError, match=r"not found \(404\); model.safetensors is required"):
        _pull(_catalog(tmp_path, served, revision="stage1-step40-tokens1B"), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_a_guessed_revision_warns_and_tries_the_name_without_stage1(tmp_path, served, monkeypatch):
    tried = []

    def download(res, dest, revision):
        tried.append(revision)
        if revision.startswith("stage1-"):
            _missing_branch(res, dest, revision)
        dest.mkdir(parents=True)
        (dest / "checkpoint.json").write_text(json.dumps({"family": "olmo2-test", "step": STEP}))
        return dest

    monkeypatch.setattr(pull, "_download_revision", download)
    catalog = _catalog(tmp_path, served, revision="stage1-step40-tokens1B")
    out, messages = _pull(catalog, tmp_path / "hf", source="hf")
    assert tried == ["stage1-step40-tokens1B", "step40-tokens1B"] and out == tmp_path / "hf"
    assert any("derived from the step, not confirmed" in m for m in messages)
    assert any("moment_warmup_steps" in m and "--source original" in m for m in messages)


def _missing_branch(res, dest, revision):
    answer = httpx.Response(
        404, request=httpx.Request("GET", f"https://huggingface.co/api/models/x/revision/{revision}")
    )
    raise RevisionNotFoundError(f"no branch {revision}", response=answer)


@pytest.mark.slow
def test_when_no_candidate_exists_every_name_tried_is_named(tmp_path, served, monkeypatch):
    monkeypatch.setattr(pull, "_download_revision", _missing_branch)
    catalog = _catalog(tmp_path, served, revision="stage1-step40-tokens1B")
    with pytest.raises(UserError, match="has no branch stage1-step40-tokens1B nor step40-tokens1B .*derived"):
        _pull(catalog, tmp_path / "hf", source="hf")


@pytest.mark.slow
def test_a_confirmed_revision_is_tried_alone(tmp_path, served, monkeypatch):
    tried = []

    def download(res, dest, revision):
        tried.append(revision)
        _missing_branch(res, dest, revision)

    monkeypatch.setattr(pull, "_download_revision", download)
    catalog = _catalog(tmp_path, served, revision="stage1-step40-tokens1B", guessed=False)
    with pytest.raises(UserError, match="has no branch stage1-step40-tokens1B"):
        _pull(catalog, tmp_path / "hf", source="hf")
    assert tried == ["stage1-step40-tokens1B"]
