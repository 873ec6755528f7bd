"""The in-process communicator: what an exchange delivers, what pushes change, and a group's neighbourhood."""

from __future__ import annotations

import torch

from semdl.network import InProcessCommunicator

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
