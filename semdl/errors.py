"""Exceptions the CLI turns into one line on stderr: a user mistake or a device out of memory (exit 2), a numerical
failure (exit 3), an interruption that saved a checkpoint or a stop at once (exit 130 for SIGINT, 143 for
SIGTERM)."""

import signal


class UserError(Exception):
    """A problem with the user's configuration, files or environment, explained in one line."""


class NumericalError(Exception):
    """A non-finite loss, statistic or dual: the run stopped, keeping its last good checkpoint."""


class OutOfMemory(Exception):
    """The device ran out of memory where the run knows its round and stage; the message is the whole line (without
    `semdl: `) that the command prints before it exits with status 2 (semdl.pipeline.lockstep builds it)."""


class Interrupted(Exception):
    """SIGINT or SIGTERM during a run: the round in progress finished and a checkpoint was written. The process
    exits with 128 + the signal's number (130, 143), as a shell reports a signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class Stopped(BaseException):
    """A stop signal that cannot wait for the round to end: a second SIGINT or SIGTERM during the rounds, or one
    outside them. A BaseException, like KeyboardInterrupt, so that no `except Exception` in between swallows it."""

    def __init__(self, signal_number: int):
        super().__init__(f"stopped by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number
