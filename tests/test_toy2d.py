"""The 2-D benchmark sets (geometry, seeding, splits) and the H-DNN experiment script on them."""

from __future__ import annotations

import math

import pytest
import torch

from experiments import hdnn_2d
from tasks.toy2d import (
    CIRCLE_RADII,
    MOONS_CENTRE,
    REFERENCE_RING_JITTER,
    REFERENCE_RING_RADII,
    REFERENCE_SWISS_ROLL_OFFSET,
    REFERENCE_SWISS_ROLL_TURNS,
    SWISS_ROLL_RADII,
    SWISS_ROLL_TURNS,
    TOY2D,
    available_toy2d,
    load_toy2d,
)


def noiseless(name: str, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    make, _ = TOY2D[name]
    return make(n, 0.0, torch.Generator().manual_seed(0))


def test_swiss_roll_points_lie_on_their_spiral_arm():
    x, y = noiseless("swiss_roll")
    r = x.norm(dim=1).double()
    r0, r1 = SWISS_ROLL_RADII
    s = (r - r0) / (r1 - r0)  # the radius fixes the position along the arm ...
    assert s.min() >= -1e-6 and s.max() <= 1 + 1e-6
    theta = 2 * math.pi * SWISS_ROLL_TURNS * s + math.pi * y
    # ... and with it the angle: arm 1 is arm 0 rotated by pi
    expected = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-5)


def test_double_circles_points_lie_on_their_class_circle():
    x, y = noiseless("double_circles")
    torch.testing.assert_close(x.norm(dim=1), torch.tensor(CIRCLE_RADII)[y], rtol=0, atol=1e-6)


def test_double_moons_points_lie_on_their_half_circle():
    x, y = noiseless("double_moons")
    x = x + torch.tensor(MOONS_CENTRE)
    upper, lower = x[y == 0], x[y == 1]
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(len(upper)), rtol=0, atol=1e-6)
    assert (upper[:, 1] >= -1e-6).all()
    centre = torch.tensor([1.0, 0.5])
    torch.testing.assert_close((lower - centre).norm(dim=1), torch.ones(len(lower)), rtol=0, atol=1e-6)
    assert (lower[:, 1] <= 0.5 + 1e-6).all()


def test_reference_swiss_roll_arms_share_their_angles_and_differ_in_radius():
    n = 400
    x, y = noiseless("swiss_roll_reference", n)
    assert torch.bincount(y).tolist() == [200, 200]
    k = torch.arange(200, dtype=torch.float64)
    theta = 2 * math.pi * REFERENCE_SWISS_ROLL_TURNS * k / 200
    for label, r0 in ((0, REFERENCE_SWISS_ROLL_OFFSET), (1, 0.0)):
        r = r0 + k / 199
        expected = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
        torch.testing.assert_close(x[y == label].double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(noiseless("swiss_roll_reference", n)[0], x)  # no randomness at all


def test_reference_double_circles_are_four_jittered_rings_with_alternating_labels():
    x, y = noiseless("double_circles_reference", 4000)
    assert torch.bincount(y).tolist() == [2000, 2000]
    r = x.norm(dim=1)
    ring = (r - 0.5).floor().long().clamp(0, 3)  # rings of radius 1..4 jittered by at most 0.3 * sqrt(2)
    assert torch.equal(y, ring % 2)  # labels 0, 1, 0, 1 from the inside out
    for i, radius in enumerate(REFERENCE_RING_RADII):
        points = x[ring == i]
        assert len(points) == 1000
        assert (r[ring == i] - radius).abs().max() <= REFERENCE_RING_JITTER * math.sqrt(2) + 1e-6
    # the jitter is uniform on [-0.3, 0.3] in each coordinate: its variance is 0.3^2 / 3
    theta = 4 * 3.14 * torch.arange(1000) / 1000
    ideal = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    jitter = x[:1000] - REFERENCE_RING_RADII[0] * ideal
    assert jitter.abs().max() <= REFERENCE_RING_JITTER + 1e-6
    assert jitter.var().item() == pytest.approx(REFERENCE_RING_JITTER**2 / 3, rel=0.1)


@pytest.mark.parametrize("name", available_toy2d())
def test_noise_has_the_requested_spread(name):
    make, _ = TOY2D[name]
    clean = make(20000, 0.0, torch.Generator().manual_seed(3))[0]
    noisy = make(20000, 0.1, torch.Generator().manual_seed(3))[0]
    # same generator stream: the noise is drawn after the clean points
    assert (noisy - clean).std().item() == pytest.approx(0.1, rel=0.03)


@pytest.mark.parametrize("name", available_toy2d())
def test_load_gives_balanced_disjoint_seeded_splits(name):
    train, test = load_toy2d(name, n_train=300, n_test=101, seed=5)
    x_train, y_train = train.tensors
    x_test, y_test = test.tensors
    assert x_train.shape == (300, 2) and x_test.shape == (101, 2)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    counts = torch.bincount(torch.cat([y_train, y_test]))
    assert counts.tolist() == [200, 201]
    assert 0.3 < y_train.float().mean() < 0.7  # the split is shuffled, not by class
    assert not (x_train[:, None, :] == x_test[None, :, :]).all(-1).any()
    again = load_toy2d(name, n_train=300, n_test=101, seed=5)[0].tensors[0]
    other = load_toy2d(name, n_train=300, n_test=101, seed=6)[0].tensors[0]
    assert torch.equal(again, x_train) and not torch.equal(other, x_train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "spirals"},
            r"unknown 2-D data set 'spirals'; known: \['double_circles', 'double_circles_reference', ",
        ),
        ({"n_train": 1}, r"n_train must be an int >= 2 \(one point per class\), got 1"),
        ({"n_test": 10.5}, "n_test must be an int >= 2"),
        ({"noise": -0.1}, "noise must be >= 0, got -0.1"),
    ],
)
def test_bad_options_get_a_clear_error(kwargs, message):
    kwargs = {"name": "double_moons", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_toy2d(**kwargs)


def test_registry_lists_hrnns_sets_and_the_references():
    assert available_toy2d() == [
        "double_circles",
        "double_circles_reference",
        "double_moons",
        "swiss_roll",
        "swiss_roll_reference",
    ]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the script sets its own thread count


def test_hdnn_2d_script_learns_double_moons_and_saves_the_plot(tmp_path, capsys, restore_threads):
    out = tmp_path / "boundary.png"
    args = ["--dataset", "double_moons", "--model", "H2", "--depth", "8", "--epochs", "15"]
    accuracy = hdnn_2d.main([*args, "--n-train", "200", "--n-test", "200", "--out", str(out)])
    assert accuracy >= 0.9
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"test accuracy: {accuracy:.4f}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "boundary_states.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_preset_sets_the_papers_2d_settings_and_flags_override_it():
    config = hdnn_2d.parse_args(["--preset", "paper", "--depth", "8"])
    assert (config.width, config.t_end, config.alpha, config.convention) == (4, 1.2, 5e-4, "reference")
    assert config.depth == 8 and (config.n_train, config.n_test, config.batch_size) == (4000, 4000, 125)
    assert hdnn_2d.parse_args([]).depth == hdnn_2d.Config().depth


def test_decision_basis_is_orthonormal_with_the_hyperplane_normal_first():
    head = torch.nn.Linear(4, 2)
    basis = hdnn_2d.decision_basis(head, torch.randn(50, 4))
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), rtol=0, atol=1e-6)
    normal = head.weight[1] - head.weight[0]
    torch.testing.assert_close(basis[:, 0], normal / normal.norm(), rtol=0, atol=1e-6)
