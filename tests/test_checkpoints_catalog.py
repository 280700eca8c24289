"""checkpoints.yaml: the shipped catalog loads with the published facts; bad files fail precisely."""

from __future__ import annotations

import copy
import csv

import pytest
import yaml

from harness.errors import UserError
from injection.checkpoints.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_shipped_catalog_loads(catalog):
    pythia = {
        f"pythia-{s}{v}" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b") for v in ("", "-deduped")
    }
    olmo2 = {"olmo2-1b", "olmo2-7b", "olmo2-13b"}
    ingredients = {"1b": 3, "7b": 3, "13b": 4}
    olmo2 |= {f"olmo2-{size}-stage2-ingredient{i}" for size, n in ingredients.items() for i in range(1, n + 1)}
    assert set(catalog.families) == {"olmo-1b", "olmo-7b", "tiny", "pythia-tiny"} | pythia | olmo2
    one, seven = catalog.family("olmo-1b"), catalog.family("olmo-7b")
    assert (len(one.steps), len(seven.steps)) == (351, 526)
    assert one.hf_repo == "allenai/OLMo-1B-hf" and seven.hf_repo == "allenai/OLMo-7B-hf"
    assert one.architecture.weight_tying and not seven.architecture.weight_tying
    assert seven.architecture.mlp_hidden_size == 22016 and one.architecture.mlp_hidden_size == 16384
    assert one.lr_schedule.kind == "cosine" and one.lr_schedule.warmup_steps == 2000
    assert seven.lr_schedule.kind == "linear" and seven.lr_schedule.peak_lr == 3e-4
    assert one.optimizer.betas == (0.9, 0.95) and seven.optimizer.weight_decay == 0.1


def test_revision_names_are_only_confirmed_ones(catalog):
    one, seven = catalog.family("olmo-1b"), catalog.family("olmo-7b")
    assert one.entry(20000).hf_revision == "step20000-tokens84B"
    assert seven.entry(40000).hf_revision == "step40000-tokens177B"
    assert one.entry(1000).hf_revision is None  # not in any confirmed list
    assert seven.entry(558223).hf_revision is None
    assert len(seven.entry(557000).urls) == 2  # two run segments publish step 557000


def test_stages(catalog):
    seven, one = catalog.family("olmo-7b"), catalog.family("olmo-1b")
    assert seven.stages == {"early": 40000, "mid": 113000, "late": 339000}
    # 1B: the listed step nearest to each of the study's token counts at 2048 x 2048 tokens per step.
    listed = [e.step for e in one.steps]
    for stage, tokens in (("early", 168e9), ("mid", 494e9), ("late", 1.5e12)):
        assert one.stages[stage] == min(listed, key=lambda s: abs(s * 2048 * 2048 - tokens))
    assert round(seven.tokens_at(40000) / 1e9) == 177  # 2,160 rows per step
    assert catalog.resolve("olmo-7b@mid").step == 113000


def test_catalog_matches_reference_lists(catalog, reference_dir):
    for family, name in (("olmo-1b", "OLMo-1B.csv"), ("olmo-7b", "OLMo-7B.csv")):
        fam = catalog.family(family)
        with (reference_dir / "olmo-checkpoints" / name).open() as f:
            for row in csv.DictReader(f):
                assert row["Checkpoint Directory"] in fam.entry(int(row["Step"])).urls


def test_learning_rate_follows_olmo_schedules(catalog):
    from injection.lr import learning_rate

    one, seven = catalog.family("olmo-1b").lr_schedule, catalog.family("olmo-7b").lr_schedule
    assert learning_rate(one, 2000) == pytest.approx(4e-4)
    assert learning_rate(one, one.t_max) == pytest.approx(4e-5)
    assert learning_rate(seven, 0) == pytest.approx(3e-5)  # OLMo warms up from 10% of the peak
    mid = (seven.t_max + 5000) // 2
    assert learning_rate(seven, mid) == pytest.approx((3e-4 + 3e-5) / 2, rel=1e-4)


def test_resolve_errors(catalog):
    with pytest.raises(UserError, match="nearby steps: .*40000"):
        catalog.resolve("olmo-1b@40500")
    with pytest.raises(UserError, match="unknown checkpoint family"):
        catalog.resolve("olmo-3b@early")
    with pytest.raises(UserError, match="neither a step number nor a stage"):
        catalog.resolve("olmo-1b@middle")
    with pytest.raises(UserError, match="FAMILY@STEP"):
        catalog.resolve("olmo-1b")


@pytest.fixture(scope="module")
def shipped_raw(catalog):
    return yaml.load(catalog.path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _small(tmp_path, raw, mutate):
    fam = copy.deepcopy(raw["families"]["olmo-7b"])
    fam["steps"] = [s for s in fam["steps"] if s["step"] in (40000, 113000, 339000)]
    data = {"families": {"olmo-7b": fam}}
    mutate(fam)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_small_valid_file_loads(tmp_path, shipped_raw):
    assert len(load_catalog(_small(tmp_path, shipped_raw, lambda f: None)).family("olmo-7b").steps) == 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda f: f["architecture"].update(n_head=32),
            r"unknown field 'families.olmo-7b.architecture.n_head' \(did you mean 'n_heads'\?\)",
        ),
        (lambda f: f["lr_schedule"].pop("t_max"), r"lr_schedule': missing field 't_max'"),
        (lambda f: f["steps"].append(dict(f["steps"][0])), r"duplicate step 40000"),
        (lambda f: f["steps"][1].update(stepp=1), r"unknown field 'families.olmo-7b.steps\[1\].stepp'"),
        (lambda f: f.update(stages={"early": 40000, "mid": 113000, "late": 999}), r"late=999 not among"),
        (lambda f: f["lr_schedule"].update(kind="cosin"), r"lr_schedule'.kind"),
        (lambda f: f["lr_schedule"].update(peak_lr=float("nan")), r"lr_schedule'.peak_lr: must be a finite"),
        (lambda f: f["optimizer"].update(betas=[0.9]), r"optimizer'.betas"),
        (lambda f: f["optimizer"].update(weight_decay=-0.1), r"optimizer'.weight_decay: must be a finite number >= 0"),
        (lambda f: f.update(kind="gpt2"), r"unknown family kind 'gpt2'"),
        (
            lambda f: f["architecture"].update(d_model="big"),
            r"field 'families.olmo-7b.architecture.d_model': expected an integer",
        ),
    ],
)
def test_bad_files_name_the_key(tmp_path, shipped_raw, mutate, message):
    with pytest.raises(UserError, match=message):
        load_catalog(_small(tmp_path, shipped_raw, mutate))


def test_catalog_env_override(tmp_path, shipped_raw, monkeypatch):
    monkeypatch.setenv("INJECTION_CATALOG", str(_small(tmp_path, shipped_raw, lambda f: None)))
    assert list(load_catalog().families) == ["olmo-7b"]
    monkeypatch.setenv("INJECTION_CATALOG", str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="not found"):
        load_catalog()


def _small_pythia(tmp_path, raw, mutate):
    fam = copy.deepcopy(raw["families"]["pythia-1b"])
    fam["steps"] = [s for s in fam["steps"] if s["step"] in (8000, 23000, 69000)]
    mutate(fam)
    path = tmp_path / "pythia.yaml"
    path.write_text(yaml.safe_dump({"families": {"pythia-1b": fam}}))
    return path


def test_small_pythia_file_loads(tmp_path, shipped_raw):
    fam = load_catalog(_small_pythia(tmp_path, shipped_raw, lambda f: None)).family("pythia-1b")
    assert [e.step for e in fam.steps] == [8000, 23000, 69000] and fam.issues_at(8000) == []
    assert [i.source for i in fam.issues_at(1)] == ["EleutherAI/pythia#83, #198"] and fam.row_len == 2049


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda f: f["architecture"].update(params=1_011_781_633),
            r"architecture.params': 1,011,781,633 does not match the architecture, which has 1,011,781,632",
        ),
        (lambda f: f["architecture"].update(rotary_pct=0.3), r"architecture.rotary_pct'.*even number of dimensions"),
        (lambda f: f["architecture"].update(n_heads=7), r"architecture.n_heads'.*must divide"),
        (lambda f: f["architecture"].update(activation="relu"), r"architecture.activation'.*gelu, gelu_tanh"),
        (lambda f: f["architecture"].update(kind="gpt-neox"), r"unknown field 'families.pythia-1b.architecture.kind'"),
        (
            lambda f: f["steps"][0].update(hf_revision=None),
            r"steps\[0\]': a step needs original URLs or an hf_revision",
        ),
        (lambda f: f["data_order"].pop("index_url"), r"format megatron-indexed needs index_url and data_urls"),
        (lambda f: f["data_order"].update(row_len=2000), r"row_len': 2000 is shorter than seq_len 2048"),
        (lambda f: f["data_order"].update(format="arrow"), r"data_order.format'.*olmo, megatron-indexed"),
        (lambda f: f["known_issues"][0].update(step=[1]), r"unknown field 'families.pythia-1b.known_issues\[0\].step'"),
        (lambda f: f["lr_schedule"].update(warmup_min_lr=1e-5), r"GPT-NeoX warms up from 0"),
    ],
)
def test_bad_pythia_entries_name_the_key(tmp_path, shipped_raw, mutate, message):
    with pytest.raises(UserError, match=message):
        load_catalog(_small_pythia(tmp_path, shipped_raw, mutate))
