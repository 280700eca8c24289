"""`injection run smoke` end to end with the real pieces: tiny checkpoint, corpus and knowledge built into
the cache on first use, the smoke schedule, the run directory read back; the same run through `injection
launch` on two ranks of one node and on two "nodes" without ssh (with one killed and the run resumed)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.rundir import read_table
from injection.cli import app
from tests.helpers.shared import build_once

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smoke(shared_dir) -> tuple[Path, Path]:
    """(cache, run directory) of the shortened smoke run, made once per test run (tests/helpers/shared.py)."""

    def build(directory: Path) -> None:
        run_dir = directory / "runs" / "smoke"
        done = subprocess.run(
            [sys.executable, "-m", "injection", "run", "smoke", *SHORT, "--set", "log_interval=1", "-o", str(run_dir)],
            cwd=REPO,
            env=_env(directory / "cache"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "FRESH AdamW moments" in done.stderr  # tiny@0 has no optimizer state
        (run_dir.parent / "stderr.txt").write_text(done.stderr)

    directory = build_once(shared_dir / "smoke", build)
    return directory / "cache", directory / "runs" / "smoke"


@pytest.fixture
def cache(smoke) -> Path:
    return smoke[0]


def _env(cache: Path) -> dict[str, str]:
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(INJECTION_CACHE=str(cache), OMP_NUM_THREADS="1")
    return env


#: 4 updates with one encounter per group (steps 0, 1, 2) keep the tests short; the preset runs 30
SHORT = ["--total-steps", "4", "--set", "schedule_overrides.count=1", "--set", "checkpoint_interval=2"]


@pytest.fixture
def smoke_run(smoke) -> Path:
    return smoke[1]


def test_smoke_preset_runs_end_to_end(smoke_run):
    run_dir = smoke_run
    probes = read_table(run_dir / "probes.parquet")
    assert sorted(probes.step.unique()) == [0, 1, 2, 3, 4]
    assert len(probes) == 5 * 6 * 15  # 6 generated paragraphs × 15 probes
    assert set(probes.scenario) == {"paraphrase", "duplicate", "once"}
    inj = read_table(run_dir / "injections.parquet")
    assert sorted(zip(inj.step, inj.paragraph)) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["tokens_per_step"] == 4 * 256 and manifest["status"] == "complete"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*")) == ["step2", "step4"]
    # the same probes are learnt: the injected paragraphs' probes gain log-probability
    first = probes[probes.step == 0].logprob.mean()
    assert probes[probes.step == 4].logprob.mean() > first


def test_progress_lines_without_a_terminal_have_an_eta(smoke_run):
    lines = [line for line in (smoke_run.parent / "stderr.txt").read_text().splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]  # log_interval=1
    for line in lines[:-1]:
        assert re.search(r", elapsed \d+m\d\ds, eta \d+m\d\ds$", line), line
    assert "eta" not in lines[-1]


def test_schedule_that_does_not_fit_the_run(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(cache))
    result = CliRunner().invoke(app, ["run", "smoke", "--total-steps", "5", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "beyond the run" in result.output
    assert not (tmp_path / "r" / "probes.parquet").exists()


def test_launch_on_two_cpu_ranks_matches_one_process(cache, smoke_run, tmp_path):
    """`injection launch` → DeepSpeed's launcher → `python -m injection.engine.worker` on 2 ranks (gloo)."""
    import socket

    import numpy as np

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "injection",
        "launch",
        "smoke",
        "--num-gpus",
        "2",
        "--master-port",
        str(port),
        *SHORT[2:],
        "--set",
        "total_steps=4",
        "--set",
        f"output_dir={run_dir}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--module injection.engine.worker smoke" in done.stdout
    key = ["step", "paragraph", "kind", "probe"]
    one = read_table(smoke_run / "probes.parquet").sort_values(key, ignore_index=True)
    two = read_table(run_dir / "probes.parquet").sort_values(key, ignore_index=True)
    assert json.loads((run_dir / "manifest.json").read_text())["world_size"] == 2
    assert (one[key] == two[key]).all().all()
    np.testing.assert_allclose(two.logprob, one.logprob, atol=1e-4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_survive_a_killed_node_and_resume(cache, smoke_run, tmp_path):
    """Multi-node without ssh, rehearsed on one machine: two DeepSpeed "nodes" (`localhost` and `127.0.0.1` in
    one hostfile), one `injection launch --node-rank N` each, one rank per node, gloo. Node 1 is killed with
    SIGKILL after the checkpoint of step 2; node 0 must stop on its own with one clear line and a non-zero exit
    (no hang: a gloo peer's closed connection is noticed at once, `distributed_timeout` bounds the rest), and
    `injection launch --resume` on both nodes must finish the run with the single-process probe log."""
    import signal
    import time

    import numpy as np
    import pandas as pd

    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    run_dir = tmp_path / "two-nodes"
    logs = tmp_path / "logs"
    logs.mkdir()

    def start_nodes(what: list[str], tag: str) -> list[subprocess.Popen]:
        port = _free_port()
        nodes = []
        for rank in (0, 1):
            cmd = [
                sys.executable,
                "-m",
                "injection",
                "launch",
                *what,
                "--hostfile",
                str(hostfile),
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "--set",
                "distributed_timeout=30",
                "--set",
                "log_interval=1",
            ]
            with open(logs / f"{tag}{rank}.out", "w") as out, open(logs / f"{tag}{rank}.err", "w") as err:
                nodes.append(
                    subprocess.Popen(cmd, cwd=REPO, env=_env(cache), stdout=out, stderr=err, start_new_session=True)
                )  # a node = a process group we can kill
        return nodes

    def log(name: str) -> str:
        return (logs / name).read_text()

    nodes = start_nodes(["smoke", *SHORT[2:], "--set", "total_steps=4", "--set", f"output_dir={run_dir}"], "first")
    try:
        deadline = time.time() + 240
        while "step 3/4" not in log("first0.err"):  # rank 0's progress: the checkpoint of step 2 is complete
            assert all(n.poll() is None for n in nodes), log("first0.err")[-3000:] + log("first1.err")[-3000:]
            assert time.time() < deadline, "the two nodes did not reach step 3"
            time.sleep(0.02)
        os.killpg(nodes[1].pid, signal.SIGKILL)
        killed_at = time.time()
        code = nodes[0].wait(timeout=120)
        stopped_after = time.time() - killed_at
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
                n.wait()
    print(f"node 0 stopped {stopped_after:.1f} s after node 1 was killed")
    assert "--no_ssh --node_rank 1" in log("first1.out")
    assert code == 75, log("first0.err")[-3000:]
    errors = [line for line in log("first0.err").splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, errors
    assert errors[0].startswith("error: rank 0 of 2 lost contact with the other ranks (")
    assert (
        f"continue from the checkpoint after step 2 with `injection launch --resume {run_dir} ...` on every "
        "node" in errors[0]
    )
    assert errors[1].startswith("error: the launcher exited with code 75 (a rank lost contact with the others)")
    assert "Traceback" not in log("first0.err")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["last_step"] == 3, manifest
    assert manifest["stop"]["reason"].startswith("lost contact with another rank: ")

    nodes = start_nodes(["--resume", str(run_dir)], "resume")
    try:
        codes = [n.wait(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
    assert codes == [0, 0], log("resume0.err")[-3000:] + log("resume1.err")[-3000:]
    assert "resuming from the checkpoint after step 2" in " ".join(log("resume0.err").split())  # wrapped by rich
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["world_size"] == 2
    # the same tolerances as two ranks on one node (tests/test_engine_resume.py)
    key = ["step", "paragraph", "kind", "probe"]
    one = read_table(smoke_run / "probes.parquet").sort_values(key, ignore_index=True)
    two = read_table(run_dir / "probes.parquet").sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(two[key + ["scenario"]], one[key + ["scenario"]])
    np.testing.assert_allclose(two.logprob, one.logprob, atol=1e-4)
    np.testing.assert_allclose(two.logprob_sum, one.logprob_sum, atol=3e-4)
    assert (two.exact_match == one.exact_match).mean() > 0.99
    np.testing.assert_allclose(
        read_table(run_dir / "train_metrics.parquet").loss,
        read_table(smoke_run / "train_metrics.parquet").loss,
        atol=1e-4,
    )


#: The smoke run's numbers, pinned: the mean ℓ of each (scenario, kind) group at every logged step (columns
#: paraphrase, duplicate, once × mem, sem, comp) and the loss of each update. They changed once on purpose, when
#: the loss took OLMo's normalisation (summed over rows × L instead of the mean over L − 1 positions per row).
#: Compared with a tolerance, not bit for bit: which float32 kernels torch picks depends on the CPU. Forcing
#: other instruction sets on one machine (ATEN_CPU_CAPABILITY=default or avx2, MKL_ENABLE_INSTRUCTIONS=AVX2 or
#: SSE4_2, DNNL_MAX_CPU_ISA=AVX2 or SSE41) moved single probes by up to 1.9e-6, group means by up to 9.5e-7 and
#: the loss by up to 9.5e-7. 2e-5 is twenty times that; a learning rate 1 % off (`optimizer.lr_scale=1.01`) already
#: moves a group mean by 6.0e-4 and the losses by 5.2e-5 to 2.1e-4, so a change to what an update computes fails.
PINNED_GROUP_MEANS = {
    0: [-10.863009, -10.883421, -10.846956, -10.861003, -10.829048, -10.832297, -10.848969, -10.854483, -10.845251],
    1: [-10.850092, -10.870625, -10.831489, -10.859961, -10.828842, -10.830965, -10.848991, -10.854538, -10.843387],
    2: [-10.840686, -10.860729, -10.817529, -10.852243, -10.822227, -10.823019, -10.847520, -10.853081, -10.841121],
    3: [-10.831604, -10.850404, -10.802797, -10.844740, -10.816209, -10.815442, -10.837276, -10.842650, -10.831223],
    4: [-10.822901, -10.840151, -10.788328, -10.838196, -10.811337, -10.808456, -10.827646, -10.832458, -10.819984],
}
PINNED_LOSSES = [10.789130, 10.786114, 10.767464, 10.779928]
PINNED_TOLERANCE = 2e-5
GROUPS = [(s, k) for s in ("paraphrase", "duplicate", "once") for k in ("mem", "sem", "comp")]


def probe_log_hash(run_dir) -> str:
    import hashlib

    import pandas as pd

    df = read_table(run_dir / "probes.parquet").sort_values(["step", "paragraph", "kind", "probe"])
    df = df.reset_index(drop=True)
    cols = [
        "step",
        "paragraph",
        "scenario",
        "kind",
        "probe",
        "logprob",
        "logprob_sum",
        "first_logprob",
        "exact_match",
        "first_rank",
    ]
    return hashlib.sha256(pd.util.hash_pandas_object(df[cols], index=False).values.tobytes()).hexdigest()


def test_smoke_numbers_equal_the_pinned_ones_within_the_stated_tolerance(smoke_run):
    import numpy as np

    means = read_table(smoke_run / "probes.parquet").groupby(["step", "scenario", "kind"]).logprob.mean()
    for step, expected in PINNED_GROUP_MEANS.items():
        got = [means[(step, scenario, kind)] for scenario, kind in GROUPS]
        np.testing.assert_allclose(got, expected, rtol=0, atol=PINNED_TOLERANCE, err_msg=f"step {step}")
    losses = read_table(smoke_run / "train_metrics.parquet").loss
    np.testing.assert_allclose(losses, PINNED_LOSSES, rtol=0, atol=PINNED_TOLERANCE)


def test_the_same_smoke_run_twice_on_one_machine_is_bit_identical(cache, smoke_run, tmp_path):
    """Determinism: the same command on the same machine gives the same probe log, bit for bit."""
    again = tmp_path / "again"
    done = subprocess.run(
        [sys.executable, "-m", "injection", "run", "smoke", *SHORT, "-o", str(again)],
        cwd=REPO,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert probe_log_hash(again) == probe_log_hash(smoke_run)
