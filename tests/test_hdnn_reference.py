"""hrnn's H-DNNs with ``convention="reference"`` against the authors' public code (DecodEPFL/HamiltonianNet).

Each loop below is the reference's update written out in its own parameter layout: weights
``K[:, :, j]`` of shape (n, n) or (n/2, n/2) per layer, biases ``b[:, 0, j]``, column-vector
formulas ``K^T y`` inside the activation. The reference's weights are copied into hrnn with the
mapping of docs/hdnn.md (``weight[j] = K[:, :, j]^T``; MS1's upper-right block is ``-K[:, :, j]^T``)
and both must agree to round-off in float64.
"""

from __future__ import annotations

import pytest
import torch

from hrnn.hdnn import HDNNClassifier, build_hdnn

F64 = torch.float64
N, M, DEPTH, T_END = 6, 3, 5, 1.5
H = T_END / DEPTH


def col(A, y):
    """The column-vector product A y on a batch of row states y (batch, n)."""
    return y @ A.T


def reference_j(name: str) -> torch.Tensor:
    eye, zero = torch.eye(M, dtype=F64), torch.zeros(M, M, dtype=F64)
    if name == "J1":  # assembled as in the reference: columns [0; I] and [-I; 0]
        return torch.cat([torch.cat([zero, eye], 0), torch.cat([-eye, zero], 0)], 1)
    ones = torch.ones(N, N, dtype=F64)
    return torch.triu(ones, 1) - torch.tril(ones, -1)


def reference_h1(y, K, b, J):
    for j in range(DEPTH):
        y = y + H * col(J @ K[:, :, j], torch.tanh(col(K[:, :, j].T, y) + b[:, 0, j]))
    return y


def reference_h2(y, K, b):
    p, q = y[:, :M], y[:, M:]
    for j in range(DEPTH):
        K11, K22 = K[:M, :M, j], K[M:, M:, j]
        q = q + H * col(K11, torch.tanh(col(K11.T, p) + b[:M, 0, j]))
        p = p - H * col(K22, torch.tanh(col(K22.T, q) + b[M:, 0, j]))
    return torch.cat([p, q], 1)


def reference_ms1(y, K0, b):
    p, q = y[:, :M], y[:, M:]
    for j in range(DEPTH):
        q = q + H * torch.tanh(col(K0[:, :, j], p) + b[M:, 0, j])
        p = p + H * torch.tanh(col(-K0[:, :, j].T, q) + b[:M, 0, j])
    return torch.cat([p, q], 1)


def reference_ms2(y, K, b):
    for j in range(DEPTH):
        y = y + H * torch.tanh(col(K[:, :, j].T, y) + b[:, 0, j])
    return y


def reference_ms3(y, K1, K2, b1, b2):
    p, q = y[:, :M], y[:, M:]
    for j in range(DEPTH):
        q = q - H * col(K1[:, :, j], torch.tanh(col(K1[:, :, j].T, p) + b2[:, 0, j]))
        p = p + H * col(K2[:, :, j], torch.tanh(col(K2[:, :, j].T, q) + b1[:, 0, j]))
    return torch.cat([p, q], 1)


def hrnn_model(name: str, weight: torch.Tensor, bias: torch.Tensor, **kwargs):
    model = build_hdnn(name, N, DEPTH, T_END, convention="reference", dtype=F64, **kwargs)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


def per_layer_t(K: torch.Tensor) -> torch.Tensor:
    """(n, n, depth) -> (depth, n, n) with every layer's matrix transposed: hrnn's weight."""
    return K.permute(2, 1, 0)


@pytest.fixture
def state():
    return torch.randn(9, N, dtype=F64)


@pytest.mark.parametrize(("select_j", "expected_j"), [("J1", "canonical"), ("J2", "J2")])
def test_h1_equals_the_reference(state, select_j, expected_j):
    K, b = torch.randn(N, N, DEPTH, dtype=F64), torch.randn(N, 1, DEPTH, dtype=F64)
    kwargs = {} if select_j == "J1" else {"j": "J2"}
    model = hrnn_model("H1", per_layer_t(K), b[:, 0].T, **kwargs)
    assert model.j_name == expected_j  # the reference's J1 is hrnn's canonical J
    expected = reference_h1(state, K, b, reference_j(select_j))
    torch.testing.assert_close(model(state), expected, rtol=0, atol=1e-12)


def test_h2_equals_the_reference(state):
    mask = torch.block_diag(torch.ones(M, M, dtype=F64), torch.ones(M, M, dtype=F64))
    K, b = torch.randn(N, N, DEPTH, dtype=F64) * mask[..., None], torch.randn(N, 1, DEPTH, dtype=F64)
    model = hrnn_model("H2", per_layer_t(K), b[:, 0].T)
    torch.testing.assert_close(model(state), reference_h2(state, K, b), rtol=0, atol=1e-12)


def test_ms1_equals_the_reference(state):
    K0, b = torch.randn(M, M, DEPTH, dtype=F64), torch.randn(N, 1, DEPTH, dtype=F64)
    weight = torch.zeros(DEPTH, N, N, dtype=F64)
    weight[:, :M, M:] = -per_layer_t(K0)  # the reference's forward reads its K0 transposed
    model = hrnn_model("MS1", weight, b[:, 0].T)
    torch.testing.assert_close(model(state), reference_ms1(state, K0, b), rtol=0, atol=1e-12)


def test_ms2_equals_the_reference(state):
    A = torch.randn(N, N, DEPTH, dtype=F64)
    K, b = A - A.transpose(0, 1), torch.randn(N, 1, DEPTH, dtype=F64)  # the reference's skew K
    model = hrnn_model("MS2", per_layer_t(K), b[:, 0].T)
    torch.testing.assert_close(model(state), reference_ms2(state, K, b), rtol=0, atol=1e-12)


def test_ms3_equals_the_reference(state):
    K1, K2 = torch.randn(M, M, DEPTH, dtype=F64), torch.randn(M, M, DEPTH, dtype=F64)
    b1, b2 = torch.randn(M, 1, DEPTH, dtype=F64), torch.randn(M, 1, DEPTH, dtype=F64)
    zero = torch.zeros(M, M, DEPTH, dtype=F64)
    K = torch.cat([torch.cat([zero, K1], 1), torch.cat([K2, zero], 1)], 0)  # the reference's getK()
    model = hrnn_model("MS3", per_layer_t(K), torch.cat([b1, b2], 0)[:, 0].T)
    torch.testing.assert_close(model(state), reference_ms3(state, K1, K2, b1, b2), rtol=0, atol=1e-12)


def test_regulariser_equals_the_references_on_the_mapped_weights():
    K, b = torch.randn(N, N, DEPTH, dtype=F64), torch.randn(N, 1, DEPTH, dtype=F64)
    alpha = 5e-4
    expected = sum(
        alpha
        * H
        * (0.5 * (K[:, :, j + 1] - K[:, :, j]).norm() ** 2 + 0.5 * (b[:, :, j + 1] - b[:, :, j]).norm() ** 2)
        for j in range(DEPTH - 1)
    )
    model = hrnn_model("H1", per_layer_t(K), b[:, 0].T)
    assert model.regularizer(alpha).item() == pytest.approx(expected.item(), rel=1e-13)


def test_reference_input_placement_fills_the_first_and_last_feature():
    hdnn = build_hdnn("H1", N, DEPTH, T_END, convention="reference", dtype=F64)
    x = torch.randn(4, 2, dtype=F64)
    expected = torch.cat([x[:, :1], torch.zeros(4, N - 2, dtype=F64), x[:, 1:]], 1)
    assert torch.equal(HDNNClassifier(2, 1, hdnn).initial_state(x), expected)
