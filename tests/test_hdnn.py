"""Feed-forward H-DNNs: structures, symplecticity and sensitivity at depth, inverses, the regulariser,
the distributed form and input checks (float64 wherever numbers are compared)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from experiments import hdnn_mnist
from hrnn.hamiltonians import hdnn_vector_field
from hrnn.hdnn import (
    HDNNClassifier,
    available_hdnns,
    build_hdnn,
    distributed_mask,
    per_node_forward,
    smoothness_regularizer,
)
from tasks.idx import DataError

F64 = torch.float64
SEPARABLE = ["H2", "MS1", "MS3"]


def random_hdnn(name: str, n: int = 4, depth: int = 10, t_end: float = 1.0, **kwargs):
    """A float64 network with random weights and (unlike the default init) random biases."""
    model = build_hdnn(name, n, depth, t_end, dtype=F64, **kwargs)
    with torch.no_grad():
        model.bias.normal_()
    return model


def blocks(K: torch.Tensor):
    m = K.shape[-1] // 2
    return K[..., :m, :m], K[..., :m, m:], K[..., m:, :m], K[..., m:, m:]


def symplecticity_error(M: torch.Tensor, J: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(M.T @ J @ M - J).item()


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the experiment scripts set their own thread count


def test_registry_lists_the_five_networks_and_rejects_unknown_names():
    assert available_hdnns() == ["H1", "H2", "MS1", "MS2", "MS3"]
    with pytest.raises(
        ValueError, match=r"unknown H-DNN variant 'H3'; known: \['H1', 'H2', 'MS1', 'MS2', 'MS3'\]"
    ):
        build_hdnn("H3", 4, 2)


def test_layer_weights_have_each_variants_structure():
    n, depth = 6, 3
    models = {name: random_hdnn(name, n, depth) for name in available_hdnns()}
    K = {name: model.layer_weights() for name, model in models.items()}
    assert K["H1"].shape == (depth, n, n) and torch.equal(K["H1"], models["H1"].weight)
    w11, _, _, w22 = blocks(models["H2"].weight)
    k11, k12, k21, k22 = blocks(K["H2"])
    assert torch.equal(k11, w11) and torch.equal(k22, w22) and not k12.any() and not k21.any()
    k11, k12, k21, k22 = blocks(K["MS1"])
    assert not k11.any() and not k22.any() and torch.equal(k12, blocks(models["MS1"].weight)[1])
    assert torch.equal(k21, -k12.mT)
    torch.testing.assert_close(K["MS2"], -K["MS2"].mT, rtol=0, atol=0)
    k11, k12, k21, k22 = blocks(K["MS3"])
    assert not k11.any() and not k22.any() and torch.equal(k12, blocks(models["MS3"].weight)[1])
    assert torch.equal(k21, blocks(models["MS3"].weight)[2])


@pytest.mark.parametrize("name", SEPARABLE)
def test_separable_energy_gives_the_general_hdnn_field(name):
    # The symplectic path steps (dp/dt, dq/dt) = (-grad_v(q), grad_t(p)) of each layer's separable
    # energy; that must be the papers' field J K^T tanh(K y + b) with the layer's own K and J.
    model = random_hdnn(name, n=6, depth=3)
    energy = model.layer_hamiltonians()
    y = torch.randn(5, 6, dtype=F64)
    p, q = y[:, :3], y[:, 3:]
    for k in range(3):
        layer = type(energy)(energy.K_p[k], energy.K_q[k], energy.b_p[k], energy.b_q[k], X=energy.X)
        field = torch.cat([-layer.grad_v(q), layer.grad_t(p)], 1)
        expected = hdnn_vector_field(y, model.layer_weights()[k], model.bias[k], model.J)
        torch.testing.assert_close(field, expected, rtol=1e-13, atol=1e-13)


def test_h2_forward_equals_the_papers_semi_implicit_update_by_hand():
    model = random_hdnn("H2", n=4, depth=3, t_end=0.9)
    y = torch.randn(7, 4, dtype=F64)
    p, q, h = y[:, :2], y[:, 2:], 0.3
    for k in range(3):
        K_p, _, _, K_q = blocks(model.weight[k])
        b_p, b_q = model.bias[k, :2], model.bias[k, 2:]
        p = p - h * torch.tanh(q @ K_q.T + b_q) @ K_q
        q = q + h * torch.tanh(p @ K_p.T + b_p) @ K_p
    torch.testing.assert_close(model(y), torch.cat([p, q], 1), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", SEPARABLE)
def test_forward_euler_on_a_separable_network_equals_the_general_field_loop(name):
    model = random_hdnn(name, n=6, depth=4, t_end=2.0, scheme="euler")
    y0 = torch.randn(3, 6, dtype=F64)
    y = y0
    for K, b in zip(model.layer_weights(), model.bias, strict=True):
        y = y + model.h * hdnn_vector_field(y, K, b, model.J)
    torch.testing.assert_close(model(y0), y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("name", "scheme"), [("H2", None), ("H2", "verlet"), ("MS1", None), ("MS3", None)])
def test_symplectic_networks_have_symplectic_jacobians(name, scheme):
    model = random_hdnn(name, n=6, depth=30, t_end=3.0, scheme=scheme)
    M = jacobian(model, torch.randn(6, dtype=F64))
    assert symplecticity_error(M, model.J) < 1e-10


@pytest.mark.parametrize("name", ["H1", "MS2"])
def test_forward_euler_networks_are_not_symplectic(name):
    model = random_hdnn(name, n=6, depth=30, t_end=3.0)
    M = jacobian(model, torch.randn(6, dtype=F64))
    assert symplecticity_error(M, model.J) > 1e-4


def test_h2_sensitivity_at_depth_1000_cannot_vanish_while_h1_grows():
    y0 = torch.randn(4, dtype=F64)
    h2 = random_hdnn("H2", n=4, depth=1000, t_end=10.0)
    M = jacobian(h2, y0, vectorize=True)
    s = torch.linalg.svdvals(M)
    assert torch.linalg.matrix_norm(M, ord=2).item() >= 1 - 1e-9
    assert s[-1] < 1  # some directions do shrink, so the bound is not met trivially ...
    torch.testing.assert_close(
        s * s.flip(0), torch.ones_like(s), rtol=0, atol=1e-9
    )  # ... they pair as (s, 1/s)
    assert torch.linalg.det(M).item() == pytest.approx(1.0, abs=1e-9)

    h1 = random_hdnn("H1", n=4, depth=1000, t_end=10.0)
    M1 = jacobian(h1, y0, vectorize=True)
    s1 = torch.linalg.svdvals(M1)
    # each forward Euler factor I + h J K^T D K has det prod(1 + h^2 w^2) >= 1: volume grows
    assert torch.linalg.det(M1).item() > 1.05
    assert (s1 * s1.flip(0) - 1).abs().max() > 1e-2
    assert symplecticity_error(M1, h1.J) > 1e-4


@pytest.mark.parametrize(("name", "scheme"), [("H2", None), ("H2", "verlet"), ("MS1", None), ("MS3", None)])
def test_inverse_reconstructs_the_input_after_1000_layers(name, scheme):
    model = random_hdnn(name, n=4, depth=1000, t_end=50.0, scheme=scheme)
    y0 = torch.randn(16, 4, dtype=F64)
    with torch.no_grad():
        y = model(y0)
        assert (y - y0).abs().max() > 1.0
        assert (model.inverse(y) - y0).abs().max().item() < 1e-8


@pytest.mark.parametrize("name", ["H1", "MS2"])
def test_forward_euler_networks_have_no_inverse(name):
    model = random_hdnn(name)
    with pytest.raises(ValueError, match=f"scheme 'euler' of {name} has no exact inverse"):
        model.inverse(torch.zeros(1, 4, dtype=F64))


def test_regularizer_equals_the_hand_computation():
    K = torch.tensor([[[1.0, 0], [0, 1]], [[1, 2], [0, 1]], [[0, 2], [0, 0]]], dtype=F64)
    b = torch.tensor([[0.0, 0], [1, 0], [1, 3]], dtype=F64)
    # ||dK||^2 = 4 + 2, ||db||^2 = 1 + 9: R = alpha * h * (6 + 10) / 2 = 0.5 * 0.25 * 8
    assert smoothness_regularizer(K, b, h=0.25, alpha=0.5).item() == pytest.approx(1.0, abs=1e-15)
    model = build_hdnn("H1", 2, 3, t_end=0.75, dtype=F64)  # h = 0.25, K_j = weight_j
    with torch.no_grad():
        model.weight.copy_(K)
        model.bias.copy_(b)
    assert model.regularizer(0.5).item() == pytest.approx(1.0, abs=1e-15)
    assert smoothness_regularizer(K[:1], b[:1], h=1.0, alpha=1.0).item() == 0.0


def test_regularizer_rejects_mismatched_shapes():
    with pytest.raises(
        ValueError,
        match=r"expected K of shape \(N, n, n\) and b of shape \(N, n\), got \(3, 2, 2\) and \(2, 2\)",
    ):
        smoothness_regularizer(torch.zeros(3, 2, 2), torch.zeros(2, 2), h=1.0, alpha=1.0)


def test_distributed_mask_is_blockdiag_of_adjacency_with_self_loops():
    edges = [(0, 1), (1, 2), (3, 2)]
    A = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=F64)
    expected = torch.block_diag(A, A)
    assert torch.equal(distributed_mask(edges, 4, dtype=F64), expected)
    assert torch.equal(distributed_mask(A - torch.eye(4, dtype=F64), dtype=F64), expected)


@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_per_node_evaluation_equals_the_dense_forward(scheme):
    n_nodes = 6
    mask = distributed_mask([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 3)], n_nodes, dtype=F64)
    model = random_hdnn("H2", n=2 * n_nodes, depth=8, t_end=2.0, mask=mask, scheme=scheme)
    K = model.layer_weights()
    assert not K[:, mask == 0].any()  # the mask really sparsifies K
    y = torch.randn(5, 2 * n_nodes, dtype=F64)
    dense = model(y)
    assert (dense - y).abs().max() > 0.1
    torch.testing.assert_close(per_node_forward(model, y), dense, rtol=0, atol=1e-12)


def test_per_node_evaluation_reads_only_neighbour_weights_and_states():
    # Two components {0, 1, 2} and {3, 4}. Weights outside the graph and the states of the second
    # component are NaN: the dense forward is poisoned (NaN * 0 = NaN), the per-node one is not.
    n_nodes = 5
    mask = distributed_mask([(0, 1), (1, 2), (3, 4)], n_nodes, dtype=F64)
    model = random_hdnn("H2", n=2 * n_nodes, depth=4, mask=mask)
    y = torch.randn(3, 2 * n_nodes, dtype=F64)
    clean = model(y)
    with torch.no_grad():
        model.weight[:, mask == 0] = float("nan")
    poisoned = y.clone()
    poisoned[:, [3, 4, 8, 9]] = float("nan")  # p and q of nodes 3 and 4
    assert model(y).isnan().all()
    first = [0, 1, 2, 5, 6, 7]
    torch.testing.assert_close(
        per_node_forward(model, poisoned)[:, first], clean[:, first], rtol=0, atol=1e-12
    )


def test_per_node_evaluation_needs_the_distributed_h2_form():
    with pytest.raises(ValueError, match="per-node evaluation needs block-diagonal K and X = I"):
        per_node_forward(random_hdnn("MS1"), torch.zeros(1, 4, dtype=F64))


@pytest.mark.parametrize(
    ("graph", "n_nodes", "message"),
    [
        ([(0, 5)], 3, r"edge endpoints must lie in \[0, 3\)"),
        ([(0, 1)], None, "an edge list needs n_nodes"),
        (torch.ones(2, 3), None, r"square \(n_nodes, n_nodes\) matrix, got \(2, 3\)"),
    ],
)
def test_bad_graphs_get_a_clear_error(graph, n_nodes, message):
    with pytest.raises(ValueError, match=message):
        distributed_mask(graph, n_nodes)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"name": "H2", "n_features": 5},
            ValueError,
            "H2 splits the state into \\(p, q\\) halves and needs an even n_features, got 5",
        ),
        ({"name": "MS3", "n_features": 3}, ValueError, "needs an even n_features, got 3"),
        ({"name": "H1", "n_features": 5}, ValueError, "J1 needs an even state width, got 5"),
        ({"name": "H2", "depth": 0}, ValueError, "depth must be a positive int, got 0"),
        (
            {"name": "H2", "t_end": 0.0},
            ValueError,
            r"t_end must be finite and > 0 \(the step is h = t_end / depth\), got 0.0",
        ),
        ({"name": "H2", "t_end": -1.0}, ValueError, "t_end must be finite and > 0 .*, got -1.0"),
        ({"name": "H2", "t_end": float("nan")}, ValueError, "t_end must be finite and > 0 .*, got nan"),
        ({"name": "H1", "j": "J3"}, ValueError, r"unknown J 'J3'; known: \['J1', 'J2', 'canonical'\]"),
        ({"name": "H1", "scheme": "symplectic_euler"}, ValueError, "needs K split into \\(p, q\\) halves"),
        ({"name": "H2", "j": "J2", "scheme": "verlet"}, ValueError, "needs K split into \\(p, q\\) halves"),
        ({"name": "H2", "scheme": "rk4"}, ValueError, "unknown integration scheme 'rk4'"),
        (
            {"name": "H2", "mask": torch.ones(3, 3)},
            ValueError,
            r"mask must have shape \(4, 4\), got \(3, 3\)",
        ),
    ],
)
def test_bad_configurations_get_a_clear_error(kwargs, error, message):
    kwargs = {"n_features": 4, "depth": 2, **kwargs}
    with pytest.raises(error, match=message):
        build_hdnn(**kwargs)


def test_h1_with_j2_accepts_an_odd_width():
    model = random_hdnn("H1", n=5, depth=3, j="J2")
    assert model(torch.randn(2, 5, dtype=F64)).shape == (2, 5)


@pytest.mark.parametrize(
    ("y", "error", "message"),
    [
        (torch.zeros(3, 5, dtype=F64), ValueError, r"expected input of shape \(\*, 4\), got \(3, 5\)"),
        (torch.zeros((), dtype=F64), ValueError, r"expected input of shape \(\*, 4\), got \(\)"),
        (torch.zeros(3, 4), TypeError, "input has dtype torch.float32 but the parameters have torch.float64"),
        ([0.0] * 4, TypeError, "input must be a torch.Tensor, got list"),
    ],
)
def test_bad_inputs_get_a_clear_error(y, error, message):
    for name in ("H1", "H2"):
        with pytest.raises(error, match=message):
            random_hdnn(name)(y)


def test_unbatched_input_gives_the_batched_result():
    model = random_hdnn("H2")
    y = torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(model(y[1]), model(y)[1], rtol=1e-15, atol=1e-15)


def test_double_converts_parameters_and_buffers():
    model = build_hdnn("MS1", 4, 3, mask=torch.ones(4, 4))
    assert model.weight.dtype == model.J.dtype == model.X.dtype == model.mask.dtype == torch.float32
    model = model.double()
    assert model.weight.dtype == model.J.dtype == model.X.dtype == model.mask.dtype == F64


def test_classifier_pads_the_input_and_reads_out_the_final_state():
    hdnn = random_hdnn("H2", n=4, depth=5)
    classifier = HDNNClassifier(2, 3, hdnn)
    x = torch.randn(8, 2, dtype=F64)
    expected = classifier.head(hdnn(torch.cat([x, torch.zeros(8, 2, dtype=F64)], 1)))
    torch.testing.assert_close(classifier(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 2\), got \(8, 3\)"):
        classifier(torch.randn(8, 3, dtype=F64))
    with pytest.raises(ValueError, match="in_features=6 does not fit the H-DNN's width n_features=4"):
        HDNNClassifier(6, 3, hdnn)


def test_gradients_reach_every_layer_through_the_classifier():
    classifier = HDNNClassifier(2, 2, random_hdnn("H2", n=4, depth=64, t_end=4.0))
    loss = torch.nn.functional.cross_entropy(
        classifier(torch.randn(16, 2, dtype=F64)), torch.randint(0, 2, (16,))
    )
    loss.backward()
    per_layer = classifier.hdnn.weight.grad.flatten(1).norm(dim=1)
    assert (per_layer > 0).all()
    # no vanishing: the first layer's gradient is of the same order as the last one's
    assert per_layer[0] > 1e-2 * per_layer[-1]


def test_mnist_split_is_disjoint_seeded_and_standardised_on_the_training_images(mnist_dir):
    train, test = hdnn_mnist.mnist_split(mnist_dir, n_train=800, n_test=200, seed=3)
    x_train, y_train = train.tensors
    x_test = test.tensors[0]
    assert x_train.shape == (800, 1, 28, 28) and x_test.shape == (200, 1, 28, 28)
    assert y_train.dtype == torch.int64 and set(y_train.tolist()) == set(range(10))
    assert x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x_train.std().item() == pytest.approx(1.0, abs=1e-5)
    flat_train, flat_test = x_train.flatten(1), x_test.flatten(1)
    assert not (flat_train[:, None, :] == flat_test[None, :, :]).all(-1).any()  # no image in both
    again = hdnn_mnist.mnist_split(mnist_dir, n_train=800, n_test=200, seed=3)[0].tensors[1]
    other = hdnn_mnist.mnist_split(mnist_dir, n_train=800, n_test=200, seed=4)[0].tensors[1]
    assert torch.equal(again, y_train) and not torch.equal(other, y_train)
    with pytest.raises(ValueError, match=r"n_train \+ n_test = 10001 exceeds the 10000 images in"):
        hdnn_mnist.mnist_split(mnist_dir, n_train=9001, n_test=1000, seed=0)


def test_hdnn_mnist_script_learns_real_digits(mnist_dir, capsys, restore_threads):
    args = ["--data", str(mnist_dir), "--n-train", "1000", "--n-test", "500", "--epochs", "3"]
    accuracy = hdnn_mnist.main([*args, "--batch-size", "32"])
    assert accuracy >= 0.6  # chance is 0.1; the full default run reaches 0.98
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"test accuracy: {accuracy:.4f}"


def test_hdnn_mnist_script_names_a_missing_data_folder(tmp_path, restore_threads):
    with pytest.raises(DataError, match=r"MNIST folder not found: .*nowhere"):
        hdnn_mnist.main(["--data", str(tmp_path / "nowhere")])
