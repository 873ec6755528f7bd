"""The cluster objective of the non-i.i.d. solver (docs/algorithms.md section 5, steps 3-4) against plain references.

The references below are written out with Python loops over classes, members and neighbours and take
torch.logdet of d x d float64 matrices; they use nothing from semdl.
"""

from __future__ import annotations

import math

import pytest
import torch

from semdl.objectives import (
    ClusterContext,
    cluster_block_loss,
    cluster_rate_reduction,
    consensus_penalty,
    consensus_residual,
    rate_reduction,
)

F64 = torch.float64
EPS_SQ = 0.5


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------------
# Plain references (float64, loops, d x d logdets)
# ----------------------------------------------------------------------------------------------------------------


def ref_logdet(scale, gram: torch.Tensor) -> torch.Tensor:
    return torch.logdet(torch.eye(gram.shape[-1], dtype=F64) + scale * gram)


def ref_rates_from_data(Z: torch.Tensor, labels: list[int], num_classes: int, eps_sq: float):
    """(R, Rc) of labelled data Z (m, d), straight from the MCR² definitions."""
    m, d = Z.shape
    R = 0.5 * ref_logdet(d / (m * eps_sq), Z.T @ Z)
    Rc = torch.zeros((), dtype=F64)
    for k in range(num_classes):
        rows = [index for index, label in enumerate(labels) if label == k]
        if not rows:
            continue
        Zk = Z[rows]
        Rc = Rc + len(rows) / (2 * m) * ref_logdet(d / (len(rows) * eps_sq), Zk.T @ Zk)
    return R, Rc


def ref_rates_from_grams(grams: dict[int, torch.Tensor], counts: dict[int, float], d: int, eps_sq: float):
    """(R, Rc) of per-class Grams Gamma^k and sizes mu^k (dicts over the classes that have data)."""
    mu = sum(counts.values())
    total = torch.zeros(d, d, dtype=F64)
    for k in grams:
        total = total + grams[k]
    R = 0.5 * ref_logdet(d / (mu * eps_sq), total)
    Rc = torch.zeros((), dtype=F64)
    for k in grams:
        Rc = Rc + counts[k] / (2 * mu) * ref_logdet(d / (counts[k] * eps_sq), grams[k])
    return R, Rc


def ref_consensus(Z, labels, num_classes, V_self, V_neighbors, shared, dual, rho):
    """sum over classes k present in the batch of <Y^k, Vhat^k> + rho/2 sum_{j: shared[j,k]} ||Vhat^k - M_j^k||^2."""
    total = torch.zeros((), dtype=F64)
    for k in range(num_classes):
        rows = [index for index, label in enumerate(labels) if label == k]
        if not rows:
            continue
        Zk = Z[rows]
        V_hat = Zk.T @ Zk / len(rows)
        total = total + (dual[k] * V_hat).sum()
        for j in range(V_neighbors.shape[0]):
            if shared is None or bool(shared[j, k]):
                anchor = (V_self[k] + V_neighbors[j, k]) / 2
                total = total + rho / 2 * ((V_hat - anchor) ** 2).sum()
    return total


# ----------------------------------------------------------------------------------------------------------------
# Helpers building data
# ----------------------------------------------------------------------------------------------------------------


def unit_rows(generator: torch.Generator, m: int, d: int) -> torch.Tensor:
    Z = torch.randn(m, d, generator=generator, dtype=F64)
    return Z / Z.norm(dim=1, keepdim=True)


def member_data(generator, classes: list[int], per_class: list[int], d: int):
    """Unit-norm features of one member: per_class[i] rows of class classes[i]; shuffled order."""
    labels = [k for k, n in zip(classes, per_class) for _ in range(n)]
    permutation = torch.randperm(len(labels), generator=generator).tolist()
    labels = [labels[i] for i in permutation]
    return unit_rows(generator, len(labels), d), labels


def grams_and_counts(Z, labels, num_classes):
    """Plain per-class Grams Z_k^T Z_k (K, d, d), zero for absent classes, and counts (K,)."""
    d = Z.shape[1]
    grams = torch.zeros(num_classes, d, d, dtype=F64)
    counts = torch.zeros(num_classes, dtype=F64)
    for index, label in enumerate(labels):
        grams[label] += torch.outer(Z[index], Z[index])
        counts[label] += 1
    return grams, counts


def random_statistic(generator, d: int, samples: int = 7) -> torch.Tensor:
    """A PSD matrix shaped like a semantic statistic V (mean of unit-norm outer products)."""
    Z = unit_rows(generator, samples, d)
    return Z.T @ Z / samples


def random_statistics(generator, d: int, neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A node's statistic of every class, (K, d, d), and its neighbours', (neighbours, K, d, d), drawn in that order."""
    own = torch.stack([random_statistic(generator, d) for _ in range(NUM_CLASSES)])
    theirs = [torch.stack([random_statistic(generator, d) for _ in range(NUM_CLASSES)]) for _ in range(neighbours)]
    return own, torch.stack(theirs)


# ----------------------------------------------------------------------------------------------------------------
# (a) cluster_rate_reduction is the rate reduction of the replica-weighted union of the members' data
# ----------------------------------------------------------------------------------------------------------------

MEMBERS = [  # (classes, samples per class); members 0 and 2 share class 2, members 1 and 2 share class 3
    ([0, 1, 2], [5, 4, 6]),
    ([1, 3], [3, 7]),
    ([2, 3, 4], [4, 2, 5]),
]


def _members(seed: int, d: int, num_classes: int):
    generator = torch.Generator().manual_seed(seed)
    data = [member_data(generator, classes, per_class, d) for classes, per_class in MEMBERS]
    stacked = [grams_and_counts(Z, labels, num_classes) for Z, labels in data]
    grams = torch.stack([g for g, _ in stacked])
    counts = torch.stack([c for _, c in stacked])
    return data, grams, counts


@pytest.mark.parametrize(
    ("weights", "multiplicities"),
    [([1.0, 0.5, 1.0], [2, 1, 2]), ([1.0, 1.0, 1.0], [1, 1, 1]), ([0.5, 1 / 3, 1.0], [3, 2, 6])],
)
@pytest.mark.parametrize("d", [4, 9])
def test_cluster_rate_reduction_equals_replicated_concatenation(weights, multiplicities, d):
    num_classes = 5
    data, grams, counts = _members(seed=10 + d, d=d, num_classes=num_classes)
    # Check grams/counts are zero outside each member's label set, as the cluster objective expects.
    for j, (classes, _) in enumerate(MEMBERS):
        for k in range(num_classes):
            if k not in classes:
                assert counts[j, k] == 0 and grams[j, k].abs().max() == 0

    dR_C, R_C, Rc_C = cluster_rate_reduction(grams, counts, torch.tensor(weights, dtype=F64), EPS_SQ)

    # Replica weighting = duplicating member j's rows multiplicities[j] times (all weights times a constant).
    rows, labels = [], []
    for (Z, member_labels), times in zip(data, multiplicities):
        for _ in range(times):
            rows.append(Z)
            labels.extend(member_labels)
    union = torch.cat(rows)
    R_ref, Rc_ref = ref_rates_from_data(union, labels, num_classes, EPS_SQ)
    dR_lib, R_lib, Rc_lib = rate_reduction(union, torch.tensor(labels), num_classes, EPS_SQ)

    for value, ref, lib in ((dR_C, R_ref - Rc_ref, dR_lib), (R_C, R_ref, R_lib), (Rc_C, Rc_ref, Rc_lib)):
        assert value.dtype == F64
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(value, lib, rtol=1e-5, atol=0)


def test_cluster_rate_reduction_all_weights_one_is_plain_concatenation():
    num_classes, d = 5, 6
    data, grams, counts = _members(seed=3, d=d, num_classes=num_classes)
    union = torch.cat([Z for Z, _ in data])
    labels = [label for _, member_labels in data for label in member_labels]
    R_ref, Rc_ref = ref_rates_from_data(union, labels, num_classes, EPS_SQ)

    dR_C, R_C, Rc_C = cluster_rate_reduction(grams, counts, torch.ones(3, dtype=F64), EPS_SQ)
    torch.testing.assert_close(R_C, R_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(Rc_C, Rc_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(dR_C, R_ref - Rc_ref, rtol=1e-5, atol=0)


def test_cluster_rate_reduction_gammas_weight_the_two_rates():
    data, grams, counts = _members(seed=4, d=5, num_classes=5)
    weights = torch.tensor([1.0, 0.5, 1.0], dtype=F64)
    _, R, Rc = cluster_rate_reduction(grams, counts, weights, EPS_SQ)
    dR, R2, Rc2 = cluster_rate_reduction(grams, counts, weights, EPS_SQ, gamma1=1.5, gamma2=0.25)
    torch.testing.assert_close(dR, 1.5 * R - 0.25 * Rc, rtol=1e-12, atol=0)
    torch.testing.assert_close(R2, R, rtol=1e-12, atol=0)
    torch.testing.assert_close(Rc2, Rc, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# (b) node 0's block-step loss in the published 4-node cluster {0, 1}
# ----------------------------------------------------------------------------------------------------------------

NUM_CLASSES = 10
NODE0 = [1, 2, 3, 4, 5]
NODE1 = [0, 6, 7, 8, 9]


def _published_cluster(seed: int, d: int, absent: int = 4):
    """Node 0's batch (class `absent` missing), its full counts and stored Grams, and node 1's shared statistics."""
    generator = torch.Generator().manual_seed(seed)
    own_counts = torch.zeros(NUM_CLASSES, dtype=F64)
    stored = torch.zeros(NUM_CLASSES, d, d, dtype=F64)
    for k in NODE0:
        own_counts[k] = 20 + 3 * k
        stored[k] = own_counts[k] * random_statistic(generator, d)
    batch_classes = [k for k in NODE0 if k != absent]
    Z, labels = member_data(generator, batch_classes, [3 + (k % 3) for k in batch_classes], d)
    other_counts = torch.zeros(NUM_CLASSES, dtype=F64)
    other_grams = torch.zeros(NUM_CLASSES, d, d, dtype=F64)
    for k in NODE1:
        other_counts[k] = 15 + 2 * k
        other_grams[k] = other_counts[k] * random_statistic(generator, d)
    return Z, labels, own_counts, stored, other_grams, other_counts


def ref_rescaled_loss(Z, labels, own_counts, stored, other_grams, other_counts, eps_sq):
    """-[R - Rc] of the cluster {0, 1} with node 0's batch rescaled to its full size (the `rescaled` variant):
    Gamma^k and mu^k assembled by hand (docs/algorithms.md section 5, step 4)."""
    d = Z.shape[1]
    grams, counts = {}, {}
    for k in NODE0:
        rows = [index for index, label in enumerate(labels) if label == k]
        if rows:
            ZBk = Z[rows]
            grams[k] = own_counts[k] / len(rows) * (ZBk.T @ ZBk)
        else:
            grams[k] = stored[k]
        counts[k] = float(own_counts[k])
    for k in NODE1:
        grams[k] = other_grams[k]
        counts[k] = float(other_counts[k])
    R, Rc = ref_rates_from_grams(grams, counts, d, eps_sq)
    return -(R - Rc)


def ref_published_batch_loss(Z, labels, other_grams, other_counts, eps_sq):
    """-[R - Rc] of the cluster {0, 1} as the published code forms it: node 0's raw batch Grams Z_Bk^T Z_Bk with
    the batch counts m_Bk, classes absent from the batch left out, beside node 1's full-set Grams and counts."""
    d = Z.shape[1]
    grams, counts = {}, {}
    for k in NODE0:
        rows = [index for index, label in enumerate(labels) if label == k]
        if rows:
            grams[k] = Z[rows].T @ Z[rows]
            counts[k] = float(len(rows))
    for k in NODE1:
        grams[k] = other_grams[k]
        counts[k] = float(other_counts[k])
    R, Rc = ref_rates_from_grams(grams, counts, d, eps_sq)
    return -(R - Rc)


def _block_losses(Z, labels, own_counts, stored, other_grams, other_counts, d):
    """Both scalings of cluster_block_loss (no consensus terms), with their gradients with respect to Z."""
    zeros = torch.zeros(NUM_CLASSES, d, d, dtype=F64)
    penalty = consensus_penalty(zeros, zeros[None], zeros, 0.0)
    results = {}
    for scaling in ("published", "rescaled"):
        Z_lib = Z.clone().requires_grad_(True)
        loss = cluster_block_loss(
            Z_lib,
            torch.tensor(labels),
            NUM_CLASSES,
            EPS_SQ,
            own_counts,
            stored,
            [ClusterContext(other_grams, other_counts, 1.0)],
            penalty,
            batch_scaling=scaling,
        )
        loss.backward()
        results[scaling] = (loss.detach(), Z_lib.grad)
    return results


def _node0_data(generator, d: int, per_class: int, batch: int):
    """Node 0's whole local set (per_class samples of each of its classes) and a batch of `batch` of each."""
    Z, labels = member_data(generator, NODE0, [per_class] * len(NODE0), d)
    rows = [index for k in NODE0 for index in [i for i, label in enumerate(labels) if label == k][:batch]]
    own_counts = torch.zeros(NUM_CLASSES, dtype=F64)
    stored = torch.zeros(NUM_CLASSES, d, d, dtype=F64)
    for k in NODE0:
        own_counts[k] = per_class
        members = [i for i, label in enumerate(labels) if label == k]
        stored[k] = Z[members].T @ Z[members]
    return Z[rows], [labels[i] for i in rows], own_counts, stored


def _node1_statistics(generator, d: int):
    other_counts = torch.zeros(NUM_CLASSES, dtype=F64)
    other_grams = torch.zeros(NUM_CLASSES, d, d, dtype=F64)
    for k in NODE1:
        other_counts[k] = 10
        other_grams[k] = other_counts[k] * random_statistic(generator, d)
    return other_grams, other_counts


def test_both_batch_scalings_agree_when_the_batch_is_the_local_set():
    """At batch = local set, m_Bk = m_k and Z_Bk^T Z_Bk = G_k: the published and the rescaled block losses are
    the same number and gradient, both equal to the plain reference."""
    d = 6
    generator = torch.Generator().manual_seed(31)
    Z, labels, own_counts, stored = _node0_data(generator, d, per_class=10, batch=10)
    other_grams, other_counts = _node1_statistics(generator, d)
    results = _block_losses(Z, labels, own_counts, stored, other_grams, other_counts, d)
    Z_ref = Z.clone().requires_grad_(True)
    reference = ref_published_batch_loss(Z_ref, labels, other_grams, other_counts, EPS_SQ)
    reference.backward()
    for loss, gradient in results.values():
        torch.testing.assert_close(loss, reference.detach(), rtol=1e-10, atol=0)
        torch.testing.assert_close(gradient, Z_ref.grad, rtol=1e-8, atol=1e-12)


def test_batch_scalings_differ_as_the_math_says_on_a_batch_of_3_of_10():
    """A batch of 3 of node 0's 10 samples per class: `published` is the raw-batch reference, `rescaled` the
    rescaled reference, and the two are different losses."""
    d = 6
    generator = torch.Generator().manual_seed(32)
    Z, labels, own_counts, stored = _node0_data(generator, d, per_class=10, batch=3)
    other_grams, other_counts = _node1_statistics(generator, d)
    results = _block_losses(Z, labels, own_counts, stored, other_grams, other_counts, d)
    for scaling, reference_loss in (
        ("published", lambda Z_: ref_published_batch_loss(Z_, labels, other_grams, other_counts, EPS_SQ)),
        ("rescaled", lambda Z_: ref_rescaled_loss(Z_, labels, own_counts, stored, other_grams, other_counts, EPS_SQ)),
    ):
        Z_ref = Z.clone().requires_grad_(True)
        reference = reference_loss(Z_ref)
        reference.backward()
        loss, gradient = results[scaling]
        torch.testing.assert_close(loss, reference.detach(), rtol=1e-10, atol=0, msg=scaling)
        torch.testing.assert_close(gradient, Z_ref.grad, rtol=1e-8, atol=1e-12, msg=scaling)
    (published, published_grad), (rescaled, rescaled_grad) = results["published"], results["rescaled"]
    assert abs(published - rescaled) > 0.05 * abs(rescaled)
    cosine = torch.nn.functional.cosine_similarity(published_grad.flatten(), rescaled_grad.flatten(), dim=0)
    assert cosine < 0.999


def test_published_scaling_leaves_an_absent_class_out_of_the_own_terms():
    """A class of node 0's label set missing from the batch: its stored Gram does not enter the published loss."""
    d = 5
    Z, labels, own_counts, stored, other_grams, other_counts = _published_cluster(seed=3, d=d, absent=4)
    changed = stored.clone()
    changed[4] *= 3
    first = _block_losses(Z, labels, own_counts, stored, other_grams, other_counts, d)["published"][0]
    second = _block_losses(Z, labels, own_counts, changed, other_grams, other_counts, d)["published"][0]
    assert first == second
    torch.testing.assert_close(first, ref_published_batch_loss(Z, labels, other_grams, other_counts, EPS_SQ))


@pytest.mark.parametrize(("d", "absent"), [(6, 4), (12, 1)])
def test_rescaled_block_loss_on_the_published_cluster_value_and_gradient(d, absent):
    Z, labels, own_counts, stored, other_grams, other_counts = _published_cluster(seed=d, d=d, absent=absent)
    generator = torch.Generator().manual_seed(100 + d)
    V_self, V_neighbors = random_statistics(generator, d, 2)
    penalty = consensus_penalty(V_self, V_neighbors, torch.zeros(NUM_CLASSES, d, d, dtype=F64), 0.0)

    Z_lib = Z.clone().requires_grad_(True)
    stored_lib = stored.clone().requires_grad_(True)
    loss = cluster_block_loss(
        Z_lib,
        torch.tensor(labels),
        NUM_CLASSES,
        EPS_SQ,
        own_counts,
        stored_lib,
        [ClusterContext(other_grams, other_counts, 1.0)],
        penalty,
        batch_scaling="rescaled",
    )
    loss.backward()

    Z_ref = Z.clone().requires_grad_(True)
    reference = ref_rescaled_loss(Z_ref, labels, own_counts, stored, other_grams, other_counts, EPS_SQ)
    reference.backward()

    assert loss.dtype == F64
    torch.testing.assert_close(loss.detach(), reference.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(Z_lib.grad, Z_ref.grad, rtol=1e-6, atol=1e-9)
    # The absent class's stored Gram enters without gradient.
    assert stored_lib.grad is None


def test_block_loss_uses_stored_gram_only_for_absent_classes():
    """Changing the stored Gram of a class present in the batch changes nothing; of the absent class, it does."""
    d = 5
    Z, labels, own_counts, stored, other_grams, other_counts = _published_cluster(seed=1, d=d, absent=4)
    zeros = torch.zeros(NUM_CLASSES, d, d, dtype=F64)
    penalty = consensus_penalty(zeros, zeros[None], zeros, 0.0)

    def loss_with(stored_grams):
        return cluster_block_loss(
            Z,
            torch.tensor(labels),
            NUM_CLASSES,
            EPS_SQ,
            own_counts,
            stored_grams,
            [ClusterContext(other_grams, other_counts, 1.0)],
            penalty,
            batch_scaling="rescaled",
        )

    base = loss_with(stored)
    changed_present = stored.clone()
    changed_present[2] *= 3
    torch.testing.assert_close(loss_with(changed_present), base, rtol=1e-12, atol=0)
    changed_absent = stored.clone()
    changed_absent[4] *= 3
    assert not torch.isclose(loss_with(changed_absent), base, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# (c) consensus part with per-class neighbour sets, and the consensus residual
# ----------------------------------------------------------------------------------------------------------------

# shared[j, k] for 3 neighbours and the 10 classes: node 0's classes 1..5 have different neighbour sets
# (class 3 has none); the other classes' entries do not matter for node 0 but are set anyway.
SHARED = torch.tensor(
    [
        [1, 1, 0, 0, 1, 0, 1, 0, 1, 0],
        [0, 1, 1, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0, 1, 1, 1],
    ],
    dtype=torch.bool,
)


def test_block_loss_consensus_part_with_per_class_neighbour_sets():
    d, rho = 5, 2.0
    Z, labels, own_counts, stored, other_grams, other_counts = _published_cluster(seed=7, d=d, absent=4)
    generator = torch.Generator().manual_seed(77)
    V_self, V_neighbors = random_statistics(generator, d, 3)
    dual = torch.randn(NUM_CLASSES, d, d, generator=generator, dtype=F64)
    dual = dual + dual.mT
    penalty = consensus_penalty(V_self, V_neighbors, dual, rho, SHARED)
    no_penalty = consensus_penalty(V_self, V_neighbors, torch.zeros_like(dual), 0.0, SHARED)
    cluster = [ClusterContext(other_grams, other_counts, 1.0)]
    label_tensor = torch.tensor(labels)

    Z_lib = Z.clone().requires_grad_(True)
    full = cluster_block_loss(
        Z_lib, label_tensor, NUM_CLASSES, EPS_SQ, own_counts, stored, cluster, penalty, batch_scaling="rescaled"
    )
    rates_only = cluster_block_loss(
        Z_lib, label_tensor, NUM_CLASSES, EPS_SQ, own_counts, stored, cluster, no_penalty, batch_scaling="rescaled"
    )
    consensus_lib = full - rates_only
    consensus_lib.backward()

    Z_ref = Z.clone().requires_grad_(True)
    consensus_ref = ref_consensus(Z_ref, labels, NUM_CLASSES, V_self, V_neighbors, SHARED, dual, rho)
    consensus_ref.backward()

    torch.testing.assert_close(consensus_lib.detach(), consensus_ref.detach(), rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(Z_lib.grad, Z_ref.grad, rtol=1e-6, atol=1e-9)
    # And the whole loss equals the rates reference plus the consensus reference.
    rates_ref = ref_rescaled_loss(Z, labels, own_counts, stored, other_grams, other_counts, EPS_SQ)
    total_ref = rates_ref + ref_consensus(Z, labels, NUM_CLASSES, V_self, V_neighbors, SHARED, dual, rho)
    torch.testing.assert_close(full.detach(), total_ref, rtol=1e-6, atol=0)


def test_consensus_terms_ignore_unshared_neighbours_and_absent_classes():
    """Moving an unshared neighbour's statistic, or any statistic of a class absent from the batch, changes nothing."""
    d, rho = 4, 1.5
    Z, labels, own_counts, stored, other_grams, other_counts = _published_cluster(seed=8, d=d, absent=4)
    generator = torch.Generator().manual_seed(8)
    V_self, V_neighbors = random_statistics(generator, d, 3)
    dual = torch.randn(NUM_CLASSES, d, d, generator=generator, dtype=F64)
    cluster = [ClusterContext(other_grams, other_counts, 1.0)]

    def loss_with(neighbors, dual_):
        return cluster_block_loss(
            Z,
            torch.tensor(labels),
            NUM_CLASSES,
            EPS_SQ,
            own_counts,
            stored,
            cluster,
            consensus_penalty(V_self, neighbors, dual_, rho, SHARED),
            batch_scaling="rescaled",
        )

    base = loss_with(V_neighbors, dual)
    moved = V_neighbors.clone()
    moved[0, 2] += 5.0  # neighbour 0 does not share class 2
    moved[:, 3] += 5.0  # class 3 has no neighbour at all
    moved[:, 4] += 5.0  # class 4 is absent from the batch
    dual_moved = dual.clone()
    dual_moved[4] += 5.0  # ... so is its dual
    torch.testing.assert_close(loss_with(moved, dual_moved), base, rtol=1e-12, atol=1e-12)
    shared_moved = V_neighbors.clone()
    shared_moved[1, 2] += 5.0  # neighbour 1 does share class 2
    assert not torch.isclose(loss_with(shared_moved, dual), base, rtol=1e-6, atol=0)


def test_consensus_residual_is_max_shared_frobenius_distance():
    d = 4
    generator = torch.Generator().manual_seed(5)
    V_self, V_neighbors = random_statistics(generator, d, 3)
    V_neighbors[0, 2] += 10.0  # the largest distance, but neighbour 0 does not share class 2
    expected = torch.zeros((), dtype=F64)
    everything = torch.zeros((), dtype=F64)
    for j in range(3):
        for k in range(NUM_CLASSES):
            distance = torch.sqrt(((V_self[k] - V_neighbors[j, k]) ** 2).sum())
            everything = torch.maximum(everything, distance)
            if SHARED[j, k]:
                expected = torch.maximum(expected, distance)
    assert expected < 5 < everything
    torch.testing.assert_close(consensus_residual(V_self, V_neighbors, SHARED), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(consensus_residual(V_self, V_neighbors), everything, rtol=1e-12, atol=0)
    nobody = torch.zeros_like(SHARED)
    assert math.isnan(float(consensus_residual(V_self, V_neighbors, nobody)))  # no shared class: undefined, not 0


# ----------------------------------------------------------------------------------------------------------------
# (d) virtual replication: a node in two clusters
# ----------------------------------------------------------------------------------------------------------------


def test_block_loss_node_in_two_clusters_averages_the_cluster_rate_reductions():
    """Node i (classes {0,1,2}, S_i = 2, weight 1/2) is in C1 = {i, a} and C2 = {i, b, c}; b is itself replicated."""
    d, K = 5, 6
    generator = torch.Generator().manual_seed(21)
    own_classes = [0, 1, 2]
    own_counts = torch.zeros(K, dtype=F64)
    stored = torch.zeros(K, d, d, dtype=F64)
    for k in own_classes:
        own_counts[k] = 10 + k
        stored[k] = own_counts[k] * random_statistic(generator, d)
    Z, labels = member_data(generator, [0, 2], [4, 3], d)  # class 1 absent from the batch

    def member(classes):
        counts = torch.zeros(K, dtype=F64)
        grams = torch.zeros(K, d, d, dtype=F64)
        for k in classes:
            counts[k] = 8 + 2 * k
            grams[k] = counts[k] * random_statistic(generator, d)
        return grams, counts

    G_a, m_a = member([3, 4, 5])
    G_b, m_b = member([2, 3, 5])  # shares class 2 with node i
    G_c, m_c = member([4])
    w_i, w_b = 0.5, 0.5
    clusters = [
        ClusterContext(G_a, m_a, w_i),
        ClusterContext(w_b * G_b + G_c, w_b * m_b + m_c, w_i),
    ]
    zeros = torch.zeros(K, d, d, dtype=F64)
    penalty = consensus_penalty(zeros, zeros[None], zeros, 0.0)

    Z_lib = Z.clone().requires_grad_(True)
    loss = cluster_block_loss(
        Z_lib, torch.tensor(labels), K, EPS_SQ, own_counts, stored, clusters, penalty, batch_scaling="rescaled"
    )
    loss.backward()

    # Node i's own batch-rescaled Grams, built by hand.
    Z_ref = Z.clone().requires_grad_(True)
    own_grams = []
    for k in range(K):
        rows = [index for index, label in enumerate(labels) if label == k]
        if rows:
            own_grams.append(own_counts[k] / len(rows) * (Z_ref[rows].T @ Z_ref[rows]))
        else:
            own_grams.append(stored[k])
    G_i = torch.stack(own_grams)
    dR_1, _, _ = cluster_rate_reduction(
        torch.stack([G_i, G_a]), torch.stack([own_counts, m_a]), torch.tensor([w_i, 1.0], dtype=F64), EPS_SQ
    )
    dR_2, _, _ = cluster_rate_reduction(
        torch.stack([G_i, G_b, G_c]),
        torch.stack([own_counts, m_b, m_c]),
        torch.tensor([w_i, w_b, 1.0], dtype=F64),
        EPS_SQ,
    )
    expected = -(dR_1 + dR_2) / 2
    expected.backward()

    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(Z_lib.grad, Z_ref.grad, rtol=1e-6, atol=1e-9)

    # The same numbers from the plain reference: Gamma^k = sum_j w_j G_j^k, mu^k = sum_j w_j m_j^k.
    def plain_dR(members):
        grams, counts = {}, {}
        for G, m, w in members:
            for k in range(K):
                if m[k] > 0:
                    grams[k] = grams.get(k, torch.zeros(d, d, dtype=F64)) + w * G[k]
                    counts[k] = counts.get(k, 0.0) + w * float(m[k])
        R, Rc = ref_rates_from_grams(grams, counts, d, EPS_SQ)
        return R - Rc

    G_i_plain = G_i.detach()
    plain = (
        -(
            plain_dR([(G_i_plain, own_counts, w_i), (G_a, m_a, 1.0)])
            + plain_dR([(G_i_plain, own_counts, w_i), (G_b, m_b, w_b), (G_c, m_c, 1.0)])
        )
        / 2
    )
    torch.testing.assert_close(loss.detach(), plain, rtol=1e-6, atol=0)
