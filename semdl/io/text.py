"""Text files the user names in the config (an adjacency matrix, a partition table), read or refused in one line."""

from __future__ import annotations

from pathlib import Path

from semdl.errors import UserError

BYTE_ORDER_MARK = "\ufeff"


def read_text_file(path: str, key: str) -> str:
    """The UTF-8 text of the file `key`=`path` names, without a byte-order mark (editors on Windows add one).

    A file that cannot be read, or that holds binary content (a NUL byte, or bytes that are not UTF-8: an image, a
    NumPy .npy, a spreadsheet), is refused in one line; parsing it as text would give a misleading complaint.
    """
    try:
        content = Path(path).expanduser().read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {key}={path}: {error.strerror or error}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        nul = content.find(b"\0", 0, error.start)
        raise _binary_content(path, key, nul if nul >= 0 else error.start) from None
    nul = content.find(b"\0")
    if nul >= 0:
        raise _binary_content(path, key, nul)
    return text.removeprefix(BYTE_ORDER_MARK)


def _binary_content(path: str, key: str, offset: int) -> UserError:
    return UserError(f"{key}={path} is not a text file (binary content at byte {offset})")
