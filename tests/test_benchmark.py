"""The accuracy benchmark: one recipe for every model, seeds, results and curves read back from the runs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import yaml

import experiments.benchmark as benchmark_module
from experiments.benchmark import (
    BUDGETS,
    COMMON,
    COMPARISONS,
    ESCAPE,
    QUICK_BUDGETS,
    first_step_below,
    format_markdown,
    format_table,
    main,
    read_curves,
    run_benchmark,
    train_config,
)
from experiments.config import SCHEDULES, warmup_cosine_schedule
from experiments.train import NonFiniteLossError
from hrnn.models import available_models, build_model


def test_warmup_cosine_rises_linearly_over_five_percent_of_the_steps_then_decays_to_zero():
    total = 200  # 10 warm-up steps
    assert SCHEDULES["warmup_cosine"] is warmup_cosine_schedule
    warm = [warmup_cosine_schedule(s, total) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)], abs=1e-15)
    for step in (10, 57, 105, 163, 200):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 190))
        assert warmup_cosine_schedule(step, total) == pytest.approx(expected, abs=1e-15)
    assert warmup_cosine_schedule(105, total) == pytest.approx(0.5, abs=1e-12)
    assert warmup_cosine_schedule(200, total) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine_schedule(250, total) == pytest.approx(0.0, abs=1e-15)  # stays at 0 past the end
    assert warmup_cosine_schedule(0, 1) == 1.0  # a one-step run is not stuck at lr 0


@pytest.mark.parametrize("benchmark", COMPARISONS)
def test_every_comparison_gives_every_model_the_same_config_but_its_name(tmp_path, benchmark):
    budget = BUDGETS[benchmark]
    configs = {
        model: dataclasses.asdict(train_config(benchmark, budget, model, tmp_path, "disabled", 1))
        for model in available_models()
    }
    for model, config in configs.items():
        assert (config.pop("model"), config.pop("name")) == (model, f"{benchmark}-{model}-s1")
    reference = configs["lstm"]
    assert all(config == reference for config in configs.values())
    assert reference["model_kwargs"] == {}
    recipe = budget.recipe
    assert (reference["optimizer"], reference["lr"], reference["weight_decay"]) == (
        recipe.optimizer,
        recipe.lr,
        recipe.weight_decay,
    )
    assert (reference["lr_schedule"], reference["batch_size"], reference["hidden_size"]) == (
        recipe.lr_schedule,
        recipe.batch_size,
        recipe.hidden_size,
    )
    assert (reference["clip_grad_norm"], reference["steps"], reference["seed"]) == (
        recipe.clip_grad_norm,
        budget.steps,
        1,
    )


def test_only_the_readout_diagnostic_sets_per_model_options():
    assert [name for name in BUDGETS if name not in COMPARISONS] == ["adding1000_readout"]
    assert {name: BUDGETS[name].recipe for name in COMPARISONS} == {
        "fsdd": COMMON,
        "smnist_rows": COMMON,
        "psmnist": COMMON,
        "adding1000": ESCAPE,
        "adding5000": ESCAPE,
        "copy": COMMON,
    }
    assert (ESCAPE.lr_schedule, ESCAPE.clip_grad_norm, ESCAPE.batch_size, ESCAPE.seeds) == (
        "constant",
        None,
        50,
        (0, 1, 2),
    )
    assert BUDGETS["fsdd"].task_kwargs == {"split": "speaker"}
    assert (BUDGETS["adding1000"].steps, BUDGETS["adding1000"].task_kwargs["seq_len"]) == (10_000, 1000)


def test_readout_budget_trains_only_a_standardised_head_on_the_bare_layer_of_every_model(tmp_path):
    budget = BUDGETS["adding1000_readout"]
    for model in ("hamiltonian", "lstm"):
        config = train_config("adding1000_readout", budget, model, tmp_path, "disabled", 0)
        assert (config.readout, config.standardize, config.freeze_layer, config.num_blocks) == (
            "state",
            True,
            True,
            0,
        )
        assert (config.lr, config.steps, config.task_kwargs["seq_len"]) == (1e-2, 1000, 1000)
    hamiltonian = train_config("adding1000_readout", budget, "static_hamiltonian", tmp_path, "disabled", 0)
    assert hamiltonian.model_kwargs == {"gain": 0.1, "dt": 0.1, "timescales": None}
    assert train_config("adding1000_readout", budget, "lstm", tmp_path, "disabled", 0).model_kwargs == {}


@pytest.mark.parametrize(
    ("benchmarks", "models", "message"),
    [(["adding7"], ["lstm"], "known benchmarks"), (["adding1000"], ["transformer"], "known models")],
)
def test_unknown_benchmark_or_model_fails_with_the_known_names(tmp_path, benchmarks, models, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(benchmarks, models, tmp_path, budgets=QUICK_BUDGETS, wandb="disabled")


def test_read_curves_is_empty_without_a_wandb_run(tmp_path):
    assert read_curves(tmp_path) == []


def test_first_step_below_is_the_first_crossing_of_the_curve():
    curve = [(100, 0.17), (200, 0.1), (300, 0.09), (400, 0.12), (500, 0.0099)]
    assert first_step_below(curve, 0.1) == 300  # strictly below: 0.1 itself does not count
    assert first_step_below(curve, 0.01) == 500
    assert first_step_below(curve, 1e-3) is None
    assert first_step_below([], 0.1) is None


def test_mse_rows_carry_the_steps_where_the_validation_curve_first_crosses_each_level(tmp_path, monkeypatch):
    curve = [
        {"step": 0, "key": "train/loss", "value": 1e-4},  # the training loss is not the curve read
        {"step": 2, "key": "val/mse", "value": 0.05},
        {"step": 4, "key": "val/mse", "value": 0.2},
        {"step": 6, "key": "val/mse", "value": 0.008},
    ]
    monkeypatch.setattr(benchmark_module, "train", lambda config: {"test_mse": 0.007, "test_accuracy": 0.5})
    monkeypatch.setattr(benchmark_module, "read_run", lambda run_dir, last_key: (curve, None))
    rows = run_benchmark(
        ["adding1000", "fsdd"], ["gru"], tmp_path, budgets=QUICK_BUDGETS, wandb="disabled", seeds=[3]
    )
    assert (rows[0]["first_step_below_0.1"], rows[0]["first_step_below_0.01"]) == (2, 6)
    assert "first_step_below_0.1" not in rows[1]  # an accuracy benchmark has no MSE levels
    with (tmp_path / "results.csv").open() as f:
        saved = list(csv.DictReader(f))
    assert [(r["benchmark"], r["seed"], r["first_step_below_0.01"]) for r in saved] == [
        ("adding1000", "3", "6"),
        ("fsdd", "3", ""),
    ]


def test_quick_run_trains_every_seed_and_records_results_curves_and_plots(tmp_path, capsys):
    models = ("oscillator", "lstm")
    main(
        ["--quick", "--tasks", "adding1000", "--models", *models, "--seeds", "0", "1", "--out", str(tmp_path)]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    budget = QUICK_BUDGETS["adding1000"]
    assert results["budgets"]["adding1000"]["steps"] == budget.steps
    rows = results["results"]
    assert [(r["model"], r["seed"]) for r in rows] == [(m, s) for m in models for s in (0, 1)]
    for row in rows:
        run = tmp_path / "runs" / f"adding1000-{row['model']}-s{row['seed']}"
        assert row["value"] == json.loads((run / "metrics.json").read_text())["test_mse"]
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == row["seed"]
        model = build_model(row["model"], 2, budget.recipe.hidden_size, 1, readout="last")
        assert row["parameters"] == sum(p.numel() for p in model.parameters())
        assert row["first_step_below_0.1"] in (None, 2)  # the only evaluation is at step 2
    values = {(r["model"], r["seed"]): r["value"] for r in rows}
    assert all(values[model, 0] != values[model, 1] for model in models)  # the seed reaches the run
    with (tmp_path / "curves.csv").open() as f:
        curves = list(csv.DictReader(f))
    for model in models:
        for seed in ("0", "1"):
            steps = {
                key: [
                    int(r["step"]) for r in curves if (r["model"], r["seed"], r["key"]) == (model, seed, key)
                ]
                for key in ("val/mse", "train/loss")
            }
            assert steps == {"val/mse": [2], "train/loss": [0, 1, 2]}  # eval_every 2, log_every 1
    assert (tmp_path / "curves_adding1000.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "results.md").read_text().startswith("| benchmark | model | params |")
    table = capsys.readouterr().out.splitlines()
    lines = [line for line in table if line.startswith("adding1000 ")]
    assert [line.split()[1] for line in lines] == list(models)  # one line per model, both seeds
    assert all("3 of 10000" in line and " 0 1 " in line for line in lines)


def _row(model: str, seed: int, value: float, status: str = "ok", **extra) -> dict:
    return {
        "benchmark": "adding1000",
        "model": model,
        "seed": seed,
        "parameters": 100,
        "metric": "test_mse",
        "value": value,
        "status": status,
        "wall_time_s": 10.0 * (seed + 1),
        "steps": BUDGETS["adding1000"].steps,
        **extra,
    }


def test_tables_show_one_row_per_model_with_every_seed_and_the_mean():
    rows = [
        _row("lem", 1, 0.004, **{"first_step_below_0.1": 900, "first_step_below_0.01": 3000}),
        _row("lem", 0, 0.002, **{"first_step_below_0.1": 1200, "first_step_below_0.01": None}),
        _row("gru", 0, math.nan, "diverged at step 7"),
    ]
    table = format_table(rows).splitlines()
    assert len(table) == 4  # header, rule, two models
    lem = table[2].split()
    assert lem[:4] == ["adding1000", "lem", "100", "10000"]
    assert lem[5:10] == ["0", "1", "0.002", "0.004", "0.003"]  # seeds in order, values, mean
    assert lem[10:] == ["15", "1200", "900", "-", "3000", "ok"]  # mean wall s, crossings per seed
    gru = table[3].split()
    assert (gru[1], gru[7]) == ("gru", "nan") and table[3].endswith("seed 0 diverged at step 7")
    markdown = format_markdown(rows).splitlines()
    assert (
        markdown[2]
        == "| adding1000 | lem | 100 | 10000 | test_mse | 0 1 | 0.002 0.004 | 0.003 | 15 | 1200 900 | - 3000 | ok |"
    )
    shortened = format_markdown([{**rows[0], "steps": 300}]).splitlines()[2]
    assert "| 300 of 10000 |" in shortened


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
    assert [(r["model"], r["seed"], r["status"]) for r in rows] == [
        ("hamiltonian", 0, "diverged at step 7"),
        ("lstm", 0, "ok"),
    ]
    assert math.isnan(rows[0]["value"]) and 0.0 <= rows[1]["value"] < 10.0
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["status"] for r in saved] == ["diverged at step 7", "ok"]
    assert "seed 0 diverged at step 7" in format_table(rows)


def test_model_kwargs_reach_the_named_models_runs_and_only_theirs(tmp_path):
    main(
        [
            "--quick", "--tasks", "smnist_rows", "--models", "hamiltonian", "lstm", "--out", str(tmp_path),
            "--model-kwargs", '{"hamiltonian": {"emit": "p"}}',
        ]
    )  # fmt: skip
    runs = tmp_path / "runs"
    config = yaml.safe_load((runs / "smnist_rows-hamiltonian-s0" / "config.yaml").read_text())
    assert config["model_kwargs"] == {"emit": "p"}
    assert yaml.safe_load((runs / "smnist_rows-lstm-s0" / "config.yaml").read_text())["model_kwargs"] == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{emit", "not JSON"),
        ('{"hamiltonian": 3}', "expected"),
        ('{"nope": {}}', "unknown models ['nope']"),
    ],
)
def test_bad_model_kwargs_fail_on_the_command_line_naming_the_problem(text, message, capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--model-kwargs", text])
    assert message in capsys.readouterr().err


def test_curves_come_from_the_wandb_run_the_checkpoint_names_when_a_folder_holds_several(
    tmp_path, monkeypatch
):
    from experiments.checkpoint import save_checkpoint

    for name in ("offline-run-20260101_000000-older", "offline-run-20260101_000100-newer"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    state = {
        "model": {},
        "optimizer": {},
        "scheduler": {},
        "step": 1,
        "config": {},
        "rng": [],
        "hrnn_version": "0",
    }
    save_checkpoint(tmp_path / "checkpoint.pt", {**state, "wandb_run_id": "older"})
    read = []
    monkeypatch.setattr(benchmark_module, "wait_for_offline_run", lambda path, key: read.append(path.name))
    benchmark_module._offline_run(tmp_path, "final/steps")
    save_checkpoint(tmp_path / "checkpoint.pt", {**state, "wandb_run_id": None})
    benchmark_module._offline_run(tmp_path, "final/steps")
    assert read == ["offline-run-20260101_000000-older", "offline-run-20260101_000100-newer"]


def test_a_wandb_file_that_comes_too_late_costs_the_curves_not_the_result(tmp_path, monkeypatch):
    def late(run_dir, last_key="final/steps"):
        raise TimeoutError("W&B did not write 'final/steps' within 60 s")

    monkeypatch.setattr(benchmark_module, "read_run", late)
    main(["--quick", "--tasks", "adding1000", "--models", "lstm", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert row["status"] == "ok" and math.isfinite(row["value"]) and row["parameters"] is None
