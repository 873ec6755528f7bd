"""One writer per run directory: an exclusive lock held by the process that writes it, for as long as it does.

The lock is an flock on the directory itself, so taking it writes nothing (a refused command leaves the directory
as it was) and the kernel releases it when the process ends, however it ends. Once the command is accepted, the
holder also leaves its identity in WRITER, which a refused second writer quotes, and which the next holder finds
still there when a writer died without ending cleanly.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from semdl.errors import UserError

log = logging.getLogger("semdl")

WRITER = ".semdl-writer.json"
_held: dict[Path, list] = {}  # directory -> [its open descriptor, how many holds this process has on it]
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL)


def _holder(directory: Path) -> str:
    try:
        writer = json.loads((directory / WRITER).read_text(encoding="utf-8"))
        return f"{writer['command']} (pid {writer['pid']} on {writer['host']}, since {writer['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another semdl process"


def _identity(command: str) -> dict:
    return {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }


@contextmanager
def writing(directory: Path, command: str) -> Iterator[None]:
    """Hold `directory` (which must exist) as its only writer, or raise UserError naming who holds it.

    Re-entrant within a process: a sweep's job inside a held directory, a resumed run's final evaluation."""
    directory = Path(directory).resolve()
    if directory in _held:
        _held[directory][1] += 1
        try:
            yield
        finally:
            _held[directory][1] -= 1
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UserError(f"{directory} is in use by {_holder(directory)}; wait until it ends, or stop it") from None
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            os.close(descriptor)
            raise
        log.warning("cannot lock %s on this filesystem (%s): a second writer would not be refused", directory, error)
    _held[directory] = [descriptor, 1]
    try:
        yield
    finally:
        del _held[directory]
        (directory / WRITER).unlink(missing_ok=True)
        os.close(descriptor)


def claim(directory: Path, command: str) -> None:
    """Record this process as the writer of `directory`, which it holds (call once the command is accepted, just
    before its first write). A record left by a writer that died is reported."""
    directory = Path(directory).resolve()
    try:
        previous = json.loads((directory / WRITER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("pid") == os.getpid():
        return
    if previous is not None:
        log.warning("%s was last written by %s, which ended without releasing it", directory, _holder(directory))
    text = json.dumps(_identity(command)) + "\n"
    temporary = directory / f".{WRITER}.{os.getpid()}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, directory / WRITER)
