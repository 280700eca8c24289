"""`injection capacity`: profiles and configs, the biography corpora (every person once per epoch in a fresh
order), evaluation at chosen exposures, parameter counts, and the quick profile end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from harness import rundir
from harness.errors import UserError
from injection.cli import app
from injection.recipes.capacity import (
    build_corpus_for,
    build_knowledge,
    build_model,
    build_tokenizer,
    eval_steps,
    load_capacity_config,
    parameter_counts,
    planned_parameters,
    profile_names,
    rung_knowledge,
)

SMALL = {
    "name": "small",
    "models": [{"name": "d32-L1", "d_model": 32, "n_layers": 1, "n_heads": 2}],
    "people": [6],
    "exposures": 5,
    "eval_exposures": [1, 2.5],
    "bios": {
        "cities": 8,
        "universities": 8,
        "majors": 6,
        "employers": 8,
        "first_year": 1990,
        "last_year": 1990,
        "paraphrases": 2,
    },
    "overwrite": {"models": ["d32-L1"], "people": 4, "second_people": 3, "second_exposures": 2},
    "tokenizer_vocab": 300,
    "seq_len": 32,
    "global_batch": 2,
}


def _config(tmp_path, **changes):
    data = {**SMALL, **changes}
    path = tmp_path / "cap.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_capacity_config(config=path)


def test_profiles_load_and_the_gpu_one_is_a_real_gpu_ladder():
    from injection.engine.config import resolve_deepspeed_config_path

    assert profile_names() == ["cpu", "gpu", "quick"]
    for name in profile_names():
        cfg = load_capacity_config(name)
        assert cfg.rungs() and resolve_deepspeed_config_path(cfg.deepspeed_config).is_file()
        assert cfg.global_batch % (cfg.micro_batch or cfg.global_batch) == 0
    gpu = load_capacity_config("gpu")
    assert gpu.precision == "bf16" and gpu.deepspeed_config != "cpu" and gpu.exposures <= 1000
    sizes = [planned_parameters(gpu, m)[0] for m in gpu.models]
    assert min(sizes) >= 10e6 and max(sizes) <= 100e6
    for cpu_profile in ("quick", "cpu"):
        cfg = load_capacity_config(cpu_profile)
        assert cfg.precision == "fp32" and cfg.deepspeed_config == "cpu"
        assert len({planned_parameters(cfg, m)[0] for m in cfg.models}) == len(cfg.models) > 1
        assert len({r.people for r in cfg.rungs()}) > 1 and cfg.overwrite is not None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"modles": []}, "unknown field 'modles'"),
        ({"bios": {"people": 5}}, "field 'bios.people' is set by the ladder"),
        (
            {"overwrite": {"models": ["d99"], "people": 2, "second_people": 2, "second_exposures": 1}},
            "'overwrite.models' names 'd99'",
        ),
        ({"eval_exposures": [7]}, "'eval_exposures' has 7, outside 0..exposures (5)"),
        ({"probe_kinds": ["comp"]}, "'probe_kinds' must list mem and/or sem"),
        ({"models": [{"name": "x", "d_model": 30, "n_layers": 1, "n_heads": 4}]}, "not a multiple of n_heads"),
        ({"bios": {"cities": 1}}, "cities must be an integer >= 2"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, change, message):
    with pytest.raises(UserError, match=re.escape(message)):
        _config(tmp_path, **change)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("capacity")
    path = out / "cap.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    cfg = load_capacity_config(config=path)
    knowledge = build_knowledge(cfg, out)
    return cfg, out, knowledge, build_tokenizer(cfg, knowledge, out)


def _documents(corpus_path, total_steps: int, global_batch: int, tokenizer_dir) -> tuple[list[str], np.ndarray]:
    """The training stream of a corpus as documents, and the token offset where each one ends."""
    from harness.tokenizers import load_tokenizer
    from injection.data import BatchStream, open_corpus

    source = BatchStream(open_corpus(corpus_path), 0, 0, global_batch)
    stream = np.concatenate([source.batch(k)[0].ravel() for k in range(total_steps)])
    tokenizer = load_tokenizer(str(tokenizer_dir))
    ends = np.flatnonzero(stream == tokenizer.eos_token_id)
    docs, start, kept_ends = [], 0, []
    for end in ends:
        if end > start:  # EOS padding makes empty documents
            docs.append(tokenizer.decode(stream[start:end].tolist()))
            kept_ends.append(end + 1)
        start = end + 1
    return docs, np.array(kept_ends)


def _person(doc: str, knowledge) -> int:
    """The person whose biography (some variant of it) the document is, exactly."""
    found = [i for i, p in enumerate(knowledge.paragraphs) if doc in (p.text, *p.paraphrases)]
    assert len(found) == 1, doc
    return found[0]


def test_every_person_once_per_epoch_in_a_fresh_order_and_variant(inputs):
    cfg, out, knowledge, tokenizer_dir = inputs
    [rung, overwrite_rung] = cfg.rungs()
    kb, scenarios = rung_knowledge(knowledge, rung, cfg.first_people)
    corpus = build_corpus_for(cfg, rung, kb, scenarios, tokenizer_dir, out)
    assert set(scenarios.values()) == {"bios"} and len(kb) == 6
    docs, ends = _documents(corpus.path, corpus.total_steps, cfg.global_batch, tokenizer_dir)
    people = [_person(d, kb) for d in docs]
    knot_steps, knot_epochs = corpus.exposures["bios"]
    assert knot_epochs == [0, 1, 2, 3, 4, 5]
    tokens_per_step = cfg.global_batch * cfg.seq_len
    full_epochs = [int(e) for e, s in zip(knot_epochs, knot_steps) if s <= corpus.total_steps and e > 0]
    assert full_epochs[-1] >= 4  # only the last epoch may be cut by whole batches
    orders = []
    for e in full_epochs:
        epoch = people[(e - 1) * 6 : e * 6]
        assert sorted(epoch) == list(range(6)), e  # each person exactly once
        # in the variant of that epoch (the original, then paraphrase 1, 2, then the original again)
        assert docs[(e - 1) * 6 : e * 6] == [kb[p].variant((e - 1) % 3) for p in epoch]
        orders.append(epoch)
        # the epoch's last document ends where the manifest says epoch e ends (the pass's EOS padding after it)
        assert ends[e * 6 - 1] <= knot_steps[e] * tokens_per_step < (ends[e * 6] if e * 6 < len(ends) else np.inf)
    assert len({tuple(o) for o in orders}) == len(orders)  # re-shuffled every epoch
    # the same corpus again comes from its cache
    assert build_corpus_for(cfg, rung, kb, scenarios, tokenizer_dir, out).exposures == corpus.exposures

    kb2, scenarios2 = rung_knowledge(knowledge, overwrite_rung, cfg.first_people)
    assert [scenarios2[i] for i in range(len(kb2))] == ["first"] * 4 + ["second"] * 3
    assert kb2[4].text == knowledge[6].text  # the second knowledge base: people after every first one
    second = build_corpus_for(cfg, overwrite_rung, kb2, scenarios2, tokenizer_dir, out)
    docs2, _ = _documents(second.path, second.total_steps, cfg.global_batch, tokenizer_dir)
    people2 = [_person(d, kb2) for d in docs2]
    assert all(p < 4 for p in people2[: 4 * 5]) and people2[4 * 5 :] and all(p >= 4 for p in people2[4 * 5 :])
    first_steps, first_epochs = second.exposures["first"]
    second_steps, second_epochs = second.exposures["second"]
    assert first_epochs[-1] == 5 and second_epochs == [0, 1, 2] and second_steps[0] >= first_steps[-1] - 1


def test_eval_steps_reach_the_chosen_exposures(inputs):
    cfg, out, knowledge, tokenizer_dir = inputs
    rung = cfg.rungs()[0]
    kb, scenarios = rung_knowledge(knowledge, rung, cfg.first_people)
    corpus = build_corpus_for(cfg, rung, kb, scenarios, tokenizer_dir, out)
    steps = eval_steps(cfg, corpus)
    manifest = rundir.CapacityManifest("m", 1, 1, (("a", 2),), {"bios": corpus.exposures["bios"]})
    exposures = manifest.exposures_at("bios", np.array(steps))
    assert steps[0] == 0 and steps[-1] == corpus.total_steps
    for x in (1, 2.5):
        k = next(i for i, e in enumerate(exposures) if e >= x)
        assert manifest.exposures_at("bios", [steps[k] - 1])[0] < x  # the first update at which x is reached


def test_parameter_counts_match_the_architecture(inputs):
    cfg, out, _, tokenizer_dir = inputs
    from harness.tokenizers import load_tokenizer

    model = build_model(cfg, cfg.models[0], tokenizer_dir, out)
    vocab, d, layers = len(load_tokenizer(str(tokenizer_dir))), 32, 1
    # tied embedding V·d; per layer q, k, v, o (4d²) and SwiGLU with 4d hidden (3 · 4d²); no norm weights
    assert parameter_counts(model) == (vocab * d + 16 * layers * d * d, 16 * layers * d * d)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a whole recipe: 1.5-3 minutes on an idle 2-core machine
def test_quick_profile_from_nothing_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["capacity", "--profile", "quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cfg = load_capacity_config("quick")
    record = json.loads((out / "analysis" / "capacity.json").read_text())
    assert sorted(r["run"] for r in record["runs"]) == sorted(r.name for r in cfg.rungs())
    for run in record["runs"]:
        manifest = json.loads((out / "runs" / run["run"] / "manifest.json").read_text())
        info = rundir.CapacityManifest.from_manifest(manifest, out)
        assert manifest["status"] == "complete" and info.model == run["model"] and len(info.attributes) == 6
        for kb in run["knowledge_bases"]:
            assert kb["trajectory"]["exposures"][0] == 0 and kb["trajectory"]["bits"][0] == 0
            assert kb["exposures"] == pytest.approx(
                cfg.exposures if kb["scenario"] != "second" else cfg.overwrite.second_exposures, abs=1.0
            )
    by_run = {r["run"]: r for r in record["runs"]}
    # the larger model learns: stored bits grow with exposures, and it stores more than the smaller one
    big, small = by_run["d64-L2-N60"], by_run["d32-L1-N60"]
    bits = big["knowledge_bases"][0]["trajectory"]["bits"]
    assert bits[-1] > bits[len(bits) // 2] > 0 and big["bits"] > small["bits"]
    [first, second] = by_run["d64-L2-N20+N20"]["knowledge_bases"]
    assert (first["scenario"], second["scenario"]) == ("first", "second")
    assert first["overwrite"]["bits_at_switch"] > 0 and second["overwrite"] is None
    assert [m["model"] for m in record["models"]] == ["d32-L1", "d64-L2"] and record["fit"]["total"]["slope"] > 0
    assert (out / "report" / "report.html").read_text().count("<h2>Knowledge capacity</h2>") == 1
    assert sorted(p.name for p in (out / "analysis").glob("*.png")) == [
        "capacity_attributes.png",
        "capacity_bits.png",
        "capacity_memorization.png",
        "capacity_trajectories.png",
    ]

    # a second invocation reuses every finished rung
    manifests = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/manifest.json")}
    again = CliRunner().invoke(app, ["capacity", "--profile", "quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "steps of" not in again.output
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests
    other = CliRunner().invoke(app, ["capacity", "--profile", "quick", "--out", str(out), "--set", "exposures=30"])
    assert other.exit_code == 2 and "another configuration" in other.output
