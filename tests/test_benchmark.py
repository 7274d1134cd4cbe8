"""The accuracy benchmark: one budget for every model, results and curves read back from the runs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest

import experiments.benchmark as benchmark_module
from experiments.benchmark import (
    BUDGETS,
    QUICK_BUDGETS,
    format_table,
    main,
    read_curves,
    run_benchmark,
    train_config,
)
from experiments.train import NonFiniteLossError
from hrnn.models import build_model


def test_every_model_gets_the_same_budget_and_only_hamiltonian_cells_a_step_size(tmp_path):
    budget = BUDGETS["adding1000"]
    configs = {
        m: train_config("adding1000", budget, m, tmp_path, "disabled", 0) for m in ("oscillator", "lstm")
    }
    shared = (
        "task",
        "task_kwargs",
        "hidden_size",
        "lr",
        "lr_schedule",
        "batch_size",
        "steps",
        "clip_grad_norm",
    )
    for name in shared:
        assert getattr(configs["oscillator"], name) == getattr(configs["lstm"], name)
    assert configs["oscillator"].task_kwargs["seq_len"] == 1000
    assert configs["oscillator"].model_kwargs == {"dt": "auto", **budget.model_kwargs.get("oscillator", {})}
    assert configs["lstm"].model_kwargs == {}
    tuned = dataclasses.replace(
        budget, model_kwargs={"hamiltonian": {"dt": 0.05}, "oscillator": {"alpha": 0.0}}
    )
    assert train_config("a", tuned, "hamiltonian", tmp_path, "disabled", 0).model_kwargs == {"dt": 0.05}
    assert train_config("a", tuned, "oscillator", tmp_path, "disabled", 0).model_kwargs == {
        "dt": "auto",
        "alpha": 0.0,
    }
    assert train_config("a", tuned, "gru", tmp_path, "disabled", 0).model_kwargs == {}


def test_readout_budget_trains_only_a_standardised_head_on_the_final_state_of_every_model(tmp_path):
    budget = BUDGETS["adding1000_readout"]
    for model in ("hamiltonian", "lstm"):
        config = train_config("adding1000_readout", budget, model, tmp_path, "disabled", 0)
        assert (config.readout, config.standardize, config.freeze_layer) == ("state", True, True)
        assert (config.lr, config.steps, config.task_kwargs["seq_len"]) == (1e-2, 1000, 1000)
    hamiltonian = train_config("adding1000_readout", budget, "hamiltonian", tmp_path, "disabled", 0)
    assert hamiltonian.model_kwargs == {"dt": 0.1, "gain": 0.1}


@pytest.mark.parametrize(
    ("benchmarks", "models", "message"),
    [(["adding7"], ["lstm"], "known benchmarks"), (["adding1000"], ["transformer"], "known models")],
)
def test_unknown_benchmark_or_model_fails_with_the_known_names(tmp_path, benchmarks, models, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(benchmarks, models, tmp_path, budgets=QUICK_BUDGETS, wandb="disabled")


def test_read_curves_is_empty_without_a_wandb_run(tmp_path):
    assert read_curves(tmp_path) == []


def test_quick_adding_benchmark_records_metrics_parameters_and_curves(tmp_path, capsys):
    main(["--quick", "--tasks", "adding1000", "--models", "oscillator", "lstm", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    budget = QUICK_BUDGETS["adding1000"]
    assert results["budgets"]["adding1000"]["steps"] == budget.steps
    rows = results["results"]
    assert [r["model"] for r in rows] == ["oscillator", "lstm"]
    for row in rows:
        run = tmp_path / "runs" / f"adding1000-{row['model']}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert row["value"] == metrics["test_mse"]
        kwargs = {"dt": "auto", "seq_len": 20} if row["model"] == "oscillator" else {}
        model = build_model(row["model"], 2, budget.hidden_size, 1, **kwargs)
        assert row["parameters"] == sum(p.numel() for p in model.parameters())
    with (tmp_path / "curves.csv").open() as f:
        curves = list(csv.DictReader(f))
    for model in ("oscillator", "lstm"):
        steps = {
            key: [int(r["step"]) for r in curves if (r["model"], r["key"]) == (model, key)]
            for key in ("val/mse", "train/loss")
        }
        assert steps["val/mse"] == [2]  # eval_every = 2 of 3 steps
        assert steps["train/loss"] == [0, 1, 2]  # log_every = 1
    assert (tmp_path / "curves_adding1000.png").read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "oscillator" in table and "lstm" in table and "params" in table


def test_a_diverged_run_is_recorded_and_the_benchmark_goes_on(tmp_path, monkeypatch):
    real_train = benchmark_module.train

    def diverge_for_hamiltonian(config):
        if config.model == "hamiltonian":
            raise NonFiniteLossError(7, math.nan, math.inf, None)
        return real_train(config)

    monkeypatch.setattr(benchmark_module, "train", diverge_for_hamiltonian)
    rows = run_benchmark(
        ["adding1000"], ["hamiltonian", "lstm"], tmp_path, budgets=QUICK_BUDGETS, wandb="disabled"
    )
    assert [(r["model"], r["status"]) for r in rows] == [
        ("hamiltonian", "diverged at step 7"),
        ("lstm", "ok"),
    ]
    assert math.isnan(rows[0]["value"]) and 0.0 <= rows[1]["value"] < 10.0
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["status"] for r in saved] == ["diverged at step 7", "ok"]
    assert "diverged at step 7" in format_table(rows)
