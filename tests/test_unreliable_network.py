"""Unreliable networks and compressed messages, end to end: what a run does when links fail, nodes drop out, links
follow a schedule and statistics travel compressed, and what its metrics and checkpoints say about it."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from helpers.configs import SMALL_SYNTHETIC, composed, without_timing
from semdl.errors import UserError
from semdl.experiment import resume_experiment, run_experiment
from semdl.io import read_metrics
from semdl.network.conditions import Unreliability as NetworkConditions
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network
from semdl.pipeline.records import round_rows
from semdl.solvers import RoundResult, train_groups
from semdl.solvers.local import Local
from semdl.solvers.own_data import local_group_loss

# Four nodes on a ring (two neighbours each), 4 classes of 15 training samples per node, d = 16.
RING4 = SMALL_SYNTHETIC + ["nodes=4", "topology=ring"]


def network_of(overrides: list[str], tmp_path):
    return build_network(composed(overrides), tmp_path, torch.device("cpu"))


def rounds_of(network, rounds: int) -> torch.Tensor:
    """Run `rounds` rounds; the losses (rounds, N)."""
    return torch.stack([torch.stack([work.loss for work in run_round(network)[0].work]) for _ in range(rounds)])


def ring_schedule(path, nodes: int = 4) -> str:
    adjacency = np.zeros((nodes, nodes), dtype=int)
    for node in range(nodes):
        adjacency[node, (node + 1) % nodes] = adjacency[(node + 1) % nodes, node] = 1
    path.write_text("\n".join(" ".join(map(str, row)) for row in adjacency) + "\n")
    return str(path)


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("stale", ["reuse", "skip"])
def test_a_schedule_that_keeps_every_link_changes_nothing(stale, tmp_path):
    """The unreliable path (conditions drawn, statistics kept per neighbour) with every message delivered gives the
    reliable run's numbers exactly: the same values, summed in the same order."""
    reliable = network_of(RING4, tmp_path / "reliable")
    schedule = ring_schedule(tmp_path / "ring.txt")
    scheduled = network_of(RING4 + [f"network.schedule={schedule}", f"network.stale={stale}"], tmp_path / "scheduled")
    assert scheduled.conditions is not None and len(scheduled.groups) < 4  # lockstep groups stay
    assert torch.equal(rounds_of(scheduled, 3), rounds_of(reliable, 3))
    for plain, unreliable in zip(reliable.nodes, scheduled.nodes):
        assert torch.equal(unreliable.statistics, plain.statistics) and torch.equal(unreliable.dual, plain.dual)


def test_with_every_link_down_primal_dual_trains_as_the_local_baseline(tmp_path):
    """link_drop=1 (from the exchange before round 1): no neighbour takes part, the duals stay zero and L_i is -dR
    alone. The first round's loss is each node's first mini-batch loss (one batch per round) on the same initial
    encoder: the objectives agree to float32 rounding of logdets of well-conditioned I + a Z^T Z (a few u
    relative)."""
    dropped = network_of(RING4 + ["network.link_drop=1"], tmp_path / "dropped")
    local = network_of(RING4 + ["solver=local"], tmp_path / "local")
    dropped_losses, local_losses = rounds_of(dropped, 3), rounds_of(local, 1)
    torch.testing.assert_close(dropped_losses[0], local_losses[0], rtol=1e-5, atol=1e-5)
    assert all(not node.dual.any() for node in dropped.nodes)
    assert dropped.communicator.tally.received.tolist() == [0, 0, 0, 0]
    assert dropped.communicator.tally.lost.tolist() == [2, 2, 2, 2]


def test_links_switched_off_leave_the_last_statistics_in_use_and_age_them(tmp_path):
    """A schedule of the ring for round 1 (and the exchange before it), then no link for three rounds: with
    network.stale=reuse every node goes on using what round 1 delivered, three rounds old by round 4."""
    ring = ring_schedule(tmp_path / "ring.txt")
    schedule = tmp_path / "schedule.txt"
    schedule.write_text(open(ring).read() + "\n" + "0 0 0 0\n" * 4 * 3)
    network = network_of(RING4 + [f"network.schedule={schedule}"], tmp_path)
    rounds_of(network, 1)
    delivered = network.communicator.statistics.clone()
    rounds_of(network, 3)
    assert network.communicator.tally.oldest.tolist() == [3, 3, 3, 3]
    assert network.communicator.tally.received.tolist() == [0, 0, 0, 0]
    for node in network.nodes:
        inbox = network.inboxes[node.index]
        neighbors = sorted([(node.index - 1) % 4, (node.index + 1) % 4])
        assert torch.equal(inbox.statistics, delivered[neighbors]) and inbox.shared.all()
        assert not torch.equal(network.communicator.statistics[node.index], delivered[node.index])


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("solver", ["primal_dual", "cluster_bcd", "fedavg_mcr2"])
def test_an_offline_node_neither_trains_nor_sends(solver, tmp_path):
    extra = ["partition=label_split", "partition.classes_per_node=2"] if solver == "cluster_bcd" else []
    network = network_of(RING4 + extra + [f"solver={solver}", "network.node_dropout=0.5"], tmp_path)
    assert all(len(group.nodes) == 1 for group in network.groups)
    offline_seen = online_seen = False
    for _ in range(4):
        before = [
            (node.statistics.clone(), node.dual.clone(), [p.detach().clone() for p in node.encoder.parameters()])
            for node in network.nodes
        ]
        sent_before = network.communicator.statistics.clone()
        result, _ = run_round(network)
        for node, (statistics, dual, parameters), work in zip(network.nodes, before, result.work):
            unchanged = torch.equal(node.statistics, statistics) and torch.equal(node.dual, dual)
            unchanged &= all(torch.equal(p, q) for p, q in zip(node.encoder.parameters(), parameters))
            if network.online(node.index):
                online_seen = True
                assert not unchanged and torch.isfinite(work.loss)
            else:
                offline_seen = True
                assert unchanged and torch.isnan(work.loss) and work.seconds == 0
                if solver != "fedavg_mcr2":  # what the others hold of it stays
                    assert torch.equal(network.communicator.statistics[node.index], sent_before[node.index])
    assert offline_seen and online_seen  # seed 0 draws both within four rounds


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_metrics_count_what_the_seeded_draws_say(tmp_path):
    """Each round's delivered and lost messages and active nodes, from an independent draw of the same conditions."""
    overrides = RING4 + ["network.link_drop=0.4", "network.node_dropout=0.3", "train.rounds=4"]
    overrides += ["eval.classifiers=[knn]"]
    run_experiment(composed(overrides), tmp_path)
    rows = [row for row in read_metrics(tmp_path / "metrics.jsonl") if row["node"] == "network"]
    ring = np.zeros((4, 4), dtype=bool)
    for node in range(4):
        ring[node, (node + 1) % 4] = ring[(node + 1) % 4, node] = True
    draws = NetworkConditions(~np.eye(4, dtype=bool), seed=0, link_drop=0.4, node_dropout=0.3)
    for row in rows:
        conditions = draws.at(row["round"])
        delivered = ring & conditions.links & np.outer(conditions.online, conditions.online)
        sent = ring & conditions.online[None, :]
        assert row["active_nodes"] == int(conditions.online.sum())
        assert row["messages_delivered"] == int(delivered.sum())
        assert row["messages_lost"] == int((sent & ~delivered).sum())
    assert sum(row["messages_lost"] for row in rows) > 0 and sum(row["messages_delivered"] for row in rows) > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 4


@pytest.mark.parametrize(
    "compression, per_class",
    [
        ([], 16 * 16 * 4 + 4),
        (["comm.compress=fp16"], 16 * 16 * 2 + 4),
        (["comm.compress=bf16"], 16 * 16 * 2 + 4),
        (["comm.compress=lowrank", "comm.rank=4"], 4 * 17 * 4 + 4),
        # A class statistic of 15 samples has rank at most 15: 15 of the 16 eigenpairs travel.
        (["comm.compress=lowrank", "comm.rank=16"], 15 * 17 * 4 + 4),
    ],
)
def test_bytes_sent_match_the_closed_form(compression, per_class, tmp_path):
    """Per node and round: 2 neighbours x 4 classes x (the statistic's values on the wire + a float32 count), as the
    round's metrics row counts them (lowrank's bytes are known only on the device until then)."""
    network = network_of(RING4 + compression, tmp_path)
    before = list(network.communicator.bytes_sent)
    assert before == [2 * 4 * per_class] * 4  # the exchange before round 1
    result, fallbacks = run_round(network)
    rows = round_rows(1, network, result, before, 0.0, fallbacks)
    assert [row["bytes_sent"] for row in rows if isinstance(row["node"], int)] == [2 * 4 * per_class] * 4


def test_lowrank_with_every_eigenpair_is_lossless_to_float_precision(tmp_path):
    """Rank >= the statistics' rank (at most 15): the compression error is eigh's backward error, a few d u ||V||
    (d = 16, u = 2^-24: 4 d u = 4e-6 relative)."""
    network = network_of(RING4 + ["comm.compress=lowrank", "comm.rank=16"], tmp_path)
    rounds_of(network, 2)
    assert float(network.communicator.compression_error.max()) < 4e-6
    for node in network.nodes:
        torch.testing.assert_close(
            network.communicator.statistics[node.index], node.statistics, rtol=0, atol=4e-6 * node.statistics.norm()
        )


UNRELIABLE = {
    "primal_dual": RING4
    + ["network.link_drop=0.4", "network.node_dropout=0.2", "comm.compress=lowrank", "comm.rank=4"]
    + ["comm.error_feedback=true"],
    "cluster_bcd": RING4
    + ["partition=label_split", "partition.classes_per_node=2", "solver=cluster_bcd", "network.stale=skip"]
    + ["network.link_drop=0.4", "network.node_dropout=0.2", "comm.compress=fp16"],
}


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("solver", sorted(UNRELIABLE))
def test_a_resumed_run_draws_the_same_failures_and_keeps_what_nodes_held(solver, tmp_path, one_thread):
    """Four rounds at once equal two rounds, a checkpoint, and two more: the draws depend on (seed, round) alone,
    and the checkpoint keeps the statistics each node held of the others, their ages and the feedback residual."""
    config = UNRELIABLE[solver] + ["eval.classifiers=[knn]", "train.checkpoint_every=0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_experiment(composed(config + ["train.rounds=4"]), straight)
    run_experiment(composed(config + ["train.rounds=2"]), split)
    resume_experiment(split, ["train.rounds=4"])
    rows = [row for row in read_metrics(split / "metrics.jsonl") if row["node"] != "eval" or row["round"] == 4]
    expected = read_metrics(straight / "metrics.jsonl")
    assert without_timing(rows) == without_timing(expected)
    assert sum(row["messages_lost"] for row in expected if row["node"] == "network") > 0


def test_a_solver_that_trains_an_offline_node_is_stopped_with_one_line(tmp_path):
    """An outside solver that forgets network.online: the round loop refuses its round instead of logging it."""

    class Careless(Local):
        def round(self, network):
            groups = network.groups
            losses = [partial(local_group_loss, group, self.training, self.rate_weights) for group in groups]
            nodes, work = train_groups(groups, self.training.local_epochs, self.training.batch_size, losses)
            return RoundResult(work, network.inboxes)

    network = network_of(RING4 + ["solver=local", "network.node_dropout=0.5"], tmp_path)
    network.solver = Careless(network.solver.config, network.solver.run)
    network.solver.start(network)
    with pytest.raises(UserError, match=r"solver=local trained node \d in round \d, when it was offline"):
        for _ in range(4):  # seed 0 takes a node offline within four rounds
            run_round(network)


def residuals_by_hand(network) -> list[float]:
    """Each node's max over its ring neighbours j and classes k of ||V_i^k - V_j^k||_F, in float64 Python loops over
    the nodes' own statistics (docs/algorithms.md, "Reported quantities")."""
    statistics = [node.statistics.double() for node in network.nodes]
    return [
        max(
            float((statistics[i][k] - statistics[j][k]).pow(2).sum().sqrt())
            for j in ((i - 1) % 4, (i + 1) % 4)
            for k in range(4)
        )
        for i in range(4)
    ]


@pytest.mark.parametrize(
    "overrides",
    [["network.link_drop=1"], ["solver=local"], ["solver=fedavg_mcr2"], ["network.node_dropout=1"], []],
    ids=["primal_dual-every-link-down", "local", "fedavg_mcr2", "primal_dual-every-node-offline", "primal_dual"],
)
def test_the_consensus_residual_compares_the_nodes_own_statistics_whatever_arrived(overrides, tmp_path):
    """Every solver's residual is one function of the nodes' current statistics along the graph's edges: with no
    message delivered (every link down, every node offline) it is the distance between what the nodes hold, not 0."""
    network = network_of(RING4 + overrides, tmp_path)
    before = list(network.communicator.bytes_sent)
    result, fallbacks = run_round(network)
    rows = round_rows(1, network, result, before, 0.0, fallbacks)
    expected = residuals_by_hand(network)
    assert min(expected) > 0.1  # four nodes trained on their own data disagree
    nodes = [row["consensus_residual"] for row in rows if isinstance(row["node"], int)]
    assert nodes == pytest.approx(expected, rel=1e-5)
    assert rows[-1]["consensus_residual"] == pytest.approx(max(expected), rel=1e-5)


def test_with_every_link_down_the_residual_is_the_local_baselines_at_round_one(tmp_path):
    """Before any consensus step, primal_dual with no message delivered trains as local does (see above), and
    both report one residual for the same nodes."""
    residuals = []
    for overrides in (["network.link_drop=1"], ["solver=local"]):
        network = network_of(RING4 + overrides, tmp_path / overrides[0])
        result, fallbacks = run_round(network)
        rows = round_rows(1, network, result, list(network.communicator.bytes_sent), 0.0, fallbacks)
        residuals.append(rows[-1]["consensus_residual"])
    assert residuals[0] == pytest.approx(residuals[1], rel=1e-5) and residuals[0] > 0.1


def test_centralized_has_no_consensus_residual(tmp_path):
    """One node, no edge: its rows hold null (undefined), not 0."""
    network = network_of(RING4 + ["solver=centralized"], tmp_path)
    result, fallbacks = run_round(network)
    rows = round_rows(1, network, result, list(network.communicator.bytes_sent), 0.0, fallbacks)
    assert [row["node"] for row in rows] == [0, "network"]
    assert rows[0]["consensus_residual"] is None and rows[-1]["consensus_residual"] is None


def test_fedavg_with_no_weight_delivered_keeps_every_node_at_its_own_model(tmp_path):
    """Two ways for no weight message to arrive, one outcome: gossip under a schedule with every link off, and the
    server with every server link failed, leave each node with its own trained weights (a node's own weights enter
    its average exactly); with the links on, gossip mixes them."""
    off = tmp_path / "off.txt"
    off.write_text("0 0 0 0\n" * 4)
    gossip = ["solver=fedavg_mcr2", "solver.aggregation=gossip"]
    runs = {
        "gossip-off": gossip + [f"network.schedule={off}"],
        "server-down": ["solver=fedavg_mcr2", "network.link_drop=1"],
        "gossip-on": gossip,
    }
    weights, tallies = {}, {}
    for name, overrides in runs.items():
        network = network_of(RING4 + overrides, tmp_path / name)
        rounds_of(network, 1)
        weights[name] = [torch.cat([p.flatten() for p in node.encoder.parameters()]) for node in network.nodes]
        tallies[name] = (network.communicator.tally.received.tolist(), network.communicator.tally.lost.tolist())
    assert all(torch.equal(a, b) for a, b in zip(weights["gossip-off"], weights["server-down"]))
    assert not any(torch.equal(a, b) for a, b in zip(weights["gossip-off"], weights["gossip-on"]))
    assert tallies["gossip-off"] == ([0] * 4, [0] * 4)  # a link switched off carries nothing, so loses nothing
    assert tallies["server-down"] == ([0] * 4, [1] * 4)  # each node sent to the server; every message was lost
    assert tallies["gossip-on"] == ([2] * 4, [0] * 4)
