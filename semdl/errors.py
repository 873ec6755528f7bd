"""Exceptions the CLI turns into one line on stderr: a user mistake (exit 2), a numerical failure (exit 3),
an interruption that saved a checkpoint (exit 130)."""


class UserError(Exception):
    """A problem with the user's configuration, files or environment, explained in one line."""


class NumericalError(Exception):
    """A non-finite loss, statistic or dual: the run stopped, keeping its last good checkpoint."""


class Interrupted(Exception):
    """SIGINT during a run: the round in progress finished and a checkpoint was written."""
