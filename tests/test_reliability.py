"""Training under faults and bad input: resume with changed flags, NaN recovery, W&B failures, stop signals,
checkpoint trust, data discovery, and one `error:` line for every user error."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import wandb
from torch.utils.data import default_collate

import experiments.train as train_module
from experiments.checkpoint import (
    CHECKPOINT_NAME,
    FOOTER_MAGIC,
    NonFiniteStateError,
    load_checkpoint,
    save_checkpoint,
)
from experiments.config import OPTIMIZERS, build_config, parse_args
from experiments.config import cosine_schedule as cosine
from experiments.data import StepBatchSampler
from experiments.train import (
    NonFiniteLossError,
    TrainingStopped,
    apply_hyperparameters,
    main,
    train,
)
from hrnn.models import available_models, build_model
from hrnn.wandb_logger import WandbLogger, read_offline_run, wait_for_offline_run
from tasks import DataError, build_task
from tasks.registry import available_tasks

REPO = Path(__file__).resolve().parents[1]
TASK = {"seq_len": 12, "n_train": 96, "n_val": 16, "n_test": 32}


def tiny(tmp_path: Path, **overrides: object):
    """A run of a second: adding problem with T = 12, a 6-unit Hamiltonian cell, W&B disabled."""
    fields = {
        "task_kwargs": dict(TASK),
        "hidden_size": 6,
        "batch_size": 16,
        "steps": 8,
        "lr": 1e-2,
        "eval_every": 0,
        "grad_log_every": 0,
        "checkpoint_every": 4,
        "out_dir": str(tmp_path),
        "name": "run",
        "wandb": "disabled",
        "progress": False,
        **overrides,
    }
    return build_config(fields)


def tiny_argv(tmp_path: Path, *flags: str) -> list[str]:
    return [
        *("--out-dir", str(tmp_path), "--name", "run", "--wandb", "disabled", "--no-progress"),
        *("--task-kwargs", *(f"{k}={v}" for k, v in TASK.items())),
        *(
            "--hidden-size",
            "6",
            "--batch-size",
            "16",
            "--steps",
            "3",
            "--eval-every",
            "0",
            "--grad-log-every",
            "0",
        ),
        *flags,
    ]


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The single stderr line of ``main(argv)``, which must exit with status 1."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ----------------------------------------------------------------------------- resume with changed flags


def test_restored_optimizer_takes_the_new_lr_and_weight_decay_as_if_it_had_started_with_them() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    optimizer = torch.optim.SGD([weight], lr=1.0, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine(s, 10))
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    apply_hyperparameters(optimizer, scheduler, lr=0.5, weight_decay=0.1)
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0] == 0.5 * cosine(3, 10)
    before = weight.detach().clone()
    weight.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    optimizer.step()  # SGD: w - lr_t (g + wd w)
    expected = before - 0.5 * cosine(3, 10) * (weight.grad + 0.1 * before)
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-15)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * cosine(4, 10), rel=1e-15)


def test_resume_trains_with_a_changed_lr_and_weight_decay(tmp_path: Path) -> None:
    constant = {"lr_schedule": "constant", "optimizer": "adamw", "steps": 4}
    for name in ("same", "changed"):
        train(tiny(tmp_path, name=name, **constant))
    main(["--resume", str(tmp_path / "same"), "--steps", "8"])
    main(["--resume", str(tmp_path / "changed"), "--steps", "8", "--lr", "0.03", "--weight-decay", "0.2"])
    same, changed = load_checkpoint(tmp_path / "same"), load_checkpoint(tmp_path / "changed")
    assert same["step"] == changed["step"] == 8
    group = changed["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (0.03, 0.2)
    assert changed["scheduler"]["base_lrs"] == [0.03] and changed["config"]["lr"] == 0.03
    assert same["optimizer"]["param_groups"][0]["lr"] == 1e-2  # the plain resume keeps the saved value
    assert not torch.equal(same["model"]["head.weight"], changed["model"]["head.weight"])


def test_resume_with_another_optimizer_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(tiny_argv(tmp_path))
    before = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    for other in sorted(set(OPTIMIZERS) - {"adam"}):
        line = error_line(capsys, ["--resume", str(tmp_path / "run"), "--steps", "6", "--optimizer", other])
        assert line == (
            f"error: --resume: the checkpoint holds the state of optimizer 'adam', which cannot continue "
            f"as '{other}': resume with --optimizer adam or start a new run"
        )
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", math.inf, r"'lr' must be a finite number, got inf"),
        ("lr", math.nan, r"'lr' must be a finite number, got nan"),
        ("weight_decay", math.inf, r"'weight_decay' must be a finite number"),
        ("clip_grad_norm", math.inf, r"'clip_grad_norm' must be a finite number"),
        ("seed", 2**32, r"'seed' must be <= 2\*\*32 - 1 = 4294967295, got 4294967296"),
        ("device", "cuda:abc", r"'device' must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'cuda:abc'"),
        ("name", "", r"'name' must be one folder name inside out_dir"),
        ("name", "../../x", r"'name' must be one folder name inside out_dir .*got '\.\./\.\./x'"),
        ("name", "..", r"'name' must be one folder name"),
    ],
)
def test_invalid_hyperparameters_are_rejected_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config({field: value})


# ----------------------------------------------------------------------------- NaN recovery


def diverging(tmp_path: Path, **overrides: object):
    """SGD at lr 1e6 without clipping: the loss becomes non-finite within a few steps."""
    fields = {"optimizer": "sgd", "lr": 1e6, "clip_grad_norm": None, "lr_schedule": "constant", "steps": 40}
    # the bare seed-paper cell, whose loss stays finite for a step or two before it diverges
    fields |= {"model": "static_hamiltonian", "num_blocks": 0, "model_kwargs": {"timescales": None}}
    return tiny(tmp_path, **{**fields, **overrides})


def test_non_finite_loss_leaves_the_last_loss_finite_checkpoint_and_resume_with_a_lower_lr_continues(
    tmp_path: Path,
) -> None:
    config = diverging(tmp_path, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError) as caught:
        train(config)
    error = caught.value
    assert not (math.isfinite(error.loss) and math.isfinite(error.grad_norm)) and error.step >= 2
    saved = load_checkpoint(error.checkpoint)
    assert saved["step"] == error.saved_step == error.step - 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if isinstance(v, torch.Tensor))
    # the saved state's own loss and gradient on its batch are finite
    task = build_task("adding", seed=0, **TASK)
    (indices,) = list(StepBatchSampler(len(task.train), 16, 0, saved["step"], saved["step"] + 1))
    x, y = default_collate([task.train[i] for i in indices])
    model = build_model("static_hamiltonian", 2, 6, 1, num_blocks=0, timescales=None)
    model.load_state_dict(saved["model"])
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    assert math.isfinite(loss.item()) and all(torch.isfinite(p.grad).all() for p in model.parameters())

    main(["--resume", str(tmp_path / "run"), "--lr", "1e-3", "--clip-grad-norm", "1"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert load_checkpoint(tmp_path / "run")["step"] == 40 and math.isfinite(metrics["test_mse"])


def test_non_finite_loss_before_any_checkpoint_writes_none(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as caught:
        train(diverging(tmp_path, checkpoint_every=1000))
    assert caught.value.checkpoint is None and "the last finite state" not in str(caught.value)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_a_non_finite_model_state_never_replaces_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    before = path.read_bytes()
    with pytest.raises(NonFiniteStateError, match=r"NaN/Inf in \['w'\]; the previous checkpoint is kept"):
        save_checkpoint(path, {"model": {"w": torch.tensor([1.0, math.nan])}, "step": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


# ----------------------------------------------------------------------------- W&B failures


def _blocked(tmp_path: Path) -> str:
    """A path no process can create a folder at: it lies below a regular file."""
    (tmp_path / "file").write_text("")
    return str(tmp_path / "file" / "below")


@pytest.mark.parametrize("variable", ["WANDB_DATA_DIR", "HOME"])
def test_training_finishes_when_wandb_cannot_write_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, _blocked(tmp_path))
    config = tiny(tmp_path, wandb="offline", steps=6, grad_log_every=3, checkpoint_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(config)
    assert metrics["steps"] == 6 and math.isfinite(metrics["test_mse"])
    assert load_checkpoint(tmp_path / "run")["step"] == 6
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    if runs:  # W&B started: the curve failed, its end points and every scalar were still logged
        run = wait_for_offline_run(runs[0], "final/test_mse")
        assert [row["_step"] for row in run.history if "train/loss" in row] == list(range(6))
        assert "hidden_grad/h0" in run.summary
    assert runs or any("W&B could not start" in m for m in messages)


def test_training_finishes_when_wandb_fails_in_the_middle_of_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_log = WandbLogger._log

    def failing_from_the_third_call(self: WandbLogger, what: str, values: dict, step: int) -> None:
        nonlocal calls
        calls += 1
        if calls >= 3 and self._run is not None:
            self._run.log = lambda *a, **k: (_ for _ in ()).throw(OSError("No space left on device"))
        real_log(self, what, values, step)

    monkeypatch.setattr(WandbLogger, "_log", failing_from_the_third_call)
    with pytest.warns(RuntimeWarning, match="W&B failed while logging training scalars .*No space left"):
        metrics = train(tiny(tmp_path, wandb="offline", steps=6))
    assert metrics["steps"] == 6 and load_checkpoint(tmp_path / "run")["step"] == 6


def test_online_run_without_a_server_falls_back_to_offline_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port: no server answers
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    started = time.monotonic()
    with pytest.warns(
        RuntimeWarning, match=r"W&B could not start in online mode \(CommError: .*; trying offline"
    ):
        logger = WandbLogger("hrnn-test", "n", mode="online", dir=tmp_path, init_timeout_s=2.0)
    with logger:
        assert logger.mode == "offline" and logger.enabled
        logger.log_metrics(0, {"val/loss": 0.5})
        run_dir = logger.run_dir
    assert time.monotonic() - started < 60
    assert wait_for_offline_run(run_dir, "val/loss").summary["val/loss"] == 0.5


def test_trainer_falls_back_to_offline_then_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_init, modes = wandb.init, []

    def online_fails(**kwargs: object):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online" or len(modes) > 2:
            raise ConnectionError("no route to host")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", online_fails)
    with pytest.warns(RuntimeWarning, match="W&B could not start in online mode"):
        train(tiny(tmp_path, wandb="online", steps=2))
    assert (
        modes == ["online", "offline"] and len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1
    )
    with pytest.warns(RuntimeWarning, match="W&B could not start in offline mode.*continuing without"):
        metrics = train(tiny(tmp_path, wandb="online", steps=2, name="other"))
    assert metrics["steps"] == 2 and not (tmp_path / "other" / "wandb").exists()


# ----------------------------------------------------------------------------- stop signals, finished runs


def test_ctrl_c_writes_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {"num_layers": 2, "model_kwargs": {"dropout": 0.25}, "steps": 8, "checkpoint_every": 0}
    train(tiny(tmp_path / "whole", **overrides))
    real_after = train_module._after_update

    def ctrl_c_after_three(run, done: int) -> None:
        real_after(run, done)
        if done == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module, "_after_update", ctrl_c_after_three)
    callers_handler = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite itself runs in the background
    # the request reaches every process in step 3's collective; all stop at the start of step 4
    with pytest.raises(
        TrainingStopped, match=r"stopped by SIGINT at step 4; checkpoint in .*--resume"
    ) as caught:
        train(tiny(tmp_path / "split", **overrides))
    monkeypatch.undo()
    assert caught.value.step == 4 and load_checkpoint(caught.value.checkpoint)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is callers_handler  # the caller's handler is back
    main(["--resume", str(tmp_path / "split" / "run")])
    whole, split = load_checkpoint(tmp_path / "whole" / "run"), load_checkpoint(tmp_path / "split" / "run")
    assert split["model"].keys() == whole["model"].keys()
    for name, value in whole["model"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(split["model"][name], value, rtol=0, atol=1e-6)


def test_sigterm_writes_a_checkpoint_and_exits_with_status_143(tmp_path: Path) -> None:
    argv = [*tiny_argv(tmp_path), "--steps", "100000", "--checkpoint-every", "0", "--log-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *argv],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # a signal before the trainer's handlers are set kills the process (exit -15): say so instead
    assert (tmp_path / "run" / "config.yaml").exists(), "the run did not start within 300 s"
    time.sleep(1.0)  # some steps
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    step = load_checkpoint(tmp_path / "run")["step"]
    assert step > 0 and err.splitlines()[-1] == (
        f"stopped by SIGTERM at step {step}; checkpoint in {tmp_path / 'run' / CHECKPOINT_NAME}, "
        f"continue with --resume {tmp_path / 'run'}"
    )


def test_resuming_a_finished_run_leaves_metrics_json_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(tiny_argv(tmp_path))
    first = capsys.readouterr().out.splitlines()[-1]
    files = {name: (tmp_path / "run" / name).read_bytes() for name in ("metrics.json", CHECKPOINT_NAME)}
    main(["--resume", str(tmp_path / "run")])
    assert capsys.readouterr().out.splitlines()[-1] == first
    main(["--resume", str(tmp_path / "run"), "--progress", "--num-threads", "2"])  # shown, not computed
    assert capsys.readouterr().out.splitlines()[-1] == first
    line = error_line(capsys, ["--resume", str(tmp_path / "run"), "--lr", "0.5"])
    assert line.endswith("already finished its 3 steps; to train on, resume with --steps above 3")
    assert {name: (tmp_path / "run" / name).read_bytes() for name in files} == files
    json.loads(files["metrics.json"], parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))


def test_metrics_json_is_strict_json_when_a_value_is_nan(tmp_path: Path) -> None:
    train_module._write_metrics(tmp_path / "m.json", {"train_loss": math.nan, "steps": 3})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"train_loss": None, "steps": 3}


def test_resumes_keep_one_wandb_run_id_and_remove_temporaries_of_killed_writes(tmp_path: Path) -> None:
    train(tiny(tmp_path, wandb="offline", steps=3))
    stale = tmp_path / "run" / f".{CHECKPOINT_NAME}.k1ll3d.tmp"
    stale.write_bytes(b"torn")
    main(["--resume", str(tmp_path / "run"), "--steps", "5"])
    run_id = load_checkpoint(tmp_path / "run")["wandb_run_id"]
    folders = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and {folder.name.split("-")[3] for folder in folders} == {run_id}
    assert not stale.exists()


# ----------------------------------------------------------------------------- checkpoint trust


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_valid_footer(path: Path, payload: bytes) -> None:
    path.write_bytes(payload + FOOTER_MAGIC + hashlib.sha256(payload).digest())


def test_a_crafted_pickle_is_refused_even_with_a_valid_checksum(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "raw.pt")
    _with_valid_footer(tmp_path / CHECKPOINT_NAME, (tmp_path / "raw.pt").read_bytes())
    with pytest.raises(ValueError, match=r"is not a readable checkpoint \(UnpicklingError"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_flipped_bytes_in_a_tensor_fail_the_checksum(tmp_path: Path) -> None:
    train(tiny(tmp_path, steps=2))
    path = tmp_path / "run" / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 100] = bytes(b ^ 0xFF for b in data[middle : middle + 100])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checkpoint\.pt is damaged: its SHA-256 checksum does not match"):
        load_checkpoint(path)


def test_checkpoints_load_with_torch_weights_only(tmp_path: Path) -> None:
    train(tiny(tmp_path, steps=2, num_layers=2, model_kwargs={"dropout": 0.25}))
    state = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)  # the footer is ignored
    assert state["step"] == 2 and set(state["model"]) == set(load_checkpoint(tmp_path / "run")["model"])


# ----------------------------------------------------------------------------- data discovery


def test_an_installed_copy_asks_for_hrnn_data_instead_of_looking_inside_the_environment(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "tasks", site / "tasks")  # what a non-editable install puts there
    code = "import tasks.registry as r; print(r.default_data_dir('mnist'))"
    env = {key: value for key, value in os.environ.items() if key != "HRNN_DATA"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "DataError: no data folder: set $HRNN_DATA" in done.stderr
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site), "HRNN_DATA": "/d"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout.strip() == "/d/mnist"


def test_missing_data_error_names_hrnn_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HRNN_DATA", str(tmp_path / "empty"))
    line = error_line(capsys, [*tiny_argv(tmp_path), "--task", "smnist_rows", "--task-kwargs", "n_test=10"])
    assert re.search(r"building the task: MNIST folder not found: .*empty/mnist.*\$HRNN_DATA", line)
    with pytest.raises(DataError):
        build_task("smnist_rows")


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_data_tests_fail_under_ci_when_the_shared_data_is_missing(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    env = {**os.environ, "HRNN_DATA": str(tmp_path / "empty"), "CI": ci, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_tasks_mnist.py::test_default_root_is_the_shared_data_beside_the_checkout"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert outcome in done.stdout, done.stdout[-2000:]
    assert (done.returncode != 0) == (ci == "true")


# ----------------------------------------------------------------------------- one error line


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "bad.yaml").write_text("lr: [1e-3\nsteps: 4\n")
    return {
        "malformed YAML": ["--config", str(tmp_path / "bad.yaml")],
        "device cuda:abc": ["--device", "cuda:abc"],
        "seed 2**32": ["--seed", "4294967296"],
        "unwritable out-dir": ["--out-dir", _blocked(tmp_path)],
        "name escaping out-dir": ["--name", "../../x"],
        "empty name": ["--name", ""],
        "lr inf": ["--lr", "inf"],
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("malformed YAML", r"configuration: .*bad\.yaml is not valid YAML: while parsing a flow sequence"),
        ("device cuda:abc", r"'device' must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'cuda:abc'"),
        ("seed 2**32", r"'seed' must be <= 2\*\*32 - 1"),
        ("unwritable out-dir", r"run folder: \[Errno 20\] Not a directory"),
        ("name escaping out-dir", r"'name' must be one folder name inside out_dir"),
        ("empty name", r"'name' must be one folder name inside out_dir"),
        ("lr inf", r"'lr' must be a finite number, got inf"),
    ],
)
def test_every_user_error_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    argv = [*tiny_argv(tmp_path / "out"), *_bad_inputs(tmp_path)[case]]
    assert re.search(message, error_line(capsys, argv))
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "run").exists()


def test_a_failed_checkpoint_write_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("experiments.checkpoint.os.fsync", full_disk)
    line = error_line(capsys, tiny_argv(tmp_path))
    assert line == (
        f"error: could not write the checkpoint {tmp_path / 'run' / CHECKPOINT_NAME}: "
        "[Errno 28] No space left on device"
    )
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]


def test_help_lists_the_tasks_models_and_optimizers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for names in (available_tasks(), available_models(), list(OPTIMIZERS)):
        assert f"one of {', '.join(names)};" in text


def test_an_offline_run_file_reads_back_from_run_files_and_the_logger(tmp_path: Path) -> None:
    from hrnn import run_files

    assert (
        read_offline_run is run_files.read_offline_run
        and wait_for_offline_run is run_files.wait_for_offline_run
    )
