"""Text files semdl reads (an adjacency matrix, a partition table, a run's summary and config): UTF-8, a byte-order
mark accepted, binary content refused in one line."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from semdl.errors import UserError

BYTE_ORDER_MARK = "\ufeff"


class BinaryContent(ValueError):
    """Bytes that are not text: a NUL byte, or bytes that are not UTF-8."""

    def __init__(self, offset: int):
        super().__init__(f"binary content at byte {offset}")
        self.offset = offset


def decoded_text(content: bytes) -> str:
    """`content` as UTF-8 text without a byte-order mark (editors on Windows add one); BinaryContent at the first
    NUL byte or byte that is not UTF-8 (an image, a NumPy .npy, a spreadsheet)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        nul = content.find(b"\0", 0, error.start)
        raise BinaryContent(nul if nul >= 0 else error.start) from None
    nul = content.find(b"\0")
    if nul >= 0:
        raise BinaryContent(nul)
    return text.removeprefix(BYTE_ORDER_MARK)


MAX_TEXT_INPUT_BYTES = 64 * 2**20  # a 2000-node adjacency matrix in text takes 8 MB; a schedule of it a few of those

# What a path that is not a regular file names, for the refusal: reading a FIFO blocks until a writer comes, and a
# device such as /dev/zero never ends.
NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnreadableFile(OSError):
    """A file semdl will not read: not a regular file (`kind` says what it is instead), or too large (`kind` None).
    Its text is only why; the caller names the file."""

    def __init__(self, code: int, why: str, filename: str, kind: str | None = None):
        super().__init__(code, why, filename)
        self.kind = kind

    def __str__(self) -> str:
        return self.strerror


def not_regular(mode: int) -> str | None:
    """What a file of this mode (os.stat's st_mode) is when it is not a regular file ("a named pipe", ...), else
    None."""
    return next((name for test, name in NOT_REGULAR if test(mode)), None)


def irregular_kind(path: Path) -> str | None:
    """What `path` is when it is neither a regular file nor a directory ("a named pipe", ...), else None."""
    mode = path.stat().st_mode
    return None if stat.S_ISDIR(mode) else not_regular(mode)


MAX_RUN_FILE_BYTES = MAX_TEXT_INPUT_BYTES  # a run's JSON and YAML files: a few KB to a few MB
MAX_METRICS_BYTES = 4 * 2**30  # metrics.jsonl: a row per node and round, about 1 KB each


def read_bounded(path: Path | str, limit: int = MAX_RUN_FILE_BYTES) -> bytes:
    """The bytes of the regular file `path`, of at most `limit` bytes. It is opened without blocking and checked
    before a byte is read, so a named pipe put in a file's place neither blocks nor, as a device, fills memory:
    OSError (EINVAL, or EFBIG for a larger file) says why, naming the file, for the caller's own one line."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    kind = not_regular(os.fstat(descriptor).st_mode)
    if kind is not None:  # checked before fdopen, which refuses a directory in its own words
        os.close(descriptor)
        raise UnreadableFile(errno.EINVAL, f"it is {kind}, not a regular file", str(path), kind)
    with os.fdopen(descriptor, "rb") as handle:
        content = handle.read(limit + 1)
    if len(content) > limit:
        raise UnreadableFile(
            errno.EFBIG, f"it is larger than {limit // 2**20} MiB, the most semdl reads from it", str(path)
        )
    return content


def read_text_file(path: str, key: str) -> str:
    """The text of the file `key`=`path` names (decoded_text). Only a regular file of at most MAX_TEXT_INPUT_BYTES is
    read (checked before a byte is read, so a pipe or an endless device neither blocks nor fills memory); a file that
    cannot be read, is too large, or holds binary content is refused in one line."""
    try:
        content = read_bounded(Path(path).expanduser(), MAX_TEXT_INPUT_BYTES)
    except UnreadableFile as error:
        why = f"is {error.kind}, not a text file" if error.kind else error.strerror.removeprefix("it ")
        raise UserError(f"{key}={path} {why}") from None
    except OSError as error:
        raise UserError(f"cannot read {key}={path}: {error.strerror or error}") from None
    try:
        return decoded_text(content)
    except BinaryContent as error:
        raise UserError(f"{key}={path} is not a text file ({error})") from None
