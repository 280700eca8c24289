"""Exported checkpoints continue a run exactly, and the evaluation-step plan."""

import json

import numpy as np
import pytest
import torch

from harness.rundir import read_table
from injection.engine.hooks import ExportHook
from injection.engine.inputs import RunInputs, read_checkpoint
from injection.engine.loop import run_training
from injection.engine.plan import evaluation_steps
from tests.helpers.engine import synthetic_config, synthetic_inputs, synthetic_stream, write_tiny_checkpoint


def _cfg(tmp_path, name, checkpoint, total_steps):
    return synthetic_config(
        checkpoint,
        total_steps=total_steps,
        micro_batch=2,
        output_dir=tmp_path / name,
        checkpoint_interval=0,
        log_flush_steps=10,
    )


@pytest.mark.parametrize("with_optimizer", [True, False], ids=["restored-moments", "fresh-moments"])
def test_a_run_resumed_from_an_exported_checkpoint_continues_exactly(tmp_path, with_optimizer):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=with_optimizer, step=1000)
    inputs = synthetic_inputs(ck)  # injections at run steps 0 and 3
    export = ExportHook([3], lambda global_step: tmp_path / "exported" / f"step{global_step}", {"family": "mine"})
    run_a = run_training(_cfg(tmp_path, "a", ck, 6), inputs, progress=False, hooks=[export])

    exported = tmp_path / "exported" / "step1003"
    meta = json.loads((exported / "checkpoint.json").read_text())
    assert meta["step"] == 1003 and meta["family"] == "mine" and meta["has_optimizer_state"]
    assert meta["lr_schedule"] == json.loads((ck / "checkpoint.json").read_text())["lr_schedule"]

    # run B starts at global step 1003 where A's data stream stood, with A's step-3 injections at its step 0
    ck_b = read_checkpoint(str(exported))
    assert ck_b.data_position.instances_seen == inputs.stream.start + 3 * inputs.stream.batch_size
    shifted = {k - 3: items for k, items in inputs.injections.items() if k >= 3}
    inputs_b = RunInputs(ck_b, synthetic_stream(ck_b), inputs.probe_items, shifted, knowledge_source="synthetic")
    inputs_b.place_injections()
    run_b = run_training(_cfg(tmp_path, "b", exported, 3), inputs_b, progress=False)

    a = read_table(run_a / "probes.parquet").sort_values(["step", "paragraph", "kind", "probe"])
    b = read_table(run_b / "probes.parquet").sort_values(["step", "paragraph", "kind", "probe"])
    for k in range(4):
        np.testing.assert_allclose(b[b.step == k].logprob.to_numpy(), a[a.step == k + 3].logprob.to_numpy(), atol=1e-5)
    # and the updates did change the model (the comparison is not trivially equal)
    assert not np.allclose(a[a.step == 3].logprob.to_numpy(), a[a.step == 6].logprob.to_numpy(), atol=1e-4)


def test_evaluation_steps_are_dense_around_injections_and_sparse_elsewhere():
    assert evaluation_steps(10, 1, [], 0) == set(range(11))
    assert evaluation_steps(100, 1, [0, 40], 2, explicit=[10, 50]) == {0, 1, 2, 10, 40, 41, 42, 50, 100}
    assert evaluation_steps(20, 5, [], 0) == {0, 5, 10, 15, 20}
    assert evaluation_steps(23, 10, [], 0) == {0, 10, 20, 23}  # the last step is always logged
    assert evaluation_steps(30, 10, [0, 12], 3) == {0, 1, 2, 3, 10, 12, 13, 14, 15, 20, 30}
    assert evaluation_steps(14, 10, [12], 5) == {0, 10, 12, 13, 14}  # clipped at the end of the run
    # explicit steps replace the regular interval; 0 and the last step stay
    assert evaluation_steps(30, 1, [], 0, [7, 19]) == {0, 7, 19, 30}
    assert evaluation_steps(30, 1, [12], 2, [5]) == {0, 5, 12, 13, 14, 30}
