"""Replayable randomness (e.g. the moment a test kills a run): SEMDL_TEST_SEED, or a fixed default."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest

SEED_VARIABLE = "SEMDL_TEST_SEED"
DEFAULT_SEED = 1234


def session_seed() -> int:
    value = os.environ.get(SEED_VARIABLE, "").strip()
    if not value:
        return DEFAULT_SEED
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{SEED_VARIABLE}={value!r} is not an integer") from None


@dataclass(frozen=True)
class Replay:
    """The seed of one test's random choices and the command that replays them."""

    seed: int
    nodeid: str

    def random(self) -> random.Random:
        """A generator of its own for this test: the same seed gives each test different, repeatable choices."""
        return random.Random(f"{self.seed}:{self.nodeid}")

    def __str__(self) -> str:
        return f"random seed {self.seed}; replay with: {SEED_VARIABLE}={self.seed} pytest '{self.nodeid}'"
