"""Feed-forward H-DNNs: structures, symplecticity and sensitivity at depth, inverses, the regulariser,
the distributed form and input checks (float64 wherever numbers are compared)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from experiments import hdnn_mnist
from hrnn.hamiltonians import hdnn_vector_field, j1, j2
from hrnn.hdnn import (
    CONVENTIONS,
    HDNN_VARIANTS,
    HDNNClassifier,
    available_hdnns,
    build_hdnn,
    distributed_mask,
    per_node_forward,
    smoothness_regularizer,
)
from tasks.idx import DataError

F64 = torch.float64
# Hamiltonian variants stepped on (p, q) halves; MS1 is split too, but its field tanh(K y + b) has no energy
SEPARABLE = [n for n, v in HDNN_VARIANTS.items() if v.structure.halves and v.field.uses_j]
INVERTIBLE = [n for n, v in HDNN_VARIANTS.items() if v.structure.halves]
FORWARD_EULER = [n for n, v in HDNN_VARIANTS.items() if not v.structure.halves]


def random_hdnn(name: str, n: int = 4, depth: int = 10, t_end: float = 1.0, **kwargs):
    """A float64 network with random weights and (unlike the default init) random biases."""
    return build_hdnn(name, n, depth, t_end, dtype=F64, bias_std=1.0, **kwargs)


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


def test_registry_lists_the_networks_and_rejects_unknown_names():
    assert available_hdnns() == ["H1", "H1_skew", "H2", "MS1", "MS2", "MS3", "MS3_tied"]
    with pytest.raises(ValueError, match=r"unknown H-DNN variant 'H3'; known: \['H1', 'H1_skew', 'H2', "):
        build_hdnn("H3", 4, 2)


def test_layer_weights_have_each_variants_structure():
    n, depth = 6, 3
    models = {name: random_hdnn(name, n, depth) for name in available_hdnns()}
    K = {name: model.layer_weights() for name, model in models.items()}
    assert K["H1"].shape == (depth, n, n) and torch.equal(K["H1"], models["H1"].weight)
    w11, _, _, w22 = blocks(models["H2"].weight)
    k11, k12, k21, k22 = blocks(K["H2"])
    assert torch.equal(k11, w11) and torch.equal(k22, w22) and not k12.any() and not k21.any()
    for name in ("MS1", "MS3_tied"):
        k11, k12, k21, k22 = blocks(K[name])
        assert not k11.any() and not k22.any() and torch.equal(k12, blocks(models[name].weight)[1])
        assert torch.equal(k21, -k12.mT)
    for name in ("MS2", "H1_skew"):
        W = models[name].weight
        torch.testing.assert_close(K[name], (W - W.mT) / 2, rtol=0, atol=0)
        skew = K[name]
        assert torch.equal(models[name].structure.build(skew), skew)  # a skew weight is its own K
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


# The papers' updates written out by hand, row-vector form (x @ K.T is K x). Each takes the raw
# weight W and bias b of one layer, the halves (p, q) = (y[:m], y[m:]), and whether q moves first.


def _tanh_rows(x, K, b):
    return torch.tanh(x @ K.T + b)


def _hand_h1(y, W, b, h, J):
    return y + h * _tanh_rows(y, W, b) @ W @ J.T  # y + h J K^T tanh(K y + b)


def _hand_ms2(y, W, b, h, J):
    S = (W - W.T) / 2
    return y + h * _tanh_rows(y, S, b)  # y + h tanh(K y + b), K skew


def _alternate(p, q, move_p, move_q, q_first):
    if q_first:
        q = move_q(p, q)
        return move_p(p, q), q
    p = move_p(p, q)
    return p, move_q(p, q)


def _hand_h2(p, q, W, b, h, q_first):
    m = p.shape[-1]
    Kp, Kq, bp, bq = W[:m, :m], W[m:, m:], b[:m], b[m:]
    # dp/dt = -Kq^T tanh(Kq q + bq), dq/dt = Kp^T tanh(Kp p + bp)
    return _alternate(
        p,
        q,
        lambda p, q: p - h * _tanh_rows(q, Kq, bq) @ Kq,
        lambda p, q: q + h * _tanh_rows(p, Kp, bp) @ Kp,
        q_first,
    )


def _hand_ms1(p, q, W, b, h, q_first):
    m = p.shape[-1]
    K0 = W[:m, m:]
    # y' = y + h tanh(K y + b), K = [[0, K0], [-K0^T, 0]], one half after the other
    return _alternate(
        p,
        q,
        lambda p, q: p + h * _tanh_rows(q, K0, b[:m]),
        lambda p, q: q + h * _tanh_rows(p, -K0.T, b[m:]),
        q_first,
    )


def _hand_ms3(p, q, W, b, h, q_first):
    m = p.shape[-1]
    K1, K2 = W[:m, m:], W[m:, :m]
    # K = [[0, K1], [K2, 0]], J1 = [[0, I], [-I, 0]]: dp/dt = K1^T tanh(K1 q + b1), dq/dt = -K2^T tanh(K2 p + b2)
    return _alternate(
        p,
        q,
        lambda p, q: p + h * _tanh_rows(q, K1, b[:m]) @ K1,
        lambda p, q: q - h * _tanh_rows(p, K2, b[m:]) @ K2,
        q_first,
    )


WHOLE = {"H1": _hand_h1, "MS2": _hand_ms2}
HALVES = {"H2": _hand_h2, "MS1": _hand_ms1, "MS3": _hand_ms3}
PAPER_CASES = [("H1", "J1"), ("H1", "J2"), ("H2", None), ("MS1", None), ("MS2", None), ("MS3", None)]
J_BY_CONVENTION = {("hrnn", "J1"): "J1", ("reference", "J1"): "canonical"}  # the reference code's J1 sign


def hand_states(model, y, name, convention, j):
    """y_0, ..., y_N of the paper's update by hand, in ``convention``'s order and J."""
    states, m = [y], model.n_features // 2
    J = {"J1": j1(4, dtype=F64), "J2": j2(4, dtype=F64), "canonical": -j1(4, dtype=F64)}.get(
        J_BY_CONVENTION.get((convention, j), j)
    )
    for W, b in zip(model.weight, model.bias, strict=True):
        if name in WHOLE:
            y = WHOLE[name](y, W, b, model.h, J)
        else:
            y = torch.cat(HALVES[name](y[:, :m], y[:, m:], W, b, model.h, convention == "reference"), 1)
        states.append(y)
    return torch.stack(states)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize(("name", "j"), PAPER_CASES)
def test_every_network_equals_the_papers_update_by_hand(name, j, convention):
    model = random_hdnn(
        name, n=4, depth=6, t_end=1.8, convention=convention, **({"j": "J2"} if j == "J2" else {})
    )
    y = torch.randn(7, 4, dtype=F64)
    expected = hand_states(model, y, name, convention, j)
    out, states = model(y, return_states=True)
    assert states.shape == (7, 7, 4)
    torch.testing.assert_close(states, expected, rtol=0, atol=1e-12)
    assert torch.equal(out, states[-1]) and torch.equal(model(y), out)
    assert (states[-1] - y).abs().max() > 0.1  # the layers really move the state


def test_the_conventions_differ_only_where_documented():
    y = torch.randn(5, 4, dtype=F64)
    for name in ("H2", "MS1", "MS3"):  # same weights, the other half first: a different network
        a = random_hdnn(name, convention="hrnn")
        b = random_hdnn(name, convention="reference")
        b.load_state_dict(a.state_dict())
        assert (a(y) - b(y)).abs().max() > 1e-3
    h1 = random_hdnn("H1", convention="reference")
    assert h1.j_name == "canonical" and torch.equal(h1.J, -j1(4, dtype=F64))
    for name in ("MS2", "H1_skew"):
        a, b = random_hdnn(name), random_hdnn(name, convention="reference")
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(y), b(y), rtol=0, atol=0)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize("name", SEPARABLE)
def test_forward_euler_on_a_separable_network_equals_the_general_field_loop(name, convention):
    model = random_hdnn(name, n=6, depth=4, t_end=2.0, scheme="euler", convention=convention)
    y0 = torch.randn(3, 6, dtype=F64)
    y = y0
    for K, b in zip(model.layer_weights(), model.bias, strict=True):
        y = y + model.h * hdnn_vector_field(y, K, b, model.J)
    torch.testing.assert_close(model(y0), y, rtol=1e-13, atol=1e-13)


SYMPLECTIC = [(name, None) for name in SEPARABLE] + [("H2", "verlet")]


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize(("name", "scheme"), SYMPLECTIC)
def test_symplectic_networks_have_symplectic_jacobians(name, scheme, convention):
    model = random_hdnn(name, n=6, depth=30, t_end=3.0, scheme=scheme, convention=convention)
    M = jacobian(model, torch.randn(6, dtype=F64))
    assert symplecticity_error(M, model.J) < 1e-10


def test_ms1_preserves_volume_but_is_not_symplectic():
    # each half-update is a shear (det 1); its block h D K0 is not symmetric, so no J is preserved
    model = random_hdnn("MS1", n=6, depth=30, t_end=3.0)
    M = jacobian(model, torch.randn(6, dtype=F64))
    assert torch.linalg.det(M).item() == pytest.approx(1.0, abs=1e-10)
    assert symplecticity_error(M, j1(6, dtype=F64)) > 1e-3
    assert symplecticity_error(M, -j1(6, dtype=F64)) > 1e-3


@pytest.mark.parametrize("name", FORWARD_EULER)
def test_forward_euler_networks_are_not_symplectic(name):
    model = random_hdnn(name, n=6, depth=30, t_end=3.0)
    M = jacobian(model, torch.randn(6, dtype=F64))
    assert symplecticity_error(M, j1(6, dtype=F64)) > 1e-4


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


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize(("name", "scheme"), [(name, None) for name in INVERTIBLE] + [("H2", "verlet")])
def test_inverse_reconstructs_the_input_after_1000_layers(name, scheme, convention):
    model = random_hdnn(name, n=4, depth=1000, t_end=50.0, scheme=scheme, convention=convention)
    y0 = torch.randn(16, 4, dtype=F64)
    with torch.no_grad():
        y = model(y0)
        assert (y - y0).abs().max() > 1.0
        assert (model.inverse(y) - y0).abs().max().item() < 1e-8


@pytest.mark.parametrize("name", FORWARD_EULER)
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


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize("scheme", ["symplectic_euler", "verlet"])
def test_per_node_evaluation_equals_the_dense_forward(scheme, convention):
    n_nodes = 6
    mask = distributed_mask([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 3)], n_nodes, dtype=F64)
    model = random_hdnn(
        "H2", n=2 * n_nodes, depth=8, t_end=2.0, mask=mask, scheme=scheme, convention=convention
    )
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
            {"name": "H2", "convention": "paper"},
            ValueError,
            r"unknown convention 'paper'; known: \['hrnn', 'reference'\]",
        ),
        (
            {"name": "MS1", "j": "J2"},
            ValueError,
            r"MS1 has no J \(its field is tanh\(K y \+ b\) \(J K = I\)\)",
        ),
        ({"name": "MS2", "scheme": "verlet"}, ValueError, "needs K split into \\(p, q\\) halves"),
        ({"name": "H2", "bias_std": -1.0}, ValueError, "bias_std must be >= 0, got -1.0"),
        (
            {"name": "H2", "memory": "cheap"},
            ValueError,
            r"unknown memory mode 'cheap'; known: \['reversible', 'stored'\]",
        ),
        (
            {"name": "H1", "memory": "reversible"},
            ValueError,
            r"memory='reversible' recomputes states by the exact inverse step, and scheme 'euler' of H1 has none",
        ),
        ({"name": "H2", "anchor_every": 10}, ValueError, "anchor_every applies only to memory='reversible'"),
        (
            {"name": "H2", "memory": "reversible", "anchor_every": 0},
            ValueError,
            "anchor_every must be a positive int",
        ),
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
    model = build_hdnn("MS3", 4, 3, mask=torch.ones(4, 4))
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


def test_reference_placement_puts_a_2d_point_at_the_first_and_last_feature():
    hdnn = random_hdnn("H1", n=6, depth=3, convention="reference")
    classifier = HDNNClassifier(2, 1, hdnn)
    x = torch.randn(5, 2, dtype=F64)
    y0 = torch.zeros(5, 6, dtype=F64)
    y0[:, 0], y0[:, 5] = x[:, 0], x[:, 1]
    assert classifier.placement == "spread" and torch.equal(classifier.initial_state(x), y0)
    torch.testing.assert_close(classifier(x), classifier.head(hdnn(y0)), rtol=0, atol=0)
    padded = HDNNClassifier(2, 1, hdnn, placement="pad_end").initial_state(x)
    assert torch.equal(padded[:, :2], x) and not padded[:, 2:].any()
    with pytest.raises(ValueError, match=r"unknown placement 'middle'; known: \['pad_end', 'spread'\]"):
        HDNNClassifier(2, 1, hdnn, placement="middle")


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


def test_paper_architecture_applies_the_hdnn_to_every_pixels_channels():
    config = hdnn_mnist.parse_args(["--preset", "paper", "--depth", "3"])
    assert (config.architecture, config.channels, config.convention, config.depth) == (
        "paper",
        8,
        "reference",
        3,
    )
    model = hdnn_mnist.ARCHITECTURES["paper"](config).double()
    x = torch.randn(2, 1, 28, 28, dtype=F64)
    features = model.conv(x)  # (2, 8, 28, 28)
    by_pixel = torch.stack(
        [torch.stack([model.hdnn(features[:, :, i, j]) for j in range(28)], -1) for i in range(28)], -2
    )
    torch.testing.assert_close(model(x), model.head(by_pixel.flatten(1)), rtol=0, atol=1e-12)


def test_mlp_baseline_is_the_tanh_layer_stack():
    mlp = hdnn_mnist.TanhMLP(4, 3, bias_std=1.0).double()
    y0 = torch.randn(5, 4, dtype=F64)
    y = y0
    for K, b in zip(mlp.weight, mlp.bias, strict=True):
        y = torch.tanh(y @ K.T + b)
    torch.testing.assert_close(mlp(y0), y, rtol=0, atol=1e-15)
    assert mlp.regularizer(1.0).item() > 0


def test_hdnn_mnist_paper_preset_learns_real_digits(mnist_dir, restore_threads):
    args = ["--preset", "paper", "--data", str(mnist_dir), "--n-train", "1000", "--n-test", "300"]
    accuracy = hdnn_mnist.main([*args, "--epochs", "2"])
    assert accuracy >= 0.5  # chance is 0.1


def test_hdnn_mnist_script_names_a_missing_data_folder(tmp_path, restore_threads):
    with pytest.raises(DataError, match=r"MNIST folder not found: .*nowhere"):
        hdnn_mnist.main(["--data", str(tmp_path / "nowhere")])


def reversible_pair(name: str, depth: int, anchor_every: int | None = None, **kwargs):
    stored = random_hdnn(name, n=4, depth=depth, t_end=depth / 10, **kwargs)
    reversible = random_hdnn(
        name, n=4, depth=depth, t_end=depth / 10, memory="reversible", anchor_every=anchor_every, **kwargs
    )
    reversible.load_state_dict(stored.state_dict())
    return stored, reversible


def gradients(model, y0: torch.Tensor, return_states: bool = False):
    y0 = y0.clone().requires_grad_()
    out = model(y0, return_states=return_states)
    loss = out[1].sin().sum() if return_states else out.sin().sum()  # every state's cotangent differs
    return torch.autograd.grad(loss, [y0, model.weight, model.bias])


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
@pytest.mark.parametrize(("name", "scheme"), [(name, None) for name in INVERTIBLE] + [("H2", "verlet")])
def test_reversible_backward_equals_stored_backward(name, scheme, convention):
    stored, reversible = reversible_pair(name, 40, scheme=scheme, convention=convention)
    y0 = torch.randn(5, 4, dtype=F64)
    for expected, found in zip(gradients(stored, y0), gradients(reversible, y0), strict=True):
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(found, expected, rtol=0, atol=1e-10)


def test_reversible_states_and_their_gradients_equal_the_stored_ones():
    stored, reversible = reversible_pair("MS1", 30, anchor_every=7)
    y0 = torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(
        reversible(y0, return_states=True)[1], stored(y0, return_states=True)[1], rtol=0, atol=0
    )
    for expected, found in zip(gradients(stored, y0, True), gradients(reversible, y0, True), strict=True):
        torch.testing.assert_close(found, expected, rtol=0, atol=1e-10)


def saved_bytes(model, y0: torch.Tensor) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(y0.clone().requires_grad_())
    return total


def activation_bytes(model, batch: int) -> int:
    """Saved bytes that grow with the batch (the states), not those of the per-layer weights."""
    y = torch.randn(2 * batch, model.n_features, dtype=F64)
    return saved_bytes(model, y) - saved_bytes(model, y[:batch])


def test_reversible_activation_memory_does_not_grow_with_depth():
    by_depth = {}
    for depth in (10, 1000):
        stored, reversible = reversible_pair("H2", depth)
        by_depth[depth] = activation_bytes(stored, 256), activation_bytes(reversible, 256)
    assert by_depth[1000][1] <= 1.2 * by_depth[10][1]
    assert by_depth[1000][0] > 50 * by_depth[10][0]  # stored: one set of states per layer
