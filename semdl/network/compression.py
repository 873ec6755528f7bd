"""Compressed messages: how a node's class statistics travel to its neighbours, and what that costs.

A message carries, for every class it shares, the class statistic V^k (d, d) and the count m_k. Counts always
travel as float32 (COUNT_BYTES per class): they must stay exact integers. The statistic travels as chosen by
`comm.compress`:

  none      d*d float32 values, exactly.
  fp16      d*d float16 values. float16 overflows above 65504; statistics of unit-norm features have entries
            in [-1, 1], so they fit (entries below 2^-14 lose relative precision as subnormals).
  bf16      d*d bfloat16 values (float32's range, 8 bits of mantissa).
  lowrank   the top r_k eigenpairs of V^k: r_k eigenvalues and r_k eigenvectors of length d, r_k*(d+1) float32
            values; r_k is chosen per node and class from `comm.rank`, `comm.energy` and the count.

Everything runs batched on the statistics' device and never reads a device value to the host, except that
torch.linalg.eigh itself checks the solver's error codes on the host (torch offers no eigh without that check).
ErrorFeedback keeps what compression dropped and adds it to the next message (error feedback), so that the sum of
what neighbours receive tracks the sum of what was meant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

COMPRESSIONS = ("none", "fp16", "bf16", "lowrank")
COUNT_BYTES = 4  # a class's count travels as one float32


class Compression(ABC):
    """How a node's class statistics travel: encode to the wire form, decode back, and what that costs."""

    bytes_per_value: int

    @abstractmethod
    def encode(self, statistics: Tensor, counts: Tensor) -> tuple[Tensor, ...]:
        """The wire form of statistics (n, K, d, d) with counts (n, K): a tuple of tensors, each with leading dims
        (n, K) (so that a transport may all-gather or index them along dim 0)."""

    @abstractmethod
    def decode(self, wire: tuple[Tensor, ...]) -> Tensor:
        """The statistics (n, K, d, d) a receiver rebuilds, in torch's default float dtype."""

    @abstractmethod
    def values_per_class(self, wire: tuple[Tensor, ...]) -> Tensor:
        """How many values each class's statistic costs on the wire (n, K), a device float tensor (not read to
        the host). Excludes the count."""

    @abstractmethod
    def fixed_values_per_class(self, dim: int) -> int | None:
        """values_per_class when it is known on the host without looking at the message (statistics of dimension
        `dim`); None when it depends on the data."""


class NoCompression(Compression):
    """Statistics travel as they are: d*d float32 values per class."""

    bytes_per_value = 4

    def encode(self, statistics: Tensor, counts: Tensor) -> tuple[Tensor, ...]:
        return (statistics,)

    def decode(self, wire: tuple[Tensor, ...]) -> Tensor:
        return wire[0].to(torch.get_default_dtype())  # no copy when it is already the default dtype

    def values_per_class(self, wire: tuple[Tensor, ...]) -> Tensor:
        return _full_matrices(wire[0])

    def fixed_values_per_class(self, dim: int) -> int | None:
        return dim * dim


class HalfPrecision(Compression):
    """Statistics travel as d*d values of a 2-byte float dtype (torch.float16 or torch.bfloat16).

    float16 overflows above 65504 and has subnormals below 2^-14: fine for statistics of unit-norm features,
    whose entries lie in [-1, 1]."""

    bytes_per_value = 2

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def encode(self, statistics: Tensor, counts: Tensor) -> tuple[Tensor, ...]:
        return (statistics.to(self.dtype),)

    def decode(self, wire: tuple[Tensor, ...]) -> Tensor:
        return wire[0].to(torch.get_default_dtype())

    def values_per_class(self, wire: tuple[Tensor, ...]) -> Tensor:
        return _full_matrices(wire[0])

    def fixed_values_per_class(self, dim: int) -> int | None:
        return dim * dim


def _full_matrices(matrices: Tensor) -> Tensor:
    """d*d values for every matrix of `matrices` (..., d, d): a float tensor (...) on their device."""
    dim = matrices.shape[-1]
    return torch.full(matrices.shape[:-2], float(dim * dim), dtype=torch.get_default_dtype(), device=matrices.device)


class LowRank(Compression):
    """Each class statistic travels as its top r_k eigenpairs, r_k*(d+1) float32 values.

    r_k, per node and class, is the smallest of: `rank` (when given); when `energy` is given, the smallest r
    whose top-r eigenvalues hold at least `energy` of the trace; and the count m_k (a statistic of m_k samples
    has rank at most m_k; a class without samples sends nothing). The wire has a fixed width r_max (rank, at most
    d; d without a rank): eigenvalues (n, K, r_max), descending, and eigenvectors (n, K, d, r_max), both zero
    beyond r_k. Lossless to float precision when r_k >= the rank of the statistic."""

    bytes_per_value = 4

    def __init__(self, rank: int | None, energy: float | None):
        if rank is None and energy is None:
            raise ValueError("lowrank compression needs a rank, an energy, or both")
        self.rank = rank
        self.energy = energy

    def encode(self, statistics: Tensor, counts: Tensor) -> tuple[Tensor, ...]:
        dim = statistics.shape[-1]
        width = dim if self.rank is None else min(self.rank, dim)
        ascending_values, ascending_vectors = torch.linalg.eigh(statistics)
        # A statistic is PSD: negative eigenvalues are rounding, sent as 0 so that the receiver's matrix is PSD.
        values = ascending_values.flip(-1).clamp_min(0)
        vectors = ascending_vectors.flip(-1)
        kept_pairs = self._kept_pairs(values, counts)  # (n, K)
        position = torch.arange(1, width + 1, dtype=values.dtype, device=values.device)
        sent = position <= kept_pairs.unsqueeze(-1)  # (n, K, width)
        sent_values = torch.where(sent, values[..., :width], 0)
        sent_vectors = torch.where(sent.unsqueeze(-2), vectors[..., :width], 0)
        return sent_values, sent_vectors

    def _kept_pairs(self, values: Tensor, counts: Tensor) -> Tensor:
        """r_k (n, K) as floats, from the eigenvalues (n, K, d) (descending, >= 0) and the counts (n, K)."""
        kept = counts.to(values.dtype)
        if self.rank is not None:
            kept = kept.clamp_max(self.rank)
        if self.energy is not None:
            # Eigenvalues at rounding level (torch.linalg.matrix_rank's tolerance, d * eps * the largest) hold no
            # energy: otherwise energy=1.0 would send every noise eigenvector of a rank-deficient statistic.
            dim = values.shape[-1]
            noise = dim * torch.finfo(values.dtype).eps * values[..., :1]
            energy = torch.where(values > noise, values, 0).cumsum(-1)
            # The top-r pairs fall short of the threshold for every r below the smallest that reaches it.
            short = energy < self.energy * energy[..., -1:]
            kept = torch.minimum(kept, short.sum(-1).to(values.dtype) + 1)
        return kept

    def decode(self, wire: tuple[Tensor, ...]) -> Tensor:
        values, vectors = wire
        statistics = (vectors * values.unsqueeze(-2)) @ vectors.mT
        # U diag(lambda) U^T as a product is symmetric only up to rounding; a statistic must be exactly symmetric.
        statistics = (statistics + statistics.mT) / 2
        return statistics.to(torch.get_default_dtype())

    def values_per_class(self, wire: tuple[Tensor, ...]) -> Tensor:
        _, vectors = wire
        dim = vectors.shape[-2]
        # A sent eigenvector has unit norm: the pairs a class carries are its nonzero eigenvector columns.
        pairs = (vectors != 0).any(-2).sum(-1)
        return pairs.to(torch.get_default_dtype()) * (dim + 1)

    def fixed_values_per_class(self, dim: int) -> int | None:
        return None  # r_k depends on the counts and the data


def build_compression(name: str, rank: int | None, energy: float | None) -> Compression:
    """The compression `comm.compress=name` (one of COMPRESSIONS); rank and energy matter only for lowrank."""
    if name == "none":
        return NoCompression()
    if name == "fp16":
        return HalfPrecision(torch.float16)
    if name == "bf16":
        return HalfPrecision(torch.bfloat16)
    if name == "lowrank":
        return LowRank(rank, energy)
    raise ValueError(f"unknown compression {name!r}; expected one of {', '.join(COMPRESSIONS)}")


def relative_error(original: Tensor, decoded: Tensor) -> Tensor:
    """Per node (n,), the relative Frobenius error ||V - V_hat||_F / ||V||_F over all K classes of its message
    (original and decoded (n, K, d, d)); 0 where ||V||_F = 0."""
    dims = (-3, -2, -1)
    size = torch.linalg.vector_norm(original, dim=dims)
    error = torch.linalg.vector_norm(original - decoded, dim=dims)
    return torch.where(size > 0, error / torch.where(size > 0, size, 1), 0)


def send(compression: Compression, statistics: Tensor, counts: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """A message without error feedback: the wire form of statistics (n, K, d, d) with counts (n, K), and the
    statistics a receiver decodes from it."""
    wire = compression.encode(statistics, counts)
    return wire, compression.decode(wire)


class ErrorFeedback:
    """Messages with error feedback: each local node adds what compression dropped from its earlier messages to
    the next one, so the sum of decoded messages differs from the sum of statistics by the current residual only.

    residual (n, K, d, d): what compression has dropped so far, per local node (zeros at the start); an attribute,
    so that a checkpoint can save and restore it."""

    def __init__(self, compression: Compression, residual: Tensor):
        self.compression = compression
        self.residual = residual

    def send(
        self, statistics: Tensor, counts: Tensor, rows: slice = slice(None), sending: Tensor | None = None
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Encode statistics + residual of the local nodes `rows` (all by default); the residual becomes
        (statistics + residual) - decoded, where `sending` (n,) allows (a node that sends nothing keeps its
        residual); returns (wire, decoded)."""
        meant = statistics + self.residual[rows]
        wire, decoded = send(self.compression, meant, counts)
        dropped = meant - decoded
        if sending is not None:
            dropped = torch.where(sending[:, None, None, None], dropped, self.residual[rows])
        self.residual[rows] = dropped
        return wire, decoded


def message_bytes(values_per_class: Tensor, shared_classes: Tensor, bytes_per_value: int) -> Tensor:
    """Bytes of a message (...): over the classes it carries (shared_classes (..., K), a bool or 0/1 mask; or how
    many messages carry each class, for their total), each class's values (values_per_class (..., K)) at
    bytes_per_value each plus its count's COUNT_BYTES."""
    per_class = values_per_class * bytes_per_value + COUNT_BYTES
    return (per_class * shared_classes).sum(-1)
