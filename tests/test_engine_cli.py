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
    cfg = dict(
        checkpoint=str(tmp_path / "ck"),
        knowledge="generate:4:1:0",
        schedule="demo",
        data=str(tmp_path / "c"),
        total_steps=5,
        micro_batch=1,
        output_dir=str(tmp_path / "run"),
        tokenizer="olmo",
    )
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


@pytest.mark.slow
def test_launch_dry_run_builds_the_deepspeed_command(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    result = runner.invoke(
        app,
        [
            "launch",
            "smoke",
            "--hostfile",
            str(hostfile),
            "--num-nodes",
            "2",
            "--num-gpus",
            "8",
            "--master-addr",
            "node1",
            "--set",
            "global_batch=64",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    cmd = shlex.split(result.stdout.strip().splitlines()[-1])  # stderr may carry progress bars
    assert cmd[0].endswith("deepspeed")
    assert cmd[1:] == [
        "--hostfile",
        str(hostfile),
        "--num_nodes",
        "2",
        "--num_gpus",
        "8",
        "--master_addr",
        "node1",
        "--module",
        "injection.engine.worker",
        "smoke",
        "--set",
        "global_batch=64",
    ]
    # the split is checked before anything starts, with the micro-batches that would fit
    _fails(
        [
            "launch",
            "smoke",
            "--hostfile",
            str(hostfile),
            "--set",
            "global_batch=48",
            "--set",
            "micro_batch=2",
            "--dry-run",
        ],
        "micro_batch values that fit 16 rank(s): 1, 3",
    )
    resumed = launcher_command("", None, 2, None, None, 29511, None, tmp_path / "run")
    assert resumed[-4:] == ["--module", "injection.engine.worker", "--resume", str(tmp_path / "run")]
    _fails(["launch", "smoke", "--hostfile", str(tmp_path / "missing"), "--dry-run"], "no such file")


def test_launch_one_node_of_several_without_ssh(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    base = [
        "launch",
        "smoke",
        "--hostfile",
        str(hostfile),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        "29600",
        "--dry-run",
    ]
    result = runner.invoke(app, [*base, "--node-rank", "1"])
    assert result.exit_code == 0, result.output
    cmd = shlex.split(result.stdout.strip().splitlines()[-1])  # stderr may carry progress bars
    assert (
        cmd[1:9]
        == [
            "--hostfile",
            str(hostfile),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "29600",
            "--no_ssh",
            "--node_rank",
        ]
        and cmd[9] == "1"
    )
    _fails([*base, "--node-rank", "2"], "--node-rank 2: must be 0…1")
    _fails([*base, "--node-rank", "1", "--num-nodes", "1"], "--node-rank 1: must be 0…0")
    _fails(["launch", "smoke", "--node-rank", "0", "--dry-run"], "needs --hostfile")
    _fails(["launch", "smoke", "--hostfile", str(hostfile), "--node-rank", "0", "--dry-run"], "needs --master-addr")
    hostfile.write_text("localhost slots=1\nlocalhost slots=1\n")
    _fails([*base, "--node-rank", "0"], "line 2: host 'localhost' is listed twice")


def test_a_lost_rank_is_told_from_other_errors():
    import torch.distributed as dist

    from injection.engine.zero import peer_failure

    closed = RuntimeError(
        "\n[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
        "by peer [127.0.0.1]:35456. This is typically caused by a remote worker crashing."
    )
    assert peer_failure(closed) == "Connection closed by peer [127.0.0.1]:35456"
    hung = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms "
        "for recv operation to complete"
    )
    assert peer_failure(hung) == "Timed out waiting 15000ms for recv operation to complete"
    assert peer_failure(dist.DistNetworkError("failed to recv, got 0 bytes")) == "failed to recv, got 0 bytes"
    assert peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_failure(ValueError("gloo")) is None
