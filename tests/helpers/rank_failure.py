"""`semdl` under torchrun with a failure injected into rank 1's second round (test_distributed's test hook)."""

import os
import sys

from semdl.cli import main
from semdl.solvers.primal_dual import PrimalDual

original_round = PrimalDual.round
rounds = []


def failing_round(*arguments, **keywords):
    rounds.append(1)
    if os.environ.get("RANK") == "1" and len(rounds) == 2:
        raise RuntimeError("injected failure in round 2")
    return original_round(*arguments, **keywords)


PrimalDual.round = failing_round
main(sys.argv[1:])
