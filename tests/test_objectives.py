"""semdl.objectives against a plain float64 reference (docs/algorithms.md sections 2-4).

The reference below loops over classes and neighbours in Python and takes torch.logdet of d x d matrices;
it uses nothing from semdl.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import semdl.objectives.consensus as consensus_module
import semdl.objectives.rates as rates_module
from helpers.rounding import (
    float32_gram_error_bound,
    float32_logdet_error_bound,
    float32_logdet_gradient_error_bound,
    gamma32,
)
from semdl.objectives import (
    ConsensusPenalty,
    class_statistics,
    coding_rate,
    consensus_penalty,
    consensus_residual,
    logdet_identity_plus,
    pool_statistics,
    primal_dual_loss,
    primal_dual_loss_with_penalty,
    rate_reduction,
    rate_reduction_from_statistics,
)
from semdl.objectives.consensus import batch_consensus_terms
from semdl.objectives.rates import counting_fallbacks, rate_terms

EPS_SQ = 0.5
F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# Plain reference (float64, loops, d x d logdets)
# ----------------------------------------------------------------------------------------------------------------


def ref_logdet_identity_plus(c: float, gram: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(gram.shape[-1], dtype=F64)
    return torch.logdet(eye + c * gram.to(F64))


def ref_coding_rate(Z: torch.Tensor, eps_sq: float) -> torch.Tensor:
    Z = Z.to(F64)
    m, d = Z.shape
    return 0.5 * ref_logdet_identity_plus(d / (m * eps_sq), Z.T @ Z)


def ref_rate_reduction(Z, labels, num_classes, eps_sq, gamma1=1.0, gamma2=1.0):
    Z = Z.to(F64)
    m, d = Z.shape
    R = ref_coding_rate(Z, eps_sq)
    Rc = torch.zeros((), dtype=F64)
    for k in range(num_classes):
        Zk = Z[labels == k]
        mk = Zk.shape[0]
        if mk == 0:
            continue
        Rc = Rc + mk / (2 * m) * ref_logdet_identity_plus(d / (mk * eps_sq), Zk.T @ Zk)
    return gamma1 * R - gamma2 * Rc, R, Rc


def ref_class_statistics(Z, labels, num_classes):
    Z = Z.to(F64)
    d = Z.shape[1]
    V = []
    counts = []
    for k in range(num_classes):
        Zk = Z[labels == k]
        counts.append(Zk.shape[0])
        V.append(Zk.T @ Zk / Zk.shape[0] if Zk.shape[0] else torch.zeros(d, d, dtype=F64))
    return torch.stack(V), torch.tensor(counts)


def ref_rate_reduction_from_statistics(V, counts, eps_sq, gamma1=1.0, gamma2=1.0):
    V = V.to(F64)
    d = V.shape[-1]
    m = int(sum(int(c) for c in counts))
    total = torch.zeros(d, d, dtype=F64)
    for k in range(V.shape[0]):
        total = total + int(counts[k]) * V[k]
    R = 0.5 * ref_logdet_identity_plus(d / (m * eps_sq), total)
    Rc = torch.zeros((), dtype=F64)
    for k in range(V.shape[0]):
        mk = int(counts[k])
        if mk == 0:
            continue
        Rc = Rc + mk / (2 * m) * ref_logdet_identity_plus(d / (mk * eps_sq), mk * V[k])
    return gamma1 * R - gamma2 * Rc, R, Rc


def ref_primal_dual_loss(Z, labels, num_classes, eps_sq, V_self, V_neighbors, dual, rho, gamma1=1.0, gamma2=1.0):
    Z = Z.to(F64)
    loss = -ref_rate_reduction(Z, labels, num_classes, eps_sq, gamma1, gamma2)[0]
    for k in range(num_classes):
        Zk = Z[labels == k]
        mk = Zk.shape[0]
        if mk == 0:
            continue
        V_hat = Zk.T @ Zk / mk
        loss = loss + (dual[k].to(F64) * V_hat).sum()
        for j in range(V_neighbors.shape[0]):
            anchor = (V_self[k].to(F64) + V_neighbors[j, k].to(F64)) / 2
            loss = loss + rho / 2 * ((V_hat - anchor) ** 2).sum()
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def unit_rows(m: int, d: int, seed: int, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, d, generator=g, dtype=F64), dim=1).to(dtype)


def labels_from_counts(counts: list[int], seed: int) -> torch.Tensor:
    """Labels with exactly counts[k] samples of class k, in shuffled order."""
    g = torch.Generator().manual_seed(seed + 1000)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return labels[torch.randperm(labels.numel(), generator=g)]


def generated_counts(K: int, fixed: list[int], low: int, high: int, seed: int) -> list[int]:
    """`fixed` for the first classes, the rest uniform in [low, high]."""
    g = torch.Generator().manual_seed(seed)
    rest = torch.randint(low, high + 1, (K - len(fixed),), generator=g).tolist()
    return fixed + rest


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Elementwise relative agreement, with the absolute floor rtol * max|expected| for near-zero entries."""
    actual = actual.detach().to(F64)
    expected = expected.detach().to(F64)
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    assert scale > 0, "reference is identically zero: the comparison would prove nothing"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def grad_of(value: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(value, Z)
    return g


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound) -> None:
    """|actual - expected| <= bound elementwise (bound a float or a tensor of expected's shape)."""
    actual = actual.detach().to(F64)
    expected = expected.detach().to(F64)
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    error = (actual - expected).abs()
    bound = torch.as_tensor(bound, dtype=F64)
    worst = float((error / bound).max())
    assert (error <= bound).all(), f"error up to {worst:.3g} times the float32 bound (largest {float(error.max()):.3g})"


def float32_rate_bounds(Z, labels, num_classes, eps_sq, gamma1=1.0, gamma2=1.0, extra=0):
    """Bounds on the float32 errors of (dR, R, Rc) and, componentwise, of d dR / dZ for the points Z (exact in
    float32): helpers.rounding's conditioning bound for each logdet (the whole batch and each class), plus, for the
    weights m_k / (2m) (3 roundings), the sum over K classes and gamma1 R - gamma2 Rc, gamma_{K+3} and gamma_2 times
    the sizes of the terms (the terms taken from the float64 reference)."""
    Z = Z.detach().to(F64).requires_grad_(True)
    m, d = Z.shape
    R_bound = 0.5 * float32_logdet_error_bound(Z, d / (m * eps_sq), extra)
    _, R, Rc = ref_rate_reduction(Z, labels, num_classes, eps_sq)
    R_grad, Rc_grad = grad_of(R, Z), grad_of(Rc, Z)
    grad_bound = 0.5 * abs(gamma1) * float32_logdet_gradient_error_bound(Z, d / (m * eps_sq))
    Rc_bound, Rc_terms = 0.0, 0.0
    for k in range(num_classes):
        Zk = Z.detach()[labels == k]
        mk = Zk.shape[0]
        if mk == 0:
            continue
        weight = mk / (2 * m)
        Rc_bound += weight * float32_logdet_error_bound(Zk, d / (mk * eps_sq), extra)
        Rc_terms += weight * abs(float(ref_logdet_identity_plus(d / (mk * eps_sq), Zk.T @ Zk)))
        grad_bound[labels == k] += abs(gamma2) * weight * float32_logdet_gradient_error_bound(Zk, d / (mk * eps_sq))
    Rc_bound += gamma32(num_classes + 3) * Rc_terms
    grad_bound += gamma32(num_classes + 3) * abs(gamma2) * Rc_grad.abs()
    R, Rc = abs(float(R.detach())), abs(float(Rc.detach()))
    dR_bound = abs(gamma1) * R_bound + abs(gamma2) * Rc_bound + gamma32(2) * (abs(gamma1) * R + abs(gamma2) * Rc)
    grad_bound += gamma32(2) * (abs(gamma1) * R_grad.abs() + abs(gamma2) * Rc_grad.abs())
    return dR_bound, R_bound, Rc_bound, grad_bound


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def logdet_shapes(monkeypatch):
    """Records the Gram shapes that rates.py factorises, to tell the feature side from the kernel side."""
    shapes: list[tuple[int, ...]] = []
    original = rates_module.logdet_identity_plus

    def spy(gram, scale):
        shapes.append(tuple(gram.shape))
        return original(gram, scale)

    monkeypatch.setattr(rates_module, "logdet_identity_plus", spy)
    return shapes


# Count profiles (K, d, counts). "feature": some class has >= d samples, so every logdet is on the d x d side;
# "kernel": every class has < d samples, so class logdets are on the (width x width) Sylvester side.
# Each has an empty class and/or a singleton class; K>2 profiles have both.
CASES = [
    pytest.param(2, 16, [1, 40], id="K2-d16-feature-singleton"),
    pytest.param(2, 16, [0, 25], id="K2-d16-feature-empty"),
    pytest.param(2, 16, [1, 12], id="K2-d16-kernel-singleton-m<d"),
    pytest.param(2, 16, [0, 15], id="K2-d16-kernel-empty"),
    pytest.param(10, 16, [0, 1, 40, 3, 7, 15, 2, 9, 20, 5], id="K10-d16-feature"),
    pytest.param(10, 16, [0, 1, 15, 3, 7, 15, 2, 9, 12, 5], id="K10-d16-kernel"),
    pytest.param(10, 16, [0, 1, 16, 3, 7, 15, 2, 9, 12, 5], id="K10-d16-feature-width=d"),
    pytest.param(100, 16, generated_counts(100, [0, 1, 17], 0, 12, seed=1), id="K100-d16-feature"),
    pytest.param(100, 16, generated_counts(100, [0, 1], 0, 15, seed=2), id="K100-d16-kernel"),
    pytest.param(2, 128, [1, 300], id="K2-d128-feature"),
    pytest.param(2, 128, [0, 127], id="K2-d128-kernel-m<d"),
    pytest.param(10, 128, generated_counts(10, [0, 1, 200], 10, 60, seed=3), id="K10-d128-feature"),
    pytest.param(10, 128, generated_counts(10, [0, 1], 20, 100, seed=4), id="K10-d128-kernel"),
    pytest.param(100, 128, generated_counts(100, [0, 1, 130], 0, 8, seed=5), id="K100-d128-feature"),
    pytest.param(100, 128, generated_counts(100, [0, 1], 2, 15, seed=6), id="K100-d128-kernel"),
]


def test_case_table_covers_what_it_claims():
    for param in CASES:
        K, d, counts = param.values
        assert len(counts) == K
        assert (0 in counts) or (1 in counts)
        if K > 2:
            assert 0 in counts and 1 in counts
        assert ("feature" in param.id) == (max(counts) >= d)
    assert any(max(p.values[2]) > p.values[1] == 16 for p in CASES)


# ----------------------------------------------------------------------------------------------------------------
# 1. Values and gradients against the reference, float64
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,d", [(1, 16), (10, 16), (40, 16), (100, 128), (300, 128)])
def test_coding_rate_matches_reference(m, d):
    Z = unit_rows(m, d, seed=m + d).requires_grad_(True)
    value = coding_rate(Z, EPS_SQ)
    expected = ref_coding_rate(Z, EPS_SQ)
    assert value.dtype == F64 and value.shape == ()
    assert_rel(value, expected, 1e-5)
    assert_rel(grad_of(value, Z), grad_of(expected, Z), 1e-5)


@pytest.mark.parametrize("K,d,counts", CASES)
def test_rate_reduction_matches_reference(K, d, counts, logdet_shapes):
    seed = K * 1000 + d
    Z = unit_rows(sum(counts), d, seed).requires_grad_(True)
    labels = labels_from_counts(counts, seed)
    gamma1, gamma2 = 1.3, 0.7

    dR, R, Rc = rate_reduction(Z, labels, K, EPS_SQ, gamma1, gamma2)
    ref_dR, ref_R, ref_Rc = ref_rate_reduction(Z, labels, K, EPS_SQ, gamma1, gamma2)
    assert_rel(R, ref_R, 1e-5)
    assert_rel(Rc, ref_Rc, 1e-5)
    assert_rel(dR, ref_dR, 1e-5)
    torch.testing.assert_close(dR, gamma1 * R - gamma2 * Rc, rtol=1e-12, atol=1e-12)

    # the code path: feature side is one batched (K+1, d, d) factorisation; the kernel side factorises the
    # classes as (K, width, width) with width = largest class < d
    if max(counts) >= d:
        assert logdet_shapes == [(K + 1, d, d)]
    else:
        assert logdet_shapes[-1] == (K, max(counts), max(counts))
        assert logdet_shapes[0] == ((d, d) if sum(counts) >= d else (sum(counts),) * 2)

    assert_rel(grad_of(dR, Z), grad_of(ref_dR, Z), 1e-5)
    _, _, Rc_again = rate_reduction(Z, labels, K, EPS_SQ)
    assert_rel(grad_of(Rc_again, Z), grad_of(ref_rate_reduction(Z, labels, K, EPS_SQ)[2], Z), 1e-5)


@pytest.mark.parametrize("K,d,counts", CASES)
def test_class_statistics_matches_reference(K, d, counts):
    seed = K * 1000 + d + 7
    Z = unit_rows(sum(counts), d, seed).requires_grad_(True)
    labels = labels_from_counts(counts, seed)
    V, got_counts = class_statistics(Z, labels, K)
    ref_V, ref_counts = ref_class_statistics(Z, labels, K)
    assert V.shape == (K, d, d)
    assert torch.equal(got_counts.cpu(), ref_counts)
    assert_rel(V, ref_V, 1e-5)
    weights = torch.randn(K, d, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert_rel(grad_of((V * weights).sum(), Z), grad_of((ref_V * weights).sum(), Z), 1e-5)


@pytest.mark.parametrize("K,d,counts", CASES)
def test_rate_reduction_from_statistics_matches_reference(K, d, counts):
    seed = K * 1000 + d + 13
    Z = unit_rows(sum(counts), d, seed).requires_grad_(True)
    labels = labels_from_counts(counts, seed)
    V, got_counts = class_statistics(Z, labels, K)
    dR, R, Rc = rate_reduction_from_statistics(V, got_counts, EPS_SQ, 1.3, 0.7)
    ref_dR, ref_R, ref_Rc = ref_rate_reduction(Z, labels, K, EPS_SQ, 1.3, 0.7)
    assert_rel(R, ref_R, 1e-5)
    assert_rel(Rc, ref_Rc, 1e-5)
    assert_rel(dR, ref_dR, 1e-5)
    # the statistics-only reference agrees as well
    ref_V, ref_counts = ref_class_statistics(Z, labels, K)
    assert_rel(dR, ref_rate_reduction_from_statistics(ref_V, ref_counts, EPS_SQ, 1.3, 0.7)[0], 1e-5)
    assert_rel(grad_of(dR, Z), grad_of(ref_dR, Z), 1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 2. float32 with unit-norm rows
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param([100] * 10, id="kernel-side"),
        pytest.param([0, 1, 300, 150, 120, 100, 99, 90, 80, 60], id="feature-side"),
    ],
)
def test_float32_matches_float64_reference(counts):
    K, d = 10, 128
    assert sum(counts) == 1000
    # class-structured data (each class near its own random 12-dimensional subspace) so that dR is sizeable
    g = torch.Generator().manual_seed(11)
    labels = labels_from_counts(counts, seed=11)
    bases = torch.randn(K, 12, d, generator=g, dtype=F64)
    coefficients = torch.randn(1000, 12, generator=g, dtype=F64)
    Z64 = F.normalize(
        torch.einsum("mi,mid->md", coefficients, bases[labels]) + 0.1 * torch.randn(1000, d, generator=g, dtype=F64),
        dim=1,
    )
    Z32 = Z64.to(torch.float32).requires_grad_(True)
    Z64 = Z32.detach().to(F64).requires_grad_(True)  # the very same points

    # Tolerances: the worst-case float32 error bounds of helpers.rounding, from the conditioning of each logdet of these
    # points (A = I + s Z^T Z, whole batch and each class) and the lengths of the sums; see float32_rate_bounds.
    dR_bound, R_bound, Rc_bound, grad_bound = float32_rate_bounds(Z64, labels, K, EPS_SQ)
    dR, R, Rc = rate_reduction(Z32, labels, K, EPS_SQ)
    ref_dR, ref_R, ref_Rc = ref_rate_reduction(Z64, labels, K, EPS_SQ)
    assert dR.dtype == torch.float32
    for got, want, bound in ((dR, ref_dR, dR_bound), (R, ref_R, R_bound), (Rc, ref_Rc, Rc_bound)):
        assert bound < 2e-3 * abs(float(want.detach()))  # still tells float32 from half precision or a wrong term
        assert_within(got, want, bound)
    assert float(ref_dR.detach()) > 5.0  # a check on a non-trivial difference
    ref_grad = grad_of(ref_dR, Z64)
    assert float(grad_bound.max()) < 1e-2 * float(ref_grad.abs().max())
    assert_within(grad_of(dR, Z32), ref_grad, grad_bound)

    assert_within(coding_rate(Z32.detach(), EPS_SQ), ref_R, R_bound)
    V32, counts32 = class_statistics(Z32.detach(), labels, K)
    ref_V, _ = ref_class_statistics(Z64.detach(), labels, K)
    # V_k = Z_k^T Z_k / m_k: an inner product of m_k terms, then the division (and 1/m_k itself): gamma_{m_k+2}
    V_bound = torch.stack(
        [float32_gram_error_bound(Z64[labels == k], extra=2) / max(c, 1) for k, c in enumerate(counts)]
    )
    assert_within(V32, ref_V, V_bound)
    # From the statistics, each Gram entry has 3 more roundings (V, m_k V_k, the scale) and the whole batch's K
    # more (the sum over classes): extra = K + 3 covers both.
    from_statistics_bound = float32_rate_bounds(Z64, labels, K, EPS_SQ, extra=K + 3)[0]
    assert_within(rate_reduction_from_statistics(V32, counts32, EPS_SQ)[0], ref_dR, from_statistics_bound)


# ----------------------------------------------------------------------------------------------------------------
# 3. Orthogonal subspaces beat collapsed classes; 4. closed form of repeated vectors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K,block,counts", [(4, 4, [25, 25, 25, 25]), (8, 16, [30, 5, 60, 12, 40, 3, 20, 50])])
def test_orthogonal_subspaces_beat_collapsed_classes(K, block, counts):
    d = K * block
    m = sum(counts)
    labels = labels_from_counts(counts, seed=K)
    g = torch.Generator().manual_seed(K)
    Z = torch.zeros(m, d, dtype=F64)
    for k in range(K):
        rows = labels == k
        Z[rows, k * block : (k + 1) * block] = torch.randn(int(rows.sum()), block, generator=g, dtype=F64)
    Z = F.normalize(Z, dim=1)
    collapsed = Z.clone()
    representatives = {}
    for k in range(K):
        rows = torch.nonzero(labels == k).flatten()
        representatives[k] = Z[rows[0]]
        collapsed[rows] = Z[rows[0]]

    dR, R, Rc = rate_reduction(Z, labels, K, EPS_SQ)
    dR_c, R_c, Rc_c = rate_reduction(collapsed, labels, K, EPS_SQ)
    assert_rel(dR, ref_rate_reduction(Z, labels, K, EPS_SQ)[0], 1e-5)

    # collapsed: Z^T Z = sum_k m_k u_k u_k^T with orthonormal u_k, and every class is m_k copies of u_k
    expected_R_c = 0.5 * sum(math.log1p(d * mk / (m * EPS_SQ)) for mk in counts)
    expected_Rc_c = 0.5 * math.log1p(d / EPS_SQ)
    assert float(R_c) == pytest.approx(expected_R_c, rel=1e-9)
    assert float(Rc_c) == pytest.approx(expected_Rc_c, rel=1e-9)

    assert float(dR) > float(dR_c) + 1.0
    assert float(Rc) > float(Rc_c)  # diverse classes cost more to code than collapsed ones...
    assert float(R) - float(R_c) > float(Rc) - float(Rc_c)  # ...but the whole gains even more


@pytest.mark.parametrize("d", [16, 128])
@pytest.mark.parametrize("m", [1, 5, 16, 50, 300])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_coding_rate_of_repeated_unit_vector(m, d, dtype):
    u = unit_rows(1, d, seed=d, dtype=dtype)
    Z = u.expand(m, d).contiguous()
    expected = 0.5 * math.log1p(d / EPS_SQ)
    labels = torch.zeros(m, dtype=torch.long)
    if dtype == F64:
        rtol = 1e-10
        R_bound = Rc_bound = dR_bound = rtol * expected
    else:
        # A = I + d/(m eps^2) Z^T Z = I + (d / eps^2) u u^T: eigenvalues 1 + d/eps^2 (= 257 for d = 128) and 1, so
        # cond(A) = 257 while Z^T Z sums m equal products per entry. The worst-case float32 error of logdet(A)
        # (helpers.rounding: gamma_{m+5} against s |Z|^T|Z| and gamma_{d+1} against |L||L|^T, weighted by |A^-1|) is
        # ~2.5e-3 relative for m = 300, d = 128; sequential accumulation of the 300 products (one AVX-512 machine)
        # gave 3.2e-5, blocked/pairwise accumulation ~2e-6. extra=2: the float32 u is unit-norm only to 2 roundings,
        # while `expected` assumes |u| = 1 exactly.
        _, R_bound, Rc_bound, _ = float32_rate_bounds(u.to(F64).expand(m, d), labels, 3, EPS_SQ, extra=2)
        assert R_bound < 3e-3 * expected  # still far below the value of any wrong formula
        # R and Rc are two logdets of the same Gram: whatever the order of the sums, dR errs by at most both bounds
        dR_bound = R_bound + Rc_bound + gamma32(2) * 2 * expected
    assert abs(float(coding_rate(Z, EPS_SQ)) - expected) <= R_bound
    # one class of m copies: R == Rc, so dR == 0
    dR, R, Rc = rate_reduction(Z, labels, 3, EPS_SQ)
    assert abs(float(R) - expected) <= R_bound
    assert abs(float(Rc) - expected) <= Rc_bound
    assert abs(float(dR)) <= dR_bound


# ----------------------------------------------------------------------------------------------------------------
# 5. Primal-dual loss
# ----------------------------------------------------------------------------------------------------------------


def random_symmetric(*shape, generator, scale=0.1):
    A = torch.randn(*shape, generator=generator, dtype=F64)
    return scale * (A + A.transpose(-1, -2)) / 2


PRIMAL_DUAL_CASES = [
    pytest.param(5, 16, [0, 1, 30, 4, 7], 3, id="feature-side-J3"),
    pytest.param(5, 16, [0, 1, 5, 4, 7], 2, id="kernel-side-m>=d-J2"),
    pytest.param(4, 16, [0, 1, 3, 2], 4, id="kernel-side-m<d-J4"),
    pytest.param(6, 16, [3, 0, 2, 1, 9, 5], 0, id="no-neighbours"),
    pytest.param(10, 128, [40, 0, 1, 30, 25, 60, 10, 50, 33, 20], 2, id="d128-J2"),
    pytest.param(3, 8, [20, 0, 9], 1, id="feature-side-J1"),
]


@pytest.mark.parametrize("K,d,counts,J", PRIMAL_DUAL_CASES)
def test_primal_dual_without_penalty_is_minus_rate_reduction(K, d, counts, J):
    g = torch.Generator().manual_seed(K + d + J)
    Z = unit_rows(sum(counts), d, seed=K + d).requires_grad_(True)
    labels = labels_from_counts(counts, seed=K + d)
    V_self = random_symmetric(K, d, d, generator=g)
    V_neighbors = random_symmetric(J, K, d, d, generator=g)
    dual = torch.zeros(K, d, d, dtype=F64)
    loss = primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, 0.0, 1.3, 0.7)
    dR, _, _ = rate_reduction(Z, labels, K, EPS_SQ, 1.3, 0.7)
    assert_rel(loss, -dR, 1e-10)
    assert_rel(loss, -ref_rate_reduction(Z, labels, K, EPS_SQ, 1.3, 0.7)[0], 1e-5)
    assert_rel(grad_of(loss, Z), grad_of(-dR, Z), 1e-10)


@pytest.mark.parametrize("K,d,counts,J", PRIMAL_DUAL_CASES)
@pytest.mark.parametrize("rho", [0.5, 5.0])
def test_primal_dual_matches_reference(K, d, counts, J, rho):
    g = torch.Generator().manual_seed(K * d + J)
    Z = unit_rows(sum(counts), d, seed=K * d + J).requires_grad_(True)
    labels = labels_from_counts(counts, seed=K * d)
    assert labels.unique().numel() < K  # one class is absent from the batch
    V_self = random_symmetric(K, d, d, generator=g)
    V_neighbors = random_symmetric(J, K, d, d, generator=g)
    dual = random_symmetric(K, d, d, generator=g)
    assert V_neighbors.shape == (J, K, d, d)

    loss = primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, rho, 1.3, 0.7)
    expected = ref_primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, rho, 1.3, 0.7)
    assert_rel(loss, expected, 1e-5)
    assert_rel(grad_of(loss, Z), grad_of(expected, Z), 1e-5)

    # the multipliers and penalty really enter: not just -dR
    minus_dR = -ref_rate_reduction(Z, labels, K, EPS_SQ, 1.3, 0.7)[0]
    assert abs(float((expected - minus_dR).detach())) > 1e-3


@pytest.mark.parametrize("K,d,counts,J", PRIMAL_DUAL_CASES)
@pytest.mark.parametrize("extra_width", [0, 3, 40])
def test_primal_dual_with_a_width_bound_equals_the_exact_width(K, d, counts, J, extra_width):
    """A node passes an upper bound on the largest class instead of reading it; the zero padding it adds changes
    neither the loss nor its gradient, even where the bound moves the batch from the kernel to the feature side."""
    g = torch.Generator().manual_seed(K + 3 * d + J)
    Z = unit_rows(sum(counts), d, seed=K + 3 * d).requires_grad_(True)
    labels = labels_from_counts(counts, seed=K + 3 * d)
    penalty = consensus_penalty(
        random_symmetric(K, d, d, generator=g),
        random_symmetric(J, K, d, d, generator=g),
        random_symmetric(K, d, d, generator=g),
        2.0,
    )
    exact = primal_dual_loss_with_penalty(Z, labels, K, EPS_SQ, penalty, 1.3, 0.7)
    bounded = primal_dual_loss_with_penalty(Z, labels, K, EPS_SQ, penalty, 1.3, 0.7, width=max(counts) + extra_width)
    assert_rel(bounded, exact, 1e-10)
    assert_rel(grad_of(bounded, Z), grad_of(exact, Z), 1e-10)


def test_primal_dual_ignores_the_statistics_of_absent_classes():
    K, d, J, rho = 4, 8, 3, 2.0
    g = torch.Generator().manual_seed(3)
    Z = unit_rows(12, d, seed=3)
    labels = labels_from_counts([5, 0, 7, 0], seed=3)
    V_self = random_symmetric(K, d, d, generator=g)
    V_neighbors = random_symmetric(J, K, d, d, generator=g)
    dual = random_symmetric(K, d, d, generator=g)
    loss = primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, rho)
    for absent in (1, 3):
        V_self[absent] += 10.0
        V_neighbors[:, absent] -= 7.0
        dual[absent] += 3.0
    changed = primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, rho)
    torch.testing.assert_close(changed, loss, rtol=1e-12, atol=1e-12)
    V_self[0] += 1.0  # a present class does count
    assert abs(float(primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, rho) - loss)) > 1.0


@pytest.mark.parametrize("K,d,counts,J", PRIMAL_DUAL_CASES)
def test_stacked_primal_dual_equals_each_node_on_its_own(K, d, counts, J):
    """A stack of B nodes' batches (B, m, d), each with its own labels and penalty, gives each node's loss and
    gradient as if it were alone: classes are grouped per node, never across nodes."""
    g = torch.Generator().manual_seed(7 * K + d)
    B, m = 3, sum(counts)
    Z = torch.stack([unit_rows(m, d, seed=K + d + b) for b in range(B)]).requires_grad_(True)
    labels = torch.stack([labels_from_counts(counts, seed=K + d + b) for b in range(B)])
    penalties = [
        consensus_penalty(
            random_symmetric(K, d, d, generator=g),
            random_symmetric(J, K, d, d, generator=g),
            random_symmetric(K, d, d, generator=g),
            2.0,
        )
        for _ in range(B)
    ]
    stacked = ConsensusPenalty(
        *(torch.stack([getattr(p, f) for p in penalties]) for f in ("linear", "quadratic", "constant"))
    )
    losses = primal_dual_loss_with_penalty(Z, labels, K, EPS_SQ, stacked, 1.3, 0.7, width=max(counts) + 2)
    assert losses.shape == (B,)
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    (stacked_grad,) = torch.autograd.grad((weights * losses).sum(), Z)
    for b in range(B):
        Zb = Z[b].detach().requires_grad_(True)
        alone = primal_dual_loss_with_penalty(Zb, labels[b], K, EPS_SQ, penalties[b], 1.3, 0.7)
        assert_rel(losses[b], alone, 1e-10)
        assert_rel(stacked_grad[b], weights[b] * grad_of(alone, Zb), 1e-10)
    assert float((losses[0] - losses[1]).detach().abs()) > 1e-3  # the nodes really differ


def test_neighbour_sums_of_rows_equal_the_sums_of_the_gathered_neighbours():
    """The solver reads its group's neighbours row by row from every node's statistics; the sums are those of the
    gathered (B, J, K, d, d) neighbours, padding (a neighbour sharing no class) included."""
    g = torch.Generator().manual_seed(4)
    N, K, d = 5, 3, 6
    statistics = random_symmetric(N, K, d, d, generator=g)
    index = torch.tensor([[1, 4], [0, 0], [3, 2]])
    shared = torch.rand(3, 2, K, generator=g) > 0.3
    shared[1, 1] = False  # node 1 of the group has one neighbour; its second slot is padding
    rows = consensus_module.neighbor_sums_of_rows(statistics, index, shared)
    gathered = consensus_module.neighbor_sums(statistics[index], shared)
    for b in range(3):
        weights = shared[b].to(F64)
        expected = sum(weights[j, :, None, None] * statistics[index[b, j]] for j in range(2))
        torch.testing.assert_close(rows.statistics[b], expected, rtol=1e-12, atol=1e-12)
        expected_sq = sum(weights[j] * statistics[index[b, j]].pow(2).sum((-2, -1)) for j in range(2))
        torch.testing.assert_close(rows.squared_norms[b], expected_sq, rtol=1e-12, atol=1e-12)
        assert rows.count[b].tolist() == weights.sum(0).tolist()
    for field in ("count", "statistics", "squared_norms"):
        torch.testing.assert_close(getattr(rows, field), getattr(gathered, field), rtol=1e-12, atol=1e-12)


def failing_first_factorisations(monkeypatch):
    """Make every first Cholesky factorisation of identity_plus_cholesky report failure (its retry, the next call,
    runs as is), so the shifted refactorisation is taken for every matrix."""
    real = torch.linalg.cholesky_ex
    calls = []

    def cholesky_ex(matrices):
        calls.append(1)
        factor, info = real(matrices)
        return (factor, torch.ones_like(info)) if len(calls) % 2 == 1 else (factor, info)

    monkeypatch.setattr(rates_module.torch.linalg, "cholesky_ex", cholesky_ex)
    return calls


def test_primal_dual_takes_the_shifted_refactorisation_when_a_factorisation_fails(monkeypatch):
    """Where the fused objective's Cholesky factorisations fail, its loss and hand-derived gradient are those of the
    shifted refactorisation, as the autograd path through logdet_identity_plus computes them on the same matrices
    (that path's shift is checked against an independent logdet in section 7)."""
    K, d, counts, J, rho = 10, 128, [40, 0, 1, 30, 25, 60, 10, 50, 33, 20], 2, 3.0
    g = torch.Generator().manual_seed(11)
    Z = unit_rows(sum(counts), d, seed=11).requires_grad_(True)
    labels = labels_from_counts(counts, seed=11)
    V_self = random_symmetric(K, d, d, generator=g)
    V_neighbors = random_symmetric(J, K, d, d, generator=g)
    dual = random_symmetric(K, d, d, generator=g)
    penalty = consensus_penalty(V_self, V_neighbors, dual, rho)
    calls = failing_first_factorisations(monkeypatch)
    with counting_fallbacks() as fallbacks:
        loss = primal_dual_loss_with_penalty(Z, labels, K, EPS_SQ, penalty)
    assert len(calls) == 4  # the batch's Gram and the class Grams, each factorised twice
    assert fallbacks.total() == 1 + K
    R, Rc, batch = rate_terms(Z, labels, K, EPS_SQ)
    expected = -(R - Rc) + batch_consensus_terms(batch, penalty)
    unshifted = ref_primal_dual_loss(Z, labels, K, EPS_SQ, V_self, V_neighbors, dual, rho)
    assert_rel(loss, expected, 1e-5)
    assert_rel(grad_of(loss, Z), grad_of(expected, Z), 1e-5)
    # Each matrix is shifted by delta = n u max_i A_ii <= 128 u (1 + d / eps_sq) (unit rows: s G_ii <= d / eps_sq),
    # about 4e-3, and its logdet moves by at most n delta (eigenvalues of A are >= 1), about 0.5; the weights of
    # the 1 + K logdets in the loss (1/2 and m_k / 2m) sum to 1. The shift is taken: the loss moves.
    moved = abs(float(loss.detach()) - float(unshifted.detach()))
    assert 0 < moved < 128 * torch.finfo(torch.float32).eps * (1 + d / EPS_SQ) * 128


def test_primal_dual_of_non_finite_features_is_nan_not_an_error():
    K, d = 4, 8
    g = torch.Generator().manual_seed(2)
    Z = unit_rows(12, d, seed=2)
    Z[3, 0] = float("nan")
    labels = labels_from_counts([3, 3, 3, 3], seed=2)
    V = random_symmetric(K, d, d, generator=g)
    loss = primal_dual_loss(Z, labels, K, EPS_SQ, V, V[None], V, 1.0)
    assert torch.isnan(loss)


# ----------------------------------------------------------------------------------------------------------------
# 6. Semantic statistics and pooling
# ----------------------------------------------------------------------------------------------------------------


def test_class_statistics_trace_zero_and_counts():
    K, d = 7, 16
    counts = [0, 1, 30, 4, 0, 17, 2]
    Z = unit_rows(sum(counts), d, seed=21)
    labels = labels_from_counts(counts, seed=21)
    V, got_counts = class_statistics(Z, labels, K)
    assert torch.equal(got_counts, torch.bincount(labels, minlength=K))
    assert got_counts.tolist() == counts
    traces = V.diagonal(dim1=-2, dim2=-1).sum(-1)
    for k in range(K):
        if counts[k]:
            assert float(traces[k]) == pytest.approx(1.0, abs=1e-12)
        else:
            assert torch.count_nonzero(V[k]) == 0
    torch.testing.assert_close(V, V.mT, rtol=0, atol=1e-15)
    # a singleton class is the outer product of its sample
    torch.testing.assert_close(V[1], torch.outer(Z[labels == 1][0], Z[labels == 1][0]), rtol=1e-12, atol=1e-15)


def test_stacked_batches_are_grouped_each_on_its_own():
    Z = torch.stack([unit_rows(4, 8, seed=0), unit_rows(4, 8, seed=1)])
    padded, counts = rates_module.pad_by_class(Z, torch.tensor([[0, 1, 2, 0], [2, 1, 0, 0]]), 3)
    assert counts.tolist() == [[2, 1, 1], [2, 1, 1]]
    torch.testing.assert_close(padded[1, 0, :2], Z[1, 2:4])  # batch 1's class 0 holds its own rows 2 and 3


def test_pool_statistics_equals_statistics_of_concatenated_data():
    K, d = 5, 12
    node_counts = [[10, 0, 3, 0, 0], [4, 6, 0, 1, 0], [0, 2, 20, 0, 0]]  # class 4 nowhere, class 3 at one node
    Zs, ys, Vs, cs = [], [], [], []
    for i, counts in enumerate(node_counts):
        Z = unit_rows(sum(counts), d, seed=40 + i)
        y = labels_from_counts(counts, seed=40 + i)
        V, c = class_statistics(Z, y, K)
        Zs.append(Z), ys.append(y), Vs.append(V), cs.append(c)
    pooled_V, pooled_counts = pool_statistics(torch.stack(Vs), torch.stack(cs))
    Z_all, y_all = torch.cat(Zs), torch.cat(ys)
    ref_V, ref_counts = ref_class_statistics(Z_all, y_all, K)
    assert pooled_counts.tolist() == ref_counts.tolist() == [14, 8, 23, 1, 0]
    torch.testing.assert_close(pooled_V, ref_V, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pooled_V, class_statistics(Z_all, y_all, K)[0], rtol=1e-12, atol=1e-14)
    # the network objective from statistics alone equals the rate reduction of the union of the data
    assert_rel(
        rate_reduction_from_statistics(pooled_V, pooled_counts, EPS_SQ)[0],
        ref_rate_reduction(Z_all, y_all, K, EPS_SQ)[0],
        1e-10,
    )


# ----------------------------------------------------------------------------------------------------------------
# 7. Cholesky fallback
# ----------------------------------------------------------------------------------------------------------------


def shifted_logdet(scale: float, gram: torch.Tensor, unit_roundoff: float) -> torch.Tensor:
    """logdet(A + delta I), A = I + scale * gram, delta = n * u * max_i A_ii, in float64 (the refactorisation)."""
    n = gram.shape[-1]
    A = torch.eye(n, dtype=F64) + scale * gram.to(F64)
    return torch.logdet(A + n * unit_roundoff * A.diagonal().max() * torch.eye(n, dtype=F64))


def _rounding_batch():
    """Float32 Grams of features of rank 3 in d = 8, with a scale so large that rounding (of order u ||sG||, over
    1 here) makes I + s G indefinite in float32 for the middle one; the others factorise."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(3, 8, generator=g)
    low_rank = (X.T @ X).float()
    full = torch.eye(8) + low_rank
    grams = torch.stack([full, low_rank, 0.5 * full])
    scales = torch.tensor([0.5, 3e8, 2.0])
    return grams, scales


def refactorisation_tolerance(scale: float, gram: torch.Tensor, rank: int) -> float:
    """How far float32 may put a refactorised logdet from the float64 one: forming A = I + s G in float32 perturbs
    it by E with ||E|| <= u ||A||_F, which moves each of the n - rank eigenvalues near the shift delta by up to
    ||E||, so each of their logs by up to u ||A||_F / delta; the rank directions (eigenvalues >> delta) move by
    far less."""
    n, u = gram.shape[-1], torch.finfo(torch.float32).eps
    A = torch.eye(n, dtype=F64) + scale * gram.to(F64)
    delta = n * u * float(A.diagonal().max())
    return (n - rank) * u * float(torch.linalg.matrix_norm(A)) / delta


def test_logdet_identity_plus_refactorises_what_rounding_made_indefinite():
    grams, scales = _rounding_batch()
    n, u = grams.shape[-1], torch.finfo(torch.float32).eps
    _, info = torch.linalg.cholesky_ex(torch.eye(n) + scales[:, None, None] * grams)
    assert info.tolist()[0] == 0 and info.tolist()[1] != 0 and info.tolist()[2] == 0

    grams.requires_grad_(True)
    with counting_fallbacks() as fallbacks:
        result = logdet_identity_plus(grams, scales)
    assert fallbacks.total() == 1
    kept = [0, 2]
    expected = torch.stack([ref_logdet_identity_plus(float(scales[k]), grams[k].detach()) for k in kept])
    torch.testing.assert_close(result[kept].double(), expected, rtol=1e-5, atol=1e-5)
    shifted = shifted_logdet(float(scales[1]), grams[1].detach(), u)
    tolerance = refactorisation_tolerance(float(scales[1]), grams[1].detach(), rank=3)
    assert abs(float(result[1].detach()) - float(shifted)) <= tolerance

    weights = torch.tensor([1.0, 0.3, -2.0])
    (got,) = torch.autograd.grad((weights * result).sum(), grams)
    A = torch.eye(n, dtype=F64) + scales.double()[kept, None, None] * grams.detach().double()[kept]
    want = (weights * scales).double()[kept, None, None] * torch.linalg.inv(A)
    torch.testing.assert_close(got[kept].double(), want, rtol=1e-5, atol=1e-9)
    # the refactorised matrix's gradient is w s (A + delta I)^-1: symmetric positive definite over w s
    refactorised = got[1].double() / float(weights[1] * scales[1])
    torch.testing.assert_close(refactorised, refactorised.mT, rtol=1e-4, atol=1e-12)
    assert float(torch.linalg.eigvalsh((refactorised + refactorised.mT) / 2).min()) > 0


def test_logdet_identity_plus_without_failure_matches_cholesky_logdet():
    grams, _ = _rounding_batch()
    grams = grams.double()
    scales = torch.tensor([0.5, 3.0, 2.0], dtype=F64)  # now every matrix is positive definite
    with counting_fallbacks() as fallbacks:
        result = logdet_identity_plus(grams, scales)
    assert fallbacks.total() == 0
    expected = torch.stack([ref_logdet_identity_plus(float(s), G) for s, G in zip(scales, grams)])
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_logdet_identity_plus_refactorisation_unbatched():
    grams, scales = _rounding_batch()
    result = logdet_identity_plus(grams[1], scales[1])  # (n, n) gram, 0-d scale
    assert result.shape == ()
    expected = shifted_logdet(float(scales[1]), grams[1], torch.finfo(torch.float32).eps)
    assert abs(float(result) - float(expected)) <= refactorisation_tolerance(float(scales[1]), grams[1], rank=3)


def test_logdet_identity_plus_of_a_truly_indefinite_or_non_finite_matrix_is_nan():
    """A matrix indefinite beyond rounding (not a Gram at all) or with a NaN entry has no logdet: NaN, for the run's
    numerical guard, and no exception."""
    indefinite = torch.diag(torch.tensor([1.0, -5.0]))
    non_finite = torch.full((2, 2), float("nan"))
    with counting_fallbacks() as fallbacks:
        values = logdet_identity_plus(torch.stack([torch.eye(2), indefinite, non_finite]), 1.0)
    assert fallbacks.total() == 2
    with counting_fallbacks() as outside:
        pass
    assert outside.total() == 0  # a tally counts only its own block
    assert float(values[0]) == pytest.approx(2 * math.log(2.0), rel=1e-6)
    assert torch.isnan(values[1:]).all()


# ----------------------------------------------------------------------------------------------------------------
# 8. Consensus residual
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("J", [1, 4])
def test_consensus_residual_is_max_frobenius_distance(J):
    K, d = 5, 6
    g = torch.Generator().manual_seed(J)
    V_self = random_symmetric(K, d, d, generator=g, scale=1.0)
    V_neighbors = random_symmetric(J, K, d, d, generator=g, scale=1.0)
    V_neighbors[J - 1, 3] = V_self[3] + 5.0  # ||5 * ones(d, d)||_F = 30, the largest by far
    expected = 0.0
    for j in range(J):
        for k in range(K):
            expected = max(expected, math.sqrt(float(((V_self[k] - V_neighbors[j, k]) ** 2).sum())))
    assert expected == pytest.approx(30.0)
    assert float(consensus_residual(V_self, V_neighbors)) == pytest.approx(expected, rel=1e-12)
    V_neighbors[J - 1, 3] = V_self[3]
    expected_rest = max(
        math.sqrt(float(((V_self[k] - V_neighbors[j, k]) ** 2).sum())) for j in range(J) for k in range(K)
    )
    assert float(consensus_residual(V_self, V_neighbors)) == pytest.approx(expected_rest, rel=1e-12)
    assert float(consensus_residual(V_self, V_self.unsqueeze(0).repeat(J, 1, 1, 1))) == 0.0


def test_consensus_residual_without_neighbours_is_undefined():
    """No edge, no residual: NaN (null in the metrics), never 0, which would read as perfect agreement."""
    V_self = torch.randn(3, 4, 4, dtype=F64)
    residual = consensus_residual(V_self, torch.zeros(0, 3, 4, 4, dtype=F64))
    assert residual.shape == () and math.isnan(float(residual))
