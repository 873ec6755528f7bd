"""The round loop's hooks: what it does after each round besides running the solver.

`semdl.pipeline.loop.train_rounds` runs a list of `RoundHook`s. After the solver's round and its metrics rows, in
the list's order, it calls each hook's `extra_rows` (rows the hook adds to the round: an evaluation), then each
hook's `after_round` with all of the round's rows (record them, show them), then, once every rank agreed whether
the run stops after this round, each hook's `after_agreement` (checkpoint). `close` runs when the loop ends,
however it ends. One hook may also supply the per-node `test_loss` column (`held_out_loss`), which joins the
round's one read from the device.

The built-in hooks (semdl.pipeline.hooks): the history of rows the end of a run needs, periodic evaluation,
held-out losses, the metrics writer, the tracker's rows (TrackRows), the progress bar and log, the checkpoint
cadence. A solver adds its own with `Solver.round_hooks`, and a caller of
`train_rounds` (a plugin, a script, a test) passes more in `hooks`. This module imports nothing of semdl, so any
layer may define a hook.
"""

from __future__ import annotations

from typing import Any


class RoundHook:
    """One thing the round loop does each round. Every method is optional: the defaults do nothing."""

    def extra_rows(self, round_index: int) -> list[dict]:
        """Rows this hook adds to the round's metrics rows (after the solver's, before anything records them)."""
        return []

    def after_round(self, round_index: int, rows: list[dict]) -> None:
        """The round's rows, complete: record or show them."""

    def after_agreement(self, round_index: int, stopping: bool) -> None:
        """Every rank agreed whether the run stops after this round (`stopping`: a first SIGINT or SIGTERM)."""

    def close(self) -> None:
        """The loop ended (after its last round, or on an error)."""

    held_out_loss: Any = None  # a hook that supplies the per-node test_loss column sets a callable (network, node)
