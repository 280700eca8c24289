import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.rundir import read_table, write_injections
from injection.engine.probelog import MetricsWriter, ProbeLogWriter
from tests.helpers.engine import Record, synthetic_probes

SPEC_COLUMNS = {
    "step": pa.int32(), "paragraph": pa.int32(), "scenario": pa.string(), "kind": pa.string(), "probe": pa.int16(),
    "logprob": pa.float32(), "logprob_sum": pa.float32(), "first_logprob": pa.float32(), "exact_match": pa.bool_(),
}


def _scores(n, step):
    rng = np.random.default_rng(step)
    lp = -rng.random(n).astype(np.float32)
    return {"logprob": lp, "logprob_sum": lp * 3, "first_logprob": lp * 2, "exact_match": lp > -0.5,
            "first_rank": rng.integers(0, 9, n).astype(np.int32)}


def test_parts_read_as_one_table_with_the_spec_schema(tmp_path):
    items = synthetic_probes(n_paragraphs=2, per_kind=2)
    w = ProbeLogWriter(tmp_path, items, flush_steps=3)
    for step in range(8):
        w.log(step, _scores(len(items), step))
    w.flush()
    parts = sorted(os.listdir(tmp_path / "probes.parquet"))
    assert parts == ["part-000000-000002.parquet", "part-000003-000005.parquet", "part-000006-000007.parquet"]
    table = pq.read_table(tmp_path / "probes.parquet")  # pyarrow reads the directory as one table
    for name, typ in SPEC_COLUMNS.items():
        assert table.schema.field(name).type == typ
    df = pd.read_parquet(tmp_path / "probes.parquet")
    assert len(df) == 8 * len(items)
    ours = read_table(tmp_path / "probes.parquet")
    assert ours["step"].tolist() == sorted(ours["step"].tolist())
    np.testing.assert_array_equal(ours[ours.step == 4].logprob.to_numpy(), _scores(len(items), 4)["logprob"])
    assert ours.loc[0, "kind"] == items[0].kind and ours.loc[0, "scenario"] == items[0].scenario
    # a resumed run drops parts newer than its checkpoint, and stray temporaries
    (tmp_path / "probes.parquet" / ".part-000008-000009.parquet.tmp").write_bytes(b"half")
    removed = w.keep_only(parts[:2])
    assert removed == [".part-000008-000009.parquet.tmp", "part-000006-000007.parquet"]


def test_injections_and_metrics(tmp_path):
    write_injections(tmp_path, [Record(0, 3, "once", 0, 1, 0, 17), Record(100, 4, "paraphrase", 2, 0, 0, 20)])
    t = pq.read_table(tmp_path / "injections.parquet")
    assert t.schema.field("variant").type == pa.int16() and t.column("tokens").to_pylist() == [17, 20]
    m = MetricsWriter(tmp_path, flush_steps=10)
    m.log(1, 2.5, 1e-4, 0.7, 1000.0)
    m.flush()
    df = read_table(tmp_path / "train_metrics.parquet")
    assert df.loc[0, "lr"] == 1e-4 and df.loc[0, "step"] == 1
