"""The task registry and the synthetic tasks: adding problem and copy task."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import tasks
from tasks.adding import ADDING_BASELINE_MSE, GeneratedDataset, adding_sample
from tasks.copying import copy_baseline_cross_entropy

ALL_TASKS = ["adding", "copy", "fsdd", "psmnist", "smnist", "smnist_rows", "speech_commands"]


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.stack(ys)


# --- registry ---------------------------------------------------------------------------------


def test_available_tasks_lists_every_task_sorted():
    assert tasks.available_tasks() == ALL_TASKS


def test_unknown_task_name_fails_listing_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'addition'.*'adding'.*'speech_commands'"):
        tasks.build_task("addition")


def test_unknown_option_fails_naming_accepted_options():
    with pytest.raises(TypeError, match=r"'copy' got unknown option\(s\) \['seq_len'\].*'delay'.*'n_train'"):
        tasks.build_task("copy", seq_len=30)


def test_import_tasks_does_not_import_torchaudio():
    code = "import sys, tasks; assert 'torchaudio' not in sys.modules; tasks.build_task('adding')"
    code += "; assert 'torchaudio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("adding", {"seq_len": 1}, ValueError, "seq_len must be >= 2, got 1"),
        ("adding", {"seq_len": 10.0}, TypeError, "seq_len must be an int, got float"),
        ("adding", {"n_train": 0}, ValueError, "n_train must be >= 1"),
        ("adding", {"seed": -1}, ValueError, "seed must be >= 0"),
        ("copy", {"delay": 0}, ValueError, "delay must be >= 1"),
        ("copy", {"n_test": True}, TypeError, "n_test must be an int, got bool"),
    ],
)
def test_invalid_options_fail_naming_the_option(name, options, error, message):
    with pytest.raises(error, match=message):
        tasks.build_task(name, **options)


# --- seeded generation ------------------------------------------------------------------------


def test_generated_items_do_not_depend_on_access_order():
    dataset = GeneratedDataset(
        lambda g: (torch.rand(3, generator=g), torch.rand(1, generator=g)), 10, seed=4, stream=0
    )
    forward = [dataset[i][0] for i in range(10)]
    backward = [dataset[i][0] for i in reversed(range(10))][::-1]
    torch.testing.assert_close(torch.stack(forward), torch.stack(backward), rtol=0, atol=0)
    torch.testing.assert_close(dataset[-1][0], dataset[9][0], rtol=0, atol=0)
    with pytest.raises(IndexError, match="index 10 out of range for a dataset of 10"):
        dataset[10]


# --- adding problem ---------------------------------------------------------------------------


def test_adding_task_record_and_shapes():
    task = tasks.build_task("adding", seq_len=50, n_train=8, n_val=4, n_test=6)
    assert (task.name, task.input_size, task.output_size, task.seq_len) == ("adding", 2, 1, 50)
    assert (task.objective, task.readout) == ("regression", "last")
    assert (len(task.train), len(task.val), len(task.test)) == (8, 4, 6)
    x, y = task.train[0]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((50, 2), torch.float32, (1,), torch.float32)
    xb, yb = next(iter(DataLoader(task.train, batch_size=8)))
    assert xb.shape == (8, 50, 2) and yb.shape == (8, 1)


def test_adding_without_validation_set():
    assert tasks.build_task("adding", n_val=0).val is None


@pytest.mark.parametrize("seq_len", [2, 7, 100])
def test_adding_has_one_marker_per_half_and_target_is_marked_sum(seq_len):
    x, y = _stack(tasks.build_task("adding", seq_len=seq_len, n_test=300).test)
    values, markers = x[..., 0].double(), x[..., 1]
    half = seq_len // 2
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert ((values >= 0) & (values < 1)).all()
    torch.testing.assert_close(y.double().squeeze(1), (values * markers).sum(1), rtol=0, atol=1e-6)


def test_adding_constant_one_predictor_scores_one_sixth():
    _, y = _stack(tasks.build_task("adding").test)
    mse = ((y.double() - 1.0) ** 2).mean().item()
    assert ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    assert mse == pytest.approx(1 / 6, abs=0.01)


def test_adding_markers_are_spread_uniformly_over_each_half():
    x, _ = _stack(tasks.build_task("adding", seq_len=10, n_test=5000).test)
    counts = x[..., 1].sum(0)
    # each of the 5 positions of a half expects 1000 markers (binomial sd ~28)
    assert ((counts - 1000).abs() < 150).all(), counts


def test_adding_is_deterministic_by_seed_and_splits_differ():
    a = tasks.build_task("adding", seq_len=20, n_train=50, n_test=50, seed=3)
    b = tasks.build_task("adding", seq_len=20, n_train=50, n_test=50, seed=3)
    c = tasks.build_task("adding", seq_len=20, n_train=50, n_test=50, seed=4)
    for split in ("train", "val", "test"):
        torch.testing.assert_close(_stack(getattr(a, split)), _stack(getattr(b, split)), rtol=0, atol=0)
    assert not torch.equal(_stack(a.test)[0], _stack(c.test)[0])
    train_values = {tuple(x[:, 0].tolist()) for x in _stack(a.train)[0]}
    assert not train_values & {tuple(x[:, 0].tolist()) for x in _stack(a.test)[0]}


def test_adding_sample_depends_only_on_its_generator():
    x1, y1 = adding_sample(30, torch.Generator().manual_seed(11))
    x2, y2 = adding_sample(30, torch.Generator().manual_seed(11))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


# --- copy task --------------------------------------------------------------------------------


def test_copy_task_record_and_shapes():
    task = tasks.build_task("copy", delay=30, n_train=5, n_val=0, n_test=7)
    assert (task.name, task.input_size, task.output_size, task.seq_len) == ("copy", 10, 9, 50)
    assert (task.objective, task.readout, task.val) == ("classification", "sequence", None)
    x, y = task.train[0]
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((50, 10), torch.float32, (50,), torch.int64)
    assert len(task.test) == 7


@pytest.mark.parametrize("delay", [1, 25])
def test_copy_layout_follows_arjovsky_et_al(delay):
    x, y = _stack(tasks.build_task("copy", delay=delay, n_test=200).test)
    assert torch.equal(x.sum(-1), torch.ones(x.shape[:2])), "input must be one-hot"
    tokens = x.argmax(-1)
    symbols = tokens[:, :10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (tokens[:, 10 : 10 + delay - 1] == 0).all()
    assert (tokens[:, 9 + delay] == 9).all(), "delimiter one step before the recall"
    assert (tokens[:, -10:] == 0).all()
    assert (y[:, :-10] == 0).all()
    assert torch.equal(y[:, -10:], symbols)
    assert int(y.max()) < 9, "targets fit output_size 9"


def test_copy_symbols_are_uniform_over_the_eight_symbols():
    x, _ = _stack(tasks.build_task("copy", delay=5, n_test=2000).test)
    counts = torch.bincount(x[:, :10].argmax(-1).flatten(), minlength=10)[1:9].double()
    # 20,000 draws: 2,500 per symbol expected, sd ~47
    assert ((counts - 2500).abs() < 250).all(), counts


def test_copy_baseline_is_memoryless_cross_entropy():
    delay = 40
    _, y = _stack(tasks.build_task("copy", delay=delay, n_test=100).test)
    # the memoryless strategy: certain blank until the recall, then uniform over symbols 1-8
    log_probs = torch.full((*y.shape, 9), -math.inf, dtype=torch.float64)
    log_probs[:, :-10, 0] = 0.0
    log_probs[:, -10:, 1:9] = -math.log(8)
    loss = torch.nn.functional.cross_entropy(log_probs.reshape(-1, 9), y.flatten())
    assert loss.item() == pytest.approx(copy_baseline_cross_entropy(delay), rel=1e-12)
    assert copy_baseline_cross_entropy(delay) == pytest.approx(10 * math.log(8) / (delay + 20), rel=1e-12)


def test_copy_is_deterministic_by_seed():
    a = tasks.build_task("copy", delay=10, n_test=20, seed=1).test
    b = tasks.build_task("copy", delay=10, n_test=20, seed=1).test
    c = tasks.build_task("copy", delay=10, n_test=20, seed=2).test
    assert torch.equal(_stack(a)[1], _stack(b)[1])
    assert not torch.equal(_stack(a)[1], _stack(c)[1])
