"""Coding rates of MCR² (Yu et al. 2020) as pure, batched tensor functions; rows of Z are samples.

Every logdet is taken on the smaller side of its Gram matrix (Sylvester's identity) and all classes
share one batched Cholesky factorisation; zero padding leaves logdet(I + c G) unchanged.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor


def identity_plus_cholesky(gram: Tensor, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """Cholesky factors of I + scale * gram for a batch (..., n, n), scale (...) or a number, and where a first
    factorisation failed (bool (...)), decided on the device: no host wait.

    Rounding can make I + scale * gram, positive definite in exact arithmetic, slightly indefinite (a nearly
    singular Gram times a large scale). Those matrices are factorised again with their diagonal shifted by
    n * u * (their largest diagonal entry), u the dtype's unit roundoff: the size of the rounding error of
    forming and factorising them, so the shift stays within what float precision can resolve. A matrix that
    still fails (a non-finite one) gets a NaN factor, so its logdet is NaN, for the run's numerical guard.
    """
    if torch.is_tensor(scale):
        scale = scale[..., None, None]
    n = gram.shape[-1]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    matrices = eye + scale * gram
    factor, info = torch.linalg.cholesky_ex(matrices)
    failed = info != 0
    if factor.device.type == "cpu" and not bool(failed.any()):
        return factor, failed  # on the CPU the flag costs no wait, and a retry nobody selects is skipped
    shift = n * torch.finfo(gram.dtype).eps * matrices.diagonal(dim1=-2, dim2=-1).amax(-1)
    retried, retry_info = torch.linalg.cholesky_ex(matrices + shift[..., None, None] * eye)
    retried = torch.where((retry_info == 0)[..., None, None], retried, float("nan"))
    return torch.where(failed[..., None, None], retried, factor), failed


def logdet_of_factor(factor: Tensor) -> Tensor:
    """logdet(L L^T) of Cholesky factors (..., n, n)."""
    return 2 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def inverse_of_factor(factor: Tensor) -> Tensor:
    """(L L^T)^-1 of Cholesky factors (..., n, n), through the triangular inverse: unlike cholesky_inverse, which
    checks LAPACK's error codes on the host, it never waits for the device (and costs about the same on the CPU)."""
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    inverse_factor = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
    return inverse_factor.mT @ inverse_factor


def gram_smaller_side(X: Tensor) -> tuple[Tensor, bool]:
    """The Gram of X (..., r, n) on its smaller side, X X^T (r < n) or X^T X, and whether it is the row side.
    Both give the same logdet(I + s Gram) (Sylvester) and the same Frobenius norm."""
    rows = X.shape[-2] < X.shape[-1]
    return (X @ X.mT if rows else X.mT @ X), rows


def times_on_side(matrix: Tensor, X: Tensor, rows: bool) -> Tensor:
    """matrix @ X for a row-side matrix (..., r, r), X @ matrix for a column-side one (..., n, n): how a function of
    gram_smaller_side(X) passes its gradient back to X."""
    return matrix @ X if rows else X @ matrix


class FallbackTally:
    """How many matrices needed the shifted refactorisation inside one `counting_fallbacks` block, as a device
    tensor (so counting adds no host wait); `total()` reads it."""

    def __init__(self) -> None:
        self.count: Tensor | None = None

    def add(self, failed: Tensor) -> None:
        found = failed.sum()
        self.count = found if self.count is None else self.count + found.to(self.count.device)

    def total(self) -> int:
        return 0 if self.count is None else int(self.count)


_tally: ContextVar[FallbackTally | None] = ContextVar("semdl_fallback_tally", default=None)


@contextmanager
def counting_fallbacks() -> Iterator[FallbackTally]:
    """Count the shifted refactorisations of the logdets computed inside the block (a round counts its own, so no
    counter outlives the work it describes)."""
    tally = FallbackTally()
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


def factor_counted(gram: Tensor, scale: Tensor | float) -> Tensor:
    """identity_plus_cholesky's factors, its refactorisations counted by the enclosing `counting_fallbacks`."""
    factor, failed = identity_plus_cholesky(gram, scale)
    tally = _tally.get()
    if tally is not None:
        tally.add(failed)
    return factor


class _CholeskyLogdet(torch.autograd.Function):
    """logdet(I + s G) through one Cholesky factor L; its gradient s (I + s G)^-1 reuses L, which is about twice
    as fast as differentiating through the factorisation."""

    @staticmethod
    def forward(ctx, gram: Tensor, scale: Tensor) -> Tensor:
        factor = factor_counted(gram, scale)
        ctx.save_for_backward(factor, scale)
        return logdet_of_factor(factor)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logdet: Tensor) -> tuple[Tensor, None]:
        factor, scale = ctx.saved_tensors
        return (grad_logdet * scale)[..., None, None] * inverse_of_factor(factor), None


def logdet_identity_plus(gram: Tensor, scale: Tensor | float) -> Tensor:
    """logdet(I + scale * gram) for a batch (..., n, n) of symmetric PSD matrices; `scale` (...) is a constant,
    a tensor or a Python number (which costs no host-to-device copy). NaN for a non-finite matrix; a matrix that
    rounding made indefinite is factorised with a shifted diagonal (see identity_plus_cholesky)."""
    batch_shape, n = gram.shape[:-2], gram.shape[-1]
    if not torch.is_tensor(scale):
        scale = gram.new_full((), scale)
    scales = scale.to(gram.dtype).expand(batch_shape).reshape(-1)
    return _CholeskyLogdet.apply(gram.reshape(-1, n, n), scales).reshape(batch_shape)


def coding_rate(Z: Tensor, eps_sq: float) -> Tensor:
    """R(Z) = 1/2 logdet(I_d + d/(m eps_sq) Z^T Z) for features Z of shape (m, d)."""
    m, d = Z.shape
    return 0.5 * logdet_identity_plus(gram_smaller_side(Z)[0], d / (m * eps_sq))


def pad_by_class(Z: Tensor, labels: Tensor, num_classes: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Rows of Z grouped by class into a zero-padded (K, width, d) tensor, and the class counts (K,).

    Z (..., m, d) and labels (..., m) may carry leading batch dimensions (several nodes' batches, grouped each on
    its own): then the result is (..., K, width, d) and (..., K). Labels must lie in [0, K): they are not checked
    here, since a check would wait for the device (semdl checks a dataset's labels once, when it is loaded).
    width defaults to the largest class count, which is read from the device (a host wait, since it is a shape);
    a caller that knows an upper bound (a node knows its largest local class) passes it.
    """
    batch_shape, d = labels.shape[:-1], Z.shape[-1]
    batch = math.prod(batch_shape)
    flat_labels = labels.reshape(-1)
    if batch > 1:
        offsets = num_classes * torch.arange(batch, device=labels.device)
        flat_labels = (labels.reshape(batch, -1) + offsets[:, None]).reshape(-1)
    # A scatter-add, not torch.bincount, which reads its input's largest value on the host to size its output.
    counts = torch.zeros(batch * num_classes, dtype=torch.long, device=labels.device)
    counts.index_add_(0, flat_labels, torch.ones_like(flat_labels))
    order = torch.argsort(flat_labels, stable=True)
    sorted_labels = flat_labels[order]
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(flat_labels.shape[0], device=labels.device) - starts[sorted_labels]
    if width is None:
        width = int(counts.max()) if labels.numel() else 0
    padded = Z.new_zeros(batch * num_classes, width, d).index_put((sorted_labels, slots), Z.reshape(-1, d)[order])
    return padded.reshape(*batch_shape, num_classes, width, d), counts.reshape(*batch_shape, num_classes)


def class_grams(Z: Tensor, labels: Tensor, num_classes: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-class Gram matrices Z_k^T Z_k (K, d, d) and class counts (K,), with any leading batch dimensions of
    Z (..., m, d) and labels (..., m) kept. width: as for pad_by_class."""
    padded, counts = pad_by_class(Z, labels, num_classes, width)
    return padded.mT @ padded, counts


def class_statistics(Z: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Semantic statistics V^k = Z_k^T Z_k / m_k (K, d, d), zero where m_k = 0, and the counts m_k (K,)."""
    grams, counts = class_grams(Z, labels, num_classes)
    return grams / counts.clamp_min(1)[:, None, None].to(grams.dtype), counts


def class_statistics_of(passes: Iterable[tuple[Tensor, Tensor]], num_classes: int, width: int) -> tuple[Tensor, Tensor]:
    """class_statistics accumulated over chunks (features (..., c, d), labels (..., c)), with any leading node
    dimensions kept: V^k (..., K, d, d) and m^k as float32 (..., K). width: an upper bound on one class's samples
    in the whole pass, so grouping reads nothing from the device."""
    grams = counts = None
    for features, labels in passes:
        chunk_grams, chunk_counts = class_grams(features, labels, num_classes, min(labels.shape[-1], width))
        grams = chunk_grams if grams is None else grams.add_(chunk_grams)
        counts = chunk_counts if counts is None else counts.add_(chunk_counts)
    statistics = grams / counts.clamp_min(1)[..., None, None].to(grams.dtype)
    return statistics, counts.to(grams.dtype)


def rates_from_class_grams(grams: Tensor, counts: Tensor, eps_sq: float) -> tuple[Tensor, Tensor]:
    """(R, Rc) from per-class Grams (K, d, d) and sizes (K,): one batched factorisation of the total and every class.

    Sizes may be fractional (replica-weighted counts); classes of size 0 add nothing.
    """
    d = grams.shape[-1]
    sizes = counts.to(grams.dtype)
    total_size = sizes.sum()
    all_grams = torch.cat([grams.sum(0, keepdim=True), grams])
    all_sizes = torch.cat([total_size.reshape(1), sizes])
    logdets = logdet_identity_plus(all_grams, d / (torch.where(all_sizes > 0, all_sizes, 1) * eps_sq))
    R = 0.5 * logdets[0]
    Rc = (sizes / (2 * total_size) * logdets[1:]).sum()
    return R, Rc


@dataclass(frozen=True)
class ClassBatch:
    """A labelled batch grouped by class, with the class Gram matrices a caller may reuse.

    padded (K, width, d): each class's rows, zero-padded; counts (K,): class sizes m_k; grams Z_k^T Z_k
    (K, d, d), set when the batch has at least d rows (then they also give Z^T Z by a sum); products Z_k Z_k^T
    (K, width, width), set when classes are thinner than d (their logdets are then the cheaper side).
    """

    padded: Tensor
    counts: Tensor
    grams: Tensor | None
    products: Tensor | None


# A pass over the K per-class d x d matrices is memory-bound; a product of the batch with d x d matrices is
# compute-bound and about this many times cheaper per d x d entry touched (measured on CPU, where the crossover
# between K=10 and K=100 at m=1000, d=128 lies). Below it, class Grams are worth forming for a batch of m >= d.
GRAM_PASS_COST = 30


def rate_terms(
    Z: Tensor, labels: Tensor, num_classes: int, eps_sq: float, width: int | None = None
) -> tuple[Tensor, Tensor, ClassBatch]:
    """(R, Rc, the batch grouped by class) of a labelled batch, each logdet on its cheaper side.

    width: an upper bound on the largest class count (see pad_by_class), or None to read it.
    """
    m, d = Z.shape
    padded, counts = pad_by_class(Z, labels, num_classes, width)
    use_grams = padded.shape[1] >= d or (m >= d and num_classes * GRAM_PASS_COST <= m)
    grams = padded.mT @ padded if use_grams else None
    if padded.shape[1] >= d:
        R, Rc = rates_from_class_grams(grams, counts, eps_sq)
        return R, Rc, ClassBatch(padded, counts, grams, None)
    sizes = counts.to(Z.dtype)
    R = 0.5 * logdet_identity_plus(grams.sum(0) if grams is not None else gram_smaller_side(Z)[0], d / (m * eps_sq))
    products = padded @ padded.mT
    Rc = (sizes / (2 * m) * logdet_identity_plus(products, d / (sizes.clamp_min(1) * eps_sq))).sum()
    return R, Rc, ClassBatch(padded, counts, grams, products)


def rate_reduction(
    Z: Tensor, labels: Tensor, num_classes: int, eps_sq: float, gamma1: float = 1.0, gamma2: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(dR, R, Rc) with dR = gamma1 R(Z) - gamma2 Rc(Z | labels); classes without samples add 0."""
    R, Rc, _ = rate_terms(Z, labels, num_classes, eps_sq)
    return gamma1 * R - gamma2 * Rc, R, Rc


def rate_reduction_from_statistics(
    V: Tensor, counts: Tensor, eps_sq: float, gamma1: float = 1.0, gamma2: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(dR, R, Rc) of the data behind statistics V (K, d, d) and counts (K,), without the data itself.

    Uses Z_k^T Z_k = m_k V^k. Pass statistics summed over nodes (G^k = sum_i m_i^k V_i^k, divided by
    sum_i m_i^k) to get the network-wide rate reduction of docs/algorithms.md section 3.
    """
    grams = V * counts.to(V.dtype)[:, None, None]
    R, Rc = rates_from_class_grams(grams, counts, eps_sq)
    return gamma1 * R - gamma2 * Rc, R, Rc


def pool_statistics(V: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Merge per-node statistics V (N, K, d, d) and counts (N, K) into the statistics of the union of the data."""
    pooled_counts = counts.sum(0)
    grams = (V * counts.to(V.dtype)[..., None, None]).sum(0)
    return grams / pooled_counts.clamp_min(1).to(V.dtype)[:, None, None], pooled_counts
