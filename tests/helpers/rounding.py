"""float32 error bounds that follow from the conditioning of the rate computations (not from what one CPU
produced): Higham's gamma_n and the bounds of logdet, its gradient, the rate reduction and the Gram."""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------------------------------------------
# float32 error bounds that follow from the conditioning of the computation (not from what one CPU produced)
# ----------------------------------------------------------------------------------------------------------------
#
# Rounding model (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed. 2002): fl(a op b) =
# (a op b)(1 + delta), |delta| <= u = 2^-24 in float32, and gamma_n = n u / (1 - n u).
#
# logdet(A), A = I + s X^T X (X is p x n: X = Z for the d x d "feature" side, X = Z^T for the m x m "kernel" side;
# both have the same logdet by Sylvester's identity), computed in float32 by forming the Gram, one Cholesky
# factorisation L L^T and 2 sum(log diag L):
#
#  1. Gram entries: an inner product of p terms, summed in ANY order (SIMD lanes, blocked GEMM, per-class Grams
#     summed afterwards; added zero padding is exact) satisfies |fl(x^T y) - x^T y| <= gamma_p |x|^T |y|
#     (Higham eq. (3.5) and section 3.1). One rounding for the product s * G, one for s itself, one for adding I
#     (and `extra` more, e.g. for statistics rescaled by counts and summed over K classes):
#         |Delta_1| <= gamma_{p+3+extra} s |X|^T |X|       (componentwise)
#  2. Cholesky: the computed factor is exact for A + Delta_2, |Delta_2| <= gamma_{n+1} |L| |L|^T (Higham Thm 10.3).
#  3. logdet(A + Delta) - logdet(A) = tr(A^-1 Delta) + r, with |tr(A^-1 Delta)| <= sum_ij |A^-1|_ij M_ij for
#     M = the two componentwise bounds above, and, since every eigenvalue of A is >= 1 (||A^-1||_2 <= 1), the
#     remainder |r| <= ||M||_F^2 / (2 (1 - ||M||_F)).  Here |A^-1| carries the conditioning: the bound grows with
#     the size of A^-1 against the entries of s X^T X and of |L||L|^T, i.e. with cond(A) and with the lengths p, n.
#  4. Every diag L_ii >= 1 (a Schur complement of A >= I), so the n logs and their sum add at most
#     gamma_{n+2} |logdet A| (one ulp per log, n - 1 additions, the factor 2).
#
# The gradient of logdet(I + s X^T X) with respect to X is g = 2 s X Y, Y = A^-1, computed from the Cholesky factor
# (cholesky_inverse) and a product with X. To first order its float32 error is
#  5. from A + Delta (steps 1-2):   -2 s X Y Delta Y
#  6. from inverting L (forward substitution per column, Higham Thm 8.5 and section 14.2; LAPACK's blocked trtri
#     has a bound of the same form): L^-1 + E, |E| <= gamma_n |L^-1| |L| |L^-1|, so 2 s X (L^-T E + E^T L^-1)
#  7. from the products L^-T L^-1 and X Y (inner products of length n, a few scalings):
#     gamma_n 2 s |X| |L^-T| |L^-1| + gamma_{n+5} 2 s |X| |Y|.
# Taken worst case (every rounding error aligned with the signs of Y), 5 and 6 are as large as g itself for the
# matrices of the tests, a bound that tells nothing. The gradient bound therefore models the rounding errors of 5
# and 6 as independent, zero-mean and within their worst-case magnitudes (Higham & Mary, SIAM J. Sci. Comput. 41,
# 2019): each entry of the error is a sum sum_i c_i delta_i with |delta_i| <= b_i, and by Hoeffding's inequality
# exceeds lambda * sqrt(sum_i c_i^2 b_i^2) with probability at most 2 exp(-lambda^2 / 2) (Delta is symmetric: its
# pairs Delta_ij = Delta_ji are one variable, which at most doubles the variance). lambda = 10: < 4e-22 per entry.
# Step 7 is kept worst case.
#
# The value bounds (1-4) are worst case: they hold for every summation order, thread count and SIMD width, and the
# rounding errors of an actual machine are typically 10-1000 times smaller. The side factorised is an implementation
# choice: semdl factorises the d x d side, or the m x m side when m < d, so both are bounded and the larger is kept.

F32_UNIT_ROUNDOFF = torch.finfo(torch.float32).eps / 2  # u = 2^-24


def gamma32(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u) for float32."""
    return n * F32_UNIT_ROUNDOFF / (1 - n * F32_UNIT_ROUNDOFF)


def _sides(Z: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
    """(X, transposed) for every side semdl may factorise: X^T X is d x d (X = Z), or m x m (X = Z^T) when m < d."""
    m, d = Z.shape
    return [(Z, False)] + ([(Z.T, True)] if m < d else [])


def _side_terms(X: torch.Tensor, scale: float, extra: int):
    """A = I + scale X^T X in float64, A^-1, its Cholesky factor L, and the componentwise bound M on the float32
    backward error of A (steps 1 and 2)."""
    p, n = X.shape
    A = torch.eye(n, dtype=torch.float64) + scale * X.T @ X
    L = torch.linalg.cholesky(A)
    M = gamma32(p + 3 + extra) * scale * X.abs().T @ X.abs() + gamma32(n + 1) * L.abs() @ L.abs().T
    return A, torch.cholesky_inverse(L), L, M


def float32_logdet_error_bound(Z: torch.Tensor, scale: float, extra: int = 0) -> float:
    """Bound on |float32 logdet(I + scale Z^T Z) - exact| for the points Z (m, d) (steps 1-4 above); `extra` counts
    roundings of each Gram entry beyond the inner product (e.g. statistics rescaled and summed over classes)."""
    Z = Z.detach().to(torch.float64)
    bounds = []
    for X, _ in _sides(Z):
        A, Y, _, M = _side_terms(X, scale, extra)
        norm = float(torch.linalg.matrix_norm(M))
        assert norm < 0.5, "rounding errors too large for a first-order bound"
        first_order = float((Y.abs() * M).sum())
        bounds.append(first_order + norm**2 / (2 * (1 - norm)) + gamma32(X.shape[1] + 2) * abs(float(torch.logdet(A))))
    return max(bounds)


def float32_logdet_gradient_error_bound(Z: torch.Tensor, scale: float, confidence: float = 10.0) -> torch.Tensor:
    """Componentwise bound (m, d) on |float32 d/dZ logdet(I + scale Z^T Z) - exact| (steps 5-7 above, first order),
    exceeded with probability at most 2 exp(-confidence^2 / 2) per entry under the independent-rounding model."""
    Z = Z.detach().to(torch.float64)
    bounds = []
    for X, transposed in _sides(Z):
        n = X.shape[1]
        _, Y, L, M = _side_terms(X, scale, 0)
        Linv = torch.linalg.inv(L)
        E = gamma32(n) * Linv.abs() @ L.abs() @ Linv.abs()
        variance = 2 * (X @ Y).square() @ M.square() @ Y.square()  # step 5
        variance += (X @ Linv.T).square() @ E.square() + X.square() @ E.square().T @ Linv.square()  # step 6
        worst_case = gamma32(n) * X.abs() @ Linv.abs().T @ Linv.abs() + gamma32(n + 5) * X.abs() @ Y.abs()  # 7
        bound = 2 * scale * (confidence * variance.sqrt() + worst_case)
        bounds.append(bound.T if transposed else bound)
    return torch.stack(bounds).amax(0)


def float32_logdet_error_bound_unit_rows(m: int, d: int, eps_sq: float, extra: int = 0) -> float:
    """float32_logdet_error_bound for R = 1/2 logdet(I + d/(m eps_sq) Z^T Z) of ANY m unit-norm rows in d dimensions,
    when only the sizes are known (the result is for logdet, not R). With |z|^2 <= 1 + gamma_{d+6} (rows normalised
    in float32), t = s ||Z||_F^2 <= d/eps_sq (1 + gamma_{d+6}) and tr A = n + t on an n x n side (inner length p);
    sum_ij |A^-1|_ij M_ij <= || |A^-1| ||_2 (gamma_{p+3+extra} t + gamma_{n+1} tr A) (row by row, and ||L||_F^2 = tr A),
    || |A^-1| ||_2 <= ||A^-1||_F <= sqrt(n); ||M||_F is at most the bracket; logdet A <= n log(tr A / n)."""
    t = d / eps_sq * (1 + gamma32(d + 6))
    bounds = []
    for n, p in [(d, m)] + ([(m, d)] if m < d else []):
        bracket = gamma32(p + 3 + extra) * t + gamma32(n + 1) * (n + t)
        assert bracket < 0.5, "rounding errors too large for a first-order bound"
        bounds.append(
            n**0.5 * bracket + bracket**2 / (2 * (1 - bracket)) + gamma32(n + 2) * n * math.log1p(t / n)
        )
    return max(bounds)


def float32_rate_reduction_error_bound_unit_rows(
    class_sizes: list[int], d: int, eps_sq: float, extra: int = 0
) -> float:
    """Bound on |float32 dR - exact| (gamma1 = gamma2 = 1) for any unit-norm features with these class sizes:
    1/2 the bound of the whole batch's logdet, m_k / (2m) that of each class, and gamma_{K+3} (weights, sum over
    classes) and gamma_2 (R - Rc) times upper bounds on the terms (logdet <= n log(1 + t/n), as above)."""
    m, K = sum(class_sizes), len(class_sizes)
    largest_logdet = d * math.log1p(1 / eps_sq * (1 + gamma32(d + 6)))
    R = 0.5 * largest_logdet
    bound = 0.5 * float32_logdet_error_bound_unit_rows(m, d, eps_sq, extra)
    for size in class_sizes:
        if size:
            bound += size / (2 * m) * float32_logdet_error_bound_unit_rows(size, d, eps_sq, extra)
    return bound + gamma32(K + 3) * R + gamma32(2) * 2 * R


def float32_gram_error_bound(Z: torch.Tensor, extra: int = 0) -> torch.Tensor:
    """Componentwise bound on |float32 Z^T Z - exact| (step 1): gamma_{m+extra} |Z|^T |Z|."""
    Z = Z.detach().to(torch.float64)
    return gamma32(Z.shape[0] + extra) * Z.abs().T @ Z.abs()
