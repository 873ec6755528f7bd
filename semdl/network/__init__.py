"""The simulated network: nodes, topologies and the communicator between them."""

from semdl.network.communicator import Communicator, Delivery, Inbox, InProcessCommunicator, Neighborhood
from semdl.network.node import Node, build_optimizer, node_seeds
from semdl.network.topology import TOPOLOGIES, Topology, topology_of

# isort: split
import semdl.network.graphs  # noqa: E402,F401  (registers the networkx graph families as topologies)

__all__ = [
    "Communicator",
    "Delivery",
    "InProcessCommunicator",
    "Inbox",
    "Neighborhood",
    "Node",
    "Topology",
    "build_optimizer",
    "node_seeds",
    "topology_of",
    "TOPOLOGIES",
]
