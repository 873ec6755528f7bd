"""Text files semdl reads (an adjacency matrix, a partition table, a run's summary and config): UTF-8, a byte-order
mark accepted, binary content refused in one line."""

from __future__ import annotations

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


def read_text_file(path: str, key: str) -> str:
    """The text of the file `key`=`path` names (decoded_text). A file that cannot be read, or that holds binary
    content, is refused in one line; parsing it as text would give a misleading complaint."""
    try:
        content = Path(path).expanduser().read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {key}={path}: {error.strerror or error}") from None
    try:
        return decoded_text(content)
    except BinaryContent as error:
        raise UserError(f"{key}={path} is not a text file ({error})") from None
