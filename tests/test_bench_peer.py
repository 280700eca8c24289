"""benchmarks/bench_peer_olmo.py on a CPU: ai2-olmo's own Trainer (FSDP) and the harness (ZeRO-2) train the same
weights on the same rows, and the JSON states what each side did."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_peer_olmo

pytestmark = pytest.mark.slow  # two training processes and a conversion: about 30 s on 2 cores

STEPS, WARMUP, BATCH, MICRO, SEQ = 4, 1, 4, 2, 256  # rows of 256 tokens hold a generated paragraph


def test_both_sides_train_the_same_model_on_the_same_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "peer.json"
    bench_peer_olmo.main(
        [
            "--device",
            "cpu",
            "--shape",
            "small",
            "--arch",
            "d_model=64,n_layers=2,n_heads=4,n_kv_heads=4,mlp_hidden_size=512",
            "--seq-len",
            str(SEQ),
            "--steps",
            str(STEPS),
            "--warmup",
            str(WARMUP),
            "--global-batch",
            str(BATCH),
            "--micro-batch",
            str(MICRO),
            "--paragraphs",
            "6",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    olmo, harness = result["olmo"], result["harness"]

    assert (result["steps"], result["global_batch"], result["micro_batch"], result["seq_len"]) == (
        STEPS,
        BATCH,
        MICRO,
        SEQ,
    )
    for side in (olmo, harness):
        assert side["updates"] == STEPS
        assert side["tokens"] == STEPS * BATCH * SEQ
        assert side["tokens_per_s"] > 0
        flops = side["tokens_per_s"] * result["flops_per_token"]
        assert side["mfu"] == pytest.approx(flops / 1e12 / result["peak_tflops"])
        assert side["max_mem_gib"] is None  # no accelerator: no peak to report
    assert result["ratio"] == pytest.approx(harness["tokens_per_s"] / olmo["tokens_per_s"], rel=1e-12)
    # The same initial weights (OLMo's, converted) and the same first rows (OLMo's order): the first update's loss,
    # computed before any weight moves, agrees to float32 rounding (0 to 1e-6 seen). One other row in the batch
    # moves it by about 0.03.
    assert harness["loss_first"] == pytest.approx(olmo["loss_first"], abs=1e-5)
    assert result["first_loss_abs_diff"] == pytest.approx(abs(harness["loss_first"] - olmo["loss_first"]))
    # the harness really did run its own pipeline: probes scored, paragraphs spliced from the second update on
    assert harness["n_probes"] == 6 * 15
    manifest = json.loads((tmp_path / "work" / "runs" / "harness-zero2" / "manifest.json").read_text())
    assert manifest["n_injected_copies"] > 0 and manifest["runtime"]["device"] == "cpu"
