"""The in-process communicator: what an exchange delivers, what pushes change, and a group's neighbourhood."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semdl.network import Delivery, InProcessCommunicator
from semdl.network.compression import HalfPrecision
from semdl.network.conditions import RoundConditions

K, D = 3, 2
NEIGHBORS = [[1, 2], [0], [0, 1]]
RESPONSIBLE = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])


def node_statistics(node: int, offset: float = 0.0) -> torch.Tensor:
    """Statistics (K, D, D) whose every entry names the node (and an offset, to tell rounds apart)."""
    return torch.full((K, D, D), 10.0 * node + offset)


def exchanged(communicator: InProcessCommunicator, offset: float = 0.0):
    return communicator.exchange(
        [node_statistics(node, offset) for node in range(3)], [torch.full((K,), float(node)) for node in range(3)]
    )


def test_an_exchange_delivers_each_neighbours_statistics_and_counts_bytes():
    communicator = InProcessCommunicator(NEIGHBORS, RESPONSIBLE)
    inboxes = exchanged(communicator)
    for node, neighbors in enumerate(NEIGHBORS):
        assert torch.equal(inboxes[node].statistics, torch.stack([node_statistics(j) for j in neighbors]))
        assert inboxes[node].counts[:, 0].tolist() == [float(j) for j in neighbors]
        expected_shared = torch.stack([RESPONSIBLE[node] & RESPONSIBLE[j] for j in neighbors])
        assert torch.equal(inboxes[node].shared, expected_shared)
    # node 0 shares classes {0, 1} with node 1 and {1} with node 2: 3 classes of D*D + 1 float32 values
    assert communicator.bytes_sent[0] == 3 * (D * D + 1) * 4


def test_pushes_update_the_latest_statistics_but_not_what_the_exchange_delivered():
    """cluster_bcd pushes refreshed statistics during a round; the round's inboxes must still read round t-1."""
    communicator = InProcessCommunicator(NEIGHBORS, RESPONSIBLE)
    inboxes = exchanged(communicator)
    communicator.push(1, node_statistics(1, offset=0.5), torch.full((K,), 7.0), receivers=1)
    communicator.push(2, node_statistics(2, offset=0.5), torch.full((K,), 8.0), receivers=1)
    assert torch.equal(communicator.statistics[1], node_statistics(1, offset=0.5))
    assert torch.equal(communicator.statistics[2], node_statistics(2, offset=0.5))
    assert communicator.counts[:, 0].tolist() == [0.0, 7.0, 8.0]
    assert torch.equal(inboxes[0].statistics, torch.stack([node_statistics(1), node_statistics(2)]))
    assert inboxes[0].counts[:, 0].tolist() == [1.0, 2.0]
    # the next exchange delivers anew
    inboxes = exchanged(communicator, offset=1.0)
    assert torch.equal(inboxes[0].statistics, torch.stack([node_statistics(1, 1.0), node_statistics(2, 1.0)]))


def test_a_neighbourhood_is_every_inbox_of_a_group_padded_to_the_widest():
    communicator = InProcessCommunicator(NEIGHBORS, RESPONSIBLE)
    exchanged(communicator)
    neighborhood = communicator.neighborhood([1, 2])
    assert neighborhood.source is communicator.statistics
    index, shared = neighborhood.index, neighborhood.shared
    assert index.tolist() == [[0, 0], [0, 1]]  # node 1 has one neighbour; its second slot is padding
    assert shared[0, 0].tolist() == (RESPONSIBLE[1] & RESPONSIBLE[0]).tolist()
    assert not shared[0, 1].any()  # the padding shares nothing
    assert shared[1].tolist() == [(RESPONSIBLE[2] & RESPONSIBLE[j]).tolist() for j in (0, 1)]


def conditions(online: list[bool], failed: list[tuple[int, int]]) -> RoundConditions:
    """Every pair linked, the `failed` links down, the offline nodes as given."""
    count = len(online)
    scheduled = ~np.eye(count, dtype=bool)
    links = scheduled.copy()
    for i, j in failed:
        links[i, j] = links[j, i] = False
    return RoundConditions(np.array(online), scheduled, links, np.ones(count, dtype=bool))


@pytest.mark.parametrize("stale", ["reuse", "skip"])
def test_a_lost_message_is_reused_with_its_age_or_skipped(stale):
    """Round 1 loses link 0-1 and node 2 is offline; round 2 delivers everything. (Node i reads NEIGHBORS[i].)"""
    delivery = Delivery(unreliable=True, stale=stale)
    communicator = InProcessCommunicator(NEIGHBORS, RESPONSIBLE, delivery)
    communicator.begin_round(conditions([True, True, True], failed=[]))
    exchanged(communicator)  # round 0: everything arrives
    communicator.begin_round(conditions([True, True, False], failed=[(0, 1)]))
    inboxes = exchanged(communicator, offset=1.0)
    # Node 2 was offline: it sent nothing, so every node still holds its round-0 statistics.
    assert torch.equal(communicator.statistics[2], node_statistics(2))
    assert communicator.tally.received.tolist() == [0, 0, 0]  # 0 lost 1 and 2; 1 lost 0; 2 was offline
    # Sent and lost: to 0 from 1 (link) and 2 (offline sender sends nothing); to 1 from 0; to 2 from 0 and 1.
    assert communicator.tally.lost.tolist() == [1, 1, 2]
    if stale == "reuse":
        assert torch.equal(inboxes[0].statistics, torch.stack([node_statistics(1), node_statistics(2)]))
        assert torch.equal(inboxes[0].shared, torch.stack([RESPONSIBLE[0] & RESPONSIBLE[j] for j in (1, 2)]))
        assert communicator.tally.oldest.tolist() == [1, 1, 1]
    else:
        assert not inboxes[0].shared.any() and not inboxes[1].shared.any() and not inboxes[2].shared.any()
        assert communicator.tally.oldest.tolist() == [0, 0, 0]
    neighborhood = communicator.neighborhood([0, 1])
    from_rows = neighborhood.source[neighborhood.index]
    assert torch.equal(from_rows[0], inboxes[0].statistics) and torch.equal(from_rows[1, :1], inboxes[1].statistics)
    assert torch.equal(neighborhood.shared[0], inboxes[0].shared)

    communicator.begin_round(conditions([True, True, True], failed=[]))
    inboxes = exchanged(communicator, offset=2.0)
    assert torch.equal(inboxes[0].statistics, torch.stack([node_statistics(1, 2.0), node_statistics(2, 2.0)]))
    assert communicator.tally.received.tolist() == [2, 1, 2] and communicator.tally.lost.tolist() == [0, 0, 0]
    assert communicator.tally.oldest.tolist() == [0, 0, 0]


def test_bytes_count_every_message_sent_and_none_from_an_offline_node():
    delivery = Delivery(HalfPrecision(torch.float16), unreliable=True)
    communicator = InProcessCommunicator(NEIGHBORS, RESPONSIBLE, delivery)
    communicator.begin_round(conditions([True, True, True], failed=[]))
    exchanged(communicator)
    per_class = D * D * 2 + 4  # fp16 values and a float32 count
    # A node sends to the nodes that read it: node 0 to 1 (classes {0, 1}) and 2 ({1}); node 1 to 0 ({0, 1}) and 2
    # ({1, 2}); node 2 to 0 ({1}).
    assert communicator.bytes_sent == [3 * per_class, 4 * per_class, 1 * per_class]
    communicator.begin_round(conditions([True, False, True], failed=[(0, 2)]))
    exchanged(communicator, offset=1.0)
    # A failed link or an offline receiver loses what was sent; an offline node sends nothing.
    assert communicator.bytes_sent == [6 * per_class, 4 * per_class, 2 * per_class]
