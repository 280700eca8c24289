"""Knowledge entropy: the engine's measure against a literal transcription of its definition (Kim et al.'s
analysis/entropy.py, kaistAI/Knowledge-Entropy), and the measure taken during a run."""

import json
import math

import numpy as np
import pytest
import torch

from analysis import FitOptions, analyse_run, load_run
from analysis.plots import knowledge_entropy_figure, token_figure
from harness.rundir import read_table
from injection.engine.entropy import knowledge_entropy, layer_entropies, measurement_steps
from injection.engine.loop import run_training
from tests.helpers.engine import VOCAB, synthetic_config, synthetic_inputs, tiny_model, write_tiny_checkpoint


def literal_knowledge_entropy(model, rows: np.ndarray, coefficients, batch_size: int = 2) -> list[float]:
    """The definition followed line by line: the authors' modified MLP returns `act(gate(x)) * up(x)` of every
    layer (`coefficients(mlp, x)` recomputes it from the MLP's input); their loop adds each layer's
    |activation| summed over positions and divided by the sequence length, divides by the number of
    sequences, normalises each layer to sum to one and takes −Σ p·log(p + 1e-9)."""
    mlps = [layer.mlp for layer in (model.model.layers if hasattr(model, "model") else model.gpt_neox.layers)]
    captured: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, args, out: captured.append(coefficients(m, args[0]))) for m in mlps]
    mlp_dimension = model.config.intermediate_size
    avg_act_abs = torch.zeros((len(mlps), mlp_dimension), dtype=torch.float64)
    batch_num = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            captured.clear()
            model(input_ids=torch.tensor(rows[start : start + batch_size]))
            batch_num += len(rows[start : start + batch_size])
            for layer_idx, activation in enumerate(captured):
                reshaped_activation_abs = torch.abs(activation.double()).view(-1, mlp_dimension)
                summed_activation = torch.sum(reshaped_activation_abs, dim=0)
                summed_activation /= activation.shape[1]
                avg_act_abs[layer_idx] += summed_activation
    for h in handles:
        h.remove()
    avg_act_abs /= batch_num
    prob = avg_act_abs / torch.sum(avg_act_abs, dim=-1, keepdim=True)
    return (-torch.sum(prob * torch.log(prob + 1e-9), dim=-1)).tolist()


def _olmo_coefficients(mlp, x):
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def _neox_coefficients(mlp, x):
    return mlp.act(mlp.dense_h_to_4h(x))


def _neox():
    import transformers

    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.25,
    )
    torch.manual_seed(2)
    return transformers.GPTNeoXForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["olmo", "gpt-neox"])
def test_the_measure_equals_the_definition_on_the_same_activations(family):
    torch.set_num_threads(1)
    model, coefficients = (
        (tiny_model(seed=5), _olmo_coefficients) if family == "olmo" else (_neox(), _neox_coefficients)
    )
    rows = np.random.default_rng(0).integers(2, VOCAB, size=(5, 24))
    ours = knowledge_entropy(model, rows, micro_rows=3)
    theirs = literal_knowledge_entropy(model, rows, coefficients)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert abs(ours.sum() - sum(theirs)) < 1e-6
    # between a single memory carrying everything (0) and all of them carrying the same (log width)
    assert ((ours > 0) & (ours < math.log(model.config.intermediate_size))).all()


def test_layer_entropy_of_known_distributions():
    uniform = torch.ones((1, 64), dtype=torch.float64)
    assert float(layer_entropies(uniform)[0]) == pytest.approx(math.log(64), abs=1e-6)
    assert float(layer_entropies(torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64))[0]) == pytest.approx(0, abs=1e-6)
    # scale does not matter: only the shares of the memories do
    c = torch.rand((2, 16), dtype=torch.float64)
    torch.testing.assert_close(layer_entropies(c), layer_entropies(7 * c))


def test_measurement_steps():
    assert measurement_steps(0, 10) == frozenset()
    assert measurement_steps(4, 10) == {0, 4, 8, 10}


def test_a_run_logs_knowledge_entropy_at_its_interval(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck")
    cfg = synthetic_config(
        ck,
        total_steps=4,  # the synthetic inputs inject at step 3
        micro_batch=2,
        output_dir=tmp_path / "run",
        knowledge_entropy={"interval": 2, "rows": 3},
        probe_token_stats=True,
    )
    inputs = synthetic_inputs(ck)
    run_dir = run_training(cfg, inputs, progress=False)

    table = read_table(run_dir / "knowledge_entropy.parquet")
    assert sorted(set(table.step)) == [0, 2, 4] and sorted(set(table.layer)) == [0, 1]
    sample = inputs.stream.batch(0)[0][:3]  # the first rows of the first batch, as the original run saw them
    step0 = table[table.step == 0].sort_values("layer").entropy.to_numpy()
    np.testing.assert_allclose(step0, knowledge_entropy(tiny_model(seed=0), sample), rtol=0, atol=1e-6)
    assert (table[table.step == 4].sort_values("layer").entropy.to_numpy() != step0).all()  # training moved it
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["knowledge_entropy"]["rows"] == 3 and manifest["knowledge_entropy"]["tokens"] == 3 * 32
    assert manifest["knowledge_entropy"]["layers"] == 2

    probes = read_table(run_dir / "probes.parquet")  # the same run logs the token columns
    assert {"surprisal_mean", "surprisal_max", "entropy_mean", "rank_mean", "rank_max"} <= set(probes.columns)
    np.testing.assert_allclose(probes.surprisal_mean, -probes.logprob, atol=1e-5)

    # the analysis reads both, draws them, and records knowledge entropy with the run
    analysis = analyse_run(load_run(run_dir), FitOptions(window=2))
    h = analysis.run.knowledge_entropy
    assert h.steps.tolist() == [0, 2, 4] and h.layers.shape == (3, 2)
    assert h.total[0] == pytest.approx(step0.sum())
    assert set(analysis.run.token_stats) == {"surprisal_mean", "surprisal_max", "entropy_mean", "rank_mean", "rank_max"}
    assert analysis.run_record()["knowledge_entropy"]["first"] == pytest.approx(step0.sum())
    assert token_figure(analysis) is not None and knowledge_entropy_figure(analysis) is not None
