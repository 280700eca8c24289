"""`injection capacity`: profiles and configs (the GPU ladders are designed to reach the published figures), the
dry run at a scale past the old 40,000-name cap, the streamed corpora (every person once per epoch, in a fresh order
and a fresh draw of the biography), the name and in-context probes, batches and evaluation steps, GPT-2-style
parameter counts, and the quick profile end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fictional_knowledge.bios import ATTRIBUTES, Bios
from harness import rundir
from harness.errors import UserError
from harness.tokenizers import load_tokenizer
from injection.cli import app
from injection.recipes.capacity import (
    build_corpus_for,
    build_model,
    build_tokenizer,
    context_probes,
    eval_steps,
    load_capacity_config,
    parameter_counts,
    plan,
    planned_parameters,
    profile_names,
    rung_batch,
    rung_people,
)

SMALL = {
    "name": "small",
    "models": [{"name": "g32-L1", "d_model": 32, "n_layers": 1, "n_heads": 2}],
    "people": [6],
    "exposures": 5,
    "eval_exposures": [1, 2.5],
    "bios": {"cities": 8, "universities": 8, "majors": 6, "employers": 8, "first_year": 1990, "last_year": 1990},
    "overwrite": {"models": ["g32-L1"], "people": 4, "second_people": 3, "second_exposures": 2},
    "corpus_passes": 3,
    "tokenizer_vocab": 300,
    "seq_len": 32,
    "global_batch": 2,
}


def _config(directory, **changes):
    data = {**SMALL, **changes}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cap.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_capacity_config(config=path)


def test_profiles_load_and_the_gpu_ladders_can_reach_the_published_figures():
    from injection.engine.config import resolve_deepspeed_config_path

    assert profile_names() == ["cpu", "gpu", "gpu100", "quick"]
    for name in profile_names():
        cfg = load_capacity_config(name)
        assert cfg.rungs() and resolve_deepspeed_config_path(cfg.deepspeed_config).is_file()
        assert cfg.global_batch % (cfg.micro_batch or cfg.global_batch) == 0
    for name, exposures, ratio in (("gpu", 1000, 2.0), ("gpu100", 100, 1.0)):
        cfg = load_capacity_config(name)
        assert cfg.exposures == exposures and cfg.precision == "bf16" and cfg.deepspeed_config != "cpu"
        assert all(m.architecture == "gpt2" for m in cfg.models) and cfg.bios.style == "multi"
        assert (cfg.peak_lr, cfg.weight_decay, cfg.warmup_steps, cfg.alpha_f) == (1e-3, 0.1, 1000, 0.1)
        rows = plan(cfg, generate=False)
        for model in cfg.models:
            total = planned_parameters(cfg, model)[0]
            offered = [r["bits_offered"] / total for r in rows if r["rung"].startswith(f"{model.name}-N")]
            # about 0.5x, 1x and 2x of what the model can hold at the published ratio: one rung with room to spare
            assert min(offered) <= 0.6 * ratio and max(offered) >= 1.9 * ratio, (name, model.name, offered)
        if name == "gpu":
            assert all(r["steps"] >= 50_000 for r in rows if r["exposures"] == 1000)
            assert len({r["parameters"] for r in rows}) == 3 and all(r["h100_hours"] > 0 for r in rows)
    for cpu_profile in ("quick", "cpu"):
        cfg = load_capacity_config(cpu_profile)
        assert cfg.precision == "fp32" and cfg.deepspeed_config == "cpu"
        assert len({planned_parameters(cfg, m)[0] for m in cfg.models}) == len(cfg.models) > 1
        assert len({r.people for r in cfg.rungs()}) > 1 and cfg.overwrite is not None


def test_gpu_dry_run_generates_every_person_past_the_old_name_cap(tmp_path, monkeypatch):
    """The gpu profile's dry run, cut to one small model and 25,000 people (the generator used to stop at 19,568):
    it generates all of them and prints FLOPs and H100-hours."""
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    model = "models=[{name: g32-L1, d_model: 32, n_layers: 1, n_heads: 2}]"
    result = CliRunner().invoke(
        app,
        ["capacity", "--profile", "gpu", "--dry-run", "--set", model, "--set", "people=[25000]"]
        + ["--set", "epochs=null", "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 0, result.output
    assert "generated 25,000 people" in result.output
    assert re.search(r"g32-L1-N25000 .* 1,000 .* 16 ", result.output)
    assert re.search(r"total ≈ \S+ training FLOPs ≈ \S+ H100-hours at 30% of 989 TFLOP/s", result.output)
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    "change, message",
    [
        ({"modles": []}, "unknown field 'modles'"),
        ({"bios": {"people": 5}}, "field 'bios.people' is set by the ladder"),
        (
            {"bios": {"paraphrases": 2}},
            "field 'bios.paraphrases' is set by the ladder: passes are set by corpus_passes",
        ),
        (
            {"overwrite": {"models": ["d99"], "people": 2, "second_people": 2, "second_exposures": 1}},
            "'overwrite.models' names 'd99'",
        ),
        ({"epochs": {"models": ["g32-L1"], "people": 4, "exposures": [5]}}, "'epochs.exposures' must list"),
        ({"eval_exposures": [7]}, "'eval_exposures' has 7, outside 0..exposures (5)"),
        ({"probe_kinds": ["comp"]}, "'probe_kinds' must list mem and/or sem"),
        ({"models": [{"name": "x", "d_model": 30, "n_layers": 1, "n_heads": 4}]}, "not a multiple of n_heads"),
        ({"models": [{"name": "x", "d_model": 30, "n_layers": 1, "n_heads": 2}]}, "rotary embedding needs an even"),
        ({"bios": {"cities": 1}}, "cities must be an integer >= 2"),
        ({"bios": {"style": "multi5"}}, "field 'bios.style': expected one of multi, simple"),
        ({"adam_betas": [0.9]}, "'adam_betas' must be two numbers"),
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
    bios = Bios(cfg.bios_spec(cfg.total_people))
    return cfg, out, bios, build_tokenizer(cfg, bios, out)


def _documents(corpus_path, instances: int, tokenizer_dir) -> tuple[list[str], np.ndarray]:
    """The training stream of a corpus as documents, and the token offset where each one ends."""
    from injection.data import BatchStream, open_corpus

    source = BatchStream(open_corpus(corpus_path), 0, 0, 1)
    stream = np.concatenate([source.batch(k)[0].ravel() for k in range(instances)])
    tokenizer = load_tokenizer(str(tokenizer_dir))
    ends = np.flatnonzero(stream == tokenizer.eos_token_id)
    docs, start, kept_ends = [], 0, []
    for end in ends:
        if end > start:  # EOS padding makes empty documents
            docs.append(tokenizer.decode(stream[start:end].tolist()))
            kept_ends.append(end + 1)
        start = end + 1
    return docs, np.array(kept_ends)


def test_every_person_once_per_epoch_in_a_fresh_order_and_draw(inputs):
    cfg, out, bios, tokenizer_dir = inputs
    [rung, overwrite_rung] = cfg.rungs()
    corpus = build_corpus_for(cfg, rung, bios, tokenizer_dir, out)
    docs, ends = _documents(corpus.path, corpus.instances, tokenizer_dir)
    people = [bios.person(i) for i in range(cfg.first_people)]
    knot_positions, knot_epochs = corpus.exposures["bios"]
    assert knot_epochs == [0, 1, 2, 3, 4, 5] and len(docs) == 6 * 5
    orders = []
    for e in range(1, 6):
        epoch = docs[(e - 1) * 6 : e * 6]
        draw = (e - 1) % 3  # three passes: draws 0, 1, 2, then the first pass again
        texts = {bios.biography(p, draw).text: p.index for p in people}
        assert sorted(texts[d] for d in epoch) == list(range(6)), e  # each person once, in this epoch's draw
        orders.append([texts[d] for d in epoch])
        # the epoch's last document ends where the manifest says epoch e ends (its pass's EOS padding after it)
        assert ends[e * 6 - 1] <= knot_positions[e] * cfg.seq_len
    assert orders[0] != orders[1] != orders[2] and orders[3] == orders[0]  # a fresh order per pass
    assert build_corpus_for(cfg, rung, bios, tokenizer_dir, out).exposures == corpus.exposures  # cached

    second = build_corpus_for(cfg, overwrite_rung, bios, tokenizer_dir, out)
    docs2, _ = _documents(second.path, second.instances, tokenizer_dir)
    firsts = {bios.biography(bios.person(i), d).text: i for i in range(4) for d in range(3)}
    seconds = {bios.biography(bios.person(i), d).text: i for i in range(6, 9) for d in range(2)}
    assert all(d in firsts for d in docs2[: 4 * 5]) and all(d in seconds for d in docs2[4 * 5 :])
    assert len(docs2) == 4 * 5 + 3 * 2
    first_pos, first_epochs = second.exposures["first"]
    second_pos, second_epochs = second.exposures["second"]
    assert first_epochs[-1] == 5 and second_epochs == [0, 1, 2] and second_pos[0] == first_pos[-1]


def test_simple_biographies_repeat_every_epoch(tmp_path):
    cfg = _config(tmp_path, bios={**SMALL["bios"], "style": "simple"}, overwrite=None)
    bios = Bios(cfg.bios_spec(cfg.total_people))
    tokenizer_dir = build_tokenizer(cfg, bios, tmp_path)
    corpus = build_corpus_for(cfg, cfg.rungs()[0], bios, tokenizer_dir, tmp_path)
    docs, _ = _documents(corpus.path, corpus.instances, tokenizer_dir)
    assert sorted(docs) == sorted(bios.biography(bios.person(i), 0).text for i in range(6) for _ in range(5))


def test_name_and_values_are_scored_inside_the_training_document(inputs):
    cfg, out, bios, tokenizer_dir = inputs
    rung = cfg.rungs()[1]  # the overwrite rung: two knowledge bases
    people, scenarios, sizes = rung_people(cfg, rung)
    assert people == [0, 1, 2, 3, 6, 7, 8] and sizes == {"first": 4, "second": 3}
    tokenizer = load_tokenizer(str(tokenizer_dir))
    eos = tokenizer.eos_token_id
    items = list(context_probes(bios, people, scenarios, tokenizer, eos))
    assert len(items) == len(people) * (1 + len(ATTRIBUTES) + 1)
    corpus = build_corpus_for(cfg, rung, bios, tokenizer_dir, out)
    stream = [eos, *np.fromfile(corpus.path / "part-00000.npy", dtype=np.uint16).tolist()]  # the first has none
    for item in items:
        person = bios.person(people[item.paragraph])
        bio = bios.biography(person, 0)
        target = tokenizer.decode(list(item.input_ids[item.target_start : item.target_end])).strip()
        if item.kind == "name":
            assert target == person.name and item.target_start == 1
        else:
            span = [*bio.value_spans, bio.gender_span][item.probe]
            assert target == bio.text[slice(*span)]
        assert item.input_ids[0] == eos and item.scenario == scenarios[item.paragraph]
        # the probe is the document's own prefix, as the corpus holds it after the previous document's EOS
        ids = list(item.input_ids)
        assert any(stream[i : i + len(ids)] == ids for i in range(len(stream) - len(ids) + 1) if stream[i] == eos)

    sampled = _config(out / "sampled", probe_people=2)
    people2, _, sizes2 = rung_people(sampled, sampled.rungs()[0])
    assert len(people2) == 2 and set(people2) <= set(range(6)) and sizes2 == {"bios": 6}


def test_batches_halve_to_reach_min_steps_and_eval_steps_reach_the_chosen_exposures(inputs):
    cfg, out, bios, tokenizer_dir = inputs
    corpus = build_corpus_for(cfg, cfg.rungs()[0], bios, tokenizer_dir, out)
    steps = eval_steps(cfg, corpus, 2)
    manifest = rundir.CapacityManifest("m", 1, 1, (("a", 2),), {"bios": corpus.exposures_in_steps(2)["bios"]})
    exposures = manifest.exposures_at("bios", np.array(steps))
    assert steps[0] == 0 and steps[-1] == corpus.steps(2)
    for x in (1, 2.5, 0.9 * 5):
        k = next(i for i, e in enumerate(exposures) if e >= x)
        assert manifest.exposures_at("bios", [steps[k] - 1])[0] < x  # the first update at which x is reached
    halving = _config(out / "h", global_batch=64, micro_batch=4, min_steps=100)
    assert rung_batch(halving, 100 * 64) == 64 and rung_batch(halving, 100 * 10) == 8 and rung_batch(halving, 10) == 4


def test_gpt2_parameter_counts(inputs):
    cfg, out, _, tokenizer_dir = inputs
    model = build_model(cfg, cfg.models[0], tokenizer_dir, out)
    vocab, d, layers = len(load_tokenizer(str(tokenizer_dir))), 32, 1
    # tied embedding V·d; per layer qkv 3d² + 3d, output d² + d, MLP 4d² + 4d and 4d² + d, two LayerNorms 4d; final 2d
    body = layers * (12 * d * d + 13 * d) + 2 * d
    assert parameter_counts(model) == (vocab * d + body, body)
    assert planned_parameters(cfg, cfg.models[0]) == (cfg.tokenizer_vocab * d + body, body)
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "gpt_neox" and config["tie_word_embeddings"] is True
    assert config["use_parallel_residual"] is False and config["hidden_act"] == "gelu_pytorch_tanh"
    assert json.loads((model / "checkpoint.json").read_text())["seq_len"] == cfg.seq_len


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
        assert info.name_space == 400 * 400 * 1000 and [n for n, _ in info.context][-1] == "gender"
        assert info.derived == {"employer_city": "employer"}
        for kb in run["knowledge_bases"]:
            assert kb["trajectory"]["exposures"][0] == 0
            assert kb["exposures"] == pytest.approx(
                cfg.exposures if kb["scenario"] != "second" else cfg.overwrite.second_exposures, abs=1.0
            )
            # R(F) = name term + value term, each made of the probes of every person
            assert kb["bits"] == pytest.approx(kb["name_bits"] + kb["value_bits"], rel=1e-6)
    by_run = {r["run"]: r for r in record["runs"]}
    # the larger model learns: its in-context value term rises with exposures, above the smaller model's
    big, small = by_run["g64-L2-N60"], by_run["g32-L1-N60"]
    values = big["knowledge_bases"][0]["trajectory"]["value_bits"]
    assert values[-1] > values[len(values) // 2] > values[0] and big["value_bits"] > small["value_bits"]
    [first, second] = by_run["g64-L2-N20+N20"]["knowledge_bases"]
    assert (first["scenario"], second["scenario"]) == ("first", "second")
    assert first["overwrite"] is not None and second["overwrite"] is None
    assert [m["model"] for m in record["models"]] == ["g32-L1", "g64-L2"]
    assert (out / "report" / "report.html").read_text().count("<h2>Knowledge capacity</h2>") == 1
    assert sorted(p.name for p in (out / "analysis").glob("*.png")) == [
        "capacity_attributes.png",
        "capacity_bits.png",
        "capacity_facts.png",
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


def test_corpus_writer_cuts_files_at_whole_instances(tmp_path):
    from injection.recipes.kit import CorpusWriter

    writer = CorpusWriter(tmp_path, seq_len=4, eos=0, vocab=100, file_tokens=8)
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    writer.add(docs[:2])
    writer.pad()
    assert writer.instances == 2  # 3 + 1 + 1 + 1 tokens, padded to 8
    writer.add(docs[2:])
    writer.pad()
    writer.close()
    stream = np.concatenate([np.fromfile(tmp_path / p, dtype=np.uint16) for p in writer.paths]).tolist()
    assert stream == [5, 6, 7, 0, 8, 0, 0, 0, 9, 10, 11, 12, 13, 0, 14, 15, 0, 0, 0, 0]
    assert writer.paths == ["part-00000.npy", "part-00001.npy", "part-00002.npy"] and writer.counts == [2, 2, 1]
