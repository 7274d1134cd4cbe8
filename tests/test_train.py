"""The training script: config precedence, step-indexed batches, W&B logging, exact resume, NaN stop."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import wandb
from torch.utils.data import default_collate

import experiments.train as train_module
import hrnn
from experiments.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from experiments.config import TrainConfig, build_config, config_yaml, load_yaml, parse_args
from experiments.data import StepBatchSampler
from experiments.evaluation import OBJECTIVES, evaluate
from experiments.train import ConfigError, main, train
from hrnn.models import available_models, build_model
from hrnn.wandb_logger import wait_for_offline_run
from tasks import build_task
from tasks.registry import available_tasks

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"


def tiny(tmp_path: Path, **overrides: object) -> TrainConfig:
    """A run of a few seconds: adding problem with T = 12, a 6-unit Hamiltonian cell."""
    fields = {
        "task_kwargs": {"seq_len": 12, "n_train": 96, "n_val": 16, "n_test": 32},
        "hidden_size": 6,
        "batch_size": 16,
        "steps": 10,
        "lr": 1e-2,
        "eval_every": 5,
        "grad_log_every": 5,
        "checkpoint_every": 4,
        "out_dir": str(tmp_path),
        "name": "run",
        "wandb": "disabled",
        "progress": False,
        **overrides,
    }
    return build_config(fields)


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The saved model's tensors (without the cells' saved options)."""
    return {k: v for k, v in load_checkpoint(run_dir)["model"].items() if isinstance(v, torch.Tensor)}


def tiny_argv(tmp_path: Path, name: str, *flags: str) -> list[str]:
    """Command-line flags of :func:`tiny`'s run, then ``flags``."""
    return [
        *("--out-dir", str(tmp_path), "--name", name, "--wandb", "disabled", "--no-progress"),
        *("--task-kwargs", "seq_len=12", "n_train=96", "n_val=16", "n_test=32"),
        *("--hidden-size", "6", "--batch-size", "16", "--steps", "3", "--eval-every", "0"),
        *("--grad-log-every", "0"),
        *flags,
    ]


# ----------------------------------------------------------------------------- configuration


def test_default_config_file_is_generated_from_the_builtin_default() -> None:
    text = (CONFIGS / "adding_hamiltonian.yaml").read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert body == config_yaml(TrainConfig())  # regenerate with `python -m experiments.config`
    assert build_config(config_file=CONFIGS / "adding_hamiltonian.yaml") == TrainConfig()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_names_a_known_task_and_model(path: Path) -> None:
    config = build_config(config_file=path)
    assert config.task in available_tasks()
    assert config.model in available_models()
    assert path.stem == f"{config.task.split('_')[0]}_{config.model}"


def test_flags_override_the_yaml_file_and_dict_flags_update_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: lstm\nlr: 1e-3\nsteps: 7\ntask_kwargs: {seq_len: 30, n_train: 64}\n")
    args = parse_args(
        ["--config", str(path), "--lr", "0.05", "--task-kwargs", "seq_len=40", "--clip-grad-norm", "none"]
    )
    config = build_config(args.overrides, config_file=args.config)
    assert (config.model, config.lr, config.steps) == ("lstm", 0.05, 7)
    assert config.task_kwargs == {"seq_len": 40, "n_train": 64}
    assert config.clip_grad_norm is None
    assert config.hidden_size == TrainConfig().hidden_size


def test_task_options_default_to_the_chosen_tasks_own_unless_set() -> None:
    assert build_config().task_kwargs == {"seq_len": 50}  # the built-in default: adding at T = 50
    assert build_config({"task": "copy"}).task_kwargs == {}
    assert build_config({"task": "copy", "task_kwargs": {"delay": 5}}).task_kwargs == {"delay": 5}
    assert build_config({"task_kwargs": {"n_train": 500}}).task_kwargs == {"seq_len": 50, "n_train": 500}


def test_unknown_yaml_key_fails_listing_the_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(
        ValueError, match=r"typo\.yaml: unknown config key\(s\) \['learning_rate'\]; known keys: .*'lr'"
    ):
        load_yaml(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "adagrad"}, r"'optimizer': unknown value 'adagrad'; expected one of \['adam'"),
        ({"lr": -1.0}, r"'lr' must be > 0"),
        ({"steps": 0}, r"'steps' must be >= 1"),
        ({"hidden_size": "big"}, r"'hidden_size' must be a int, got str 'big'"),
        ({"wandb": "sometimes"}, r"'wandb': unknown value 'sometimes'"),
        (
            {"readout": "first"},
            r"'readout': unknown value 'first'; expected one of \['mean', 'last', 'state', 'sequence'\]",
        ),
    ],
)
def test_invalid_config_values_are_rejected_by_name(overrides: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build_config(overrides)


# ----------------------------------------------------------------------------- batches and checkpoints


def test_step_batches_cover_each_epoch_once_and_ranks_split_the_global_batch() -> None:
    n, batch, steps = 50, 8, 13  # 6 batches per epoch, 2 samples dropped per epoch
    one = list(StepBatchSampler(n, batch, seed=3, start=0, stop=steps))
    assert len(one) == steps and all(len(b) == batch for b in one)
    epoch0 = np.concatenate(one[:6])
    assert len(set(epoch0.tolist())) == 48
    assert one[6] != one[0]  # a new permutation for the next epoch
    ranks = [list(StepBatchSampler(n, batch, 3, 0, steps, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    assert list(StepBatchSampler(n, batch, 3, start=9, stop=steps)) == one[9:]


def test_batch_size_must_split_evenly_over_processes() -> None:
    with pytest.raises(ValueError, match="batch_size 9 is not divisible by the 2 processes"):
        StepBatchSampler(50, 9, 0, 0, 1, rank=0, world_size=2)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"step": 1})

    def full_disk(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", full_disk)  # the temporary file is written, then the disk fills
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


# ----------------------------------------------------------------------------- training runs


def test_offline_run_logs_loss_per_parameter_gradient_norms_and_hidden_gradient_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # no flag, no variable: offline
    config = tiny(tmp_path, wandb=None, steps=6, grad_log_every=3)
    metrics = train(config)

    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert 0 < metrics["test_mse"] == metrics["test_loss"] and metrics["steps"] == 6
    assert build_config(load_yaml(run_dir / "config.yaml")) == config
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    run = wait_for_offline_run(wandb_dir, "final/test_mse")

    # the W&B config holds every hyperparameter, with its value, and the package version
    assert {key: run.config[key] for key in dataclasses.asdict(config)} == dataclasses.asdict(config)
    assert run.config["hrnn_version"] == hrnn.__version__ and run.config["world_size"] == 1
    rows = {row["_step"]: row for row in run.history}
    assert [s for s, row in sorted(rows.items()) if "train/loss" in row] == list(range(6))
    names = [name for name, _ in build_model("hamiltonian", 2, 6, 1).named_parameters()]
    for row in (rows[s] for s in range(6)):
        assert {"train/loss", "train/mse", "train/lr", "grad_norm/global"} <= set(row)
        assert {f"grad_norm/{name}" for name in names} <= set(row)
        assert np.isfinite(row["train/loss"]) and row["grad_norm/global"] > 0
    for step in (3, 6):
        table = json.loads((wandb_dir / "files" / rows[step]["hidden_grad/curve_table/path"]).read_text())
        curve = [norm for _, norm in table["data"]]
        assert len(curve) == 12 + 1 and all(v > 0 for v in curve)
        assert rows[step]["hidden_grad/ratio"] == pytest.approx(curve[0] / curve[-1])
    assert run.summary["hidden_grad/h0"] == pytest.approx(curve[0])
    assert rows[5]["val/mse"] > 0 and run.summary["final/test_mse"] == pytest.approx(metrics["test_mse"])


class Crash(RuntimeError):
    """Stands for the process dying right after a checkpoint."""


def test_run_resumed_after_a_crash_ends_with_the_parameters_of_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dropout between two layers draws from the RNG, so the RNG state must be restored too
    overrides = {"num_layers": 2, "model_kwargs": {"dropout": 0.25}, "steps": 10, "checkpoint_every": 4}
    train(tiny(tmp_path / "whole", **overrides))

    def save_then_crash_at_step_8(path: Path, state: dict) -> Path:
        written = save_checkpoint(path, state)
        if state["step"] == 8:
            raise Crash
        return written

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash_at_step_8)
    with pytest.raises(Crash):
        train(tiny(tmp_path / "split", **overrides))
    monkeypatch.undo()
    stopped = load_checkpoint(tmp_path / "split" / "run")
    assert stopped["step"] == 8 and stopped["hrnn_version"] == hrnn.__version__
    assert stopped["config"] == dataclasses.asdict(tiny(tmp_path / "split", **overrides))
    main(["--resume", str(tmp_path / "split" / "run")])  # the saved config, from the run folder

    whole, split = parameters(tmp_path / "whole" / "run"), parameters(tmp_path / "split" / "run")
    assert load_checkpoint(tmp_path / "split" / "run")["step"] == 10
    assert not torch.equal(split["head.weight"], stopped["model"]["head.weight"])  # it did train on
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-6)


def test_evaluation_and_gradient_probes_leave_the_training_trajectory_unchanged(tmp_path: Path) -> None:
    # dropout draws from the global RNG: any draw by evaluation would change the later masks
    overrides = {"num_layers": 2, "model_kwargs": {"dropout": 0.25}, "steps": 6, "checkpoint_every": 0}
    train(tiny(tmp_path / "quiet", eval_every=0, grad_log_every=0, **overrides))
    train(tiny(tmp_path / "busy", eval_every=2, grad_log_every=2, **overrides))
    quiet, busy = parameters(tmp_path / "quiet" / "run"), parameters(tmp_path / "busy" / "run")
    for name in quiet:
        torch.testing.assert_close(busy[name], quiet[name], rtol=0, atol=0)


def test_command_line_exits_nonzero_with_the_message_on_a_non_finite_loss(tmp_path: Path, capsys) -> None:
    argv = tiny_argv(tmp_path, "nan", "--optimizer", "sgd", "--lr", "1e6", "--clip-grad-norm", "none")
    # the bare seed-paper cell: finite for a step or two
    argv += ["--model", "static_hamiltonian", "--num-blocks", "0", "--model-kwargs", "timescales=null"]
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--steps", "40", "--checkpoint-every", "1"])
    assert caught.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"error: non-finite loss or gradient at step \d+ .*the last finite state \(step \d+\).*", line
    )
    assert (tmp_path / "nan" / CHECKPOINT_NAME).is_file()


def test_command_line_prints_the_final_metrics_as_its_last_line(tmp_path: Path, capsys) -> None:
    main(tiny_argv(tmp_path, "cli"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    printed = dict(item.split("=") for item in last.split())
    saved = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert printed.keys() == saved.keys() and "test_mse" in printed
    assert float(printed["test_mse"]) == pytest.approx(saved["test_mse"], rel=1e-5)


def test_new_run_refuses_a_folder_that_holds_a_checkpoint(tmp_path: Path) -> None:
    config = tiny(tmp_path, steps=2, eval_every=0, grad_log_every=0)
    train(config)
    with pytest.raises(ConfigError, match=r"already holds a checkpoint: continue it with --resume"):
        train(config)


def _damaged_checkpoints(tmp_path: Path) -> dict[str, Path]:
    """Run folders holding a torn checkpoint file and one saved by something else."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CHECKPOINT_NAME).write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "foreign.pt", {"step": 3})
    return {"broken": tmp_path / "broken", "foreign": tmp_path / "foreign.pt"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--task", "addding"],
            r"configuration: config field 'task': unknown value 'addding'; expected one of \['adding'",
        ),
        (
            ["--model", "hamiltonain"],
            r"config field 'model': unknown value 'hamiltonain'; expected one of \['hamiltonian'",
        ),
        (["--model-kwargs", "bogus=3"], r"building the model: .*unexpected keyword argument 'bogus'"),
        (
            ["--task-kwargs", "bogus=1"],
            r"building the task: task 'adding' got unknown option\(s\) \['bogus'\]",
        ),
        (["--optimizer", "adagrad"], r"configuration: config field 'optimizer': unknown value 'adagrad'"),
        (["--batch-size", "500"], r"batches: batch_size 500 exceeds the 96 training samples"),
        (["--resume", "{tmp}/nowhere"], r"configuration: no checkpoint at .*nowhere \(expected a run folder"),
        (
            ["--resume", "{broken}"],
            r"configuration: .*broken/checkpoint\.pt is not a training checkpoint of hrnn: it has no checksum footer",
        ),
        (["--resume", "{foreign}"], r"foreign\.pt is not a training checkpoint: missing \['config', 'model'"),
        (["--config", "{tmp}/missing.yaml"], r"configuration: config file not found: .*missing\.yaml"),
        (
            ["--readout", "sequence"],
            r"building the model: readout 'sequence' does not fit task 'adding', whose targets need readout 'last'",
        ),
    ],
    ids=lambda v: v[0].lstrip("-") if isinstance(v, list) else None,
)
def test_command_line_reports_a_user_error_as_one_message_without_traceback(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {"tmp": tmp_path, **_damaged_checkpoints(tmp_path)}
    flags = [flag.format(**paths) for flag in flags]
    with pytest.raises(SystemExit) as caught:  # any other exception would print a traceback
        main(tiny_argv(tmp_path, "bad", *flags))
    assert caught.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and re.search(message, line)
    assert not (tmp_path / "bad").exists()


def test_resume_with_a_flag_that_changes_the_model_fails_naming_the_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(tiny_argv(tmp_path, "run"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path / "run"), "--steps", "6", "--hidden-size", "7"])
    (line,) = capsys.readouterr().err.splitlines()
    assert re.match(r"error: the checkpoint does not fit the configured model: .*size mismatch", line)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
        (["--config", "a.yaml", "--resume", "run"], "give either --config or --resume, not both"),
        (["--task-kwargs", "seq_len"], "argument --task-kwargs: expected KEY=VALUE, got 'seq_len'"),
    ],
)
def test_malformed_flags_exit_with_status_2_and_the_usage_message(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_args(flags)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_error_reaches_the_terminal_as_a_single_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", *tiny_argv(tmp_path, "bad", "--resume", str(tmp_path))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == f"error: configuration: no checkpoint at {tmp_path / CHECKPOINT_NAME} " + (
        "(expected a run folder holding checkpoint.pt or a checkpoint file)\n"
    )


def test_training_continues_with_a_warning_when_wandb_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**kwargs: object) -> None:
        raise ConnectionError("wandb-core did not answer")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.warns(RuntimeWarning, match="W&B could not start.*wandb-core did not answer"):
        metrics = train(tiny(tmp_path, wandb="offline", steps=3))
    assert metrics["steps"] == 3 and np.isfinite(metrics["test_mse"])
    assert load_checkpoint(tmp_path / "run")["step"] == 3
    assert not (tmp_path / "run" / "wandb").exists()


def test_wandb_mode_variable_decides_when_no_flag_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train(tiny(tmp_path, wandb=None, steps=2))
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / "wandb").exists()
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match=r"W&B: unknown W&B mode 'sometimes' from the WANDB_MODE"):
        train(tiny(tmp_path, wandb=None, steps=2, name="other"))
    assert not (tmp_path / "other").exists()


def test_training_restores_the_callers_thread_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    train(tiny(tmp_path, steps=1, num_threads=1 if before > 1 else 2))
    assert torch.get_num_threads() == before


def test_sequence_classification_task_trains_with_per_step_cross_entropy_and_accuracy(tmp_path: Path) -> None:
    config = tiny(
        tmp_path,
        task="copy",
        task_kwargs={"delay": 3, "n_train": 32, "n_val": 8, "n_test": 8},
        model="oscillator",
        steps=3,
        eval_every=0,
        grad_log_every=3,
    )
    metrics = train(config)
    assert set(metrics) >= {"test_loss", "test_accuracy", "val_accuracy"}
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0


@pytest.mark.parametrize("task_name", ["adding", "copy"])
def test_evaluation_equals_torch_loss_and_metric_over_the_whole_set(task_name: str) -> None:
    kwargs = {"adding": {"seq_len": 9}, "copy": {"delay": 4}}[task_name]
    task = build_task(task_name, n_train=1, n_val=0, n_test=11, **kwargs)
    model = build_model("gru", task.input_size, 5, task.output_size, readout=task.readout).double()
    x, y = default_collate([task.test[i] for i in range(len(task.test))])
    with torch.no_grad():
        output = model(x.double())
    objective = OBJECTIVES[task.objective]
    scores = evaluate(model, task.test, objective, 4, torch.device("cpu"), torch.float64)  # batches 4, 4, 3
    if task.objective == "regression":
        expected = {
            "loss": F.mse_loss(output, y.double()).item(),
            "mse": F.mse_loss(output, y.double()).item(),
        }
    else:
        logits, labels = output.flatten(0, 1), y.flatten()
        accuracy = (logits.argmax(-1) == labels).double().mean().item()
        expected = {"loss": F.cross_entropy(logits, labels).item(), "accuracy": accuracy}
    assert scores == pytest.approx(expected, rel=1e-12)


def test_read_out_training_keeps_the_layer_and_calibrates_the_standardisation(tmp_path: Path) -> None:
    config = tiny(tmp_path, readout="state", standardize=True, freeze_layer=True, steps=6, checkpoint_every=3)
    task = build_task("adding", seed=0, **config.task_kwargs)
    torch.manual_seed(0)  # the run seeds before building, so this is its initial draw
    initial = train_module._build_model(config, task)
    train(config)
    trained = parameters(tmp_path / "run")
    for name, value in initial.rnn.state_dict().items():
        if not name.endswith("_extra_state"):  # the cells' saved options, not tensors
            torch.testing.assert_close(trained[f"rnn.{name}"], value, rtol=0, atol=0)
    assert not torch.equal(trained["head.weight"], initial.head.weight.detach())
    assert trained["head.weight"].shape == (1, 2 * 6)  # the head reads (p_T, q_T)
    # the standardisation is that of the first training samples' final states
    x = torch.stack([task.train[i][0] for i in range(len(task.train))])
    _, (p_n, q_n) = initial.rnn(x)
    features = torch.cat([p_n[-1], q_n[-1]], 1).detach()
    torch.testing.assert_close(trained["standardize.mean"], features.mean(0))
    torch.testing.assert_close(trained["standardize.scale"], features.std(0))
