"""Data-parallel training: 2 gloo processes under torchrun reproduce one process on the same global batch."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from experiments.checkpoint import load_checkpoint
from experiments.config import build_config
from experiments.train import train

REPO = Path(__file__).resolve().parents[1]


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    assert dist.is_gloo_available()
    config = build_config(
        {
            "task_kwargs": {"seq_len": 10, "n_train": 64, "n_val": 8, "n_test": 16},
            "hidden_size": 5,
            "batch_size": 8,  # 4 sequences per process
            "steps": 6,
            "lr": 2e-2,
            "dtype": "float64",  # so the comparison sees only summation order, ~1e-15
            "eval_every": 3,
            "grad_log_every": 3,
            "checkpoint_every": 4,
            "out_dir": str(tmp_path),
            "name": "single",
            "wandb": "disabled",
            "progress": False,
        }
    )
    train(config)

    config_file = tmp_path / "ddp.yaml"
    ddp_config = dataclasses.replace(config, name="ddp", wandb="offline")
    config_file.write_text(yaml.safe_dump(dataclasses.asdict(ddp_config)))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, "-m", "experiments.train", "--config", str(config_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    single, ddp = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    assert ddp["step"] == single["step"] == 6 and len(ddp["rng"]) == 2
    assert ddp["model"].keys() == single["model"].keys()
    for name, value in single["model"].items():
        if isinstance(value, torch.Tensor):  # the rest is the cells' saved options
            torch.testing.assert_close(ddp["model"][name], value, rtol=0, atol=1e-6)
    assert all(
        state["step"] == 6 for state in single["optimizer"]["state"].values()
    )  # 6 Adam updates happened

    # only rank 0 logs and reports: one W&B run, one metrics line, one line per piece of information
    assert len(list((tmp_path / "ddp" / "wandb").glob("offline-run-*"))) == 1
    assert sum(line.startswith("val_loss=") for line in done.stdout.splitlines()) == 1
    assert sum(line.startswith("INFO experiments.train: run ") for line in done.stderr.splitlines()) == 1

    # a user error that every rank meets is printed once
    failed = subprocess.run(
        [
            *launch,
            "-m",
            "experiments.train",
            "--config",
            str(config_file),
            "--name",
            "bad",
            "--task-kwargs",
            "bogus=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert failed.returncode != 0 and len(errors) == 1, failed.stderr[-3000:]
    assert "task 'adding' got unknown option(s) ['bogus']" in errors[0]
