import pytest
import yaml

from harness.errors import UserError
from injection.engine.config import (
    ExperimentConfig,
    available_presets,
    config_from_dict,
    load_config,
    preset_path,
)

BASE = dict(checkpoint="ck", knowledge="generate:4:2:0", schedule="paper", data="corpus", total_steps=10)


def test_every_preset_loads():
    assert {"smoke", "paper-7b-mid", "paper-1b-mid"} <= set(available_presets())
    for name in available_presets():
        cfg = load_config(name)
        assert isinstance(cfg, ExperimentConfig) and cfg.total_steps > 0


def test_paper_presets_are_the_reference_experiment():
    from injection.engine.plan import accumulation_steps, resolve_micro_batch

    for size in ("1b", "7b"):
        for stage in ("early", "mid", "late"):
            cfg = load_config(f"paper-{size}-{stage}")
            assert (cfg.checkpoint, cfg.schedule, cfg.total_steps) == (f"olmo-{size}@{stage}", "paper", 2500)
            assert cfg.knowledge_limit == 130  # items 120-129 are never injected: logged as controls
            assert cfg.global_batch is None and cfg.precision == "bf16" and cfg.deepspeed_config == "zero3"
            assert cfg.data == f"data/olmo-{size}-{stage}"
            # rows per update of the run (2,048; part of the 7B run 2,160) split over 1, 8 and 16 GPUs
            for rows in (2048, 2160):
                for gpus in (1, 8, 16):
                    micro = resolve_micro_batch(rows, gpus, cfg.micro_batch, cfg.max_micro_batch)
                    assert 1 <= micro <= cfg.max_micro_batch and accumulation_steps(rows, micro, gpus) >= 1
    variant = load_config("paper-7b-mid-bs128")
    assert variant.global_batch == 128 and variant.optimizer.constant_lr == 3e-4 and variant.optimizer.fresh_moments
    assert load_config("smoke").total_steps >= 30 and load_config("smoke").checkpoint_interval <= 10


def test_a_split_that_does_not_fit_names_the_valid_micro_batches():
    from injection.engine.plan import accumulation_steps, resolve_micro_batch

    with pytest.raises(UserError, match=r"micro_batch values that fit 16 rank\(s\): 1, 3, 5, 9, 15, 27, 45"):
        accumulation_steps(2160, 4, 16)
    assert resolve_micro_batch(2160, 16, "auto", 8) == 5 and resolve_micro_batch(2048, 16, "auto", 8) == 8
    with pytest.raises(UserError, match="does not split over 7 ranks"):
        resolve_micro_batch(2048, 7, "auto", 8)


def test_one_function_decides_the_batch_geometry(tmp_path):
    """Rows per update (the configured global_batch, else the checkpoint's), micro-batch, accumulation and rows
    per rank come from `batch_geometry` alone: the plan holds its answer and the data stream reads its rows."""
    from injection.engine.inputs import read_checkpoint
    from injection.engine.plan import BatchGeometry, batch_geometry, make_plan
    from tests.helpers.engine import synthetic_config, write_tiny_checkpoint

    ck = read_checkpoint(str(write_tiny_checkpoint(tmp_path / "ck", global_batch=8)))
    own = synthetic_config(ck.path, total_steps=2, micro_batch="auto", max_micro_batch=2)
    assert batch_geometry(own, ck, 2) == BatchGeometry(global_batch=8, micro_batch=2, accumulation=2, world=2)
    assert batch_geometry(own, ck, 2).rows_per_rank == 4
    wider = synthetic_config(ck.path, total_steps=2, global_batch=12, micro_batch=3)
    assert batch_geometry(wider, None, 1) == BatchGeometry(12, 3, 4, 1)  # no checkpoint needed to check it
    plan = make_plan(wider, ck, 1, [])
    assert plan.geometry == batch_geometry(wider, ck, 1) and (plan.global_batch, plan.accumulation) == (12, 4)
    with pytest.raises(UserError, match=r"not divisible by micro_batch \(3\) × ranks \(3\)"):
        batch_geometry(wider, ck, 3)


@pytest.mark.slow
def test_prepare_inputs_builds_the_stream_from_the_geometry(tmp_path, monkeypatch):
    """The data stream reads the rows the geometry decides, and a split that does not fit the launched ranks is
    refused while the inputs are prepared, before any process group exists."""
    from injection.engine.inputs import prepare_inputs
    from tests.helpers.corpus import make_corpus

    corpus = make_corpus(tmp_path / "corpus", seq_len=64, file_tokens=(20_000,), vocab=50_000)
    settings = dict(checkpoint="tiny@0+L64", knowledge="generate:4:1:0", schedule="none", data=str(corpus))
    cfg = config_from_dict({**settings, "total_steps": 4, "global_batch": 6, "micro_batch": 3})
    assert prepare_inputs(cfg).stream.batch_size == 6
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match=r"6 rows do not split over 4 ranks"):
        prepare_inputs(cfg)


@pytest.mark.parametrize("name, size", [("paper-pythia-1b-mid", "1b"), ("paper-pythia-6.9b-mid", "6.9b")])
def test_pythia_paper_presets(name, size):
    """The reference design with the last 10 items as controls; micro-batches that split 1,024 rows on 1, 8 and
    16 GPUs; moments rebuilt, since Pythia publishes none."""
    from injection.checkpoints.catalog import load_catalog
    from injection.engine.plan import accumulation_steps, resolve_micro_batch

    cfg = load_config(name)
    assert (cfg.checkpoint, cfg.schedule, cfg.total_steps) == (f"pythia-{size}-deduped@mid", "paper", 2500)
    assert cfg.knowledge_limit == 130 and cfg.optimizer.moment_warmup_steps > 0 and cfg.global_batch is None
    rows = load_catalog().resolve(cfg.checkpoint).family.batch_size_at(23000)
    for gpus in (1, 8, 16):
        micro = resolve_micro_batch(rows, gpus, cfg.micro_batch, cfg.max_micro_batch)
        assert accumulation_steps(rows, micro, gpus) * micro * gpus == 1024 and micro == cfg.max_micro_batch
    smoke = load_config("smoke-pythia")
    assert smoke.checkpoint.startswith("pythia-tiny@") and smoke.deepspeed_config == "cpu"


@pytest.mark.parametrize("size, rows", [("1b", 512), ("7b", 1024)])
@pytest.mark.parametrize("stage", ["early", "mid", "late"])
def test_olmo2_paper_presets(size, rows, stage):
    """The reference design on OLMo 2's own batches (4,096-token rows) at its three stages, controls logged, the
    checkpoint's AdamW state continued; micro-batches that split the rows on 1, 8 and 16 GPUs; the LM head chunked
    (a 100,352-entry vocabulary)."""
    from injection.checkpoints.catalog import load_catalog
    from injection.engine.plan import accumulation_steps, resolve_micro_batch

    cfg = load_config(f"paper-olmo2-{size}-{stage}")
    assert (cfg.checkpoint, cfg.schedule, cfg.total_steps) == (f"olmo2-{size}@{stage}", "paper", 2500)
    assert cfg.knowledge_limit == 130 and cfg.global_batch is None and not cfg.optimizer.fresh_moments
    assert cfg.optimizer.moment_warmup_steps == 0 and cfg.objective.instance_filter and cfg.precision == "bf16"
    assert cfg.kernels.loss_chunk_tokens == 4096 and cfg.data == f"data/olmo2-{size}-{stage}"
    resolved = load_catalog().resolve(cfg.checkpoint)
    assert resolved.family.batch_size_at(resolved.step) == rows and resolved.family.seq_len == 4096
    for gpus in (1, 8, 16):
        micro = resolve_micro_batch(rows, gpus, cfg.micro_batch, cfg.max_micro_batch)
        assert accumulation_steps(rows, micro, gpus) * micro * gpus == rows and micro == cfg.max_micro_batch


def test_overrides_and_explicit_options(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(BASE))
    cfg = load_config(
        str(f),
        ["total_steps=20", "optimizer.constant_lr=1e-4", "optimizer.fresh_moments=true", "knowledge_limit=null"],
        {"seed": 5, "output_dir": "out/x"},
    )
    assert cfg.total_steps == 20 and cfg.optimizer.constant_lr == 1e-4 and cfg.optimizer.fresh_moments
    assert cfg.seed == 5 and cfg.output_dir == "out/x"
    # the saved YAML loads back to the same configuration
    again = config_from_dict(yaml.safe_load(cfg.dump_yaml()))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert config_from_dict({**BASE, "output_dir": "elsewhere"}).config_hash() == config_from_dict(BASE).config_hash()
    assert config_from_dict({**BASE, "seed": 1}).config_hash() != config_from_dict(BASE).config_hash()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": "ten"}, "total_steps"),
        ({"micro_batch": -1}, "micro_batch"),
        ({"precision": "fp16"}, "precision"),
        ({"optimizer": {"constant_lr": -1.0}}, "optimizer.constant_lr"),
        ({"optimizer": {"nesterov": True}}, "nesterov"),
        ({"knowledge": "generate:four"}, "knowledge"),
        ({"stepz": 3}, "stepz"),
    ],
)
def test_invalid_fields_are_named(change, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        config_from_dict({**BASE, **change})


def test_missing_required_field_and_unknown_source():
    with pytest.raises(UserError, match="'data'"):
        config_from_dict({k: v for k, v in BASE.items() if k != "data"})
    with pytest.raises(UserError, match="neither a YAML file nor a preset"):
        load_config("no-such-preset")
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_config("smoke", ["total_steps"])
    assert preset_path("smoke").is_file()


def test_eval_steps_are_checked_and_count_in_the_hash():
    plain = config_from_dict(BASE)
    assert plain.eval_steps is None
    chosen = config_from_dict({**BASE, "eval_steps": [3, 7]})
    assert chosen.eval_steps == [3, 7] and chosen.config_hash() != plain.config_hash()
    with pytest.raises(UserError, match=r"field 'eval_steps': step 11 is outside the run \(0…10\)"):
        config_from_dict({**BASE, "eval_steps": [3, 11]})
    with pytest.raises(UserError, match=r"field 'eval_steps\[1\]': expected an integer"):
        config_from_dict({**BASE, "eval_steps": [3, "x"]})


def test_measurement_fields_added_later_keep_older_runs_hashes():
    # the hash of the smoke preset before the token columns, knowledge entropy, twins and priming existed: a run
    # directory written then must still be recognised (and resumed) as the same run
    assert load_config("smoke").config_hash() == "0460435955b169e2"
    plain = config_from_dict(BASE)
    for change in ({"probe_token_stats": True}, {"knowledge_entropy": {"interval": 5}}):
        assert config_from_dict({**BASE, **change}).config_hash() != plain.config_hash()
