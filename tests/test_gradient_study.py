"""The gradient study's measurements against a linear recurrence whose gradients are known exactly."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import Tensor, nn

from experiments.gradient_study import (
    StudyConfig,
    gradient_profile,
    main,
    min_ratio,
    model_kwargs,
    plot_curves,
    sensitivity_profile,
)
from hrnn.models import SequenceModel, build_model
from hrnn.wandb_logger import wait_for_offline_run


class LinearRecurrence(nn.Module):
    """h_t = a h_{t-1} + x_t (input_size = hidden_size = n), with torch.nn.RNN's calling convention."""

    def __init__(self, n: int, a: float) -> None:
        super().__init__()
        self.input_size = self.hidden_size = n
        self.batch_first = True
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = x.new_zeros(x.shape[0], x.shape[2]) if hx is None else hx[0]
        outputs = []
        for t in range(x.shape[1]):
            h = self.a * h + x[:, t]
            outputs.append(h)
        return torch.stack(outputs, dim=1), h.unsqueeze(0)


def linear_model(n: int, a: float, head_weight: Tensor) -> SequenceModel:
    model = SequenceModel(LinearRecurrence(n, a), 1, readout="last").double()
    with torch.no_grad():
        model.head.weight.copy_(head_weight)
        model.head.bias.zero_()
    return model


@pytest.mark.parametrize("a", [0.7, -0.9, 1.05])
def test_gradient_profile_of_linear_recurrence_is_geometric(a):
    # L = sum_b w . h_T[b]: dL/dh_T = w in every batch row and dL/dh_t = a^(T - t) dL/dh_T,
    # so ||dL/dh_t|| = |a|^(T - t) sqrt(batch) ||w||.
    batch, n, seq_len = 3, 4, 25
    w = torch.arange(1.0, n + 1, dtype=torch.float64).unsqueeze(0)
    model = linear_model(n, a, w)
    x = torch.randn(batch, seq_len, n, dtype=torch.float64)
    profile = gradient_profile(model, x, torch.zeros(batch, 1), lambda out, y: out.sum())
    t = torch.arange(seq_len + 1, dtype=torch.float64)
    expected = abs(a) ** (seq_len - t) * batch**0.5 * w.norm()
    torch.testing.assert_close(profile.norms, expected, rtol=1e-12, atol=0)
    expected_min = min(1.0, abs(a) ** seq_len)
    assert profile.min_ratio == pytest.approx(expected_min, rel=1e-12)
    assert profile.argmin_t == (0 if abs(a) < 1 else seq_len)


def test_gradient_norms_far_below_the_square_root_of_the_smallest_float_are_measured():
    # ||dL/dh_0|| = 0.1^200 sqrt(batch) ||w||: its square (1e-400) underflows, the norm does not.
    batch, n, seq_len, a = 3, 4, 200, 0.1
    w = torch.arange(1.0, n + 1, dtype=torch.float64).unsqueeze(0)
    model = linear_model(n, a, w)
    x = torch.randn(batch, seq_len, n, dtype=torch.float64)
    profile = gradient_profile(model, x, torch.zeros(batch, 1), lambda out, y: out.sum())
    t = torch.arange(seq_len + 1, dtype=torch.float64)
    expected = a ** (seq_len - t) * batch**0.5 * w.norm()
    assert expected[0] < 1e-199
    torch.testing.assert_close(profile.norms, expected, rtol=1e-10, atol=0)


def test_gradient_profile_with_mse_loss_matches_closed_form():
    # L = mean_b (w . h_T[b] - y_b)^2, h_T[b] = sum_s a^(T - s) x_s[b]:
    # dL/dh_t[b] = a^(T - t) (2 / batch) (w . h_T[b] - y_b) w.
    batch, n, seq_len, a = 5, 2, 12, 0.8
    w = torch.tensor([[0.5, -1.5]], dtype=torch.float64)
    model = linear_model(n, a, w)
    x = torch.randn(batch, seq_len, n, dtype=torch.float64)
    y = torch.randn(batch, 1, dtype=torch.float64)
    powers = a ** torch.arange(seq_len - 1, -1, -1, dtype=torch.float64)
    h_last = torch.einsum("s,bsn->bn", powers, x)
    residual = h_last @ w.T - y
    grad_last = (2.0 / batch) * residual * w
    t = torch.arange(seq_len + 1, dtype=torch.float64)
    expected = a ** (seq_len - t) * grad_last.norm()
    profile = gradient_profile(model, x, y)
    torch.testing.assert_close(profile.norms, expected, rtol=1e-10, atol=0)


def test_gradient_profile_leaves_the_model_untouched():
    model = build_model("lstm", 2, 4, 1, num_blocks=0, readout="last")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_profile(model, torch.randn(2, 6, 2), torch.randn(2, 1))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_min_ratio_normalises_by_the_last_step():
    ratio, t = min_ratio(torch.tensor([4.0, 0.5, 2.0, 8.0]))
    assert ratio == pytest.approx(0.5 / 8.0)
    assert t == 1


@pytest.mark.parametrize(
    ("norms", "message"),
    [(torch.ones(2, 3), "shape"), (torch.ones(1), "shape"), (torch.tensor([1.0, 0.0]), "last-step")],
)
def test_min_ratio_rejects_bad_curves(norms, message):
    with pytest.raises(ValueError, match=message):
        min_ratio(norms)


def test_sensitivity_of_linear_recurrence_is_a_power_of_a():
    # dy_T/dy_t = a^(T - t) I, whose 2-norm is |a|^(T - t); the state is no (p, q) pair.
    seq_len, a = 15, -0.85
    model = linear_model(3, a, torch.ones(1, 3, dtype=torch.float64))
    profile = sensitivity_profile(model, torch.randn(seq_len, 3, dtype=torch.float64))
    t = torch.arange(seq_len + 1, dtype=torch.float64)
    torch.testing.assert_close(profile.norms, abs(a) ** (seq_len - t), rtol=1e-12, atol=0)
    assert profile.min_norm == pytest.approx(abs(a) ** seq_len, rel=1e-12)
    assert profile.symplecticity_error is None and profile.max_symplecticity_error is None


@pytest.mark.parametrize("name", ["hamiltonian", "static_hamiltonian", "oscillator"])
def test_sensitivity_of_hamiltonian_cells_is_symplectic_and_never_below_one(name):
    torch.manual_seed(0)
    model = build_model(name, 2, 4, 1, num_blocks=0, readout="last", seq_len=40, **model_kwargs(name))
    profile = sensitivity_profile(model, torch.rand(40, 2))
    assert profile.max_symplecticity_error < 1e-10
    assert profile.min_norm >= 1.0 - 1e-10


def test_only_hamiltonian_cells_choose_dt_from_the_sequence_length():
    assert model_kwargs("oscillator") == {"dt": "auto"}
    assert model_kwargs("static_hamiltonian") == {"dt": "auto", "timescales": None, "damping": None}
    assert model_kwargs("lstm") == model_kwargs("antisymmetric") == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ("lstm", "transformer")}, "unknown model 'transformer'; known:"),
        ({"seq_lens": (1,)}, "sequence length"),
        ({"train_steps": -1}, "train_steps"),
        ({"wandb": "cloud"}, "W&B mode"),
    ],
)
def test_study_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**kwargs)


def test_plot_curves_writes_one_panel_per_phase(tmp_path):
    curves = {(m, p): torch.rand(11) + 0.1 for m in ("a", "b") for p in ("init", "trained")}
    plot_curves(curves, 10, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_study_writes_curves_summary_and_plots(tmp_path, capsys):
    seq_len = 12
    flags = ["--quick", "--models", "hamiltonian", "lstm", "--seq-lens", str(seq_len), "--wandb", "disabled"]
    main([*flags, "--out", str(tmp_path), "--no-progress"])
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert [(r["model"], r["phase"]) for r in summary] == [
        ("hamiltonian", "init"),
        ("hamiltonian", "trained"),
        ("lstm", "init"),
        ("lstm", "trained"),
    ]
    with (tmp_path / "curves.csv").open() as f:
        curves = list(csv.DictReader(f))
    assert len(curves) == 4 * (seq_len + 1)
    for row in summary:
        norms = torch.tensor(
            [
                float(c["grad_norm"])
                for c in curves
                if (c["model"], c["phase"]) == (row["model"], row["phase"])
            ],
            dtype=torch.float64,
        )
        assert row["min_ratio"] == pytest.approx(float(norms.min() / norms[-1]), rel=1e-9)
    trained = [r for r in summary if r["phase"] == "trained"]
    assert all(0.0 <= r["test_mse"] < 10.0 for r in trained)
    hamiltonian_init = summary[0]
    assert (
        hamiltonian_init["symplecticity_error_max"] < 1e-10
        and hamiltonian_init["sensitivity_min"] >= 1 - 1e-10
    )
    with (tmp_path / "sensitivity.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * (seq_len + 1)
    assert (tmp_path / f"gradient_T{seq_len}.png").stat().st_size > 1000
    assert "min ratio" in capsys.readouterr().out


def test_study_logs_the_same_numbers_to_an_offline_wandb_run(tmp_path):
    seq_len, steps = 10, 2
    flags = ["--quick", "--models", "oscillator", "--seq-lens", str(seq_len), "--train-steps", str(steps)]
    main([*flags, "--wandb", "offline", "--out", str(tmp_path), "--no-progress"])
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    (run_dir,) = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run = wait_for_offline_run(run_dir, "trained/min_ratio")
    assert (run.config["model"], run.config["seq_len"]) == ("oscillator", seq_len)
    for row in summary:
        for key in ("min_ratio", "argmin_t", "grad_norm_T"):
            assert run.summary[f"{row['phase']}/{key}"] == pytest.approx(row[key], rel=1e-12)
    logged_steps = [r["_step"] for r in run.history if "hidden_grad/hT" in r]
    assert logged_steps == [0, steps]
