"""The memory probe: its ridge fit, its state read-out, and what it finds on small adding problems."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from experiments.memory_probe import ProbeConfig, fit_ridge, main, parse_spec, probe
from hrnn.models import build_model


def test_parse_spec_reads_yaml_scalars():
    assert parse_spec("lstm") == ("lstm", {})
    assert parse_spec("hamiltonian:gain=0.1,dt=auto,scheme=verlet") == (
        "hamiltonian",
        {"gain": 0.1, "dt": "auto", "scheme": "verlet"},
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("transformer", r"unknown model 'transformer'"),
        ("hamiltonian:gain", r"expected key=value, got 'gain'"),
    ],
)
def test_parse_spec_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_ridge_recovers_an_exact_linear_map_and_ignores_constant_features():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(500, 6, generator=generator, dtype=torch.float64) * torch.tensor(
        [1, 10, 1e3, 1, 1, 1]
    )
    features[:, 5] = 7.0  # constant on the training set: scale 1, weight 0
    y = features[:, :5] @ torch.tensor([[1.0], [-0.2], [3e-3], [0.0], [0.5]], dtype=torch.float64) + 0.25
    mean, scale, weight = fit_ridge(features, y, ridge=1e-12)
    prediction = torch.cat([(features - mean) / scale, torch.ones(500, 1, dtype=torch.float64)], 1) @ weight
    torch.testing.assert_close(prediction, y, atol=1e-8, rtol=0)
    assert scale[5] == 1.0 and weight[5].abs().item() < 1e-12


def test_ridge_rejects_non_finite_states():
    with pytest.raises(ValueError, match="NaN/inf"):
        fit_ridge(torch.tensor([[1.0], [float("inf")]]), torch.ones(2, 1), ridge=1e-3)


def test_selected_state_concatenates_every_part_of_the_last_layer_in_chunks():
    torch.manual_seed(0)
    x = torch.randn(10, 7, 3)
    lstm = build_model("lstm", 3, 4, 1, num_blocks=0, num_layers=2, readout="state")
    _, (h_n, c_n) = lstm.rnn(x)
    torch.testing.assert_close(lstm.selected_features(x, chunk=3), torch.cat([h_n[-1], c_n[-1]], 1).detach())
    hamiltonian = build_model("hamiltonian", 3, 4, 1, num_blocks=0, readout="state")
    _, (p_n, q_n) = hamiltonian.rnn(x)
    torch.testing.assert_close(
        hamiltonian.selected_features(x, chunk=4), torch.cat([p_n[-1], q_n[-1]], 1).detach()
    )


def test_force_free_oscillator_momentum_is_the_exact_sum_of_input_impulses():
    # w = 0, alpha = 0: p' = p - h tanh(u_t), so p_T = -h sum_t tanh(W x_t + b): the accumulator the
    # probe finds in the untrained Hamiltonian cells.
    torch.manual_seed(1)
    model = build_model(
        "oscillator", 2, 5, 1, num_blocks=0, readout="state", alpha=0.0, dt=0.1, dtype=torch.float64
    )
    cell = model.rnn.cells[0]
    with torch.no_grad():
        cell.w.zero_()
        cell.bias_ih.normal_()
    x = torch.rand(3, 40, 2, dtype=torch.float64)
    p_T = model.selected_features(x)[:, :5]
    with torch.no_grad():
        expected = -cell.step_size() * torch.tanh(x @ cell.weight_ih.T + cell.bias_ih).sum(1)
    torch.testing.assert_close(p_T, expected, atol=1e-12, rtol=0)


def test_probe_finds_the_sum_in_a_low_frequency_hamiltonian_state_but_not_in_lstm():
    config = ProbeConfig(hidden_size=16, n_train=400, n_test=200, progress=False)
    hamiltonian = probe("static_hamiltonian:gain=0.1,dt=0.1,timescales=null", 100, config)
    lstm = probe("lstm", 100, config)
    assert hamiltonian.probe_mse < 0.05 * hamiltonian.baseline_mse
    assert lstm.probe_mse > 0.5 * lstm.baseline_mse
    assert hamiltonian.baseline_mse == lstm.baseline_mse == pytest.approx(1 / 6, abs=0.04)
    assert hamiltonian.phase == pytest.approx(100 * 0.1 * 0.01, rel=1e-4)
    assert lstm.phase is None
    assert lstm.parameters == 4 * 16 * (2 + 16 + 2)


def test_main_writes_results_and_plot(tmp_path, capsys):
    main(["--quick", "--models", "lstm", "oscillator:alpha=0", "--out", str(tmp_path), "--no-progress"])
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["spec"] for r in rows] == ["lstm", "oscillator:alpha=0"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"][1]["options"] == {"alpha": 0}
    assert (tmp_path / "probe.png").stat().st_size > 0
    assert "probe MSE" in capsys.readouterr().out


def test_main_names_a_bad_spec():
    with pytest.raises(SystemExit, match="unknown model 'lstmm'"):
        main(["--quick", "--models", "lstmm", "--no-progress"])
