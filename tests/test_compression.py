"""semdl.network.compression: what each compression delivers, against independent computations (numpy in float64,
known spectra), what a message costs, error feedback, and that nothing but eigh's error check waits for a device.

Tolerances (u = unit roundoff: 2^-53 float64, 2^-24 float32, 2^-11 float16, 2^-8 bfloat16):
  - rounding to a 2-byte dtype: |x - fl(x)| <= u |x| for every normal x, and <= half the smallest subnormal
    spacing (2^-25 for float16) below float16's normal range, so ||V - fl(V)||_F <= u ||V||_F + d 2^-25.
  - torch.linalg.eigh is backward stable: the computed pairs are exact for V + E, ||E||_F <= p(d) u ||V||_F with
    p(d) a modest multiple of d (LAPACK syevd); rebuilding U diag(lambda) U^T adds another d u ||V||_F. We allow
    4 d u ||V||_F in all, for the eigensolver and the rebuild together.
  - a truncation to the top r eigenpairs is unique only with a gap g = lambda_r - lambda_{r+1} > 0; the computed
    r-dimensional eigenspace moves by at most ~ ||E|| / g (Davis-Kahan), so two float64 computations of the best
    rank-r approximation agree to ~ d u ||V||^2 / g. The tests assert the gap they rely on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from helpers.sync_probe import SyncProbe
from semdl.network.compression import (
    COMPRESSIONS,
    COUNT_BYTES,
    ErrorFeedback,
    HalfPrecision,
    LowRank,
    NoCompression,
    build_compression,
    message_bytes,
    relative_error,
    send,
)

F64 = torch.float64
U64 = 2.0**-53
U32 = 2.0**-24


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default float dtype inside the block (decode returns the default dtype); restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def float64_default():
    with default_dtype(F64):
        yield


def class_statistic(samples: int, dim: int, generator: torch.Generator, dtype=F64) -> torch.Tensor:
    """V = Z^T Z / m for m random unit-norm features Z (m, d); the zero matrix for m = 0."""
    if samples == 0:
        return torch.zeros(dim, dim, dtype=dtype)
    features = torch.randn(samples, dim, generator=generator, dtype=F64)
    features = features / features.norm(dim=1, keepdim=True)
    return (features.T @ features / samples).to(dtype)


def node_statistics(counts: list[list[int]], dim: int, seed: int = 0, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics (n, K, d, d) of counts[i][k] random unit-norm features, and the counts (n, K) as float32."""
    generator = torch.Generator().manual_seed(seed)
    statistics = torch.stack([torch.stack([class_statistic(m, dim, generator, dtype) for m in row]) for row in counts])
    return statistics, torch.tensor(counts, dtype=torch.float32)


def with_spectrum(eigenvalues: list[float], generator: torch.Generator) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T for a random orthogonal Q (float64)."""
    dim = len(eigenvalues)
    orthogonal, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=F64))
    return orthogonal @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ orthogonal.T


def best_rank(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The best rank-r approximation of a PSD matrix (numpy SVD in float64: singular pairs = eigenpairs)."""
    left, singular, right = np.linalg.svd(matrix)
    return (left[:, :rank] * singular[:rank]) @ right[:rank]


def sent_pairs(compression, wire, dim: int) -> torch.Tensor:
    """r_k (n, K) from what a lowrank message costs: r_k (d + 1) values."""
    return compression.values_per_class(wire) / (dim + 1)


# ----------------------------------------------------------------------------------------------------------------
# none, fp16, bf16
# ----------------------------------------------------------------------------------------------------------------


def test_build_compression_names_every_choice_and_refuses_others():
    assert [type(build_compression(name, 4, None)).__name__ for name in COMPRESSIONS] == [
        "NoCompression",
        "HalfPrecision",
        "HalfPrecision",
        "LowRank",
    ]
    assert build_compression("fp16", None, None).dtype == torch.float16
    assert build_compression("bf16", None, None).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown compression 'topk'"):
        build_compression("topk", 4, None)
    with pytest.raises(ValueError, match="needs a rank, an energy"):
        LowRank(None, None)


def test_none_delivers_the_statistics_exactly_at_d_squared_float32_values_per_class():
    dim = 6
    statistics, counts = node_statistics([[4, 7, 0]], dim, dtype=torch.float32)
    compression = NoCompression()
    wire, decoded = send(compression, statistics, counts)
    assert decoded is statistics  # float32 is the default dtype: nothing copied
    assert torch.equal(compression.values_per_class(wire), torch.full((1, 3), float(dim * dim)))
    assert compression.fixed_values_per_class(dim) == dim * dim
    shared = torch.tensor([[True, False, True]])
    sent = message_bytes(compression.values_per_class(wire), shared, compression.bytes_per_value)
    assert torch.equal(sent, torch.tensor([2 * (dim * dim * 4 + 4.0)]))
    assert sent.item() == 2 * (dim * dim + 1) * 4  # the closed form: (d*d + 1) float32 values per class
    assert torch.equal(relative_error(statistics, decoded), torch.zeros(1))
    # A node without samples sends zero matrices: its relative error is 0 (not 0/0).
    empty = torch.zeros(1, 3, dim, dim)
    lossy = torch.full_like(empty, 1e-3)
    assert torch.equal(relative_error(torch.cat([empty, statistics]), torch.cat([lossy, statistics])), torch.zeros(2))


@pytest.mark.parametrize("dtype, roundoff", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)])
def test_half_precision_rounds_each_entry_once(dtype, roundoff):
    dim = 8
    statistics, counts = node_statistics([[5, 40, 1], [0, 3, 9]], dim, seed=1, dtype=torch.float32)
    compression = HalfPrecision(dtype)
    wire, decoded = send(compression, statistics, counts)
    assert wire[0].dtype == dtype and decoded.dtype == torch.float32
    assert torch.equal(decoded, statistics.to(dtype).to(torch.float32))
    # One rounding per entry (module docstring): u ||V||_F, plus d 2^-25 for float16 subnormals (bfloat16 has
    # float32's range: none); the factor 1.001 covers float32's own rounding of the two norms (~ d^2 2^-24).
    size = torch.linalg.vector_norm(statistics, dim=(-3, -2, -1))
    subnormal = dim * 2.0**-25 if dtype == torch.float16 else 0.0
    error = relative_error(statistics, decoded)
    assert (error <= (roundoff + subnormal / size) * 1.001).all(), (error, roundoff)
    assert (error > 0).all()  # random entries are not all representable in 2 bytes: the test sees the rounding
    values = compression.values_per_class(wire)
    assert torch.equal(values, torch.full((2, 3), float(dim * dim)))
    assert compression.fixed_values_per_class(dim) == dim * dim
    shared = torch.tensor([[True, True, True], [False, True, False]])
    sent = message_bytes(values, shared, compression.bytes_per_value)
    assert torch.equal(sent, torch.tensor([3 * (2 * dim * dim + 4.0), 1 * (2 * dim * dim + 4.0)]))


# ----------------------------------------------------------------------------------------------------------------
# lowrank
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_lowrank_with_enough_rank_is_lossless_and_sends_at_most_the_count_of_pairs(dtype):
    dim, rank = 16, 8
    counts = [[3, 0, 8, 12], [1, 5, 0, 2]]
    statistics, count_tensor = node_statistics(counts, dim, seed=2, dtype=dtype)
    compression = LowRank(rank, None)
    with default_dtype(dtype):
        wire, decoded = send(compression, statistics, count_tensor)
    eigenvalues, eigenvectors = wire
    assert eigenvalues.shape == (2, 4, rank) and eigenvectors.shape == (2, 4, dim, rank)
    assert decoded.dtype == dtype and torch.equal(decoded, decoded.mT)  # exactly symmetric
    expected_pairs = torch.tensor(counts, dtype=torch.float32).clamp_max(rank)
    assert torch.equal(sent_pairs(compression, wire, dim), expected_pairs.to(torch.get_default_dtype()))
    assert compression.fixed_values_per_class(dim) is None
    # Eigenvalues descending, zero beyond r_k (and eigenvectors too: the wire carries only what it costs).
    assert (eigenvalues[..., :-1] >= eigenvalues[..., 1:]).all()
    position = torch.arange(1, rank + 1)
    beyond = position > expected_pairs.unsqueeze(-1)
    assert (eigenvalues[beyond] == 0).all() and (eigenvectors.transpose(-1, -2)[beyond] == 0).all()
    # Classes without samples cost nothing and decode to zero.
    assert torch.equal(decoded[0, 1], torch.zeros(dim, dim, dtype=dtype))
    assert torch.equal(decoded[1, 2], torch.zeros(dim, dim, dtype=dtype))
    # Lossless (4 d u ||V||_F, module docstring) wherever the rank covers the class: every class but [0, 3].
    unit = U64 if dtype == F64 else U32
    errors = torch.linalg.vector_norm(decoded - statistics, dim=(-2, -1))
    bounds = 4 * dim * unit * torch.linalg.vector_norm(statistics, dim=(-2, -1))
    lossless = expected_pairs >= torch.tensor(counts)
    assert (errors <= bounds)[lossless].all(), (errors, bounds)
    assert errors[0, 3] > 1e-3  # 12 samples at rank 8 do lose something: the bound above is not vacuous
    shared = torch.tensor([[True, True, False, True], [True, True, True, False]])
    sent = message_bytes(compression.values_per_class(wire), shared, compression.bytes_per_value)
    # r_k (d + 1) float32 values and a count per shared class: node 0 shares classes 0, 1, 3; node 1: 0, 1, 2.
    expected_bytes = [sum(pairs * (dim + 1) * 4 + COUNT_BYTES for pairs in row) for row in ([3, 0, 8], [1, 5, 0])]
    assert sent.tolist() == expected_bytes


def test_lowrank_below_the_rank_is_the_best_rank_r_approximation(float64_default):
    dim, rank = 10, 3
    counts = [[20, 7, 2], [50, 0, 4]]
    statistics, count_tensor = node_statistics(counts, dim, seed=3)
    wire, decoded = send(LowRank(rank, None), statistics, count_tensor)
    dropped_squares = np.zeros(2)
    for node, row in enumerate(counts):
        for k, samples in enumerate(row):
            matrix = statistics[node, k].numpy()
            eigenvalues = np.sort(np.linalg.eigvalsh(matrix))[::-1]
            kept = min(rank, samples)
            if samples:
                gap = eigenvalues[kept - 1] - eigenvalues[kept] if kept < dim else eigenvalues[-1]
                assert gap > 1e-3, gap  # the truncation is unique (module docstring)
                tolerance = 4 * dim * U64 * np.linalg.norm(matrix) ** 2 / gap
            else:
                tolerance = 0.0
            expected = best_rank(matrix, kept)
            assert np.abs(decoded[node, k].numpy() - expected).max() <= tolerance, (node, k)
            dropped_squares[node] += np.sum(np.clip(eigenvalues[kept:], 0, None) ** 2)
    sizes = torch.linalg.vector_norm(statistics, dim=(-3, -2, -1)).numpy()
    expected_error = np.sqrt(dropped_squares) / sizes
    assert np.allclose(relative_error(statistics, decoded).numpy(), expected_error, rtol=1e-9, atol=0)
    assert (expected_error > 0.1).all()  # rank 3 of up to 10 dimensions drops a lot: the comparison means something


def spectra_statistics(generator: torch.Generator) -> tuple[torch.Tensor, list[list[float]]]:
    """One node, four classes in d = 8 with known spectra (rotated by random orthogonal matrices)."""
    spectra = [
        [0.5, 0.3, 0.15, 0.05, 0, 0, 0, 0],
        [0.4, 0.2, 0.2, 0.1, 0.05, 0.03, 0.02, 0.0],
        [1.0, 0, 0, 0, 0, 0, 0, 0],
        [0.125] * 8,
    ]
    statistics = torch.stack([with_spectrum(spectrum, generator) for spectrum in spectra]).unsqueeze(0)
    return statistics, spectra


def smallest_rank_with_energy(spectrum: list[float], energy: float) -> int:
    """numpy: the smallest r whose top-r eigenvalues hold at least `energy` of their sum."""
    cumulative = np.cumsum(sorted(spectrum, reverse=True))
    return int(np.argmax(cumulative >= energy * cumulative[-1])) + 1


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("energy", [0.55, 0.7, 0.85, 0.97, 1.0])
def test_energy_picks_the_smallest_rank_holding_that_share_of_the_trace(energy, dtype):
    dim = 8
    statistics, spectra = spectra_statistics(torch.Generator().manual_seed(4))
    statistics = statistics.to(dtype)
    # Thresholds sit away from every cumulative share (ties would be decided by rounding).
    for spectrum in spectra:
        shares = np.cumsum(sorted(spectrum, reverse=True)) / sum(spectrum)
        assert energy == 1.0 or np.abs(shares - energy).min() > 1e-3
    many = torch.full((1, 4), 100.0)
    compression = LowRank(None, energy)
    with default_dtype(dtype):
        wire, decoded = send(compression, statistics, many)
    expected = [smallest_rank_with_energy(spectrum, energy) for spectrum in spectra]
    assert sent_pairs(compression, wire, dim).tolist() == [expected]
    if energy == 1.0:
        # all the energy: the numerical rank (4, 7, 1, 8), not the rotation's rounding-level eigenvalues
        assert expected == [4, 7, 1, 8]
        unit = U64 if dtype == F64 else U32
        assert torch.allclose(decoded, statistics, rtol=0, atol=4 * dim * unit)  # ||V||_F <= 1 here
    # The count caps it: 2 samples make at most a rank-2 statistic.
    few = torch.tensor([[2.0, 100.0, 0.0, 5.0]])
    wire, _ = send(compression, statistics, few)
    assert sent_pairs(compression, wire, dim).tolist() == [[min(r, m) for r, m in zip(expected, [2, 100, 0, 5])]]
    # So does a rank given with the energy.
    capped = LowRank(2, energy)
    wire, _ = send(capped, statistics, many)
    assert wire[0].shape == (1, 4, 2)
    assert sent_pairs(capped, wire, dim).tolist() == [[min(r, 2) for r in expected]]


def test_lowrank_sends_rounding_level_negative_eigenvalues_as_zero(float64_default):
    """A statistic is PSD; eigh returns its zero eigenvalues as +-rounding: the wire carries them as 0, so that a
    receiver's statistic is PSD too."""
    statistics, _ = spectra_statistics(torch.Generator().manual_seed(4))
    computed = torch.linalg.eigvalsh(statistics)
    assert (computed < 0).any()  # the rotations' rounding does give negative eigenvalues to send
    wire, decoded = send(LowRank(8, None), statistics, torch.full((1, 4), 100.0))
    assert (wire[0] >= 0).all()
    assert torch.allclose(wire[0], computed.flip(-1).clamp_min(0), rtol=0, atol=4 * 8 * U64)


def test_energy_one_on_sampled_statistics_sends_the_count_of_pairs(float64_default):
    dim = 12
    counts = [[3, 1, 0, 30]]
    statistics, count_tensor = node_statistics(counts, dim, seed=5)
    compression = LowRank(None, 1.0)
    wire, decoded = send(compression, statistics, count_tensor)
    assert sent_pairs(compression, wire, dim).tolist() == [[3, 1, 0, dim]]
    errors = torch.linalg.vector_norm(decoded - statistics, dim=(-2, -1))
    assert (errors <= 4 * dim * U64 * torch.linalg.vector_norm(statistics, dim=(-2, -1))).all(), errors


# ----------------------------------------------------------------------------------------------------------------
# error feedback
# ----------------------------------------------------------------------------------------------------------------


def test_the_first_residual_is_what_compression_dropped(float64_default):
    statistics, counts = node_statistics([[9, 4], [0, 20]], 6, seed=6)
    feedback = ErrorFeedback(LowRank(2, None), torch.zeros_like(statistics))
    wire, decoded = feedback.send(statistics, counts)
    assert torch.equal(feedback.residual, statistics - decoded)
    assert torch.linalg.vector_norm(feedback.residual) > 0.1
    plain_wire, plain_decoded = send(LowRank(2, None), statistics, counts)
    assert torch.equal(decoded, plain_decoded) and all(map(torch.equal, wire, plain_wire))


def accumulated_errors(compression, statistics, counts, rounds: int, feedback: bool) -> list[float]:
    """||sum_{t<=T} decoded_t - T V||_F for T = 1..rounds, sending the same statistics every round."""
    sender = ErrorFeedback(compression, torch.zeros_like(statistics)) if feedback else None
    total = torch.zeros_like(statistics)
    errors = []
    for sent_so_far in range(1, rounds + 1):
        _, decoded = sender.send(statistics, counts) if feedback else send(compression, statistics, counts)
        total = total + decoded
        errors.append(torch.linalg.vector_norm(total - sent_so_far * statistics).item())
    return errors


def test_error_feedback_keeps_the_accumulated_fp16_error_within_one_rounding(float64_default):
    dim, rounds = 8, 30
    statistics, counts = node_statistics([[10, 3, 25]], dim, seed=7)
    compression = HalfPrecision(torch.float16)
    size = torch.linalg.vector_norm(statistics).item()
    one_round = accumulated_errors(compression, statistics, counts, 1, feedback=False)[0]
    without = accumulated_errors(compression, statistics, counts, rounds, feedback=False)
    # The same rounding every round: the error grows linearly (float64 sums of float16 values are exact here).
    assert np.allclose(without, one_round * np.arange(1, rounds + 1), rtol=1e-9, atol=0)
    sender = ErrorFeedback(compression, torch.zeros_like(statistics))
    total = torch.zeros_like(statistics)
    for sent_so_far in range(1, rounds + 1):
        _, decoded = sender.send(statistics, counts)
        total = total + decoded
        # sum decoded = T V - residual_T; each residual is one rounding of V + the previous one: it stays within
        # u/(1 - u) ||V||_F, plus float16's subnormal term (module docstring) for each of the K classes.
        drift = torch.linalg.vector_norm(total - sent_so_far * statistics)
        residual = torch.linalg.vector_norm(sender.residual)
        assert math.isclose(drift.item(), residual.item(), rel_tol=1e-6, abs_tol=rounds * dim * U64)
        bound = 2.0**-11 / (1 - 2.0**-11) * size + math.sqrt(3) * dim * 2.0**-25
        assert residual <= bound, (sent_so_far, residual, bound)
    assert without[-1] > 10 * bound  # the bound separates the two


def test_error_feedback_keeps_the_accumulated_lowrank_error_bounded(float64_default):
    dim, rank, rounds = 8, 2, 60
    statistics, counts = node_statistics([[50, 200]], dim, seed=8)
    compression = LowRank(rank, None)
    size = torch.linalg.vector_norm(statistics).item()
    without = accumulated_errors(compression, statistics, counts, rounds, feedback=False)
    assert np.allclose(without, without[0] * np.arange(1, rounds + 1), rtol=1e-9, atol=0)
    with_feedback = accumulated_errors(compression, statistics, counts, rounds, feedback=True)
    # Top-r of a PSD matrix keeps at least r/d of its squared norm: ||x - C(x)|| <= q ||x||, q = sqrt(1 - r/d), and
    # residual_t = x_t - C(x_t) with x_t = V + residual_{t-1} (PSD), so ||residual_t|| <= q/(1 - q) ||V||_F.
    contraction = math.sqrt(1 - rank / dim)
    bound = contraction / (1 - contraction) * size
    assert max(with_feedback) <= bound * (1 + 1e-9), (max(with_feedback), bound)
    assert without[-1] > 5 * bound  # without feedback, 60 rounds of the same truncation leave the bound far behind


# ----------------------------------------------------------------------------------------------------------------
# batching and the device
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, rank, energy", [("fp16", None, None), ("lowrank", 4, None), ("lowrank", 6, 0.9)])
def test_nodes_at_once_match_one_node_at_a_time(name, rank, energy, float64_default):
    dim = 8
    statistics, counts = node_statistics([[2, 30, 0], [12, 6, 40]], dim, seed=9)
    compression = build_compression(name, rank, energy)
    wire, decoded = send(compression, statistics, counts)
    errors = relative_error(statistics, decoded)
    values = compression.values_per_class(wire)
    shared = torch.tensor([[True, False, True], [True, True, True]])
    sent = message_bytes(values, shared, compression.bytes_per_value)
    for node in range(2):
        one_wire, one_decoded = send(compression, statistics[node : node + 1], counts[node : node + 1])
        # Batched and single eigh run the same LAPACK routine per matrix; 4 d u ||V|| (module docstring) allows
        # for a different blocking.
        assert torch.allclose(one_decoded[0], decoded[node], rtol=0, atol=4 * dim * U64)
        assert torch.allclose(relative_error(statistics[node : node + 1], one_decoded), errors[node : node + 1])
        one_values = compression.values_per_class(one_wire)
        assert torch.equal(one_values[0], values[node])
        one_sent = message_bytes(one_values, shared[node : node + 1], compression.bytes_per_value)
        assert torch.equal(one_sent[0], sent[node])
    # The message bytes of (nodes, neighbours, K) masks: one row per neighbour.
    neighbours = torch.stack([shared, shared.flip(0)])  # (2 nodes, 2 neighbours, K)
    per_neighbour = message_bytes(values.unsqueeze(1), neighbours, compression.bytes_per_value)
    assert torch.equal(per_neighbour[:, 0], sent)


def test_nothing_waits_for_the_device_but_eigh(float64_default):
    """tests/helpers/sync_probe.py: no op of encode, decode, values_per_class, the error and the bytes reads a device
    value on the host (in simulate mode, as CUDA would), except torch.linalg.eigh, whose kernel checks the solver's
    error codes on the host (torch has no eigh without that check)."""
    statistics, counts = node_statistics([[3, 0, 20], [7, 1, 2]], 8, seed=10)
    shared = torch.ones(2, 3, dtype=torch.bool)
    for compression in (NoCompression(), HalfPrecision(torch.bfloat16), LowRank(4, 0.8), LowRank(None, 1.0)):
        feedback = ErrorFeedback(compression, torch.zeros_like(statistics))
        probe = SyncProbe(simulate=True)
        with probe:
            for sender in (lambda s, c, compression=compression: send(compression, s, c), feedback.send):
                wire, decoded = sender(statistics, counts)
                relative_error(statistics, decoded)
                message_bytes(compression.values_per_class(wire), shared, compression.bytes_per_value)
        assert probe.ops_seen > 0
        expected = ["aten._linalg_eigh.default"] if isinstance(compression, LowRank) else []
        assert probe.ops() == expected, probe.report()
