"""`injection checkpoints list|show` and `injection pull tiny@0` through the real CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from injection.cli import app

runner = CliRunner()


def test_list_shows_steps_stages_and_sources(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["checkpoints", "list", "olmo-1b"], terminal_width=200)
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "117850" in row)
    assert "mid" in line and "494B" in line and "hf:step117850-tokens494B" in line and "original" in line


def test_show_gives_url_revision_batch_and_lr(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["checkpoints", "show", "olmo-7b@early"], terminal_width=250)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "l6v218f4/step40000-unsharded/" in out and "step40000-tokens177B" in out
    assert "2160 rows x 2048 tokens" in out and "0.0002789" in out


def test_unknown_step_exits_2_with_nearby_steps():
    result = runner.invoke(app, ["checkpoints", "show", "olmo-7b@40500"])
    assert result.exit_code == 2
    assert "nearby steps: 5000, 40000, 41000" in result.output


@pytest.mark.slow
def test_pull_tiny_offline(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["pull", "tiny@0", "--out", str(tmp_path / "tiny0")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "tiny0" / "checkpoint.json").read_text())
    assert meta["family"] == "tiny" and meta["step"] == 0 and meta["lr_schedule"]["kind"] == "cosine"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny0")
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    missing = runner.invoke(app, ["pull", "tiny@mid"])
    assert missing.exit_code == 2 and "does not exist locally" in missing.output
