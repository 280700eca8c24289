"""`injection run smoke` streaming its corpus from a loopback host that behaves like a busy one (503s, 429s with
Retry-After, half bodies, dropped and reset connections, stalls, trickles): the run completes and its probe log
equals the same run on local files, bit for bit. Then the host goes away for good in the middle of a run: the run
stops cleanly at an update boundary with a checkpoint (status `interrupted`, exit 75, one line naming the URL and
the resume command), and `--resume` once the host is back gives the same probe log again.

The runs go in parallel (the two-core CI machine spends most of their time starting Python and DeepSpeed), the
resume as soon as the host is back.
Set CHAOS_REPORT=FILE to keep a JSON record of every fault the host served and what each run made of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.rundir import read_table
from tests.helpers.http_server import FAULTS, Chaos, FileServer

REPO = Path(__file__).resolve().parents[1]
SHORT = ["--total-steps", "4", "--set", "schedule_overrides.count=1", "--set", "checkpoint_interval=2"]
#: Tiny waits keep the test short: a stall is noticed after 0.4 s, a host that is gone is given up after 2 s.
FAST_HTTP = ["--set", "http.retry_budget=2", "--set", "http.backoff=0.01", "--set", "http.timeout=0.4"]

pytestmark = pytest.mark.slow


def _env(cache: Path) -> dict[str, str]:
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(INJECTION_CACHE=str(cache), OMP_NUM_THREADS="1")
    return env


def _start(args: list[str], cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "injection", "run", *args],
        cwd=REPO,
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=240)
    return proc.returncode, stderr


def _probe_log(run_dir: Path):
    key = ["step", "paragraph", "kind", "probe"]
    return read_table(run_dir / "probes.parquet").sort_values(key, ignore_index=True)


def test_a_run_streams_through_a_busy_host_and_survives_one_that_goes_away(tmp_path):
    from harness.tokenizers import load_tokenizer  # noqa: F401 - the import the runs need, warmed for timing
    from injection.checkpoints.layout import read_checkpoint_dir
    from injection.checkpoints.pull import local_checkpoint
    from injection.engine.inputs import resolve_data

    started = time.monotonic()
    cache = tmp_path / "cache"
    os.environ["INJECTION_CACHE"] = str(cache)  # the cache the runs share: inputs built once, here
    try:
        corpus = Path(resolve_data("cache:smoke", read_checkpoint_dir(local_checkpoint("tiny@0+L256"))))
    finally:
        os.environ.pop("INJECTION_CACHE")
    runs = tmp_path / "runs"
    with FileServer(corpus) as busy, FileServer(corpus) as leaving:
        busy.retry_after, busy.stall_seconds, busy.trickle_seconds = "1", 1.0, 0.05
        busy.chaos = Chaos(FAULTS[:7], every=2, limit=14)  # every fault twice
        # The host goes away for good when batch 3's slice of the order (bytes 48-63) is first asked for: updates
        # 0-2 have their data, update 3 has none.
        leaving.down_when = lambda path, rng: (
            path == "global_indices.npy" and rng is not None and rng.startswith("bytes=48-")
        )
        local = _start(["smoke", *SHORT, "-o", str(runs / "local")], cache)
        chaos = _start(["smoke", *SHORT, *FAST_HTTP, "--set", f"data={busy.url()}", "-o", str(runs / "chaos")], cache)
        gone = _start(["smoke", *SHORT, *FAST_HTTP, "--set", f"data={leaving.url()}", "-o", str(runs / "gone")], cache)

        # 1. The host that goes away: a clean stop after update 2 with a checkpoint of step 3, one line, exit 75.
        code, stderr = _finish(gone)
        gone_dir = runs / "gone"
        assert code == 75, stderr[-3000:]
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr[-3000:]
        assert errors[0].startswith(f"error: {leaving.url('global_indices.npy')}: no complete answer")
        assert f"continue with `injection run --resume {gone_dir}`" in errors[0]
        manifest = json.loads((gone_dir / "manifest.json").read_text())
        assert manifest["status"] == "interrupted" and manifest["last_step"] == 3
        assert manifest["stop"] == {"step": 3, "reason": f"data unavailable: {leaving.url('global_indices.npy')}"}
        assert sorted(p.name for p in (gone_dir / "checkpoints").glob("step*")) == ["step2", "step3"]
        assert sorted(read_table(gone_dir / "train_metrics.parquet").step) == [1, 2, 3]  # no half-applied update
        assert leaving.unanswered >= 2

        # The host is back: --resume (while the other two runs finish).
        leaving.down, leaving.down_when = False, None
        resumed = _start(["--resume", str(gone_dir)], cache)

        code, stderr = _finish(local)
        assert code == 0, stderr[-3000:]
        expected = _probe_log(runs / "local")

        # 2. The busy host: every fault served, every one survived, the probe log identical to the local run's.
        code, stderr = _finish(chaos)
        assert code == 0, stderr[-3000:]
        assert busy.faults_served() == {fault: 2 for fault in FAULTS[:7]}
        assert _probe_log(runs / "chaos").equals(expected)
        transfers = json.loads((runs / "chaos" / "manifest.json").read_text())["data_transfers"]
        assert transfers["HTTP 429"] == 2 and transfers["HTTP 503"] == 2 and transfers["resumed by Range"] >= 2

        # 3. The resumed run finishes with the local run's probe log.
        code, stderr = _finish(resumed)
        assert code == 0, stderr[-3000:]
        assert "resuming from the checkpoint after step 3" in stderr
        assert _probe_log(gone_dir).equals(expected)

    if os.environ.get("CHAOS_REPORT"):
        report = {
            "busy host": {"faults served": busy.injected, "the run's data_transfers": transfers},
            "host gone": {
                "requests left unanswered": leaving.unanswered,
                "stop": manifest["stop"],
                "error line": errors[0].replace(str(tmp_path), "TMP"),
                "resumed": "complete, probe log equal",
            },
            "seconds": round(time.monotonic() - started, 1),
        }
        Path(os.environ["CHAOS_REPORT"]).write_text(json.dumps(report, indent=1, default=str))
