import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.rundir import read_table, write_injections
from injection.engine.hooks import MetricsHook, ProbeLogHook
from tests.helpers.engine import Record, synthetic_probes

REQUIRED_COLUMNS = {
    "step": pa.int32(),
    "paragraph": pa.int32(),
    "scenario": pa.string(),
    "kind": pa.string(),
    "probe": pa.int16(),
    "logprob": pa.float32(),
    "logprob_sum": pa.float32(),
    "first_logprob": pa.float32(),
    "exact_match": pa.bool_(),
}


def _scores(n, step):
    rng = np.random.default_rng(step)
    lp = -rng.random(n).astype(np.float32)
    return {
        "logprob": lp,
        "logprob_sum": lp * 3,
        "first_logprob": lp * 2,
        "exact_match": lp > -0.5,
        "first_rank": rng.integers(0, 9, n).astype(np.int32),
    }


def test_parts_read_as_one_table_with_the_spec_schema(tmp_path):
    items = synthetic_probes(n_paragraphs=2, per_kind=2)
    hook = ProbeLogHook(tmp_path, items, flush_steps=3)
    for step in range(8):
        hook.on_eval(None, step, _scores(len(items), step))
    hook.on_end(None, "complete")
    parts = sorted(os.listdir(tmp_path / "probes.parquet"))
    assert parts == ["part-000000-000002.parquet", "part-000003-000005.parquet", "part-000006-000007.parquet"]
    table = pq.read_table(tmp_path / "probes.parquet")  # pyarrow reads the directory as one table
    for name, typ in REQUIRED_COLUMNS.items():
        assert table.schema.field(name).type == typ
    df = pd.read_parquet(tmp_path / "probes.parquet")
    assert len(df) == 8 * len(items)
    ours = read_table(tmp_path / "probes.parquet")
    assert ours["step"].tolist() == sorted(ours["step"].tolist())
    np.testing.assert_array_equal(ours[ours.step == 4].logprob.to_numpy(), _scores(len(items), 4)["logprob"])
    assert ours.loc[0, "kind"] == items[0].kind and ours.loc[0, "scenario"] == items[0].scenario
    # a resumed run drops parts newer than its checkpoint, and stray temporaries
    (tmp_path / "probes.parquet" / ".part-000008-000009.parquet.tmp").write_bytes(b"half")
    hook.load_state_dict({"parts": parts[:2]})
    assert sorted(os.listdir(tmp_path / "probes.parquet")) == parts[:2]


def test_injections_and_metrics(tmp_path):
    write_injections(tmp_path, [Record(0, 3, "once", 0, 1, 0, 17), Record(100, 4, "paraphrase", 2, 0, 0, 20)])
    t = pq.read_table(tmp_path / "injections.parquet")
    assert t.schema.field("variant").type == pa.int16() and t.column("tokens").to_pylist() == [17, 20]
    m = MetricsHook(tmp_path, flush_steps=10)
    m.on_update(None, 1, {"loss": 2.5, "lr": 1e-4, "grad_norm": 0.7, "tokens_per_s": 1000.0, "skipped": False})
    assert m.state_dict() == {"parts": ["part-000001-000001.parquet"]}  # flushed before a checkpoint
    df = read_table(tmp_path / "train_metrics.parquet")
    assert df.loc[0, "lr"] == 1e-4 and df.loc[0, "step"] == 1 and np.isnan(df.loc[0, "max_mem_gib"])
