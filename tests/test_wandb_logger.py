"""The W&B logger: offline by default, every logged value readable back from the run file, never fatal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import wandb

from hrnn.gradients import global_gradient_norm, hidden_state_gradient_norms, parameter_gradient_norms
from hrnn.models import build_model
from hrnn.wandb_logger import WandbLogger, read_offline_run, resolve_mode, wait_for_offline_run


def _loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(output, y)


@pytest.fixture
def model_and_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build_model("hamiltonian", 2, 4, 1)
    x, y = torch.randn(3, 6, 2), torch.randn(3, 1)
    _loss(model(x), y).backward()
    return model, x, y


def test_mode_is_argument_then_wandb_mode_variable_then_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"
    assert resolve_mode("online") == "online"


def test_unknown_mode_is_rejected_with_the_known_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"'dryrun'.*\['offline', 'online', 'disabled'\]"):
        resolve_mode("dryrun")
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_mode()


def test_offline_run_file_holds_logged_scalars_gradient_norms_and_hidden_curve(
    tmp_path, model_and_batch
) -> None:
    model, x, y = model_and_batch
    norms = hidden_state_gradient_norms(model, x, y, _loss)
    with WandbLogger(
        "hrnn-test", "unit", config={"lr": 0.5, "hidden_size": 4}, mode="offline", dir=tmp_path
    ) as logger:
        assert logger.enabled
        run_dir = logger.run_dir
        logger.log_step(0, loss=1.25, metric=0.75, lr=0.5, model=model, metric_name="mse")
        logger.log_step(1, loss=1.0, metric=0.5, lr=0.25, model=model, metric_name="mse")
        logger.log_hidden_gradients(1, norms)
        logger.log_metrics(2, {"val/loss": 0.125})

    assert run_dir.parent == tmp_path / "wandb" and run_dir.name.startswith("offline-run-")
    run = wait_for_offline_run(run_dir, "val/loss")
    with pytest.raises(TimeoutError, match="never/logged"):
        wait_for_offline_run(run_dir, "never/logged", timeout_s=0.3)
    assert run.config["lr"] == 0.5 and run.config["hidden_size"] == 4
    rows = {row["_step"]: row for row in run.history}
    assert sorted(rows) == [0, 1, 2]
    assert (rows[0]["train/loss"], rows[0]["train/mse"], rows[0]["train/lr"]) == (1.25, 0.75, 0.5)
    assert rows[1]["train/loss"] == 1.0 and rows[2]["val/loss"] == 0.125
    expected = parameter_gradient_norms(model)
    assert len(expected) == len(list(model.parameters()))
    for name, value in expected.items():
        assert rows[0][f"grad_norm/{name}"] == pytest.approx(value, rel=1e-6)
    assert rows[0]["grad_norm/global"] == pytest.approx(global_gradient_norm(model), rel=1e-6)

    # the curve is a table file beside the run; its rows are (t, ||dL/dh_t||) for t = 0..T
    table = json.loads((run_dir / "files" / rows[1]["hidden_grad/curve_table/path"]).read_text())
    assert table["columns"] == ["t", "grad_norm"]
    assert [row[0] for row in table["data"]] == list(range(x.shape[1] + 1))
    assert [row[1] for row in table["data"]] == pytest.approx(norms.tolist(), rel=1e-6)
    assert run.summary["hidden_grad/h0"] == pytest.approx(norms[0].item(), rel=1e-6)
    assert run.summary["hidden_grad/hT"] == pytest.approx(norms[-1].item(), rel=1e-6)
    assert run.summary["hidden_grad/ratio"] == pytest.approx((norms[0] / norms[-1]).item(), rel=1e-6)


def test_disabled_logger_starts_no_run_and_writes_nothing(tmp_path, model_and_batch) -> None:
    model, *_ = model_and_batch
    logger = WandbLogger("hrnn-test", mode="disabled", dir=tmp_path / "w")
    logger.log_step(0, 1.0, 1.0, 0.1, model)
    logger.log_hidden_gradients(0, torch.ones(4))
    logger.finish()
    assert not logger.enabled and logger.run_dir is None
    assert not (tmp_path / "w").exists()


def test_logger_warns_and_becomes_a_no_op_when_wandb_cannot_start(
    tmp_path, model_and_batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**kwargs: object) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(wandb, "init", refuse)
    model, *_ = model_and_batch
    with pytest.warns(RuntimeWarning, match="W&B could not start.*no space left"):
        logger = WandbLogger("hrnn-test", mode="offline", dir=tmp_path)
    assert not logger.enabled
    logger.log_step(0, 1.0, 1.0, 0.1, model)
    logger.log_hidden_gradients(0, torch.ones(4))
    logger.finish()


def test_hidden_gradient_curve_must_be_one_dimensional_with_two_points() -> None:
    logger = WandbLogger("hrnn-test", mode="disabled")
    with pytest.raises(ValueError, match=r"shape \(T \+ 1,\).*got \(2, 3\)"):
        logger.log_hidden_gradients(0, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"got \(1,\)"):
        logger.log_hidden_gradients(0, torch.ones(1))


def test_reading_a_file_that_is_not_a_wandb_run_fails_with_its_name(tmp_path) -> None:
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"PK\x03\x04 not a run file")
    with pytest.raises(ValueError, match=r"run-x\.wandb is not a W&B run file"):
        read_offline_run(bogus)
    with pytest.raises(ValueError, match="W&B run file not found"):
        read_offline_run(tmp_path / "missing")


def test_import_hrnn_does_not_import_wandb() -> None:
    code = (
        "import sys, hrnn, hrnn.models, hrnn.gradients; assert 'wandb' not in sys.modules, 'wandb imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
