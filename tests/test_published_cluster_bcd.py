"""cluster_bcd with the published batch scaling and batching equals a plain loop written from docs/algorithms.md
section 5, on the published 4-node table (scaled down), in float64: weights, statistics and duals.

The reference shares nothing with the solver but the encoders' definition and the seeds (node_seeds): it forms
every Gram, count, rate, consensus term and dual update itself, with Python loops over classes and members."""

from __future__ import annotations

import pytest
import torch

from helpers.configs import composed
from semdl.models import build_encoder
from semdl.network import node_seeds
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network

F64 = torch.float64
TABLE = [  # the published niid4 label sets, 10 samples per held class
    [0, 10, 10, 10, 10, 10, 0, 0, 0, 0],
    [10, 0, 0, 0, 0, 0, 10, 10, 10, 10],
    [10, 0, 0, 10, 0, 10, 0, 10, 0, 10],
    [0, 10, 10, 0, 10, 0, 10, 0, 10, 0],
]
ROUNDS = 3
CONFIG = [
    "data=synthetic",
    "data.num_classes=10",
    "data.ambient_dim=12",
    "data.subspace_dim=2",
    "data.train_per_class=20",
    "data.test_per_class=2",
    "partition=table",
    f"partition.counts={TABLE}".replace(" ", ""),
    "nodes=4",
    "model.hidden=[16]",
    "dim_z=6",
    "solver=cluster_bcd",
    "solver.rho=2.0",
    "solver.dual_step=0.1",
    "solver.batch_scaling=published",
    "train.batching=published",
    "train.batch_norm=running",  # the published code evaluates with the running averages training leaves
    "train.batch_size=15",  # 50 samples a node: batches of 15, 15, 15 and 5 (classes go missing from some)
    "train.local_epochs=2",
    "train.lr=0.01",
    "device=cpu",
]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(previous)


def logdet_identity_plus(scale: float, gram: torch.Tensor) -> torch.Tensor:
    return torch.logdet(torch.eye(gram.shape[0], dtype=F64) + scale * gram)


class Reference:
    """Section 5 written out: label sets, clusters {0,1} and {2,3} (the published table's), Gauss-Seidel blocks."""

    def __init__(self, cfg, dataset, parts):
        self.cfg, self.parts = cfg, parts
        self.X, self.y = dataset.train_x, dataset.train_y
        self.K, self.d = dataset.num_classes, cfg.dim_z
        self.label_sets = [sorted(set(self.y[part].tolist())) for part in parts]
        self.clusters = [[0, 1], [2, 3]]
        self.replication = [sum(i in cluster for cluster in self.clusters) for i in range(len(parts))]
        self.encoders, self.optimizers, self.generators = [], [], []
        for i in range(len(parts)):
            init_seed, shuffle_seed = node_seeds(cfg.seed, i)
            encoder = build_encoder("mlp", dataset.input_shape, self.d, cfg.model, init_seed)
            self.encoders.append(encoder)
            self.optimizers.append(
                torch.optim.Adam(encoder.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            )
            self.generators.append(torch.Generator().manual_seed(shuffle_seed))
        self.statistics = [self.local_statistics(i) for i in range(len(parts))]
        self.duals = [{k: torch.zeros(self.d, self.d) for k in self.label_sets[i]} for i in range(len(parts))]

    def local_statistics(self, i: int) -> dict[int, tuple[torch.Tensor, int]]:
        """V_i^k = Z_k^T Z_k / m_k and m_k over node i's whole local set, encoder in eval mode."""
        self.encoders[i].eval()
        with torch.no_grad():
            Z = self.encoders[i](self.X[self.parts[i]])
        labels = self.y[self.parts[i]]
        return {k: (Z[labels == k].T @ Z[labels == k] / int((labels == k).sum()), int((labels == k).sum()))
                for k in self.label_sets[i]}

    def holders(self, i: int, k: int) -> list[int]:
        return [j for j in range(len(self.parts)) if j != i and k in self.label_sets[j]]

    def block_loss(self, i, Z, labels, delivered, latest) -> torch.Tensor:
        eps_sq, rho = self.cfg.eps_sq, self.cfg.solver.rho
        loss = torch.zeros(())
        for cluster in self.clusters:
            if i not in cluster:
                continue
            gammas, mus = {}, {}
            for k in self.label_sets[i]:  # node i's own terms: the raw batch, classes in the batch only
                rows = labels == k
                if rows.any():
                    gammas[k] = Z[rows].T @ Z[rows] / self.replication[i]
                    mus[k] = int(rows.sum()) / self.replication[i]
            for j in cluster:
                if j == i:
                    continue
                for k, (V, m) in latest[j].items():
                    gammas[k] = gammas.get(k, torch.zeros(self.d, self.d)) + m * V / self.replication[j]
                    mus[k] = mus.get(k, 0.0) + m / self.replication[j]
            mu = sum(mus.values())
            R = 0.5 * logdet_identity_plus(self.d / (mu * eps_sq), sum(gammas.values()))
            Rc = sum(mus[k] / (2 * mu) * logdet_identity_plus(self.d / (mus[k] * eps_sq), gammas[k]) for k in gammas)
            loss = loss - (R - Rc) / self.replication[i]
        for k in self.label_sets[i]:
            rows = labels == k
            if not rows.any():
                continue
            V_hat = Z[rows].T @ Z[rows] / int(rows.sum())
            loss = loss + (self.duals[i][k] * V_hat).sum()
            for j in self.holders(i, k):
                midpoint = (delivered[i][k][0] + delivered[j][k][0]) / 2
                loss = loss + rho / 2 * ((V_hat - midpoint) ** 2).sum()
        return loss

    def round(self) -> None:
        delivered = [dict(stats) for stats in self.statistics]  # what round t-1's exchange delivered
        for i, duals in enumerate(self.duals):
            for k in duals:
                for j in self.holders(i, k):
                    duals[k] = duals[k] + self.cfg.solver.dual_step * (delivered[i][k][0] - delivered[j][k][0])
        latest = list(delivered)  # updated as each member of a cluster finishes its block
        for cluster in self.clusters:
            for i in cluster:
                indices = torch.as_tensor(self.parts[i])
                for _ in range(self.cfg.train.local_epochs):
                    order = torch.randperm(len(indices), generator=self.generators[i])
                    for batch in indices[order].split(self.cfg.train.batch_size):
                        self.encoders[i].train()
                        loss = self.block_loss(i, self.encoders[i](self.X[batch]), self.y[batch], delivered, latest)
                        self.optimizers[i].zero_grad()
                        loss.backward()
                        self.optimizers[i].step()
                self.statistics[i] = self.local_statistics(i)
                latest[i] = self.statistics[i]


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_cluster_bcd_published_equals_the_plain_section_5_loop(tmp_path, float64, one_thread):
    cfg = composed(CONFIG)
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    assert network.plan.clusters == [[0, 1], [2, 3]]
    reference = Reference(cfg, network.dataset, network.parts)
    for _ in range(ROUNDS):
        run_round(network)
        reference.round()
    for node, encoder in zip(network.nodes, reference.encoders):
        assert node.statistics.dtype == F64
        for (name, value), expected in zip(node.encoder.state_dict().items(), encoder.state_dict().values()):
            if value.is_floating_point():
                torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=f"node {node.index} {name}")
        for k in reference.label_sets[node.index]:
            V, m = reference.statistics[node.index][k]
            torch.testing.assert_close(node.statistics[k], V, rtol=1e-5, atol=1e-5)
            assert node.counts[k] == m
            torch.testing.assert_close(node.dual[k], reference.duals[node.index][k], rtol=1e-5, atol=1e-5)
    moved = max(float(dual.abs().max()) for duals in reference.duals for dual in duals.values())
    assert moved > 1e-3  # the duals did move, so their agreement is not that of two zeros


def test_rescaled_scaling_trains_differently_on_the_same_batches(tmp_path, float64, one_thread):
    """The same run with solver.batch_scaling=rescaled leaves the reference after one round: the test above
    would catch a solver that ignored the setting."""
    cfg = composed([*CONFIG, "solver.batch_scaling=rescaled"])
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    reference = Reference(cfg, network.dataset, network.parts)
    run_round(network)
    reference.round()
    node = network.nodes[0]
    first = next(iter(node.encoder.parameters()))
    assert not torch.allclose(first, next(iter(reference.encoders[0].parameters())), rtol=1e-5, atol=1e-5)
