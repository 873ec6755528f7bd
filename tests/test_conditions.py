import math
import re

import numpy as np
import pytest

from semdl.errors import UserError
from semdl.network.conditions import RoundConditions, read_schedule
from semdl.network.conditions import Unreliability as NetworkConditions
from semdl.network.topology import complete, ring

COMPLETE10 = complete(10, seed=0)
RING4 = ring(4, seed=0)


def upper_pairs(matrix: np.ndarray) -> np.ndarray:
    """The entries of the strict upper triangle: one per undirected pair."""
    return matrix[np.triu_indices(len(matrix), k=1)]


def test_probability_zero_loses_nothing():
    conditions = NetworkConditions(COMPLETE10, seed=3)
    assert not conditions.active
    for round_index in (1, 2, 50):
        now = conditions.at(round_index)
        assert now.online.all()
        assert (now.scheduled == COMPLETE10).all() and (now.links == COMPLETE10).all()
        assert (now.delivered() == COMPLETE10).all() and (now.sent() == COMPLETE10).all()


def test_probability_one_loses_everything():
    no_links = NetworkConditions(COMPLETE10, seed=3, link_drop=1.0).at(4)
    assert not no_links.links.any() and not no_links.delivered().any()
    assert no_links.online.all()
    assert (no_links.sent() == COMPLETE10).all()  # sent, and lost on the failed links
    no_nodes = NetworkConditions(COMPLETE10, seed=3, node_dropout=1.0).at(4)
    assert not no_nodes.online.any() and not no_nodes.delivered().any() and not no_nodes.sent().any()
    assert (no_nodes.links == COMPLETE10).all()


def test_failures_are_symmetric_and_only_on_scheduled_links():
    conditions = NetworkConditions(RING4, seed=1, link_drop=0.5)
    for round_index in range(1, 30):
        links = conditions.at(round_index).links
        assert (links == links.T).all()
        assert not (links & ~RING4).any()


def test_failure_frequencies_match_the_probabilities():
    # 500 rounds on the complete 10-node graph: 45 links x 500 = 22500 link draws and 10 x 500 = 5000 node draws,
    # each a Bernoulli trial; every count must lie within 5 binomial standard deviations of its mean.
    rounds, link_drop, node_dropout = 500, 0.3, 0.2
    conditions = NetworkConditions(COMPLETE10, seed=11, link_drop=link_drop, node_dropout=node_dropout)
    link_failures = np.zeros(45)
    offline = np.zeros(10)
    for round_index in range(1, rounds + 1):
        now = conditions.at(round_index)
        link_failures += ~upper_pairs(now.links)
        offline += ~now.online

    def within_five_sigma(count, trials, probability):
        return abs(count - trials * probability) <= 5 * math.sqrt(trials * probability * (1 - probability))

    assert within_five_sigma(link_failures.sum(), 45 * rounds, link_drop)
    assert within_five_sigma(offline.sum(), 10 * rounds, node_dropout)
    # Each link and node on its own too: a link that never fails, or always does, would show here.
    assert all(within_five_sigma(count, rounds, link_drop) for count in link_failures)
    assert all(within_five_sigma(count, rounds, node_dropout) for count in offline)


def test_a_round_draws_the_same_whatever_was_drawn_before():
    conditions = NetworkConditions(COMPLETE10, seed=5, link_drop=0.4, node_dropout=0.3)
    first = conditions.at(7)
    conditions.at(3)
    again = conditions.at(7)
    fresh = NetworkConditions(COMPLETE10, seed=5, link_drop=0.4, node_dropout=0.3).at(7)  # as a resumed run
    for other in (again, fresh):
        assert (other.links == first.links).all() and (other.online == first.online).all()


def test_rounds_and_seeds_draw_differently():
    # Identical draws of 45 links and 10 nodes at probability 0.5 would have chance 2**-55.
    def draw(seed, round_index):
        now = NetworkConditions(COMPLETE10, seed=seed, link_drop=0.5, node_dropout=0.5).at(round_index)
        return np.concatenate([upper_pairs(now.links), now.online])

    assert (draw(0, 1) != draw(0, 2)).any()
    assert (draw(0, 1) != draw(1, 1)).any()


def test_link_and_node_draws_are_independent():
    def at(link_drop, node_dropout):
        return NetworkConditions(COMPLETE10, seed=2, link_drop=link_drop, node_dropout=node_dropout).at(9)

    assert (at(0.1, 0.5).online == at(0.9, 0.5).online).all()
    assert (at(0.5, 0.1).links == at(0.5, 0.9).links).all()
    # The failures at both probabilities genuinely differ (else the equalities above prove nothing).
    assert (at(0.1, 0.5).links != at(0.9, 0.5).links).any()
    assert (at(0.5, 0.1).online != at(0.5, 0.9).online).any()


def test_a_link_fails_the_same_whatever_else_exists_or_the_probability():
    # One uniform number per pair, compared with the probability: a higher probability fails a superset of links,
    # and a link on the ring fails exactly when it fails on the complete graph.
    on_complete = NetworkConditions(complete(4, seed=0), seed=8, link_drop=0.5).at(6)
    on_ring = NetworkConditions(RING4, seed=8, link_drop=0.5).at(6)
    assert (on_ring.links == (on_complete.links & RING4)).all()
    for round_index in range(1, 20):
        low = NetworkConditions(COMPLETE10, seed=8, link_drop=0.2).at(round_index)
        high = NetworkConditions(COMPLETE10, seed=8, link_drop=0.6).at(round_index)
        failed_low, failed_high = ~low.links & COMPLETE10, ~high.links & COMPLETE10
        assert (failed_low <= failed_high).all() and failed_low.sum() < failed_high.sum()


def path4_round() -> RoundConditions:
    """Path 0-1-2-3 scheduled, link 1-2 failed, node 3 offline."""
    scheduled = np.zeros((4, 4), dtype=bool)
    for i, j in ((0, 1), (1, 2), (2, 3)):
        scheduled[i, j] = scheduled[j, i] = True
    links = scheduled.copy()
    links[1, 2] = links[2, 1] = False
    online = np.array([True, True, True, False])
    return RoundConditions(online=online, scheduled=scheduled, links=links, uplinks=np.ones(4, dtype=bool))


def test_delivered_needs_a_working_link_and_both_ends_online():
    delivered = path4_round().delivered()
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 0] = True  # 1-2 failed; 2-3 has node 3 offline
    assert (delivered == expected).all()


def test_sent_counts_lost_messages_but_not_unscheduled_links_or_offline_senders():
    sent = path4_round().sent()
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 0] = True  # delivered
    expected[1, 2] = expected[2, 1] = True  # over the failed link 1-2
    expected[3, 2] = True  # from 2 to the offline node 3
    assert (sent == expected).all()  # not from the offline 3, and nothing over the unscheduled 0-2, 0-3, 1-3
    assert sent.sum() == 5


def test_drawn_delivery_matches_links_and_online_nodes():
    now = NetworkConditions(COMPLETE10, seed=4, link_drop=0.3, node_dropout=0.3).at(2)
    for i in range(10):
        for j in range(10):
            assert now.delivered()[i, j] == (now.links[i, j] and now.online[i] and now.online[j])
            assert now.sent()[i, j] == (COMPLETE10[i, j] and now.online[j])


def link(i, j, num_nodes=4):
    matrix = np.zeros((num_nodes, num_nodes), dtype=bool)
    matrix[i, j] = matrix[j, i] = True
    return matrix


def test_schedule_cycles_and_each_matrix_lasts_schedule_every_rounds():
    schedule = [link(0, 1), link(1, 2), link(2, 3)]
    conditions = NetworkConditions(RING4, seed=0, schedule=schedule, schedule_every=2)
    assert conditions.active
    expected = {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2, 7: 0, 8: 0, 9: 1, 13: 0}
    for round_index, matrix in expected.items():
        now = conditions.at(round_index)
        assert (now.scheduled == schedule[matrix]).all(), round_index
        assert (now.links == schedule[matrix]).all()  # nothing fails at link_drop=0
    every_round = NetworkConditions(RING4, seed=0, schedule=schedule)
    assert [int(np.argwhere(every_round.at(r).scheduled)[0, 1]) for r in range(1, 7)] == [1, 2, 3, 1, 2, 3]


def test_schedule_links_fail_only_where_scheduled():
    conditions = NetworkConditions(COMPLETE10, seed=6, link_drop=0.5, schedule=[link(0, 1, 10), COMPLETE10])
    base = NetworkConditions(COMPLETE10, seed=6, link_drop=0.5)
    assert not (conditions.at(1).links & ~link(0, 1, 10)).any()
    # The schedule does not change the draw: round 2 (the complete matrix) fails what the unscheduled run does.
    assert (conditions.at(2).links == base.at(2).links).all()


def test_the_base_graph_cannot_be_edited_through_a_round_or_the_caller():
    allowed = RING4.copy()
    conditions = NetworkConditions(allowed, seed=0)
    with pytest.raises(ValueError):
        conditions.at(1).scheduled[0, 1] = False
    allowed[0, 1] = allowed[1, 0] = False
    assert conditions.at(2).scheduled[0, 1] and conditions.at(2).links[0, 1]


@pytest.mark.parametrize(
    "options, key",
    [
        ({"link_drop": 1.5}, "network.link_drop=1.5"),
        ({"link_drop": float("nan")}, "network.link_drop=nan"),
        ({"node_dropout": -0.1}, "network.node_dropout=-0.1"),
        ({"schedule_every": 0}, "network.schedule_every=0"),
    ],
)
def test_out_of_range_options_are_refused(options, key):
    with pytest.raises(UserError, match=re.escape(key)):
        NetworkConditions(RING4, seed=0, **options)


def write(tmp_path, text):
    path = tmp_path / "schedule.txt"
    path.write_text(text)
    return str(path)


def test_read_schedule_skips_blank_lines(tmp_path):
    path = write(tmp_path, "0 1 0 0\n1 0 0 0\n0 0 0 0\n0 0 0 0\n\n\n0 0 0 1\n0 0 0 0\n\n0 0 0 0\n1 0 0 0\n")
    matrices = read_schedule(path, RING4, "ring")
    assert len(matrices) == 2
    assert matrices[0].dtype == bool
    assert (matrices[0] == link(0, 1)).all() and (matrices[1] == link(0, 3)).all()


VALID3 = "0 1 1\n1 0 1\n1 1 0\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (VALID3 + "0 1 1\n1 0 1\n", "matrix 2 has only 2 of its 3 rows"),
        (VALID3 + "0 1 2\n1 0 1\n1 1 0\n", "matrix 2, line 4 may only hold 0 and 1"),
        (VALID3 + "0 1 1\n1 0 x\n1 1 0\n", "matrix 2, line 5 must hold whitespace-separated 0/1 integers"),
        (VALID3 + "\n0 1 1\n1 0 1 1\n1 1 0\n", "matrix 2, line 6 has 4 entries; each row needs 3"),
        (VALID3 + "0 1 1\n0 0 1\n1 1 0\n", "matrix 2 is not symmetric: line 4 links node 0 to node 1 but line 5"),
        ("1 1 1\n1 0 1\n1 1 0\n", "matrix 1, line 1 links node 0 to itself"),
        ("\n\n", "holds no matrix"),
    ],
)
def test_read_schedule_refuses_malformed_matrices(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=re.escape(f"network.schedule file {path}")) as error:
        read_schedule(path, complete(3, seed=0), "complete")
    assert message in str(error.value)


def test_read_schedule_refuses_links_outside_the_topology(tmp_path):
    path = write(tmp_path, "0 1 0 0\n1 0 0 0\n0 0 0 0\n0 0 0 0\n" * 2 + "0 0 1 0\n0 0 0 0\n1 0 0 0\n0 0 0 0\n")
    with pytest.raises(UserError) as error:
        read_schedule(path, RING4, "ring")
    assert str(error.value) == (
        f"network.schedule file {path}, matrix 3 links nodes 0 and 2, which topology=ring does not; a schedule "
        "switches links of the topology on and off: use topology=complete or a topology=file holding every link"
    )


def test_read_schedule_refuses_an_unreadable_file(tmp_path):
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(UserError, match=re.escape(f"cannot read network.schedule={missing}")):
        read_schedule(missing, RING4, "ring")
