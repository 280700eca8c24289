"""`injection run` / `injection launch`: bad input exits 2 before training; the launcher command."""

import json
import shlex

import pytest
import yaml
from typer.testing import CliRunner

from injection.cli import app
from injection.engine.cli import launcher_command
from tests.helpers.engine import write_tiny_checkpoint

runner = CliRunner()


def _config(tmp_path, **kw):
    cfg = dict(checkpoint=str(tmp_path / "ck"), knowledge="generate:4:1:0", schedule="demo", data=str(tmp_path / "c"),
               total_steps=5, micro_batch=1, output_dir=str(tmp_path / "run"), tokenizer="olmo")
    cfg.update(kw)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _fails(args, match):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert match in result.output
    assert "Traceback" not in result.output


def test_missing_checkpoint(tmp_path):
    _fails(["run", _config(tmp_path)], "is not a directory")
    (tmp_path / "ck").mkdir()
    _fails(["run", _config(tmp_path)], "checkpoint.json is missing")


def test_unreadable_checkpoint_json(tmp_path):
    write_tiny_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "checkpoint.json").write_text("{not json")
    _fails(["run", _config(tmp_path)], "checkpoint.json: not valid JSON")


def test_global_batch_not_divisible(tmp_path):
    write_tiny_checkpoint(tmp_path / "ck", global_batch=4)
    _fails(["run", _config(tmp_path, micro_batch=3)], "not divisible by micro_batch (3)")


def test_output_dir_holding_another_run(tmp_path):
    write_tiny_checkpoint(tmp_path / "ck")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"config_hash": "feedfacefeedface"}))
    _fails(["run", _config(tmp_path)], "already holds a different run")


def test_knowledge_failing_validation(tmp_path):
    write_tiny_checkpoint(tmp_path / "ck")
    bad = tmp_path / "k.json"
    bad.write_text(json.dumps([{"train_context": "x", "mem_input": ["a"], "mem_target": []}]))
    _fails(["run", _config(tmp_path, knowledge=str(bad))], "k.json")


def test_invalid_config_field_and_resume_without_run(tmp_path):
    _fails(["run", _config(tmp_path, eval_interval=0)], "eval_interval")
    _fails(["run", "--resume", str(tmp_path / "nothing")], "no config.yaml")
    _fails(["run"], "give an experiment CONFIG")


def test_launch_dry_run_builds_the_deepspeed_command(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    result = runner.invoke(app, ["launch", "smoke", "--hostfile", str(hostfile), "--num-nodes", "2", "--num-gpus", "8",
                                 "--master-addr", "node1", "--set", "global_batch=64", "--dry-run"])
    assert result.exit_code == 0, result.output
    cmd = shlex.split(result.output.strip().splitlines()[-1])
    assert cmd[0].endswith("deepspeed")
    assert cmd[1:] == ["--hostfile", str(hostfile), "--num_nodes", "2", "--num_gpus", "8", "--master_addr", "node1",
                       "--module", "injection.engine.worker", "smoke", "--set", "global_batch=64"]
    # the split is checked before anything starts, with the micro-batches that would fit
    _fails(["launch", "smoke", "--hostfile", str(hostfile), "--set", "global_batch=48", "--set", "micro_batch=2",
            "--dry-run"], "micro_batch values that fit 16 rank(s): 1, 3")
    resumed = launcher_command("", None, 2, None, None, 29511, None, tmp_path / "run")
    assert resumed[-4:] == ["--module", "injection.engine.worker", "--resume", str(tmp_path / "run")]
    _fails(["launch", "smoke", "--hostfile", str(tmp_path / "missing"), "--dry-run"], "no such file")
