"""The simulated network: nodes, topologies and the communicator between them."""

from semdl.network.communicator import InProcessCommunicator, Inbox
from semdl.network.node import Node, build_optimizer, node_seeds
from semdl.network.topology import Topology, build_topology

__all__ = ["InProcessCommunicator", "Inbox", "Node", "Topology", "build_optimizer", "build_topology", "node_seeds"]
